#include "server/posix_process_os.h"

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
#include "spdlog/spdlog.h"

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

constexpr size_t kChildStackBytes = 64 * 1024;
constexpr char kEnterCgroupStep[] = "entering its cgroup";

// Everything the child needs, prepared by the parent: between clone() and exec the child
// shares the parent's memory and may only make syscalls (no allocation, no locks).
struct ChildPlan {
  const char* path;
  char* const* argv;
  char* const* envp;
  const char* cwd;  // null: the daemon's
  const char* stdout_path;
  const char* stderr_path;
  int cgroup_procs = -1;  // the worker's cgroup.procs, or -1
  const rlimit* descriptors = nullptr;  // RLIMIT_NOFILE to give back, or null
  bool switch_user = false;
  uid_t uid = 0;
  gid_t gid = 0;
  const gid_t* groups = nullptr;
  size_t group_count = 0;
  // Written by a child whose step failed; read by the parent once clone() has returned,
  // which with CLONE_VFORK is after the child's exec or exit.
  int error = 0;
  const char* failed_step = nullptr;
};

[[noreturn]] void ChildFailed(ChildPlan* plan, const char* step) {
  plan->error = errno;
  plan->failed_step = step;
  _exit(127);
}

// Opens `path` as descriptor `target` of the child.
bool OpenAs(int target, const char* path, int flags) {
  int fd = open(path, flags, 0600);
  if (fd < 0) return false;
  if (fd == target) return true;
  bool ok = dup2(fd, target) == target;
  close(fd);
  return ok;
}

int ChildMain(void* arg) {
  ChildPlan* plan = static_cast<ChildPlan*>(arg);
  // Handlers and ignored signals of the daemon must not reach the worker (SIG_IGN survives
  // exec). Without CLONE_SIGHAND this changes only the child's own table.
  for (int sig = 1; sig < NSIG; ++sig) {
    struct sigaction old;
    if (sig == SIGKILL || sig == SIGSTOP || sigaction(sig, nullptr, &old) != 0) continue;
    if (old.sa_handler == SIG_DFL) continue;
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigaction(sig, &dfl, nullptr);
  }
  if (setpgid(0, 0) != 0) ChildFailed(plan, "setpgid");
  // The descriptor limit proctord started with, not the one it raised for itself: some
  // programs size tables by it or misbehave with a very high one.
  if (plan->descriptors != nullptr && setrlimit(RLIMIT_NOFILE, plan->descriptors) != 0) {
    ChildFailed(plan, "setrlimit(RLIMIT_NOFILE)");
  }
  // Into the worker's cgroup before exec: nothing the worker runs is ever outside it.
  if (plan->cgroup_procs >= 0 && write(plan->cgroup_procs, "0", 1) != 1) {
    ChildFailed(plan, kEnterCgroupStep);
  }
  if (!OpenAs(0, "/dev/null", O_RDONLY)) ChildFailed(plan, "open /dev/null");
  constexpr int kCapture = O_WRONLY | O_CREAT | O_TRUNC | O_APPEND;
  if (!OpenAs(1, plan->stdout_path, kCapture)) ChildFailed(plan, plan->stdout_path);
  if (!OpenAs(2, plan->stderr_path, kCapture)) ChildFailed(plan, plan->stderr_path);
  // Raw syscalls: glibc's wrappers would make every thread of the daemon (whose memory the
  // child shares) change its ids. Groups first, while we may still change them.
  if (plan->switch_user) {
    if (syscall(SYS_setgroups, plan->group_count, plan->groups) != 0) {
      ChildFailed(plan, "setgroups");
    }
    if (syscall(SYS_setresgid, plan->gid, plan->gid, plan->gid) != 0) {
      ChildFailed(plan, "setresgid");
    }
    if (syscall(SYS_setresuid, plan->uid, plan->uid, plan->uid) != 0) {
      ChildFailed(plan, "setresuid");
    }
  }
  // After the switch, so the worker's user is the one that must be allowed there.
  if (plan->cwd != nullptr && chdir(plan->cwd) != 0) ChildFailed(plan, plan->cwd);
  // Our descriptors are all close-on-exec, but libraries' may not be.
  syscall(SYS_close_range, 3U, ~0U, 0U);
  sigset_t empty;
  sigemptyset(&empty);
  if (sigprocmask(SIG_SETMASK, &empty, nullptr) != 0) ChildFailed(plan, "sigprocmask");
  execve(plan->path, plan->argv, plan->envp);
  ChildFailed(plan, nullptr);  // the exec itself
}

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

absl::Status PidfdSignal(int pidfd, pid_t pid, int sig) {
  if (syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0) != 0) {
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

absl::StatusOr<std::unique_ptr<PosixProcessOs>> PosixProcessOs::Create(EventLoop& loop,
                                                                       Options options) {
  // Grandchildren whose parent dies come to us and are reaped, instead of to init.
  if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) {
    int err = errno;
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot become a child subreaper (prctl PR_SET_CHILD_SUBREAPER: ", std::strerror(err),
        "); without it the orphans of workers would escape to init"));
  }
  std::unique_ptr<PosixProcessOs> os(new PosixProcessOs(loop, std::move(options)));
  if (os->options_.worker_cgroups) {
    os->SetUpCgroups();
  } else {
    spdlog::info("workers get no cgroups of their own (--no-worker-cgroups)");
  }
  // A CPU group in cgroup v2 would take workers out of their own cgroups; v1's may stay.
  if (os->cgroup_base_fd_ < 0 || CgroupV2Mount() != "/sys/fs/cgroup") {
    os->cpu_group_procs_ = OpenWorkerCpuGroup();
  }
  return os;
}

PosixProcessOs::PosixProcessOs(EventLoop& loop, Options options)
    : loop_(loop), options_(std::move(options)) {}

void PosixProcessOs::SetUpCgroups() {
  std::string mount = CgroupV2Mount();
  std::string own = CgroupOf(0);
  if (mount.empty() || own.empty()) {
    spdlog::warn("no cgroup v2 hierarchy: a worker's escaped descendants are found in /proc");
    return;
  }
  std::string parent_relative = own == "/" ? "" : own;
  std::string parent = mount + parent_relative;
  // Worker cgroups of daemons that died before removing them: empty ones go.
  if (DIR* dir = opendir(parent.c_str()); dir != nullptr) {
    while (dirent* entry = readdir(dir)) {
      pid_t owner = 0;
      absl::string_view name = entry->d_name;
      // Left alone while a process of the owner's number exists: a live proctord's.
      if (!absl::ConsumePrefix(&name, "proctord-") || !absl::SimpleAtoi(name, &owner) ||
          access(absl::StrCat("/proc/", owner).c_str(), F_OK) == 0) {
        continue;
      }
      std::string stale = absl::StrCat(parent, "/", entry->d_name);
      if (DIR* inner = opendir(stale.c_str()); inner != nullptr) {
        while (dirent* worker = readdir(inner)) {
          if (worker->d_name[0] != '.') rmdir(absl::StrCat(stale, "/", worker->d_name).c_str());
        }
        closedir(inner);
      }
      rmdir(stale.c_str());
    }
    closedir(dir);
  }
  std::string name = absl::StrCat("proctord-", getpid());
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
    for (const auto& [token, cgroup] : cgroups_) {
      unlinkat(cgroup_base_fd_, cgroup.name.c_str(), AT_REMOVEDIR);
    }
    close(cgroup_base_fd_);
    rmdir(cgroup_base_path_.c_str());
  }
  for (const auto& [pid, pidfd] : strays_) close(pidfd);
  if (cpu_group_procs_ >= 0) close(cpu_group_procs_);
  if (unknown_orphans_ > 0) {
    spdlog::info("reaped {} orphans that belonged to no worker", unknown_orphans_);
  }
}

void PosixProcessOs::SetListeners(ExitListener on_exit, OrphanListener on_orphan_reaped) {
  on_exit_ = std::move(on_exit);
  on_orphan_reaped_ = std::move(on_orphan_reaped);
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

  // The worker's own cgroup, made before it exists so that it is born into it.
  WorkerCgroup cgroup{.name = absl::StrCat(token)};
  int cgroup_procs = -1;
  const bool use_cgroup = cgroup_base_fd_ >= 0 && cgroups_usable_.load();
  if (use_cgroup) {
    if (mkdirat(cgroup_base_fd_, cgroup.name.c_str(), 0755) != 0 && errno != EEXIST) {
      int err = errno;
      GiveUpCgroups(absl::StrCat("mkdir ", cgroup_base_path_, "/", cgroup.name), err);
      return Launch(spec, token);
    }
    cgroup_procs = openat(cgroup_base_fd_, (cgroup.name + "/cgroup.procs").c_str(),
                          O_WRONLY | O_CLOEXEC);
    int err = errno;
    if (cgroup_procs >= 0) {
      cgroup.watch = inotify_add_watch(
          inotify_fd_, absl::StrCat(cgroup_base_path_, "/", cgroup.name, "/cgroup.events").c_str(),
          IN_MODIFY);
      err = errno;
    }
    if (cgroup_procs < 0 || cgroup.watch < 0) {
      if (cgroup_procs >= 0) close(cgroup_procs);
      unlinkat(cgroup_base_fd_, cgroup.name.c_str(), AT_REMOVEDIR);
      GiveUpCgroups(absl::StrCat("cgroup ", cgroup_base_path_, "/", cgroup.name), err);
      return Launch(spec, token);
    }
  }
  auto drop_cgroup = [&] {
    if (cgroup_procs < 0) return;
    close(cgroup_procs);
    cgroup_procs = -1;
    inotify_rm_watch(inotify_fd_, cgroup.watch);
    unlinkat(cgroup_base_fd_, cgroup.name.c_str(), AT_REMOVEDIR);
  };

  std::vector<char*> argv = CStrings(spec.argv);
  std::vector<char*> envp = CStrings(spec.envp);
  ChildPlan plan{
      .path = path->c_str(),
      .argv = argv.data(),
      .envp = envp.data(),
      .cwd = spec.cwd.empty() ? nullptr : spec.cwd.c_str(),
      .stdout_path = spec.stdout_path.c_str(),
      .stderr_path = spec.stderr_path.c_str(),
      .cgroup_procs = cgroup_procs,
  };
  if (options_.worker_descriptors.has_value()) plan.descriptors = &*options_.worker_descriptors;
  if (spec.identity.has_value()) {
    plan.switch_user = true;
    plan.uid = spec.identity->uid;
    plan.gid = spec.identity->gid;
    plan.groups = spec.identity->groups.data();
    plan.group_count = spec.identity->groups.size();
  }
  auto stack = std::make_unique<char[]>(kChildStackBytes);
  {
    absl::MutexLock lock(&mu_);
    ++spawning_;
  }
  // No signal handler may run in the child, which shares our memory until it execs.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int pidfd = -1;
  pid_t pid = clone(ChildMain, stack.get() + kChildStackBytes,
                    CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD, &plan, &pidfd);
  int clone_error = errno;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);

  absl::Status failed;
  if (pid < 0) {
    failed = PosixError("clone", clone_error);
  } else if (plan.error != 0) {
    // It never ran the target; reaped here, before the SIGCHLD reaper may take it.
    waitpid(pid, nullptr, 0);
    close(pidfd);
    failed = plan.failed_step == nullptr
                 ? PosixError(absl::StrCat("cannot start ", *path), plan.error)
                 : PosixError(absl::StrCat("cannot start ", *path, ": ", plan.failed_step),
                              plan.error);
  }
  if (cgroup_procs >= 0) {
    close(cgroup_procs);
    if (!failed.ok()) {
      cgroup_procs = 0;  // not -1: drop the cgroup too
      drop_cgroup();
    }
  }
  const bool cgroup_refused = !failed.ok() && plan.failed_step == kEnterCgroupStep;
  bool recheck = false;
  absl::Status watched;
  {
    absl::MutexLock lock(&mu_);
    if (failed.ok()) {
      // Watched and registered under the lock, so the reaping side cannot see the pid
      // half-registered (nor close the pidfd before it is watched). A pidfd that is already
      // readable fires as soon as the loop looks.
      watched = loop_.Watch(pidfd, [this, pid] { ReapWorker(pid); });
      if (watched.ok()) {
        workers_[pid] = Worker{token, pidfd};
        tokens_[token] = pid;
        if (use_cgroup) {
          cgroup_watches_[cgroup.watch] = token;
          cgroups_[token] = cgroup;
        }
      }
    }
    if (--spawning_ == 0 && recheck_after_spawn_) {
      recheck_after_spawn_ = false;
      recheck = true;
    }
  }
  if (recheck) loop_.Post([this] { OnSigchld(); });
  if (cgroup_refused) {
    // The child never ran the target: start it again, without a cgroup.
    GiveUpCgroups(absl::StrCat("writing ", cgroup_base_path_, "/", cgroup.name, "/cgroup.procs"),
                  plan.error);
    return Launch(spec, token);
  }
  if (!failed.ok()) return failed;
  if (!watched.ok()) {
    // Not registered: it is reaped as an orphan through SIGCHLD. The pidfd names it.
    PidfdSignal(pidfd, pid, SIGKILL).IgnoreError();
    close(pidfd);
    if (use_cgroup) {
      inotify_rm_watch(inotify_fd_, cgroup.watch);
      // Removed once empty by the stale-cgroup sweep of the next start, if not before.
      unlinkat(cgroup_base_fd_, cgroup.name.c_str(), AT_REMOVEDIR);
    }
    return watched;
  }
  return Launched{pid, *std::move(path)};
}

void PosixProcessOs::GiveUpCgroups(const std::string& what, int err) {
  if (cgroups_usable_.exchange(false)) {
    spdlog::warn("no more cgroups for new workers ({}: {}); their escaped descendants are "
                 "found in /proc",
                 what, std::strerror(err));
  }
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
    pid_t reaped = wait4(pid, &status, WNOHANG, &ru);
    if (reaped < 0) {
      int err = errno;
      spdlog::error("wait4({}): {}", pid, std::strerror(err));
    }
    if (reaped <= 0) return;
    token = it->second.token;
    loop_.Unwatch(it->second.pidfd);
    close(it->second.pidfd);
    workers_.erase(it);
    tokens_.erase(token);
    // Members of its group may outlive it; the group is remembered until found empty.
    if (GroupMayHaveMembers(pid)) leftover_groups_[token] = pid;
    MaybeRemoveCgroupLocked(token);
  }
  on_exit_(token, FromRaw(status), ToUsage(ru));
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
    std::string name;
    {
      absl::MutexLock lock(&mu_);
      auto w = cgroup_watches_.find(watch);
      if (w == cgroup_watches_.end()) continue;
      name = cgroups_.at(w->second).name;
    }
    // Read without the lock: GroupExists() answers from memory meanwhile.
    bool populated =
        absl::StrContains(ReadSmallFile(cgroup_base_fd_, name + "/cgroup.events"), "populated 1");
    absl::MutexLock lock(&mu_);
    auto w = cgroup_watches_.find(watch);
    if (w == cgroup_watches_.end()) continue;
    uint64_t token = w->second;
    WorkerCgroup& cgroup = cgroups_.at(token);
    if (cgroup.populated && !populated) emptied = true;
    cgroup.populated = populated;
    MaybeRemoveCgroupLocked(token);
  }
  // A worker's last process ended: terminations waiting for it may be done.
  if (emptied && on_orphan_reaped_) on_orphan_reaped_();
}

void PosixProcessOs::MaybeRemoveCgroupLocked(uint64_t token) {
  auto it = cgroups_.find(token);
  if (it == cgroups_.end() || it->second.populated || tokens_.contains(token)) return;
  // EBUSY if something entered meanwhile: then the next event removes it.
  if (unlinkat(cgroup_base_fd_, it->second.name.c_str(), AT_REMOVEDIR) != 0) return;
  leftover_groups_.erase(token);  // its members were all in the cgroup
  inotify_rm_watch(inotify_fd_, it->second.watch);
  cgroup_watches_.erase(it->second.watch);
  cgroups_.erase(it);
}

void PosixProcessOs::OnSigchld() {
  bool reaped_orphan = false;
  for (;;) {
    siginfo_t info{};
    // Peek first (WNOWAIT): a worker found here is reaped through ReapWorker for its rusage.
    if (waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) != 0 || info.si_pid == 0) break;
    pid_t pid = info.si_pid;
    bool worker = false;
    bool known = false;
    {
      absl::MutexLock lock(&mu_);
      if (workers_.contains(pid)) {
        worker = true;
      } else if (spawning_ > 0) {
        recheck_after_spawn_ = true;
        break;
      } else if (auto stray = strays_.find(pid); stray != strays_.end()) {
        known = true;
        close(stray->second);
        strays_.erase(stray);
      }
    }
    if (worker) {
      ReapWorker(pid);
      continue;
    }
    // A zombie still shows the cgroup it died in.
    if (!known && cgroup_base_fd_ >= 0) {
      known = absl::StartsWith(CgroupOf(pid), cgroup_base_relative_ + "/");
    }
    {
      // Under the lock: SignalGroup takes an unreaped orphan in a group as proof that the
      // group id is still the worker's, and it must stay unreaped until that signal is sent.
      absl::MutexLock lock(&mu_);
      if (waitpid(pid, nullptr, WNOHANG) != pid) break;
    }
    reaped_orphan = true;
    if (!known) {
      ++unknown_orphans_;
      spdlog::info("reaped orphan pid={} that no worker is known to own ({} so far)", pid,
                   unknown_orphans_);
    }
  }
  if (reaped_orphan && on_orphan_reaped_) on_orphan_reaped_();
}

absl::Status PosixProcessOs::SignalGroup(uint64_t token, int sig) {
  absl::MutexLock lock(&mu_);
  pid_t pgid = 0;
  bool provably_ours = false;
  if (auto leader = tokens_.find(token); leader != tokens_.end()) {
    // Unreaped (its reaper takes the lock we hold): the group id cannot be anyone else's.
    pgid = leader->second;
    provably_ours = true;
  } else if (auto group = leftover_groups_.find(token); group != leftover_groups_.end()) {
    pgid = group->second;
    if (workers_.contains(pgid)) {
      // The number leads another worker now, so the old group emptied long ago.
      leftover_groups_.erase(group);
      return absl::NotFoundError(absl::StrCat("nothing of worker ", token, "'s group is left"));
    }
    // An unreaped orphan of ours in the group keeps its id from being reused just as well
    // (our reaper takes the lock we hold); orphans of the group come to us, so one usually
    // is. Where the worker has a cgroup, the orphan must be in it too.
    auto cgroup = cgroups_.find(token);
    const std::string expected =
        cgroup == cgroups_.end()
            ? ""
            : absl::StrCat(cgroup_base_relative_, "/", cgroup->second.name);
    for (pid_t child : ChildrenOf(getpid())) {
      if (workers_.contains(child) || getpgid(child) != pgid) continue;
      if (expected.empty() || CgroupOf(child) == expected) {
        provably_ours = true;
        break;
      }
    }
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
  if (tokens_.contains(token)) return true;  // the leader, unreaped
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
  leftover_groups_.erase(group);
  return false;
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
  auto take = [&](pid_t pid, pid_t parent) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    if (pid <= 1 || workers_.contains(pid) || !seen.insert(pid).second) return;
    int pidfd = OpenPidfd(pid);
    if (pidfd < 0) return;
    if (ParentOf(pid) != parent) {
      close(pidfd);
      return;
    }
    HoldStrayLocked(pid, pidfd);
    found.push_back(pid);
    queue.push_back(pid);
  };
  // Orphans of these workers' trees that came to us (escaped by setsid or a double fork)
  // still carry the worker's id in the environment they started with.
  const pid_t self = getpid();
  for (pid_t child : ChildrenOf(self)) {
    if (!workers_.contains(child) && wanted.contains(WorkerIdInEnvironment(child))) {
      take(child, self);
    }
  }
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
