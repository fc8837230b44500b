#!/usr/bin/python3
"""A proctor client written from the README's "Authentication" section alone, in Python.

usage: interop_test.py ADDRESS AUTHKEY_FILE STUBS_DIR

Starts /bin/echo hello, joins it and reads its output, checking on every reply that the
daemon proved it holds the key. Prints what it saw; exits non-zero on any failure.
"""
import hashlib
import hmac
import os
import sys
import time

import grpc

address, key_file, stubs_dir = sys.argv[1:4]
sys.path.insert(0, stubs_dir)
from proctor.v1 import proctor_pb2, proctor_pb2_grpc  # noqa: E402

with open(key_file, "rb") as f:
    key = f.read()


def mac(message):
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def credential(method):
    """The x-proctor-auth value for one call; and the proof the daemon must answer with."""
    millis = str(int(time.time() * 1000))
    nonce = os.urandom(16).hex()
    proof = mac(f"proctor-v1 call\n{method}\nadmin\n{millis}\n{nonce}")
    return f"v1 admin {millis} {nonce} {proof}", mac(f"proctor-v1 server\n{method}\n{nonce}")


def check_proof(method, call, expected):
    metadata = dict(call.initial_metadata())
    if not hmac.compare_digest(metadata.get("x-proctor-server-proof", ""), expected):
        sys.exit(f"{method}: the daemon did not prove it holds the key")


def unary(stub, method, request):
    auth, expected = credential(method)
    reply, call = getattr(stub, method).with_call(request, metadata=[("x-proctor-auth", auth)])
    check_proof(method, call, expected)
    return reply


def main():
    stub = proctor_pb2_grpc.ProctorStub(grpc.insecure_channel(address))
    try:
        started = unary(stub, "Start", proctor_pb2.StartRequest(target="/bin/echo", args=["hello"]))
        print("started", started.name)
        ended = unary(stub, "Join", proctor_pb2.JoinRequest(id=started.id))
        print("exitcode", ended.exitcode)
        auth, expected = credential("Logs")
        chunks = stub.Logs(proctor_pb2.LogsRequest(id=started.id),
                           metadata=[("x-proctor-auth", auth)])
        check_proof("Logs", chunks, expected)  # before trusting any data
        print(b"".join(chunk.data for chunk in chunks).decode(), end="")
    except grpc.RpcError as e:
        sys.exit(f"proctord refused: {e.code().name}: {e.details()}")


if __name__ == "__main__":
    main()
