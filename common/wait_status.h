// WaitStatus: how a process ended, kept whole (code, signal, core) as the kernel reported it.
//
// It becomes multiprocessing's `exitcode` (-N for signal N) or a shell's exit status (128+N)
// only at the edges that need one of those spellings.
#ifndef PROCTOR_COMMON_WAIT_STATUS_H_
#define PROCTOR_COMMON_WAIT_STATUS_H_

namespace proctor {

struct WaitStatus {
  int exit_code = 0;         // meaningful when signal == 0
  int signal = 0;            // the signal that ended the process, or 0
  bool core_dumped = false;  // only with signal != 0

  static WaitStatus Exited(int code) { return {code, 0, false}; }
  static WaitStatus Signaled(int sig, bool core = false) { return {0, sig, core}; }

  // multiprocessing's exitcode: N for exit(N), -N for signal N.
  int exitcode() const { return signal != 0 ? -signal : exit_code; }
  // A shell's $?: N for exit(N), 128+N for signal N.
  int shell_status() const { return signal != 0 ? 128 + signal : exit_code; }

  friend bool operator==(const WaitStatus&, const WaitStatus&) = default;
};

}  // namespace proctor

#endif  // PROCTOR_COMMON_WAIT_STATUS_H_
