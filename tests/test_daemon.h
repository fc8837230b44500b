// TestDaemon: a real proctord on a temporary Unix socket, for integration tests, and helpers
// to run real commands (the `proctor` CLI among them) and look at processes in /proc.
#ifndef PROCTOR_TESTS_TEST_DAEMON_H_
#define PROCTOR_TESTS_TEST_DAEMON_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "client/client.h"

namespace proctor::testing {

struct CommandResult {
  int status = -1;  // exit code, or 128+N for signal N
  std::string out;
  std::string err;
};

// Runs argv to completion with extra environment entries; captures stdout and stderr.
CommandResult RunCommand(const std::vector<std::string>& argv,
                         const std::vector<std::string>& extra_env = {});

// A fresh temporary directory, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

class TestDaemon {
 public:
  // Starts proctord with its socket and state in a new temporary directory, and waits until
  // it answers. `flags` are added to the command line.
  explicit TestDaemon(std::vector<std::string> flags = {});
  // Stops the daemon if it still runs.
  ~TestDaemon();

  const std::string& address() const { return address_; }
  const std::string& state_dir() const { return state_dir_; }
  // The admin key the daemon made in its state directory.
  std::string authkey_path() const { return state_dir_ + "/authkey"; }
  const std::string& dir() const { return dir_.path(); }
  pid_t pid() const { return pid_; }
  Client& client() { return *client_; }

  // Runs the `proctor` CLI against this daemon, with its admin key (PROCTOR_AUTHKEY_FILE);
  // `extra_env` comes after, so it may override that.
  CommandResult Cli(const std::vector<std::string>& args,
                    const std::vector<std::string>& extra_env = {});

  // SIGTERM, then waits for the daemon; returns its exit status (128+N for signal N).
  int Stop();
  // What the daemon has logged so far.
  std::string Log() const;

 private:
  TempDir dir_;
  std::string address_;
  std::string state_dir_;
  std::string log_path_;
  pid_t pid_ = -1;
  std::unique_ptr<Client> client_;
};

// Starts a worker, asserting success; returns its record.
v1::Process StartOk(Client& client, const std::vector<std::string>& argv,
                    bool daemon = false);

// True when /proc/<pid> exists and is not a zombie; IsZombie for the zombie state.
bool IsAlive(pid_t pid);
bool IsZombie(pid_t pid);
// Waits until `condition` holds, up to `limit`; returns whether it did.
bool WaitFor(const std::function<bool()>& condition, absl::Duration limit = absl::Seconds(5));
// Pids of every live process whose parent chain leads to `ancestor`.
std::vector<pid_t> Descendants(pid_t ancestor);
std::string ReadFile(const std::string& path);
bool WriteFile(const std::string& path, const std::string& content);

}  // namespace proctor::testing

#endif  // PROCTOR_TESTS_TEST_DAEMON_H_
