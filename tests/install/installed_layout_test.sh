#!/usr/bin/env bash
# usage: installed_layout_test.sh BUILD_DIR LIBDIR
#
# `cmake --install` into a temporary prefix: every file lands in its GNU place (LIBDIR is
# CMAKE_INSTALL_LIBDIR), the unit and pkg-config file name that prefix, the installed
# proctord finds its keeper in libexec/proctor and runs a process for the installed proctor,
# and without the keeper it refuses to start, naming where it looked.
set -euo pipefail
build=$1
libdir=$2

root=$(mktemp -d /tmp/proctor-install-test.XXXXXX)
prefix=$root/prefix
daemon=""
cleanup() {
  if [[ -n $daemon ]]; then
    kill -TERM "$daemon" 2>/dev/null || true
    wait "$daemon" || true
  fi
  rm -rf "$root"
}
trap cleanup EXIT
fail() {
  echo "installed_layout_test: $*" >&2
  exit 1
}

cmake --install "$build" --prefix "$prefix" >/dev/null

for file in bin/proctord bin/proctor libexec/proctor/proctor-keeper \
    lib/systemd/system/proctord.service \
    "$libdir/libproctor.a" "$libdir/pkgconfig/proctor.pc" \
    "$libdir/cmake/proctor/proctorConfig.cmake" "$libdir/cmake/proctor/proctorTargets.cmake" \
    include/proctor/client/client.h include/proctor/client/process.h \
    include/proctor/client/sync.h include/proctor/v1/proctor.grpc.pb.h \
    include/proctor/v1/sync.pb.h share/proctor/proto/proctor/v1/proctor.proto \
    share/proctor/proto/proctor/v1/sync.proto share/bash-completion/completions/proctor; do
  [[ -e $prefix/$file ]] || fail "$file was not installed"
done
[[ ! -e $prefix/bin/proctor-keeper ]] || fail "the keeper went to bin"
grep -qx "ExecStart=$prefix/bin/proctord" "$prefix/lib/systemd/system/proctord.service" ||
  fail "the unit does not start $prefix/bin/proctord"
grep -qx "prefix=$prefix" "$prefix/$libdir/pkgconfig/proctor.pc" ||
  fail "proctor.pc does not name the prefix $prefix"

socket=$root/proctord.sock
"$prefix/bin/proctord" --state-dir "$root/state" --listen "unix:$socket" --log-level warn &
daemon=$!
for _ in $(seq 300); do
  [[ -S $socket && -e $root/state/authkey ]] && break
  sleep 0.05
done
output=$("$prefix/bin/proctor" --address "unix:$socket" --authkey-file "$root/state/authkey" \
  run -- echo installed)
[[ $output == installed ]] || fail "proctor run printed '$output'"
keeper_found=no
for pid in $(pgrep -x proctor-keeper); do
  if [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$prefix/libexec/proctor/proctor-keeper" ]]; then
    keeper_found=yes
  fi
done
[[ $keeper_found == yes ]] || fail "no keeper runs from $prefix/libexec/proctor"
kill -TERM "$daemon"
wait "$daemon" || fail "proctord exited with status $?"
daemon=""

rm "$prefix/libexec/proctor/proctor-keeper"
if "$prefix/bin/proctord" --state-dir "$root/state2" --listen "unix:$root/second.sock" \
    2>"$root/stderr"; then
  fail "proctord started without its keeper"
fi
grep -qF "no proctor-keeper beside proctord ($prefix/bin/proctor-keeper) nor where it is installed ($prefix/libexec/proctor/proctor-keeper)" "$root/stderr" ||
  fail "proctord's error does not say where it looked: $(cat "$root/stderr")"
echo "installed_layout_test: passed"
