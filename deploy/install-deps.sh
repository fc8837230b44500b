#!/usr/bin/env bash
# Installs the Debian 12 packages proctor needs to build and test. Packages already present
# are not asked for again, so a machine that has everything makes no network access.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libspdlog-dev libgtest-dev libgmock-dev libssl-dev libcli11-dev nlohmann-json3-dev
  libsqlite3-dev zlib1g-dev libsystemd-dev libcivetweb-dev
  python3-grpcio python3-protobuf openssl procps
  # The Python client: built offline into a venv with Debian's setuptools and wheel.
  python3-venv python3-setuptools python3-wheel
  # The Debian packages: CPack's dependencies from dpkg-shlibdeps, which needs file.
  dpkg-dev file
  # The tests: a scraper and Prometheus' parser for the metrics, YAML for the Kubernetes
  # manifest.
  curl python3-prometheus-client python3-yaml
  # The fuzz targets (deploy/fuzz-smoke.sh): clang and its libFuzzer.
  clang-14 libfuzzer-14-dev
)

missing=()
for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
  [[ "$status" == installed ]] || missing+=("$package")
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all packages present"
  exit 0
fi

# Root runs apt-get directly; anyone else goes through sudo.
as_root=(env DEBIAN_FRONTEND=noninteractive)
if ((EUID != 0)); then
  if ! command -v sudo >/dev/null; then
    echo "install-deps: missing ${missing[*]}; run as root or install sudo" >&2
    exit 1
  fi
  as_root=(sudo DEBIAN_FRONTEND=noninteractive)
fi

echo "install-deps: installing ${missing[*]}"
"${as_root[@]}" apt-get update
"${as_root[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
