#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test. Extra arguments go to ctest.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

deploy/install-deps.sh
deploy/build.sh
ctest --test-dir build --output-on-failure -j2 --timeout 300 "$@"
