"""proctor: Python's multiprocessing.Process, and its synchronisation objects, run by proctord.

    import proctor

    p = proctor.Process(target="sh", args=("-c", "echo hello"))
    p.start()
    p.join()
    print(p.exitcode)

    for event in proctor.watch():          # what happens in proctord, as it happens
        print(event.type, event.process.name)

See proctor.process (Process), proctor.synchronize (Lock, RLock, Semaphore, BoundedSemaphore,
Event, Condition, Barrier) and proctor.client (Client: every call, signed, every reply
checked). The generated API is proctor.v1 (proctor_pb2, sync_pb2 and their _grpc stubs).
"""

from proctor.client import Client, Session, duration
from proctor.errors import AuthenticationError, KeyFileWarning, ProctorError
from proctor.process import Process, active_children, default_client
from proctor.synchronize import (Barrier, BoundedSemaphore, Condition, Event, Lock, RLock,
                                 Semaphore)
from proctor._auth import Credentials, find_credentials


def watch(since=None, **filters):
    """Events from proctord (proctor.v1.Event) as they happen, through the default client:
    see Client.watch. An iterator without end; leave the loop to stop watching."""
    return default_client().watch(since=since, **filters)


__all__ = [
    "AuthenticationError", "Barrier", "BoundedSemaphore", "Client", "Condition", "Credentials",
    "Event", "KeyFileWarning", "Lock", "Process", "ProctorError", "RLock", "Semaphore",
    "Session", "active_children", "default_client", "duration", "find_credentials", "watch",
]
