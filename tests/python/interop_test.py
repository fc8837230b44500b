#!/usr/bin/python3
"""A proctor client written from the README's "Authentication" section alone, in Python.

usage: interop_test.py ADDRESS AUTHKEY_FILE STUBS_DIR

Starts /bin/echo hello, joins it and reads its output, checking on every reply that the
daemon proved it holds the key. Then the replies the README says carry a proof besides:
errors answered once the key checked out (NOT_FOUND, a clock-skew refusal), and streams,
whose proof arrives before their first message (Logs with follow, Watch, Session); and one
that cannot (an unknown key id). Prints what it saw; exits non-zero on any failure.
"""
import hashlib
import hmac
import os
import queue
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


def credential(method, key_id="admin", skew_millis=0):
    """The x-proctor-auth value for one call; and the proof the daemon must answer with."""
    millis = str(int(time.time() * 1000) + skew_millis)
    nonce = os.urandom(16).hex()
    proof = mac(f"proctor-v1 call\n{method}\n{key_id}\n{millis}\n{nonce}")
    return f"v1 {key_id} {millis} {nonce} {proof}", mac(f"proctor-v1 server\n{method}\n{nonce}")


def proof_in(call, trailers_too=True):
    """The daemon's proof from a call's initial metadata (or, for an error, its trailers)."""
    places = [call.initial_metadata()] + ([call.trailing_metadata()] if trailers_too else [])
    for metadata in places:
        for name, value in metadata or ():
            if name == "x-proctor-server-proof":
                return value
    return ""


def check_proof(method, call, expected, trailers_too=True):
    if not hmac.compare_digest(proof_in(call, trailers_too), expected):
        sys.exit(f"{method}: the daemon did not prove it holds the key")


def refused(stub, method, request, **credential_args):
    """Makes a call that must fail; returns its status code and whether the daemon proved it."""
    auth, expected = credential(method, **credential_args)
    try:
        getattr(stub, method).with_call(request, metadata=[("x-proctor-auth", auth)])
    except grpc.RpcError as e:
        return e.code().name, hmac.compare_digest(proof_in(e), expected)
    sys.exit(f"{method} was expected to fail")


def check_stream_proof(method, call, expected):
    """The proof must be in the headers, which come before any message: this blocks until they
    arrive (or the call's deadline passes, leaving them empty)."""
    check_proof(method, call, expected, trailers_too=False)
    print(method, "proved before its first message")


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
        check_proof("Logs", chunks, expected, trailers_too=False)  # before trusting any data
        print(b"".join(chunk.data for chunk in chunks).decode(), end="")

        # Errors answered after the key checked out carry the proof; an unknown key id cannot.
        code, proved = refused(stub, "Status", proctor_pb2.StatusRequest(id=999999))
        print(code, "proved" if proved else "unproved")
        code, proved = refused(stub, "Status", proctor_pb2.StatusRequest(), skew_millis=-600000)
        print(code, "proved" if proved else "unproved", "(clock skew)")
        code, proved = refused(stub, "Status", proctor_pb2.StatusRequest(), key_id="999999")
        print(code, "proved" if proved else "unproved", "(unknown key id)")

        # Streams that may stay quiet send their proof at once.
        sleeper = unary(stub, "Start", proctor_pb2.StartRequest(target="/bin/sleep", args=["100"]))
        auth, expected = credential("Logs")
        follow = stub.Logs(proctor_pb2.LogsRequest(id=sleeper.id, follow=True),
                           metadata=[("x-proctor-auth", auth)], timeout=10)
        check_stream_proof("Logs", follow, expected)
        follow.cancel()
        auth, expected = credential("Watch")
        watch = stub.Watch(proctor_pb2.WatchRequest(ids=[sleeper.id]),
                           metadata=[("x-proctor-auth", auth)], timeout=10)
        check_stream_proof("Watch", watch, expected)
        watch.cancel()
        requests = queue.Queue()
        auth, expected = credential("Session")
        session = stub.Session(iter(requests.get, None), metadata=[("x-proctor-auth", auth)],
                               timeout=10)
        check_stream_proof("Session", session, expected)  # before its first request
        requests.put(proctor_pb2.SessionRequest())
        print("session", "opened" if next(session).session > 0 else "not opened")
        requests.put(None)  # closing our side ends the session
        for _ in session:
            pass
        print("session ended", session.code().name)
        unary(stub, "Terminate", proctor_pb2.TerminateRequest(id=sleeper.id))
    except grpc.RpcError as e:
        sys.exit(f"proctord refused: {e.code().name}: {e.details()}")


if __name__ == "__main__":
    main()
