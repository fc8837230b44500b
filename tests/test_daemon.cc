#include "tests/test_daemon.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/authkey.h"
#include "gtest/gtest.h"

extern char** environ;

namespace proctor::testing {
namespace {

std::vector<char*> CStrings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (std::string& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// This process's environment with `extra` laid over it (an extra entry replaces the one of
// the same name: getenv would otherwise find the first).
std::vector<std::string> Environment(const std::vector<std::string>& extra) {
  std::vector<std::string> env;
  auto name = [](const std::string& entry) { return entry.substr(0, entry.find('=')); };
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry = *e;
    bool replaced = std::any_of(extra.begin(), extra.end(),
                                [&](const std::string& x) { return name(x) == name(entry); });
    if (!replaced) env.push_back(entry);
  }
  env.insert(env.end(), extra.begin(), extra.end());
  return env;
}

int ToShellStatus(int raw) {
  return WIFSIGNALED(raw) ? 128 + WTERMSIG(raw) : WEXITSTATUS(raw);
}

// Spawns argv (found through PATH when it has no slash) with this process's environment and
// `extra_env` laid over it. Returns the pid, or -1 with a test failure.
pid_t Spawn(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env,
            const posix_spawn_file_actions_t& actions) {
  std::vector<std::string> args = argv;
  std::vector<std::string> env = Environment(extra_env);
  std::vector<char*> c_args = CStrings(args);
  std::vector<char*> c_env = CStrings(env);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, args[0].c_str(), &actions, nullptr, c_args.data(), c_env.data());
  if (rc != 0) {
    ADD_FAILURE() << "cannot run " << args[0] << ": " << std::strerror(rc);
    return -1;
  }
  return pid;
}

bool SocketAnswers(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

}  // namespace

CommandResult RunCommand(const std::vector<std::string>& argv,
                         const std::vector<std::string>& extra_env) {
  int out_pipe[2], err_pipe[2];
  EXPECT_EQ(pipe2(out_pipe, O_CLOEXEC), 0);
  EXPECT_EQ(pipe2(err_pipe, O_CLOEXEC), 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], 2);
  pid_t pid = Spawn(argv, extra_env, actions);
  posix_spawn_file_actions_destroy(&actions);
  close(out_pipe[1]);
  close(err_pipe[1]);
  CommandResult result;
  if (pid < 0) {
    close(out_pipe[0]);
    close(err_pipe[0]);
    return result;
  }
  // Both pipes are drained together so neither can fill up and stall the command.
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&result.out, &result.err};
  int open_count = 2;
  while (open_count > 0) {
    poll(fds, 2, -1);
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      char buf[4096];
      ssize_t n = read(fds[i].fd, buf, sizeof(buf));
      if (n > 0) {
        sinks[i]->append(buf, n);
      } else {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_count;
      }
    }
  }
  int raw = 0;
  waitpid(pid, &raw, 0);
  result.status = ToShellStatus(raw);
  return result;
}

pid_t StartCommand(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env,
                   const std::string& out_path, const std::string& err_path) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0600);
  posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0600);
  pid_t pid = Spawn(argv, extra_env, actions);
  posix_spawn_file_actions_destroy(&actions);
  return pid;
}

std::optional<int> WaitForExit(pid_t pid, absl::Duration limit) {
  int raw = 0;
  if (WaitFor([&] { return waitpid(pid, &raw, WNOHANG) == pid; }, limit)) return raw;
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  return std::nullopt;
}

TempDir::TempDir() {
  std::string pattern = (std::filesystem::temp_directory_path() / "proctor-test-XXXXXX").string();
  char* made = mkdtemp(pattern.data());
  EXPECT_NE(made, nullptr);
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

TestDaemon::TestDaemon(std::vector<std::string> flags,
                       std::optional<std::pair<uint64_t, uint64_t>> nofile,
                       std::vector<std::string> extra_env) {
  std::string socket = dir_.path() + "/proctord.sock";
  address_ = "unix:" + socket;
  state_dir_ = dir_.path() + "/state";
  services_dir_ = dir_.path() + "/services";
  bool own_listen = true;
  bool own_services = true;
  for (size_t i = 0; i + 1 < flags.size(); ++i) {
    if (flags[i] == "--state-dir") state_dir_ = flags[i + 1];
    if (flags[i] == "--services") {
      services_dir_ = flags[i + 1];
      own_services = false;
    }
    if (flags[i] == "--listen" && absl::StartsWith(flags[i + 1], "unix:")) {
      address_ = flags[i + 1];
      socket = address_.substr(5);
      own_listen = false;
    }
  }
  log_path_ = dir_.path() + "/proctord.log";
  std::vector<std::string> args = {PROCTORD_PATH, "--state-dir",  state_dir_, "--log-level",
                                   "debug",
                                   // A small stock: each test's daemon is short-lived.
                                   "--capture-spares", "16"};
  if (own_listen) args.insert(args.begin() + 1, {"--listen", address_});
  // Never the machine's own services directory.
  if (own_services) {
    std::filesystem::create_directory(services_dir_);
    args.insert(args.begin() + 1, {"--services", services_dir_});
  }
  args.insert(args.end(), flags.begin(), flags.end());
  if (nofile.has_value()) {
    // The soft limit first: a hard limit below the soft one is refused.
    args.insert(args.begin(), {"/bin/sh", "-c",
                               absl::StrCat("ulimit -Sn ", nofile->first, " && ulimit -Hn ",
                                            nofile->second, " && exec \"$0\" \"$@\"")});
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 2, log_path_.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0600);
  pid_ = Spawn(args, extra_env, actions);
  posix_spawn_file_actions_destroy(&actions);
  bool up = pid_ > 0 && WaitFor([&] {
    int raw;
    if (waitpid(pid_, &raw, WNOHANG) == pid_) {
      pid_ = -1;
      return true;
    }
    return SocketAnswers(socket);
  });
  EXPECT_TRUE(up && pid_ > 0) << "proctord did not come up:\n" << Log();
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(
      ClientOptions{.address = address_, .authkey_file = authkey_path()});
  EXPECT_TRUE(client.ok()) << client.status();
  if (client.ok()) client_ = *std::move(client);
}

TestDaemon::~TestDaemon() {
  if (pid_ > 0) {
    int status = Stop();
    EXPECT_EQ(status, 0) << "proctord exit status; log:\n" << Log();
  }
}

int TestDaemon::Stop() {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  int raw = 0;
  waitpid(pid_, &raw, 0);
  pid_ = -1;
  return ToShellStatus(raw);
}

std::optional<int> TestDaemon::AwaitExit(absl::Duration limit) {
  if (pid_ <= 0) return std::nullopt;
  std::optional<int> raw = WaitForExit(pid_, limit);
  pid_ = -1;
  if (!raw.has_value()) return std::nullopt;
  return ToShellStatus(*raw);
}

void TestDaemon::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

bool TestDaemon::Restarted(absl::Duration limit) {
  const std::string socket = address_.substr(5);
  return WaitFor(
      [&] {
        int raw;
        if (waitpid(pid_, &raw, WNOHANG) == pid_) {
          pid_ = -1;
          return true;
        }
        // The proctord that stopped to restart may still answer for a moment: the one that
        // counts logs that it listens after the restart was announced.
        const std::string log = Log();
        const size_t restart = log.rfind("starting again");
        return restart != std::string::npos &&
               log.find("proctord listening on", restart) != std::string::npos &&
               SocketAnswers(socket) && client_->List(v1::StatusRequest()).ok();
      },
      limit) &&
         pid_ > 0;
}

std::string TestDaemon::Log() const { return ReadFile(log_path_); }

std::string TestDaemon::LoggedAfter(const std::string& prefix, const std::string& end,
                                    absl::Duration limit) const {
  std::string found;
  WaitFor(
      [&] {
        std::string log = Log();
        size_t at = log.find(prefix);
        if (at == std::string::npos) return false;
        at += prefix.size();
        size_t stop = std::min(log.find(end, at), log.find('\n', at));
        found = log.substr(at, stop == std::string::npos ? std::string::npos : stop - at);
        return true;
      },
      limit);
  return found;
}

std::vector<std::string> TestDaemon::CliArgv(const std::vector<std::string>& args) const {
  std::vector<std::string> argv = {PROCTOR_CLI_PATH, "--address", address_};
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

CommandResult TestDaemon::Cli(const std::vector<std::string>& args,
                              const std::vector<std::string>& extra_env) {
  std::vector<std::string> env = {"PROCTOR_AUTHKEY_FILE=" + authkey_path()};
  env.insert(env.end(), extra_env.begin(), extra_env.end());
  return RunCommand(CliArgv(args), env);
}

pid_t TestDaemon::StartCli(const std::vector<std::string>& args, const std::string& out_path,
                           const std::string& err_path) {
  return StartCommand(CliArgv(args), {"PROCTOR_AUTHKEY_FILE=" + authkey_path()}, out_path,
                      err_path);
}

v1::Process StartOk(Client& client, const std::vector<std::string>& argv, bool daemon) {
  v1::StartRequest request;
  request.set_target(argv.at(0));
  for (size_t i = 1; i < argv.size(); ++i) request.add_args(argv[i]);
  request.set_daemon(daemon);
  absl::StatusOr<v1::Process> started = client.Start(request);
  EXPECT_TRUE(started.ok()) << started.status();
  return started.value_or(v1::Process{});
}

namespace {

// Fields of /proc/<pid>/stat after the command name: state, ppid, pgrp...
std::vector<std::string> StatFields(pid_t pid) {
  std::string stat = ReadFile(absl::StrCat("/proc/", pid, "/stat"));
  size_t close_paren = stat.rfind(')');
  if (close_paren == std::string::npos) return {};
  return absl::StrSplit(stat.substr(close_paren + 2), ' ');
}

}  // namespace

bool IsAlive(pid_t pid) {
  std::vector<std::string> fields = StatFields(pid);
  return !fields.empty() && fields[0] != "Z" && fields[0] != "X";
}

bool IsZombie(pid_t pid) {
  std::vector<std::string> fields = StatFields(pid);
  return !fields.empty() && fields[0] == "Z";
}

bool IsGone(pid_t pid) { return StatFields(pid).empty(); }

pid_t ParentOf(pid_t pid) {
  std::vector<std::string> fields = StatFields(pid);
  pid_t ppid = 0;
  return fields.size() > 1 && absl::SimpleAtoi(fields[1], &ppid) ? ppid : 0;
}

bool WaitFor(const std::function<bool()>& condition, absl::Duration limit) {
  absl::Time deadline = absl::Now() + limit;
  while (!condition()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return true;
}

Gate::Gate(std::string path) : path_(std::move(path)) {
  EXPECT_EQ(mkfifo(path_.c_str(), 0600), 0) << path_ << ": " << std::strerror(errno);
}

std::string Gate::ShellWait() const { return absl::StrCat("read gate < ", path_); }

bool Gate::Open(absl::Duration limit) const { return OpenGate(path_, limit); }

bool OpenGate(const std::string& path, absl::Duration limit) {
  // A pipe opens for writing without blocking only once someone has it open for reading (or
  // waits in open() to): until then the waiter has not arrived.
  int fd = -1;
  if (!WaitFor([&] { return (fd = open(path.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC)) >= 0; },
               limit)) {
    return false;
  }
  bool opened = write(fd, "\n", 1) == 1;
  close(fd);
  return opened;
}

bool WaitAtGate(const std::string& path) {
  // Blocks in open() until the gate is opened, then reads the line written through it.
  std::ifstream in(path);
  std::string line;
  return static_cast<bool>(std::getline(in, line));
}

std::vector<pid_t> Descendants(pid_t ancestor) {
  std::map<pid_t, pid_t> parent;
  DIR* proc = opendir("/proc");
  while (dirent* entry = readdir(proc)) {
    pid_t pid;
    if (!absl::SimpleAtoi(entry->d_name, &pid)) continue;
    std::vector<std::string> fields = StatFields(pid);
    pid_t ppid;
    if (fields.size() > 1 && absl::SimpleAtoi(fields[1], &ppid)) parent[pid] = ppid;
  }
  closedir(proc);
  std::vector<pid_t> out;
  for (const auto& [pid, ppid] : parent) {
    // The keeper started by proctord is the workers' parent, not one of their processes.
    if (ReadFile(absl::StrCat("/proc/", pid, "/comm")) == "proctor-keeper\n") continue;
    for (pid_t p = ppid; p > 1; p = parent.count(p) ? parent[p] : 0) {
      if (p == ancestor) {
        out.push_back(pid);
        break;
      }
    }
  }
  return out;
}

bool StopProcess(pid_t pid) {
  if (kill(pid, SIGSTOP) != 0) return false;
  return WaitFor([&] {
    std::string task_dir = absl::StrCat("/proc/", pid, "/task");
    DIR* tasks = opendir(task_dir.c_str());
    if (tasks == nullptr) return false;
    bool all_stopped = true;
    while (dirent* task = readdir(tasks)) {
      if (task->d_name[0] == '.') continue;
      std::string stat = ReadFile(absl::StrCat(task_dir, "/", task->d_name, "/stat"));
      size_t close_paren = stat.rfind(')');
      if (close_paren == std::string::npos || close_paren + 2 >= stat.size() ||
          stat[close_paren + 2] != 'T') {
        all_stopped = false;
      }
    }
    closedir(tasks);
    return all_stopped;
  });
}

absl::StatusOr<Credentials> WorkerCredentials(pid_t pid, absl::Duration limit) {
  Credentials found{.source = absl::StrCat("the environment of pid ", pid)};
  bool complete = WaitFor(
      [&] {
        std::string environ = ReadFile(absl::StrCat("/proc/", pid, "/environ"));
        for (absl::string_view entry : absl::StrSplit(environ, '\0')) {
          if (absl::ConsumePrefix(&entry, "PROCTOR_ID=")) found.key_id = std::string(entry);
          if (absl::ConsumePrefix(&entry, "PROCTOR_AUTHKEY=")) {
            absl::StatusOr<std::string> key = HexDecode(entry);
            if (key.ok()) found.key = *std::move(key);
          }
        }
        return !found.key.empty() && !found.key_id.empty();
      },
      limit);
  if (!complete) {
    return absl::NotFoundError(absl::StrCat("pid ", pid, " has no worker credential"));
  }
  return found;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

std::string CgroupV2Path(absl::string_view proc_cgroup) {
  for (absl::string_view line : absl::StrSplit(proc_cgroup, '\n')) {
    if (absl::ConsumePrefix(&line, "0::")) return std::string(line);
  }
  return "";
}

std::string CgroupOfPid(pid_t pid) {
  return CgroupV2Path(ReadFile(absl::StrCat("/proc/", pid, "/cgroup")));
}

}  // namespace proctor::testing

namespace proctor::testing {

bool WriteFile(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::trunc);
  out << content;
  return static_cast<bool>(out);
}

}  // namespace proctor::testing
