#include "server/daemon.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/authkey.h"
#include "common/default_paths.h"
#include "common/environment_names.h"
#include "grpcpp/grpcpp.h"
#include "server/authenticator.h"
#include "server/capture_files.h"
#include "server/event_loop.h"
#include "server/id_allocator.h"
#include "server/posix_process_os.h"
#include "server/proctor_service.h"
#include "server/supervisor.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

extern char** environ;

namespace proctor {
namespace {

constexpr char kUsage[] =
    "usage: proctord [flags]\n"
    "  --listen ADDR          unix:/path or host:port; repeatable (default unix:<runtime "
    "dir>/proctor/proctord.sock)\n"
    "  --state-dir DIR        ids and captured output (default $XDG_STATE_HOME/proctor, "
    "/var/lib/proctor as root)\n"
    "  --retain N             ended records kept before the oldest are forgotten (10000)\n"
    "  --max-processes N      live processes in the whole daemon (4096)\n"
    "  --max-children N       live children of one worker (512)\n"
    "  --max-depth N          depth of a process tree; top level is 1 (16)\n"
    "  --capture-spares N     capture files made ahead of time, off the start path (4096)\n"
    "  --shutdown-grace SECS  on SIGTERM, how long non-daemonic workers may run on (10)\n"
    "  --log-level LEVEL      trace, debug, info, warn, error, off (info)\n"
    "  --authkey-file PATH    an admin key; repeatable, reloaded on SIGHUP (default "
    "<state-dir>/authkey, made if missing)\n"
    "  --socket-mode MODE     permissions of Unix sockets, octal (0600)\n"
    "  --tls-cert PATH        PEM certificate for TCP listeners (with --tls-key)\n"
    "  --tls-key PATH         PEM private key for TCP listeners\n"
    "  --tls-client-ca PATH   require client certificates signed by this CA (mutual TLS)\n"
    "  --insecure-tcp         allow TCP listeners without TLS (the authkey still applies)\n";

std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

absl::Status MakeDirs(const std::string& path) {
  for (size_t pos = 1; pos != std::string::npos;) {
    pos = path.find('/', pos + 1);
    std::string prefix = path.substr(0, pos);
    if (mkdir(prefix.c_str(), 0700) != 0 && errno != EEXIST) {
      return absl::InternalError(absl::StrCat("cannot create ", prefix, ": ",
                                              std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

// A socket file left by a daemon that died is removed; one a live daemon answers on is not.
absl::Status PrepareSocketPath(const std::string& path) {
  if (path.size() >= sizeof(sockaddr_un::sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("socket path ", path, " is too long"));
  }
  if (absl::Status s = MakeDirs(path.substr(0, path.rfind('/'))); !s.ok()) return s;
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) return absl::OkStatus();
  if (!S_ISSOCK(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " exists and is not a socket; not replacing it"));
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  bool live = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  if (live) {
    return absl::FailedPreconditionError(
        absl::StrCat("another proctord is listening on ", path));
  }
  unlink(path.c_str());
  return absl::OkStatus();
}

// The admin keys, all of them or an error naming the file at fault.
absl::StatusOr<std::vector<std::string>> LoadAdminKeys(const DaemonOptions& options) {
  std::vector<std::string> keys;
  if (options.authkey_files.empty()) {
    std::string path = options.state_dir + "/authkey";
    absl::StatusOr<std::string> key = ReadKeyFile(path, /*private_only=*/true);
    if (absl::IsNotFound(key.status())) {
      key = CreateKeyFile(path);
      if (key.ok()) spdlog::info("created a new admin authkey in {}", path);
    }
    if (!key.ok()) return key.status();
    keys.push_back(*std::move(key));
    return keys;
  }
  for (const std::string& path : options.authkey_files) {
    absl::StatusOr<std::string> key = ReadKeyFile(path, /*private_only=*/true);
    if (!key.ok()) return key.status();
    keys.push_back(*std::move(key));
  }
  return keys;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> TcpCredentials(
    const DaemonOptions& options, const std::string& address) {
  if (options.tls_cert.empty()) {
    if (!options.insecure_tcp) {
      return absl::InvalidArgumentError(absl::StrCat(
          "TCP listener ", address,
          " needs --tls-cert and --tls-key (or --insecure-tcp to accept plain TCP)"));
    }
    spdlog::warn("listening on {} without TLS (--insecure-tcp): calls and replies cross the "
                 "network in the clear; only the authkey protects them",
                 address);
    return grpc::InsecureServerCredentials();
  }
  grpc::SslServerCredentialsOptions ssl(
      options.tls_client_ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                    : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  std::string cert = ReadWholeFile(options.tls_cert);
  std::string key = ReadWholeFile(options.tls_key);
  if (cert.empty() || key.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("cannot read --tls-cert ", options.tls_cert,
                                                   " or --tls-key ", options.tls_key));
  }
  ssl.pem_key_cert_pairs.push_back({key, cert});
  if (!options.tls_client_ca.empty()) {
    ssl.pem_root_certs = ReadWholeFile(options.tls_client_ca);
    if (ssl.pem_root_certs.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot read --tls-client-ca ", options.tls_client_ca));
    }
  }
  return grpc::SslServerCredentials(ssl);
}

// The daemon's environment for its workers, without proctor's own variables: a worker gets
// its own PROCTOR_ID/PROCTOR_AUTHKEY, and must not find the daemon's admin key file instead.
std::vector<std::string> WorkerBaseEnvironment() {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (!absl::StartsWith(*e, kEnvPrefix)) env.emplace_back(*e);
  }
  return env;
}

}  // namespace

absl::StatusOr<DaemonOptions> ParseDaemonFlags(const std::vector<std::string>& args) {
  DaemonOptions options;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string flag = args[i];
    std::string value;
    bool has_value = false;
    if (size_t eq = flag.find('='); absl::StartsWith(flag, "--") && eq != std::string::npos) {
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
      has_value = true;
    }
    if (flag == "--help" || flag == "-h") return absl::CancelledError(kUsage);
    auto take = [&]() -> absl::StatusOr<std::string> {
      if (has_value) return value;
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat(flag, " needs a value"));
      }
      return args[++i];
    };
    absl::StatusOr<std::string> v;
    if (flag == "--listen") {
      if (!(v = take()).ok()) return v.status();
      if (v->empty()) return absl::InvalidArgumentError("--listen needs an address");
      options.listen.push_back(*v);
    } else if (flag == "--state-dir") {
      if (!(v = take()).ok()) return v.status();
      options.state_dir = *v;
    } else if (flag == "--retain") {
      if (!(v = take()).ok()) return v.status();
      if (!absl::SimpleAtoi(*v, &options.retain)) {
        return absl::InvalidArgumentError(
            absl::StrCat("--retain wants a count, not \"", *v, "\""));
      }
    } else if (flag == "--max-processes" || flag == "--max-children" ||
               flag == "--max-depth") {
      if (!(v = take()).ok()) return v.status();
      size_t limit = 0;
      if (!absl::SimpleAtoi(*v, &limit) || limit == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(flag, " wants a count of 1 or more, not \"", *v, "\""));
      }
      (flag == "--max-processes"  ? options.max_processes
       : flag == "--max-children" ? options.max_children
                                  : options.max_depth) = limit;
    } else if (flag == "--capture-spares") {
      if (!(v = take()).ok()) return v.status();
      if (!absl::SimpleAtoi(*v, &options.capture_spares)) {
        return absl::InvalidArgumentError(
            absl::StrCat("--capture-spares wants a count, not \"", *v, "\""));
      }
    } else if (flag == "--shutdown-grace") {
      if (!(v = take()).ok()) return v.status();
      double seconds;
      if (!absl::SimpleAtod(*v, &seconds) || seconds < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--shutdown-grace wants seconds (0 or more), not \"", *v, "\""));
      }
      options.shutdown_grace = absl::Seconds(seconds);
    } else if (flag == "--authkey-file") {
      if (!(v = take()).ok()) return v.status();
      options.authkey_files.push_back(*v);
    } else if (flag == "--socket-mode") {
      if (!(v = take()).ok()) return v.status();
      char* end = nullptr;
      unsigned long mode = std::strtoul(v->c_str(), &end, 8);
      if (v->empty() || *end != '\0' || mode > 0777) {
        return absl::InvalidArgumentError(
            absl::StrCat("--socket-mode wants octal permissions such as 0660, not \"", *v, "\""));
      }
      options.socket_mode = static_cast<unsigned>(mode);
    } else if (flag == "--tls-cert") {
      if (!(v = take()).ok()) return v.status();
      options.tls_cert = *v;
    } else if (flag == "--tls-key") {
      if (!(v = take()).ok()) return v.status();
      options.tls_key = *v;
    } else if (flag == "--tls-client-ca") {
      if (!(v = take()).ok()) return v.status();
      options.tls_client_ca = *v;
    } else if (flag == "--insecure-tcp") {
      options.insecure_tcp = true;
    } else if (flag == "--log-level") {
      if (!(v = take()).ok()) return v.status();
      if (spdlog::level::from_str(*v) == spdlog::level::off && *v != "off") {
        return absl::InvalidArgumentError(absl::StrCat("unknown --log-level \"", *v, "\""));
      }
      options.log_level = *v;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag \"", args[i], "\" (see proctord --help)"));
    }
  }
  if (options.listen.empty()) options.listen.push_back(DefaultAddress());
  if (options.state_dir.empty()) options.state_dir = DefaultStateDir();
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (!options.tls_client_ca.empty() && options.tls_cert.empty()) {
    return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key");
  }
  return options;
}

int RunDaemon(const DaemonOptions& options) {
  auto logger = spdlog::stderr_logger_mt("proctord");
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  logger->set_level(spdlog::level::from_str(options.log_level));
  spdlog::set_default_logger(logger);

  auto fail = [](const absl::Status& status) {
    spdlog::error("{}", std::string(status.message()));
    return 1;
  };
  std::string log_dir = options.state_dir + "/logs";
  if (absl::Status s = MakeDirs(log_dir); !s.ok()) return fail(s);
  absl::StatusOr<std::unique_ptr<IdAllocator>> ids =
      IdAllocator::Open(options.state_dir + "/next-id");
  if (!ids.ok()) return fail(ids.status());
  absl::StatusOr<std::unique_ptr<EventLoop>> loop = EventLoop::Create();
  if (!loop.ok()) return fail(loop.status());

  absl::StatusOr<std::vector<std::string>> admin_keys = LoadAdminKeys(options);
  if (!admin_keys.ok()) return fail(admin_keys.status());

  // Workers call back on the first Unix socket (or else the first address) we listen on.
  std::string worker_address = options.listen.front();
  for (const std::string& address : options.listen) {
    if (absl::StartsWith(address, "unix:")) {
      worker_address = address;
      break;
    }
  }

  CaptureFiles capture_files(log_dir, options.capture_spares);
  absl::StatusOr<std::unique_ptr<PosixProcessOs>> posix_os =
      PosixProcessOs::Create(**loop, options.worker_nice);
  if (!posix_os.ok()) return fail(posix_os.status());
  PosixProcessOs& os = **posix_os;
  RealClock clock;
  SupervisorOptions supervisor_options{
      .log_dir = log_dir,
      .retain = options.retain,
      .base_env = WorkerBaseEnvironment(),
      .arg_max = static_cast<size_t>(sysconf(_SC_ARG_MAX)),
      .worker_address = worker_address,
      .capture_files = &capture_files,
      .max_processes = options.max_processes,
      .max_children = options.max_children,
      .max_depth = options.max_depth,
  };
  Supervisor supervisor(supervisor_options, os, clock, **loop, **ids);
  Authenticator authenticator(clock, [&](uint64_t id) { return supervisor.AuthkeyOf(id); });
  authenticator.SetAdminKeys(*std::move(admin_keys));
  ProctorService service(supervisor, **loop, authenticator, clock);

  grpc::ServerBuilder builder;
  std::vector<std::string> socket_paths;
  for (const std::string& address : options.listen) {
    if (absl::StartsWith(address, "unix:")) {
      std::string path = address.substr(5);
      if (absl::Status s = PrepareSocketPath(path); !s.ok()) return fail(s);
      socket_paths.push_back(path);
      builder.AddListeningPort(address, grpc::InsecureServerCredentials());
    } else {
      absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
          TcpCredentials(options, address);
      if (!credentials.ok()) return fail(credentials.status());
      builder.AddListeningPort(address, *credentials);
    }
  }
  builder.RegisterService(&service);
  // The socket is created by bind() inside BuildAndStart; the umask gives it its mode from
  // the first instant rather than after a chmod.
  mode_t old_umask = umask(~options.socket_mode & 0777);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  umask(old_umask);
  if (server == nullptr) {
    return fail(absl::UnavailableError(absl::StrCat(
        "cannot listen on ", absl::StrJoin(options.listen, ", "), " (see the log above)")));
  }

  absl::StatusOr<int> signal_fd = OpenDaemonSignalFd();
  if (!signal_fd.ok()) return fail(signal_fd.status());
  std::thread stopper;
  int finished = 0;  // of the gRPC server and the supervisor; touched on the loop thread only
  bool stopping = false;
  EventLoop& event_loop = **loop;
  absl::Status watched = event_loop.Watch(*signal_fd, [&] {
    for (DaemonSignal sig : ReadSignals(*signal_fd)) {
      if (sig == DaemonSignal::kChildExited) {
        os.OnSigchld();
      } else if (sig == DaemonSignal::kReload) {
        // A bad file keeps the keys in force: a typo must not lock everyone out.
        absl::StatusOr<std::vector<std::string>> keys = LoadAdminKeys(options);
        if (keys.ok()) {
          spdlog::info("reloaded {} admin authkey(s)", keys->size());
          authenticator.SetAdminKeys(*std::move(keys));
        } else {
          spdlog::error("authkeys not reloaded, the old ones stay: {}",
                        std::string(keys.status().message()));
        }
      } else if (sig == DaemonSignal::kStop && !stopping) {
        stopping = true;
        spdlog::info("asked to stop: no new calls; ending workers");
        // Server::Shutdown waits for handlers; it must not run on the loop thread.
        // The loop runs on until both the calls and the workers are done: calls still in
        // flight may be waiting on its timers (held-back refusals, log follows).
        stopper = std::thread([&] {
          server->Shutdown(std::chrono::system_clock::now());
          event_loop.Post([&] {
            if (++finished == 2) event_loop.Stop();
          });
        });
        supervisor.Shutdown(options.shutdown_grace, [&] {
          event_loop.Post([&] {
            if (++finished == 2) event_loop.Stop();
          });
        });
      }
    }
  });
  if (!watched.ok()) return fail(watched);

  spdlog::info("proctord listening on {}; state in {}", absl::StrJoin(options.listen, ", "),
               options.state_dir);
  event_loop.Run();

  if (stopper.joinable()) stopper.join();
  server->Wait();
  event_loop.Unwatch(*signal_fd);
  close(*signal_fd);
  for (const std::string& path : socket_paths) unlink(path.c_str());
  spdlog::info("proctord stopped");
  return 0;
}

}  // namespace proctor
