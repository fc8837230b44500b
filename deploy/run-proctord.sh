#!/usr/bin/env bash
# Installs what is missing, builds, and runs proctord in the foreground on its defaults.
# Extra arguments go to proctord (see `build/server/proctord --help`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

deploy/install-deps.sh
deploy/build.sh
exec build/server/proctord "$@"
