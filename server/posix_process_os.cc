#include "server/posix_process_os.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace proctor {
namespace {

// errno → status once, at the syscall, with what it was about.
absl::Status PosixError(const std::string& context, int err) {
  std::string message = absl::StrCat(context, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    case ENOEXEC:
    case E2BIG:
    case EINVAL:
    case ENOTDIR:
    case EISDIR:
    case ENAMETOOLONG:
    case ELOOP:
      return absl::InvalidArgumentError(message);
    case EAGAIN:
    case ENOMEM:
    case EMFILE:
    case ENFILE:
      return absl::ResourceExhaustedError(message);
    default:
      return absl::InternalError(message);
  }
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

std::vector<char*> CStrings(const std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (const std::string& s : strings) out.push_back(const_cast<char*>(s.c_str()));
  out.push_back(nullptr);
  return out;
}

ResourceUsage ToUsage(const rusage& ru) {
  return ResourceUsage{
      .user_cpu = absl::DurationFromTimeval(ru.ru_utime),
      .system_cpu = absl::DurationFromTimeval(ru.ru_stime),
      .max_rss_bytes = static_cast<int64_t>(ru.ru_maxrss) * 1024,
  };
}

WaitStatus FromRaw(int status) {
  if (WIFSIGNALED(status)) return WaitStatus::Signaled(WTERMSIG(status), WCOREDUMP(status));
  return WaitStatus::Exited(WEXITSTATUS(status));
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

bool WriteText(const std::string& path, const std::string& text) {
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  close(fd);
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
  for (const Layout& layout : kLayouts) {
    std::string parent(layout.dir, std::strrchr(layout.dir, '/'));
    if (access((parent + "/cgroup.procs").c_str(), F_OK) != 0) continue;
    if (mkdir(layout.dir, 0755) != 0 && errno != EEXIST) continue;
    if (!WriteText(absl::StrCat(layout.dir, "/", layout.weight_file), layout.weight)) continue;
    int fd = open(absl::StrCat(layout.dir, "/cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC);
    if (fd >= 0) return fd;
  }
  return -1;
}

absl::StatusOr<std::unique_ptr<PosixProcessOs>> PosixProcessOs::Create(
    EventLoop& loop, std::optional<int> worker_nice) {
  // Grandchildren whose parent dies come to us and are reaped, instead of to init.
  if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) {
    int err = errno;
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot become a child subreaper (prctl PR_SET_CHILD_SUBREAPER: ", std::strerror(err),
        "); without it the orphans of workers would escape to init"));
  }
  return std::unique_ptr<PosixProcessOs>(new PosixProcessOs(loop, worker_nice));
}

PosixProcessOs::PosixProcessOs(EventLoop& loop, std::optional<int> worker_nice)
    : loop_(loop), worker_nice_(worker_nice), cpu_group_procs_(OpenWorkerCpuGroup()) {}

PosixProcessOs::~PosixProcessOs() {
  if (cpu_group_procs_ >= 0) close(cpu_group_procs_);
}

void PosixProcessOs::SetListeners(ExitListener on_exit, OrphanListener on_orphan_reaped) {
  on_exit_ = std::move(on_exit);
  on_orphan_reaped_ = std::move(on_orphan_reaped);
}

absl::StatusOr<Launched> PosixProcessOs::Launch(const LaunchSpec& spec,
                                                      uint64_t token) {
  if (!spec.cwd.empty()) {
    struct stat st;
    if (stat(spec.cwd.c_str(), &st) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("cwd ", spec.cwd, ": ", std::strerror(errno)));
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

  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t empty, all;
  sigemptyset(&empty);
  sigfillset(&all);
  // Own process group; the daemon's blocked mask and ignored signals (SIG_IGN survives exec)
  // must not leak into the worker.
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                      POSIX_SPAWN_SETSIGDEF);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setsigmask(&attr, &empty);
  posix_spawnattr_setsigdefault(&attr, &all);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, spec.stdout_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600);
  posix_spawn_file_actions_addopen(&actions, 2, spec.stderr_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600);
  if (!spec.cwd.empty()) posix_spawn_file_actions_addchdir_np(&actions, spec.cwd.c_str());
  // Belt and braces: our descriptors are all O_CLOEXEC, but libraries' may not be.
  posix_spawn_file_actions_addclosefrom_np(&actions, 3);

  std::vector<char*> argv = CStrings(spec.argv);
  std::vector<char*> envp = CStrings(spec.envp);
  {
    absl::MutexLock lock(&mu_);
    ++spawning_;
  }
  pid_t pid = -1;
  // glibc's posix_spawn reports a failed exec (and failed file actions) as its result.
  int rc = posix_spawn(&pid, path->c_str(), &actions, &attr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);

  int pidfd = -1;
  if (rc == 0) {
    // The pid cannot be reused before we reap it, so opening its pidfd now is race-free.
    pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  }
  bool recheck = false;
  absl::Status watched;
  {
    absl::MutexLock lock(&mu_);
    if (rc == 0 && pidfd >= 0) {
      // Watched and registered under the lock, so the reaping side cannot see the pid
      // half-registered (nor close the pidfd before it is watched). A pidfd that is already
      // readable fires as soon as the loop looks.
      watched = loop_.Watch(pidfd, [this, pid] { ReapWorker(pid); });
      if (watched.ok()) workers_[pid] = Worker{token, pidfd};
    }
    if (--spawning_ == 0 && recheck_after_spawn_) {
      recheck_after_spawn_ = false;
      recheck = true;
    }
  }
  if (recheck) loop_.Post([this] { OnSigchld(); });
  if (rc != 0) return PosixError(absl::StrCat("cannot start ", *path), rc);
  if (pidfd < 0 || !watched.ok()) {
    int err = errno;
    // Not registered: it is reaped as an orphan through SIGCHLD.
    kill(pid, SIGKILL);
    if (pidfd >= 0) close(pidfd);
    return pidfd < 0 ? PosixError("pidfd_open", err) : watched;
  }
  return Launched{pid, *std::move(path)};
}

void PosixProcessOs::ReapWorker(pid_t pid) {
  int status = 0;
  rusage ru{};
  uint64_t token;
  {
    absl::MutexLock lock(&mu_);
    auto it = workers_.find(pid);
    if (it == workers_.end()) return;
    // wait4 on one pid only looks at that child, whatever the number of others.
    if (wait4(pid, &status, WNOHANG, &ru) <= 0) return;
    token = it->second.token;
    loop_.Unwatch(it->second.pidfd);
    close(it->second.pidfd);
    workers_.erase(it);
  }
  on_exit_(token, FromRaw(status), ToUsage(ru));
}

void PosixProcessOs::OnSigchld() {
  bool reaped_orphan = false;
  for (;;) {
    siginfo_t info{};
    // Peek first (WNOWAIT): a worker found here is reaped through ReapWorker for its rusage.
    if (waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) != 0 || info.si_pid == 0) break;
    pid_t pid = info.si_pid;
    {
      absl::MutexLock lock(&mu_);
      if (!workers_.contains(pid)) {
        if (spawning_ > 0) {
          recheck_after_spawn_ = true;
          break;
        }
        waitpid(pid, nullptr, WNOHANG);
        reaped_orphan = true;
        continue;
      }
    }
    ReapWorker(pid);
  }
  if (reaped_orphan && on_orphan_reaped_) on_orphan_reaped_();
}

absl::Status PosixProcessOs::SignalGroup(pid_t pgid, int sig) {
  if (kill(-pgid, sig) != 0) {
    if (errno == ESRCH) return absl::NotFoundError(absl::StrCat("no process in group ", pgid));
    return PosixError(absl::StrCat("kill(-", pgid, ")"), errno);
  }
  return absl::OkStatus();
}

bool PosixProcessOs::GroupExists(pid_t pgid) {
  return kill(-pgid, 0) == 0 || errno == EPERM;
}

void PosixProcessOs::Confine(pid_t pid) {
  // posix_spawn can set neither: the worker inherited the daemon's raised priority and CPU
  // group, and leaves both right after it is recorded, usually before its first fork.
  if (cpu_group_procs_ >= 0) {
    std::string text = absl::StrCat(pid);
    (void)!write(cpu_group_procs_, text.data(), text.size());
  }
  if (worker_nice_.has_value()) setpriority(PRIO_PROCESS, pid, *worker_nice_);
}

absl::Status PosixProcessOs::SignalProcess(pid_t pid, int sig) {
  if (kill(pid, sig) != 0) {
    if (errno == ESRCH) return absl::NotFoundError(absl::StrCat("no process ", pid));
    return PosixError(absl::StrCat("kill(", pid, ")"), errno);
  }
  return absl::OkStatus();
}

bool PosixProcessOs::ProcessExists(pid_t pid) {
  return kill(pid, 0) == 0 || errno == EPERM;
}

namespace {

// The children of every thread of `pid` (each thread lists the children it made), from
// /proc/<pid>/task/*/children. Reads only what is asked for, not the whole process table.
std::vector<pid_t> ChildrenOf(pid_t pid) {
  std::vector<pid_t> children;
  std::string task_dir = absl::StrCat("/proc/", pid, "/task");
  DIR* tasks = opendir(task_dir.c_str());
  if (tasks == nullptr) return children;
  while (dirent* task = readdir(tasks)) {
    if (task->d_name[0] == '.') continue;
    std::string path = absl::StrCat(task_dir, "/", task->d_name, "/children");
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    std::string text;
    char buf[4096];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0) text.append(buf, n);
    close(fd);
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
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/%d/environ", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  std::string environ;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) environ.append(buf, n);
  close(fd);
  for (absl::string_view entry : absl::StrSplit(environ, '\0')) {
    uint64_t id = 0;
    if (absl::ConsumePrefix(&entry, "PROCTOR_ID=") && absl::SimpleAtoi(entry, &id)) return id;
  }
  return 0;
}

}  // namespace

std::vector<pid_t> PosixProcessOs::FindDescendants(const std::vector<pid_t>& roots,
                                                         const std::vector<uint64_t>& tokens) {
  absl::flat_hash_set<pid_t> seen(roots.begin(), roots.end());
  std::vector<pid_t> queue(roots.begin(), roots.end());
  absl::flat_hash_set<uint64_t> wanted(tokens.begin(), tokens.end());
  absl::flat_hash_set<pid_t> workers;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [pid, worker] : workers_) workers.insert(pid);
  }
  // Orphans of these workers' trees that came to us (escaped by setsid or a double fork)
  // still carry the worker's id in the environment they started with.
  for (pid_t child : ChildrenOf(getpid())) {
    if (!workers.contains(child) && !seen.contains(child) &&
        wanted.contains(WorkerIdInEnvironment(child))) {
      seen.insert(child);
      queue.push_back(child);
    }
  }
  size_t first_found = roots.size();
  std::vector<pid_t> found;
  for (size_t i = 0; i < queue.size(); ++i) {
    if (i >= first_found) found.push_back(queue[i]);
    for (pid_t child : ChildrenOf(queue[i])) {
      if (seen.insert(child).second) queue.push_back(child);
    }
  }
  return found;
}

}  // namespace proctor
