#!/usr/bin/env bash
# Configures proctor with Ninja into build/ (RelWithDebInfo) and builds it on all cores: all of
# it, or only the TARGETs given (deploy/build.sh proctord proctor).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
targets=()
for target in "$@"; do targets+=(--target "$target"); done
cmake --build build -j "$(nproc)" "${targets[@]}"
