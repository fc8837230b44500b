// TestDaemon: a real proctord on a temporary Unix socket, for integration tests, and helpers
// to run real commands (the `proctor` CLI among them) and look at processes in /proc.
#ifndef PROCTOR_TESTS_TEST_DAEMON_H_
#define PROCTOR_TESTS_TEST_DAEMON_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
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

// Starts argv with extra environment entries and leaves it running, its stdin /dev/null and
// its stdout and stderr written to the files named (created or truncated). Returns its pid, or
// -1 (and a test failure) if it could not be started.
pid_t StartCommand(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env,
                   const std::string& out_path, const std::string& err_path);
// Waits up to `limit` for the child `pid` to end and returns its raw wait status; if it has
// not ended by then, kills it (SIGKILL), reaps it, and returns nothing.
std::optional<int> WaitForExit(pid_t pid, absl::Duration limit);

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
  // Starts proctord with its socket, state and services directory (empty) in a new temporary
  // directory, and waits until it answers. `flags` are added to the command line; a
  // --state-dir, --services or a unix: --listen among them is used instead of the temporary
  // one (a restart on the same ones). With `nofile` ({soft, hard}), proctord
  // starts with that RLIMIT_NOFILE (set by sh's ulimit; the hard limit may not exceed ours).
  // `extra_env` (KEY=VALUE) is added to proctord's environment.
  explicit TestDaemon(std::vector<std::string> flags = {},
                      std::optional<std::pair<uint64_t, uint64_t>> nofile = std::nullopt,
                      std::vector<std::string> extra_env = {});
  // Stops the daemon if it still runs.
  ~TestDaemon();

  const std::string& address() const { return address_; }
  const std::string& state_dir() const { return state_dir_; }
  // The daemon's --services directory, where a test writes its NAME.json files.
  const std::string& services_dir() const { return services_dir_; }
  // The admin key the daemon made in its state directory.
  std::string authkey_path() const { return state_dir_ + "/authkey"; }
  const std::string& dir() const { return dir_.path(); }
  pid_t pid() const { return pid_; }
  Client& client() { return *client_; }

  // Runs the `proctor` CLI against this daemon, with its admin key (PROCTOR_AUTHKEY_FILE);
  // `extra_env` comes after, so it may override that.
  CommandResult Cli(const std::vector<std::string>& args,
                    const std::vector<std::string>& extra_env = {});
  // The same, left running with its output going to files (StartCommand).
  pid_t StartCli(const std::vector<std::string>& args, const std::string& out_path,
                 const std::string& err_path);

  // SIGTERM, then waits for the daemon; returns its exit status (128+N for signal N).
  int Stop();
  // SIGKILL, as a crash would: the daemon ends at once; its workers live on with the keeper.
  void Kill();
  // Waits up to `limit` for the daemon to exit by itself (nothing is sent to it) and returns
  // its exit status; past `limit` it is killed (SIGKILL) and nothing is returned.
  std::optional<int> AwaitExit(absl::Duration limit);
  // After a SIGUSR2: whether the daemon (the same process) has started again (its log says so)
  // and answers, within `limit`.
  bool Restarted(absl::Duration limit = absl::Seconds(10));
  // What the daemon has logged so far.
  std::string Log() const;
  // What follows `prefix` in the log, up to `end` (exclusive) or the end of its line, waiting
  // up to `limit` for it to be logged; "" if it is not.
  std::string LoggedAfter(const std::string& prefix, const std::string& end = "\n",
                          absl::Duration limit = absl::Seconds(5)) const;

 private:
  // The CLI's command line for this daemon.
  std::vector<std::string> CliArgv(const std::vector<std::string>& args) const;

  TempDir dir_;
  std::string address_;
  std::string state_dir_;
  std::string services_dir_;
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
// No process has the pid any more, not even a zombie: it has been reaped.
bool IsGone(pid_t pid);
// The parent of `pid`, from /proc/<pid>/stat; 0 once it is gone.
pid_t ParentOf(pid_t pid);
// SIGSTOPs `pid` and waits until every one of its threads has stopped (the signal is taken
// asynchronously: a thread may still answer a call right after kill returns).
bool StopProcess(pid_t pid);
// Waits until `condition` holds, up to `limit`; returns whether it did.
bool WaitFor(const std::function<bool()>& condition, absl::Duration limit = absl::Seconds(5));

// A gate: a named pipe that holds a worker back until the test lets it pass, so that the test,
// not a sleep, decides the order of events. A gate lets one waiter pass, once.
class Gate {
 public:
  // Makes the pipe at `path`, in a directory the test owns.
  explicit Gate(std::string path);
  const std::string& path() const { return path_; }
  // A shell command that returns once the gate is opened.
  std::string ShellWait() const;
  // OpenGate(path(), limit).
  bool Open(absl::Duration limit = absl::Seconds(10)) const;

 private:
  std::string path_;
};
// Lets the waiter at the gate `path` pass: waits up to `limit` for it to arrive, then opens
// the gate. False when nobody came.
bool OpenGate(const std::string& path, absl::Duration limit = absl::Seconds(10));
// For a waiter written in C++: returns once the gate at `path` is opened (false on an error).
bool WaitAtGate(const std::string& path);

// Pids of every live process whose parent chain leads to `ancestor`, but for keepers (the
// workers of a proctord are below its keeper, which is its child until it ends).
std::vector<pid_t> Descendants(pid_t ancestor);
std::string ReadFile(const std::string& path);
// The cgroup v2 path in `proc_cgroup`, the text of a /proc/<pid>/cgroup ("0::" line), or "".
std::string CgroupV2Path(absl::string_view proc_cgroup);
// The cgroup v2 path of `pid`, or "" (also once it is gone).
std::string CgroupOfPid(pid_t pid);
// The credential a running worker signs its calls with, from its environment
// (PROCTOR_AUTHKEY and PROCTOR_ID), waiting up to `limit` for the process to have exec'd.
absl::StatusOr<Credentials> WorkerCredentials(pid_t pid, absl::Duration limit = absl::Seconds(5));
bool WriteFile(const std::string& path, const std::string& content);

}  // namespace proctor::testing

#endif  // PROCTOR_TESTS_TEST_DAEMON_H_
