#include "common/signal_names.h"

#include <csignal>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"

namespace proctor {
namespace {

struct NamedSignal {
  const char* name;
  int number;
};

constexpr NamedSignal kSignals[] = {
    {"HUP", SIGHUP},   {"INT", SIGINT},       {"QUIT", SIGQUIT}, {"ILL", SIGILL},
    {"TRAP", SIGTRAP}, {"ABRT", SIGABRT},     {"BUS", SIGBUS},   {"FPE", SIGFPE},
    {"KILL", SIGKILL}, {"USR1", SIGUSR1},     {"SEGV", SIGSEGV}, {"USR2", SIGUSR2},
    {"PIPE", SIGPIPE}, {"ALRM", SIGALRM},     {"TERM", SIGTERM}, {"STKFLT", SIGSTKFLT},
    {"CHLD", SIGCHLD}, {"CONT", SIGCONT},     {"STOP", SIGSTOP}, {"TSTP", SIGTSTP},
    {"TTIN", SIGTTIN}, {"TTOU", SIGTTOU},     {"URG", SIGURG},   {"XCPU", SIGXCPU},
    {"XFSZ", SIGXFSZ}, {"VTALRM", SIGVTALRM}, {"PROF", SIGPROF}, {"WINCH", SIGWINCH},
    {"IO", SIGIO},     {"PWR", SIGPWR},       {"SYS", SIGSYS},
};

}  // namespace

int MaxSignal() { return SIGRTMAX; }

absl::Status ValidateSignal(int sig) {
  if (sig == 0) {
    return absl::InvalidArgumentError(
        "signal 0 only probes for existence; give a signal that ends the process (e.g. TERM)");
  }
  if (sig < 0) {
    return absl::InvalidArgumentError(absl::StrCat("signal ", sig, " is negative"));
  }
  if (sig > MaxSignal()) {
    return absl::InvalidArgumentError(
        absl::StrCat("signal ", sig, " is above the maximum ", MaxSignal()));
  }
  return absl::OkStatus();
}

absl::StatusOr<int> ParseSignal(absl::string_view text) {
  int number = 0;
  if (absl::SimpleAtoi(text, &number)) {
    if (absl::Status s = ValidateSignal(number); !s.ok()) return s;
    return number;
  }
  std::string name = absl::AsciiStrToUpper(text);
  absl::string_view bare = name;
  if (absl::StartsWith(bare, "SIG")) bare.remove_prefix(3);
  for (const NamedSignal& s : kSignals) {
    if (bare == s.name) return s.number;
  }
  if (absl::StartsWith(bare, "RTMIN")) {
    absl::string_view rest = bare.substr(5);
    int offset = 0;
    if (rest.empty() || (rest[0] == '+' && absl::SimpleAtoi(rest.substr(1), &offset))) {
      if (SIGRTMIN + offset <= SIGRTMAX) return SIGRTMIN + offset;
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown signal \"", text, "\" (use a name such as TERM, KILL, INT or a number 1-",
      MaxSignal(), ")"));
}

std::string SignalName(int sig) {
  for (const NamedSignal& s : kSignals) {
    if (s.number == sig) return absl::StrCat("SIG", s.name);
  }
  if (sig >= SIGRTMIN && sig <= SIGRTMAX) {
    return sig == SIGRTMIN ? "SIGRTMIN" : absl::StrCat("SIGRTMIN+", sig - SIGRTMIN);
  }
  return absl::StrCat(sig);
}

}  // namespace proctor
