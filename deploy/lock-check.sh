#!/usr/bin/env bash
# Compiles proctord, its keeper, the CLI and the client library with clang-14 and
# -Wthread-safety into build-locks/ (-DPROCTOR_LOCK_ANALYSIS=ON, unoptimised: only the
# analysis matters). Fails when our code touches guarded state without its mutex, or calls a
# ...Locked function without the lock it requires; the compiler names the line.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

CC=clang-14 CXX=clang++-14 cmake -S . -B build-locks -G Ninja -DCMAKE_BUILD_TYPE=Debug \
  -DCMAKE_CXX_FLAGS_DEBUG=-O0 -DPROCTOR_LOCK_ANALYSIS=ON -DPROCTOR_BENCHMARKS=OFF
cmake --build build-locks -j "$(nproc)" --target proctord proctor-keeper proctor proctor_client
echo "lock-check: every guarded access holds its mutex"
