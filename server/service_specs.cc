#include "server/service_specs.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <system_error>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/authkey.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/util/json_util.h"
#include "server/process_proto.h"
#include "server/request_parsing.h"

namespace proctor {
namespace {

constexpr absl::string_view kSuffix = ".json";
// A declaration is a few hundred bytes; anything this large is not one.
constexpr std::uintmax_t kMaxFileBytes = 1 << 20;

std::string FirstLine(absl::string_view text) {
  return std::string(absl::StripAsciiWhitespace(text.substr(0, text.find('\n'))));
}

// The file's error, "PATH: what", or empty when the declaration is usable on its own.
std::string CheckSpec(const std::string& name, const std::string& path,
                      const v1::ServiceSpec& spec) {
  auto fault = [&](absl::string_view field, absl::string_view what) {
    return absl::StrCat(path, ": ", field, ": ", what);
  };
  if (!spec.has_start() || spec.start().target().empty()) {
    return fault("start.target", "is required: the program the service runs");
  }
  const v1::StartRequest& start = spec.start();
  if (!start.name().empty()) {
    return fault("start.name",
                 absl::StrCat("must be unset: the service's process is named after its file, \"",
                              name, "\""));
  }
  if (start.session() != 0) {
    return fault("start.session", "must be unset: a service runs at top level, in no session");
  }
  if (start.daemon()) {
    return fault("start.daemon",
                 "must be unset: a service has no parent whose end would end a daemonic process");
  }
  if (start.barriers_size() > 0) {
    return fault("start.barriers",
                 "must be unset: a service starts before any sync object exists; bind it with "
                 "SyncBind once it runs");
  }
  // The checks Start makes on a request, so that a file that would be refused is refused here.
  if (absl::Status valid = ValidateRequest(start); !valid.ok()) {
    return absl::StrCat(path, ": start.", valid.message());
  }
  StartSpec unused;
  if (absl::Status valid = StartSpecFromRequest(start, unused); !valid.ok()) {
    return absl::StrCat(path, ": start.", valid.message());
  }
  for (int i = 0; i < spec.after_size(); ++i) {
    if (spec.after(i) == name) {
      return fault(absl::StrCat("after[", i, "]"), "a service cannot be after itself");
    }
  }
  return "";
}

}  // namespace

bool IsServiceName(absl::string_view name) {
  return !name.empty() && name.size() <= kMaxServiceNameBytes &&
         std::all_of(name.begin(), name.end(), [](char c) {
           return absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.' || c == '@';
         });
}

std::vector<std::string> ServiceDirectory::Errors() const {
  std::vector<std::string> errors;
  for (const auto& [name, service] : services) {
    if (!service.error.empty()) errors.push_back(service.error);
  }
  errors.insert(errors.end(), stray_errors.begin(), stray_errors.end());
  return errors;
}

std::string ServiceDigest(const v1::ServiceSpec& spec) {
  v1::ServiceSpec canonical = spec;
  std::sort(canonical.mutable_after()->begin(), canonical.mutable_after()->end());
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream stream(&bytes);
    google::protobuf::io::CodedOutputStream out(&stream);
    // Map entries (kwargs) in key order, so that equal declarations give equal bytes.
    out.SetSerializationDeterministic(true);
    canonical.SerializeToCodedStream(&out);
  }
  // A fixed key makes the MAC a plain digest of the bytes.
  return HexEncode(HmacSha256("proctor-v1 service spec", bytes));
}

ServiceFile ParseServiceFile(const std::string& name, const std::string& path,
                             const std::string& json) {
  ServiceFile file{.name = name, .path = path};
  // ignore_unknown_fields stays false: a misspelt field must not be silently dropped.
  google::protobuf::util::JsonParseOptions options;
  auto parsed = google::protobuf::util::JsonStringToMessage(json, &file.spec, options);
  if (!parsed.ok()) {
    // The parser's syntax errors carry an excerpt over several lines: its first says it all.
    file.error = absl::StrCat(path, ": not a proctor.v1.ServiceSpec in JSON: ",
                              FirstLine(std::string(parsed.message())));
    return file;
  }
  file.error = CheckSpec(name, path, file.spec);
  if (file.error.empty()) file.digest = ServiceDigest(file.spec);
  return file;
}

void ResolveDependencies(ServiceDirectory& directory) {
  auto& services = directory.services;
  for (auto& [name, service] : services) {
    if (!service.error.empty()) continue;
    for (int i = 0; i < service.spec.after_size(); ++i) {
      const std::string& after = service.spec.after(i);
      if (!services.contains(after)) {
        service.error = absl::StrCat(service.path, ": after[", i, "]: \"", after,
                                     "\" names no service (there is no ", after, ".json)");
        break;
      }
    }
  }

  // Depth first from each service in name order; `path` is the chain being followed, so an
  // edge back into it closes a cycle. A service is finished once everything it is after is.
  enum class Mark { kNew, kOnPath, kFinished };
  std::map<std::string, Mark> marks;
  std::vector<std::string> path;
  std::vector<std::string> finished;  // dependencies first
  std::function<void(const std::string&)> visit = [&](const std::string& name) {
    marks[name] = Mark::kOnPath;
    path.push_back(name);
    ServiceFile& service = services.at(name);
    if (service.error.empty()) {
      for (const std::string& after : service.spec.after()) {
        auto found = services.find(after);
        if (found == services.end()) continue;
        Mark mark = marks[after];
        if (mark == Mark::kNew) {
          visit(after);
        } else if (mark == Mark::kOnPath) {
          auto from = std::find(path.begin(), path.end(), after);
          std::vector<std::string> cycle(from, path.end());
          cycle.push_back(after);
          const std::string chain = absl::StrJoin(cycle, " → ");
          for (auto member = from; member != path.end(); ++member) {
            ServiceFile& in_cycle = services.at(*member);
            if (in_cycle.error.empty()) {
              in_cycle.error = absl::StrCat(in_cycle.path, ": after: ", chain,
                                            " is a cycle: none of them can start first");
            }
          }
        }
      }
    }
    path.pop_back();
    marks[name] = Mark::kFinished;
    finished.push_back(name);
  };
  for (const auto& [name, service] : services) {
    if (marks[name] == Mark::kNew) visit(name);
  }

  // Everything a service is after comes before it in `finished` (but for cycles, whose
  // members have their error already): one pass passes errors down every chain.
  directory.order.clear();
  for (const std::string& name : finished) {
    ServiceFile& service = services.at(name);
    if (service.error.empty()) {
      for (int i = 0; i < service.spec.after_size(); ++i) {
        const std::string& after = service.spec.after(i);
        if (!services.at(after).error.empty()) {
          service.error = absl::StrCat(service.path, ": after[", i, "]: \"", after,
                                       "\" cannot be used (see its own error), so neither can "
                                       "this service");
          break;
        }
      }
    }
    if (service.error.empty()) directory.order.push_back(name);
  }
}

absl::StatusOr<ServiceDirectory> LoadServiceDirectory(const std::string& dir) {
  namespace fs = std::filesystem;
  ServiceDirectory directory;
  std::error_code ec;
  fs::directory_iterator entries(dir, ec);
  if (ec == std::errc::no_such_file_or_directory) return directory;
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read the services directory ", dir, ": ", ec.message()));
  }
  for (const fs::directory_entry& entry : entries) {
    const std::string file_name = entry.path().filename().string();
    if (absl::StartsWith(file_name, ".") || !absl::EndsWith(file_name, kSuffix)) continue;
    // Symbolic links are followed: a file linked in from elsewhere is a service too.
    if (!entry.is_regular_file(ec)) continue;
    const std::string path = entry.path().string();
    const std::string name = file_name.substr(0, file_name.size() - kSuffix.size());
    if (!IsServiceName(name)) {
      directory.stray_errors.push_back(
          absl::StrCat(path, ": \"", name, "\" is not a service name (1 to ",
                       kMaxServiceNameBytes, " letters, digits and -_.@); the file is ignored"));
      continue;
    }
    ServiceFile& service = directory.services[name];
    service = ServiceFile{.name = name, .path = path};
    std::uintmax_t size = entry.file_size(ec);
    if (!ec && size > kMaxFileBytes) {
      service.error = absl::StrCat(path, ": ", size, " bytes is too large for a declaration");
      continue;
    }
    std::ifstream in(path);
    if (!in.is_open()) {
      int err = errno;
      service.error = absl::StrCat(path, ": cannot open it: ", std::strerror(err));
      continue;
    }
    std::stringstream content;
    content << in.rdbuf();
    service = ParseServiceFile(name, path, content.str());
  }
  ResolveDependencies(directory);
  return directory;
}

ServiceDiff DiffServices(const std::map<std::string, std::string>& in_force,
                         const ServiceDirectory& now) {
  ServiceDiff diff;
  for (const std::string& name : now.order) {
    const std::string& digest = now.services.at(name).digest;
    auto it = in_force.find(name);
    if (it == in_force.end()) {
      diff.added.push_back(name);
    } else if (it->second != digest) {
      diff.changed.push_back(name);
    } else {
      diff.unchanged.push_back(name);
    }
  }
  for (const auto& [name, digest] : in_force) {
    if (!now.services.contains(name)) diff.removed.push_back(name);
  }
  return diff;
}

}  // namespace proctor
