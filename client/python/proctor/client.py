"""proctor.Client: signed calls to proctord, every reply checked.

One Client holds one gRPC channel; it is thread-safe and meant to be kept and shared. Every
unary call must be answered within ``call_timeout`` (30 s), else it raises ProctorError
DEADLINE_EXCEEDED "Status did not answer within 30s"; ``join`` waits as long as asked in polls
of at most the call timeout. Streams (``watch``, ``logs(follow=True)``, sessions) have no
deadline, but proctord must answer their opening within the call timeout.

Every reply, errors and streams included, must prove that the daemon holds the key
(``x-proctor-server-proof``): a reply that does not is refused with AuthenticationError, and
so is proctord's UNAUTHENTICATED. Only replies nobody gave (UNAVAILABLE, DEADLINE_EXCEEDED,
CANCELLED) are not checked.
"""

import os
import threading
import time

import grpc
from google.protobuf import duration_pb2

from proctor import _auth, _paths
from proctor.errors import AuthenticationError, ProctorError
from proctor.v1 import proctor_pb2, proctor_pb2_grpc, sync_pb2_grpc

# Client.call's default timeout: the client's call timeout.
CALL_TIMEOUT = object()

_NOBODY_ANSWERED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.CANCELLED)


def duration(seconds):
    """A google.protobuf.Duration of ``seconds`` (int or float; negative goes through)."""
    nanos_total = round(seconds * 1_000_000_000)
    seconds_part, nanos = divmod(abs(nanos_total), 1_000_000_000)
    sign = -1 if nanos_total < 0 else 1
    return duration_pb2.Duration(seconds=sign * seconds_part, nanos=sign * nanos)


def _seconds_text(seconds):
    return f"{seconds:g}s" if seconds < 60 else f"{seconds / 60:g}m"


def _read(path):
    with open(path, "rb") as f:
        return f.read()


# A Status listing of every record is one reply, beyond gRPC's default 4 MiB on a busy
# daemon; the C++ client takes as much (kMaxReplyBytes).
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 256 << 20)]


def _channel(address, tls_ca, tls_cert, tls_key, insecure_tcp):
    if address.startswith("unix:") or insecure_tcp:
        return grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
    try:
        files = [(option or os.environ.get(env)) for option, env in (
            (tls_ca, "PROCTOR_TLS_CA"), (tls_cert, "PROCTOR_TLS_CERT"),
            (tls_key, "PROCTOR_TLS_KEY"))]
        ca, cert, key = (_read(f) if f else None for f in files)
    except OSError as e:
        raise ProctorError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"cannot read TLS file {e.filename}: {e.strerror}") from None
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                               certificate_chain=cert)
    return grpc.secure_channel(address, credentials, options=_CHANNEL_OPTIONS)


class Client:
    """A connection to proctord.

    ``address``: "unix:/path", "/path" or "host:port"; None: ``$PROCTOR_ADDRESS``, else the
    daemon's default socket. The key: ``credentials`` (from ``find_credentials``), else
    ``authkey_file``, else found as the command line finds it. TCP uses TLS: ``tls_ca`` (else
    ``$PROCTOR_TLS_CA``, else the system's roots) verifies the daemon, ``tls_cert`` and
    ``tls_key`` (else ``$PROCTOR_TLS_CERT``/``_KEY``) are the client's own; ``insecure_tcp``
    talks plain TCP.
    """

    def __init__(self, address=None, *, authkey_file=None, credentials=None, tls_ca=None,
                 tls_cert=None, tls_key=None, insecure_tcp=False, call_timeout=30.0):
        if call_timeout is not None and call_timeout <= 0:
            raise ValueError("call_timeout must be positive (None: no deadline)")
        address = address or _paths.default_address()
        if address.startswith("/"):
            address = "unix:" + address
        self.address = address
        self.credentials = credentials or _auth.find_credentials(authkey_file)
        self.call_timeout = call_timeout
        self._channel = _channel(address, tls_ca, tls_cert, tls_key, insecure_tcp)
        self._proctor = proctor_pb2_grpc.ProctorStub(self._channel)
        self._sync = sync_pb2_grpc.SyncStub(self._channel)

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # The calls, by the RPC's bare name, as the MAC signs it.

    def _method(self, name):
        stub = self._sync if name.startswith("Sync") else self._proctor
        return getattr(stub, name)

    def call(self, name, request, timeout=CALL_TIMEOUT):
        """The unary RPC ``name`` (e.g. "Status", "SyncAcquire"): its reply, proven.

        ``timeout``: how long proctord has to answer, in seconds (None: no limit); by
        default the call timeout.
        """
        timeout = self.call_timeout if timeout is CALL_TIMEOUT else timeout
        value, nonce = self.credentials.sign(name)
        try:
            reply, call = self._method(name).with_call(
                request, metadata=[(_auth.AUTH_METADATA, value)], timeout=timeout)
        except grpc.RpcError as e:
            raise self._failure(name, nonce, e, timeout) from None
        if not self._proven(name, nonce, call.initial_metadata(), call.trailing_metadata()):
            raise self._unproven()
        return reply

    def stream(self, name, request):
        """The server-streaming RPC ``name`` ("Watch", "Logs"): an iterator of its messages,
        once the reply has proven that the daemon holds the key. Closing the iterator (or
        leaving a ``for`` loop over it) cancels the call."""
        value, nonce = self.credentials.sign(name)
        call = self._method(name)(request, metadata=[(_auth.AUTH_METADATA, value)])
        return self._proven_stream(name, nonce, call)

    def _proven_stream(self, name, nonce, call):
        """``call``'s messages, each handed out only once the reply has proven that the
        daemon holds the key (the proof comes with the first message's initial metadata, or
        with the end of a stream that sends none)."""

        def messages():
            proven = False
            try:
                for message in call:
                    if not proven:
                        proven = self._proven(name, nonce, call.initial_metadata())
                        if not proven:
                            raise self._unproven()
                    yield message
            except grpc.RpcError as e:
                raise self._failure(name, nonce, e, None) from None
            finally:
                call.cancel()
            if not proven and not self._proven(name, nonce, call.initial_metadata(),
                                               call.trailing_metadata()):
                raise self._unproven()

        return messages()

    def _proven(self, name, nonce, *metadata):
        for entries in metadata:
            for key, value in entries or ():
                if key == _auth.PROOF_METADATA and self.credentials.proves(name, nonce, value):
                    return True
        return False

    def _unproven(self):
        return AuthenticationError(
            f"the daemon at {self.address} failed to prove it holds the key from "
            f"{self.credentials.source}; not trusting its reply (is something else on that "
            f"address?)")

    def _failure(self, name, nonce, error, timeout):
        code, details = error.code(), error.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE:
            return ProctorError(code, f"cannot reach proctord at {self.address}: {details}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and timeout is not None:
            return ProctorError(code, f"{name} did not answer within {_seconds_text(timeout)}")
        if code in _NOBODY_ANSWERED:
            return ProctorError(code, details)
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return AuthenticationError(
                f"proctord at {self.address} refused the key from {self.credentials.source} "
                f"(wrong key?): {details}")
        if not self._proven(name, nonce, error.initial_metadata(), error.trailing_metadata()):
            return self._unproven()
        return ProctorError(code, details)

    # Typed calls of proctor.v1.Proctor.

    def start(self, request):
        """Start(StartRequest) -> Process record."""
        return self.call("Start", request)

    def join(self, id, timeout=None):
        """The record once process ``id`` has ended, or once ``timeout`` seconds have passed
        (None: as long as it takes), in polls of at most the call timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            poll = self.call_timeout or 3600.0
            if deadline is not None:
                poll = min(poll, max(0.0, deadline - time.monotonic()))
            request = proctor_pb2.JoinRequest(id=id, timeout=duration(poll))
            # The poll's own length, and the call timeout again for the answer.
            record = self.call("Join", request, timeout=None if self.call_timeout is None
                               else poll + self.call_timeout)
            if record.state == proctor_pb2.STATE_EXITED:
                return record
            if deadline is not None and time.monotonic() >= deadline:
                return record

    def terminate(self, request):
        """Terminate(TerminateRequest) -> Process record."""
        return self.call("Terminate", request)

    def status(self, id):
        """The record of process ``id`` (ProctorError NOT_FOUND if unknown)."""
        return self.call("Status", proctor_pb2.StatusRequest(id=id)).processes[0]

    def list(self, request=None):
        """Status(StatusRequest) -> StatusResponse: records and the cursor they reflect."""
        return self.call("Status", request or proctor_pb2.StatusRequest())

    def release(self, id):
        """Forgets ended process ``id`` and its captured output."""
        self.call("Release", proctor_pb2.ReleaseRequest(id=id))

    def logs(self, id, stderr=False, follow=False, tail_bytes=0):
        """The captured output of process ``id``: an iterator of bytes."""
        request = proctor_pb2.LogsRequest(id=id, stream=proctor_pb2.STREAM_STDERR if stderr else
                                          proctor_pb2.STREAM_STDOUT, follow=follow,
                                          tail_bytes=tail_bytes)
        return (chunk.data for chunk in self.stream("Logs", request))

    def watch(self, since=None, ids=(), name="", parent_id=None, parent_session=None, types=()):
        """Events (proctor.v1.Event) as they happen: after cursor ``since`` (None: from now),
        filtered as WatchRequest says. An iterator without end: leave the loop to stop."""
        request = proctor_pb2.WatchRequest(ids=ids, name=name, types=types)
        if since is not None:
            request.since = since
        if parent_id is not None:
            request.parent_id = parent_id
        if parent_session is not None:
            request.parent_session = parent_session
        return self.stream("Watch", request)

    def open_session(self, ttl=10.0):
        """A Session: a lease for a client that is not a worker (see Session)."""
        return Session(self, ttl)


class Session:
    """An open session of proctord: processes started with ``session=id`` have it as parent,
    and when it ends (``close()``, or the program dies and no keep-alive comes within the
    TTL) proctord terminates its daemonic processes. A keep-alive goes every third of the
    TTL from gRPC's thread that sends the requests."""

    def __init__(self, client, ttl=10.0):
        self._closing = threading.Event()
        every = ttl / 3

        def requests():
            yield proctor_pb2.SessionRequest(ttl=duration(ttl))
            while not self._closing.wait(every):
                yield proctor_pb2.SessionRequest()

        value, nonce = client.credentials.sign("Session")
        self._call = client._proctor.Session(requests(),
                                             metadata=[(_auth.AUTH_METADATA, value)])
        self._events = client._proven_stream("Session", nonce, self._call)
        # The opening must be answered in time; the session itself has no deadline.
        opening = threading.Timer(client.call_timeout, self._call.cancel) \
            if client.call_timeout else None
        if opening:
            opening.start()
        try:
            opened = next(self._events)
        except StopIteration:
            raise ProctorError(grpc.StatusCode.UNAVAILABLE,
                               "proctord closed the session at once") from None
        except ProctorError as e:
            if opening and opening.finished.is_set() and e.code == grpc.StatusCode.CANCELLED:
                raise ProctorError(grpc.StatusCode.DEADLINE_EXCEEDED, "Session did not answer "
                                   f"within {_seconds_text(client.call_timeout)}") from None
            raise
        finally:
            if opening:
                opening.cancel()
        self.id = opened.session

    def close(self):
        """Ends the session (its daemonic processes are then terminated)."""
        self._closing.set()
        self._call.cancel()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
