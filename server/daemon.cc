#include "server/daemon.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <climits>
#include <csignal>
#include <cstdlib>
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <utility>

#include "CLI/CLI.hpp"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/notification.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/authkey.h"
#include "common/default_paths.h"
#include "common/environment_names.h"
#include "google/protobuf/descriptor.h"
#include "grpc/health/v1/health.pb.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/impl/server_builder_option.h"
#include "grpcpp/impl/server_builder_plugin.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

extern char** environ;

namespace proctor {
namespace {

constexpr char kSeeHelp[] = " (see proctord --help)";

// How long connections wait in the backlog, when descriptors ran short, before accept is tried
// again; and how many are accepted at one wakeup of the loop (epoll calls again while more wait).
constexpr absl::Duration kAcceptRetry = absl::Milliseconds(100);
constexpr int kAcceptBatch = 64;

// Adds a flag taking a value that `store` parses into the options; when it cannot, the value
// is refused as `<flag> wants <wanted>, not "<value>"`. Every occurrence is checked as it is
// parsed, so a bad value is refused even when a later one would do.
void AddParsedFlag(CLI::App& app, const std::string& flag, const std::string& value_name,
                   const std::string& help, const std::string& wanted,
                   std::function<bool(const std::string&)> store) {
  app.add_option_function<std::string>(
         flag,
         [flag, wanted, store = std::move(store)](const std::string& value) {
           if (!store(value)) {
             throw CLI::ValidationError(
                 absl::StrCat(flag, " wants ", wanted, ", not \"", value, "\""));
           }
         },
         help)
      ->type_name(value_name)
      ->trigger_on_parse();
}

bool ParseCount(const std::string& text, size_t min, size_t* count) {
  size_t value;
  if (!absl::SimpleAtoi(text, &value) || value < min) return false;
  *count = value;
  return true;
}

// A flag for a count of `min` or more, described as `what`; its help shows the default,
// `count` as it stands. Decimal only: CLI11's own integer conversion (strtoull, base 0) would
// take "-1" (wrapping around) and read "010" as octal.
void AddCountFlag(CLI::App& app, const std::string& flag, size_t min, const std::string& what,
                  size_t& count) {
  AddParsedFlag(app, flag, "N", absl::StrCat(what, " (default ", count, ")"),
                min == 0 ? "a count" : absl::StrCat("a count of ", min, " or more"),
                [min, &count](const std::string& v) { return ParseCount(v, min, &count); });
}

bool ParseSeconds(const std::string& text, absl::Duration* duration) {
  double seconds;
  // Written so that NaN is refused too.
  if (!absl::SimpleAtod(text, &seconds) || !(seconds >= 0)) return false;
  *duration = absl::Seconds(seconds);
  return true;
}

bool ParseOctalMode(const std::string& text, unsigned* mode) {
  if (text.empty() || text.find_first_not_of("01234567") != std::string::npos) return false;
  unsigned long value = std::strtoul(text.c_str(), nullptr, 8);
  if (value > 0777) return false;
  *mode = static_cast<unsigned>(value);
  return true;
}

bool ParseLogLevel(const std::string& text, std::string* level) {
  // from_str answers `off` for any name it does not know.
  if (spdlog::level::from_str(text) == spdlog::level::off && text != "off") return false;
  *level = text;
  return true;
}

// Declares proctord's flags, storing into `options`; the help shows the defaults `options`
// holds, and the default paths as they are for this user.
void DeclareFlags(CLI::App& app, DaemonOptions& options) {
  app.set_help_flag("-h,--help", "print this help and exit");
  // Other flags given twice keep the last value, as they always have.
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  // Left over arguments are reported by ParseDaemonFlags, in its own words.
  app.allow_extras();

  app.add_option("--listen", options.listen,
                 absl::StrCat("unix:/path or host:port; repeatable (default ", DefaultAddress(),
                              ")"))
      ->type_name("ADDR")
      ->allow_extra_args(false)  // one address per --listen
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("--health-listen", options.health_listen,
                 "host:port of a plain-TCP gRPC server that answers grpc.health.v1.Health "
                 "alone, for probes that cannot speak TLS (default: none)")
      ->type_name("ADDR");
  app.add_option("--metrics-listen", options.metrics_listen,
                 "host:port to serve Prometheus metrics on, at /metrics over plain HTTP "
                 "(default: none)")
      ->type_name("ADDR");
  app.add_option("--state-dir", options.state_dir,
                 absl::StrCat("ids and captured output (default ", DefaultStateDir(), ")"))
      ->type_name("DIR");
  app.add_option("--services", options.services_dir,
                 absl::StrCat("declared services, one NAME.json each, applied at start and on "
                              "SIGHUP; a missing directory declares none (default ",
                              DefaultServicesDir(), ")"))
      ->type_name("DIR");
  AddCountFlag(app, "--retain", 0, "ended records kept before the oldest are forgotten",
               options.retain);
  AddCountFlag(app, "--max-processes", 1, "live processes in the whole daemon",
               options.max_processes);
  AddCountFlag(app, "--max-children", 1, "live children of one worker", options.max_children);
  AddCountFlag(app, "--max-depth", 1, "depth of a process tree; top level is 1", options.max_depth);
  AddCountFlag(app, "--max-sync-objects", 1, "sync objects of one process tree or session",
               options.max_sync_objects);
  AddCountFlag(app, "--max-sync-waiters", 1, "callers waiting on one sync object",
               options.max_sync_waiters);
  AddCountFlag(app, "--capture-spares", 0,
               "the most capture files kept ready, off the start path (starts at 64, doubles "
               "when it runs out)",
               options.capture_spares);
  AddCountFlag(app, "--max-log-bytes", 0,
               "output kept per capture file; past it the oldest part is dropped (0: no cap)",
               options.max_log_bytes);
  AddParsedFlag(app, "--shutdown-grace", "SECS",
                absl::StrCat("on SIGTERM, how long non-daemonic workers may run on (default ",
                             absl::FDivDuration(options.shutdown_grace, absl::Seconds(1)), ")"),
                "seconds (0 or more)", [&options](const std::string& v) {
                  return ParseSeconds(v, &options.shutdown_grace);
                });
  AddParsedFlag(app, "--log-level", "LEVEL",
                absl::StrCat("trace, debug, info, warn, error, critical or off (default ",
                             options.log_level, ")"),
                "one of trace, debug, info, warn, error, critical, off",
                [&options](const std::string& v) { return ParseLogLevel(v, &options.log_level); });
  app.add_option("--authkey-file", options.authkey_files,
                 "an admin key; repeatable, reloaded on SIGHUP (default <state-dir>/authkey, "
                 "made if missing)")
      ->type_name("PATH")
      ->allow_extra_args(false)  // one file per --authkey-file
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  AddParsedFlag(
      app, "--socket-mode", "MODE",
      absl::StrFormat("permissions of Unix sockets, octal (default %04o)", options.socket_mode),
      "octal permissions such as 0660",
      [&options](const std::string& v) { return ParseOctalMode(v, &options.socket_mode); });
  app.add_option("--tls-cert", options.tls_cert,
                 "PEM certificate for TCP listeners (with --tls-key)")
      ->type_name("PATH");
  app.add_option("--tls-key", options.tls_key, "PEM private key for TCP listeners")
      ->type_name("PATH");
  app.add_option("--tls-client-ca", options.tls_client_ca,
                 "require client certificates signed by this CA (mutual TLS)")
      ->type_name("PATH");
  app.add_flag("--insecure-tcp", options.insecure_tcp,
               "allow TCP listeners without TLS (the authkey still applies)");
  app.add_option("--worker-user", options.worker_user,
                 "run workers whose Start names no user as this user (root daemons only)")
      ->type_name("USER");
  app.add_flag("--durable", options.durable,
               "sync the event journal at each commit, so it survives power loss too");
  app.add_flag("!--no-worker-cgroups", options.worker_cgroups,
               "do not give each worker a cgroup of its own (escapees are then found in /proc)");
}

bool SplitHostPort(const std::string& address, std::string& host, std::string& port);

// What needs more than one flag to judge, and the defaults that depend on the user.
absl::Status FinishOptions(const CLI::App& app, DaemonOptions& options) {
  std::vector<std::string> extras = app.remaining();
  if (!extras.empty()) {
    const std::string& first = extras.front();
    if (absl::StartsWith(first, "-")) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag \"", first, "\"", kSeeHelp));
    }
    return absl::InvalidArgumentError(
        absl::StrCat("unexpected argument \"", first, "\": proctord takes flags only", kSeeHelp));
  }
  for (const std::string& address : options.listen) {
    if (address.empty()) return absl::InvalidArgumentError("--listen needs an address");
  }
  for (auto [flag, address] : {std::pair{"--health-listen", &options.health_listen},
                                std::pair{"--metrics-listen", &options.metrics_listen}}) {
    std::string host, port;
    if (!address->empty() && !SplitHostPort(*address, host, port)) {
      return absl::InvalidArgumentError(absl::StrCat(
          flag, " wants host:port (an address or name, [v6 address]:port, or :port for all), "
                "not \"", *address, "\""));
    }
  }
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (!options.tls_client_ca.empty() && options.tls_cert.empty()) {
    return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key");
  }
  if (options.listen.empty()) options.listen.push_back(DefaultAddress());
  if (options.state_dir.empty()) options.state_dir = DefaultStateDir();
  if (options.services_dir.empty()) options.services_dir = DefaultServicesDir();
  return absl::OkStatus();
}

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
    if (mkdir(prefix.c_str(), 0700) != 0) {
      int err = errno;
      if (err != EEXIST) {
        return absl::InternalError(
            absl::StrCat("cannot create ", prefix, ": ", std::strerror(err)));
      }
    }
  }
  return absl::OkStatus();
}

// REQUIRES: `path` fits (PrepareSocketPath checks).
sockaddr_un UnixAddress(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  return addr;
}

// A socket file left by a daemon that died is removed; one a live daemon answers on is not.
absl::Status PrepareSocketPath(const std::string& path) {
  if (path.size() >= sizeof(sockaddr_un::sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("socket path ", path, " is too long"));
  }
  if (absl::Status s = MakeDirs(path.substr(0, path.rfind('/'))); !s.ok()) return s;
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) {
    int err = errno;
    if (err == ENOENT) return absl::OkStatus();
    return absl::InternalError(absl::StrCat("cannot look at ", path, ": ", std::strerror(err)));
  }
  if (!S_ISSOCK(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " exists and is not a socket; not replacing it"));
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    int err = errno;
    return absl::InternalError(
        absl::StrCat("socket(AF_UNIX) to probe ", path, ": ", std::strerror(err)));
  }
  sockaddr_un addr = UnixAddress(path);
  // Any failure to connect (ECONNREFUSED above all) means nobody answers there.
  bool live = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  if (live) {
    return absl::FailedPreconditionError(absl::StrCat("another proctord is listening on ", path));
  }
  if (unlink(path.c_str()) != 0) {
    int err = errno;
    return absl::InternalError(
        absl::StrCat("cannot remove the stale socket ", path, ": ", std::strerror(err)));
  }
  return absl::OkStatus();
}

// A listening Unix socket at `path` (prepared by PrepareSocketPath), non-blocking and
// close-on-exec, its file made with `mode`.
absl::StatusOr<int> ListenUnix(const std::string& path, unsigned mode) {
  const std::string where = absl::StrCat("cannot listen on unix:", path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    int err = errno;
    return absl::InternalError(absl::StrCat(where, ": socket: ", std::strerror(err)));
  }
  sockaddr_un addr = UnixAddress(path);
  // bind() creates the socket file; the umask gives it its mode from the first instant rather
  // than after a chmod.
  mode_t old_umask = umask(~mode & 0777);
  int bound = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  int err = errno;
  umask(old_umask);
  if (bound != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat(where, ": bind: ", std::strerror(err)));
  }
  if (listen(fd, SOMAXCONN) != 0) {
    err = errno;
    close(fd);
    unlink(path.c_str());
    return absl::UnavailableError(absl::StrCat(where, ": listen: ", std::strerror(err)));
  }
  return fd;
}

// "host:port" or "[host]:port", the port decimal.
bool SplitHostPort(const std::string& address, std::string& host, std::string& port) {
  size_t colon;
  if (absl::StartsWith(address, "[")) {
    size_t close_bracket = address.find(']');
    if (close_bracket == std::string::npos) return false;
    host = address.substr(1, close_bracket - 1);
    colon = close_bracket + 1;
    if (colon >= address.size() || address[colon] != ':') return false;
  } else {
    colon = address.rfind(':');
    if (colon == std::string::npos) return false;
    host = address.substr(0, colon);
    if (host.find(':') != std::string::npos) return false;  // IPv6 wants brackets
  }
  port = address.substr(colon + 1);
  int number;
  return !port.empty() && port.find_first_not_of("0123456789") == std::string::npos &&
         absl::SimpleAtoi(port, &number) && number <= 65535;
}

std::string SocketAddressText(const sockaddr* addr) {
  char text[INET6_ADDRSTRLEN] = "?";
  if (addr->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(addr);
    inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof(text));
    return absl::StrCat("[", text, "]:", ntohs(in6->sin6_port));
  }
  const auto* in = reinterpret_cast<const sockaddr_in*>(addr);
  inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text));
  return absl::StrCat(text, ":", ntohs(in->sin_port));
}

void SetPort(sockaddr* addr, uint16_t port) {
  if (addr->sa_family == AF_INET6) {
    reinterpret_cast<sockaddr_in6*>(addr)->sin6_port = htons(port);
  } else {
    reinterpret_cast<sockaddr_in*>(addr)->sin_port = htons(port);
  }
}

// Keeps server reflection out of a server: linking libgrpc++_reflection adds it to every one.
class WithoutReflection final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    std::erase_if(*plugins, [](const std::unique_ptr<grpc::ServerBuilderPlugin>& plugin) {
      return plugin->name() == "proto_server_reflection";
    });
  }
};

// The address a TCP socket is bound to, "host:port" or "[host]:port".
std::string BoundAddressText(int fd) {
  sockaddr_storage addr{};
  socklen_t length = sizeof(addr);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length) != 0) return "?";
  return SocketAddressText(reinterpret_cast<sockaddr*>(&addr));
}

// One listening TCP socket on `addr`, non-blocking and close-on-exec; an IPv6 one takes IPv6
// only, its IPv4 twin (if any) being another socket. Errors name the syscall.
absl::StatusOr<int> ListenTcpSocket(const sockaddr* addr, socklen_t length) {
  int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    int err = errno;
    return absl::UnavailableError(absl::StrCat("socket: ", std::strerror(err)));
  }
  auto fail = [fd](const char* call) {
    int err = errno;
    close(fd);
    return absl::UnavailableError(absl::StrCat(call, ": ", std::strerror(err)));
  };
  const int one = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0) {
    return fail("setsockopt(SO_REUSEADDR)");
  }
  if (addr->sa_family == AF_INET6 &&
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) != 0) {
    return fail("setsockopt(IPV6_V6ONLY)");
  }
  if (bind(fd, addr, length) != 0) return fail("bind");
  if (listen(fd, SOMAXCONN) != 0) return fail("listen");
  return fd;
}

// Listening sockets for a TCP --listen, "host:port" or "[host]:port": one for each address
// the host resolves to, all on one port (the first one's, for port 0). A wildcard host (empty,
// 0.0.0.0 or ::) takes every address of both families, as gRPC's own listener did. Addresses
// that cannot be bound are logged and skipped, as long as one can be.
absl::StatusOr<std::vector<int>> ListenTcp(const std::string& address) {
  std::string host, port;
  if (!SplitHostPort(address, host, port)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--listen wants unix:/path or host:port, not \"", address, "\""));
  }
  const bool wildcard = host.empty() || host == "0.0.0.0" || host == "::";
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  int rc = getaddrinfo(wildcard ? nullptr : host.c_str(), port.c_str(), &hints, &found);
  int err = errno;
  if (rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", address, ": cannot resolve ", host, ": ",
                     rc == EAI_SYSTEM ? std::strerror(err) : gai_strerror(rc)));
  }
  std::vector<int> fds;
  std::vector<std::string> bound, failed;
  uint16_t chosen_port = 0;
  for (const addrinfo* ai = found; ai != nullptr; ai = ai->ai_next) {
    if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) continue;
    sockaddr_storage addr{};
    std::memcpy(&addr, ai->ai_addr, ai->ai_addrlen);
    auto* sa = reinterpret_cast<sockaddr*>(&addr);
    if (chosen_port != 0) SetPort(sa, chosen_port);
    std::string text = SocketAddressText(sa);
    if (std::find(bound.begin(), bound.end(), text) != bound.end()) continue;  // listed twice
    absl::StatusOr<int> fd = ListenTcpSocket(sa, ai->ai_addrlen);
    if (!fd.ok()) {
      failed.push_back(absl::StrCat(text, " (", fd.status().message(), ")"));
      continue;
    }
    if (chosen_port == 0) {
      socklen_t length = sizeof(addr);
      if (getsockname(*fd, sa, &length) == 0) {
        chosen_port = ntohs(sa->sa_family == AF_INET6
                                ? reinterpret_cast<sockaddr_in6*>(sa)->sin6_port
                                : reinterpret_cast<sockaddr_in*>(sa)->sin_port);
        text = SocketAddressText(sa);
      }
    }
    bound.push_back(text);
    fds.push_back(*fd);
  }
  freeaddrinfo(found);
  if (fds.empty()) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", address, ": ", absl::StrJoin(failed, ", ")));
  }
  if (!failed.empty()) {
    spdlog::warn("{}: listening on {} only; cannot listen on {}", address,
                 absl::StrJoin(bound, ", "), absl::StrJoin(failed, ", "));
  }
  spdlog::debug("{}: listening on {}", address, absl::StrJoin(bound, ", "));
  return fds;
}

// Raises the soft RLIMIT_NOFILE to the hard limit, and logs the figure; returns the limit in
// force, and in `original` the one proctord started with (workers get it back). A limit that
// cannot be raised is kept, with a warning.
absl::StatusOr<size_t> RaiseDescriptorLimit(rlimit& original) {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) {
    int err = errno;
    return absl::InternalError(absl::StrCat("getrlimit(RLIMIT_NOFILE): ", std::strerror(err)));
  }
  original = limit;
  const rlim_t was = limit.rlim_cur;
  if (was >= limit.rlim_max) {
    spdlog::info("descriptors: {} (the hard limit)", was);
    return static_cast<size_t>(was);
  }
  rlimit raised{.rlim_cur = limit.rlim_max, .rlim_max = limit.rlim_max};
  if (setrlimit(RLIMIT_NOFILE, &raised) != 0) {
    int err = errno;
    spdlog::warn("descriptors: {} (cannot raise the soft limit to the hard limit {}: {})", was,
                 limit.rlim_max, std::strerror(err));
    return static_cast<size_t>(was);
  }
  spdlog::info("descriptors: {} (soft limit raised from {})", raised.rlim_cur, was);
  return static_cast<size_t>(raised.rlim_cur);
}

// Lowers `max_processes` to what the descriptor budget allows, saying why; returns what the
// supervisor's refusal is to name instead of --max-processes (empty: nothing lowered).
std::string CapWorkers(const DescriptorBudget& budget, size_t& max_processes) {
  if (budget.workers >= max_processes) return "";
  spdlog::warn(
      "--max-processes lowered from {} to {}: the descriptor limit (RLIMIT_NOFILE {}) allows "
      "no more, as each worker holds a descriptor until it is reaped and {} are kept for "
      "connections and proctord's own files; raise LimitNOFILE= (systemd) or ulimit -n, or "
      "lower --max-processes",
      max_processes, budget.workers, budget.limit, budget.reserve);
  max_processes = budget.workers;
  return absl::StrCat("limit of ", budget.workers,
                      " processes that the descriptor limit allows (RLIMIT_NOFILE ", budget.limit,
                      ", less ", budget.reserve,
                      " kept for connections; raise LimitNOFILE= or ulimit -n)");
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
      return absl::InvalidArgumentError(
          absl::StrCat("TCP listener ", address,
                       " needs --tls-cert and --tls-key (or --insecure-tcp to accept plain TCP)"));
    }
    spdlog::warn(
        "listening on {} without TLS (--insecure-tcp): calls and replies cross the "
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
  // What systemd hands proctord itself (its own notify socket, watchdog, sockets) is not the
  // workers': a worker that inherited NOTIFY_SOCKET could speak for proctord.
  constexpr absl::string_view kServiceManagerEnv[] = {
      "NOTIFY_SOCKET=", "WATCHDOG_USEC=", "WATCHDOG_PID=", "LISTEN_FDS=", "LISTEN_PID=",
      "LISTEN_FDNAMES="};
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    absl::string_view entry = *e;
    if (absl::StartsWith(entry, kEnvPrefix)) continue;
    if (std::any_of(std::begin(kServiceManagerEnv), std::end(kServiceManagerEnv),
                    [&](absl::string_view name) { return absl::StartsWith(entry, name); })) {
      continue;
    }
    env.emplace_back(entry);
  }
  return env;
}

// Workers call back on the first Unix socket (or else the first address) we listen on.
std::string WorkerAddress(const std::vector<std::string>& listen) {
  auto unix_socket = std::find_if(listen.begin(), listen.end(), [](const std::string& address) {
    return absl::StartsWith(address, "unix:");
  });
  return unix_socket != listen.end() ? *unix_socket : listen.front();
}

// The keeper is built next to proctord, and installed in <libexecdir>/proctor:
// PROCTOR_INSTALLED_KEEPER is its path relative to proctord's directory once installed
// (server/CMakeLists.txt), so that an installed tree works wherever its prefix is.
absl::StatusOr<std::string> FindKeeper() {
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) {
    return absl::InternalError(absl::StrCat(
        "cannot read /proc/self/exe to find proctor-keeper beside proctord: ",
        std::strerror(errno)));
  }
  std::string path(self, static_cast<size_t>(n));
  std::string directory = path.substr(0, path.rfind('/') + 1);
  std::string beside = directory + "proctor-keeper";
  std::string installed =
      std::filesystem::path(directory + PROCTOR_INSTALLED_KEEPER).lexically_normal().string();
  for (const std::string& candidate : {beside, installed}) {
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return absl::NotFoundError(absl::StrCat("no proctor-keeper beside proctord (", beside,
                                          ") nor where it is installed (", installed,
                                          "): install it with proctord"));
}

void SetUpLogging(const std::string& level) {
  // Not spdlog::stderr_logger_mt: that registers the name, and a second daemon in one process
  // (tests) would throw.
  auto logger = std::make_shared<spdlog::logger>("proctord",
                                                 std::make_shared<spdlog::sinks::stderr_sink_mt>());
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  logger->set_level(spdlog::level::from_str(level));
  spdlog::set_default_logger(std::move(logger));
}

}  // namespace

absl::StatusOr<DaemonCommandLine> ParseDaemonFlags(const std::vector<std::string>& args) {
  DaemonOptions options;
  CLI::App app("proctord: supervises the processes its clients start through its gRPC API.",
               "proctord");
  app.footer(
      "Signals: SIGTERM or SIGINT end every worker (and the keeper), then proctord exits; SIGHUP "
      "reloads the admin keys and applies the services directory again; SIGUSR2 restarts "
      "proctord in place, keeping the workers (they are held by proctor-keeper, which a "
      "restarted or newly started proctord on the same --state-dir reattaches).");
  try {
    DeclareFlags(app, options);
    // CLI11 takes its arguments last first.
    std::vector<std::string> reversed(args.rbegin(), args.rend());
    app.parse(reversed);
  } catch (const CLI::CallForHelp&) {
    return DaemonHelp{app.help()};
  } catch (const CLI::ValidationError& e) {
    return absl::InvalidArgumentError(e.what());  // our own words, from AddParsedFlag
  } catch (const CLI::ParseError& e) {
    // CLI11's own, e.g. "--retain: 1 required N missing".
    return absl::InvalidArgumentError(absl::StrCat(e.what(), kSeeHelp));
  } catch (const CLI::Error& e) {
    // A flag declared wrongly: a bug here, not in the command line.
    return absl::InternalError(absl::StrCat("proctord's flags: ", e.what()));
  }
  if (absl::Status s = FinishOptions(app, options); !s.ok()) return s;
  return options;
}

DescriptorBudget BudgetDescriptors(size_t limit) {
  DescriptorBudget budget{.limit = limit, .reserve = std::max(kMinDescriptorReserve, limit / 2)};
  budget.workers = limit > budget.reserve ? limit - budget.reserve : 0;
  return budget;
}

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Create(const DaemonOptions& options) {
  std::unique_ptr<Daemon> daemon(new Daemon(options));
  if (absl::Status s = daemon->Init(); !s.ok()) return s;
  return daemon;
}

Daemon::Daemon(const DaemonOptions& options)
    : options_(options), log_dir_(options.state_dir + "/logs") {}

absl::Status Daemon::Init() {
  SetUpLogging(options_.log_level);
  rlimit original_descriptors{};
  absl::StatusOr<size_t> descriptor_limit = RaiseDescriptorLimit(original_descriptors);
  if (!descriptor_limit.ok()) return descriptor_limit.status();
  descriptors_ = BudgetDescriptors(*descriptor_limit);
  if (absl::Status s = MakeDirs(log_dir_); !s.ok()) return s;
  absl::StatusOr<std::unique_ptr<IdAllocator>> ids =
      IdAllocator::Open(options_.state_dir + "/next-id");
  if (!ids.ok()) return ids.status();
  ids_ = *std::move(ids);
  absl::StatusOr<std::unique_ptr<EventLoop>> loop = EventLoop::Create();
  if (!loop.ok()) return loop.status();
  loop_ = *std::move(loop);
  absl::StatusOr<std::vector<std::string>> admin_keys = LoadAdminKeys(options_);
  if (!admin_keys.ok()) return admin_keys.status();

  if (absl::Status s = OpenEvents(); !s.ok()) return s;
  notifier_ = std::make_unique<SystemdNotifier>(clock_, *loop_, [this] { return StatusLine(); });
  if (!options_.metrics_listen.empty()) {
    std::vector<std::string> methods;
    for (const char* name : {v1::Proctor::service_full_name(), v1::Sync::service_full_name()}) {
      const google::protobuf::ServiceDescriptor* service =
          google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(name);
      for (int i = 0; service != nullptr && i < service->method_count(); ++i) {
        methods.push_back(absl::StrCat("/", name, "/", service->method(i)->name()));
      }
    }
    metrics_ = std::make_unique<Metrics>(methods, [this] { return MetricsGauges(); });
  }
  event_recorder_->SetObserver([this](const std::vector<SupervisorEvent>& events) {
    if (metrics_ != nullptr) metrics_->CountEvents(events);
    notifier_->StatusChanged();
  });
  capture_files_ = std::make_unique<CaptureFiles>(log_dir_, options_.capture_spares);
  if (absl::Status s = OpenWorkers(original_descriptors); !s.ok()) return s;
  authenticator_ = std::make_unique<Authenticator>(
      clock_, [supervisor = supervisor_.get()](uint64_t id) {
        return supervisor->CredentialOf(id);
      });
  authenticator_->SetIdIssued(
      [supervisor = supervisor_.get()](uint64_t id) { return supervisor->IdIssued(id); });
  authenticator_->SetAdminKeys(*std::move(admin_keys));
  services_ = std::make_unique<ServiceManager>(
      options_.services_dir.empty() ? DefaultServicesDir() : options_.services_dir, *supervisor_,
      *os_, std::move(kept_services_));
  service_ = std::make_unique<ProctorService>(*supervisor_, *loop_, *authenticator_, clock_,
                                              *event_log_, *services_);
  sync_ = std::make_unique<SyncObjects>(
      *supervisor_, *loop_, *service_,
      SyncLimits{.max_objects_per_tree = options_.max_sync_objects,
                 .max_waiters_per_object = options_.max_sync_waiters});
  absl::StatusOr<std::unique_ptr<IdAllocator>> sync_ids =
      IdAllocator::Open(options_.state_dir + "/next-sync-id");
  if (!sync_ids.ok()) return sync_ids.status();
  sync_ids_ = *std::move(sync_ids);
  // Sync objects are kept by the keeper, like the workers that hold them (see README).
  sync_->table().Persist(sync_ids_.get(), [os = os_.get()](const std::string& key,
                                                           std::optional<std::string> value) {
    if (value.has_value()) {
      os->Remember(key, *value);
    } else {
      os->Forget(key);
    }
  });
  if (!kept_sync_.empty()) {
    size_t restored = sync_->table().Restore(kept_sync_);
    spdlog::info("restored {} of {} kept sync objects", restored, kept_sync_.size());
    kept_sync_.clear();
  }
  if (options_.max_log_bytes > 0) {
    log_trimmer_ = std::make_unique<LogTrimmer>(
        log_dir_, static_cast<int64_t>(options_.max_log_bytes), absl::Seconds(1),
        [supervisor = supervisor_.get()] { return supervisor->CaptureFilesInUse(); });
  }

  // Decided, and the first services started, before any call is answered; services that wait
  // for others start as those become ready.
  absl::Notification services_applied;
  services_->Apply([&](const v1::ReloadResponse&) { services_applied.Notify(); });
  services_applied.WaitForNotification();

  // Before the server, which comes last so that a failure leaves no socket behind (the
  // destructor closes and removes those bound before it). The callback runs only once Run()
  // runs the loop.
  absl::StatusOr<int> signal_fd = OpenDaemonSignalFd();
  if (!signal_fd.ok()) return signal_fd.status();
  if (absl::Status s = loop_->Watch(*signal_fd, [this] { OnSignals(); }); !s.ok()) {
    close(*signal_fd);
    return s;
  }
  signal_fd_ = *signal_fd;
  return StartServer();
}

absl::Status Daemon::OpenWorkers(const rlimit& original_descriptors) {
  internal::Held held;
  std::string keeper_path = options_.keeper_path;
  if (keeper_path.empty()) {
    absl::StatusOr<std::string> found = FindKeeper();
    if (!found.ok()) return found.status();
    keeper_path = *std::move(found);
  }
  absl::StatusOr<std::unique_ptr<KeeperClient>> keeper =
      KeeperClient::Open(options_.state_dir, keeper_path, held);
  if (!keeper.ok()) return keeper.status();
  keeper_ = *std::move(keeper);
  absl::StatusOr<std::unique_ptr<PosixProcessOs>> os = PosixProcessOs::Create(
      *loop_, *keeper_, held,
      PosixProcessOs::Options{.worker_nice = options_.worker_nice,
                              .worker_cgroups = options_.worker_cgroups,
                              .worker_descriptors = original_descriptors});
  if (!os.ok()) return os.status();
  os_ = *std::move(os);
  size_t max_processes = options_.max_processes;
  std::string max_processes_reason = CapWorkers(descriptors_, max_processes);
  // sd_notify sockets of the workers started with notify; messages go to the supervisor,
  // which exists by the time the loop runs.
  absl::StatusOr<std::unique_ptr<NotifySockets>> notify = NotifySockets::Create(
      *loop_, options_.state_dir + "/notify",
      [this](uint64_t id, pid_t sender) { return os_->InWorkerTree(id, sender); },
      NotifySockets::Listener{
          .on_message =
              [this](uint64_t id, const NotifyMessage& message, pid_t) {
                supervisor_->OnNotify(id, message);
              },
          .on_dropped =
              [this](uint64_t id, absl::string_view why) {
                // Logged at the 1st, 2nd, 4th, 8th... drop: a flood cannot flood the log.
                uint64_t dropped = supervisor_->OnNotifyDropped(id);
                if ((dropped & (dropped - 1)) == 0) {
                  spdlog::warn("id={}: sd_notify message dropped ({} so far): {}", id, dropped,
                               std::string(why));
                }
              },
      });
  if (!notify.ok()) return notify.status();
  notify_ = *std::move(notify);
  SupervisorOptions supervisor_options{
      .log_dir = log_dir_,
      .retain = options_.retain,
      .base_env = WorkerBaseEnvironment(),
      .arg_max = static_cast<size_t>(sysconf(_SC_ARG_MAX)),
      .worker_address = WorkerAddress(options_.listen),
      .capture_files = capture_files_.get(),
      .worker_user = options_.worker_user,
      .events = event_recorder_.get(),
      .last_cursor = journal_->LastCursor(),
      .max_processes = max_processes,
      .max_children = options_.max_children,
      .max_depth = options_.max_depth,
      .max_processes_reason = std::move(max_processes_reason),
      .notify = notify_.get(),
  };
  supervisor_ = std::make_unique<Supervisor>(supervisor_options, *os_, clock_, *loop_, *ids_);
  supervisor_for_events_ = supervisor_.get();

  // What the previous proctord left: the journal says what ran, the keeper what still runs.
  Supervisor::Restored restored;
  restored.ended = std::move(rebuilt_.ended);
  absl::flat_hash_map<uint64_t, const internal::HeldWorker*> held_by_id;
  for (const internal::HeldWorker& worker : held.workers()) held_by_id[worker.token()] = &worker;
  for (ProcessInfo& info : rebuilt_.running) {
    auto it = held_by_id.find(info.id);
    if (it == held_by_id.end()) {
      restored.lost.push_back(std::move(info));
      continue;
    }
    restored.running.push_back({.info = std::move(info), .memo = it->second->memo()});
    held_by_id.erase(it);
  }
  for (const internal::Note& note : held.notes()) {
    if (absl::StartsWith(note.key(), "sync/")) {
      kept_sync_.push_back(note.value());
      continue;
    }
    if (absl::StartsWith(note.key(), kServiceNotePrefix)) {
      kept_services_[std::string(absl::StripPrefix(note.key(), kServiceNotePrefix))] =
          note.value();
      continue;
    }
    if (uint64_t id = 0; absl::StartsWith(note.key(), "launch/") &&
                         absl::SimpleAtoi(absl::StripPrefix(note.key(), "launch/"), &id)) {
      restored.launches[id] = note.value();
      continue;
    }
    internal::SessionMemo memo;
    if (!absl::StartsWith(note.key(), "session/") || !memo.ParseFromString(note.value())) continue;
    restored.sessions.push_back({.id = memo.id(),
                                 .ttl = absl::Milliseconds(memo.ttl_ms()),
                                 .owner = memo.owner()});
  }
  if (!held.workers().empty() || !restored.ended.empty() || !restored.lost.empty()) {
    spdlog::info("restored {} ended records from the journal; reattached {} running workers, "
                 "{} lost; {} sessions kept",
                 restored.ended.size(), restored.running.size(), restored.lost.size(),
                 restored.sessions.size());
  }
  supervisor_->Restore(std::move(restored));
  // Held by the keeper but never journaled: started by a proctord that died before its Start
  // was answered. Nobody knows of them, so they end.
  for (const auto& [id, worker] : held_by_id) {
    spdlog::warn("id={} pid={}: started just before the previous proctord stopped, never "
                 "recorded; ending it",
                 id, worker->pid());
    os_->SignalGroup(id, SIGKILL).IgnoreError();
    os_->KillCgroup(id).IgnoreError();
  }
  KeeperClient::Listener listener = os_->KeeperListener();
  listener.on_lost = [] {
    spdlog::critical("the keeper is gone: proctord cannot supervise its workers any more and "
                     "exits; a new proctord kills what is left of them (their cgroups) and "
                     "records them as lost");
    spdlog::default_logger()->flush();
    std::_Exit(3);
  };
  keeper_->Start(std::move(listener));
  return absl::OkStatus();
}

absl::Status Daemon::StartServer() {
  // gRPC's own grpc.health.v1.Health in every server built from here on: SERVING ("" and
  // each service) from the first call it answers, which comes after the workers were taken
  // back; NOT_SERVING once stopping (SetNotServing).
  grpc::EnableDefaultHealthCheckService(true);
  if (!options_.health_listen.empty()) {
    grpc::ServerBuilder health_builder;
    health_builder.SetOption(std::make_unique<WithoutReflection>());
    // Gives the server a service of its own to be started with: gRPC's health service is added
    // only later. Every other method is UNIMPLEMENTED, as with no service at all.
    health_builder.RegisterCallbackGenericService(&health_unimplemented_);
    if (absl::Status s = Listen(options_.health_listen, health_builder, /*health=*/true);
        !s.ok()) {
      return s;
    }
    health_server_ = health_builder.BuildAndStart();
    if (health_server_ == nullptr) {
      return absl::UnavailableError("cannot start the health server (see the log above)");
    }
  }
  // Server reflection (grpc.reflection.v1alpha), so that grpcurl and the like can list and
  // describe the services. Like health, it answers without an authkey: it shows the public
  // schema only. The health service's descriptor is linked in so that it can be described too.
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::health::v1::HealthCheckRequest::descriptor();

  grpc::ServerBuilder builder;
  for (const std::string& address : options_.listen) {
    if (absl::Status s = Listen(address, builder, /*health=*/false); !s.ok()) return s;
  }
  if (metrics_ != nullptr) {
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> timers;
    timers.push_back(metrics_->RpcInterceptorFactory());
    builder.experimental().SetInterceptorCreators(std::move(timers));
  }
  builder.RegisterService(service_.get());
  builder.RegisterService(sync_->service());
  server_ = builder.BuildAndStart();
  if (server_ == nullptr) {
    return absl::UnavailableError("cannot start the gRPC server (see the log above)");
  }
  for (const grpc::Server* server : {server_.get(), health_server_.get()}) {
    if (server == nullptr) continue;
    for (const char* name : {v1::Proctor::service_full_name(), v1::Sync::service_full_name()}) {
      server->GetHealthCheckService()->SetServingStatus(name, true);
    }
  }
  if (absl::Status s = StartMetrics(); !s.ok()) return s;
  // The callbacks run once Run() runs the loop; until then connections wait in the backlog.
  return WatchListeners();
}

absl::Status Daemon::StartMetrics() {
  if (metrics_ == nullptr) return absl::OkStatus();
  std::string host, port;
  SplitHostPort(options_.metrics_listen, host, port);  // checked with the flags
  absl::StatusOr<std::unique_ptr<MetricsServer>> server =
      MetricsServer::Start(host, port, [metrics = metrics_.get()] { return metrics->Render(); });
  if (!server.ok()) return server.status();
  metrics_server_ = *std::move(server);
  spdlog::info("metrics on http://{}/metrics", metrics_server_->address());
  return absl::OkStatus();
}

std::string Daemon::StatusLine() {
  SupervisorCounts counts = supervisor_->Counts();
  return absl::StrCat(counts.running, " running, ", counts.backoff, " in backoff, ", counts.joins,
                      " joins waiting, ", event_log_->WatcherCount(), " watchers");
}

Metrics::Gauges Daemon::MetricsGauges() {
  Metrics::Gauges gauges{.processes = supervisor_->Counts(),
                         .watchers = event_log_->WatcherCount()};
  for (Authenticator::Refusal refusal : Authenticator::kRefusals) {
    gauges.auth_refusals.emplace_back(Authenticator::RefusalName(refusal),
                                      authenticator_->refusals(refusal));
  }
  return gauges;
}

void Daemon::SetNotServing() {
  for (grpc::Server* server : {server_.get(), health_server_.get()}) {
    // Every service, and what asks of them from now on, NOT_SERVING: watchers are told.
    if (server != nullptr) server->GetHealthCheckService()->Shutdown();
  }
}

absl::Status Daemon::Listen(const std::string& address, grpc::ServerBuilder& builder,
                            bool health) {
  std::shared_ptr<grpc::ServerCredentials> credentials;
  std::vector<int> fds;
  const bool tcp = !absl::StartsWith(address, "unix:");
  if (health) {
    // Plain TCP on purpose: Kubernetes' gRPC probes speak nothing else, and this server
    // answers grpc.health.v1.Health alone.
    credentials = grpc::InsecureServerCredentials();
    absl::StatusOr<std::vector<int>> bound = ListenTcp(address);
    if (!bound.ok()) return bound.status();
    fds = *std::move(bound);
    spdlog::info("health checks (grpc.health.v1.Health alone, plain TCP) on {}",
                 BoundAddressText(fds.front()));
  } else if (tcp) {
    absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> tls =
        TcpCredentials(options_, address);
    if (!tls.ok()) return tls.status();
    credentials = *std::move(tls);
    absl::StatusOr<std::vector<int>> bound = ListenTcp(address);
    if (!bound.ok()) return bound.status();
    fds = *std::move(bound);
  } else {
    std::string path = address.substr(5);
    if (absl::Status s = PrepareSocketPath(path); !s.ok()) return s;
    absl::StatusOr<int> fd = ListenUnix(path, options_.socket_mode);
    if (!fd.ok()) return fd.status();
    socket_paths_.push_back(path);
    fds.push_back(*fd);
    credentials = grpc::InsecureServerCredentials();
  }
  acceptors_.push_back(builder.experimental().AddExternalConnectionAcceptor(
      grpc::ServerBuilder::experimental_type::ExternalConnectionType::FROM_FD, credentials));
  for (int fd : fds) {
    listeners_.push_back(Listener{.address = address,
                                  .fd = fd,
                                  .tcp = tcp,
                                  .health = health,
                                  .acceptor = acceptors_.back().get()});
  }
  return absl::OkStatus();
}

absl::Status Daemon::WatchListeners() {
  for (size_t i = 0; i < listeners_.size(); ++i) {
    Listener& listener = listeners_[i];
    if (listener.watched || listener.fd < 0) continue;
    if (absl::Status s = loop_->Watch(listener.fd, [this, i] { OnAcceptable(i); }); !s.ok()) {
      return s;
    }
    listener.watched = true;
  }
  return absl::OkStatus();
}

void Daemon::UnwatchListeners() {
  for (Listener& listener : listeners_) {
    if (listener.watched) loop_->Unwatch(listener.fd);
    listener.watched = false;
  }
}

void Daemon::CloseListeners(bool health_too) {
  if (health_too) {
    if (accept_retry_ != 0) loop_->Cancel(accept_retry_);
    accept_retry_ = 0;
  }
  for (Listener& listener : listeners_) {
    if (listener.fd < 0 || (listener.health && !health_too)) continue;
    if (listener.watched) loop_->Unwatch(listener.fd);
    listener.watched = false;
    close(listener.fd);
    // Kept with no descriptor: the watch callbacks of the others name them by index.
    listener.fd = -1;
  }
  if (health_too) listeners_.clear();
}

void Daemon::OnAcceptable(size_t index) {
  const Listener& listener = listeners_[index];
  for (int n = 0; n < kAcceptBatch; ++n) {
    int fd = accept4(listener.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      int err = errno;
      if (err == EAGAIN || err == EWOULDBLOCK) return;
      // That connection's trouble (gone before it was taken, refused by a security module...),
      // not the listener's.
      if (err == EINTR || err == ECONNABORTED || err == EPROTO || err == EPERM) continue;
      // EMFILE, ENFILE, ENOBUFS, ENOMEM: wait for resources. Anything else is a bug, but a
      // listener given up on would be worse.
      PauseAccepting(listener, err);
      return;
    }
    if (accept_paused_since_.has_value()) {
      spdlog::info("accepting connections again, after {}",
                   absl::FormatDuration(absl::Trunc(absl::Now() - *accept_paused_since_,
                                                    absl::Milliseconds(1))));
      accept_paused_since_.reset();
    }
    if (listener.tcp) {
      // As gRPC's own listener does: replies are small and must not wait for Nagle.
      const int one = 1;
      if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0) {
        int err = errno;
        spdlog::debug("setsockopt(TCP_NODELAY) on a connection to {}: {}", listener.address,
                      std::strerror(err));
      }
    }
    grpc::experimental::ExternalConnectionAcceptor::NewConnectionParameters connection;
    connection.listener_fd = listener.fd;
    connection.fd = fd;  // gRPC's from here on
    listener.acceptor->HandleNewConnection(&connection);
  }
}

void Daemon::PauseAccepting(const Listener& listener, int err) {
  if (!accept_paused_since_.has_value()) {
    accept_paused_since_ = absl::Now();
    auto log = err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM
                   ? spdlog::level::warn
                   : spdlog::level::err;
    spdlog::log(log,
                "accept on {}: {}; new connections wait in the listen backlog, accept is tried "
                "again every {} (descriptor limit {}, {} for workers)",
                listener.address, std::strerror(err), absl::FormatDuration(kAcceptRetry),
                descriptors_.limit, descriptors_.workers);
  }
  // Every listener: descriptors are the whole process's. Unwatched, since the loop's epoll is
  // level-triggered and the connection left waiting would wake it at once, again and again.
  UnwatchListeners();
  accept_retry_ = loop_->After(kAcceptRetry, [this] { ResumeAccepting(); });
}

void Daemon::ResumeAccepting() {
  accept_retry_ = 0;
  // While stopping, only the health listeners are left to watch again.
  if (absl::Status s = WatchListeners(); !s.ok()) {
    spdlog::error("cannot watch the listeners again, retrying: {}", std::string(s.message()));
    UnwatchListeners();
    accept_retry_ = loop_->After(kAcceptRetry, [this] { ResumeAccepting(); });
  }
}

Daemon::~Daemon() {
  // Before the server: nothing may be handed to it once it is shut down.
  if (loop_ != nullptr) CloseListeners(/*health_too=*/true);
  if (server_ != nullptr) {
    // After Run(), a no-op. Before, no connection was ever taken (the loop takes them).
    server_->Shutdown(std::chrono::system_clock::now());
    server_->Wait();
  }
  if (health_server_ != nullptr) {
    health_server_->Shutdown(std::chrono::system_clock::now());
    health_server_->Wait();
  }
  RemoveSocketFiles();
  if (signal_fd_ >= 0) {
    loop_->Unwatch(signal_fd_);
    close(signal_fd_);
  }
}

int Daemon::Run() {
  spdlog::info("proctord listening on {}; state in {}", absl::StrJoin(options_.listen, ", "),
               options_.state_dir);
  // From the loop, once it turns: connections are taken from here on, the workers of an
  // earlier proctord were taken back by Create.
  loop_->Post([this] { notifier_->Ready(); });
  loop_->Run();
  if (stopper_.joinable()) stopper_.join();
  server_->Wait();
  RemoveSocketFiles();
  // It answered NOT_SERVING until now, while the workers were ended.
  CloseListeners(/*health_too=*/true);
  if (health_server_ != nullptr) {
    health_server_->Shutdown(std::chrono::system_clock::now());
    health_server_->Wait();
  }
  if (restarting_) {
    spdlog::info("proctord stopped serving; starting again");
    // Every thread blocks it, so it stays pending across the exec, for the next proctord.
    // Sent through a pidfd of our own process: nothing but proctord itself can be reached.
    if (stop_after_restart_) {
      int self = static_cast<int>(syscall(SYS_pidfd_open, getpid(), 0));
      if (self < 0 || syscall(SYS_pidfd_send_signal, self, SIGTERM, nullptr, 0) != 0) {
        spdlog::error("the stop asked for while restarting cannot be passed on: {}",
                      std::strerror(errno));
      }
      if (self >= 0) close(self);
    }
    return 0;
  }
  // Every worker has ended and been released: the keeper goes too.
  keeper_->Shutdown(absl::Seconds(5));
  spdlog::info("proctord stopped");
  return 0;
}

void Daemon::RemoveSocketFiles() {
  for (const std::string& path : socket_paths_) unlink(path.c_str());
  // Forgotten, so that the destructor does not remove a socket another daemon has bound since.
  socket_paths_.clear();
}

void Daemon::OnSignals() {
  for (DaemonSignal sig : ReadSignals(signal_fd_)) {
    switch (sig) {
      case DaemonSignal::kChildExited:
        os_->OnSigchld();
        break;
      case DaemonSignal::kReload:
        if (!stopping_) notifier_->Reloading("reloading the admin keys and the services");
        ReloadAdminKeys();
        // The outcome is logged by the manager.
        if (!stopping_) {
          services_->Apply([this](const v1::ReloadResponse&) { notifier_->Ready(); });
        }
        break;
      case DaemonSignal::kStop:
        if (!stopping_) {
          BeginStop();
        } else if (restarting_) {
          // For the proctord that comes next, which would otherwise never hear of it.
          stop_after_restart_ = true;
        }
        break;
      case DaemonSignal::kRestart:
        if (!stopping_) BeginRestart();
        break;
    }
  }
}

void Daemon::ReloadAdminKeys() {
  // A bad file keeps the keys in force: a typo must not lock everyone out.
  absl::StatusOr<std::vector<std::string>> keys = LoadAdminKeys(options_);
  if (keys.ok()) {
    spdlog::info("reloaded {} admin authkey(s)", keys->size());
    authenticator_->SetAdminKeys(*std::move(keys));
  } else {
    spdlog::error("authkeys not reloaded, the old ones stay: {}",
                  std::string(keys.status().message()));
  }
}

absl::Status Daemon::OpenEvents() {
  // Exclusive: a second proctord on the same state directory is refused here.
  absl::StatusOr<std::unique_ptr<Journal>> journal =
      Journal::Open(options_.state_dir + "/journal.db", options_.durable);
  if (absl::IsUnavailable(journal.status())) {
    return absl::UnavailableError(absl::StrCat("--state-dir ", options_.state_dir,
                                               " is in use: is another proctord using it? (",
                                               journal.status().message(), ")"));
  }
  if (!journal.ok()) return journal.status();
  journal_ = *std::move(journal);
  absl::StatusOr<Journal::Loaded> loaded = journal_->Load();
  if (!loaded.ok()) return loaded.status();
  if (loaded->corrupt_dropped > 0) {
    spdlog::warn("journal: {} damaged events were dropped", loaded->corrupt_dropped);
  }
  rebuilt_ = EventRecorder::Rebuild(loaded->events);
  // Watchers may resume from the journal's newest events, across a restart.
  EventLog::Options log_options;
  uint64_t last = journal_->LastCursor();
  uint64_t from = std::max(journal_->FirstCursor() - 1,
                           last > log_options.window ? last - log_options.window : 0);
  event_log_ = std::make_unique<EventLog>(log_options, from);
  // The tail of what Load read above (in cursor order), rather than a second read.
  std::vector<v1::Event> tail;
  for (v1::Event& event : loaded->events) {
    if (event.cursor() > from) tail.push_back(std::move(event));
  }
  if (absl::Status s = event_log_->Publish(tail); !s.ok()) return s;
  event_recorder_ = std::make_unique<EventRecorder>(
      journal_.get(), *event_log_,
      [this](absl::flat_hash_set<uint64_t>& ids, absl::flat_hash_set<uint64_t>& sessions) {
        for (uint64_t id : supervisor_for_events_->KeptIds()) ids.insert(id);
        for (uint64_t session : supervisor_for_events_->OpenSessions()) sessions.insert(session);
      });
  spdlog::info("journal {}: events up to cursor {}{}", options_.state_dir + "/journal.db",
               last, options_.durable ? " (durable)" : "");
  return absl::OkStatus();
}

void Daemon::BeginStop() {
  stopping_ = true;
  notifier_->Stopping(absl::StrCat("stopping: ending ", supervisor_->Counts().running,
                                   " workers"));
  spdlog::info("asked to stop: no new calls; ending workers");
  // Watch streams would hold the server's shutdown up.
  if (size_t watchers = event_log_->WatcherCount(); watchers > 0) {
    spdlog::info("ending {} Watch streams", watchers);
  }
  event_log_->EndAll(absl::UnavailableError("proctord is shutting down; watch again from your "
                                            "last cursor once it is back"));
  sync_->table().EndWaits(absl::UnavailableError("proctord is shutting down"));
  SetNotServing();
  // On the loop thread, before the server's shutdown starts: no connection is handed to it
  // afterwards. The health listeners stay, to answer NOT_SERVING until the end.
  CloseListeners(/*health_too=*/false);
  // Server::Shutdown waits for handlers; it must not run on the loop thread. The loop runs on
  // until both the calls and the workers are done: calls still in flight may be waiting on
  // its timers (held-back refusals, log follows).
  stopper_ = std::thread([this] {
    server_->Shutdown(std::chrono::system_clock::now());
    loop_->Post([this] { OnStopped(); });
  });
  supervisor_->Shutdown(options_.shutdown_grace, [this] { loop_->Post([this] { OnStopped(); }); });
}

void Daemon::BeginRestart() {
  stopping_ = true;
  restarting_ = true;
  // The same main pid comes back with READY=1 (SIGUSR2: proctord executes itself again).
  notifier_->Reloading("restarting in place; the workers live on");
  spdlog::info("asked to restart: no new calls; the workers live on with the keeper");
  event_log_->EndAll(absl::UnavailableError(
      "proctord is restarting; watch again from your last cursor once it is back"));
  // Sync objects live on (the keeper keeps them), their waiters do not.
  sync_->table().EndWaits(absl::UnavailableError(
      "proctord is restarting; the sync object is kept: call again once it is back"));
  SetNotServing();
  CloseListeners(/*health_too=*/false);
  stopper_ = std::thread([this] {
    // Calls in flight (Join, Logs --follow) end now; their clients call again.
    server_->Shutdown(std::chrono::system_clock::now());
    loop_->Post([this] { loop_->Stop(); });
  });
}

void Daemon::OnStopped() {
  if (++stopped_parts_ == 2) loop_->Stop();
}

}  // namespace proctor
