"""multiprocessing's Lock, RLock, Semaphore, BoundedSemaphore, Event, Condition and Barrier,
kept by proctord (service proctor.v1.Sync), with threading's interfaces.

    lock = proctor.Lock()
    with lock:
        ...
    Process(target=["worker", str(lock)]).start()   # "proctor-sync:Lock:7"
    # in the worker, in any language: proctor.Lock.from_arg(sys.argv[1])

Constructing an object makes it in proctord (``name``: the object of that name and kind in
reach, made if missing). With an admin key it belongs to this program's session and is freed
when the program ends; inside a worker it belongs to the worker. Objects are handles: two
handles of one id name the same object.

Semantics are threading's (README, "Synchronisation objects"): waiters are served first come,
first served; a timeout is an answer (False), not an error. Misuse raises what threading
raises, with proctord's message: RuntimeError ("release unlocked lock", "cannot wait on
un-acquired lock"), ValueError ("Semaphore released too many times", "can't specify a timeout
for a non-blocking call") and threading.BrokenBarrierError. An RLock, and a Condition's lock,
belong to a thread of this process. When a holder dies, what it held is released, and the
next acquirer finds ``abandoned`` true: shared state may need repair. A Process given a
Barrier in its arguments is one of its known parties: if it ends without arriving, the
Barrier breaks (Barrier.bind).

A waiting call is one call, whose deadline is its timeout plus the client's call timeout.
"""

import os
import threading
import time

import grpc

from proctor import process as _process
from proctor.client import duration
from proctor.errors import ProctorError
from proctor.v1 import sync_pb2

_ARG_PREFIX = "proctor-sync"
_KINDS = {
    "Lock": sync_pb2.SYNC_LOCK, "RLock": sync_pb2.SYNC_RLOCK,
    "Semaphore": sync_pb2.SYNC_SEMAPHORE, "BoundedSemaphore": sync_pb2.SYNC_BOUNDED_SEMAPHORE,
    "Event": sync_pb2.SYNC_EVENT, "Condition": sync_pb2.SYNC_CONDITION,
    "Barrier": sync_pb2.SYNC_BARRIER,
}
# What threading raises where proctord answers with these codes.
_MISUSE = {
    grpc.StatusCode.FAILED_PRECONDITION: RuntimeError,
    grpc.StatusCode.INVALID_ARGUMENT: ValueError,
    grpc.StatusCode.ABORTED: threading.BrokenBarrierError,
}


class _SyncObject:
    _kind_name = None

    def __init__(self, *, name=None, client=None, _id=None, **create):
        self._client = client or _process.default_client()
        self._session = _process._session_for(self._client)
        self.abandoned = False
        if _id is not None:
            self.id = _id
            return
        request = sync_pb2.SyncCreateRequest(kind=_KINDS[self._kind_name], name=name or "",
                                             exist_ok=bool(name), session=self._session,
                                             **create)
        self.id = self._call("SyncCreate", request).id

    @classmethod
    def from_arg(cls, arg, client=None):
        """The object ``str(obj)`` named, e.g. in another process's argv."""
        parts = str(arg).split(":")
        if len(parts) != 3 or parts[0] != _ARG_PREFIX or not parts[2].isdigit() or \
                int(parts[2]) == 0:
            raise ValueError(f'"{arg}" does not name a sync object ({_ARG_PREFIX}:<Kind>:<id>)')
        if parts[1] != cls._kind_name:
            raise ValueError(f'"{arg}" names a {parts[1]}, not a {cls._kind_name}')
        return cls(client=client, _id=int(parts[2]))

    def __str__(self):
        return f"{_ARG_PREFIX}:{self._kind_name}:{self.id}"

    def __repr__(self):
        return f"<proctor.{self._kind_name} id={self.id}>"

    def info(self):
        """The object as proctord has it (proctor.v1.SyncObject)."""
        reply = self._call("SyncList", sync_pb2.SyncListRequest(id=self.id))
        if not reply.objects:
            raise ProctorError(grpc.StatusCode.NOT_FOUND, f"no sync object with id {self.id}")
        return reply.objects[0]

    def remove(self):
        """Frees the object in proctord; its waiters get NOT_FOUND."""
        self._call("SyncRemove", sync_pb2.SyncRemoveRequest(id=self.id))

    def _call(self, method, request, wait=0):
        """``wait``: seconds the call may wait in proctord (float("inf"): no end)."""
        call_timeout = self._client.call_timeout
        timeout = None if call_timeout is None or wait == float("inf") else call_timeout + wait
        try:
            return self._client.call(method, request, timeout=timeout)
        except ProctorError as e:
            misuse = _MISUSE.get(e.code)
            if misuse is None:
                raise
            raise self._misuse(misuse, e) from e

    def _misuse(self, kind, error):
        return kind(error.message)

    def _party(self):
        return {"session": self._session, "thread": threading.get_ident()}

    def _acquire(self, blocking, timeout):
        """``timeout`` None: as long as it takes."""
        request = sync_pb2.SyncAcquireRequest(id=self.id, blocking=bool(blocking),
                                              **self._party())
        if timeout is not None:
            request.timeout.CopyFrom(duration(timeout))
        wait = float("inf") if blocking and timeout is None else (timeout or 0)
        reply = self._call("SyncAcquire", request, wait=max(0, wait))
        if reply.ok:
            self.abandoned = reply.abandoned
        return reply.ok

    def _wait(self, timeout):
        request = sync_pb2.SyncWaitRequest(id=self.id, **self._party())
        if timeout is not None:
            request.timeout.CopyFrom(duration(timeout))
        wait = float("inf") if timeout is None else max(0, timeout)
        return self._call("SyncWait", request, wait=wait)

    def _update(self, op, **fields):
        return self._call("SyncUpdate", sync_pb2.SyncUpdateRequest(id=self.id, op=op,
                                                                   **fields, **self._party()))


class _Lockish(_SyncObject):
    """acquire/release and the context manager, as threading.Lock has them."""

    def acquire(self, blocking=True, timeout=-1):
        """True once acquired; False if not within ``timeout`` seconds (-1: as long as it
        takes) or, with ``blocking`` false, if it is held."""
        return self._acquire(blocking, None if timeout == -1 else timeout)

    def release(self):
        self._call("SyncRelease", sync_pb2.SyncReleaseRequest(id=self.id, **self._party()))

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


class Lock(_Lockish):
    """threading.Lock: any process may release it, as multiprocessing allows."""

    _kind_name = "Lock"

    def __init__(self, *, name=None, client=None, _id=None):
        super().__init__(name=name, client=client, _id=_id)

    def locked(self):
        return self.info().value == 0


class RLock(_Lockish):
    """threading.RLock: re-entered by the thread that holds it."""

    _kind_name = "RLock"

    def __init__(self, *, name=None, client=None, _id=None):
        super().__init__(name=name, client=client, _id=_id)


class Semaphore(_SyncObject):
    """threading.Semaphore(value)."""

    _kind_name = "Semaphore"

    def __init__(self, value=1, *, name=None, client=None, _id=None):
        if _id is None and value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        super().__init__(name=name, client=client, _id=_id, value=value)

    def acquire(self, blocking=True, timeout=None):
        """True once a unit is taken; False if none within ``timeout`` seconds (None: as
        long as it takes) or, with ``blocking`` false, if none is free."""
        return self._acquire(blocking, timeout)

    def release(self, n=1):
        if n < 1:
            raise ValueError("n must be one or more")
        self._call("SyncRelease", sync_pb2.SyncReleaseRequest(id=self.id, n=n,
                                                              **self._party()))

    def get_value(self):
        return self.info().value

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


class BoundedSemaphore(Semaphore):
    """threading.BoundedSemaphore: a release past the initial value raises ValueError."""

    _kind_name = "BoundedSemaphore"

    def _misuse(self, kind, error):
        return ValueError(error.message) if kind is RuntimeError else kind(error.message)


class Event(_SyncObject):
    """threading.Event."""

    _kind_name = "Event"

    def __init__(self, *, name=None, client=None, _id=None):
        super().__init__(name=name, client=client, _id=_id)

    def is_set(self):
        return self.info().is_set

    def set(self):
        self._update(sync_pb2.SYNC_EVENT_SET)

    def clear(self):
        self._update(sync_pb2.SYNC_EVENT_CLEAR)

    def wait(self, timeout=None):
        """The flag, once set or once ``timeout`` seconds have passed (None: until set)."""
        return self._wait(timeout).ok


class Condition(_Lockish):
    """threading.Condition(lock): over a proctor Lock or RLock of the same owner, or a new
    RLock of its own."""

    _kind_name = "Condition"

    def __init__(self, lock=None, *, name=None, client=None, _id=None):
        if lock is not None and not isinstance(lock, (Lock, RLock)):
            raise TypeError("a Condition's lock must be a proctor.Lock or proctor.RLock")
        super().__init__(name=name, client=client, _id=_id,
                         lock_id=lock.id if lock is not None else 0)

    def wait(self, timeout=None):
        """Releases the lock, waits to be notified or for ``timeout`` seconds, and holds the
        lock again before returning; False if the wait timed out."""
        return self._wait(timeout).ok

    def wait_for(self, predicate, timeout=None):
        """Waits until ``predicate()`` is true, ``timeout`` seconds in all; its last value."""
        deadline = None if timeout is None else time.monotonic() + timeout
        result = predicate()
        while not result:
            remaining = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
            self.wait(remaining)
            result = predicate()
        return result

    def notify(self, n=1):
        self._update(sync_pb2.SYNC_NOTIFY, n=n)

    def notify_all(self):
        self._update(sync_pb2.SYNC_NOTIFY_ALL)


class Barrier(_SyncObject):
    """threading.Barrier(parties, timeout). There is no ``action``: it would have to run in
    proctord."""

    _kind_name = "Barrier"

    def __init__(self, parties=None, action=None, timeout=None, *, name=None, client=None,
                 _id=None):
        if action is not None:
            raise ValueError("a proctor Barrier takes no action: run it after wait() in the "
                             "party whose index is 0")
        create = {}
        if _id is None:
            if parties is None or parties < 1:
                raise ValueError("parties must be 1 or more")
            create["parties"] = parties
            if timeout is not None:
                create["timeout"] = duration(timeout)
        super().__init__(name=name, client=client, _id=_id, **create)

    def wait(self, timeout=None):
        """This party's arrival index, 0 .. parties-1, once all have arrived; raises
        threading.BrokenBarrierError if the barrier breaks (a wait timed out, abort(),
        reset() or a party's death)."""
        return self._wait(timeout).index

    def bind(self, process=None):
        """Makes a party known to the Barrier: ``process`` (a started Process of this program,
        or one of its descendants' ids), else this program itself (the worker it runs as, or
        its session). A bound party that ends without having arrived in the current round
        breaks the Barrier. A child given the Barrier in its arguments is bound from its
        start. Binding a party twice raises ProctorError (ALREADY_EXISTS); one more than
        ``parties``, or a process that has ended, RuntimeError."""
        request = sync_pb2.SyncBindRequest(id=self.id)
        if process is not None:
            process_id = process if isinstance(process, int) else process.id
            if process_id is None:
                raise RuntimeError("can only bind a started process to a Barrier")
            request.process = process_id
        elif self._session:
            request.session = self._session
        elif os.environ.get("PROCTOR_ID", "").isdigit():
            request.process = int(os.environ["PROCTOR_ID"])
        else:
            raise RuntimeError("this program is neither a worker nor in a session of its own: "
                               "give the process to bind")
        self._call("SyncBind", request)

    def abort(self):
        self._update(sync_pb2.SYNC_BARRIER_ABORT)

    def reset(self):
        self._update(sync_pb2.SYNC_BARRIER_RESET)

    @property
    def parties(self):
        return self.info().parties

    @property
    def n_waiting(self):
        return self.info().n_waiting

    @property
    def broken(self):
        return self.info().broken


__all__ = ["Lock", "RLock", "Semaphore", "BoundedSemaphore", "Event", "Condition", "Barrier"]
