#include "server/worker_user.h"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace proctor {
namespace {

struct PasswdEntry {
  uid_t uid;
  gid_t gid;
  std::string name;
  std::string home;
};

// getpwnam_r/getpwuid_r with a buffer that grows as they ask.
absl::StatusOr<PasswdEntry> LookUpUser(const std::string& user) {
  uid_t number = 0;
  bool numeric = absl::SimpleAtoi(user, &number);
  std::vector<char> buffer(4096);
  for (;;) {
    passwd entry;
    passwd* found = nullptr;
    int rc = numeric ? getpwuid_r(number, &entry, buffer.data(), buffer.size(), &found)
                     : getpwnam_r(user.c_str(), &entry, buffer.data(), buffer.size(), &found);
    if (rc == ERANGE && buffer.size() < (1u << 20)) {
      buffer.resize(buffer.size() * 2);
      continue;
    }
    if (rc != 0) {
      return absl::InternalError(absl::StrCat("looking up user ", user, ": ", std::strerror(rc)));
    }
    if (found == nullptr) {
      if (numeric) return PasswdEntry{number, number, user, "/"};  // a bare uid, as systemd allows
      return absl::InvalidArgumentError(absl::StrCat("no user named \"", user, "\""));
    }
    return PasswdEntry{entry.pw_uid, entry.pw_gid, entry.pw_name, entry.pw_dir};
  }
}

absl::StatusOr<gid_t> LookUpGroup(const std::string& group) {
  gid_t number = 0;
  if (absl::SimpleAtoi(group, &number)) return number;
  std::vector<char> buffer(4096);
  for (;;) {
    struct group entry;
    struct group* found = nullptr;
    int rc = getgrnam_r(group.c_str(), &entry, buffer.data(), buffer.size(), &found);
    if (rc == ERANGE && buffer.size() < (1u << 20)) {
      buffer.resize(buffer.size() * 2);
      continue;
    }
    if (rc != 0) {
      return absl::InternalError(
          absl::StrCat("looking up group ", group, ": ", std::strerror(rc)));
    }
    if (found == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("no group named \"", group, "\""));
    }
    return entry.gr_gid;
  }
}

}  // namespace

absl::StatusOr<WorkerUser> ResolveWorkerUser(const std::string& user, const std::string& group) {
  if (user.empty()) {
    if (!group.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("group \"", group, "\" needs a user to go with it"));
    }
    return WorkerUser{};
  }
  absl::StatusOr<PasswdEntry> entry = LookUpUser(user);
  if (!entry.ok()) return entry.status();
  WorkerIdentity identity{.uid = entry->uid, .gid = entry->gid};
  if (!group.empty()) {
    absl::StatusOr<gid_t> gid = LookUpGroup(group);
    if (!gid.ok()) return gid.status();
    identity.gid = *gid;
  }
  if (identity.uid == geteuid() && identity.gid == getegid()) return WorkerUser{};
  if (geteuid() != 0) {
    return absl::PermissionDeniedError(absl::StrCat(
        "starting workers as user \"", user, "\" needs a proctord running as root (this one "
        "runs as uid ", geteuid(), ")"));
  }
  // The user's supplementary groups, as a login would give them.
  int count = 64;
  std::vector<gid_t> groups(count);
  while (getgrouplist(entry->name.c_str(), identity.gid, groups.data(), &count) < 0) {
    groups.resize(count);
  }
  groups.resize(count);
  identity.groups = std::move(groups);
  return WorkerUser{
      .identity = std::move(identity),
      .env = {absl::StrCat("USER=", entry->name), absl::StrCat("LOGNAME=", entry->name),
              absl::StrCat("HOME=", entry->home)},
  };
}

}  // namespace proctor
