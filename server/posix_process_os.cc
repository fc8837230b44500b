#include "server/posix_process_os.h"
#include "server/keeper/spawn.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/inotify.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "server/posix_error.h"
#include "spdlog/spdlog.h"

namespace proctor {
namespace {

// kill(2) reads 0 as "my own group", -1 as "every process" and 1 is init: none of them is
// ever a worker's.
absl::Status RequireOwnPid(absl::string_view call, pid_t pid) {
  if (pid > 1) return absl::OkStatus();
  spdlog::error("{}: refusing pid {} (only a worker's pid, > 1, may be signalled)", std::string(call), pid);
  return absl::InternalError(absl::StrCat(call, ": refusing pid ", pid));
}

absl::Status CheckExecutable(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return PosixError(absl::StrCat("target ", path), errno);
  if (S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat("target ", path, " is a directory"));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat("target ", path, " is not a regular file"));
  }
  if (access(path.c_str(), X_OK) != 0) {
    return PosixError(absl::StrCat("target ", path, " is not executable"), errno);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> ResolveExecutable(const std::string& target,
                                              const std::string& path_env,
                                              const std::string& cwd) {
  if (target.find('/') != std::string::npos) {
    std::string path = target;
    if (target[0] != '/') {
      if (cwd.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "relative target ", target, " needs a cwd to be resolved against"));
      }
      path = absl::StrCat(cwd, "/", target);
    }
    if (absl::Status s = CheckExecutable(path); !s.ok()) return s;
    return path;
  }
  // A bare name: the first executable regular file on PATH, as execvp would find it.
  absl::Status first_error;
  for (absl::string_view dir : absl::StrSplit(path_env, ':')) {
    std::string candidate = absl::StrCat(dir.empty() ? absl::string_view(".") : dir, "/", target);
    absl::Status s = CheckExecutable(candidate);
    if (s.ok()) return candidate;
    if (first_error.ok() && !absl::IsNotFound(s)) first_error = s;
  }
  if (!first_error.ok()) return first_error;
  return absl::NotFoundError(
      absl::StrCat("target ", target, " not found on PATH (", path_env, ")"));
}

std::optional<int> RaiseDaemonPriority() {
  constexpr int kBoost = 5;
  errno = 0;
  int nice = getpriority(PRIO_PROCESS, 0);
  if (errno != 0 || setpriority(PRIO_PROCESS, 0, nice - kBoost) != 0) return std::nullopt;
  return nice;
}

namespace {

// On failure errno says why (the close of a descriptor opened for writing keeps it).
bool WriteText(const std::string& path, const std::string& text) {
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  int err = errno;
  close(fd);
  errno = err;
  return ok;
}

}  // namespace

int OpenWorkerCpuGroup() {
  struct Layout {
    const char* dir;
    const char* weight_file;
    const char* weight;
  };
  static constexpr Layout kLayouts[] = {
      {"/sys/fs/cgroup/cpu/proctor-workers", "cpu.shares", "128"},
      {"/sys/fs/cgroup/proctor-workers", "cpu.weight", "10"},
  };
  std::string why = "no cgroup hierarchy with a cpu controller";
  for (const Layout& layout : kLayouts) {
    std::string parent(layout.dir, std::strrchr(layout.dir, '/'));
    if (access((parent + "/cgroup.procs").c_str(), F_OK) != 0) continue;
    if (mkdir(layout.dir, 0755) != 0 && errno != EEXIST) {
      why = absl::StrCat("mkdir ", layout.dir, ": ", std::strerror(errno));
      continue;
    }
    if (!WriteText(absl::StrCat(layout.dir, "/", layout.weight_file), layout.weight)) {
      why = absl::StrCat("cannot write ", layout.dir, "/", layout.weight_file, ": ",
                         std::strerror(errno));
      continue;
    }
    int fd = open(absl::StrCat(layout.dir, "/cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
      spdlog::info("workers run in the CPU cgroup {}", layout.dir);
      return fd;
    }
    why = absl::StrCat("cannot open ", layout.dir, "/cgroup.procs: ", std::strerror(errno));
  }
  // Said once, at start: workers then share the daemon's CPU weight.
  spdlog::warn("no CPU cgroup for workers ({}); they share the daemon's CPU weight", why);
  return -1;
}

namespace {

std::string ReadSmallFile(int dir_fd, const std::string& path) {
  int fd = openat(dir_fd, path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  std::string text;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) text.append(buf, n);
  close(fd);
  return text;
}

// The parent pid in /proc/<pid>/stat (after the command name, which may hold anything).
pid_t ParentOf(pid_t pid) {
  std::string stat = ReadSmallFile(AT_FDCWD, absl::StrCat("/proc/", pid, "/stat"));
  size_t close_paren = stat.rfind(')');
  if (close_paren == std::string::npos) return 0;
  std::vector<absl::string_view> fields =
      absl::StrSplit(absl::string_view(stat).substr(close_paren + 2), ' ');
  pid_t ppid = 0;
  if (fields.size() < 2 || !absl::SimpleAtoi(fields[1], &ppid)) return 0;
  return ppid;
}

// The cgroup v2 path of `pid` ("/a/b"), from /proc/<pid>/cgroup's "0::" line.
std::string CgroupOf(pid_t pid) {
  std::string text =
      ReadSmallFile(AT_FDCWD, pid == 0 ? "/proc/self/cgroup" : absl::StrCat("/proc/", pid, "/cgroup"));
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::ConsumePrefix(&line, "0::")) return std::string(line);
  }
  return "";
}

// Where the cgroup v2 hierarchy is mounted (the unified one of a hybrid setup too), or "".
std::string CgroupV2Mount() {
  std::string text = ReadSmallFile(AT_FDCWD, "/proc/self/mountinfo");
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    // "... mount-point options - fstype source super-options"
    size_t dash = line.find(" - ");
    if (dash == absl::string_view::npos || !absl::StartsWith(line.substr(dash + 3), "cgroup2 ")) {
      continue;
    }
    std::vector<absl::string_view> fields = absl::StrSplit(line.substr(0, dash), ' ');
    if (fields.size() >= 5) return std::string(fields[4]);
  }
  return "";
}

// Whether `pid` is a live proctor-keeper (not a zombie, not another program given its number).
bool KeeperAlive(pid_t pid) {
  if (ReadSmallFile(AT_FDCWD, absl::StrCat("/proc/", pid, "/comm")) != "proctor-keeper\n") {
    return false;
  }
  std::string stat = ReadSmallFile(AT_FDCWD, absl::StrCat("/proc/", pid, "/stat"));
  size_t close_paren = stat.rfind(')');
  return close_paren != std::string::npos && close_paren + 2 < stat.size() &&
         stat[close_paren + 2] != 'Z';
}

int OpenPidfd(pid_t pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }

// Whether any process may be in group `pgid`. Signal 0 delivers nothing: this only asks, and
// an answer fooled by a new group given the same number errs towards "yes" (a drain waits
// longer), never towards a signal. Signals go through SignalGroup's proof of ownership.
bool GroupMayHaveMembers(pid_t pgid) {
  if (!RequireOwnPid("GroupMayHaveMembers", pgid).ok()) return false;
  return kill(-pgid, 0) == 0 || errno == EPERM;
}

bool PidfdExited(int pidfd) {
  pollfd p{.fd = pidfd, .events = POLLIN};
  return poll(&p, 1, 0) > 0;
}

// pidfd_send_signal's flag (Linux 6.9) for the process group the pidfd's struct pid leads:
// the group is named by the struct pid the pidfd pins, never by a number that may be reused.
// A worker leads its own group, so its pidfd names its group.
constexpr unsigned kPidfdSignalProcessGroup = 1U << 2;

// Whether the kernel takes kPidfdSignalProcessGroup: asked with signal 0 (nothing is sent)
// through a pidfd of ourselves, which leads no group here or leads our own. An older kernel
// refuses the flag (EINVAL); a newer one finds no such group (ESRCH) or checks ours (0).
bool PidfdGroupSignalsWork() {
  int self = static_cast<int>(syscall(SYS_pidfd_open, getpid(), 0));
  if (self < 0) return false;
  bool works = syscall(SYS_pidfd_send_signal, self, 0, nullptr, kPidfdSignalProcessGroup) == 0 ||
               errno == ESRCH;
  close(self);
  return works;
}

absl::Status PidfdSignal(int pidfd, pid_t pid, int sig, unsigned flags = 0) {
  if (syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, flags) != 0) {
    int err = errno;
    if (err == ESRCH) return absl::NotFoundError(absl::StrCat("process ", pid, " has ended"));
    return PosixError(absl::StrCat("pidfd_send_signal(", pid, ")"), err);
  }
  return absl::OkStatus();
}

// The children of every thread of `pid` (each thread lists the children it made), from
// /proc/<pid>/task/*/children. Reads only what is asked for, not the whole process table.
std::vector<pid_t> ChildrenOf(pid_t pid) {
  std::vector<pid_t> children;
  std::string task_dir = absl::StrCat("/proc/", pid, "/task");
  DIR* tasks = opendir(task_dir.c_str());
  if (tasks == nullptr) return children;
  while (dirent* task = readdir(tasks)) {
    if (task->d_name[0] == '.') continue;
    std::string text = ReadSmallFile(AT_FDCWD, absl::StrCat(task_dir, "/", task->d_name, "/children"));
    for (absl::string_view word : absl::StrSplit(text, ' ', absl::SkipEmpty())) {
      pid_t child;
      if (absl::SimpleAtoi(word, &child)) children.push_back(child);
    }
  }
  closedir(tasks);
  return children;
}

// The PROCTOR_ID that `pid`'s environment started with, or 0.
uint64_t WorkerIdInEnvironment(pid_t pid) {
  std::string environ = ReadSmallFile(AT_FDCWD, absl::StrCat("/proc/", pid, "/environ"));
  for (absl::string_view entry : absl::StrSplit(environ, '\0')) {
    uint64_t id = 0;
    if (absl::ConsumePrefix(&entry, "PROCTOR_ID=") && absl::SimpleAtoi(entry, &id)) return id;
  }
  return 0;
}

}  // namespace

absl::StatusOr<std::unique_ptr<PosixProcessOs>> PosixProcessOs::Create(
    EventLoop& loop, KeeperClient& keeper, const internal::Held& held, Options options) {
  std::unique_ptr<PosixProcessOs> os(new PosixProcessOs(loop, keeper, std::move(options)));
  os->group_pidfds_work_ = PidfdGroupSignalsWork();
  if (!os->group_pidfds_work_) {
    spdlog::info("this kernel cannot signal a process group through a pidfd (Linux < 6.9): a "
                 "worker's group is signalled while its leader is unreleased, then through its "
                 "cgroup");
  }
  if (os->options_.worker_cgroups) {
    os->SetUpCgroups();
  } else {
    spdlog::info("workers get no cgroups of their own (--no-worker-cgroups)");
  }
  // A CPU group in cgroup v2 would take workers out of their own cgroups; v1's may stay.
  if (os->cgroup_base_fd_ < 0 || CgroupV2Mount() != "/sys/fs/cgroup") {
    os->cpu_group_procs_ = OpenWorkerCpuGroup();
  }
  for (const internal::HeldWorker& worker : held.workers()) os->Adopt(worker);
  if (os->cgroup_base_fd_ >= 0) os->PoolLeftoverCgroups();
  return os;
}

std::optional<bool> PosixProcessOs::CgroupPopulatedLocked(const std::string& name) const {
  const std::string events = ReadSmallFile(cgroup_base_fd_, name + "/cgroup.events");
  if (absl::StrContains(events, "populated 1")) return true;
  if (absl::StrContains(events, "populated 0")) return false;
  return std::nullopt;
}

int PosixProcessOs::WatchCgroupEvents(const std::string& name) {
  return inotify_add_watch(
      inotify_fd_, absl::StrCat(cgroup_base_path_, "/", name, "/cgroup.events").c_str(),
      IN_MODIFY);
}

void PosixProcessOs::PoolLeftoverCgroups() {
  // Empty cgroups an earlier proctord of this keeper left (its pool, say): no worker is in
  // them, so they are spares (or, past the pool's size, removed). Busy ones are left alone.
  DIR* dir = opendir(cgroup_base_path_.c_str());
  if (dir == nullptr) return;
  absl::MutexLock lock(&mu_);
  absl::flat_hash_set<std::string> used;
  for (const auto& [token, cgroup] : cgroups_) used.insert(cgroup.name);
  while (dirent* entry = readdir(dir)) {
    if (entry->d_type != DT_DIR || entry->d_name[0] == '.' || used.contains(entry->d_name)) {
      continue;
    }
    const std::string name = entry->d_name;
    if (CgroupPopulatedLocked(name).value_or(true)) continue;  // busy, or cannot be told
    if (spare_cgroups_.size() < kSpareCgroups) {
      if (int watch = WatchCgroupEvents(name); watch >= 0) {
        spare_cgroups_.push_back(WorkerCgroup{.name = name, .watch = watch});
        continue;
      }
    }
    unlinkat(cgroup_base_fd_, name.c_str(), AT_REMOVEDIR);
  }
  closedir(dir);
}

PosixProcessOs::PosixProcessOs(EventLoop& loop, KeeperClient& keeper, Options options)
    : loop_(loop), keeper_(keeper), options_(std::move(options)) {}

void PosixProcessOs::SetUpCgroups() {
  std::string mount = CgroupV2Mount();
  std::string own = CgroupOf(0);
  if (mount.empty() || own.empty()) {
    spdlog::warn("no cgroup v2 hierarchy: a worker's escaped descendants are found in /proc");
    return;
  }
  std::string parent_relative = own == "/" ? "" : own;
  std::string parent = mount + parent_relative;
  // Worker cgroups of keepers that are gone: what is still in them was orphaned when its
  // keeper died, and is ours (nothing else makes proctord-N here); it is killed, and empty
  // cgroups go.
  if (DIR* dir = opendir(parent.c_str()); dir != nullptr) {
    while (dirent* entry = readdir(dir)) {
      pid_t owner = 0;
      absl::string_view name = entry->d_name;
      // Left alone while its keeper lives (a keeper of that number that is not a zombie).
      if (!absl::ConsumePrefix(&name, "proctord-") || !absl::SimpleAtoi(name, &owner) ||
          KeeperAlive(owner)) {
        continue;
      }
      std::string stale = absl::StrCat(parent, "/", entry->d_name);
      if (DIR* inner = opendir(stale.c_str()); inner != nullptr) {
        while (dirent* worker = readdir(inner)) {
          if (worker->d_name[0] == '.') continue;
          std::string cgroup = absl::StrCat(stale, "/", worker->d_name);
          if (rmdir(cgroup.c_str()) != 0 && errno == EBUSY) {
            spdlog::warn("killing what is left in {}: its keeper is gone", cgroup);
            WriteText(cgroup + "/cgroup.kill", "1");
          }
        }
        closedir(inner);
      }
      rmdir(stale.c_str());
    }
    closedir(dir);
  }
  // Named after the keeper, which outlives proctord: a restarted proctord finds its workers'
  // cgroups where it left them.
  std::string name = absl::StrCat("proctord-", keeper_.keeper_pid());
  cgroup_base_path_ = absl::StrCat(parent, "/", name);
  cgroup_base_relative_ = absl::StrCat(parent_relative, "/", name);
  auto give_up = [&](absl::string_view why) {
    int err = errno;
    spdlog::warn("no cgroups for workers ({} {}: {}): a worker's escaped descendants are found "
                 "in /proc",
                 std::string(why), cgroup_base_path_, std::strerror(err));
    if (cgroup_base_fd_ >= 0) close(cgroup_base_fd_);
    cgroup_base_fd_ = -1;
    rmdir(cgroup_base_path_.c_str());
  };
  if (mkdir(cgroup_base_path_.c_str(), 0755) != 0 && errno != EEXIST) return give_up("mkdir");
  cgroup_base_fd_ = open(cgroup_base_path_.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (cgroup_base_fd_ < 0) return give_up("open");
  if (faccessat(cgroup_base_fd_, "cgroup.kill", W_OK, 0) != 0) return give_up("cgroup.kill in");
  inotify_fd_ = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (inotify_fd_ < 0) return give_up("inotify for");
  if (absl::Status watched = loop_.Watch(inotify_fd_, [this] { OnCgroupEvents(); });
      !watched.ok()) {
    errno = EINVAL;
    close(inotify_fd_);
    inotify_fd_ = -1;
    return give_up("watching");
  }
  spdlog::info("each worker gets its own cgroup below {}", cgroup_base_path_);
}

PosixProcessOs::~PosixProcessOs() {
  absl::MutexLock lock(&mu_);
  if (inotify_fd_ >= 0) {
    loop_.Unwatch(inotify_fd_);
    close(inotify_fd_);
  }
  if (cgroup_base_fd_ >= 0) {
    // Those of workers that live on (a restart) are busy and stay.
    for (const auto& [token, cgroup] : cgroups_) {
      unlinkat(cgroup_base_fd_, cgroup.name.c_str(), AT_REMOVEDIR);
    }
    for (const WorkerCgroup& spare : spare_cgroups_) {
      unlinkat(cgroup_base_fd_, spare.name.c_str(), AT_REMOVEDIR);
    }
    close(cgroup_base_fd_);
    rmdir(cgroup_base_path_.c_str());
  }
  for (const auto& [pid, pidfd] : strays_) close(pidfd);
  for (const auto& [token, pidfd] : group_pidfds_) close(pidfd);
  if (cpu_group_procs_ >= 0) close(cpu_group_procs_);
  if (unknown_orphans_ > 0) {
    spdlog::info("the keeper reaped {} orphans that belonged to no worker", unknown_orphans_);
  }
}

void PosixProcessOs::SetListeners(ExitListener on_exit, OrphanListener on_orphan_reaped) {
  on_exit_ = std::move(on_exit);
  on_orphan_reaped_ = std::move(on_orphan_reaped);
}

KeeperClient::Listener PosixProcessOs::KeeperListener() {
  return KeeperClient::Listener{
      .on_spawned = [this](uint64_t token, pid_t pid) { OnSpawned(token, pid); },
      .on_exited = [this](const internal::Exited& exit) { OnWorkerExited(exit); },
      .on_reaped = [this](uint64_t token) { OnWorkerReaped(token); },
      .on_orphan_reaped = [this](const internal::OrphanReaped& orphan) {
        OnOrphanReaped(orphan.pid(), orphan.cgroup());
      },
  };
}

bool PosixProcessOs::WatchCgroupLocked(uint64_t token, const std::string& name) {
  WorkerCgroup cgroup{.name = name, .watch = WatchCgroupEvents(name)};
  if (cgroup.watch < 0) return false;
  cgroup_watches_[cgroup.watch] = token;
  cgroups_[token] = cgroup;
  return true;
}

void PosixProcessOs::Adopt(const internal::HeldWorker& worker) {
  absl::MutexLock lock(&mu_);
  workers_[worker.pid()] = worker.token();
  tokens_[worker.token()] = worker.pid();
  HoldGroupLocked(worker.token(), worker.pid());
  // Any cgroup directly below the base: spares are reused, so the name need not be the token.
  absl::string_view name = worker.cgroup_dir();
  if (name.empty() || cgroup_base_fd_ < 0 ||
      !absl::ConsumePrefix(&name, absl::StrCat(cgroup_base_path_, "/")) || name.empty() ||
      absl::StrContains(name, '/')) {
    if (!worker.cgroup_dir().empty()) {
      spdlog::warn("id={} pid={}: its cgroup {} is not where this proctord keeps them ({}); "
                   "its escaped descendants are found in /proc",
                   worker.token(), worker.pid(), worker.cgroup_dir(), cgroup_base_path_);
    }
    return;
  }
  if (!WatchCgroupLocked(worker.token(), std::string(name))) return;
  cgroups_[worker.token()].populated = CgroupPopulatedLocked(std::string(name)).value_or(false);
}

std::string PosixProcessOs::TakeCgroup(uint64_t token, std::string& step) {
  {
    absl::MutexLock lock(&mu_);
    if (!spare_cgroups_.empty()) {
      WorkerCgroup cgroup = std::move(spare_cgroups_.back());
      spare_cgroups_.pop_back();
      cgroup.populated = true;  // as a new one: until its cgroup.events says otherwise
      cgroup.launching = true;
      cgroup_watches_[cgroup.watch] = token;
      std::string name = cgroup.name;
      cgroups_[token] = std::move(cgroup);
      return name;
    }
  }
  // A new one is made here, never taken over: a directory that exists may be another
  // worker's (pooled cgroups keep their first names, so one named after this token may hold
  // a later worker) or a spare's.
  std::string name = absl::StrCat(token);
  for (int suffix = 1; mkdirat(cgroup_base_fd_, name.c_str(), 0755) != 0; ++suffix) {
    if (errno != EEXIST || suffix > kCgroupNameAttempts) {
      step = "mkdir";
      return "";
    }
    name = absl::StrCat(token, "-", suffix);
  }
  absl::MutexLock lock(&mu_);
  if (!WatchCgroupLocked(token, name)) {
    const int err = errno;
    unlinkat(cgroup_base_fd_, name.c_str(), AT_REMOVEDIR);
    errno = err;
    step = "cgroup";
    return "";
  }
  cgroups_[token].launching = true;
  return name;
}

absl::StatusOr<Launched> PosixProcessOs::Launch(const LaunchSpec& spec, uint64_t token) {
  if (!spec.cwd.empty()) {
    struct stat st;
    if (stat(spec.cwd.c_str(), &st) != 0) {
      int err = errno;
      return absl::InvalidArgumentError(absl::StrCat("cwd ", spec.cwd, ": ", std::strerror(err)));
    }
    if (!S_ISDIR(st.st_mode)) {
      return absl::InvalidArgumentError(absl::StrCat("cwd ", spec.cwd, " is not a directory"));
    }
  }
  std::string path_env = "/usr/local/bin:/usr/bin:/bin";
  for (const std::string& entry : spec.envp) {
    if (entry.starts_with("PATH=")) path_env = entry.substr(5);
  }
  absl::StatusOr<std::string> path = ResolveExecutable(spec.path, path_env, spec.cwd);
  if (!path.ok()) return path.status();

  internal::Spawn spawn;
  spawn.set_token(token);
  spawn.set_path(*path);
  for (const std::string& arg : spec.argv) spawn.add_argv(arg);
  for (const std::string& entry : spec.envp) spawn.add_envp(entry);
  // The keeper runs in /: "the daemon's" working directory is passed on explicitly.
  if (!spec.cwd.empty()) {
    spawn.set_cwd(spec.cwd);
  } else if (char* cwd = getcwd(nullptr, 0); cwd != nullptr) {
    spawn.set_cwd(cwd);
    free(cwd);
  }
  spawn.set_stdout_path(spec.stdout_path);
  spawn.set_stderr_path(spec.stderr_path);
  spawn.set_append_output(spec.append_output);
  spawn.set_memo(spec.memo);
  if (options_.worker_descriptors.has_value()) {
    spawn.mutable_descriptors()->set_soft(options_.worker_descriptors->rlim_cur);
    spawn.mutable_descriptors()->set_hard(options_.worker_descriptors->rlim_max);
  }
  if (spec.identity.has_value()) {
    spawn.set_switch_user(true);
    spawn.set_uid(spec.identity->uid);
    spawn.set_gid(spec.identity->gid);
    for (gid_t group : spec.identity->groups) spawn.add_groups(group);
  }

  // The worker's own cgroup, had (and watched) before it exists so that it is born into it.
  std::string cgroup_name;
  const bool use_cgroup = cgroup_base_fd_ >= 0 && cgroups_usable_.load();
  if (use_cgroup) {
    std::string step;
    cgroup_name = TakeCgroup(token, step);
    if (cgroup_name.empty()) {
      const int err = errno;
      GiveUpCgroups(absl::StrCat(step, " ", cgroup_base_path_, "/", token), err);
      return Launch(spec, token);
    }
    spawn.set_cgroup_dir(absl::StrCat(cgroup_base_path_, "/", cgroup_name));
  }
  auto drop_cgroup = [&] {
    if (!use_cgroup) return;
    absl::MutexLock lock(&mu_);
    auto it = cgroups_.find(token);
    if (it == cgroups_.end()) return;
    inotify_rm_watch(inotify_fd_, it->second.watch);
    cgroup_watches_.erase(it->second.watch);
    unlinkat(cgroup_base_fd_, it->second.name.c_str(), AT_REMOVEDIR);
    cgroups_.erase(it);
  };

  absl::StatusOr<internal::Spawned> spawned = keeper_.Spawn(std::move(spawn));
  if (!spawned.ok()) {
    drop_cgroup();
    return spawned.status();
  }
  if (spawned->pid() > 0) return Launched{spawned->pid(), *std::move(path)};
  drop_cgroup();
  const int err = spawned->error();
  const std::string& step = spawned->failed_step();
  if (step == kEnterCgroupStep) {
    // The child never ran the target: start it again, without a cgroup.
    GiveUpCgroups(absl::StrCat("writing ", cgroup_base_path_, "/", cgroup_name, "/cgroup.procs"),
                  err);
    return Launch(spec, token);
  }
  if (step.empty()) return PosixError(absl::StrCat("cannot start ", *path), err);
  if (step == "clone") return PosixError("clone", err);
  return PosixError(absl::StrCat("cannot start ", *path, ": ", step), err);
}

void PosixProcessOs::GiveUpCgroups(const std::string& what, int err) {
  if (cgroups_usable_.exchange(false)) {
    spdlog::warn("no more cgroups for new workers ({}: {}); their escaped descendants are "
                 "found in /proc",
                 what, std::strerror(err));
  }
}

void PosixProcessOs::OnSpawned(uint64_t token, pid_t pid) {
  absl::MutexLock lock(&mu_);
  workers_[pid] = token;
  tokens_[token] = pid;
  HoldGroupLocked(token, pid);
  // From now on the worker's unreaped pid keeps its cgroup. It entered before its exec, so
  // a read now is its own: an event put off while it was on its way in is read here (it
  // may have ended meanwhile, and no event would come again).
  if (auto cgroup = cgroups_.find(token); cgroup != cgroups_.end() && cgroup->second.launching) {
    cgroup->second.launching = false;
    if (std::exchange(cgroup->second.event_unread, false)) {
      cgroup->second.populated = CgroupPopulatedLocked(cgroup->second.name).value_or(true);
    }
  }
}

void PosixProcessOs::HoldGroupLocked(uint64_t token, pid_t pid) {
  if (!group_pidfds_work_) return;
  // The keeper has not reaped it (it waits for our release), so the number is still its.
  int pidfd = OpenPidfd(pid);
  if (pidfd >= 0) group_pidfds_[token] = pidfd;
}

void PosixProcessOs::ForgetGroupLocked(uint64_t token) {
  leftover_groups_.erase(token);
  if (auto held = group_pidfds_.find(token); held != group_pidfds_.end()) {
    close(held->second);
    group_pidfds_.erase(held);
  }
}

void PosixProcessOs::OnWorkerExited(const internal::Exited& exit) {
  const uint64_t token = exit.token();
  WaitStatus status = exit.signal() != 0 ? WaitStatus::Signaled(exit.signal(), exit.core_dumped())
                                         : WaitStatus::Exited(exit.exit_code());
  ResourceUsage usage{
      .user_cpu = absl::Microseconds(exit.user_cpu_us()),
      .system_cpu = absl::Microseconds(exit.system_cpu_us()),
      .max_rss_bytes = exit.max_rss_kib() * 1024,
  };
  {
    // Ended: its group may be judged by its other members from now on (a Release answered
    // right after the Join this exit answers must not wait for the reaping).
    absl::MutexLock lock(&mu_);
    ended_leaders_.insert(token);
  }
  // The zombie keeps its pid (and group id) until released, so the leader still counts as
  // unreaped while the exit is recorded and its consequences (signals to the group) are sent.
  on_exit_(token, status, usage);
  {
    absl::MutexLock lock(&mu_);
    ended_leaders_.erase(token);
    auto leader = tokens_.find(token);
    if (leader != tokens_.end()) {
      // From here on its group id is no proof of ownership: the keeper is about to reap it.
      releasing_[token] = leader->second;
      tokens_.erase(leader);
    }
  }
  // Recorded (journaled) by now: the keeper may let go of it.
  keeper_.Release(token);
}

void PosixProcessOs::OnWorkerReaped(uint64_t token) {
  {
    absl::MutexLock lock(&mu_);
    auto leader = releasing_.find(token);
    if (leader == releasing_.end()) return;
    const pid_t pid = leader->second;
    workers_.erase(pid);
    releasing_.erase(leader);
    // Members of its group may outlive it; the group is remembered until found empty.
    if (GroupMayHaveMembers(pid)) {
      leftover_groups_[token] = pid;
    } else {
      ForgetGroupLocked(token);
    }
    MaybeRemoveCgroupLocked(token);
  }
  // Terminations waiting for the worker's group to empty may be done.
  if (on_orphan_reaped_) on_orphan_reaped_();
}

void PosixProcessOs::OnOrphanReaped(pid_t pid, const std::string& cgroup) {
  bool known = cgroup_base_fd_ >= 0 && absl::StartsWith(cgroup, cgroup_base_relative_ + "/");
  {
    absl::MutexLock lock(&mu_);
    if (auto stray = strays_.find(pid); stray != strays_.end()) {
      known = true;
      close(stray->second);
      strays_.erase(stray);
    }
  }
  if (!known) {
    ++unknown_orphans_;
    spdlog::info("the keeper reaped orphan pid={} that no worker is known to own ({} so far)",
                 pid, unknown_orphans_);
  }
  if (on_orphan_reaped_) on_orphan_reaped_();
}

void PosixProcessOs::OnCgroupEvents() {
  alignas(inotify_event) char buf[4096];
  std::vector<int> changed;
  ssize_t n;
  while ((n = read(inotify_fd_, buf, sizeof(buf))) > 0) {
    for (char* p = buf; p < buf + n;) {
      auto* event = reinterpret_cast<inotify_event*>(p);
      changed.push_back(event->wd);
      p += sizeof(inotify_event) + event->len;
    }
  }
  bool emptied = false;
  for (int watch : changed) {
    absl::MutexLock lock(&mu_);
    auto w = cgroup_watches_.find(watch);
    if (w == cgroup_watches_.end()) continue;
    uint64_t token = w->second;
    WorkerCgroup& cgroup = cgroups_.at(token);
    // An event may be late (the kernel spaces them 10 ms apart) and be about the worker the
    // cgroup had before: while a launch is on its way in, it is put off until the spawn.
    if (cgroup.launching) {
      cgroup.event_unread = true;
      continue;
    }
    const bool populated = CgroupPopulatedLocked(cgroup.name).value_or(false);
    if (cgroup.populated && !populated) emptied = true;
    cgroup.populated = populated;
    MaybeRemoveCgroupLocked(token);
  }
  // A worker's last process ended: terminations waiting for it may be done.
  if (emptied && on_orphan_reaped_) on_orphan_reaped_();
}

void PosixProcessOs::MaybeRemoveCgroupLocked(uint64_t token) {
  auto it = cgroups_.find(token);
  // Kept until the leader is reaped, not only released: until then GroupHasLiveMembers()
  // answers from it, and without it would have to search /proc.
  if (it == cgroups_.end() || it->second.populated || it->second.launching ||
      tokens_.contains(token) || releasing_.contains(token)) {
    return;
  }
  // Empty for sure (read now, not as last seen): the next worker's.
  if (spare_cgroups_.size() < kSpareCgroups &&
      !CgroupPopulatedLocked(it->second.name).value_or(true)) {
    ForgetGroupLocked(token);  // its members were all in the cgroup
    cgroup_watches_.erase(it->second.watch);
    spare_cgroups_.push_back(std::move(it->second));
    cgroups_.erase(it);
    return;
  }
  // EBUSY if something entered meanwhile: then the next event removes it.
  if (unlinkat(cgroup_base_fd_, it->second.name.c_str(), AT_REMOVEDIR) != 0) return;
  ForgetGroupLocked(token);  // its members were all in the cgroup
  inotify_rm_watch(inotify_fd_, it->second.watch);
  cgroup_watches_.erase(it->second.watch);
  cgroups_.erase(it);
}

void PosixProcessOs::OnSigchld() {
  // proctord's only children are keepers it started (and no worker): the one that exits
  // after a Shutdown, or one that died.
  for (;;) {
    int status = 0;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid <= 0) break;
    if (pid == keeper_.keeper_pid()) {
      spdlog::info("the keeper (pid {}) exited with status {}", pid, status);
    }
  }
}

bool PosixProcessOs::Reusable(uint64_t token) {
  absl::MutexLock lock(&mu_);
  return !tokens_.contains(token) && !releasing_.contains(token) &&
         !ended_leaders_.contains(token) && !leftover_groups_.contains(token) &&
         !group_pidfds_.contains(token) && !cgroups_.contains(token);
}

absl::Status PosixProcessOs::SignalGroup(uint64_t token, int sig) {
  absl::MutexLock lock(&mu_);
  if (auto held = group_pidfds_.find(token); held != group_pidfds_.end()) {
    // The pidfd pins the leader's struct pid, which is the group's: only members of this
    // group can be reached, whoever has reaped the leader and whatever took its number.
    absl::Status sent = PidfdSignal(held->second, 0, sig, kPidfdSignalProcessGroup);
    if (absl::IsNotFound(sent)) {
      return absl::NotFoundError(absl::StrCat("nothing of worker ", token, "'s group is left"));
    }
    return sent;
  }
  pid_t pgid = 0;
  bool provably_ours = false;
  if (auto leader = tokens_.find(token); leader != tokens_.end()) {
    // Unreleased, so unreaped (the keeper reaps only once released, and a release is
    // decided under the lock we hold): the group id cannot be anyone else's.
    pgid = leader->second;
    provably_ours = true;
  } else if (auto group = leftover_groups_.find(token); group != leftover_groups_.end()) {
    pgid = group->second;
    if (workers_.contains(pgid)) {
      // The number leads another worker now, so the old group emptied long ago.
      ForgetGroupLocked(token);
      return absl::NotFoundError(absl::StrCat("nothing of worker ", token, "'s group is left"));
    }
  } else if (auto releasing = releasing_.find(token); releasing != releasing_.end()) {
    // Being reaped by the keeper as we speak: the number may be free any moment.
    pgid = releasing->second;
  }
  if (pgid == 0) return absl::NotFoundError(absl::StrCat("nothing of worker ", token, " is left"));
  if (absl::Status s = RequireOwnPid("SignalGroup", pgid); !s.ok()) return s;
  if (provably_ours) {
    if (kill(-pgid, sig) != 0) {
      int err = errno;
      if (err == ESRCH) return absl::NotFoundError(absl::StrCat("no process in group ", pgid));
      return PosixError(absl::StrCat("kill(-", pgid, ")"), err);
    }
    return absl::OkStatus();
  }
  if (cgroups_.contains(token)) {
    SignalGroupInCgroupLocked(token, pgid, sig);
    return absl::OkStatus();
  }
  return absl::NotFoundError(absl::StrCat("group ", pgid, " of ended worker ", token,
                                          " can no longer be told apart from others"));
}

void PosixProcessOs::SignalGroupInCgroupLocked(uint64_t token, pid_t pgid, int sig) {
  for (auto [pid, pidfd] : CgroupMembersLocked(cgroups_.at(token).name)) {
    // The pidfd pins the process; its group is read after, so a reused number cannot pass.
    if (getpgid(pid) == pgid) PidfdSignal(pidfd, pid, sig).IgnoreError();
    close(pidfd);
  }
}

absl::Status PosixProcessOs::KillCgroup(uint64_t token) {
  absl::MutexLock lock(&mu_);
  auto cgroup = cgroups_.find(token);
  if (cgroup == cgroups_.end()) {
    return cgroup_base_fd_ < 0
               ? absl::UnimplementedError("workers get no cgroups here")
               : absl::NotFoundError(absl::StrCat("worker ", token, " has no cgroup left"));
  }
  if (!cgroup->second.populated) return absl::OkStatus();
  int fd = openat(cgroup_base_fd_, (cgroup->second.name + "/cgroup.kill").c_str(),
                  O_WRONLY | O_CLOEXEC);
  int err = errno;
  if (fd >= 0) {
    bool written = write(fd, "1", 1) == 1;
    err = errno;
    close(fd);
    if (written) return absl::OkStatus();
  }
  return PosixError(
      absl::StrCat("cgroup.kill of ", cgroup_base_path_, "/", cgroup->second.name), err);
}

std::vector<std::pair<pid_t, int>> PosixProcessOs::CgroupMembersLocked(const std::string& name) {
  std::vector<std::pair<pid_t, int>> members;
  const std::string expected = absl::StrCat(cgroup_base_relative_, "/", name);
  std::string procs = ReadSmallFile(cgroup_base_fd_, name + "/cgroup.procs");
  for (absl::string_view line : absl::StrSplit(procs, '\n', absl::SkipEmpty())) {
    pid_t pid = 0;
    if (!absl::SimpleAtoi(line, &pid) || pid <= 1) continue;
    int pidfd = OpenPidfd(pid);
    if (pidfd < 0) continue;  // ended meanwhile
    // The pidfd is taken first and the membership checked after: if the number was given to
    // another process in between, that process is not in this cgroup and is left alone.
    if (CgroupOf(pid) != expected) {
      close(pidfd);
      continue;
    }
    members.emplace_back(pid, pidfd);
  }
  return members;
}

bool PosixProcessOs::GroupExists(uint64_t token) {
  absl::MutexLock lock(&mu_);
  return GroupExistsLocked(token);
}

bool PosixProcessOs::GroupExistsLocked(uint64_t token) {
  // The leader, unreaped (its zombie counts: its group is not done until it is reaped).
  if (tokens_.contains(token) || releasing_.contains(token)) return true;
  auto group = leftover_groups_.find(token);
  if (group == leftover_groups_.end()) return false;
  // Every member of the group is in the worker's cgroup (a process can only join a group
  // from the parent's side), so an empty cgroup settles it; the kill(0) below could be
  // fooled by a new group that was given the same number.
  auto cgroup = cgroups_.find(token);
  bool maybe = (cgroup_base_fd_ < 0 || (cgroup != cgroups_.end() && cgroup->second.populated)) &&
               !workers_.contains(group->second);  // the number leads another worker now
  // Once the group is found empty it is forgotten for good.
  if (maybe && GroupMayHaveMembers(group->second)) return true;
  ForgetGroupLocked(token);
  return false;
}

bool PosixProcessOs::GroupHasLiveMembers(uint64_t token) {
  pid_t pgid = 0;
  {
    absl::MutexLock lock(&mu_);
    auto releasing = releasing_.find(token);
    auto ended = tokens_.find(token);
    if (releasing != releasing_.end()) {
      pgid = releasing->second;
    } else if (ended != tokens_.end() && ended_leaders_.contains(token)) {
      pgid = ended->second;
    } else {
      return GroupExistsLocked(token);
    }
    // Its zombie still counts for kill(0): another member must be found. An ended process
    // leaves its cgroup at once, so where there is one it answers (read now: the watch on it
    // may not have been read yet).
    if (auto cgroup = cgroups_.find(token); cgroup != cgroups_.end()) {
      return CgroupPopulatedLocked(cgroup->second.name).value_or(false);
    }
  }
  // No cgroup: any live process in the group but the leader (rare: only while it is reaped).
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return true;
  bool found = false;
  while (dirent* entry = readdir(proc)) {
    pid_t pid = 0;
    if (!absl::SimpleAtoi(entry->d_name, &pid) || pid == pgid) continue;
    if (getpgid(pid) == pgid && ParentOf(pid) != 0) {
      found = true;
      break;
    }
  }
  closedir(proc);
  return found;
}

bool PosixProcessOs::AnythingAlive(uint64_t token) {
  {
    absl::MutexLock lock(&mu_);
    if (auto cgroup = cgroups_.find(token); cgroup != cgroups_.end()) {
      if (cgroup->second.populated) return true;
    }
  }
  return GroupExists(token);
}

absl::Status PosixProcessOs::Confine(uint64_t token) {
  pid_t pid;
  {
    absl::MutexLock lock(&mu_);
    auto leader = tokens_.find(token);
    if (leader == tokens_.end()) return absl::OkStatus();  // ended already
    pid = leader->second;
  }
  if (absl::Status s = RequireOwnPid("Confine", pid); !s.ok()) return s;
  // The clone could set neither: the worker inherited the daemon's raised priority and CPU
  // group, and leaves both right after it is recorded, usually before its first fork.
  if (cpu_group_procs_ >= 0) {
    std::string text = absl::StrCat(pid);
    if (write(cpu_group_procs_, text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
      int err = errno;
      // A worker that exited at once is not an error; anything else is worth saying once.
      if (err != ESRCH && !cpu_group_failure_logged_.exchange(true)) {
        spdlog::warn("cannot move workers into their CPU cgroup: {}; they keep the daemon's",
                     std::strerror(err));
      }
    }
  }
  if (options_.worker_nice.has_value() &&
      setpriority(PRIO_PROCESS, pid, *options_.worker_nice) != 0) {
    int err = errno;
    if (err != ESRCH) return PosixError(absl::StrCat("setpriority(", pid, ")"), err);
  }
  return absl::OkStatus();
}

absl::Status PosixProcessOs::SignalProcess(pid_t pid, int sig) {
  if (absl::Status s = RequireOwnPid("SignalProcess", pid); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  auto stray = strays_.find(pid);
  if (stray == strays_.end()) {
    return absl::NotFoundError(absl::StrCat("pid ", pid, " is not a process proctord holds"));
  }
  absl::Status sent = PidfdSignal(stray->second, pid, sig);
  if (absl::IsNotFound(sent)) {
    close(stray->second);
    strays_.erase(stray);
  }
  return sent;
}

bool PosixProcessOs::ProcessExists(pid_t pid) {
  if (!RequireOwnPid("ProcessExists", pid).ok()) return false;
  absl::MutexLock lock(&mu_);
  auto stray = strays_.find(pid);
  if (stray == strays_.end()) return false;
  if (!PidfdExited(stray->second)) return true;
  // Ended; an orphan of the keeper's is there until the keeper has reaped it (OnOrphanReaped
  // forgets it then), so that no zombie outlives a termination that waited for its tree.
  if (ParentOf(pid) == keeper_.keeper_pid()) return true;
  close(stray->second);
  strays_.erase(stray);
  return false;
}

void PosixProcessOs::HoldStrayLocked(pid_t pid, int pidfd) {
  auto [it, inserted] = strays_.emplace(pid, pidfd);
  if (inserted) return;
  if (PidfdExited(it->second)) {
    // The number now names a new process of the tree; the old one is gone.
    close(it->second);
    it->second = pidfd;
  } else {
    close(pidfd);
  }
}

bool PosixProcessOs::InWorkerTree(uint64_t token, pid_t pid) {
  if (pid <= 1) return false;
  // Pinned while it is looked at: should it end meanwhile, its /proc files vanish under the
  // checks, and that must read as "gone", not as "someone else's".
  int pidfd = OpenPidfd(pid);
  if (pidfd < 0) return errno == ESRCH;  // any other failure proves nothing: refused
  bool found = false;
  {
    // Held for the walk: the leader cannot be reaped (and its number reused) meanwhile.
    absl::MutexLock lock(&mu_);
    if (auto leader = tokens_.find(token); leader != tokens_.end()) {
      // Bounded: numbers reused between two reads could otherwise make a loop.
      constexpr int kMaxDepth = 1024;
      pid_t ancestor = pid;
      for (int depth = 0; ancestor > 1 && depth < kMaxDepth && !found; ++depth) {
        found = ancestor == leader->second;
        ancestor = ParentOf(ancestor);
      }
    }
    if (auto cgroup = cgroups_.find(token); !found && cgroup != cgroups_.end()) {
      const std::string expected = absl::StrCat(cgroup_base_relative_, "/", cgroup->second.name);
      const std::string actual = CgroupOf(pid);
      found = actual == expected || absl::StartsWith(actual, expected + "/");
    }
  }
  found = found || (token != 0 && WorkerIdInEnvironment(pid) == token) || PidfdExited(pidfd);
  close(pidfd);
  return found;
}

std::vector<pid_t> PosixProcessOs::FindDescendants(const std::vector<uint64_t>& tokens) {
  absl::flat_hash_set<uint64_t> wanted(tokens.begin(), tokens.end());
  std::vector<pid_t> found;
  // Held for the whole search: a leader cannot be reaped (and its pid reused) meanwhile.
  absl::MutexLock lock(&mu_);
  absl::flat_hash_set<pid_t> seen;
  std::vector<pid_t> queue;
  for (uint64_t token : tokens) {
    if (auto leader = tokens_.find(token); leader != tokens_.end()) {
      seen.insert(leader->second);
      queue.push_back(leader->second);
    }
  }
  // A process found below `parent` is taken as a pidfd first, and kept only if it is still
  // `parent`'s child after that: a reused number never passes for a descendant.
  // With `of_tree`, the process must also have started with one of the workers' ids in its
  // environment (checked once it is pinned, too).
  auto take = [&](pid_t pid, pid_t parent, bool of_tree = false) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    if (pid <= 1 || workers_.contains(pid) || seen.contains(pid)) return;
    int pidfd = OpenPidfd(pid);
    if (pidfd < 0) return;
    if (ParentOf(pid) != parent || (of_tree && !wanted.contains(WorkerIdInEnvironment(pid)))) {
      close(pidfd);
      return;
    }
    seen.insert(pid);
    HoldStrayLocked(pid, pidfd);
    found.push_back(pid);
    queue.push_back(pid);
  };
  // Orphans of these workers' trees that came to the keeper (escaped by setsid or a double
  // fork) still carry the worker's id in the environment they started with.
  const pid_t keeper = keeper_.keeper_pid();
  for (pid_t child : ChildrenOf(keeper)) take(child, keeper, /*of_tree=*/true);
  for (size_t i = 0; i < queue.size(); ++i) {
    pid_t parent = queue[i];
    for (pid_t child : ChildrenOf(parent)) take(child, parent);
  }
  // Whatever is in the workers' cgroups belongs to them, whatever it did to its environment.
  for (uint64_t token : tokens) {
    auto cgroup = cgroups_.find(token);
    if (cgroup == cgroups_.end() || !cgroup->second.populated) continue;
    for (auto [pid, pidfd] : CgroupMembersLocked(cgroup->second.name)) {
      if (workers_.contains(pid) || !seen.insert(pid).second) {
        close(pidfd);
        continue;
      }
      HoldStrayLocked(pid, pidfd);
      found.push_back(pid);
    }
  }
  return found;
}

}  // namespace proctor
