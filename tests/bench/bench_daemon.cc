#include "tests/bench/bench_daemon.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

extern char** environ;

namespace proctor {

BenchDaemon::~BenchDaemon() {
  if (pid_ <= 1) return;  // it exited at start (and was reaped): nothing to end
  kill(pid_, SIGTERM);
  waitpid(pid_, nullptr, 0);
}

void BenchDaemon::KillNine() {
  if (pid_ <= 1) return;
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
  pid_ = -1;  // reaped: never signalled again
}

absl::StatusOr<std::unique_ptr<BenchDaemon>> BenchDaemon::Start(
    const std::string& proctord, const std::vector<std::string>& proctord_args,
    const std::string& dir, bool await_spares) {
  std::string state_dir = dir + "/state";
  std::string address = absl::StrCat("unix:", dir, "/proctord.sock");
  std::vector<std::string> args = {proctord, "--listen", address, "--state-dir",
                                   state_dir};
  args.insert(args.end(), proctord_args.begin(), proctord_args.end());
  std::vector<char*> argv;
  for (std::string& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  std::string log_path = dir + "/proctord.log";

  posix_spawn_file_actions_t actions;
  if (int err = posix_spawn_file_actions_init(&actions); err != 0) {
    return absl::InternalError(absl::StrCat("posix_spawn_file_actions_init: ", strerror(err)));
  }
  int err = posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  if (err == 0) {
    err = posix_spawn_file_actions_addopen(&actions, 2, log_path.c_str(),
                                           O_WRONLY | O_CREAT | O_APPEND, 0600);
  }
  if (err == 0) err = posix_spawn_file_actions_adddup2(&actions, 2, 1);
  pid_t pid = 0;
  if (err == 0) err = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (err != 0) {
    return absl::InternalError(absl::StrCat("starting ", proctord, ": ", strerror(err)));
  }
  std::unique_ptr<BenchDaemon> daemon(new BenchDaemon(pid, log_path));
  if (absl::Status s = daemon->AwaitAnswer(state_dir, address); !s.ok()) return s;
  if (!await_spares) return daemon;

  // The stock is made in the background, about 1 ms a file on ext4. Waited for at most 30 s:
  // a stock in use while it is made may never settle.
  std::string spares = state_dir + "/logs/spare";
  size_t last = 0;
  absl::Time changed = absl::Now();
  const absl::Time give_up = changed + absl::Seconds(30);
  while (absl::Now() - changed < absl::Seconds(2) && absl::Now() < give_up) {
    std::error_code ignored;
    auto it = std::filesystem::directory_iterator(spares, ignored);
    size_t count = std::distance(it, std::filesystem::directory_iterator());
    if (count != last) {
      last = count;
      changed = absl::Now();
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  return daemon;
}

absl::Status BenchDaemon::AwaitAnswer(const std::string& state_dir, const std::string& address) {
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  absl::Status last = absl::UnavailableError("not tried");
  while (absl::Now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      std::ifstream log(log_path_);
      return absl::FailedPreconditionError(absl::StrCat(
          "proctord exited at start (wait status ", status, "):\n",
          std::string(std::istreambuf_iterator<char>(log), std::istreambuf_iterator<char>())));
    }
    client_options_ = ClientOptions{.address = address, .authkey_file = state_dir + "/authkey"};
    if (access(client_options_.authkey_file.c_str(), R_OK) == 0) {
      absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(client_options_);
      if (!client.ok()) return client.status();
      last = (*client)->List(v1::StatusRequest()).status();
      if (last.ok()) {
        admin_ = *std::move(client);
        return absl::OkStatus();
      }
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::DeadlineExceededError(absl::StrCat("proctord did not answer in 30 s: ", last.message()));
}


absl::StatusOr<DaemonStats> ReadStats(pid_t pid) {
  DaemonStats stats;
  std::string path = absl::StrCat("/proc/", pid, "/status");
  std::ifstream status(path);
  if (!status) return absl::InternalError(absl::StrCat("cannot read ", path));
  for (std::string line; std::getline(status, line);) {
    absl::string_view rest = line;
    int64_t* field = nullptr;
    if (absl::ConsumePrefix(&rest, "VmRSS:")) field = &stats.rss_kib;
    if (absl::ConsumePrefix(&rest, "Threads:")) field = &stats.threads;
    if (field == nullptr) continue;
    absl::ConsumeSuffix(&rest, "kB");
    if (!absl::SimpleAtoi(rest, field)) {
      return absl::InternalError(absl::StrCat("unexpected line in ", path, ": ", line));
    }
  }
  std::error_code error;
  auto fds = std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/fd"), error);
  if (error) return absl::InternalError(absl::StrCat("/proc/", pid, "/fd: ", error.message()));
  stats.descriptors = std::distance(fds, std::filesystem::directory_iterator());
  return stats;
}

std::optional<ProcStat> ReadProcStat(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // The name is in parentheses and may hold anything, spaces and ')' included.
  size_t open = text.find('(');
  size_t close = text.rfind(')');
  if (open == std::string::npos || close == std::string::npos || close + 4 > text.size()) {
    return std::nullopt;
  }
  ProcStat stat;
  stat.comm = text.substr(open + 1, close - open - 1);
  stat.state = text[close + 2];
  // From the state on: state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
  // cmajflt utime stime, the times in clock ticks.
  std::istringstream rest(text.substr(close + 4));
  int64_t skipped = 0, utime = 0, stime = 0;
  rest >> stat.ppid;
  for (int i = 0; i < 9; ++i) rest >> skipped;
  rest >> utime >> stime;
  if (!rest) return std::nullopt;
  static const int64_t ticks_per_second = sysconf(_SC_CLK_TCK);
  stat.cpu_us = (utime + stime) * 1'000'000 / ticks_per_second;
  return stat;
}

pid_t FindKeeper(pid_t parent, absl::Duration limit) {
  absl::Time deadline = absl::Now() + limit;
  do {
    std::error_code error;
    for (auto it = std::filesystem::directory_iterator("/proc", error);
         !error && it != std::filesystem::directory_iterator(); it.increment(error)) {
      int pid = 0;
      if (!absl::SimpleAtoi(it->path().filename().string(), &pid)) continue;
      std::optional<ProcStat> stat = ReadProcStat(pid);
      if (stat && stat->ppid == parent && stat->comm == "proctor-keeper" && stat->state != 'Z') {
        return pid;
      }
    }
    absl::SleepFor(absl::Milliseconds(1));
  } while (absl::Now() < deadline);
  return 0;
}

}  // namespace proctor
