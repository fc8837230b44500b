"""Builds the package; its build_py step also generates proctor/v1's stubs (proctor_pb2,
proctor_pb2_grpc, sync_pb2, sync_pb2_grpc) from the protos with protoc and
grpc_python_plugin (Debian: protobuf-compiler, protobuf-compiler-grpc), so that they always
match the protos they are built from.

The protos are taken from $PROCTOR_PROTO_DIR, else from the source tree this directory is in
(../../proto); libproctor-dev installs them in /usr/share/proctor/proto.
"""

import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTOS = ["proctor/v1/proctor.proto", "proctor/v1/sync.proto"]


def _proto_dir():
    directory = os.environ.get("PROCTOR_PROTO_DIR") or os.path.join(HERE, "..", "..", "proto")
    missing = [p for p in PROTOS if not os.path.isfile(os.path.join(directory, p))]
    if missing:
        raise SystemExit(f"proctor: no {missing[0]} in {os.path.abspath(directory)}: build "
                         "from proctor's source tree, or set PROCTOR_PROTO_DIR to the protos' "
                         "directory (/usr/share/proctor/proto with libproctor-dev)")
    return directory


def _tool(name, package):
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"proctor: {name} not found; install {package}")
    return path


class BuildPyWithStubs(build_py):
    """build_py, then the stubs generated into the build directory."""

    def run(self):
        super().run()
        protoc = _tool("protoc", "protobuf-compiler")
        plugin = _tool("grpc_python_plugin", "protobuf-compiler-grpc")
        proto_dir = _proto_dir()
        subprocess.run([protoc, f"--proto_path={proto_dir}", f"--python_out={self.build_lib}",
                        f"--grpc_out={self.build_lib}", f"--plugin=protoc-gen-grpc={plugin}",
                        *(os.path.join(proto_dir, p) for p in PROTOS)], check=True)


setup(cmdclass={"build_py": BuildPyWithStubs})
