#include "server/keeper/keeper.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/descriptor_passing.h"
#include "server/keeper/spawn.h"
#include "spdlog/spdlog.h"

namespace proctor {
namespace {

// How long the notes pipe is left to fill once read: notes cost the keeper one wake-up per
// period while they flow, not one each.
constexpr int64_t kNotesPeriodNs = 10'000'000;
// How long ended orphans may wait behind a held worker before the whole list of children is
// read to find them.
constexpr int64_t kOrphansWaitNs = 50'000'000;

absl::Status Errno(const std::string& what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

std::string ReadSmallFile(const std::string& path) {
  std::string text;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return text;
  char buffer[4096];
  ssize_t n;
  while ((n = read(fd, buffer, sizeof(buffer))) > 0) text.append(buffer, static_cast<size_t>(n));
  close(fd);
  return text;
}

// Hands each whole request `reader` holds to `handle` while it returns true; DATA_LOSS for
// bytes that are not a request.
absl::Status TakeRequests(FrameReader& reader,
                          const std::function<bool(const internal::KeeperRequest&)>& handle) {
  for (;;) {
    internal::KeeperRequest request;
    absl::StatusOr<bool> next = reader.Next(request);
    if (!next.ok()) return next.status();
    if (!*next || !handle(request)) return absl::OkStatus();
  }
}

// waitid with the resource usage the libc wrapper leaves out.
int WaitId(idtype_t type, id_t id, siginfo_t* info, int options, rusage* usage) {
  return static_cast<int>(syscall(SYS_waitid, type, id, info, options, usage));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Keeper>> Keeper::Create(int listen_fd) {
  std::unique_ptr<Keeper> keeper(new Keeper(listen_fd));
  if (absl::Status s = keeper->Init(); !s.ok()) return s;
  return keeper;
}

Keeper::Keeper(int listen_fd) : listen_fd_(listen_fd) {}

absl::Status Keeper::Init() {
  // Whatever the workers' trees leave behind comes to us, not to init.
  if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) return Errno("prctl(PR_SET_CHILD_SUBREAPER)");
  // Accepted in a loop until EAGAIN.
  if (fcntl(listen_fd_, F_SETFL, fcntl(listen_fd_, F_GETFL) | O_NONBLOCK) != 0 ||
      fcntl(listen_fd_, F_SETFD, FD_CLOEXEC) != 0) {
    return Errno("fcntl(listening socket)");
  }
  signal(SIGPIPE, SIG_IGN);
  signal(SIGHUP, SIG_IGN);
  signal(SIGINT, SIG_IGN);
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, nullptr);
  signal_fd_ = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
  if (signal_fd_ < 0) return Errno("signalfd");
  notes_timer_fd_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (notes_timer_fd_ < 0) return Errno("timerfd_create");
  orphans_timer_fd_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (orphans_timer_fd_ < 0) return Errno("timerfd_create");
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) return Errno("epoll_create1");
  for (int fd : {listen_fd_, signal_fd_, notes_timer_fd_, orphans_timer_fd_}) {
    epoll_event event{.events = EPOLLIN, .data = {.fd = fd}};
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &event) != 0) return Errno("epoll_ctl");
  }
  return absl::OkStatus();
}

Keeper::~Keeper() {
  CloseConnection();
  for (auto& [token, worker] : workers_) {
    if (worker.pidfd >= 0) close(worker.pidfd);
  }
  for (int fd : {listen_fd_, signal_fd_, notes_timer_fd_, orphans_timer_fd_, epoll_fd_}) {
    if (fd >= 0) close(fd);
  }
}

int Keeper::Run() {
  epoll_event events[64];
  while (running_ && !Done()) {
    int n = epoll_wait(epoll_fd_, events, 64, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      spdlog::critical("keeper: epoll_wait: {}", std::strerror(errno));
      return 1;
    }
    bool signalled = false;
    for (int i = 0; i < n; ++i) {
      int fd = events[i].data.fd;
      if (fd == listen_fd_) {
        OnAcceptable();
      } else if (fd == signal_fd_) {
        signalled = true;  // after the batch: workers' exits are told first
      } else if (fd == notes_fd_) {
        OnNotes();
      } else if (fd == notes_timer_fd_) {
        OnNotesTimer();
      } else if (fd == orphans_timer_fd_) {
        OnOrphansTimer();
      } else if (fd == connection_) {
        if (events[i].events & EPOLLOUT) OnWritable();
        if (fd == connection_ && (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
          OnReadable();
        }
      } else if (auto it = pidfd_tokens_.find(fd); it != pidfd_tokens_.end()) {
        OnWorkerEnded(it->second);
      }
    }
    if (signalled) OnSignals();
  }
  // Said before the connection closes, so that proctord's wait for it ends with the log.
  spdlog::debug("keeper: nothing left to keep, exiting");
  return 0;
}

bool Keeper::Done() const {
  // Until the first proctord has connected (it is in the backlog already), there is a
  // reason to be.
  if (!ever_connected_ || !workers_.empty()) return false;
  return shutdown_requested_ || (connection_ < 0 && notes_.empty());
}

void Keeper::OnAcceptable() {
  for (;;) {
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    ucred peer{};
    socklen_t length = sizeof(peer);
    // Only our own user (or root) may drive the workers.
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &length) != 0 ||
        (peer.uid != geteuid() && peer.uid != 0)) {
      spdlog::warn("keeper: refused a connection from uid {}", peer.uid);
      close(fd);
      continue;
    }
    // A restarted proctord: the one before is gone, or going.
    CloseConnection();
    connection_ = fd;
    ever_connected_ = true;
    greeted_ = false;
    shutdown_requested_ = false;
    reader_ = FrameReader();
    outgoing_.clear();
    epoll_event event{.events = EPOLLIN, .data = {.fd = fd}};
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &event);
  }
}

void Keeper::CloseConnection() {
  // What the proctord of this connection noted is all in its pipe by now (or it is about to
  // lose us and exit): read to the end before anything depends on the notes.
  DrainNotes(/*close=*/true);
  for (int fd : received_fds_) close(fd);
  received_fds_.clear();
  if (connection_ < 0) return;
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, connection_, nullptr);
  close(connection_);
  connection_ = -1;
  outgoing_.clear();
}

void Keeper::OnReadable() {
  char buffer[65536];
  alignas(cmsghdr) char control[CMSG_SPACE(4 * sizeof(int))];
  for (;;) {
    iovec data{.iov_base = buffer, .iov_len = sizeof(buffer)};
    msghdr message{};
    message.msg_iov = &data;
    message.msg_iovlen = 1;
    message.msg_control = control;
    message.msg_controllen = sizeof(control);
    // Close-on-exec from the start: a worker spawned next must not inherit a notes pipe.
    ssize_t n = recvmsg(connection_, &message, MSG_CMSG_CLOEXEC);
    if (n > 0) {
      for (cmsghdr* c = CMSG_FIRSTHDR(&message); c != nullptr; c = CMSG_NXTHDR(&message, c)) {
        for (int fd : PassedDescriptors(*c)) received_fds_.push_back(fd);
      }
      reader_.Append(buffer, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
    // proctord went away (exited, crashed or restarting): the workers stay with us.
    CloseConnection();
    return;
  }
  absl::Status taken = TakeRequests(reader_, [this](const internal::KeeperRequest& request) {
    Handle(request);
    return connection_ >= 0;
  });
  if (!taken.ok()) {
    spdlog::error("keeper: {}; dropping the connection", std::string(taken.message()));
    CloseConnection();
  }
}

void Keeper::Handle(const internal::KeeperRequest& request) {
  switch (request.kind_case()) {
    case internal::KeeperRequest::kHello: {
      greeted_ = true;
      DrainNotes(/*close=*/false);
      internal::KeeperEvent reply;
      reply.set_serial(request.serial());
      internal::Held& held = *reply.mutable_held();
      held.set_keeper_pid(getpid());
      held.set_takes_notes_pipe(true);
      for (const auto& [token, worker] : workers_) {
        internal::HeldWorker& out = *held.add_workers();
        out.set_token(token);
        out.set_pid(worker.pid);
        out.set_cgroup_dir(worker.cgroup_dir);
        out.set_memo(worker.memo);
        out.set_exited(worker.exited);
      }
      for (const auto& [key, value] : notes_) {
        internal::Note& note = *held.add_notes();
        note.set_key(key);
        note.set_value(value);
      }
      Send(reply);
      // Exits proctord had not released (it may never have seen them).
      for (const auto& [token, worker] : workers_) {
        if (!worker.exited) continue;
        internal::KeeperEvent exited;
        *exited.mutable_exited() = worker.exit;
        Send(exited);
      }
      break;
    }
    case internal::KeeperRequest::kSpawn:
      HandleSpawn(request.serial(), request.spawn());
      break;
    case internal::KeeperRequest::kRelease:
      HandleRelease(request.release().token());
      break;
    case internal::KeeperRequest::kRemember:
    case internal::KeeperRequest::kForget:
      Remember(request);
      break;
    case internal::KeeperRequest::kNotesPipe: {
      if (received_fds_.empty()) {
        spdlog::warn("keeper: a notes pipe came without its descriptor; ignored");
        break;
      }
      DrainNotes(/*close=*/true);
      notes_fd_ = received_fds_.front();
      received_fds_.erase(received_fds_.begin());
      notes_reader_ = FrameReader();
      epoll_event event{.events = EPOLLIN | EPOLLONESHOT, .data = {.fd = notes_fd_}};
      if (fcntl(notes_fd_, F_SETFL, fcntl(notes_fd_, F_GETFL) | O_NONBLOCK) != 0 ||
          epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, notes_fd_, &event) != 0) {
        // proctord's notes would be lost; without them it cannot be restarted as it expects.
        spdlog::error("keeper: cannot watch the notes pipe: {}; dropping the connection",
                      std::strerror(errno));
        CloseConnection();
      }
      break;
    }
    case internal::KeeperRequest::kShutdown:
      shutdown_requested_ = true;
      break;
    case internal::KeeperRequest::KIND_NOT_SET:
      // From a newer proctord: nothing we know how to do.
      spdlog::warn("keeper: a request of a kind it does not know; ignored");
      break;
  }
}

void Keeper::Remember(const internal::KeeperRequest& request) {
  if (request.has_remember()) {
    notes_[request.remember().key()] = request.remember().value();
  } else if (request.has_forget()) {
    notes_.erase(request.forget().key());
  }
}

void Keeper::OnNotes() {
  DrainNotes(/*close=*/false);
  if (notes_fd_ < 0) return;
  itimerspec period{.it_interval = {}, .it_value = {.tv_sec = 0, .tv_nsec = kNotesPeriodNs}};
  timerfd_settime(notes_timer_fd_, 0, &period, nullptr);
}

void Keeper::OnNotesTimer() {
  uint64_t expirations;
  while (read(notes_timer_fd_, &expirations, sizeof(expirations)) > 0) {
  }
  DrainNotes(/*close=*/false);
  if (notes_fd_ < 0) return;
  // Armed again: at once if notes came meanwhile.
  epoll_event event{.events = EPOLLIN | EPOLLONESHOT, .data = {.fd = notes_fd_}};
  epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, notes_fd_, &event);
}

void Keeper::DrainNotes(bool close_it) {
  if (notes_fd_ < 0) return;
  char buffer[65536];
  bool ended = false;
  for (;;) {
    ssize_t n = read(notes_fd_, buffer, sizeof(buffer));
    if (n > 0) {
      notes_reader_.Append(buffer, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    ended = n == 0 || errno != EAGAIN;
    break;
  }
  // Left in the reader at the pipe's end: a frame cut short by proctord's death, whose call
  // was never answered.
  absl::Status taken =
      TakeRequests(notes_reader_, [this](const internal::KeeperRequest& request) {
        if (request.has_remember() || request.has_forget()) {
          Remember(request);
        } else {
          spdlog::warn("keeper: a request other than a note on the notes pipe; ignored");
        }
        return true;
      });
  if (!taken.ok()) {
    spdlog::error("keeper: notes pipe: {}; closing it", std::string(taken.message()));
    ended = true;
  }
  if (!ended && !close_it) return;
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, notes_fd_, nullptr);
  close(notes_fd_);
  notes_fd_ = -1;
  notes_reader_ = FrameReader();
}

void Keeper::HandleSpawn(uint64_t serial, const internal::Spawn& spawn) {
  internal::KeeperEvent reply;
  reply.set_serial(serial);
  internal::Spawned& spawned = *reply.mutable_spawned();
  spawned.set_token(spawn.token());
  if (workers_.contains(spawn.token())) {
    spawned.set_error(EEXIST);
    spawned.set_failed_step("registering its token (already held)");
    Send(reply);
    return;
  }
  SpawnOutcome outcome = SpawnWorker(spawn);
  if (outcome.pid <= 0) {
    spawned.set_error(outcome.error);
    spawned.set_failed_step(outcome.failed_step);
    Send(reply);
    return;
  }
  epoll_event event{.events = EPOLLIN, .data = {.fd = outcome.pidfd}};
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, outcome.pidfd, &event) != 0) {
    // Cannot be watched, so cannot be kept: it goes before anyone relies on it.
    int err = errno;
    syscall(SYS_pidfd_send_signal, outcome.pidfd, SIGKILL, nullptr, 0);
    siginfo_t info;
    waitid(P_PIDFD, outcome.pidfd, &info, WEXITED | __WALL);
    close(outcome.pidfd);
    spawned.set_error(err);
    spawned.set_failed_step("watching it (epoll)");
    Send(reply);
    return;
  }
  Worker& worker = workers_[spawn.token()];
  worker.pid = outcome.pid;
  worker.pidfd = outcome.pidfd;
  worker.cgroup_dir = spawn.cgroup_dir();
  worker.memo = spawn.memo();
  pidfd_tokens_[outcome.pidfd] = spawn.token();
  worker_pids_.insert(outcome.pid);
  spawned.set_pid(outcome.pid);
  Send(reply);
}

void Keeper::OnWorkerEnded(uint64_t token) {
  Worker& worker = workers_.at(token);
  siginfo_t info{};
  rusage usage{};
  // Read, not reaped: the zombie keeps its pid and group id until proctord releases it.
  if (WaitId(P_PIDFD, worker.pidfd, &info, WEXITED | WNOHANG | WNOWAIT | __WALL, &usage) != 0 ||
      info.si_pid == 0) {
    return;  // not ended after all (a spurious wake-up)
  }
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, worker.pidfd, nullptr);
  pidfd_tokens_.erase(worker.pidfd);
  worker.exited = true;
  ++held_;
  internal::Exited& exit = worker.exit;
  exit.set_token(token);
  exit.set_pid(worker.pid);
  if (info.si_code == CLD_EXITED) {
    exit.set_exit_code(info.si_status);
  } else {
    exit.set_signal(info.si_status);
    exit.set_core_dumped(info.si_code == CLD_DUMPED);
  }
  exit.set_user_cpu_us(usage.ru_utime.tv_sec * 1000000 + usage.ru_utime.tv_usec);
  exit.set_system_cpu_us(usage.ru_stime.tv_sec * 1000000 + usage.ru_stime.tv_usec);
  exit.set_max_rss_kib(usage.ru_maxrss);
  internal::KeeperEvent event;
  *event.mutable_exited() = exit;
  Send(event);
}

void Keeper::HandleRelease(uint64_t token) {
  auto it = workers_.find(token);
  if (it == workers_.end() || !it->second.exited) {
    spdlog::warn("keeper: release of token {}, which is not an exited worker; ignored", token);
    return;
  }
  siginfo_t info;
  waitid(P_PIDFD, it->second.pidfd, &info, WEXITED | __WALL);
  close(it->second.pidfd);
  worker_pids_.erase(it->second.pid);
  workers_.erase(it);
  --held_;
  internal::KeeperEvent event;
  event.mutable_reaped()->set_token(token);
  Send(event);
  // It may have hidden ended orphans; asked once no other held worker would hide them.
  if (held_ == 0) ReapEndedOrphans();
}

void Keeper::OnSignals() {
  signalfd_siginfo info;
  while (read(signal_fd_, &info, sizeof(info)) == sizeof(info)) {
  }
  orphans_due_ = true;
  // Most often the SIGCHLD is a worker's, held now: asking before its release finds only it.
  if (held_ > 0 && connection_ >= 0 && greeted_) {
    ArmOrphansTimer();
    return;
  }
  ReapEndedOrphans();
}

void Keeper::ArmOrphansTimer() {
  if (orphans_timer_armed_) return;
  itimerspec wait{.it_interval = {}, .it_value = {.tv_sec = 0, .tv_nsec = kOrphansWaitNs}};
  timerfd_settime(orphans_timer_fd_, 0, &wait, nullptr);
  orphans_timer_armed_ = true;
}

void Keeper::ReapEndedOrphans() {
  // Workers stay unreaped until released, so no wait for "any child" may take what it finds:
  // it may be a worker. Asked without taking (WNOWAIT), it names the first ended child, which
  // is an orphan that came to us unless it is a worker. Reading the list of children on each
  // SIGCHLD instead took most of the keeper's time with 9,600 workers, on the way of every
  // exit: the kernel walks the list from its start for each 4 KiB read.
  while (orphans_due_) {
    siginfo_t child{};
    if (waitid(P_ALL, 0, &child, WEXITED | WNOHANG | WNOWAIT | __WALL) != 0 ||
        child.si_pid == 0) {
      orphans_due_ = false;  // nothing has ended that is not reaped
      return;
    }
    if (!worker_pids_.contains(child.si_pid)) {
      if (ReapOrphan(child.si_pid)) continue;
      break;  // it could not be taken: not asked again, lest it be found forever
    }
    // A held worker comes first. Its release asks again, normally within a millisecond.
    if (connection_ < 0 || !greeted_) break;  // no proctord to release it
    ArmOrphansTimer();
    return;
  }
  if (orphans_due_) ScanForEndedOrphans();
}

void Keeper::OnOrphansTimer() {
  uint64_t expirations;
  while (read(orphans_timer_fd_, &expirations, sizeof(expirations)) > 0) {
  }
  orphans_timer_armed_ = false;
  if (orphans_due_) ScanForEndedOrphans();
}

void Keeper::ScanForEndedOrphans() {
  orphans_due_ = false;
  const std::string children =
      ReadSmallFile(absl::StrCat("/proc/self/task/", getpid(), "/children"));
  for (absl::string_view word : absl::StrSplit(children, ' ', absl::SkipEmpty())) {
    pid_t pid = 0;
    if (!absl::SimpleAtoi(word, &pid) || pid <= 1 || worker_pids_.contains(pid)) continue;
    siginfo_t child{};
    if (waitid(P_PID, static_cast<id_t>(pid), &child, WEXITED | WNOHANG | WNOWAIT) == 0 &&
        child.si_pid == pid) {
      ReapOrphan(pid);
    }
  }
}

bool Keeper::ReapOrphan(pid_t pid) {
  // A zombie still shows the cgroup it died in: proctord tells its workers' from others.
  internal::KeeperEvent event;
  for (absl::string_view line :
       absl::StrSplit(ReadSmallFile(absl::StrCat("/proc/", pid, "/cgroup")), '\n')) {
    if (absl::ConsumePrefix(&line, "0::")) event.mutable_orphan_reaped()->set_cgroup(std::string(line));
  }
  siginfo_t child{};
  if (waitid(P_PID, static_cast<id_t>(pid), &child, WEXITED | WNOHANG | __WALL) != 0 ||
      child.si_pid != pid) {
    return false;
  }
  event.mutable_orphan_reaped()->set_pid(pid);
  Send(event);
  return true;
}

void Keeper::Send(const internal::KeeperEvent& event) {
  // Nobody to tell yet: whatever matters is reported on Hello (the answer to which must come
  // first).
  if (connection_ < 0 || !greeted_) return;
  AppendFrame(event, outgoing_);
  Flush();
}

void Keeper::Flush() {
  while (!outgoing_.empty()) {
    ssize_t n = write(connection_, outgoing_.data(), outgoing_.size());
    if (n > 0) {
      outgoing_.erase(0, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      // Never blocks: proctord may be writing to us at the same moment.
      epoll_event event{.events = EPOLLIN | EPOLLOUT, .data = {.fd = connection_}};
      epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, connection_, &event);
      return;
    }
    CloseConnection();
    return;
  }
}

void Keeper::OnWritable() {
  Flush();
  if (connection_ >= 0 && outgoing_.empty()) {
    epoll_event event{.events = EPOLLIN, .data = {.fd = connection_}};
    epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, connection_, &event);
  }
}

}  // namespace proctor
