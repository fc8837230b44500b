// Service files (server/service_specs.h) on arbitrary content: up to four files, each parsed
// with ParseServiceFile, then their `after` resolved (cycles, missing and unusable services)
// and the result diffed against declarations in force. The input is the files' contents, in
// turn, each ended by a NUL byte; the services are named a, b, c and d.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "server/service_specs.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const char* const kNames[] = {"a", "b", "c", "d"};
  std::vector<absl::string_view> contents = absl::StrSplit(
      absl::string_view(reinterpret_cast<const char*>(data), size), absl::MaxSplits('\0', 3));
  proctor::ServiceDirectory directory;
  for (size_t i = 0; i < contents.size(); ++i) {
    std::string path = std::string("/etc/proctor/services/") + kNames[i] + ".json";
    directory.services[kNames[i]] =
        proctor::ParseServiceFile(kNames[i], path, std::string(contents[i]));
  }
  std::map<std::string, std::string> in_force;
  for (const auto& [name, file] : directory.services) {
    if (file.error.empty()) in_force[name] = file.digest;
  }
  in_force["gone"] = "digest of a removed service";
  proctor::ResolveDependencies(directory);
  // Every usable service must come after what it is after.
  std::map<std::string, size_t> position;
  for (size_t i = 0; i < directory.order.size(); ++i) position[directory.order[i]] = i;
  for (const std::string& name : directory.order) {
    const proctor::ServiceFile& file = directory.services.at(name);
    if (!file.error.empty()) __builtin_trap();
    for (const std::string& after : file.spec.after()) {
      auto it = position.find(after);
      if (it == position.end() || it->second >= position[name]) __builtin_trap();
    }
  }
  proctor::DiffServices(in_force, directory);
  directory.Errors();
  return 0;
}
