#!/usr/bin/env bash
# Configures proctor with Ninja into build/ (RelWithDebInfo) and builds it on all cores.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j "$(nproc)"
