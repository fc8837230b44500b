// Declared services as files: loading a services directory, checking each declaration, the
// order they start in, and what changed since the last time. Pure: reads files, starts
// nothing (ServiceManager does that).
//
// A services directory holds one file per service, NAME.json, in protobuf's JSON mapping of
// proctor.v1.ServiceSpec. NAME is 1 to 64 bytes of letters, digits and `-_.@`. Dotfiles,
// directories and files not ending in .json are ignored; a .json file whose stem is not a
// NAME is reported (it is most likely a typo) but declares nothing.
//
// Every error names the file and the field at fault: "PATH: field: what is wrong". A service
// whose file has an error, that is part of a cycle of `after`, or that is after such a
// service, cannot be used: it has an error of its own and is left out of the start order.
#ifndef PROCTOR_SERVER_SERVICE_SPECS_H_
#define PROCTOR_SERVER_SERVICE_SPECS_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "proctor/v1/proctor.pb.h"

namespace proctor {

inline constexpr size_t kMaxServiceNameBytes = 64;

// Whether `name` may name a service (and so its file, NAME.json).
bool IsServiceName(absl::string_view name);

// One service's file.
struct ServiceFile {
  std::string name;
  std::string path;
  v1::ServiceSpec spec;  // meaningful only without an error
  std::string digest;    // of `spec`: equal digests, equal declarations
  std::string error;     // set: the service cannot be used
};

// A services directory as it stands.
struct ServiceDirectory {
  std::map<std::string, ServiceFile> services;  // by name, usable or not
  // The usable services, each after every service it is `after`; ties in name order.
  std::vector<std::string> order;
  // Files that declare no service (a .json whose stem is not a NAME), one error each.
  std::vector<std::string> stray_errors;

  // Every error: the services' (in name order), then the stray files'.
  std::vector<std::string> Errors() const;
};

// Parses and checks one file on its own (what `after` names is checked by
// ResolveDependencies): JSON that protobuf's parser takes as a ServiceSpec (an unknown field
// is an error naming it), start.target set, start.name, start.session and start.daemon unset,
// every value as StartSpecFromRequest wants it, no `after` naming the service itself.
// REQUIRES: IsServiceName(name).
ServiceFile ParseServiceFile(const std::string& name, const std::string& path,
                             const std::string& json);

// The digest of a declaration: of its deterministic serialization, with `after` sorted (its
// order means nothing).
std::string ServiceDigest(const v1::ServiceSpec& spec);

// Checks what each usable service is `after` against `services`: a name with no service, a
// cycle ("a → b → c → a", an error of each service in it), a service after one that cannot
// be used. Then fills `order`.
void ResolveDependencies(ServiceDirectory& directory);

// Reads `dir` (ParseServiceFile on each service file, then ResolveDependencies). A missing
// directory holds no service; one that cannot be read is an error naming it.
absl::StatusOr<ServiceDirectory> LoadServiceDirectory(const std::string& dir);

// What a directory changes against the declarations in force (name → digest). Services that
// cannot be used belong to none of the lists: what was in force for them stays.
struct ServiceDiff {
  std::vector<std::string> added;      // usable, none in force: in start order
  std::vector<std::string> removed;    // in force, no file any more
  std::vector<std::string> changed;    // usable, a different digest in force: in start order
  std::vector<std::string> unchanged;  // usable, the same digest in force
};
ServiceDiff DiffServices(const std::map<std::string, std::string>& in_force,
                         const ServiceDirectory& now);

}  // namespace proctor

#endif  // PROCTOR_SERVER_SERVICE_SPECS_H_
