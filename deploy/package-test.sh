#!/usr/bin/env bash
# Builds the Debian packages from build/ (cpack), installs them with apt-get, runs the
# installed proctord (on a temporary socket and state directory), checks its gRPC health,
# runs the installed proctor and a Python program (client/python in a venv) against it, builds client/examples/piao_function.cc against the installed libproctor-dev
# with find_package and with pkg-config (tests/install/) and runs it, then removes the packages
# again. Needs a built tree (deploy/build.sh) and root, or sudo. deploy/test.sh runs it after
# the tests; it refuses to run where the packages are installed already.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
source_dir=$PWD
started=$SECONDS
packages=(proctord proctor libproctor-dev)
as_root=(env DEBIAN_FRONTEND=noninteractive)
((EUID == 0)) || as_root=(sudo DEBIAN_FRONTEND=noninteractive)

step() { echo "package-test: $*"; }
fail() {
  echo "package-test: FAILED: $*" >&2
  exit 1
}

for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
  if [[ $status == installed ]]; then
    fail "$package is installed already; remove it first (apt-get remove ${packages[*]})"
  fi
done

work=$(mktemp -d /tmp/proctor-package-test.XXXXXX)
daemon=""
installed=no
cleanup() {
  set +e
  if [[ -n $daemon ]]; then
    kill -TERM "$daemon" 2>/dev/null
    wait "$daemon"
  fi
  if [[ $installed == yes ]]; then
    "${as_root[@]}" apt-get remove --purge -y "${packages[@]}" >"$work/remove.log" 2>&1 ||
      cat "$work/remove.log" >&2
  fi
  rm -rf "$work"
}
trap cleanup EXIT

step "building the packages"
cpack --config build/CPackConfig.cmake -B "$work/debs" >"$work/cpack.log" 2>&1 ||
  { cat "$work/cpack.log" >&2; fail "cpack"; }
debs=()
for package in "${packages[@]}"; do
  deb=$(ls "$work"/debs/"${package}"_*.deb 2>/dev/null) || fail "no ${package} package"
  debs+=("$deb")
  echo "  $(basename "$deb"): Depends: $(dpkg-deb -f "$deb" Depends)"
done
# dpkg-shlibdeps named Debian 12's runtime libraries.
for library in 'libgrpc++1.51' libprotobuf32 libssl3; do
  dpkg-deb -f "${debs[0]}" Depends | grep -qF "$library" || fail "proctord does not depend on $library"
done

step "installing them"
"${as_root[@]}" apt-get install -y --no-install-recommends "${debs[@]}" >"$work/install.log" 2>&1 ||
  { cat "$work/install.log" >&2; fail "apt-get install"; }
installed=yes
for file in /usr/bin/proctord /usr/bin/proctor /usr/libexec/proctor/proctor-keeper \
    /usr/lib/systemd/system/proctord.service /usr/include/proctor/client/process.h \
    /usr/share/proctor/proto/proctor/v1/proctor.proto; do
  [[ -e $file ]] || fail "$file is not installed"
done
grep -qx 'ExecStart=/usr/bin/proctord' /usr/lib/systemd/system/proctord.service ||
  fail "the unit does not start /usr/bin/proctord"

step "running the installed proctord and proctor"
socket=$work/proctord.sock
key=$work/state/authkey
/usr/bin/proctord --state-dir "$work/state" --listen "unix:$socket" --log-level warn &
daemon=$!
for _ in $(seq 300); do
  [[ -S $socket && -e $key ]] && break
  sleep 0.05
done
export PROCTOR_ADDRESS=unix:$socket PROCTOR_AUTHKEY_FILE=$key
id=$(/usr/bin/proctor start -- sh -c 'echo from the package')
/usr/bin/proctor join "$id" >/dev/null || fail "proctor join $id"
[[ $(/usr/bin/proctor logs "$id") == "from the package" ]] || fail "proctor logs $id"

step "checking its health, as grpc_health_probe and Kubernetes do (no key)"
# Stubs as modules of their own: a grpc/health/ directory would be shadowed by grpcio's grpc.
mkdir -p "$work/health"
cp proto/grpc/health/v1/health.proto "$work/health/"
protoc -I "$work/health" --python_out="$work/health" --grpc_out="$work/health" \
  --plugin=protoc-gen-grpc="$(command -v grpc_python_plugin)" "$work/health/health.proto"
health=$(PYTHONPATH="$work/health" /usr/bin/python3 -c '
import sys, grpc
import health_pb2, health_pb2_grpc
stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(sys.argv[1]))
print(health_pb2.HealthCheckResponse.ServingStatus.Name(
    stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status))' "unix:$socket")
[[ $health == SERVING ]] || fail "the installed proctord's health is '$health', not SERVING"

step "running a Python program against it (client/python in a venv)"
tests/python/install_client.sh "$source_dir" "$work/python" >"$work/python.log" 2>&1 ||
  { cat "$work/python.log" >&2; fail "installing the Python client"; }
python_output=$("$work/python/venv/bin/python" -c '
import proctor
p = proctor.Process(target=["/bin/echo", "from Python"])
p.start()
p.join()
print(p.exitcode)')
# The child's output is forwarded, as multiprocessing's is, then the exit code.
[[ $python_output == $'from Python\n0' ]] || fail "the Python program printed '$python_output'"

step "building client/examples/piao_function.cc against libproctor-dev"
cmake -S tests/install -B "$work/consumer" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DPROCTOR_EXAMPLES_DIR="$source_dir/client/examples" >"$work/consumer.log" 2>&1 &&
  cmake --build "$work/consumer" -j2 >>"$work/consumer.log" 2>&1 ||
  { cat "$work/consumer.log" >&2; fail "building against the package"; }
# The library's headers came from the package, not from this tree.
deps=$(ninja -C "$work/consumer" -t deps)
grep -q '/usr/include/proctor/client/process.h' <<<"$deps" || fail "not built with /usr/include/proctor"
if grep -q "$source_dir/client/process.h" <<<"$deps"; then fail "built with the source tree's headers"; fi
for program in piao_function piao_function_pkgconfig; do
  output=$("$work/consumer/$program")
  for line in "A piaoing" "D piao end" "主线程"; do
    grep -qx "$line" <<<"$output" || fail "$program did not print '$line': $output"
  done
done

step "removing the packages"
kill -TERM "$daemon"
wait "$daemon" || fail "proctord exited with status $?"
daemon=""
"${as_root[@]}" apt-get remove --purge -y "${packages[@]}" >"$work/remove.log" 2>&1 ||
  { cat "$work/remove.log" >&2; fail "apt-get remove"; }
installed=no
[[ ! -e /usr/bin/proctord && ! -e /usr/include/proctor ]] || fail "files left after removal"
step "passed in $((SECONDS - started)) s"
