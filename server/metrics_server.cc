#include "server/metrics_server.h"

#include <arpa/inet.h>
#include <civetweb.h>
#include <netdb.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace proctor {
namespace {

// What civetweb's listening_ports takes: a numeric address with its port.
absl::StatusOr<std::string> ListeningPort(const std::string& host, const std::string& port) {
  if (host.empty() || host == "0.0.0.0") return absl::StrCat("0.0.0.0:", port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  int rc = getaddrinfo(host.c_str(), nullptr, &hints, &found);
  int err = errno;
  if (rc != 0 || found == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", host, ":", port, ": cannot resolve ", host, ": ",
                     rc == EAI_SYSTEM ? std::strerror(err) : gai_strerror(rc)));
  }
  char text[INET6_ADDRSTRLEN] = "";
  const bool v6 = found->ai_family == AF_INET6;
  const void* addr =
      v6 ? static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(found->ai_addr)->sin6_addr)
         : static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(found->ai_addr)->sin_addr);
  inet_ntop(found->ai_family, addr, text, sizeof(text));
  freeaddrinfo(found);
  return v6 ? absl::StrCat("[", text, "]:", port) : absl::StrCat(text, ":", port);
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& host, const std::string& port, std::function<std::string()> render) {
  absl::StatusOr<std::string> listening = ListeningPort(host, port);
  if (!listening.ok()) return listening.status();
  std::unique_ptr<MetricsServer> server(new MetricsServer(std::move(render)));
  mg_init_library(0);
  const char* options[] = {
      "listening_ports", listening->c_str(),
      // A scrape now and then: two threads are plenty (civetweb's default is 50).
      "num_threads", "2",
      // No document_root: nothing but the handler below is served.
      nullptr};
  mg_callbacks callbacks{};
  // civetweb's own error lines go to proctord's log.
  callbacks.log_message = [](const mg_connection*, const char* message) {
    spdlog::warn("metrics server: {}", message);
    return 1;
  };
  mg_init_data init{.callbacks = &callbacks, .user_data = nullptr, .configuration_options = options};
  unsigned code = 0;
  char error_text[256] = "";
  mg_error_data error{.code = &code, .text = error_text, .text_buffer_size = sizeof(error_text)};
  server->context_ = mg_start2(&init, &error);
  if (server->context_ == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", host, ":", port, ": ",
                                               error_text[0] != '\0' ? error_text : "civetweb failed to start"));
  }
  mg_set_request_handler(server->context_, "/metrics$", &MetricsServer::Serve, server.get());
  mg_server_port bound{};
  int ports = mg_get_server_ports(server->context_, 1, &bound);
  std::string bound_host = listening->substr(0, listening->rfind(':'));
  server->address_ =
      ports > 0 ? absl::StrCat(bound_host, ":", bound.port) : *listening;
  return server;
}

MetricsServer::~MetricsServer() {
  if (context_ != nullptr) mg_stop(context_);
}

int MetricsServer::Serve(mg_connection* connection, void* self) {
  const mg_request_info* request = mg_get_request_info(connection);
  if (std::strcmp(request->request_method, "GET") != 0 &&
      std::strcmp(request->request_method, "HEAD") != 0) {
    mg_send_http_error(connection, 405, "only GET /metrics");
    return 405;
  }
  std::string body = static_cast<MetricsServer*>(self)->render_();
  mg_send_http_ok(connection, "text/plain; version=0.0.4; charset=utf-8",
                  static_cast<long long>(body.size()));
  if (std::strcmp(request->request_method, "GET") == 0) {
    mg_write(connection, body.data(), body.size());
  }
  return 200;
}

}  // namespace proctor
