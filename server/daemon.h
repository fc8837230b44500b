// The proctord program as a library: its options, how they are parsed from the command line,
// and Daemon, which wires the event loop, os, supervisor, authenticator and gRPC server
// together and runs until SIGTERM or SIGINT has ended every worker.
#ifndef PROCTOR_SERVER_DAEMON_H_
#define PROCTOR_SERVER_DAEMON_H_

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/generic/async_generic_service.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "server/authenticator.h"
#include "server/capture_files.h"
#include "server/clock.h"
#include "server/event_log.h"
#include "server/event_loop.h"
#include "server/event_recorder.h"
#include "server/id_allocator.h"
#include "server/journal.h"
#include "server/keeper_client.h"
#include "server/posix_process_os.h"
#include "server/log_trimmer.h"
#include "server/metrics.h"
#include "server/metrics_server.h"
#include "server/notify_sockets.h"
#include "server/proctor_service.h"
#include "server/service_manager.h"
#include "server/supervisor.h"
#include "server/sync_service.h"
#include "server/systemd_notifier.h"

namespace proctor {

struct DaemonOptions {
  // "unix:/path" or "host:port"; empty: the default socket.
  std::vector<std::string> listen;
  // "host:port" of a plain-TCP server that answers grpc.health.v1.Health alone (for probes
  // that cannot speak TLS); empty: none.
  std::string health_listen;
  // "host:port" of the Prometheus metrics endpoint (/metrics over HTTP); empty: none.
  std::string metrics_listen;
  std::string state_dir;  // empty: the default state directory
  std::string services_dir;  // declared services (ServiceManager); empty: the default
  size_t retain = 10000;
  size_t max_processes = 4096;
  size_t max_children = 512;
  size_t max_depth = 16;
  size_t max_sync_objects = 1024;  // per process tree or session
  size_t max_sync_waiters = 16384;  // per sync object
  size_t capture_spares = 4096;  // capture files made ahead of time (see CaptureFiles)
  size_t max_log_bytes = 64 << 20;  // per capture file (see LogTrimmer); 0: no cap
  absl::Duration shutdown_grace = absl::Seconds(10);
  std::string log_level = "info";
  // Admin keys; empty: <state-dir>/authkey, created (32 random bytes, mode 0600) if missing.
  std::vector<std::string> authkey_files;
  unsigned socket_mode = 0600;
  // TLS for TCP listeners; without a certificate, TCP needs insecure_tcp.
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;  // set: clients must present a certificate it signed
  bool insecure_tcp = false;
  std::string worker_user;     // empty: workers run as proctord's user unless Start says
  bool worker_cgroups = true;  // a cgroup per worker where cgroup v2 allows
  bool durable = false;        // the journal syncs each commit (power loss), not only writes
  // Empty: proctor-keeper beside proctord's own executable (the build tree), else where it is
  // installed relative to it (<prefix>/libexec/proctor/proctor-keeper for <prefix>/bin/proctord).
  std::string keeper_path;
  // Set by main() from RaiseDaemonPriority(): the nice value workers get back.
  std::optional<int> worker_nice;
};

// -h or --help was given: print `text` to stdout and exit 0.
struct DaemonHelp {
  std::string text;
};

// What proctord's command line asks for: run with these options, or show the help.
using DaemonCommandLine = std::variant<DaemonOptions, DaemonHelp>;

// Parses proctord's arguments (argv without argv[0]). "--flag value" and "--flag=value" both
// work; --listen and --authkey-file may be repeated, and any other flag given twice keeps its
// last value. Without --listen or --state-dir, the defaults of common/default_paths.h are
// filled in. INVALID_ARGUMENT names the flag or argument at fault and what it wants instead;
// never throws.
absl::StatusOr<DaemonCommandLine> ParseDaemonFlags(const std::vector<std::string>& args);

// How proctord shares out its descriptors (RLIMIT_NOFILE; the soft limit is raised to the hard
// one at start). Each live worker holds one, its pidfd, until it is reaped; `reserve` is kept
// for everything else: connections (one per client, and one per worker that calls back), the
// listeners, the event loop's and gRPC's own descriptors, capture and key files, Logs streams.
// So no more than `workers` may run at once, whatever --max-processes says.
struct DescriptorBudget {
  size_t limit = 0;
  size_t reserve = 0;
  size_t workers = 0;
};

// The reserve is half the limit, and never less than this.
inline constexpr size_t kMinDescriptorReserve = 128;

DescriptorBudget BudgetDescriptors(size_t limit);

// A running proctord: the log, the state directory, the event loop, the process os, the
// supervisor, the authenticator and the gRPC service, listening on every --listen address.
//
// Lifetime: Create() sets everything up, binds the listening sockets and starts the gRPC
// server; connections are taken by the event loop, so they wait in the listen backlog until
// Run(): call it right after. Run() runs the event loop on the calling thread until SIGTERM or
// SIGINT, on which the listeners close, the server stops taking calls and every worker is
// ended (daemonic ones at once, the others after --shutdown-grace). Destroying a Daemon that
// never ran closes its listeners and removes its sockets.
//
// Descriptors: Create() raises the soft RLIMIT_NOFILE to the hard limit and caps the workers at
// what BudgetDescriptors() allows (below --max-processes: logged, and Start's refusal names the
// descriptor limit). The daemon binds its sockets itself and hands each connection it accepts
// to gRPC: gRPC 1.51's own listener stops for good on the first EMFILE from accept4. When
// descriptors run short, connections wait in the listen backlog and accept is retried every
// 100 ms until they can be taken.
//
// Threads: Create, Run and the destructor are for one thread (main's). The daemon starts its
// own (gRPC's, CaptureFiles', one to stop the server) and joins them by the time Run returns
// or the destructor does.
//
// Declared services (--services) are applied once the workers of an earlier proctord have
// been taken back and before the server answers its first call.
//
// Operating it: every server answers gRPC's grpc.health.v1.Health (SERVING from the first call
// it answers; NOT_SERVING once a stop or a restart begins, which --health-listen's server
// answers until Run returns) and the main one server reflection, both without an authkey (the
// serving state and the public schema; every other call authenticates). The service manager
// hears READY=1, STATUS=, WATCHDOG=1, RELOADING=1 and STOPPING=1 (SystemdNotifier), and
// --metrics-listen serves Prometheus' /metrics (Metrics, MetricsServer).
//
// SIGCHLD, SIGTERM, SIGINT and SIGHUP are read from a signalfd, so REQUIRES:
// BlockDaemonSignals() was called before any thread of the process was started. SIGHUP
// reloads the admin keys (a file that fails to load leaves the old keys in force) and applies
// the services directory again.
class Daemon {
 public:
  // Errors say what could not be set up: the state directory, the ids, the admin keys, a
  // socket path in use, a TCP listener without TLS, a port that cannot be bound...
  static absl::StatusOr<std::unique_ptr<Daemon>> Create(const DaemonOptions& options);
  ~Daemon();

  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Runs until the daemon has been asked to stop and everything has ended (the keeper too),
  // or to restart (SIGUSR2: the workers live on with the keeper); the Unix socket files are
  // then removed. A stop asked for while restarting is left pending for the restarted
  // proctord. Returns the process exit status: 0. Call once.
  int Run();
  // After Run(): whether it ended for a restart, which main() does by executing proctord
  // again, in place, once the daemon is destroyed.
  bool restart_requested() const { return restarting_; }

 private:
  explicit Daemon(const DaemonOptions& options);
  absl::Status Init();
  absl::Status StartServer();

  // A socket proctord listens on; what it accepts goes to gRPC through `acceptor`.
  struct Listener {
    std::string address;  // the --listen it serves
    int fd = -1;
    bool tcp = false;
    bool watched = false;
    bool health = false;  // --health-listen's: open until Run ends, to answer NOT_SERVING
    grpc::experimental::ExternalConnectionAcceptor* acceptor = nullptr;
  };
  // Binds one --listen address (or, with `health`, the --health-listen one, plain TCP): its
  // sockets are added to listeners_ (a Unix socket file also to socket_paths_) as they are
  // made, so that the destructor undoes a failure half-way.
  absl::Status Listen(const std::string& address, grpc::ServerBuilder& builder, bool health);
  // On the loop thread (or before Run): accepting starts, stops. Closed listeners stay in
  // listeners_ without a descriptor until all are closed (`health_too`).
  absl::Status WatchListeners();
  void UnwatchListeners();
  void CloseListeners(bool health_too);
  // Every health service (both servers) answers NOT_SERVING from now on.
  void SetNotServing();
  void OnAcceptable(size_t index);
  // Out of descriptors (or another error of the listener, not of one connection): connections
  // wait in the backlog; accept is tried again after kAcceptRetry.
  void PauseAccepting(const Listener& listener, int err);
  void ResumeAccepting();
  // On the loop thread: what the signalfd says.
  void OnSignals();
  void ReloadAdminKeys();
  // The journal, the event log seeded from it, and the recorder the supervisor reports to.
  absl::Status OpenEvents();
  void BeginStop();
  // SIGUSR2: stop serving without ending any worker; Run() then returns for main() to start
  // proctord again, which reattaches.
  void BeginRestart();
  // The keeper, the os adopting what it holds, the supervisor and its restored state.
  absl::Status OpenWorkers(const rlimit& original_descriptors);
  // On the loop thread, once each for the gRPC server and the supervisor.
  void OnStopped();
  void RemoveSocketFiles();
  // The counts for the service manager's STATUS= line and for metrics.
  std::string StatusLine();
  Metrics::Gauges MetricsGauges();
  absl::Status StartMetrics();

  const DaemonOptions options_;
  const std::string log_dir_;
  std::vector<std::string> socket_paths_;  // Unix sockets we bound; removed at the end
  DescriptorBudget descriptors_;

  // Declared in the order they are made; each may use those above it.
  std::unique_ptr<IdAllocator> ids_;
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<CaptureFiles> capture_files_;
  std::unique_ptr<Journal> journal_;
  std::unique_ptr<EventLog> event_log_;
  std::unique_ptr<EventRecorder> event_recorder_;
  // Told of the events from the start (the supervisor's restore has some); they read the
  // supervisor, the event log and the authenticator only once the loop runs or a scrape comes.
  std::unique_ptr<SystemdNotifier> notifier_;
  std::unique_ptr<Metrics> metrics_;  // --metrics-listen; null without
  Supervisor* supervisor_for_events_ = nullptr;  // set once the supervisor exists
  EventRecorder::Rebuilt rebuilt_;  // what the journal held at start
  std::unique_ptr<PosixProcessOs> os_;
  std::unique_ptr<NotifySockets> notify_;  // workers' sd_notify sockets
  RealClock clock_;
  std::unique_ptr<Supervisor> supervisor_;
  std::unique_ptr<Authenticator> authenticator_;
  std::unique_ptr<ProctorService> service_;
  std::unique_ptr<IdAllocator> sync_ids_;  // sync object ids, never reused either
  std::vector<std::string> kept_sync_;      // the keeper's "sync/" notes, until restored
  // The keeper's "service/" notes (the prefix removed), until the service manager takes them.
  std::map<std::string, std::string> kept_services_;
  std::unique_ptr<SyncObjects> sync_;  // after the supervisor it listens to
  std::unique_ptr<LogTrimmer> log_trimmer_;  // after the supervisor it asks: stops first
  // The one exception to the order: made before the os, but destroyed before it and the
  // supervisor, since its reader thread calls both.
  std::unique_ptr<KeeperClient> keeper_;
  // Its thread starts workers through the keeper: destroyed before it.
  std::unique_ptr<ServiceManager> services_;
  std::vector<std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor>> acceptors_;
  std::vector<Listener> listeners_;
  std::unique_ptr<grpc::Server> server_;
  grpc::CallbackGenericService health_unimplemented_;  // health_server_'s other methods
  std::unique_ptr<grpc::Server> health_server_;  // --health-listen; null without
  // Last, so destroyed first: its scrapes read most of the above.
  std::unique_ptr<MetricsServer> metrics_server_;
  int signal_fd_ = -1;

  // Runs Server::Shutdown, which waits for handlers and so must not run on the loop thread.
  std::thread stopper_;
  // Loop thread only.
  bool stopping_ = false;
  bool restarting_ = false;
  // SIGTERM or SIGINT came while stopping to restart: raised again for the next proctord.
  bool stop_after_restart_ = false;
  int stopped_parts_ = 0;  // of the gRPC server and the supervisor
  TimerId accept_retry_ = 0;
  std::optional<absl::Time> accept_paused_since_;  // set from a pause to the next accept
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_DAEMON_H_
