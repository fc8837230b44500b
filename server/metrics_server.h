// MetricsServer: Prometheus' scrape endpoint, GET /metrics over plain HTTP (civetweb), for
// --metrics-listen. Every other path is 404.
//
// Lifetime: Start() binds and serves at once, from civetweb's own threads (two); destroying
// the server stops them. `render` is called on those threads, once per scrape.
#ifndef PROCTOR_SERVER_METRICS_SERVER_H_
#define PROCTOR_SERVER_METRICS_SERVER_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

struct mg_context;
struct mg_connection;

namespace proctor {

class MetricsServer {
 public:
  // `host` is an address or a name (resolved once, the first address taken), empty for every
  // IPv4 address, "::" for every IPv6 one; `port` decimal, 0 for any free one. UNAVAILABLE
  // when the host does not resolve or the port cannot be bound (in use, not allowed), in
  // words that name the address.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& host,
                                                              const std::string& port,
                                                              std::function<std::string()> render);
  ~MetricsServer();

  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // "host:port" as bound (the port chosen for 0).
  const std::string& address() const { return address_; }

 private:
  explicit MetricsServer(std::function<std::string()> render) : render_(std::move(render)) {}
  static int Serve(mg_connection* connection, void* self);

  const std::function<std::string()> render_;
  mg_context* context_ = nullptr;
  std::string address_;
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_METRICS_SERVER_H_
