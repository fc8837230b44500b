// Supervisor: the records of every process proctord started, and the rules that move them.
//
// It owns all process state behind one mutex. Calls never block on a process: Join and
// Terminate take a completion callback that runs when the answer is known (at once, at
// exit, or when a timer fires), on the thread that learned it and outside the lock. Nothing
// that can block (a /proc scan, file I/O, a spawn) runs under the lock.
//
// Rules (see README, "Process model"):
// - Start validates the request, resolves and launches the target, and records it; a failed
//   launch leaves no record. Names default to Process-N for the N-th top-level start and
//   Process-N:M for the M-th child of that one. A daemonic process may not have children.
// - A record is visible (Status, Join, Terminate, tree walks, its parent's children, its
//   session) only once its process has been launched. While the launch is in flight the
//   start is only counted against the limits and its worker's key is known (the worker may
//   call back before Start returns). Whatever happened to its parent, session or the daemon
//   meanwhile is applied when it becomes visible: a daemonic child of a parent that ended, a
//   child of a tree being terminated, a daemonic process of an ended session, or any process
//   started into a shutdown is terminated at once.
// - Every worker has a credential of its own (fresh random bytes, never inherited: a child
//   cannot act as its parent) and multiprocessing's authkey attribute (given, inherited from
//   its parent, or fresh), and finds both, with its id and the daemon's address, in its
//   environment. It runs as the requested user (or the default --worker-user), if any.
// - Join completes at exit, or at its timeout with the still-running record.
// - Terminate signals the worker's process group, and SIGKILLs what is left of the group
//   after the grace. With wait, it completes once the worker is reaped and its group is empty.
//   With tree (the default), the same goes for every descendant: its children through the
//   daemon with their groups, and processes forked below it that left its group (strays).
// - When a worker ends, by any cause, its daemonic children are terminated with their trees
//   (SIGTERM, SIGKILL after kDefaultGrace); its other children live on.
// - Sessions are leases held by clients that are not workers: processes started in one have
//   it as parent, and when it ends (closed, or not touched within its TTL) its daemonic
//   processes are terminated with their trees.
// - Ended records stay until Release, or until more than `retain` have ended (oldest go
//   first); their captured output goes with them.
// - Shutdown refuses new Starts, terminates daemonic workers at once and the others after
//   the grace, and reports when nothing is left.
// - Every interval (grace, timeouts, TTLs) is measured on the monotonic clock; the times in
//   records are wall-clock.
// - Restart policies: a process whose run ends as its policy says (any exit, or a failure:
//   a non-zero exit or a signal) waits in backoff and runs again with the same id, name,
//   keys and capture files (appended to). What its run left in its group gets SIGTERM at
//   once and SIGKILL when the next run is due. The wait starts at initial_backoff and
//   doubles per restart up to max_backoff, spread by jitter; a run that lasted reset_after
//   resets it and the count. Past max_restarts within the window the policy gives up. An
//   exit after Terminate (or a tree terminate, a session's or parent's end, the shutdown)
//   never restarts, and Terminate in backoff ends the process at once. Join completes only
//   when it has ended for good.
// - Notify: a worker started with notify gets its own NOTIFY_SOCKET; READY=1 makes it ready
//   (once per run), WATCHDOG=1 restarts its watchdog period, after which it gets SIGABRT
//   (SIGKILL after the grace) and its policy applies.
#ifndef PROCTOR_SERVER_SUPERVISOR_H_
#define PROCTOR_SERVER_SUPERVISOR_H_

#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/node_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/function_ref.h"
#include "absl/random/random.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/environment_names.h"
#include "common/wait_status.h"
#include "server/capture_files.h"
#include "server/clock.h"
#include "server/heap_optional.h"
#include "server/id_allocator.h"
#include "server/notify_endpoints.h"
#include "server/notify_message.h"
#include "server/process_os.h"
#include "server/worker_user.h"

namespace proctor {

// When a process that ended runs again (see README, "Restart policies").
struct RestartPolicy {
  enum class Mode { kNo, kOnFailure, kAlways };
  Mode mode = Mode::kNo;
  uint32_t max_restarts = 0;             // within `window`; 0: unlimited
  std::optional<absl::Duration> window;  // unset: since the last reset
  absl::Duration initial_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(30);
  absl::Duration reset_after = absl::Seconds(60);
};

// How one run of a restarting process ended.
struct RunExit {
  pid_t pid = 0;
  WaitStatus status;
  absl::Time start_time;
  absl::Time end_time;
  bool watchdog = false;  // the watchdog ended it
};

// What a worker started with notify said over the sd_notify protocol.
struct NotifyInfo {
  bool ready = false;  // during the current run
  std::string status;
  bool stopping = false;
  bool reloading = false;
  int errno_value = 0;
  absl::Duration watchdog = absl::ZeroDuration();  // the period in force; 0: none
  absl::Time last_watchdog_ping = absl::InfinitePast();
  uint64_t dropped = 0;
};

// A snapshot of one record, as Status reports it.
struct ProcessInfo {
  uint64_t id = 0;
  std::string name;
  pid_t pid = 0;
  bool running = false;
  std::optional<WaitStatus> status;  // set once ended, unless lost
  bool lost = false;  // ended unseen (no keeper kept it): status and usage unknown
  bool daemon = false;
  uint64_t parent_id = 0;       // 0: no parent worker
  uint64_t parent_session = 0;  // the client session that started it, if any
  std::vector<uint64_t> children;
  std::string target;  // resolved path
  std::vector<std::string> args;
  std::string cwd;
  absl::Time start_time;
  absl::Time end_time;  // InfinitePast while running
  ResourceUsage usage;
  std::string stdout_path;
  std::string stderr_path;
  // Unset: no restart policy (RestartPolicy::Mode::kNo), as most processes have. On the heap,
  // like the other parts most records never have (see HeapOptional).
  HeapOptional<RestartPolicy> restart;
  uint32_t restarts = 0;
  HeapOptional<RunExit> last_exit;  // the run before the current one (see v1::Process)
  std::vector<absl::Time> recent_restarts;  // counted against max_restarts
  bool backoff = false;              // ended, waiting to run again (running is false)
  absl::Time next_start_time = absl::InfinitePast();  // while in backoff
  HeapOptional<NotifyInfo> notify;  // set when started with notify
  std::string service;               // the declared service it runs

  // Its restart policy: kNo when it has none.
  const RestartPolicy& restart_policy() const {
    static const RestartPolicy kNone;
    return restart.has_value() ? *restart : kNone;
  }
};

struct StartSpec {
  std::string target;
  std::vector<std::string> args;
  std::map<std::string, std::string> kwargs;  // passed as --key=value, sorted by key
  std::string name;
  bool daemon = false;
  std::vector<std::string> env;  // KEY=VALUE, over the base environment
  std::string cwd;               // absolute, or empty for the daemon's
  uint64_t parent_id = 0;        // the worker whose key made the call; 0 for an admin key
  uint64_t session = 0;          // an open session to be the parent (admin calls only)
  std::string authkey;           // multiprocessing's attribute; empty: the parent's, or fresh
  std::string user;              // run as this user (see ResolveWorkerUser); empty: default
  std::string group;
  RestartPolicy restart;
  bool notify = false;          // NOTIFY_SOCKET (implied by a watchdog)
  absl::Duration watchdog = absl::ZeroDuration();  // 0: none unless the worker asks
  std::string service;          // the declared service it runs
};

struct ListFilter {
  std::optional<bool> running;
  std::optional<bool> backoff;  // waiting to run again under a restart policy
  std::string name;
  std::optional<uint64_t> parent_id;  // 0 matches top-level processes
  std::optional<uint64_t> parent_session;
  uint64_t subtree_of = 0;            // when set, only this process and its descendants
};

// A change of state, as the supervisor reports it to its EventSink.
enum class EventKind {
  kStarted,
  kExited,
  kTerminateRequested,
  kReleased,
  kEvicted,
  kSessionOpened,
  kSessionEnded,
  kRestarting,  // a run ended; it runs again after SupervisorEvent::delay
  kGaveUp,      // the restart policy gave up: ended for good
  kReady,       // READY=1
  kWatchdog,    // the watchdog period passed without WATCHDOG=1: SIGABRT
};

struct SupervisorEvent {
  uint64_t cursor = 0;  // grows by one per event, never reused (continues from first_cursor)
  absl::Time time;
  EventKind kind;
  ProcessInfo process;  // the record as it stands after the event (process events)
  uint64_t session = 0;  // session events
  absl::Duration delay;  // kRestarting: until it runs again
};

// Where the events go: a journal and the watchers. Record() is called outside the
// supervisor's lock, with one call's events, in cursor order across calls (the supervisor
// sequences them), and must return once they are stored: the replies that report them wait
// for it. An error is logged by the supervisor and the call goes on.
class EventSink {
 public:
  virtual ~EventSink() = default;
  virtual absl::Status Record(const std::vector<SupervisorEvent>& events) = 0;
  // OK when every event so far is recorded, after trying once more to record any that could
  // not be; else RESOURCE_EXHAUSTED saying what cannot be written. Called before each Start,
  // from its thread, concurrently with Record: a process whose start could not be recorded
  // would be lost by a crash of the daemon. Must be cheap while nothing is held back.
  virtual absl::Status Flush() { return absl::OkStatus(); }
};

// How Terminate ends a process.
struct TerminateOptions {
  int signal = 15;                              // 1..SIGRTMAX
  absl::Duration grace = absl::Seconds(10);     // then SIGKILL; >= 0; infinite: never
  bool wait = true;   // complete once it has ended (and its group or tree is empty)
  bool tree = true;   // reach every descendant, not only the process's own group
};

// How many of each there are now (Supervisor::Counts).
struct SupervisorCounts {
  size_t running = 0;   // live workers, launches in flight included
  size_t backoff = 0;   // ended runs waiting to run again under a restart policy
  size_t ended = 0;     // ended records kept
  size_t joins = 0;     // Join calls waiting for an exit
  size_t sessions = 0;  // open sessions
  // Records with something in progress (a run, waiters, timers, a restart policy): those that
  // hold more than the compact part every kept record has.
  size_t in_progress = 0;
};

struct SupervisorOptions {
  std::string log_dir;                // captured output: <log_dir>/<id>.out and .err
  size_t retain = 10000;              // ended records kept
  std::vector<std::string> base_env;  // KEY=VALUE every worker starts from
  size_t arg_max = 2 * 1024 * 1024;   // the system's ARG_MAX: argv + envp must fit
  std::string worker_address;         // PROCTOR_ADDRESS as workers see it
  CaptureFiles* capture_files = nullptr;  // spares for capture files; null: made at spawn
  std::string worker_user;                // the user of workers whose Start names none
  EventSink* events = nullptr;            // null: events are numbered but kept nowhere
  uint64_t last_cursor = 0;               // the cursor of the last event ever recorded
  // Limits against runaway spawning; past one, Start is RESOURCE_EXHAUSTED naming it.
  size_t max_processes = 4096;  // live, in the whole daemon
  size_t max_children = 512;    // live children of one parent worker
  size_t max_depth = 16;        // top-level processes are at depth 1
  // What set max_processes, for the refusal to name; empty: "limit --max-processes=N".
  std::string max_processes_reason;
  // Where workers started with notify send sd_notify messages; null: such Starts are refused.
  NotifyEndpoints* notify = nullptr;
  // Restart delays are spread by up to this fraction either way, so that processes that
  // crashed together do not all come back at the same instant.
  double restart_jitter = 0.2;
};

class Supervisor {
 public:
  using Done = std::function<void(absl::StatusOr<ProcessInfo>)>;
  using WaiterId = uint64_t;

  static constexpr size_t kMaxNameBytes = 256;
  static constexpr absl::Duration kDefaultGrace = absl::Seconds(10);

  // All references must outlive the supervisor. Registers itself as the os's listener.
  Supervisor(SupervisorOptions options, ProcessOs& os, Clock& clock, Timers& timers,
             IdAllocator& ids);

  absl::StatusOr<ProcessInfo> Start(const StartSpec& spec);

  // `done` runs exactly once (unless the wait is cancelled first). A negative timeout is
  // INVALID_ARGUMENT; no timeout waits until exit.
  WaiterId Join(uint64_t id, std::optional<absl::Duration> timeout, Done done);
  // Without `options.wait`, `done` runs as soon as everything has been signalled. An ended
  // process whose group and tree are empty is signalled nothing; its record is the answer.
  WaiterId Terminate(uint64_t id, const TerminateOptions& options, Done done);
  // Completes with the record once the worker is ready (READY=1; at once for a worker started
  // without notify, or one ready already). If it ends for good first: FAILED_PRECONDITION.
  // After `timeout` (pushed back by EXTEND_TIMEOUT_USEC=): DEADLINE_EXCEEDED, and the process
  // is terminated with its tree and not restarted. A run that ends and restarts keeps the
  // wait going.
  WaiterId AwaitReady(uint64_t id, absl::Duration timeout, Done done);
  // Forgets a pending Join/Terminate/AwaitReady wait (its caller went away); `done` will not
  // run.
  void CancelWait(WaiterId waiter);

  // What arrived on worker `id`'s notify endpoint; ignored unless it is running.
  void OnNotify(uint64_t id, const NotifyMessage& message);
  // A message on its endpoint was dropped (malformed, too large, from outside its tree).
  // Returns how many have been dropped for it so far.
  uint64_t OnNotifyDropped(uint64_t id);

  absl::StatusOr<ProcessInfo> Get(uint64_t id);
  // A Logs reader counts from OpenLogs to CloseLogs (the files it holds open stay readable
  // after the record is forgotten and its files removed). A record that ended for good while
  // no reader was counted may have had its empty capture files taken back: a reader that
  // finds no file at an ended record's path reads empty output.
  absl::StatusOr<ProcessInfo> OpenLogs(uint64_t id);
  void CloseLogs(uint64_t id);

  // The credential the worker signs its calls with, while its record exists (also while its
  // launch is in flight). Never part of ProcessInfo.
  std::optional<std::string> CredentialOf(uint64_t id);
  // Whether `id` may have been given to a process or session (now or before a restart).
  bool IdIssued(uint64_t id) { return ids_.Issued(id); }
  // The top of the tree `id` belongs to (`id` itself at top level).
  uint64_t RootOf(uint64_t id);
  // The session the top of `id`'s tree was started in, or 0; like RootOf, also while a launch
  // is in flight (the worker may call before Start returns).
  uint64_t SessionOfTree(uint64_t id);
  // Whether `id` is `root` or one of its descendants.
  bool InSubtree(uint64_t root, uint64_t id);
  // `cursor`, when given, receives the cursor of the last event the listing reflects: watch
  // from there to miss nothing and see nothing twice.
  std::vector<ProcessInfo> List(const ListFilter& filter, uint64_t* cursor = nullptr);
  // List() without the copies: `visit` sees each matching record in id order, under the
  // supervisor's lock, so it must not call the supervisor (nor block).
  void VisitListed(const ListFilter& filter, uint64_t* cursor,
                   absl::FunctionRef<void(const ProcessInfo&)> visit);
  // The capture files that may still grow: those of running workers, and of ended ones whose
  // processes live on.
  std::vector<std::string> CaptureFilesInUse();
  absl::Status Release(uint64_t id);

  // `all_done` runs once every worker has been reaped, its group is empty and no launch is
  // in flight.
  void Shutdown(absl::Duration grace, std::function<void()> all_done);

  // Opens a session; `on_expired` runs (outside the lock) if its TTL passes untouched.
  // `owner` (a digest of the key that opened it) is what ResumeSession must be shown. Its id
  // is never reused within the state directory (it comes from the ids of processes).
  absl::StatusOr<uint64_t> OpenSession(absl::Duration ttl, std::function<void()> on_expired,
                                       std::string owner = "");
  // Takes up a session that no stream holds (one restored after a restart), with `ttl` if
  // set: NOT_FOUND once ended, FAILED_PRECONDITION while held, PERMISSION_DENIED when
  // `owner` is not the one that opened it.
  absl::Status ResumeSession(uint64_t session, const std::string& owner,
                             std::optional<absl::Duration> ttl, std::function<void()> on_expired);
  // Restarts the TTL. NOT_FOUND once the session has ended.
  absl::Status TouchSession(uint64_t session);
  // Takes back the records of processes that ended under an earlier proctord (from its
  // journal), as ended records subject to retention. Call before the first Start.
  void RestoreEnded(std::vector<ProcessInfo> ended);

  // What an earlier proctord leaves to a restarted one.
  struct Reattached {
    ProcessInfo info;  // its last record in the journal: running
    std::string memo;  // what Launch was given as LaunchSpec::memo
  };
  struct RestoredSession {
    uint64_t id = 0;
    absl::Duration ttl;
    std::string owner;
  };
  struct Restored {
    // Ended records, from the journal; those in backoff run again if `launches` holds
    // what to launch them with (and end for good otherwise).
    std::vector<ProcessInfo> ended;
    std::vector<Reattached> running;      // workers that live on (the os holds them)
    std::vector<ProcessInfo> lost;        // running in the journal, held by nobody
    std::vector<RestoredSession> sessions;  // sessions open when it stopped
    // The os's "launch/<id>" notes (internal::LaunchMemo), by id: processes with a restart
    // policy.
    absl::flat_hash_map<uint64_t, std::string> launches;
  };
  // Takes all of it back (call before the first Start, after the os has adopted the running
  // workers): ended records as RestoreEnded does; running ones as live records again, with
  // their credentials, so their workers' calls are recognised; lost ones end now as lost
  // (an exited event); sessions reopen with their TTL counted from now and no stream, to be
  // resumed (ResumeSession) or to expire. Then the tree rules are applied to what happened
  // meanwhile: a running daemonic process whose parent has ended, or whose session is not
  // open any more, is terminated with its tree. Exits that happened meanwhile are reported
  // by the os afterwards, like any other.
  void Restore(Restored restored);

  // The sessions open now.
  std::vector<uint64_t> OpenSessions();
  // The ids of every record kept, running or ended (what List gives, without the records).
  std::vector<uint64_t> KeptIds();
  // Takes the lock and looks at every record: for status lines and metrics, not for each call.
  SupervisorCounts Counts();
  // Ends a session now (its daemonic processes are terminated); no-op when already ended.
  void CloseSession(uint64_t session);

  // Told once, outside the lock, when a worker has ended by any cause: (id, 0); or when a
  // session has ended: (0, session). What others keep for a worker or session (sync objects
  // it holds) is freed from here. Set before the first Start or OpenSession.
  using EndListener = std::function<void(uint64_t process, uint64_t session)>;
  void SetEndListener(EndListener listener) { end_listener_ = std::move(listener); }
  // Whether the worker runs now; whether the session is open now.
  bool IsRunning(uint64_t id);
  bool IsSessionOpen(uint64_t session);

 private:
  struct Waiter {
    WaiterId id;
    Done done;
    TimerId timer = 0;
    absl::Duration deadline = absl::InfiniteDuration();  // monotonic; AwaitReady's
  };
  struct Exit {
    WaitStatus status;
    ResourceUsage usage;
  };
  // What a record needs only while something is in progress on it: a run, a launch of a
  // child, waiters, timers, a terminate, a restart policy. Apart, and dropped once the record
  // is idle (DropActivityIfIdle): most records kept are ended ones, and this was half of a
  // record's size.
  struct Activity {
    std::string parent_identity;     // while starting: the parent's, for the child's name
    std::string authkey;             // multiprocessing's attribute, inherited by children
    bool tree = false;               // its terminators wait for the whole tree
    bool terminating = false;        // signalled by a tree terminate: may not have children
    std::vector<pid_t> strays;       // descendants outside any worker's group, once found
    size_t children_starting = 0;    // launches in flight with this record as parent
    std::vector<Waiter> joiners;
    std::vector<Waiter> terminators;  // wait for exit and an empty group
    TimerId kill_timer = 0;
    absl::Duration kill_deadline = absl::InfiniteDuration();  // monotonic
    std::optional<Exit> early_exit;  // reaped before its launch was committed
    // Restarts (a policy other than kNo). What each run is launched with.
    std::unique_ptr<LaunchSpec> relaunch;
    bool relaunching = false;            // a restart's launch is in flight
    bool no_restart = false;             // terminated: its next exit is its last
    absl::Duration run_started;          // monotonic
    int backoff_step = 0;
    // Monotonic, counted against max_restarts. A vector: a deque allocates some 600 bytes as
    // it is made, which most records never use.
    std::vector<absl::Duration> restart_times;
    TimerId restart_timer = 0;
    // Notify.
    std::vector<Waiter> ready_waiters;
    absl::Duration start_watchdog;  // the period each run starts with
    TimerId watchdog_timer = 0;
    bool watchdog_fired = false;  // during this run
  };
  struct Record {
    ProcessInfo info;
    std::string identity;        // "3:1": the 1st child of the 3rd top-level process
    size_t depth = 1;
    int log_readers = 0;             // Logs streams open on its capture files
    uint64_t children_started = 0;
    std::string credential;  // what proctord checks; the worker's own

    // Its Activity, made on first use. For reading, peek() makes none.
    Activity& active() {
      if (activity == nullptr) activity = std::make_unique<Activity>();
      return *activity;
    }
    const Activity& peek() const { return activity != nullptr ? *activity : kIdle; }
    // Ended, and no run of a restart policy is due or in flight: nothing more will run.
    bool ended_for_good() const {
      return !info.running && !info.backoff && !peek().relaunching;
    }
    // Ended for good, and nothing waits, is timed or is in flight on it, and no restart
    // policy could run it again: what is left of its Activity is never looked at again.
    bool idle() const;
    void DropActivityIfIdle() {
      if (activity != nullptr && idle()) activity.reset();
    }

    std::unique_ptr<Activity> activity;
    static const Activity kIdle;
  };
  // Capture files given back once the lock is released (see CaptureFiles): those of
  // forgotten records, reused only when nothing has them open any more and removed otherwise;
  // and those of records that ended for good with no Logs reader, reused if they stayed
  // empty and nothing has them open, else kept.
  struct FilesToDrop {
    std::vector<std::string> remove;
    std::vector<std::string> recycle_if_empty;
  };
  // Once `record` has ended for good: its capture files, to be given back if they stayed
  // empty, unless a Logs reader is counted on it.
  void GiveBackEmptyFilesLocked(const Record& record, FilesToDrop& files)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  struct Sweep {
    uint64_t root;
    int signal;
  };
  struct GroupSignal {
    uint64_t id;
    pid_t pid;  // for the log
    int signal;
    absl::Duration grace;
  };
  // What a call must do once it has let go of the lock: signal groups, sweep trees for
  // strays, settle drains, answer waiters, drop capture files. Declared before the MutexLock in the same
  // scope, so that its destructor runs after the lock has been released.
  class Outbox {
   public:
    explicit Outbox(Supervisor& supervisor) : supervisor_(supervisor) {}
    Outbox(const Outbox&) = delete;
    Outbox& operator=(const Outbox&) = delete;
    ~Outbox();

    void Call(std::function<void()> closure) { calls_.push_back(std::move(closure)); }
    void SignalGroup(GroupSignal signal) { signals_.push_back(signal); }
    void KillCgroup(uint64_t id) { cgroup_kills_.push_back(id); }
    void Answer(Done done, absl::StatusOr<ProcessInfo> answer);
    void SweepTree(uint64_t root, int signal) { sweeps_.push_back(Sweep{root, signal}); }
    void Settle() { settle_ = true; }
    FilesToDrop& files() { return files_; }
    // Numbers the event now (REQUIRES: the supervisor's lock); it is recorded before anything
    // else this outbox does.
    void Emit(EventKind kind, const ProcessInfo* process, uint64_t session = 0,
              absl::Duration delay = absl::ZeroDuration());

   private:
    Supervisor& supervisor_;
    std::vector<SupervisorEvent> events_;
    std::vector<std::function<void()>> calls_;
    std::vector<GroupSignal> signals_;
    std::vector<uint64_t> cgroup_kills_;
    std::vector<Sweep> sweeps_;
    bool settle_ = false;
    FilesToDrop files_;
  };

  // Start's steps: the launch spec (pure), admission under the lock, then commit or roll back.
  absl::StatusOr<LaunchSpec> BuildLaunchSpec(const StartSpec& spec, WorkerUser user) const;
  absl::Status AdmitLocked(const StartSpec& spec, uint64_t id, LaunchSpec& launch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  ProcessInfo CommitLocked(uint64_t id, const Launched& launched, Outbox& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RollBackLocked(uint64_t id, Outbox& out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  void OnExit(uint64_t id, WaitStatus status, const ResourceUsage& usage);
  void OnOrphanReaped();
  void OnJoinTimeout(uint64_t id, WaiterId waiter);
  void OnReadyTimeout(uint64_t id, WaiterId waiter);
  void OnWatchdog(uint64_t id, uint32_t run);
  // The backoff is over: launches the next run (or waits for the last one's leftovers).
  void OnRestartDue(uint64_t id);
  // A run has ended (info.status and end_time set, running false): back off and restart
  // as the policy says, or end for good.
  void RunEndedLocked(Record& record, Outbox& out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The wait before the next run, or none when the policy says the process has ended for
  // good (`gave_up` then tells whether it was the restart limit).
  std::optional<absl::Duration> NextRestartLocked(Record& record, bool& gave_up)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The process has ended for good: exited event, joiners and ready waiters answered,
  // endpoint closed. Does not evict (the caller may still use the record).
  void EndForGoodLocked(Record& record, Outbox& out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Terminated: no run after this one; one waiting in backoff ends now.
  void StopRestartsLocked(Record& record, Outbox& out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ArmWatchdogLocked(Record& record) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  void OnGraceExpired(uint64_t id);
  void OnShutdownGraceExpired();
  void ExitLocked(Record& record, const Exit& exit, Outbox& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // A committed record, or null.
  Record* FindLocked(uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A committed record or one whose launch is in flight, or null.
  Record* FindAnyLocked(uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Has `out` signal the record's group (if it may still have members) and arms its SIGKILL
  // timer.
  void SignalLocked(Record& record, int sig, absl::Duration grace, Outbox& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // (Re)arms the record's kill timer to fire `delay` from now, unless it fires sooner already.
  void ArmKillTimerLocked(Record& record, absl::Duration delay)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // No SIGKILL is due for the record any more (its timer, if any, is cancelled).
  void CancelKillTimerLocked(Activity& activity) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The same as SignalLocked for `root` and every record below it, and asks `out` to sweep
  // the tree for strays (outside the lock).
  void SignalTreeLocked(Record& root, int sig, absl::Duration grace, Outbox& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Looks for processes below the tree of `root` that left their groups, and signals them
  // (and those found before). Takes the lock itself; the /proc search runs outside it.
  void SweepStrays(uint64_t root, int sig);
  // Completes the terminators of records of which nothing is alive any more; for trees, after
  // one last search for escapees that were between parents when the tree was swept. Takes
  // the lock itself.
  void SettleDrains();
  std::vector<Record*> SubtreeLocked(Record& root) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether anything known of the record may still be alive: its group or, with tree,
  // anything its tree started. No side effects.
  bool AnythingAliveLocked(Record& record) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Forgets strays that are gone.
  void PruneStraysLocked(Record& record) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CompleteTerminatorsLocked(Record& record, Outbox& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // (Re)starts the session's TTL timer.
  void ArmSessionTimerLocked(uint64_t session) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends a session: its daemonic processes are terminated with their trees.
  void EndSessionLocked(uint64_t session, Outbox& out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CheckShutdownLocked(Outbox& out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EvictLocked(Outbox& out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes a record and its id from its parent's children; its capture files go to `files`.
  void EraseLocked(uint64_t id, FilesToDrop& files) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Hands `events` to the sink once every earlier cursor has been handed over; call without
  // the lock.
  void RecordInOrder(const std::vector<SupervisorEvent>& events);
  // Gives back (or removes) dropped capture files; call without the lock.
  void Drop(const FilesToDrop& files);
  bool InSubtreeLocked(uint64_t root, uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const SupervisorOptions options_;
  ProcessOs& os_;
  Clock& clock_;
  Timers& timers_;
  IdAllocator& ids_;

  absl::Mutex mu_;
  // Nodes, not slots: a Record is about 1 KiB, and a flat map's slots (up to twice as many
  // as records, three times while it grows) would each hold one.
  absl::node_hash_map<uint64_t, Record> records_ ABSL_GUARDED_BY(mu_);
  // Launches in flight: admitted, not yet visible.
  absl::flat_hash_map<uint64_t, Record> starting_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<uint64_t> draining_ ABSL_GUARDED_BY(mu_);  // have terminators
  // Restarts whose wait is over but whose last run's leftovers are not gone yet.
  absl::flat_hash_set<uint64_t> restarts_due_ ABSL_GUARDED_BY(mu_);
  absl::BitGen bit_gen_ ABSL_GUARDED_BY(mu_);  // restart jitter
  std::deque<uint64_t> ended_order_ ABSL_GUARDED_BY(mu_);        // may hold released ids
  size_t ended_count_ ABSL_GUARDED_BY(mu_) = 0;
  size_t live_count_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t top_level_started_ ABSL_GUARDED_BY(mu_) = 0;
  WaiterId next_waiter_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<WaiterId, uint64_t> waiter_record_ ABSL_GUARDED_BY(mu_);
  struct SessionState {
    absl::Duration ttl;
    TimerId timer = 0;
    std::function<void()> on_expired;
    std::vector<uint64_t> processes;
    std::string owner;
    bool held = true;  // a stream holds it (restored sessions wait for ResumeSession)
  };
  // Has the os keep the session's memo (or drop it, when it has ended) for a restart.
  void KeepSessionLocked(uint64_t session, Outbox& out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::flat_hash_map<uint64_t, SessionState> sessions_ ABSL_GUARDED_BY(mu_);
  uint64_t last_cursor_ ABSL_GUARDED_BY(mu_);
  absl::Mutex record_mu_;  // never taken with mu_ held
  uint64_t recorded_through_ ABSL_GUARDED_BY(record_mu_);
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  bool shutdown_grace_over_ ABSL_GUARDED_BY(mu_) = false;
  absl::Duration shutdown_grace_ ABSL_GUARDED_BY(mu_);
  std::function<void()> shutdown_done_ ABSL_GUARDED_BY(mu_);
  EndListener end_listener_;  // set before use, then only read
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_SUPERVISOR_H_
