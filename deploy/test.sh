#!/usr/bin/env bash
# Installs what is missing; builds the whole project under AddressSanitizer and
# UndefinedBehaviorSanitizer and runs every test under them (deploy/sanitize-test.sh; extra
# arguments go to ctest); builds the unit tests under ThreadSanitizer and runs those of the
# supervisor; builds what the Debian packages hold (build/, RelWithDebInfo) and builds,
# installs, exercises and removes the packages (deploy/package-test.sh); then fuzzes every
# parser of untrusted input for a short while (deploy/fuzz-smoke.sh), and has clang check
# the lock annotations of our code (deploy/lock-check.sh).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

deploy/install-deps.sh
deploy/sanitize-test.sh address,undefined "$@"
deploy/sanitize-test.sh thread
deploy/build.sh proctord proctor-keeper proctor proctor_client
deploy/package-test.sh
deploy/fuzz-smoke.sh
deploy/lock-check.sh
