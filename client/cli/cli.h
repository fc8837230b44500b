// The `proctor` command line: every RPC of proctord as a subcommand, for people and scripts.
//
//   proctor [--address ADDR] [--json] [--authkey-file PATH] [--tls-ca PATH] [--tls-cert PATH]
//           [--tls-key PATH] [--insecure-tcp] [--call-timeout SECONDS] COMMAND [ARGS]
//
// The options before COMMAND fill ClientOptions (see client/client.h for their defaults).
// A key file that others can read is used with a warning on stderr, "proctor: warning: key
// file PATH is readable by others (mode 0644); chmod 600 PATH", before the command's output.
//
// Arguments (parsed with CLI11, problems worded here):
//   - Options are `--name VALUE` or `--name=VALUE` (`--name=` gives the empty value); the
//     argument after an option that takes a value is its value, whatever it looks like. Given
//     twice, the last one counts (`--env` and `--kwarg` add up). `--json` is also accepted
//     after COMMAND.
//   - `-h` or `--help` among the options prints help on stdout and exits 0, as `proctor help
//     [COMMAND]` does, whatever else is wrong with the line.
//   - After COMMAND, `--` ends the options. For `start` and `run` the first operand does too
//     (TARGET [ARG...] belong to the worker, as with env(1)), and so does COMMAND for the
//     global options.
//
// Output contract (scripts rely on it):
//   - `start` prints the new process id alone on a line; `run` streams the worker's stdout and
//     stderr to its own and exits like `join`; SIGINT, SIGTERM or SIGHUP to `run` terminates
//     the worker (a second one kills it, a third stops waiting).
//   - `join` exits with the worker's exit code, 128+N when signal N ended it, and 124 when the
//     timeout passed with the worker still running.
//   - `status` and `ps` print a table; with --json, `status` prints one JSON object and `ps`
//     an array of them, one object per line (see ProcessJson); neither shows a cursor.
//     `start`, `join`, `terminate` and `kill` print the record as JSON with --json, and
//     nothing otherwise (except `start`'s id).
//   - `events` prints what happens to processes and sessions: a header line, then one line
//     per event, `CURSOR TIME TYPE ID NAME STATE EXITCODE` (TIME in UTC to the millisecond,
//     RFC 3339; ID NAME STATE EXITCODE from the record as it stands after the event; a
//     session event has `session:N` as ID and `-` for the rest); with --json no header and
//     one EventJson object per line. TYPE is one of started, exited, terminate-requested,
//     released, evicted, session-opened, session-ended; `--type` takes those names and
//     `--id` process ids (each may be given several times; an event passes when it matches
//     one of each given). Without --follow it prints the events after `--since CURSOR`
//     (default 0: every event proctord still keeps) up to the cursor of a listing (Status)
//     made first, then exits 0 (at once when that cursor is CURSOR); the whole listing is due
//     within --call-timeout; under a worker's key, which sees only its own subtree, it also
//     ends after one second without an event. With --follow it prints the events after
//     `--since CURSOR` (default: from now, none replayed), then live ones, until SIGINT or
//     SIGTERM (exit 0) or until proctord ends the stream (exit 1). A CURSOR older than what
//     proctord keeps or ahead of its last event is proctord's OUT_OF_RANGE (exit 1).
//   - `reload` prints "started: ", "stopped: ", "restarted: " and "unchanged: " lines (names
//     separated by blanks, "-" for none) and each file's error on stderr, and exits 1 when a
//     file has errors; `services` prints the table NAME STATE PID RESTARTS LAST-EXIT, then a
//     "NAME: error" line for each service with an error. With --json, `reload` prints one
//     object and `services` an array of one object per line.
//   - `proctor __complete CWORD WORD...`, which help does not list, is for the bash completion
//     script (completion/proctor.bash): the words that may stand at WORDS[CWORD], one per line.
//   - Errors are one line on stderr, "proctor: <problem>"; the exit status is 1 when the
//     daemon or the call failed (among them "proctor: Status did not answer within 30s" when
//     the daemon did not answer within --call-timeout) and 2 for usage errors (followed by a
//     one-line hint: the command's synopsis, or where to find help).
#ifndef PROCTOR_CLIENT_CLI_CLI_H_
#define PROCTOR_CLIENT_CLI_CLI_H_

#include <ostream>
#include <string>
#include <vector>

#include "proctor/v1/proctor.pb.h"

namespace proctor {

// Runs the command line argv[0..argc) (argv[0] is the program name) with std::cout and
// std::cerr, and returns the process exit status. `run` blocks SIGINT, SIGTERM and SIGHUP in
// the calling thread while it works, so call this before starting threads of your own, or
// block those signals in them.
int RunCli(int argc, char** argv);

// The same with the arguments after the program name and explicit streams (for tests).
// `run` writes the worker's stdout to `out` and its stderr to `err`, from separate threads.
int RunCli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

// RunCli without proctord: the line is parsed and checked exactly as RunCli does, and each
// command stops where it would connect, with "proctor: not connecting to proctord: the
// command line was only checked" on `err` and exit status 1. Usage errors, help and
// `__complete` answer as with RunCli. Reads no key file and opens no connection.
int CheckCli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

// One record as a single-line JSON object: id, name, pid, state ("running"/"exited"),
// exitcode (null while running), signal, core_dumped, daemon, parent (the parent process id,
// or null), parent_session (or null), children, target, args, cwd, start_time and end_time
// (RFC 3339, or null), user_cpu and system_cpu (seconds), max_rss_bytes, stdout_path and
// stderr_path.
std::string ProcessJson(const v1::Process& process);

// One event as a single-line JSON object: cursor, type (see above), time (RFC 3339), process
// (the record as ProcessJson prints it; absent for session events) and session (absent when
// 0), in that order.
std::string EventJson(const v1::Event& event);

// Records as a table with a header line: ID NAME PID STATE EXITCODE DAEMON PARENT TARGET.
std::string ProcessTable(const std::vector<v1::Process>& processes);

// Records as a tree: each child below its parent, with its id, name, pid and state.
std::string ProcessTree(const std::vector<v1::Process>& processes);

// `join`'s exit status for a record: the exit code, 128+N for signal N, 124 while running.
int JoinExitStatus(const v1::Process& process);

}  // namespace proctor

#endif  // PROCTOR_CLIENT_CLI_CLI_H_
