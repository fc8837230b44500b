#include "client/cli/cli.h"

#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/cli/sync_commands.h"
#include "client/client.h"
#include "common/authkey.h"
#include "common/default_paths.h"
#include "common/signal_names.h"
#include "common/wait_status.h"
#include "google/protobuf/util/time_util.h"
#include "nlohmann/json.hpp"

namespace proctor {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;
constexpr int kExitTimeout = 124;

// ---------------------------------------------------------------------------------------------
// Formatting

// Keeps the keys in the order ProcessJson documents.
using Json = nlohmann::ordered_json;

// One line. Bytes that are not UTF-8 (names, paths and arguments may hold any) become U+FFFD
// instead of making the dump throw.
std::string Dump(const Json& json) {
  return json.dump(-1, ' ', false, Json::error_handler_t::replace);
}

template <typename T>
Json ValueOrNull(bool present, const T& value) {
  return present ? Json(value) : Json(nullptr);
}

Json JsonTime(bool present, const google::protobuf::Timestamp& t) {
  return ValueOrNull(present, google::protobuf::util::TimeUtil::ToString(t));
}

Json JsonSeconds(bool present, const google::protobuf::Duration& d) {
  // Rounded once, from whole nanoseconds, the double prints as the decimal it stands for
  // (0.3, not 0.30000000000000004).
  return ValueOrNull(present, static_cast<double>(d.seconds() * 1'000'000'000 + d.nanos()) / 1e9);
}

absl::string_view StateName(v1::State state) {
  switch (state) {
    case v1::STATE_RUNNING:
      return "running";
    case v1::STATE_EXITED:
      return "exited";
    case v1::STATE_BACKOFF:
      return "backoff";
    default:
      return "unknown";
  }
}

// "lost" for a process whose end nobody saw (see v1::Process.lost).
std::string StateOf(const v1::Process& p) {
  return p.lost() ? "lost" : std::string(StateName(p.state()));
}

struct EventTypeName {
  v1::EventType type;
  absl::string_view name;
};

// The names `events` prints and --type takes.
constexpr EventTypeName kEventTypeNames[] = {
    {v1::EVENT_STARTED, "started"},
    {v1::EVENT_EXITED, "exited"},
    {v1::EVENT_TERMINATE_REQUESTED, "terminate-requested"},
    {v1::EVENT_RELEASED, "released"},
    {v1::EVENT_EVICTED, "evicted"},
    {v1::EVENT_SESSION_OPENED, "session-opened"},
    {v1::EVENT_SESSION_ENDED, "session-ended"},
    {v1::EVENT_RESTARTING, "restarting"},
    {v1::EVENT_GAVE_UP, "gave-up"},
    {v1::EVENT_READY, "ready"},
    {v1::EVENT_WATCHDOG, "watchdog"},
};

absl::string_view EventTypeText(v1::EventType type) {
  for (const EventTypeName& known : kEventTypeNames) {
    if (known.type == type) return known.name;
  }
  return "unknown";
}

// Quotes an argument for display only when a shell would need it.
std::string DisplayArg(absl::string_view arg) {
  const bool plain = !arg.empty() && std::all_of(arg.begin(), arg.end(), [](char c) {
    return absl::ascii_isalnum(c) || absl::StrContains("_./=:,+@%-", c);
  });
  if (plain) return std::string(arg);
  std::string out = "'";
  for (char c : arg) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  out += '\'';
  return out;
}

std::string ParentText(const v1::Process& p) {
  switch (p.parent_case()) {
    case v1::Process::kParentId:
      return absl::StrCat(p.parent_id());
    case v1::Process::kParentSession:
      return absl::StrCat("session:", p.parent_session());
    default:
      return "-";
  }
}

absl::string_view RestartModeName(v1::RestartPolicy::Mode mode) {
  switch (mode) {
    case v1::RestartPolicy::ON_FAILURE:
      return "on-failure";
    case v1::RestartPolicy::ALWAYS:
      return "always";
    default:
      return "no";
  }
}

Json RestartObject(const v1::Process& p) {
  if (!p.has_restart()) return nullptr;
  const v1::RestartPolicy& r = p.restart();
  return {
      {"mode", std::string(RestartModeName(r.mode()))},
      {"max_restarts", r.max_restarts()},
      {"window", JsonSeconds(r.has_window(), r.window())},
      {"initial_backoff", JsonSeconds(r.has_initial_backoff(), r.initial_backoff())},
      {"max_backoff", JsonSeconds(r.has_max_backoff(), r.max_backoff())},
      {"reset_after", JsonSeconds(r.has_reset_after(), r.reset_after())},
  };
}

Json LastExitObject(const v1::Process& p) {
  if (!p.has_last_exit()) return nullptr;
  const v1::ExitRecord& e = p.last_exit();
  return {
      {"pid", e.pid()},
      {"exitcode", ValueOrNull(e.has_exitcode(), e.exitcode())},
      {"signal", e.signal()},
      {"core_dumped", e.core_dumped()},
      {"start_time", JsonTime(e.has_start_time(), e.start_time())},
      {"end_time", JsonTime(e.has_end_time(), e.end_time())},
      {"watchdog", e.watchdog()},
  };
}

Json NotifyObject(const v1::Process& p) {
  if (!p.has_notify()) return nullptr;
  const v1::NotifyState& n = p.notify();
  return {
      {"ready", n.ready()},
      {"status", n.status()},
      {"stopping", n.stopping()},
      {"reloading", n.reloading()},
      {"errno", n.errno_value()},
      {"watchdog", JsonSeconds(n.has_watchdog(), n.watchdog())},
      {"last_watchdog_ping", JsonTime(n.has_last_watchdog_ping(), n.last_watchdog_ping())},
      {"dropped", n.dropped()},
  };
}

// ProcessJson's object.
Json ProcessObject(const v1::Process& p) {
  return {
      {"id", p.id()},
      {"name", p.name()},
      {"pid", p.pid()},
      {"state", StateOf(p)},
      {"exitcode", ValueOrNull(p.has_exitcode(), p.exitcode())},
      {"signal", p.signal()},
      {"core_dumped", p.core_dumped()},
      {"daemon", p.daemon()},
      {"parent", ValueOrNull(p.has_parent_id(), p.parent_id())},
      {"parent_session", ValueOrNull(p.has_parent_session(), p.parent_session())},
      {"children", std::vector<uint64_t>(p.children().begin(), p.children().end())},
      {"target", p.target()},
      {"args", std::vector<std::string>(p.args().begin(), p.args().end())},
      {"cwd", p.cwd()},
      {"start_time", JsonTime(p.has_start_time(), p.start_time())},
      {"end_time", JsonTime(p.has_end_time(), p.end_time())},
      {"user_cpu", JsonSeconds(p.has_user_cpu(), p.user_cpu())},
      {"system_cpu", JsonSeconds(p.has_system_cpu(), p.system_cpu())},
      {"max_rss_bytes", p.max_rss_bytes()},
      {"stdout_path", p.stdout_path()},
      {"stderr_path", p.stderr_path()},
      {"restart", RestartObject(p)},
      {"restarts", p.restarts()},
      {"last_exit", LastExitObject(p)},
      {"next_start_time", JsonTime(p.has_next_start_time(), p.next_start_time())},
      {"notify", NotifyObject(p)},
      {"service", ValueOrNull(!p.service().empty(), p.service())},
  };
}

// `events`' columns for people, padded to these widths (the last one is not); a longer value
// widens its column on its own line, and two blanks always separate the columns.
constexpr size_t kEventColumnWidths[] = {6, 24, 19, 6, 12, 7};

std::string EventRow(const std::array<std::string, 7>& cells) {
  std::string out;
  for (size_t i = 0; i < cells.size(); ++i) {
    out += cells[i];
    if (i < std::size(kEventColumnWidths)) {
      out.append(std::max(kEventColumnWidths[i], cells[i].size()) - cells[i].size() + 2, ' ');
    }
  }
  return out;
}

const std::string& EventHeader() {
  static const std::string* const header = new std::string(
      EventRow({"CURSOR", "TIME", "TYPE", "ID", "NAME", "STATE", "EXITCODE"}));
  return *header;
}

// One event for people: its time in UTC to the millisecond, and for session events the
// session as ID ("session:N") and "-" for what only processes have.
std::string EventLine(const v1::Event& e) {
  std::string time = "-";
  if (e.has_time()) {
    time = absl::FormatTime(
        "%Y-%m-%dT%H:%M:%E3SZ",
        absl::FromUnixSeconds(e.time().seconds()) + absl::Nanoseconds(e.time().nanos()),
        absl::UTCTimeZone());
  }
  std::string type(EventTypeText(e.type()));
  if (!e.has_process()) {
    return EventRow({absl::StrCat(e.cursor()), time, type, absl::StrCat("session:", e.session()),
                     "-", "-", "-"});
  }
  const v1::Process& p = e.process();
  return EventRow({absl::StrCat(e.cursor()), time, type, absl::StrCat(p.id()),
                   p.name().empty() ? "-" : p.name(), StateOf(p),
                   p.has_exitcode() ? absl::StrCat(p.exitcode()) : "-"});
}

// A declared service's state: its process's, or, before it has one, "failed" (with an error)
// or "waiting" (for the services it is after).
std::string ServiceState(const v1::Service& s) {
  if (s.has_process()) return StateOf(s.process());
  return s.error().empty() ? "waiting" : "failed";
}

// `services`' rows under their header, each column as wide as its widest cell.
std::string Table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths(rows[0].size(), 0);
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  std::string out;
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) {
      out += row[i];
      // The last column is not padded, so lines carry no trailing blanks.
      if (i + 1 < row.size()) out.append(widths[i] - row[i].size() + 2, ' ');
    }
    out += '\n';
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Argument parsing: CLI11 splits the arguments; the problems are worded here, so that every
// usage error is one line of ours.

struct OptionSpec {
  absl::string_view name;  // without the leading "--"
  bool takes_value;
};

// What follows a subcommand besides its options.
enum class Operands {
  kNone,     // nothing
  kId,       // exactly one process id
  kCommand,  // TARGET [ARG...]: the first operand ends option parsing, as with env(1)
  kAny,      // counted by the handler: NAME [-- CMD...], or a verb and its operands
};

struct Args {
  std::map<std::string, std::vector<std::string>, std::less<>> options;
  std::vector<std::string> operands;
  bool help = false;
  bool json = false;

  bool Has(absl::string_view name) const { return options.find(name) != options.end(); }
  // The last value given for `name` (options given twice: the last one wins).
  std::optional<std::string> Last(absl::string_view name) const {
    auto it = options.find(name);
    if (it == options.end()) return std::nullopt;
    return it->second.back();
  }
  std::vector<std::string> All(absl::string_view name) const {
    auto it = options.find(name);
    return it == options.end() ? std::vector<std::string>() : it->second;
  }
};

class Cli;

// A subcommand, or (with an empty name) the global options before COMMAND.
struct Command {
  absl::string_view name;
  absl::string_view synopsis;  // after "proctor "
  absl::string_view summary;
  std::span<const OptionSpec> options;
  Operands operands;
  int (*handler)(Cli&, const Command&, const Args&);
  absl::string_view details = {};  // more for `proctor help COMMAND`, after the summary
};

// "--name" of "--name=value".
absl::string_view OptionName(absl::string_view arg) { return arg.substr(0, arg.find('=')); }

// CLI11 reads "--name=" as "--name" and takes the next argument as its value. A NUL, which no
// argument from argv holds, stands for the empty value during the parse.
constexpr absl::string_view kEmptyValue("\0", 1);

std::string MarkEmptyValue(const CLI::App& app, const std::string& arg) {
  const CLI::Option* option = app.get_option_no_throw(std::string(OptionName(arg)));
  const bool empty_value = absl::StartsWith(arg, "--") && absl::EndsWith(arg, "=") &&
                           option != nullptr && option->get_items_expected_max() > 0;
  return empty_value ? absl::StrCat(arg, kEmptyValue) : arg;
}

std::string UnmarkEmptyValue(std::string text) {
  if (absl::EndsWith(text, kEmptyValue)) text.pop_back();
  return text;
}

absl::StatusOr<Args> ParseArgs(const Command& command, std::span<const std::string> in) {
  CLI::App app;
  app.set_help_flag();  // help is our own text
  // Operands and unknown options stay in remaining(), to be told apart below.
  app.allow_extras();
  if (command.operands == Operands::kCommand) app.prefix_command();
  // The options have no variables: all their values, in order, are read back below.
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  std::vector<std::pair<absl::string_view, const CLI::Option*>> given;
  for (const OptionSpec& spec : command.options) {
    std::string name = absl::StrCat("--", spec.name);
    given.emplace_back(spec.name, spec.takes_value ? app.add_option(name) : app.add_flag(name));
  }
  // --json is global, but reads naturally after the command too ("proctor ps --json").
  const CLI::Option* json = app.add_flag("--json");
  const CLI::Option* help = app.add_flag("-h,--help");

  std::vector<std::string> reversed;  // CLI11 takes the arguments from the back
  for (auto it = in.rbegin(); it != in.rend(); ++it) reversed.push_back(MarkEmptyValue(app, *it));
  std::optional<std::string> problem;
  try {
    app.parse(std::move(reversed));
  } catch (const CLI::ArgumentMismatch&) {
    // An option takes whatever follows as its value, so this one ended the line.
    problem = absl::StrCat("option ", OptionName(in.back()), " needs a value");
  } catch (const CLI::ParseError& e) {
    problem = e.what();
  }
  Args args;
  args.help = help->count() > 0;
  if (args.help) return args;
  if (problem.has_value()) return absl::InvalidArgumentError(*problem);
  for (const CLI::Option* option : app.get_options()) {
    const std::vector<std::string>& values = option->results();
    // A flag's value is "true" unless the line gave it one ("--daemon=no").
    if (option->get_items_expected_max() == 0 &&
        std::any_of(values.begin(), values.end(),
                    [](const std::string& v) { return v != "true"; })) {
      return absl::InvalidArgumentError(
          absl::StrCat("option ", option->get_name(), " takes no value"));
    }
  }
  // What CLI11 left, in order: unknown options, operands and the "--" that ended the options.
  // For COMMAND and TARGET, the first operand ends them too (prefix_command), as with env(1);
  // before COMMAND, "--" is no more than an unknown option.
  bool options_ended = false;
  for (const std::string& arg : app.remaining()) {
    if (!options_ended && arg == "--" && !command.name.empty()) {
      options_ended = true;
    } else if (!options_ended && arg.size() > 1 && arg[0] == '-') {
      if (command.name.empty() || !absl::StartsWith(arg, "--")) {
        return absl::InvalidArgumentError(absl::StrCat("unknown option ", arg));
      }
      return absl::InvalidArgumentError(
          absl::StrCat("unknown option ", OptionName(arg), " for ", command.name));
    } else {
      args.operands.push_back(UnmarkEmptyValue(arg));
      options_ended = options_ended || command.operands == Operands::kCommand;
    }
  }
  for (const auto& [name, option] : given) {
    if (option->count() == 0) continue;
    std::vector<std::string>& values = args.options[std::string(name)];
    for (const std::string& value : option->results()) values.push_back(UnmarkEmptyValue(value));
  }
  args.json = json->count() > 0;

  switch (command.operands) {
    case Operands::kNone:
      if (!args.operands.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("unexpected argument \"", args.operands[0], "\""));
      }
      break;
    case Operands::kId:
      if (args.operands.empty()) return absl::InvalidArgumentError("missing process id");
      if (args.operands.size() > 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("unexpected argument \"", args.operands[1], "\""));
      }
      break;
    case Operands::kAny:
      break;
    case Operands::kCommand:
      if (args.operands.empty()) {
        return absl::InvalidArgumentError(command.name.empty() ? "missing command"
                                                               : "missing TARGET");
      }
      break;
  }
  return args;
}

absl::StatusOr<uint64_t> ParseId(absl::string_view text, absl::string_view what) {
  uint64_t id = 0;
  if (text.empty() || !std::all_of(text.begin(), text.end(), absl::ascii_isdigit) ||
      !absl::SimpleAtoi(text, &id)) {
    return absl::InvalidArgumentError(absl::StrCat("invalid ", what, " \"", text, "\""));
  }
  return id;
}

absl::StatusOr<absl::Duration> ParseSeconds(absl::string_view option, absl::string_view text) {
  double seconds = 0;
  if (!absl::SimpleAtod(text, &seconds) || !std::isfinite(seconds)) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid --", option, " \"", text, "\" (expected seconds, e.g. 0.5)"));
  }
  if (seconds < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--", option, " must not be negative"));
  }
  return absl::Seconds(seconds);
}

// ---------------------------------------------------------------------------------------------
// The command line's state shared by all subcommands.

class Cli {
 public:
  // `offline`: the command line is only checked; client() connects to nothing.
  Cli(std::ostream& out, std::ostream& err, bool offline = false)
      : out_(out), err_(err), offline_(offline) {}

  std::ostream& out() { return out_; }
  std::ostream& err() { return err_; }
  bool json() const { return json_; }
  void set_json(bool json) { json_ = json; }
  ClientOptions& client_options() { return client_options_; }

  // Connects on first use, so that `run` can block signals before gRPC starts its threads.
  absl::StatusOr<Client*> client() {
    if (offline_) {
      return absl::FailedPreconditionError(
          "not connecting to proctord: the command line was only checked");
    }
    if (client_ == nullptr) {
      absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(client_options_);
      if (!client.ok()) return client.status();
      client_ = *std::move(client);
      for (const std::string& warning : client_->credentials().warnings) {
        err_ << "proctor: warning: " << warning << std::endl;
      }
    }
    return client_.get();
  }

  // Reports a failed call: one line, exit status 1.
  int Fail(const absl::Status& status) {
    err_ << "proctor: " << status.message() << std::endl;
    return kExitFailure;
  }

  // Reports a usage error and a hint: exit status 2.
  int UsageError(const Command* command, absl::string_view problem) {
    err_ << "proctor: " << problem << "\n";
    if (command != nullptr) {
      err_ << "usage: proctor " << command->synopsis << std::endl;
    } else {
      err_ << "Try 'proctor --help' for more information." << std::endl;
    }
    return kExitUsage;
  }

  // Prints a record as JSON when --json was given.
  void MaybePrintJson(const v1::Process& process) {
    if (json_) out_ << ProcessJson(process) << std::endl;
  }

 private:
  std::ostream& out_;
  std::ostream& err_;
  const bool offline_;
  bool json_ = false;
  ClientOptions client_options_;
  std::unique_ptr<Client> client_;
};

// ---------------------------------------------------------------------------------------------
// Subcommands

google::protobuf::Duration DurationProto(absl::Duration d) {
  return google::protobuf::util::TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(d));
}

// A duration as "100ms", "1.5s", "2m" (absl's units), or bare seconds.
absl::StatusOr<absl::Duration> ParseDurationText(absl::string_view option,
                                                 absl::string_view text) {
  absl::Duration d;
  if (absl::ParseDuration(text, &d) && d >= absl::ZeroDuration() && d != absl::InfiniteDuration()) {
    return d;
  }
  return ParseSeconds(option, text);
}

// --restart MODE [--max-restarts N] [--restart-window S] [--backoff MIN..MAX]
// [--reset-after S].
absl::Status AddRestartPolicy(const Args& args, v1::StartRequest& request) {
  std::optional<std::string> mode = args.Last("restart");
  const bool tuned = args.Has("max-restarts") || args.Has("restart-window") ||
                     args.Has("backoff") || args.Has("reset-after");
  if (!mode.has_value()) {
    if (tuned) {
      return absl::InvalidArgumentError(
          "--max-restarts, --restart-window, --backoff and --reset-after need --restart");
    }
    return absl::OkStatus();
  }
  v1::RestartPolicy* policy = request.mutable_restart();
  if (*mode == "no") {
    policy->set_mode(v1::RestartPolicy::NO);
  } else if (*mode == "on-failure") {
    policy->set_mode(v1::RestartPolicy::ON_FAILURE);
  } else if (*mode == "always") {
    policy->set_mode(v1::RestartPolicy::ALWAYS);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid --restart \"", *mode, "\" (expected no, on-failure or always)"));
  }
  if (std::optional<std::string> text = args.Last("max-restarts")) {
    uint32_t max = 0;
    if (!absl::SimpleAtoi(*text, &max)) {
      return absl::InvalidArgumentError(
          absl::StrCat("invalid --max-restarts \"", *text, "\" (expected a count, 0: no limit)"));
    }
    policy->set_max_restarts(max);
  }
  if (std::optional<std::string> text = args.Last("backoff")) {
    std::vector<std::string> bounds = absl::StrSplit(*text, "..");
    if (bounds.size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("invalid --backoff \"", *text, "\" (expected MIN..MAX, e.g. 100ms..30s)"));
    }
    absl::StatusOr<absl::Duration> initial = ParseDurationText("backoff", bounds[0]);
    if (!initial.ok()) return initial.status();
    absl::StatusOr<absl::Duration> max = ParseDurationText("backoff", bounds[1]);
    if (!max.ok()) return max.status();
    if (*max < *initial) {
      return absl::InvalidArgumentError(
          absl::StrCat("--backoff ", *text, ": the maximum is below the minimum"));
    }
    *policy->mutable_initial_backoff() = DurationProto(*initial);
    *policy->mutable_max_backoff() = DurationProto(*max);
  }
  struct DurationOption {
    const char* name;
    google::protobuf::Duration* into;
  };
  for (const DurationOption& option : {
           DurationOption{"restart-window", policy->mutable_window()},
           DurationOption{"reset-after", policy->mutable_reset_after()},
       }) {
    std::optional<std::string> text = args.Last(option.name);
    if (!text.has_value()) continue;
    absl::StatusOr<absl::Duration> d = ParseDurationText(option.name, *text);
    if (!d.ok()) return d.status();
    *option.into = DurationProto(*d);
  }
  if (!args.Has("restart-window")) policy->clear_window();
  if (!args.Has("reset-after")) policy->clear_reset_after();
  return absl::OkStatus();
}

// INVALID_ARGUMENT for usage errors; other codes when the environment fails us.
absl::StatusOr<v1::StartRequest> MakeStartRequest(const Args& args) {
  v1::StartRequest request;
  request.set_target(args.operands[0]);
  for (size_t i = 1; i < args.operands.size(); ++i) request.add_args(args.operands[i]);
  if (std::optional<std::string> name = args.Last("name")) request.set_name(*name);
  request.set_daemon(args.Has("daemon"));
  for (const std::string& entry : args.All("env")) request.add_env(entry);
  for (const std::string& entry : args.All("kwarg")) {
    size_t eq = entry.find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("invalid --kwarg \"", entry, "\" (expected KEY=VALUE)"));
    }
    auto [it, inserted] =
        request.mutable_kwargs()->insert({entry.substr(0, eq), entry.substr(eq + 1)});
    if (!inserted) {
      return absl::InvalidArgumentError(absl::StrCat("--kwarg ", it->first, " given twice"));
    }
  }
  // The daemon has its own working directory; resolve here what the user meant from theirs.
  std::error_code ec;
  std::filesystem::path here = std::filesystem::current_path(ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot get the current directory: ", ec.message()));
  }
  std::filesystem::path cwd = here;
  if (std::optional<std::string> given = args.Last("cwd")) {
    if (given->empty()) return absl::InvalidArgumentError("--cwd must not be empty");
    cwd = (here / *given).lexically_normal();
    // "dir/.." normalizes to "parent/"; keep the spelling a user would type.
    if (!cwd.has_filename() && cwd != cwd.root_path()) cwd = cwd.parent_path();
  }
  request.set_cwd(cwd.string());
  if (std::optional<std::string> user = args.Last("user")) request.set_user(*user);
  if (std::optional<std::string> group = args.Last("group")) request.set_group(*group);
  if (absl::Status s = AddRestartPolicy(args, request); !s.ok()) return s;
  request.set_notify(args.Has("notify"));
  request.set_wait_ready(args.Has("wait-ready"));
  struct DurationOption {
    const char* name;
    google::protobuf::Duration* into;
  };
  for (const DurationOption& option : {
           DurationOption{"ready-timeout", request.mutable_ready_timeout()},
           DurationOption{"watchdog", request.mutable_watchdog()},
       }) {
    std::optional<std::string> text = args.Last(option.name);
    if (!text.has_value()) continue;
    absl::StatusOr<absl::Duration> d = ParseSeconds(option.name, *text);
    if (!d.ok()) return d.status();
    *option.into = DurationProto(*d);
  }
  if (!args.Has("ready-timeout")) request.clear_ready_timeout();
  if (!args.Has("watchdog")) request.clear_watchdog();
  if (request.has_ready_timeout() && !request.wait_ready()) {
    return absl::InvalidArgumentError("--ready-timeout needs --wait-ready");
  }
  return request;
}

int StartFromArgs(Cli& cli, const Command& command, const Args& args, v1::StartRequest* request) {
  absl::StatusOr<v1::StartRequest> made = MakeStartRequest(args);
  if (!made.ok()) {
    if (absl::IsInvalidArgument(made.status())) {
      return cli.UsageError(&command, made.status().message());
    }
    return cli.Fail(made.status());
  }
  *request = *std::move(made);
  return kExitOk;
}

int CmdStart(Cli& cli, const Command& command, const Args& args) {
  v1::StartRequest request;
  if (int rc = StartFromArgs(cli, command, args, &request); rc != kExitOk) return rc;
  absl::StatusOr<Client*> client = cli.client();
  if (!client.ok()) return cli.Fail(client.status());
  absl::StatusOr<v1::Process> process = (*client)->Start(request);
  if (!process.ok()) return cli.Fail(process.status());
  if (cli.json()) {
    cli.MaybePrintJson(*process);
  } else {
    cli.out() << process->id() << std::endl;
  }
  return kExitOk;
}

// Blocks signals in the calling thread (and so in every thread it starts) for its lifetime.
// On the way out, signals of the set that arrived meanwhile are discarded: the work they
// would have interrupted is done.
class ScopedSignalBlock {
 public:
  explicit ScopedSignalBlock(std::initializer_list<int> signals) {
    sigemptyset(&set_);
    for (int sig : signals) sigaddset(&set_, sig);
    pthread_sigmask(SIG_BLOCK, &set_, &old_);
  }
  ~ScopedSignalBlock() {
    sigset_t drain;
    sigemptyset(&drain);
    for (int sig = 1; sig < NSIG; ++sig) {
      if (sigismember(&set_, sig) == 1 && sigismember(&old_, sig) == 0) sigaddset(&drain, sig);
    }
    const timespec zero = {};
    while (sigtimedwait(&drain, nullptr, &zero) > 0) {
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  ScopedSignalBlock(const ScopedSignalBlock&) = delete;
  ScopedSignalBlock& operator=(const ScopedSignalBlock&) = delete;

  const sigset_t& set() const { return set_; }

 private:
  sigset_t set_;
  sigset_t old_;
};

// Waits for the blocked signals of `block` in a thread of its own and calls `on_signal` with
// each signal and how many have arrived so far. Stop() ends the thread.
class SignalWatcher {
 public:
  SignalWatcher(const ScopedSignalBlock& block, std::function<void(int sig, int count)> on_signal)
      : set_(block.set()), thread_([this, on_signal = std::move(on_signal)] {
          int count = 0;
          for (;;) {
            int sig = 0;
            if (sigwait(&set_, &sig) != 0 || stopping_.load()) return;
            on_signal(sig, ++count);
          }
        }) {}
  ~SignalWatcher() { Stop(); }
  SignalWatcher(const SignalWatcher&) = delete;
  SignalWatcher& operator=(const SignalWatcher&) = delete;

  void Stop() {
    if (!thread_.joinable()) return;
    stopping_.store(true);
    // Wake sigwait with a signal aimed at this thread alone; it sees stopping_ and returns.
    for (int sig = 1; sig < NSIG; ++sig) {
      if (sigismember(&set_, sig) == 1) {
        pthread_kill(thread_.native_handle(), sig);
        break;
      }
    }
    thread_.join();
  }

 private:
  const sigset_t set_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

int CmdRun(Cli& cli, const Command& command, const Args& args) {
  v1::StartRequest request;
  if (int rc = StartFromArgs(cli, command, args, &request); rc != kExitOk) return rc;

  // Blocked before the client exists, so gRPC's threads inherit the mask and the signals
  // reach only the watcher below.
  ScopedSignalBlock block({SIGINT, SIGTERM, SIGHUP});
  absl::StatusOr<Client*> connected = cli.client();
  if (!connected.ok()) return cli.Fail(connected.status());
  Client* client = *connected;
  // A session makes this command the parent of a --daemon worker: if the command is killed or
  // loses the daemon, the worker is terminated instead of left behind. Inside a worker, the
  // worker itself is the parent, with the same effect. Other workers outlive their parent
  // anyway, and start without the session's round trip.
  std::unique_ptr<Session> session;
  if (request.daemon() && client->credentials().key_id == kAdminKeyId) {
    absl::StatusOr<std::unique_ptr<Session>> opened = client->OpenSession();
    if (!opened.ok()) return cli.Fail(opened.status());
    session = *std::move(opened);
    request.set_session(session->id());
  }

  std::mutex err_mu;  // the worker's stderr and our own messages share cli.err()
  // First SIGTERM with the daemon's grace, then SIGKILL; a third signal stops waiting. The
  // calls run in threads of their own so that the watcher stays responsive to the user even
  // when the daemon is not answering; their errors show up in the Run. Signals that arrive
  // before the worker has started wait, blocked, for the watcher.
  std::vector<std::thread> terminators;  // touched by the watcher thread only, until Stop()
  std::optional<SignalWatcher> watcher;
  auto on_started = [&](const v1::Process& started) {
    watcher.emplace(block, [&, id = started.id()](int sig, int count) {
      if (count > 2) {
        std::lock_guard<std::mutex> lock(err_mu);
        cli.err() << "proctor: interrupted; process " << id << " may still be running"
                  << std::endl;
        cli.out().flush();
        std::_Exit(128 + sig);
      }
      terminators.emplace_back([client, id, count] {
        v1::TerminateRequest terminate;
        terminate.set_id(id);
        terminate.set_signal(count == 1 ? SIGTERM : SIGKILL);
        terminate.set_wait(false);
        (void)client->Terminate(terminate);
      });
    });
  };
  auto on_output = [&](v1::Stream stream, std::string_view data) {
    std::unique_lock<std::mutex> lock;
    std::ostream* to = &cli.out();
    if (stream == v1::STREAM_STDERR) {
      lock = std::unique_lock<std::mutex>(err_mu);
      to = &cli.err();
    }
    to->write(data.data(), static_cast<std::streamsize>(data.size()));
    to->flush();
  };

  absl::StatusOr<v1::Process> exited = client->Run(request, on_output, on_started);
  if (watcher.has_value()) watcher->Stop();
  for (std::thread& t : terminators) t.join();
  if (!exited.ok()) return cli.Fail(exited.status());
  return JoinExitStatus(*exited);
}

int CmdJoin(Cli& cli, const Command& command, const Args& args) {
  absl::StatusOr<uint64_t> id = ParseId(args.operands[0], "process id");
  if (!id.ok()) return cli.UsageError(&command, id.status().message());
  std::optional<absl::Duration> timeout;
  if (std::optional<std::string> text = args.Last("timeout")) {
    absl::StatusOr<absl::Duration> parsed = ParseSeconds("timeout", *text);
    if (!parsed.ok()) return cli.UsageError(&command, parsed.status().message());
    timeout = *parsed;
  }
  absl::StatusOr<Client*> client = cli.client();
  if (!client.ok()) return cli.Fail(client.status());
  absl::StatusOr<v1::Process> process = (*client)->Join(*id, timeout);
  if (!process.ok()) return cli.Fail(process.status());
  cli.MaybePrintJson(*process);
  return JoinExitStatus(*process);
}

int Terminate(Cli& cli, const Command& command, const Args& args, int signal) {
  absl::StatusOr<uint64_t> id = ParseId(args.operands[0], "process id");
  if (!id.ok()) return cli.UsageError(&command, id.status().message());
  v1::TerminateRequest request;
  request.set_id(*id);
  request.set_signal(signal);
  if (std::optional<std::string> text = args.Last("grace")) {
    absl::StatusOr<absl::Duration> grace = ParseSeconds("grace", *text);
    if (!grace.ok()) return cli.UsageError(&command, grace.status().message());
    absl::Duration rest;
    request.mutable_grace()->set_seconds(absl::IDivDuration(*grace, absl::Seconds(1), &rest));
    request.mutable_grace()->set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(rest)));
  }
  if (args.Has("no-wait")) request.set_wait(false);
  absl::StatusOr<Client*> client = cli.client();
  if (!client.ok()) return cli.Fail(client.status());
  absl::StatusOr<v1::Process> process = (*client)->Terminate(request);
  if (!process.ok()) return cli.Fail(process.status());
  cli.MaybePrintJson(*process);
  return kExitOk;
}

int CmdTerminate(Cli& cli, const Command& command, const Args& args) {
  int signal = SIGTERM;
  if (std::optional<std::string> text = args.Last("signal")) {
    absl::StatusOr<int> parsed = ParseSignal(*text);
    if (!parsed.ok()) return cli.UsageError(&command, parsed.status().message());
    signal = *parsed;
  }
  return Terminate(cli, command, args, signal);
}

int CmdKill(Cli& cli, const Command& command, const Args& args) {
  return Terminate(cli, command, args, SIGKILL);
}

int CmdStatus(Cli& cli, const Command& command, const Args& args) {
  absl::StatusOr<uint64_t> id = ParseId(args.operands[0], "process id");
  if (!id.ok()) return cli.UsageError(&command, id.status().message());
  absl::StatusOr<Client*> client = cli.client();
  if (!client.ok()) return cli.Fail(client.status());
  absl::StatusOr<v1::Process> process = (*client)->Status(*id);
  if (!process.ok()) return cli.Fail(process.status());
  if (cli.json()) {
    cli.MaybePrintJson(*process);
  } else {
    cli.out() << ProcessTable({*process}) << std::flush;
  }
  return kExitOk;
}

int CmdPs(Cli& cli, const Command& command, const Args& args) {
  v1::StatusRequest filter;
  if (std::optional<std::string> name = args.Last("name")) filter.set_name(*name);
  if (std::optional<std::string> text = args.Last("parent")) {
    absl::StatusOr<uint64_t> parent = ParseId(*text, "parent id");
    if (!parent.ok()) return cli.UsageError(&command, parent.status().message());
    filter.set_parent_id(*parent);
  }
  absl::StatusOr<Client*> client = cli.client();
  if (!client.ok()) return cli.Fail(client.status());
  absl::StatusOr<std::vector<v1::Process>> processes = (*client)->List(filter);
  if (!processes.ok()) return cli.Fail(processes.status());
  if (!args.Has("all")) {
    // What lives: running, or waiting to run again.
    std::erase_if(*processes, [](const v1::Process& p) {
      return p.state() != v1::STATE_RUNNING && p.state() != v1::STATE_BACKOFF;
    });
  }
  if (cli.json()) {
    // One record per line, as `status --json` prints it, rather than Json's own layout.
    std::vector<std::string> objects;
    for (const v1::Process& p : *processes) objects.push_back(ProcessJson(p));
    cli.out() << (objects.empty() ? "[]"
                                  : absl::StrCat("[\n", absl::StrJoin(objects, ",\n"), "\n]"))
              << std::endl;
  } else if (args.Has("tree")) {
    cli.out() << ProcessTree(*processes) << std::flush;
  } else {
    cli.out() << ProcessTable(*processes) << std::flush;
  }
  return kExitOk;
}

int CmdLogs(Cli& cli, const Command& command, const Args& args) {
  absl::StatusOr<uint64_t> id = ParseId(args.operands[0], "process id");
  if (!id.ok()) return cli.UsageError(&command, id.status().message());
  v1::LogsRequest request;
  request.set_id(*id);
  request.set_stream(args.Has("stderr") ? v1::STREAM_STDERR : v1::STREAM_STDOUT);
  request.set_follow(args.Has("follow"));
  if (std::optional<std::string> text = args.Last("tail")) {
    absl::StatusOr<uint64_t> tail = ParseId(*text, "--tail byte count");
    if (!tail.ok() || *tail > static_cast<uint64_t>(INT64_MAX)) {
      return cli.UsageError(
          &command, absl::StrCat("invalid --tail \"", *text, "\" (expected a number of bytes)"));
    }
    request.set_tail_bytes(static_cast<int64_t>(*tail));
  }
  absl::StatusOr<Client*> client = cli.client();
  if (!client.ok()) return cli.Fail(client.status());
  absl::Status status = (*client)->Logs(request, [&](std::string_view data) {
    cli.out().write(data.data(), static_cast<std::streamsize>(data.size()));
    cli.out().flush();
  });
  if (!status.ok()) return cli.Fail(status);
  return kExitOk;
}

int CmdRelease(Cli& cli, const Command& command, const Args& args) {
  absl::StatusOr<uint64_t> id = ParseId(args.operands[0], "process id");
  if (!id.ok()) return cli.UsageError(&command, id.status().message());
  absl::StatusOr<Client*> client = cli.client();
  if (!client.ok()) return cli.Fail(client.status());
  if (absl::Status status = (*client)->Release(*id); !status.ok()) return cli.Fail(status);
  return kExitOk;
}

// Ends `events` without --follow when it takes too long: requests `stop` once `limit` has
// passed, or once `quiet` has passed without an event (Event() tells it of each). An infinite
// duration never passes.
class ListingTimer {
 public:
  enum class Outcome { kRunning, kLimit, kQuiet };

  ListingTimer(std::stop_source stop, absl::Duration limit, absl::Duration quiet)
      : end_(absl::Now() + limit),
        quiet_(quiet),
        last_event_(absl::Now()),
        thread_([this, stop]() mutable { Run(stop); }) {}
  ~ListingTimer() {
    {
      absl::MutexLock lock(&mu_);
      over_ = true;
    }
    thread_.join();
  }
  ListingTimer(const ListingTimer&) = delete;
  ListingTimer& operator=(const ListingTimer&) = delete;

  void Event() {
    absl::MutexLock lock(&mu_);
    last_event_ = absl::Now();
  }
  Outcome outcome() {
    absl::MutexLock lock(&mu_);
    return outcome_;
  }

 private:
  void Run(std::stop_source& stop) {
    absl::MutexLock lock(&mu_);
    while (!over_) {
      const absl::Time now = absl::Now();
      if (now >= end_) {
        outcome_ = Outcome::kLimit;
      } else if (now >= last_event_ + quiet_) {
        outcome_ = Outcome::kQuiet;
      }
      if (outcome_ != Outcome::kRunning) {
        stop.request_stop();
        return;
      }
      mu_.AwaitWithDeadline(absl::Condition(&over_), std::min(end_, last_event_ + quiet_));
    }
  }

  absl::Mutex mu_;
  const absl::Time end_;
  const absl::Duration quiet_;
  absl::Time last_event_ ABSL_GUARDED_BY(mu_);
  bool over_ ABSL_GUARDED_BY(mu_) = false;
  Outcome outcome_ ABSL_GUARDED_BY(mu_) = Outcome::kRunning;
  std::thread thread_;
};

// How long `events` without --follow waits for more under a worker's key: the daemon shows
// such a key only its subtree, so the event at the listing's cursor may never come.
constexpr absl::Duration kWorkerListingQuiet = absl::Seconds(1);

// What `events` asks for: INVALID_ARGUMENT (a usage error) when an option's value is wrong.
struct EventsQuery {
  std::optional<uint64_t> since;
  absl::flat_hash_set<uint64_t> ids;  // empty: any
  absl::flat_hash_set<int> types;     // v1::EventType values; empty: any

  static absl::StatusOr<EventsQuery> FromArgs(const Args& args) {
    EventsQuery query;
    if (std::optional<std::string> text = args.Last("since")) {
      absl::StatusOr<uint64_t> since = ParseId(*text, "--since cursor");
      if (!since.ok()) return since.status();
      query.since = *since;
    }
    for (const std::string& text : args.All("id")) {
      absl::StatusOr<uint64_t> id = ParseId(text, "process id");
      if (!id.ok()) return id.status();
      query.ids.insert(*id);
    }
    for (const std::string& text : args.All("type")) {
      auto known = std::find_if(std::begin(kEventTypeNames), std::end(kEventTypeNames),
                                [&](const EventTypeName& known) { return known.name == text; });
      if (known == std::end(kEventTypeNames)) {
        std::vector<absl::string_view> names;
        for (const EventTypeName& name : kEventTypeNames) names.push_back(name.name);
        return absl::InvalidArgumentError(absl::StrCat(
            "invalid --type \"", text, "\" (expected ", absl::StrJoin(names, ", "), ")"));
      }
      query.types.insert(known->type);
    }
    return query;
  }

  // The daemon's filter for the same events.
  void AddTo(v1::WatchRequest& request) const {
    request.mutable_ids()->Add(ids.begin(), ids.end());
    for (int type : types) request.add_types(static_cast<v1::EventType>(type));
  }

  bool Matches(const v1::Event& e) const {
    return (types.empty() || types.contains(e.type())) &&
           (ids.empty() || (e.has_process() && ids.contains(e.process().id())));
  }
};

// The oldest cursor proctord keeps, from its refusal of an older one: OUT_OF_RANGE "cursor C
// is older than the oldest kept (N); ...". Nothing for any other status.
std::optional<uint64_t> OldestKept(const absl::Status& status) {
  constexpr absl::string_view kOldest = "is older than the oldest kept (";
  if (!absl::IsOutOfRange(status)) return std::nullopt;
  const size_t at = status.message().find(kOldest);
  if (at == absl::string_view::npos) return std::nullopt;
  absl::string_view rest = status.message().substr(at + kOldest.size());
  uint64_t oldest = 0;
  if (!absl::SimpleAtoi(rest.substr(0, rest.find(')')), &oldest)) return std::nullopt;
  return oldest;
}

int CmdEvents(Cli& cli, const Command& command, const Args& args) {
  absl::StatusOr<EventsQuery> query = EventsQuery::FromArgs(args);
  if (!query.ok()) return cli.UsageError(&command, query.status().message());
  const bool follow = args.Has("follow");

  // Blocked before the client exists, so gRPC's threads inherit the mask and the signals
  // reach only the watcher below.
  std::optional<ScopedSignalBlock> block;
  if (follow) block.emplace(std::initializer_list<int>{SIGINT, SIGTERM});
  absl::StatusOr<Client*> connected = cli.client();
  if (!connected.ok()) return cli.Fail(connected.status());
  Client* client = *connected;

  // Without --follow: the events up to the cursor a listing reflects now (`end`). They are
  // filtered here rather than by the daemon, so that the event at that cursor arrives and
  // ends the listing whatever it is.
  v1::WatchRequest request;
  std::optional<uint64_t> end;
  if (follow) {
    if (query->since.has_value()) request.set_since(*query->since);
    query->AddTo(request);
  } else {
    uint64_t now = 0;
    absl::StatusOr<std::vector<v1::Process>> listed = client->List(v1::StatusRequest{}, &now);
    if (!listed.ok()) return cli.Fail(listed.status());
    request.set_since(query->since.value_or(0));
    end = now;
  }

  // The header for people goes out with the first event, or at the end of a listing: an
  // error leaves stdout empty.
  bool header_due = !cli.json();
  auto print_header = [&] {
    if (header_due) cli.out() << EventHeader() << std::endl;
    header_due = false;
  };
  if (end == request.since()) {
    print_header();
    return kExitOk;
  }
  std::stop_source stop;
  std::atomic<bool> interrupted{false};
  std::optional<SignalWatcher> watcher;
  std::optional<ListingTimer> timer;
  if (follow) {
    watcher.emplace(*block, [&](int, int) {
      interrupted.store(true);
      stop.request_stop();
    });
  } else {
    const bool admin = client->credentials().key_id == kAdminKeyId;
    timer.emplace(stop, cli.client_options().call_timeout,
                  admin ? absl::InfiniteDuration() : kWorkerListingQuiet);
  }
  bool reached = false;  // the listing's end
  absl::Status status;
  // Listing all that is kept (no --since) from 0 is refused once proctord has let old events
  // go: then from the oldest it keeps, which may move on meanwhile (a few tries).
  for (int tries = end.has_value() && !query->since.has_value() ? 3 : 0;; --tries) {
    status = client->Watch(
        request,
        [&](const v1::Event& e) {
          if (timer.has_value()) timer->Event();
          if (end.has_value() && e.cursor() > *end) {
            reached = true;
            return false;
          }
          if (query->Matches(e)) {
            print_header();
            cli.out() << (cli.json() ? EventJson(e) : EventLine(e)) << std::endl;
          }
          reached = end.has_value() && e.cursor() == *end;
          return !reached;
        },
        stop.get_token());
    std::optional<uint64_t> oldest = OldestKept(status);
    if (tries == 0 || !oldest.has_value() || *oldest <= request.since()) break;
    if (*oldest >= *end) {
      status = absl::OkStatus();
      break;
    }
    request.set_since(*oldest);
  }
  if (watcher.has_value()) watcher->Stop();
  if (interrupted.load() || reached) status = absl::OkStatus();
  if (timer.has_value()) {
    const ListingTimer::Outcome outcome = timer->outcome();
    timer.reset();
    // The stream was cancelled on the timer's account.
    if (absl::IsCancelled(status) && outcome == ListingTimer::Outcome::kQuiet) {
      status = absl::OkStatus();
    } else if (absl::IsCancelled(status) && outcome == ListingTimer::Outcome::kLimit) {
      status = absl::DeadlineExceededError(absl::StrCat(
          "Watch did not answer within ",
          absl::FormatDuration(
              absl::Trunc(cli.client_options().call_timeout, absl::Milliseconds(1)))));
    }
  }
  if (!status.ok()) return cli.Fail(status);
  if (!follow) print_header();
  return kExitOk;
}

// The optional --timeout of the sync commands; a usage error is reported and returned.
std::optional<int> SyncTimeout(Cli& cli, const Command& command, const Args& args,
                               std::optional<absl::Duration>* timeout) {
  std::optional<std::string> text = args.Last("timeout");
  if (!text.has_value()) return std::nullopt;
  absl::StatusOr<absl::Duration> parsed = ParseSeconds("timeout", *text);
  if (!parsed.ok()) return cli.UsageError(&command, parsed.status().message());
  *timeout = *parsed;
  return std::nullopt;
}

// lock and sem: NAME -- CMD [ARG...], held while CMD runs.
int HoldWhileRunning(Cli& cli, const Command& command, const Args& args, v1::SyncKind kind,
                     int64_t value) {
  if (args.operands.size() < 2) {
    return cli.UsageError(&command, args.operands.empty() ? "missing NAME" : "missing CMD");
  }
  std::optional<absl::Duration> timeout;
  if (std::optional<int> rc = SyncTimeout(cli, command, args, &timeout)) return *rc;
  // Blocked before the client exists, so gRPC's threads inherit the mask: these signals
  // reach the watcher, which passes them on to CMD, and the lock is released after CMD ends.
  ScopedSignalBlock block({SIGINT, SIGTERM, SIGHUP});
  absl::StatusOr<Client*> client = cli.client();
  if (!client.ok()) return cli.Fail(client.status());
  // CMD through a pidfd taken while it is our unreaped child: a signal that comes after it
  // was reaped reaches nothing, whatever took its number.
  absl::Mutex child_mu;
  int child_pidfd = -1;
  SignalWatcher watcher(block, [&](int sig, int) {
    absl::MutexLock lock(&child_mu);
    if (child_pidfd >= 0) syscall(SYS_pidfd_send_signal, child_pidfd, sig, nullptr, 0);
  });
  SyncCommandIo io{**client, cli.out(), cli.err(), cli.json()};
  std::vector<std::string> cmd(args.operands.begin() + 1, args.operands.end());
  return HoldAndRun(io, kind, args.operands[0], value, timeout, cmd, [&](pid_t pid) {
    absl::MutexLock lock(&child_mu);
    if (child_pidfd >= 0) close(child_pidfd);
    child_pidfd = pid > 1 ? static_cast<int>(syscall(SYS_pidfd_open, pid, 0)) : -1;
  });
}

int CmdLock(Cli& cli, const Command& command, const Args& args) {
  return HoldWhileRunning(cli, command, args, v1::SYNC_LOCK, 1);
}

int CmdSem(Cli& cli, const Command& command, const Args& args) {
  std::optional<std::string> text = args.Last("value");
  int64_t value = 0;
  if (!text.has_value() || !absl::SimpleAtoi(*text, &value) || value < 1) {
    return cli.UsageError(&command, "--value N is required: the number of holders, 1 or more");
  }
  return HoldWhileRunning(cli, command, args, v1::SYNC_BOUNDED_SEMAPHORE, value);
}

int CmdEvent(Cli& cli, const Command& command, const Args& args) {
  if (args.operands.size() != 2 ||
      (args.operands[0] != "set" && args.operands[0] != "clear" && args.operands[0] != "wait")) {
    return cli.UsageError(&command, "expected set, clear or wait, then NAME");
  }
  std::optional<absl::Duration> timeout;
  if (std::optional<int> rc = SyncTimeout(cli, command, args, &timeout)) return *rc;
  absl::StatusOr<Client*> client = cli.client();
  if (!client.ok()) return cli.Fail(client.status());
  SyncCommandIo io{**client, cli.out(), cli.err(), cli.json()};
  return EventCommand(io, args.operands[0], args.operands[1], timeout);
}

int CmdSync(Cli& cli, const Command& command, const Args& args) {
  const bool ls = args.operands.size() == 1 && args.operands[0] == "ls";
  const bool rm = args.operands.size() == 2 && args.operands[0] == "rm";
  if (!ls && !rm) return cli.UsageError(&command, "expected ls, or rm NAME");
  absl::StatusOr<Client*> client = cli.client();
  if (!client.ok()) return cli.Fail(client.status());
  SyncCommandIo io{**client, cli.out(), cli.err(), cli.json()};
  return ls ? SyncListCommand(io) : SyncRemoveCommand(io, args.operands[1]);
}

int CmdReload(Cli& cli, const Command&, const Args&) {
  absl::StatusOr<Client*> client = cli.client();
  if (!client.ok()) return cli.Fail(client.status());
  absl::StatusOr<v1::ReloadResponse> reply = (*client)->Reload();
  if (!reply.ok()) return cli.Fail(reply.status());
  if (cli.json()) {
    Json json = {{"started", std::vector<std::string>(reply->started().begin(),
                                                      reply->started().end())},
                 {"stopped", std::vector<std::string>(reply->stopped().begin(),
                                                      reply->stopped().end())},
                 {"restarted", std::vector<std::string>(reply->restarted().begin(),
                                                        reply->restarted().end())},
                 {"unchanged", std::vector<std::string>(reply->unchanged().begin(),
                                                        reply->unchanged().end())},
                 {"errors", std::vector<std::string>(reply->errors().begin(),
                                                     reply->errors().end())}};
    cli.out() << Dump(json) << std::endl;
  } else {
    auto line = [&](absl::string_view what,
                    const google::protobuf::RepeatedPtrField<std::string>& names) {
      cli.out() << what << ": " << (names.empty() ? "-" : absl::StrJoin(names, " ")) << "\n";
    };
    line("started", reply->started());
    line("stopped", reply->stopped());
    line("restarted", reply->restarted());
    line("unchanged", reply->unchanged());
    cli.out() << std::flush;
    for (const std::string& error : reply->errors()) cli.err() << "proctor: " << error << "\n";
    cli.err() << std::flush;
  }
  return reply->errors().empty() ? kExitOk : kExitFailure;
}

int CmdServices(Cli& cli, const Command&, const Args&) {
  absl::StatusOr<Client*> client = cli.client();
  if (!client.ok()) return cli.Fail(client.status());
  absl::StatusOr<std::vector<v1::Service>> services = (*client)->ListServices();
  if (!services.ok()) return cli.Fail(services.status());
  if (cli.json()) {
    // One service per line, as `ps --json` prints its records.
    std::vector<std::string> objects;
    for (const v1::Service& s : *services) {
      objects.push_back(Dump({
          {"name", s.name()},
          {"path", s.path()},
          {"state", ServiceState(s)},
          {"error", ValueOrNull(!s.error().empty(), s.error())},
          {"process", s.has_process() ? ProcessObject(s.process()) : Json(nullptr)},
      }));
    }
    cli.out() << (objects.empty() ? "[]"
                                  : absl::StrCat("[\n", absl::StrJoin(objects, ",\n"), "\n]"))
              << std::endl;
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows = {{"NAME", "STATE", "PID", "RESTARTS", "LAST-EXIT"}};
  for (const v1::Service& s : *services) {
    const v1::Process& p = s.process();
    const bool exited = p.has_last_exit() && p.last_exit().has_exitcode();
    rows.push_back({s.name(), ServiceState(s), s.has_process() ? absl::StrCat(p.pid()) : "-",
                    s.has_process() ? absl::StrCat(p.restarts()) : "-",
                    exited ? absl::StrCat(p.last_exit().exitcode()) : "-"});
  }
  cli.out() << Table(rows);
  // Why a service does not run as its file says, under the table.
  for (const v1::Service& s : *services) {
    if (!s.error().empty()) cli.out() << s.name() << ": " << s.error() << "\n";
  }
  cli.out() << std::flush;
  return kExitOk;
}

constexpr OptionSpec kStartOptions[] = {
    {"name", true},          {"daemon", false},        {"env", true},
    {"cwd", true},           {"kwarg", true},          {"user", true},
    {"group", true},         {"restart", true},        {"max-restarts", true},
    {"restart-window", true}, {"backoff", true},       {"reset-after", true},
    {"notify", false},       {"wait-ready", false},    {"ready-timeout", true},
    {"watchdog", true}};
constexpr OptionSpec kJoinOptions[] = {{"timeout", true}};
constexpr OptionSpec kTerminateOptions[] = {{"signal", true}, {"grace", true}, {"no-wait", false}};
constexpr OptionSpec kKillOptions[] = {{"no-wait", false}};
constexpr OptionSpec kPsOptions[] = {
    {"all", false}, {"name", true}, {"parent", true}, {"tree", false}};
constexpr OptionSpec kLogsOptions[] = {{"follow", false}, {"stderr", false}, {"tail", true}};
constexpr OptionSpec kSyncTimeoutOptions[] = {{"timeout", true}};
constexpr OptionSpec kSemOptions[] = {{"value", true}, {"timeout", true}};
constexpr OptionSpec kEventsOptions[] = {
    {"since", true}, {"follow", false}, {"id", true}, {"type", true}};

constexpr Command kCommands[] = {
    {"start",
     "start [--name N] [--daemon] [--env K=V]... [--cwd DIR] [--kwarg K=V]... [--user U "
     "[--group G]] [--restart no|on-failure|always [--max-restarts N] [--restart-window S] "
     "[--backoff MIN..MAX] [--reset-after S]] [--notify] [--wait-ready [--ready-timeout S]] "
     "[--watchdog S] -- TARGET [ARG...]",
     "start a process and print its id", kStartOptions, Operands::kCommand, CmdStart},
    {"run", "run [start options] -- TARGET [ARG...]",
     "start a process, stream its output, wait for it and exit like join", kStartOptions,
     Operands::kCommand, CmdRun},
    {"join", "join ID [--timeout SECONDS]",
     "wait for a process; exit with its exit code, 128+N for signal N, 124 on timeout",
     kJoinOptions, Operands::kId, CmdJoin},
    {"terminate", "terminate ID [--signal NAME|NUMBER] [--grace SECONDS] [--no-wait]",
     "signal a process and what runs below it (default TERM); KILL after the grace",
     kTerminateOptions, Operands::kId, CmdTerminate},
    {"kill", "kill ID [--no-wait]", "terminate with SIGKILL", kKillOptions, Operands::kId, CmdKill},
    {"status", "status ID", "show one process", {}, Operands::kId, CmdStatus},
    {"ps", "ps [--all] [--tree] [--name N] [--parent ID]",
     "list processes (only running ones without --all)", kPsOptions, Operands::kNone, CmdPs},
    {"logs", "logs ID [--follow] [--stderr] [--tail BYTES]",
     "print a process's captured stdout (or stderr)", kLogsOptions, Operands::kId, CmdLogs},
    {"release",
     "release ID",
     "forget an ended process and its captured output",
     {},
     Operands::kId,
     CmdRelease},
    {"lock", "lock NAME [--timeout SECONDS] -- CMD [ARG...]",
     "run CMD holding the Lock NAME (made if missing), like flock(1); released when CMD ends",
     kSyncTimeoutOptions, Operands::kAny, CmdLock,
     "\n"
     "NAME is a name, or an object's id. The lock is released when CMD ends however it ends,\n"
     "and also when this command dies (SIGKILL included). SIGINT, SIGTERM and SIGHUP are\n"
     "passed on to CMD. Exit status: CMD's (128+N for signal N), 124 when --timeout passed\n"
     "before the lock was acquired, 127 when CMD cannot be run, 1 when proctord failed.\n"},
    {"sem", "sem NAME --value N [--timeout SECONDS] -- CMD [ARG...]",
     "run CMD holding one unit of the BoundedSemaphore NAME (of N units, made if missing)",
     kSemOptions, Operands::kAny, CmdSem},
    {"event", "event set|clear|wait NAME [--timeout SECONDS]",
     "set or clear the Event NAME (made if missing), or wait until it is set (124 on timeout)",
     kSyncTimeoutOptions, Operands::kAny, CmdEvent},
    {"sync", "sync ls | sync rm NAME",
     "list the sync objects in reach (ID KIND NAME OWNER VALUE WAITING HOLDERS), or free one",
     {}, Operands::kAny, CmdSync},
    {"reload", "reload",
     "apply proctord's services directory now (as SIGHUP does); exit 1 if a file has errors",
     {}, Operands::kNone, CmdReload,
     "\n"
     "Prints the services started (new files), stopped (removed files), restarted (changed\n"
     "files) and left unchanged, one line each, and each file that cannot be used on stderr\n"
     "(\"proctor: PATH: field: what is wrong\"); the others still apply. With --json, one\n"
     "object: {\"started\", \"stopped\", \"restarted\", \"unchanged\", \"errors\"}.\n"},
    {"services", "services",
     "list the declared services: NAME STATE PID RESTARTS LAST-EXIT, then their errors", {},
     Operands::kNone, CmdServices,
     "\n"
     "STATE is the service's process's (running, backoff, exited, lost), or waiting (for the\n"
     "services it is after) or failed before it has one. LAST-EXIT is how its last run ended\n"
     "(-N for signal N). With --json, an array of {\"name\", \"path\", \"state\", \"error\",\n"
     "\"process\" (as status --json prints it, or null)}, one per line.\n"},
    {"events", "events [--since CURSOR] [--follow] [--id ID]... [--type TYPE]...",
     "print what happens to processes and sessions, each event with its cursor", kEventsOptions,
     Operands::kNone, CmdEvents,
     "\n"
     "Without --follow: the events after --since CURSOR (default 0: all that proctord still\n"
     "keeps) up to the cursor of a listing made now, then exit. With --follow: the events after\n"
     "--since CURSOR (default: from now), then live ones until interrupted (SIGINT or SIGTERM:\n"
     "exit 0) or until proctord ends the stream (exit 1).\n"
     "\n"
     "  --id ID      only events of this process (may be given several times)\n"
     "  --type TYPE  only events of this type (may be given several times): started, exited,\n"
     "               terminate-requested, released, evicted, session-opened, session-ended\n"
     "\n"
     "One line per event under a header: CURSOR TIME TYPE ID NAME STATE EXITCODE, the record\n"
     "as it stands after the event (a session event shows session:N as ID). With --json, one\n"
     "object per line: {\"cursor\", \"type\", \"time\" (RFC 3339), \"process\" (as status --json\n"
     "prints it; absent for session events), \"session\" (absent when 0)}.\n"
     "A CURSOR older than what proctord keeps, or ahead of its last event, is an error\n"
     "(exit 1). Without --follow the whole listing is due within --call-timeout; under a\n"
     "worker's key, which sees only its own subtree, it also ends after a second without an\n"
     "event.\n"},
};

// Options before the subcommand that say how to reach and authenticate to the daemon (besides
// --json, which every command has); each sets one field of ClientOptions.
struct GlobalOption {
  absl::string_view name;
  std::string ClientOptions::*text = nullptr;       // for options with a value
  bool ClientOptions::*flag = nullptr;              // for flags
  absl::Duration ClientOptions::*seconds = nullptr;  // for a positive number of seconds
};

constexpr GlobalOption kGlobalOptions[] = {
    {"address", &ClientOptions::address},
    {"authkey-file", &ClientOptions::authkey_file},
    {"tls-ca", &ClientOptions::tls_ca_file},
    {"tls-cert", &ClientOptions::tls_cert_file},
    {"tls-key", &ClientOptions::tls_key_file},
    {"insecure-tcp", nullptr, &ClientOptions::insecure_tcp},
    {"call-timeout", nullptr, nullptr, &ClientOptions::call_timeout},
};

// The same, as ParseArgs reads them.
constexpr auto kGlobalOptionSpecs = [] {
  std::array<OptionSpec, std::size(kGlobalOptions)> specs{};
  for (size_t i = 0; i < specs.size(); ++i) {
    specs[i] = {kGlobalOptions[i].name, kGlobalOptions[i].flag == nullptr};
  }
  return specs;
}();

// What comes before the subcommand, parsed like one: COMMAND ends the options.
constexpr Command kGlobal = {
    "", "[GLOBAL OPTIONS] COMMAND [ARGS]", "", kGlobalOptionSpecs, Operands::kCommand, nullptr};

// INVALID_ARGUMENT (a usage error) when a value does not fit its option.
absl::StatusOr<ClientOptions> MakeClientOptions(const Args& global) {
  ClientOptions options;
  for (const GlobalOption& option : kGlobalOptions) {
    std::optional<std::string> value = global.Last(option.name);
    if (option.flag != nullptr) {
      options.*(option.flag) = global.Has(option.name);
    } else if (!value.has_value()) {
      continue;
    } else if (option.seconds != nullptr) {
      absl::StatusOr<absl::Duration> seconds = ParseSeconds(option.name, *value);
      if (!seconds.ok()) return seconds.status();
      if (*seconds == absl::ZeroDuration()) {
        return absl::InvalidArgumentError(absl::StrCat("--", option.name, " must be positive"));
      }
      options.*(option.seconds) = *seconds;
    } else {
      options.*(option.text) = *std::move(value);
    }
  }
  return options;
}

const Command* FindCommand(absl::string_view name) {
  for (const Command& command : kCommands) {
    if (command.name == name) return &command;
  }
  return nullptr;
}

void PrintUsage(std::ostream& out) {
  out << "usage: proctor " << kGlobal.synopsis
      << "\n"
         "\n"
         "Runs programs as worker processes of proctord, like Python's multiprocessing.Process.\n"
         "\n"
         "Commands:\n";
  for (const Command& command : kCommands) {
    out << "  " << command.synopsis << "\n      " << command.summary << "\n";
  }
  out << "  help [COMMAND]\n"
         "\n"
         "Global options:\n"
         "  --address ADDR       unix:/path or host:port of proctord\n"
         "                       (default: $PROCTOR_ADDRESS, else "
      << DefaultAddress()
      << ")\n"
         "  --json               print records as JSON (start, join, terminate, kill, status,\n"
         "                       ps, services), events as JSON (events) and reload's outcome\n"
         "  --authkey-file PATH  the key to prove (default: $PROCTOR_AUTHKEY_FILE, a worker's\n"
         "                       $PROCTOR_AUTHKEY, else the daemon's default key file)\n"
         "  --tls-ca PATH        CA that signs the daemon's TLS certificate, for host:port\n"
         "                       (default: $PROCTOR_TLS_CA, else the system's roots)\n"
         "  --tls-cert PATH      client certificate, for daemons that require one\n"
         "  --tls-key PATH       its private key ($PROCTOR_TLS_CERT, $PROCTOR_TLS_KEY)\n"
         "  --insecure-tcp       talk plain TCP to host:port (the authkey still applies)\n"
         "  --call-timeout SECONDS\n"
         "                       how long proctord has to answer a call (default 30); a longer\n"
         "                       join is made of polls this long; logs --follow and\n"
         "                       events --follow have no limit\n"
         "\n"
         "Exit status: 0 on success, 1 when proctord or the call failed, 2 for usage errors;\n"
         "join and run exit like the process (128+N for signal N, 124 on join timeout).\n"
      << std::flush;
}

// ---------------------------------------------------------------------------------------------
// Shell completion: `proctor __complete CWORD WORD...` (client/cli/completion/proctor.bash)
// prints the words that may stand at WORDS[CWORD] (COMP_CWORD and COMP_WORDS, the program's
// name first), one per line, from the tables above, so that completion follows the commands
// and options as they are. A process id is left to the script, which lists the running ones
// with `proctor ps`: the line "@ids N" asks for them, N being the index of the command in
// WORDS (the words between the program and it are the global options to list them with).
// Nothing is printed where any word would do (a target, a name): the shell completes files.

// Whether `word` is an option of `options` that takes a value, given without "=VALUE".
bool TakesSeparateValue(std::span<const OptionSpec> options, absl::string_view word) {
  if (!absl::StartsWith(word, "--") || absl::StrContains(word, "=")) return false;
  return std::any_of(options.begin(), options.end(), [&](const OptionSpec& option) {
    return option.takes_value && word.substr(2) == option.name;
  });
}

int CmdComplete(std::span<const std::string> args, std::ostream& out) {
  size_t cword = 0;
  if (args.empty() || !absl::SimpleAtoi(args[0], &cword) || cword == 0) return kExitUsage;
  std::span<const std::string> words = args.subspan(1);
  const std::string current = cword < words.size() ? words[cword] : "";
  std::vector<std::string> candidates;
  auto options_of = [&](std::span<const OptionSpec> options) {
    for (const OptionSpec& option : options) candidates.push_back(absl::StrCat("--", option.name));
    candidates.insert(candidates.end(), {"--json", "--help"});
  };

  // Where the words before the current one leave us.
  const Command* command = nullptr;
  size_t command_index = 0;
  bool options_ended = false;
  bool after_value_option = false;
  size_t operands = 0;
  for (size_t i = 1; i < cword && i < words.size(); ++i) {
    const std::string& word = words[i];
    std::span<const OptionSpec> options =
        command != nullptr ? command->options : std::span<const OptionSpec>(kGlobalOptionSpecs);
    if (after_value_option) {
      after_value_option = false;
    } else if (!options_ended && word == "--" && command != nullptr) {
      options_ended = true;
    } else if (!options_ended && absl::StartsWith(word, "-")) {
      after_value_option = TakesSeparateValue(options, word);
    } else if (command == nullptr) {
      command = word == "help" ? nullptr : FindCommand(word);
      command_index = i;
      if (command == nullptr && word != "help") return kExitOk;  // no such command
      if (command == nullptr) {
        // `help COMMAND`: the commands again.
        if (i + 1 == cword) {
          for (const Command& c : kCommands) candidates.emplace_back(c.name);
        }
        break;
      }
    } else {
      ++operands;
      options_ended = options_ended || command->operands == Operands::kCommand;
    }
  }
  if (command_index > 0 && command == nullptr) {
    // After `help`.
  } else if (after_value_option) {
    // The value of an option: anything.
  } else if (command == nullptr) {
    if (absl::StartsWith(current, "-")) {
      options_of(kGlobalOptionSpecs);
    } else {
      for (const Command& c : kCommands) candidates.emplace_back(c.name);
      candidates.emplace_back("help");
    }
  } else if (!options_ended && absl::StartsWith(current, "-")) {
    options_of(command->options);
  } else if (command->operands == Operands::kId && operands == 0) {
    out << "@ids " << command_index << "\n";
    return kExitOk;
  }
  for (const std::string& candidate : candidates) {
    if (absl::StartsWith(candidate, current)) out << candidate << "\n";
  }
  return kExitOk;
}

void PrintCommandHelp(std::ostream& out, const Command& command) {
  out << "usage: proctor " << command.synopsis << "\n  " << command.summary << "\n"
      << command.details << std::flush;
}

}  // namespace

int JoinExitStatus(const v1::Process& process) {
  if (process.state() != v1::STATE_EXITED) return kExitTimeout;
  WaitStatus status = process.signal() != 0 ? WaitStatus::Signaled(process.signal())
                                            : WaitStatus::Exited(process.exitcode());
  return status.shell_status();
}

std::string ProcessJson(const v1::Process& p) { return Dump(ProcessObject(p)); }

std::string EventJson(const v1::Event& e) {
  Json json = {
      {"cursor", e.cursor()},
      {"type", std::string(EventTypeText(e.type()))},
      {"time", JsonTime(e.has_time(), e.time())},
  };
  if (e.has_process()) json["process"] = ProcessObject(e.process());
  if (e.session() != 0) json["session"] = e.session();
  if (e.type() == v1::EVENT_RESTARTING) json["delay"] = JsonSeconds(e.has_delay(), e.delay());
  return Dump(json);
}

std::string ProcessTree(const std::vector<v1::Process>& processes) {
  absl::flat_hash_map<uint64_t, const v1::Process*> by_id;
  for (const v1::Process& p : processes) by_id[p.id()] = &p;
  absl::flat_hash_map<uint64_t, std::vector<const v1::Process*>> children;
  std::vector<const v1::Process*> roots;
  for (const v1::Process& p : processes) {
    if (p.parent_case() == v1::Process::kParentId && by_id.contains(p.parent_id())) {
      children[p.parent_id()].push_back(&p);
    } else {
      roots.push_back(&p);
    }
  }
  std::string out;
  std::function<void(const v1::Process&, const std::string&, const std::string&)> draw =
      [&](const v1::Process& p, const std::string& lead, const std::string& indent) {
        std::string exit = p.has_exitcode() ? absl::StrCat(" exit ", p.exitcode()) : "";
        absl::StrAppend(&out, lead, p.id(), " ", p.name(), " (pid ", p.pid(), ", ",
                        StateOf(p), exit,
                        p.daemon() ? ", daemon" : "", ") ", p.target(), "\n");
        // find(), not []: inserting an empty entry for a leaf could move the vectors that
        // callers up the recursion are still walking.
        auto found = children.find(p.id());
        if (found == children.end()) return;
        const std::vector<const v1::Process*>& kids = found->second;
        for (size_t i = 0; i < kids.size(); ++i) {
          bool last = i + 1 == kids.size();
          draw(*kids[i], indent + (last ? "└─ " : "├─ "), indent + (last ? "   " : "│  "));
        }
      };
  for (const v1::Process* root : roots) draw(*root, "", "");
  return out;
}

std::string ProcessTable(const std::vector<v1::Process>& processes) {
  std::vector<std::vector<std::string>> rows = {
      {"ID", "NAME", "PID", "STATE", "EXITCODE", "DAEMON", "PARENT", "TARGET"}};
  for (const v1::Process& p : processes) {
    std::vector<std::string> command = {DisplayArg(p.target())};
    for (const std::string& arg : p.args()) command.push_back(DisplayArg(arg));
    rows.push_back({absl::StrCat(p.id()), p.name(), absl::StrCat(p.pid()), StateOf(p),
                    p.has_exitcode() ? absl::StrCat(p.exitcode()) : "-", p.daemon() ? "yes" : "no",
                    ParentText(p), absl::StrJoin(command, " ")});
  }
  return Table(rows);
}

namespace {

int Run(const std::vector<std::string>& argv, std::ostream& out, std::ostream& err,
        bool offline) {
  if (!argv.empty() && argv[0] == "__complete") {
    return CmdComplete(std::span<const std::string>(argv).subspan(1), out);
  }
  Cli cli(out, err, offline);
  absl::StatusOr<Args> global = ParseArgs(kGlobal, argv);
  if (!global.ok()) return cli.UsageError(nullptr, global.status().message());
  if (global->help) {
    PrintUsage(out);
    return kExitOk;
  }
  cli.set_json(global->json);
  absl::StatusOr<ClientOptions> options = MakeClientOptions(*global);
  if (!options.ok()) return cli.UsageError(nullptr, options.status().message());
  cli.client_options() = *std::move(options);

  std::span<const std::string> args(global->operands);
  const std::string& name = args[0];
  if (name == "help") {
    if (args.size() == 1) {
      PrintUsage(out);
      return kExitOk;
    }
    const Command* command = FindCommand(args[1]);
    if (command == nullptr) {
      return cli.UsageError(nullptr, absl::StrCat("unknown command \"", args[1], "\""));
    }
    PrintCommandHelp(out, *command);
    return kExitOk;
  }
  const Command* command = FindCommand(name);
  if (command == nullptr) {
    return cli.UsageError(nullptr, absl::StrCat("unknown command \"", name, "\""));
  }
  absl::StatusOr<Args> parsed = ParseArgs(*command, args.subspan(1));
  if (!parsed.ok()) return cli.UsageError(command, parsed.status().message());
  if (parsed->help) {
    PrintCommandHelp(out, *command);
    return kExitOk;
  }
  if (parsed->json) cli.set_json(true);
  return command->handler(cli, *command, *parsed);
}

}  // namespace

int RunCli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  return Run(args, out, err, /*offline=*/false);
}

int CheckCli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  return Run(args, out, err, /*offline=*/true);
}

int RunCli(int argc, char** argv) {
  std::vector<std::string> args(argv + std::min(argc, 1), argv + argc);
  return RunCli(args, std::cout, std::cerr);
}

}  // namespace proctor
