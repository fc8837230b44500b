#include "common/default_paths.h"

#include <unistd.h>

#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"

namespace proctor {
namespace {

std::string EnvOr(const char* name, const std::string& fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && value[0] == '/' ? std::string(value) : fallback;
}

}  // namespace

std::string DefaultSocketPath() {
  if (geteuid() == 0) return "/run/proctor/proctord.sock";
  std::string runtime = EnvOr("XDG_RUNTIME_DIR", absl::StrCat("/tmp/proctor-", geteuid()));
  return absl::StrCat(runtime, "/proctor/proctord.sock");
}

std::string DefaultStateDir() {
  if (geteuid() == 0) return "/var/lib/proctor";
  std::string home = EnvOr("HOME", absl::StrCat("/tmp/proctor-", geteuid()));
  return absl::StrCat(EnvOr("XDG_STATE_HOME", home + "/.local/state"), "/proctor");
}

std::string DefaultServicesDir() {
  if (geteuid() == 0) return "/etc/proctor/services.d";
  std::string home = EnvOr("HOME", absl::StrCat("/tmp/proctor-", geteuid()));
  return absl::StrCat(EnvOr("XDG_CONFIG_HOME", home + "/.config"), "/proctor/services.d");
}

std::string DefaultAddress() { return absl::StrCat("unix:", DefaultSocketPath()); }

}  // namespace proctor
