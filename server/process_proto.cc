#include "server/process_proto.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/time_util.h"

namespace proctor {
namespace {

using google::protobuf::util::TimeUtil;

v1::RestartPolicy::Mode ModeToProto(RestartPolicy::Mode mode) {
  switch (mode) {
    case RestartPolicy::Mode::kNo:
      return v1::RestartPolicy::NO;
    case RestartPolicy::Mode::kOnFailure:
      return v1::RestartPolicy::ON_FAILURE;
    case RestartPolicy::Mode::kAlways:
      return v1::RestartPolicy::ALWAYS;
  }
  return v1::RestartPolicy::MODE_UNSPECIFIED;
}

RestartPolicy::Mode ModeFromProto(v1::RestartPolicy::Mode mode) {
  switch (mode) {
    case v1::RestartPolicy::ON_FAILURE:
      return RestartPolicy::Mode::kOnFailure;
    case v1::RestartPolicy::ALWAYS:
      return RestartPolicy::Mode::kAlways;
    default:
      return RestartPolicy::Mode::kNo;
  }
}

void RestartToProto(const RestartPolicy& policy, v1::RestartPolicy* out) {
  out->set_mode(ModeToProto(policy.mode));
  out->set_max_restarts(policy.max_restarts);
  if (policy.window.has_value()) *out->mutable_window() = ToDurationProto(*policy.window);
  *out->mutable_initial_backoff() = ToDurationProto(policy.initial_backoff);
  *out->mutable_max_backoff() = ToDurationProto(policy.max_backoff);
  *out->mutable_reset_after() = ToDurationProto(policy.reset_after);
}

absl::Status NotNegative(absl::string_view field, absl::Duration d) {
  if (d >= absl::ZeroDuration()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, " ", absl::FormatDuration(d), " is negative; give 0 or more"));
}

// Reads a policy from the API; unset durations keep RestartPolicy's defaults.
absl::Status RestartFromProto(const v1::RestartPolicy& in, RestartPolicy& policy) {
  policy.mode = ModeFromProto(in.mode());
  policy.max_restarts = in.max_restarts();
  struct Field {
    const char* name;
    bool set;
    const google::protobuf::Duration& value;
    absl::Duration* into;
  };
  absl::Duration window;
  for (const Field& field : {
           Field{"restart.window", in.has_window(), in.window(), &window},
           Field{"restart.initial_backoff", in.has_initial_backoff(), in.initial_backoff(),
                 &policy.initial_backoff},
           Field{"restart.max_backoff", in.has_max_backoff(), in.max_backoff(),
                 &policy.max_backoff},
           Field{"restart.reset_after", in.has_reset_after(), in.reset_after(),
                 &policy.reset_after},
       }) {
    if (!field.set) continue;
    absl::Duration d = FromDurationProto(field.value);
    if (absl::Status s = NotNegative(field.name, d); !s.ok()) return s;
    *field.into = d;
  }
  if (in.has_window()) policy.window = window;
  if (policy.max_backoff < policy.initial_backoff) {
    return absl::InvalidArgumentError(absl::StrCat(
        "restart.max_backoff ", absl::FormatDuration(policy.max_backoff),
        " is shorter than restart.initial_backoff ", absl::FormatDuration(policy.initial_backoff)));
  }
  return absl::OkStatus();
}

void RunExitToProto(const RunExit& exit, v1::ExitRecord* out) {
  out->set_pid(exit.pid);
  out->set_exitcode(exit.status.exitcode());
  out->set_signal(exit.status.signal);
  out->set_core_dumped(exit.status.core_dumped);
  *out->mutable_start_time() = ToTimestamp(exit.start_time);
  *out->mutable_end_time() = ToTimestamp(exit.end_time);
  out->set_watchdog(exit.watchdog);
}

RunExit RunExitFromProto(const v1::ExitRecord& in) {
  RunExit exit;
  exit.pid = in.pid();
  exit.status = in.signal() != 0 ? WaitStatus::Signaled(in.signal(), in.core_dumped())
                                 : WaitStatus::Exited(in.exitcode());
  exit.start_time = FromTimestamp(in.start_time());
  exit.end_time = FromTimestamp(in.end_time());
  exit.watchdog = in.watchdog();
  return exit;
}

}  // namespace

google::protobuf::Duration ToDurationProto(absl::Duration d) {
  return TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(d));
}

absl::Duration FromDurationProto(const google::protobuf::Duration& d) {
  return absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
}

google::protobuf::Timestamp ToTimestamp(absl::Time t) {
  return TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(t));
}

absl::Time FromTimestamp(const google::protobuf::Timestamp& t) {
  return absl::FromUnixNanos(TimeUtil::TimestampToNanoseconds(t));
}

void ToProto(const ProcessInfo& info, v1::Process* out) {
  out->set_id(info.id);
  out->set_name(info.name);
  out->set_pid(info.pid);
  out->set_state(info.running   ? v1::STATE_RUNNING
                 : info.backoff ? v1::STATE_BACKOFF
                                : v1::STATE_EXITED);
  out->set_lost(info.lost);
  if (info.status.has_value() && !info.running && !info.backoff) {
    out->set_exitcode(info.status->exitcode());
    out->set_signal(info.status->signal);
    out->set_core_dumped(info.status->core_dumped);
  }
  out->set_daemon(info.daemon);
  if (info.parent_id != 0) {
    out->set_parent_id(info.parent_id);
  } else if (info.parent_session != 0) {
    out->set_parent_session(info.parent_session);
  }
  for (uint64_t child : info.children) out->add_children(child);
  out->set_target(info.target);
  for (const std::string& arg : info.args) out->add_args(arg);
  *out->mutable_start_time() = ToTimestamp(info.start_time);
  if (!info.running) {
    *out->mutable_end_time() = ToTimestamp(info.end_time);
    *out->mutable_user_cpu() = ToDurationProto(info.usage.user_cpu);
    *out->mutable_system_cpu() = ToDurationProto(info.usage.system_cpu);
    out->set_max_rss_bytes(info.usage.max_rss_bytes);
  }
  out->set_stdout_path(info.stdout_path);
  out->set_stderr_path(info.stderr_path);
  out->set_cwd(info.cwd);
  if (info.restart.has_value()) {
    RestartToProto(*info.restart, out->mutable_restart());
  }
  out->set_restarts(info.restarts);
  if (info.last_exit.has_value()) RunExitToProto(*info.last_exit, out->mutable_last_exit());
  for (absl::Time t : info.recent_restarts) *out->add_recent_restarts() = ToTimestamp(t);
  if (info.backoff) *out->mutable_next_start_time() = ToTimestamp(info.next_start_time);
  if (info.notify.has_value()) {
    const NotifyInfo& notify = *info.notify;
    v1::NotifyState* state = out->mutable_notify();
    state->set_ready(notify.ready);
    state->set_status(notify.status);
    state->set_stopping(notify.stopping);
    state->set_reloading(notify.reloading);
    state->set_errno_value(notify.errno_value);
    if (notify.watchdog > absl::ZeroDuration()) {
      *state->mutable_watchdog() = ToDurationProto(notify.watchdog);
    }
    if (notify.last_watchdog_ping != absl::InfinitePast()) {
      *state->mutable_last_watchdog_ping() = ToTimestamp(notify.last_watchdog_ping);
    }
    state->set_dropped(notify.dropped);
  }
  out->set_service(info.service);
}

ProcessInfo FromProto(const v1::Process& process) {
  ProcessInfo info;
  info.id = process.id();
  info.name = process.name();
  info.pid = process.pid();
  info.running = process.state() == v1::STATE_RUNNING;
  info.backoff = process.state() == v1::STATE_BACKOFF;
  info.lost = process.lost();
  if (!info.running) {
    if (!info.lost && !info.backoff) {
      info.status = process.signal() != 0
                        ? WaitStatus::Signaled(process.signal(), process.core_dumped())
                        : WaitStatus::Exited(process.exitcode());
    }
    info.end_time = FromTimestamp(process.end_time());
    info.usage = ResourceUsage{.user_cpu = FromDurationProto(process.user_cpu()),
                               .system_cpu = FromDurationProto(process.system_cpu()),
                               .max_rss_bytes = process.max_rss_bytes()};
  } else {
    info.end_time = absl::InfinitePast();
  }
  info.daemon = process.daemon();
  info.parent_id = process.parent_id();
  info.parent_session = process.parent_session();
  info.children.assign(process.children().begin(), process.children().end());
  info.target = process.target();
  info.args.assign(process.args().begin(), process.args().end());
  info.cwd = process.cwd();
  info.start_time = FromTimestamp(process.start_time());
  info.stdout_path = process.stdout_path();
  info.stderr_path = process.stderr_path();
  if (process.has_restart()) {
    RestartPolicy policy;
    RestartFromProto(process.restart(), policy).IgnoreError();
    if (policy.mode != RestartPolicy::Mode::kNo) info.restart = policy;
  }
  info.restarts = process.restarts();
  if (process.has_last_exit()) info.last_exit = RunExitFromProto(process.last_exit());
  for (const google::protobuf::Timestamp& t : process.recent_restarts()) {
    info.recent_restarts.push_back(FromTimestamp(t));
  }
  if (info.backoff) info.next_start_time = FromTimestamp(process.next_start_time());
  if (process.has_notify()) {
    const v1::NotifyState& state = process.notify();
    NotifyInfo& notify = info.notify.emplace();
    notify.ready = state.ready();
    notify.status = state.status();
    notify.stopping = state.stopping();
    notify.reloading = state.reloading();
    notify.errno_value = state.errno_value();
    if (state.has_watchdog()) notify.watchdog = FromDurationProto(state.watchdog());
    if (state.has_last_watchdog_ping()) {
      notify.last_watchdog_ping = FromTimestamp(state.last_watchdog_ping());
    }
    notify.dropped = state.dropped();
  }
  info.service = process.service();
  return info;
}

absl::Status StartSpecFromRequest(const v1::StartRequest& request, StartSpec& spec) {
  spec.target = request.target();
  spec.args.assign(request.args().begin(), request.args().end());
  spec.kwargs.insert(request.kwargs().begin(), request.kwargs().end());
  spec.name = request.name();
  spec.daemon = request.daemon();
  spec.env.assign(request.env().begin(), request.env().end());
  spec.cwd = request.cwd();
  spec.user = request.user();
  spec.group = request.group();
  if (request.has_restart()) {
    if (absl::Status s = RestartFromProto(request.restart(), spec.restart); !s.ok()) return s;
  }
  if (request.has_watchdog()) {
    spec.watchdog = FromDurationProto(request.watchdog());
    if (absl::Status s = NotNegative("watchdog", spec.watchdog); !s.ok()) return s;
    if (spec.watchdog > absl::ZeroDuration() && spec.watchdog < kMinWatchdog) {
      return absl::InvalidArgumentError(absl::StrCat("watchdog ", absl::FormatDuration(spec.watchdog),
                                                     " is shorter than the minimum of ",
                                                     absl::FormatDuration(kMinWatchdog)));
    }
  }
  if (request.has_ready_timeout()) {
    if (absl::Status s = NotNegative("ready_timeout", FromDurationProto(request.ready_timeout()));
        !s.ok()) {
      return s;
    }
  }
  spec.notify = request.notify() || request.wait_ready() || spec.watchdog > absl::ZeroDuration();
  return absl::OkStatus();
}

}  // namespace proctor
