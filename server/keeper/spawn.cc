#include "server/keeper/spawn.h"

#include <fcntl.h>
#include <linux/close_range.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <memory>
#include <vector>

namespace proctor {
namespace {

constexpr size_t kChildStackBytes = 64 * 1024;

// Everything the child needs, prepared by the parent: between clone() and exec the child
// shares the parent's memory and may only make syscalls (no allocation, no locks).
struct ChildPlan {
  const char* path;
  char* const* argv;
  char* const* envp;
  const char* cwd;  // null: the keeper's
  const char* stdout_path;
  const char* stderr_path;
  bool append_output = false;  // a restart's run adds to what earlier runs wrote
  int cgroup_procs = -1;  // the worker's cgroup.procs, or -1
  const rlimit* descriptors = nullptr;  // RLIMIT_NOFILE to set, or null
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

// A first run's capture file starts empty. Not O_TRUNC: the file is nearly always an empty
// spare already, and a truncation even of an empty file is a journaled inode change on ext4
// and an IN_MODIFY event for the log trimmer.
bool EmptyUnlessAppending(const ChildPlan* plan, int fd) {
  if (plan->append_output) return true;
  struct stat st;
  if (fstat(fd, &st) != 0) return false;
  return st.st_size == 0 || ftruncate(fd, 0) == 0;
}

int ChildMain(void* arg) {
  ChildPlan* plan = static_cast<ChildPlan*>(arg);
  // Handlers and ignored signals of the keeper must not reach the worker (SIG_IGN survives
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
  if (plan->descriptors != nullptr && setrlimit(RLIMIT_NOFILE, plan->descriptors) != 0) {
    ChildFailed(plan, "setrlimit(RLIMIT_NOFILE)");
  }
  // Into the worker's cgroup before exec: nothing the worker runs is ever outside it.
  if (plan->cgroup_procs >= 0 && write(plan->cgroup_procs, "0", 1) != 1) {
    ChildFailed(plan, kEnterCgroupStep);
  }
  // A descriptor table of our own from here on, with 0-2 in it alone. It was the keeper's
  // until now (CLONE_FILES), so that the clone did not copy the keeper's descriptors (one per
  // held worker) only for exec to close them again; CLOSE_RANGE_UNSHARE copies just those
  // below 3. Nothing below may touch a descriptor before this.
  if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_UNSHARE) != 0 &&
      syscall(SYS_unshare, CLONE_FILES) != 0) {
    ChildFailed(plan, "unshare(CLONE_FILES)");
  }
  if (!OpenAs(0, "/dev/null", O_RDONLY)) ChildFailed(plan, "open /dev/null");
  const int kCapture = O_WRONLY | O_CREAT | O_APPEND;
  if (!OpenAs(1, plan->stdout_path, kCapture) || !EmptyUnlessAppending(plan, 1)) {
    ChildFailed(plan, plan->stdout_path);
  }
  if (!OpenAs(2, plan->stderr_path, kCapture) || !EmptyUnlessAppending(plan, 2)) {
    ChildFailed(plan, plan->stderr_path);
  }
  // Raw syscalls: glibc's wrappers would try to change the ids of every thread of the
  // process whose memory the child shares. Groups first, while we may still change them.
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

std::vector<char*> CStrings(const google::protobuf::RepeatedPtrField<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (const std::string& s : strings) out.push_back(const_cast<char*>(s.c_str()));
  out.push_back(nullptr);
  return out;
}

}  // namespace

SpawnOutcome SpawnWorker(const internal::Spawn& spawn) {
  SpawnOutcome outcome;
  int cgroup_procs = -1;
  if (!spawn.cgroup_dir().empty()) {
    cgroup_procs = open((spawn.cgroup_dir() + "/cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC);
    if (cgroup_procs < 0) {
      outcome.error = errno;
      outcome.failed_step = kEnterCgroupStep;
      return outcome;
    }
  }
  std::vector<char*> argv = CStrings(spawn.argv());
  std::vector<char*> envp = CStrings(spawn.envp());
  std::vector<gid_t> groups(spawn.groups().begin(), spawn.groups().end());
  rlimit descriptors{};
  ChildPlan plan{
      .path = spawn.path().c_str(),
      .argv = argv.data(),
      .envp = envp.data(),
      .cwd = spawn.cwd().empty() ? nullptr : spawn.cwd().c_str(),
      .stdout_path = spawn.stdout_path().c_str(),
      .stderr_path = spawn.stderr_path().c_str(),
      .append_output = spawn.append_output(),
      .cgroup_procs = cgroup_procs,
  };
  if (spawn.has_descriptors()) {
    descriptors.rlim_cur = spawn.descriptors().soft();
    descriptors.rlim_max = spawn.descriptors().hard();
    plan.descriptors = &descriptors;
  }
  if (spawn.switch_user()) {
    plan.switch_user = true;
    plan.uid = spawn.uid();
    plan.gid = spawn.gid();
    plan.groups = groups.data();
    plan.group_count = groups.size();
  }
  auto stack = std::make_unique<char[]>(kChildStackBytes);
  // No signal may be taken in the child, which shares our memory until it execs.
  sigset_t all, old;
  sigfillset(&all);
  sigprocmask(SIG_SETMASK, &all, &old);
  int pidfd = -1;
  pid_t pid = clone(ChildMain, stack.get() + kChildStackBytes,
                    CLONE_VM | CLONE_VFORK | CLONE_FILES | CLONE_PIDFD | SIGCHLD, &plan,
                    &pidfd);
  int clone_error = errno;
  sigprocmask(SIG_SETMASK, &old, nullptr);
  if (cgroup_procs >= 0) close(cgroup_procs);

  if (pid < 0) {
    outcome.error = clone_error;
    outcome.failed_step = "clone";
    return outcome;
  }
  if (plan.error != 0) {
    // It never ran the target: reaped here and now.
    siginfo_t info;
    waitid(P_PIDFD, pidfd, &info, WEXITED | __WALL);
    close(pidfd);
    outcome.error = plan.error;
    if (plan.failed_step != nullptr) outcome.failed_step = plan.failed_step;
    return outcome;
  }
  outcome.pid = pid;
  outcome.pidfd = pidfd;
  return outcome;
}

}  // namespace proctor
