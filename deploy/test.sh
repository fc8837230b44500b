#!/usr/bin/env bash
# Installs what is missing, builds, runs every test, then builds, installs, exercises and
# removes the Debian packages (deploy/package-test.sh), then fuzzes every parser of untrusted
# input for a short while (deploy/fuzz-smoke.sh). Extra arguments go to ctest.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

deploy/install-deps.sh
deploy/build.sh
ctest --test-dir build --output-on-failure -j2 --timeout 300 "$@"
deploy/package-test.sh
deploy/fuzz-smoke.sh
