// The sync-object commands of `proctor`: lock, sem, event and sync. cli.cc parses their
// arguments; these do the work.
//
// NAME is an object's name, or its id when it is a number. A name is looked up where the key
// reaches (a worker: its own objects, its ancestors', its session's) and made when missing:
// with an admin key at top level, where it lives until `proctor sync rm`; with a worker's key
// as the worker's own. An admin key holds through a session that lasts as long as the
// command, so whatever ends the command (SIGKILL included) releases what it held.
//
// Exit status: what the command ran exited with (128+N for signal N); 124 when --timeout
// passed first (lock and sem not acquired, event not set); 127 when the command could not be
// started; 1 when proctord failed a call.
#ifndef PROCTOR_CLIENT_CLI_SYNC_COMMANDS_H_
#define PROCTOR_CLIENT_CLI_SYNC_COMMANDS_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "client/client.h"
#include "proctor/v1/sync.pb.h"

namespace proctor {

struct SyncCommandIo {
  Client& client;
  std::ostream& out;
  std::ostream& err;
  bool json = false;
};

// lock (a Lock) and sem (a BoundedSemaphore of `value`, made so when missing): acquires it,
// runs `command` (argv, found on PATH, this process's environment and stdio), and releases
// it when the command has ended, however it ended. `started` is told the command's pid, so
// that signals to this command can be passed on to it.
int HoldAndRun(SyncCommandIo& io, v1::SyncKind kind, const std::string& name, int64_t value,
               std::optional<absl::Duration> timeout, const std::vector<std::string>& command,
               const std::function<void(pid_t)>& started);

// event set|clear|wait NAME: wait exits 0 once the event is set, 124 if the timeout passes.
int EventCommand(SyncCommandIo& io, const std::string& action, const std::string& name,
                 std::optional<absl::Duration> timeout);

// sync ls: the objects in reach, as a table (ID KIND NAME OWNER VALUE WAITING HOLDERS) or,
// with json, one object per line. sync rm NAME: frees one.
int SyncListCommand(SyncCommandIo& io);
int SyncRemoveCommand(SyncCommandIo& io, const std::string& name);

// One object as a single-line JSON object: id, name, kind, owner ("process N", "session N",
// or null), value, initial_value, is_set, parties, broken, n_waiting, holders, lock_id.
std::string SyncObjectJson(const v1::SyncObject& object);

}  // namespace proctor

#endif  // PROCTOR_CLIENT_CLI_SYNC_COMMANDS_H_
