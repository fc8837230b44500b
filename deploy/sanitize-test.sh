#!/usr/bin/env bash
# Builds proctor with sanitizers and runs tests under them. Every report fails the run.
#   deploy/sanitize-test.sh address,undefined [CTEST ARGS...]
#       build-asan/: the whole project but the benchmark programs under AddressSanitizer
#       (leaks included) and UndefinedBehaviorSanitizer, then every test (ctest).
#   deploy/sanitize-test.sh thread
#       build-tsan/: supervisor_tests under ThreadSanitizer: the supervisor's unit tests (its
#       records, restart policies, restore after a restart) and those of what its threads
#       share: the event log, the event loop, the sync table.
# Suppressions, each with its reason, are in tests/sanitizers/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
sanitizers=${1:-}
shift || true
suppressions=$PWD/tests/sanitizers

case $sanitizers in
  address,undefined)
    cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DPROCTOR_SANITIZE=address,undefined -DPROCTOR_BENCHMARKS=OFF
    cmake --build build-asan -j "$(nproc)"
    export ASAN_OPTIONS=detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1
    export LSAN_OPTIONS=suppressions=$suppressions/lsan.supp:print_suppressions=0
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    ctest --test-dir build-asan --output-on-failure -j2 --timeout 300 "$@"
    ;;
  thread)
    cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPROCTOR_SANITIZE=thread
    cmake --build build-tsan -j "$(nproc)" --target supervisor_tests
    TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" build-tsan/tests/supervisor_tests
    ;;
  *)
    echo "usage: $0 address,undefined [CTEST ARGS...] | thread" >&2
    exit 2
    ;;
esac
