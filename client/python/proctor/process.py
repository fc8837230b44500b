"""proctor.Process: Python's multiprocessing.Process, run by proctord.

    from proctor import Process

    p = Process(target="sh", args=("-c", "echo A piaoing"))
    p.start()
    p.join()
    print(p.exitcode)   # 0

The target is a command: an executable (a bare name is looked up on the worker's PATH) with
``args``, then each kwarg as ``--key=value`` (keys sorted); a list target is an argv. A
Python callable cannot cross into another process of proctord, so a Python target is a
command that runs it (``[sys.executable, "-m", "mymodule"]``).

Connection. Processes are started through a Client made on first use (``$PROCTOR_ADDRESS``
and the key found as the command line finds it), or the one given as ``client``. With an
admin key the program opens one session and starts every process in it, so that proctord
ends its daemonic children when the program dies by any cause; inside a worker (its own key)
the worker is the parent of what it starts.

Output. While a child runs, its stdout and stderr are copied to this program's (two streams
per child, as a forked child would share them); proctord keeps its own copy. join() returns
once all of it has been written.

Exit. At normal exit the daemonic children still running are terminated and the others
joined, as multiprocessing does.

Environment. A child gets this program's environment, as a spawned child would, with ``env``
laid over it, but for every PROCTOR_* variable: proctord sets the worker's own.

Where proctor differs on purpose: terminate() and kill() reach the process and everything
below it; authkeys are per tree (a top-level process gets 32 fresh random bytes); a worker's
credential is its own, never its parent's.

Thread-safety: one Process object is used by one thread at a time.
"""

import atexit
import itertools
import os
import signal
import sys
import threading

import grpc

from proctor.client import Client, duration
from proctor.errors import ProctorError
from proctor.v1 import proctor_pb2

_lock = threading.Lock()
_default_client = None
_sessions = {}  # id(client) -> (client, Session), for admin keys
_children = set()  # started here and not yet seen ended
_counter = itertools.count(1)
_exit_registered = False


def default_client():
    """The Client processes and sync objects use when given none, made on first use."""
    global _default_client
    with _lock:
        if _default_client is None:
            _default_client = Client()
        return _default_client


def _barriers_in(words):
    """The ids of the Barriers that ``words`` name ("proctor-sync:Barrier:<id>"): a child
    given a Barrier is one of its known parties from its start (README, "Barrier parties")."""
    ids = []
    for word in words:
        parts = word.split(":")
        if len(parts) == 3 and parts[0] == "proctor-sync" and parts[1] == "Barrier" and \
                parts[2].isdigit() and int(parts[2]) != 0 and int(parts[2]) not in ids:
            ids.append(int(parts[2]))
    return ids


def _session_for(client):
    """This program's session on ``client`` when it holds an admin key; else 0."""
    if client.credentials.key_id != "admin":
        return 0
    with _lock:
        found = _sessions.get(id(client))
        if found is None:
            found = (client, client.open_session())
            _sessions[id(client)] = found
        return found[1].id


def _worker_authkey():
    try:
        return bytes.fromhex(os.environ.get("PROCTOR_PROCESS_AUTHKEY", ""))
    except ValueError:
        return b""


class Process:
    """multiprocessing.Process's interface over proctord (see the module's documentation).

    ``target``: a command (str) or an argv (list); ``args`` and ``kwargs`` follow it as
    strings. ``env`` (mapping or "KEY=VALUE" strings), ``cwd`` (default: this program's) and
    ``authkey`` (bytes) are proctor's additions.
    """

    def __init__(self, group=None, target=None, name=None, args=(), kwargs=None, *,
                 daemon=None, env=None, cwd=None, authkey=None, client=None):
        assert group is None, "group argument must be None for now"
        self._target = target
        self._args = tuple(args)
        self._kwargs = dict(kwargs or {})
        self._env = env
        self._cwd = cwd
        self._client = client
        self._daemon = bool(daemon)
        n = next(_counter)
        # Inside a worker, proctord names children after their parent at start.
        self._name = name or (None if os.environ.get("PROCTOR_ID") else f"Process-{n}")
        self._authkey = bytes(authkey) if authkey is not None else (
            _worker_authkey() or os.urandom(32))
        self._record = None
        self._closed = False
        self._copiers = []

    # multiprocessing's API.

    def start(self):
        """Starts the process; returns once it has been exec'd. A failed exec raises
        ProctorError (NOT_FOUND for a missing program, ...) and leaves no record."""
        self._check_closed()
        assert self._record is None, "cannot start a process twice"
        if self._target is None:
            raise ValueError("a proctor Process needs a target: the command to run")
        argv = [self._target] if isinstance(self._target, (str, os.PathLike)) else \
            list(self._target)
        if not argv:
            raise ValueError("the target argv is empty")
        client = self._client or default_client()
        self._client = client
        args = [os.fspath(a) if isinstance(a, os.PathLike) else str(a)
                for a in argv[1:] + list(self._args)]
        kwargs = {str(k): str(v) for k, v in self._kwargs.items()}
        request = proctor_pb2.StartRequest(
            target=os.fspath(argv[0]), args=args, kwargs=kwargs,
            name=self._name or "", daemon=self._daemon, env=self._environment(),
            cwd=os.path.abspath(self._cwd) if self._cwd else os.getcwd(),
            authkey=self._authkey, session=_session_for(client),
            barriers=_barriers_in(args + list(kwargs.values())))
        self._record = client.start(request)
        self._name = self._record.name
        with _lock:
            _children.add(self)
        _register_exit()
        self._copiers = [self._copy(stream, out) for stream, out in
                         ((False, sys.stdout), (True, sys.stderr))]

    def join(self, timeout=None):
        """Waits until the process ends, or ``timeout`` seconds pass (zero or less: only
        looks). Returns None, as multiprocessing does: check ``exitcode``."""
        self._check_closed()
        assert self._record is not None, "can only join a started process"
        timeout = None if timeout is None else max(0.0, timeout)
        self._record = self._client.join(self._record.id, timeout)
        if self._ended():
            for copier in self._copiers:
                copier.join()
            with _lock:
                _children.discard(self)

    def is_alive(self):
        """Whether the process runs (or waits to run again under its restart policy)."""
        self._check_closed()
        if self._record is None:
            return False
        if not self._ended():
            self._refresh()
        return not self._ended()

    def terminate(self):
        """SIGTERM to the process and everything below it, and nothing more (it may ignore
        it); returns at once."""
        self._signal(signal.SIGTERM)

    def kill(self):
        """SIGKILL to the process and everything below it; returns at once."""
        self._signal(signal.SIGKILL)

    def interrupt(self):
        """SIGINT to the process and everything below it; returns at once."""
        self._signal(signal.SIGINT)

    def close(self):
        """Forgets the ended process in proctord (its record and captured output). ValueError
        while it runs. Later calls raise ValueError, as multiprocessing's do."""
        if self._closed:
            return
        if self._record is not None:
            if not self._ended():
                self._refresh()
            if not self._ended():
                raise ValueError("Cannot close a process while it is still running. "
                                 "You should first call join() or terminate().")
            for copier in self._copiers:
                copier.join()
            self._client.release(self._record.id)
            with _lock:
                _children.discard(self)
        self._closed = True

    @property
    def exitcode(self):
        """None while it runs (or before start); its exit code, or -N when signal N ended it."""
        self._check_closed()
        if self._record is None:
            return None
        if not self._ended():
            self._refresh()
        return self._record.exitcode if self._record.HasField("exitcode") else None

    @property
    def name(self):
        return self._name

    @name.setter
    def name(self, name):
        assert isinstance(name, str), "name must be a string"
        self._name = name

    @property
    def daemon(self):
        return self._daemon

    @daemon.setter
    def daemon(self, daemonic):
        assert self._record is None, "process has already started"
        self._daemon = bool(daemonic)

    @property
    def pid(self):
        """The process's pid once started (None before)."""
        self._check_closed()
        return self._record.pid if self._record is not None else None

    ident = pid

    @property
    def authkey(self):
        """multiprocessing's authkey: the program's own secret, passed to the process as
        $PROCTOR_PROCESS_AUTHKEY; proctord does not accept it as a credential."""
        return self._authkey

    @authkey.setter
    def authkey(self, authkey):
        self._authkey = bytes(authkey)

    # proctor's own.

    @property
    def id(self):
        """proctord's id of the process (None before start)."""
        return self._record.id if self._record is not None else None

    @property
    def record(self):
        """The last proctor.v1.Process record seen (None before start)."""
        return self._record

    def __repr__(self):
        if self._record is None:
            status = "initial"
        elif self._record.state == proctor_pb2.STATE_EXITED:
            status = f"stopped exitcode={self._record.exitcode}" if \
                self._record.HasField("exitcode") else "stopped"
        else:
            status = "started"
        pid = f" pid={self._record.pid}" if self._record is not None else ""
        daemon = " daemon" if self._daemon else ""
        return f"<{type(self).__name__} name={self._name!r}{pid} {status}{daemon}>"

    # Inner workings.

    def _check_closed(self):
        if self._closed:
            raise ValueError("process object is closed")

    def _ended(self):
        return self._record.state == proctor_pb2.STATE_EXITED

    def _refresh(self):
        self._record = self._client.status(self._record.id)

    def _signal(self, number):
        self._check_closed()
        assert self._record is not None, "can only signal a started process"
        self._record = self._client.terminate(proctor_pb2.TerminateRequest(
            id=self._record.id, signal=number, wait=False, escalate=False))

    def _environment(self):
        environment = {k: v for k, v in os.environ.items() if not k.startswith("PROCTOR_")}
        if isinstance(self._env, dict):
            environment.update({str(k): str(v) for k, v in self._env.items()})
        elif self._env:
            environment.update(entry.split("=", 1) for entry in self._env)
        return [f"{k}={v}" for k, v in environment.items()]

    def _copy(self, stderr, out):
        """A thread writing the child's stdout (or stderr) to ``out`` until it ends."""
        def copy():
            try:
                for data in self._client.logs(self._record.id, stderr=stderr, follow=True):
                    target = getattr(out, "buffer", None)
                    if target is not None:
                        out.flush()
                        target.write(data)
                        target.flush()
                    else:
                        out.write(data.decode(errors="replace"))
                        out.flush()
            except ProctorError as e:
                if e.code != grpc.StatusCode.NOT_FOUND:  # released meanwhile
                    print(f"proctor: output of {self._name}: {e}", file=sys.stderr)

        which = "stderr" if stderr else "stdout"
        thread = threading.Thread(target=copy, name=f"{self._name} {which}", daemon=True)
        thread.start()
        return thread


def active_children():
    """The processes this program started that still run (those seen ended are forgotten)."""
    with _lock:
        children = list(_children)
    alive = [p for p in children if p.is_alive()]
    with _lock:
        _children.intersection_update(alive)
    return alive


def _exit_function():
    """As multiprocessing's: terminate the daemonic children, join the others, then end the
    sessions."""
    with _lock:
        children = list(_children)
    for p in children:
        try:
            if p.daemon and p.is_alive():
                p.terminate()
        except ProctorError as e:
            print(f"proctor: cannot terminate {p.name} at exit: {e}", file=sys.stderr)
    for p in children:
        try:
            p.join()
        except ProctorError as e:
            print(f"proctor: cannot join {p.name} at exit: {e}", file=sys.stderr)
    with _lock:
        sessions = list(_sessions.values())
        _sessions.clear()
    for _, session in sessions:
        session.close()


def _register_exit():
    global _exit_registered
    with _lock:
        if not _exit_registered:
            atexit.register(_exit_function)
            _exit_registered = True


__all__ = ["Process", "active_children", "default_client", "duration"]
