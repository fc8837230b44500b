// watch_bench_probe: the worker watch_bench runs, a program that says when it exits.
//
// It writes CLOCK_MONOTONIC in nanoseconds, in decimal and with a newline, to its stdout (a
// capture file of proctord) and exits 0 at once. The clock is read before the write, so the
// latency watch_bench derives from it also counts that write (a few microseconds), never
// less than the real time from exit to event. Nothing else runs after the clock is read:
// _exit skips atexit handlers and stdio, and the program is tiny, so the kernel's part of
// the exit (unmapping, closing, SIGCHLD) is as short as it gets.
#include <time.h>
#include <unistd.h>

#include <cstdio>

int main() {
  timespec now{};
  if (clock_gettime(CLOCK_MONOTONIC, &now) != 0) _exit(1);
  char text[32];
  int size = std::snprintf(text, sizeof(text), "%lld\n",
                           static_cast<long long>(now.tv_sec) * 1000000000LL + now.tv_nsec);
  if (size <= 0 || write(STDOUT_FILENO, text, static_cast<size_t>(size)) != size) _exit(1);
  _exit(0);
}
