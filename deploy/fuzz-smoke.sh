#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/) with clang-14, under ASan and UBSan, into
# build-fuzz/, and runs each for SECONDS (default 10) from its seed corpus
# (tests/fuzz/corpus/TARGET/). Fails when any target crashes, leaks or trips a sanitizer; the
# input that did it is left in build-fuzz/fuzz-artifacts/ (add it to the target's corpus with
# the fix, and a unit test for the fix). Inputs found along the way go to
# build-fuzz/fuzz-corpus/, never into the seed corpora.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds=${1:-10}

CC=clang-14 CXX=clang++-14 cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DPROCTOR_FUZZ=ON
cmake --build build-fuzz -j "$(nproc)"

mkdir -p build-fuzz/fuzz-artifacts
failed=()
for seeds in tests/fuzz/corpus/*/; do
  target=$(basename "$seeds")
  found=build-fuzz/fuzz-corpus/$target
  scratch=$(mktemp -d)  # journal_fuzz's files
  mkdir -p "$found"
  echo "fuzz-smoke: $target for ${seconds}s"
  if ! TMPDIR=$scratch "build-fuzz/tests/fuzz/$target" -max_total_time="$seconds" -timeout=30 \
       -artifact_prefix="build-fuzz/fuzz-artifacts/$target-" -print_final_stats=1 \
       "$found" "$seeds" > "build-fuzz/fuzz-artifacts/$target.log" 2>&1; then
    tail -n 40 "build-fuzz/fuzz-artifacts/$target.log" >&2
    failed+=("$target")
  fi
  grep -E '^stat::number_of_executed_units' "build-fuzz/fuzz-artifacts/$target.log" || true
  rm -rf "$scratch"
done

if ((${#failed[@]} > 0)); then
  echo "fuzz-smoke: FAILED: ${failed[*]} (see build-fuzz/fuzz-artifacts/)" >&2
  exit 1
fi
echo "fuzz-smoke: every target ran ${seconds}s without a crash"
