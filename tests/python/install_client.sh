#!/bin/sh
# usage: install_client.sh SOURCE_DIR OUT_DIR
#
# Builds the Python client's wheel (client/python) offline, from a copy of the source tree's
# client/python and proto/ so that the build writes nothing into the source tree, and installs
# it into a fresh venv OUT_DIR/venv that sees Debian's python3-grpcio and python3-protobuf:
# the commands the README gives, with nothing downloaded.
set -eu
source_dir=$1
out=$2

rm -rf "$out"
mkdir -p "$out/tree/client"
cp -r "$source_dir/client/python" "$out/tree/client/python"
cp -r "$source_dir/proto" "$out/tree/proto"
rm -rf "$out/tree/client/python/build" "$out/tree/client/python/"*.egg-info

/usr/bin/python3 -m venv --system-site-packages "$out/venv"
"$out/venv/bin/pip" wheel --no-deps --no-build-isolation --no-index -w "$out/dist" \
  "$out/tree/client/python"
"$out/venv/bin/pip" install --no-deps --no-index "$out"/dist/proctor-*.whl
# The stubs came with it, generated from the protos.
"$out/venv/bin/python" -c 'import proctor.v1.proctor_pb2_grpc, proctor.v1.sync_pb2_grpc'
