// notify_send: speaks sd_notify as a worker started with `notify` would, for tests.
//
//   notify_send [--exit-at-once] [--from-grandchild] [--size N] [--socket PATH] ASSIGNMENT...
//     Sends one datagram, the assignments joined by newlines, to $NOTIFY_SOCKET (or PATH; a
//     leading '@' names an abstract address, as in sd_notify). With --size N, a STATUS= line
//     padded with 'x' follows them, making the datagram exactly N bytes (an error when they
//     leave no room). Then, unless --exit-at-once (systemd-notify's --no-block), waits (5 s at
//     most) until the receiver has read it, as systemd-notify does by default: BARRIER=1 goes
//     after it with a pipe, and the receiver closes the pipe (sd_notify_barrier). --from-grandchild sends from a double-forked process, which is
//     gone by the time this one exits. Exits 0 once sent (and read), 1 with a message on
//     stderr when anything failed.
//   notify_send --ready-after MS [ASSIGNMENT...]
//     After MS milliseconds sends READY=1 with the assignments; then sleeps until killed.
//   notify_send --loop-watchdog MS [ASSIGNMENT...]
//     Sends the assignments (when there are any), then WATCHDOG=1 every MS milliseconds until
//     killed. A send that fails is said on stderr and the loop goes on, as a worker would.
//   The two may be combined: READY=1 after the delay, then the pings.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/descriptor_passing.h"

namespace {

constexpr int kBarrierTimeoutMs = 5000;  // as sd_notify_barrier's default

struct Options {
  bool exit_at_once = false;
  bool from_grandchild = false;
  std::optional<size_t> size;
  std::string socket;
  std::optional<int> loop_watchdog_ms;
  std::optional<int> ready_after_ms;
  std::vector<std::string> assignments;
};

// A connected datagram socket to `where` (a path, or '@' and an abstract name), or the reason.
std::optional<int> Connect(const std::string& where, std::string* error) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (where.empty() || where.size() >= sizeof(address.sun_path)) {
    *error = absl::StrCat("no usable socket address \"", where, "\"");
    return std::nullopt;
  }
  std::memcpy(address.sun_path, where.data(), where.size());
  socklen_t length = offsetof(sockaddr_un, sun_path) + where.size();
  if (where[0] == '@') {
    address.sun_path[0] = '\0';  // abstract: the name is all the bytes given, no terminator
  } else {
    ++length;
  }
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *error = absl::StrCat("socket: ", std::strerror(errno));
    return std::nullopt;
  }
  if (connect(fd, reinterpret_cast<const sockaddr*>(&address), length) != 0) {
    *error = absl::StrCat("connect to ", where, ": ", std::strerror(errno));
    close(fd);
    return std::nullopt;
  }
  return fd;
}

// Sends `text` on `fd`, with `passed` as SCM_RIGHTS when it is >= 0.
bool Send(int fd, const std::string& text, int passed, std::string* error) {
  if (proctor::SendWithDescriptor(fd, text, passed) != static_cast<ssize_t>(text.size())) {
    *error = absl::StrCat("sendmsg: ", std::strerror(errno));
    return false;
  }
  return true;
}

// sd_notify_barrier(): the receiver has read everything sent before once it has closed the
// pipe's write end that comes with BARRIER=1.
bool Barrier(int fd, std::string* error) {
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
    *error = absl::StrCat("pipe2: ", std::strerror(errno));
    return false;
  }
  bool sent = Send(fd, "BARRIER=1", pipe_fds[1], error);
  close(pipe_fds[1]);
  bool answered = false;
  if (sent) {
    pollfd p{.fd = pipe_fds[0], .events = POLLIN};
    answered = poll(&p, 1, kBarrierTimeoutMs) == 1;
    if (!answered) *error = "the receiver did not read the message within 5 s";
  }
  close(pipe_fds[0]);
  return sent && answered;
}

std::string Datagram(const Options& options) {
  std::string text = absl::StrJoin(options.assignments, "\n");
  if (options.size.has_value()) {
    if (!text.empty()) text += '\n';
    text += "STATUS=";
    if (*options.size > text.size()) text.append(*options.size - text.size(), 'x');
  }
  return text;
}

// The one-shot mode: 0 once sent (and read, unless --exit-at-once), else 1.
int SendOnce(const Options& options, const std::string& where) {
  const std::string text = Datagram(options);
  if (options.size.has_value() && text.size() != *options.size) {
    std::cerr << "notify_send: the assignments and STATUS= take more than --size " << *options.size
              << " bytes" << std::endl;
    return 1;
  }
  std::string error;
  std::optional<int> fd = Connect(where, &error);
  bool ok = fd.has_value() && Send(*fd, text, -1, &error) &&
            (options.exit_at_once || Barrier(*fd, &error));
  if (fd.has_value()) close(*fd);
  if (!ok) std::cerr << "notify_send: " << error << std::endl;
  return ok ? 0 : 1;
}

// SendOnce from a grandchild; the result comes back through a pipe, its one byte the exit code.
int SendFromGrandchild(const Options& options, const std::string& where) {
  int result[2];
  if (pipe2(result, O_CLOEXEC) != 0) {
    std::cerr << "notify_send: pipe2: " << std::strerror(errno) << std::endl;
    return 1;
  }
  pid_t child = fork();
  if (child < 0) {
    std::cerr << "notify_send: fork: " << std::strerror(errno) << std::endl;
    return 1;
  }
  if (child == 0) {
    close(result[0]);
    pid_t grandchild = fork();
    if (grandchild != 0) _exit(grandchild < 0 ? 1 : 0);
    // Orphaned at once: by the time it sends, its parent is gone.
    char code = static_cast<char>(SendOnce(options, where));
    _exit(write(result[1], &code, 1) == 1 ? 0 : 1);
  }
  close(result[1]);
  int status = 0;
  if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::cerr << "notify_send: the child that forks the sender failed" << std::endl;
    return 1;
  }
  char code = 1;
  if (read(result[0], &code, 1) != 1) {
    std::cerr << "notify_send: the grandchild ended without a word" << std::endl;
    code = 1;
  }
  close(result[0]);
  return code;
}

// --ready-after and --loop-watchdog: never returns.
[[noreturn]] void RunUntilKilled(const Options& options, const std::string& where) {
  std::string error;
  std::optional<int> fd = Connect(where, &error);
  auto send = [&](const std::string& text) {
    if (!fd.has_value()) fd = Connect(where, &error);
    if (!fd.has_value() || !Send(*fd, text, -1, &error)) {
      std::cerr << "notify_send: " << error << std::endl;
    }
  };
  std::vector<std::string> first = options.assignments;
  if (options.ready_after_ms.has_value()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(*options.ready_after_ms));
    first.insert(first.begin(), "READY=1");
  }
  if (!first.empty()) send(absl::StrJoin(first, "\n"));
  if (!options.loop_watchdog_ms.has_value()) {
    for (;;) pause();
  }
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(*options.loop_watchdog_ms));
    send("WATCHDOG=1");
  }
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  CLI::App app("notify_send: sends sd_notify messages to $NOTIFY_SOCKET, for tests");
  app.add_flag("--exit-at-once", options.exit_at_once,
               "exit once sent, without waiting for the receiver to read it");
  app.add_flag("--from-grandchild", options.from_grandchild, "send from a double-forked process");
  app.add_option("--size", options.size, "pad with a STATUS= line to this many bytes");
  app.add_option("--socket", options.socket, "where to send instead of $NOTIFY_SOCKET");
  app.add_option("--loop-watchdog", options.loop_watchdog_ms,
                 "send WATCHDOG=1 every this many milliseconds until killed")
      ->check(CLI::PositiveNumber);
  app.add_option("--ready-after", options.ready_after_ms,
                 "send READY=1 after this many milliseconds, then sleep until killed")
      ->check(CLI::NonNegativeNumber);
  app.add_option("assignment", options.assignments, "VARIABLE=VALUE, one line of the datagram");
  CLI11_PARSE(app, argc, argv);

  std::string where = options.socket;
  if (where.empty()) {
    const char* env = std::getenv("NOTIFY_SOCKET");
    if (env == nullptr || *env == '\0') {
      std::cerr << "notify_send: NOTIFY_SOCKET is not set and no --socket given" << std::endl;
      return 1;
    }
    where = env;
  }
  const bool until_killed =
      options.ready_after_ms.has_value() || options.loop_watchdog_ms.has_value();
  if (until_killed && (options.from_grandchild || options.size.has_value())) {
    std::cerr << "notify_send: --from-grandchild and --size are for one message only" << std::endl;
    return 1;
  }
  if (until_killed) RunUntilKilled(options, where);
  if (options.assignments.empty() && !options.size.has_value()) {
    std::cerr << "notify_send: nothing to send" << std::endl;
    return 1;
  }
  return options.from_grandchild ? SendFromGrandchild(options, where) : SendOnce(options, where);
}
