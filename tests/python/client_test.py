#!/usr/bin/python3
"""Tests of the Python client (client/python) as installed, against a real proctord.

Run by ctest (python_client_tests) with the venv python3 that install_client.sh made, and
$PROCTORD (the proctord built here) and $PROCTOR_SOURCE_DIR set. Each test class starts its
own proctord on a temporary socket and state directory; processes are real.
"""

import concurrent.futures
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import warnings

import grpc

import proctor
from proctor.v1 import proctor_pb2, proctor_pb2_grpc

PROCTORD = os.environ["PROCTORD"]
SOURCE_DIR = os.environ["PROCTOR_SOURCE_DIR"]


class Daemon:
    """A proctord of the test's own, on a temporary directory."""

    def __init__(self):
        self.dir = tempfile.TemporaryDirectory(prefix="proctor-py-")
        self.state = os.path.join(self.dir.name, "state")
        self.address = "unix:" + os.path.join(self.dir.name, "proctord.sock")
        self.keyfile = os.path.join(self.state, "authkey")
        self.process = subprocess.Popen(
            [PROCTORD, "--state-dir", self.state, "--listen", self.address,
             "--log-level", "warn", "--shutdown-grace", "1"])
        deadline = time.monotonic() + 30
        while not (os.path.exists(self.address[5:]) and os.path.exists(self.keyfile)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"proctord did not start (status {self.process.poll()})")
            time.sleep(0.02)

    def client(self, **options):
        return proctor.Client(self.address, authkey_file=self.keyfile, **options)

    def environment(self):
        """What a program needs to find this daemon by itself."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROCTOR_")}
        env.update(PROCTOR_ADDRESS=self.address, PROCTOR_AUTHKEY_FILE=self.keyfile)
        return env

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        self.dir.cleanup()


def python_worker(source, *args):
    """A Process running `source` in this venv's python3, with `args` in its sys.argv."""
    return proctor.Process(target=[sys.executable, "-c", source, *map(str, args)])


class DaemonTest(unittest.TestCase):
    """A daemon for the class; the library's default client pointed at it."""

    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon()
        cls.client = cls.daemon.client()
        proctor.process._default_client = cls.client

    @classmethod
    def tearDownClass(cls):
        proctor.process._exit_function()
        proctor.process._default_client = None
        cls.client.close()
        cls.daemon.stop()

    def run_program(self, source, timeout=60):
        """Runs `source` in a new python3 (this venv's) that finds the daemon through its
        environment, as a user's program would; its CompletedProcess."""
        return subprocess.run([sys.executable, "-c", source], env=self.daemon.environment(),
                              capture_output=True, text=True, timeout=timeout)


class InstalledPackageTest(unittest.TestCase):
    def test_imported_from_the_installed_package(self):
        # Not the source tree's copy: the wheel's, with stubs generated at build time.
        self.assertIn(os.path.join("site-packages", "proctor"), proctor.__file__)
        self.assertTrue(hasattr(proctor_pb2_grpc, "ProctorStub"))
        from proctor.v1 import sync_pb2_grpc
        self.assertTrue(hasattr(sync_pb2_grpc, "SyncStub"))

    def test_version_is_the_projects(self):
        with open(os.path.join(SOURCE_DIR, "CMakeLists.txt")) as f:
            cmake_version = re.search(r"project\(proctor VERSION ([0-9.]+)", f.read()).group(1)
        from importlib import metadata
        self.assertEqual(metadata.version("proctor"), cmake_version)


class ProcessTest(DaemonTest):
    def test_start_join_exitcode(self):
        p = proctor.Process(target="sh", args=("-c", "exit 3"))
        self.assertIsNone(p.pid)
        self.assertIsNone(p.exitcode)
        self.assertFalse(p.is_alive())
        self.assertRegex(p.name, r"^Process-\d+$")
        p.start()
        self.assertGreater(p.pid, 1)
        self.assertEqual(p.ident, p.pid)
        self.assertIsNone(p.join())
        self.assertEqual(p.exitcode, 3)
        self.assertFalse(p.is_alive())
        self.assertEqual(p.record.state, proctor_pb2.STATE_EXITED)
        p.close()

    def test_argv_target_args_kwargs_env_cwd(self):
        with tempfile.TemporaryDirectory() as cwd:
            p = proctor.Process(target=["sh", "-c", 'echo "$0 $1 $GREETING $(pwd)"'],
                                args=("one",), kwargs={"mode": "fast"},
                                env={"GREETING": "hello"}, cwd=cwd)
            p.start()
            p.join()
            output = b"".join(self.client.logs(p.id)).decode()
        self.assertEqual(output, f"one --mode=fast hello {os.path.realpath(cwd)}\n")

    def test_join_timeout_terminate_kill(self):
        p = proctor.Process(target="sleep", args=("60",), name="sleeper")
        p.start()
        self.assertEqual(p.name, "sleeper")
        started = time.monotonic()
        p.join(0.2)
        self.assertLess(time.monotonic() - started, 5)
        self.assertTrue(p.is_alive())
        self.assertIsNone(p.exitcode)
        p.terminate()
        p.join(10)
        self.assertEqual(p.exitcode, -signal.SIGTERM)
        q = proctor.Process(target="sleep", args=("60",))
        q.start()
        q.kill()
        q.join(10)
        self.assertEqual(q.exitcode, -signal.SIGKILL)

    def test_terminate_ignored_is_not_escalated(self):
        # As multiprocessing: SIGTERM alone, which the child may ignore.
        p = proctor.Process(target="sh", args=("-c", "trap '' TERM; sleep 1"))
        p.start()
        time.sleep(0.2)
        p.terminate()
        p.join()
        self.assertEqual(p.exitcode, 0)

    def test_misuse_raises_as_multiprocessing(self):
        p = proctor.Process(target="true")
        with self.assertRaisesRegex(AssertionError, "can only join a started process"):
            p.join()
        with self.assertRaisesRegex(AssertionError, "group argument must be None"):
            proctor.Process(group="g", target="true")
        p.start()
        with self.assertRaisesRegex(AssertionError, "cannot start a process twice"):
            p.start()
        with self.assertRaisesRegex(AssertionError, "process has already started"):
            p.daemon = True
        running = proctor.Process(target="sleep", args=("60",))
        running.start()
        with self.assertRaisesRegex(ValueError, "Cannot close a process while it is still running"):
            running.close()
        running.kill()
        running.join()
        running.close()
        with self.assertRaisesRegex(ValueError, "process object is closed"):
            running.is_alive()
        with self.assertRaisesRegex(ValueError, "needs a target"):
            proctor.Process().start()
        p.join()

    def test_a_listing_over_four_mebibytes_comes_back(self):
        # One reply for every record, past gRPC's default 4 MiB receive limit.
        long_arg = "a" * (100 * 1024)
        ids = [self.client.start(proctor_pb2.StartRequest(
            target="/bin/sh", args=["-c", "exit 0", long_arg])).id for _ in range(45)]
        listed = {p.id for p in self.client.list().processes}
        self.assertTrue(set(ids) <= listed)
        for id in ids:
            self.client.join(id)
            self.client.release(id)

    def test_close_releases_the_record(self):
        p = proctor.Process(target="true")
        p.start()
        p.join()
        process_id = p.id
        p.close()
        with self.assertRaises(proctor.ProctorError) as raised:
            self.client.status(process_id)
        self.assertEqual(raised.exception.code, grpc.StatusCode.NOT_FOUND)

    def test_missing_program_is_the_start_error(self):
        p = proctor.Process(target="/nonexistent/program")
        with self.assertRaises(proctor.ProctorError) as raised:
            p.start()
        self.assertEqual(raised.exception.code, grpc.StatusCode.NOT_FOUND)
        self.assertIn("/nonexistent/program", str(raised.exception))
        self.assertIsNone(p.pid)

    def test_authkey_reaches_the_child(self):
        key = bytes(range(32))
        p = proctor.Process(target="sh", args=("-c", 'echo "$PROCTOR_PROCESS_AUTHKEY"'),
                            authkey=key)
        self.assertEqual(p.authkey, key)
        p.start()
        p.join()
        self.assertEqual(b"".join(self.client.logs(p.id)).decode().strip(), key.hex())
        self.assertNotEqual(proctor.Process(target="true").authkey, key)  # fresh per tree

    def test_active_children(self):
        p = proctor.Process(target="sleep", args=("60",))
        p.start()
        self.assertIn(p, proctor.active_children())
        p.kill()
        p.join()
        self.assertNotIn(p, proctor.active_children())

    def test_program_output_and_exit_as_multiprocessing(self):
        # The child's output reaches the program's own; at exit the program joins its
        # non-daemonic child and terminates its daemonic one.
        result = self.run_program(
            "import proctor\n"
            "proctor.Process(target='sh', args=('-c', 'sleep 0.5; echo A piao end')).start()\n"
            "d = proctor.Process(target='sleep', args=('60',), daemon=True)\n"
            "d.start()\n"
            "print('daemon', d.id, flush=True)\n"
            "print('main thread', flush=True)\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.splitlines()
        self.assertEqual(lines[1:], ["main thread", "A piao end"])
        daemon_id = int(lines[0].split()[1])
        self.assertEqual(self.client.join(daemon_id, 10).exitcode, -signal.SIGTERM)

    def test_daemonic_child_ends_with_a_killed_program(self):
        # The program's session ends with it, SIGKILL included; proctord ends its daemonic
        # children.
        program = subprocess.Popen(
            [sys.executable, "-c",
             "import proctor, time\n"
             "d = proctor.Process(target='sleep', args=('60',), daemon=True)\n"
             "d.start()\n"
             "print(d.id, flush=True)\n"
             "time.sleep(60)\n"], env=self.daemon.environment(), stdout=subprocess.PIPE,
            text=True)
        daemon_id = int(program.stdout.readline())
        program.kill()
        program.wait()
        program.stdout.close()
        ended = self.client.join(daemon_id, 30)
        self.assertEqual(ended.state, proctor_pb2.STATE_EXITED)
        self.assertEqual(ended.exitcode, -signal.SIGTERM)


class WatchTest(DaemonTest):
    def test_events_as_an_iterator(self):
        cursor = self.client.list().cursor
        p = proctor.Process(target="true")
        p.start()
        p.join()
        seen = []
        for event in proctor.watch(since=cursor, ids=[p.id]):
            seen.append(event.type)
            if event.type == proctor_pb2.EVENT_EXITED:
                self.assertEqual(event.process.exitcode, 0)
                break
        self.assertEqual(seen, [proctor_pb2.EVENT_STARTED, proctor_pb2.EVENT_EXITED])

    def test_live_events_and_stopping(self):
        # Nothing happens for a while: the stream waits (no deadline), then hands out the
        # start of a process.
        events = self.client.watch(types=[proctor_pb2.EVENT_STARTED])
        later = proctor.Process(target="true")
        starter = threading.Timer(0.3, later.start)
        starter.start()
        first = next(events)
        self.assertEqual(first.type, proctor_pb2.EVENT_STARTED)
        events.close()  # cancels the stream
        starter.join()
        later.join()
        self.assertEqual(first.process.id, later.id)

    def test_a_cursor_never_kept_is_out_of_range(self):
        with self.assertRaises(proctor.ProctorError) as raised:
            next(self.client.watch(since=10**12))
        self.assertIn(raised.exception.code, (grpc.StatusCode.OUT_OF_RANGE,
                                              grpc.StatusCode.INVALID_ARGUMENT))


class SyncTest(DaemonTest):
    def test_lock(self):
        lock = proctor.Lock()
        self.assertTrue(lock.acquire())
        self.assertTrue(lock.locked())
        self.assertFalse(lock.acquire(timeout=0.1))
        self.assertFalse(lock.acquire(blocking=False))
        lock.release()
        with self.assertRaisesRegex(RuntimeError, "release unlocked lock"):
            lock.release()
        with self.assertRaisesRegex(ValueError, "can't specify a timeout"):
            lock.acquire(False, 1)
        with lock:
            self.assertTrue(lock.locked())
        self.assertFalse(lock.locked())

    def test_lock_across_processes(self):
        lock = proctor.Lock()
        lock.acquire()
        # A Python worker takes the lock it is passed, once this program lets it go.
        child = python_worker("import proctor, sys\n"
                              "with proctor.Lock.from_arg(sys.argv[1]):\n"
                              "    print('held by the child', flush=True)\n", lock)
        child.start()
        child.join(0.5)
        self.assertTrue(child.is_alive())
        lock.release()
        child.join(30)
        self.assertEqual(child.exitcode, 0)
        self.assertEqual(b"".join(self.client.logs(child.id)), b"held by the child\n")

    def test_abandoned_lock(self):
        lock = proctor.Lock()
        holder = python_worker("import proctor, sys, time\n"
                               "proctor.Lock.from_arg(sys.argv[1]).acquire()\n"
                               "print('held', flush=True)\n"
                               "time.sleep(60)\n", lock)
        holder.start()
        for _ in self.client.logs(holder.id, follow=True):
            break  # "held"
        holder.kill()
        self.assertTrue(lock.acquire(timeout=30))
        self.assertTrue(lock.abandoned)
        lock.release()

    def test_rlock(self):
        rlock = proctor.RLock()
        with rlock:
            with rlock:
                pass
            other = concurrent.futures.ThreadPoolExecutor(1)
            self.assertFalse(other.submit(rlock.acquire, timeout=0.1).result())
            with self.assertRaisesRegex(RuntimeError, "cannot release un-acquired lock"):
                other.submit(rlock.release).result()
            other.shutdown()

    def test_semaphores(self):
        semaphore = proctor.Semaphore(2)
        self.assertTrue(semaphore.acquire())
        self.assertTrue(semaphore.acquire())
        self.assertFalse(semaphore.acquire(timeout=0.1))
        self.assertEqual(semaphore.get_value(), 0)
        semaphore.release(2)
        semaphore.release()  # unbounded
        self.assertEqual(semaphore.get_value(), 3)
        bounded = proctor.BoundedSemaphore(1)
        with bounded:
            self.assertEqual(bounded.get_value(), 0)
        with self.assertRaisesRegex(ValueError, "Semaphore released too many times"):
            bounded.release()
        with self.assertRaisesRegex(ValueError, "initial value must be >= 0"):
            proctor.Semaphore(-1)

    def test_event(self):
        event = proctor.Event()
        self.assertFalse(event.is_set())
        self.assertFalse(event.wait(0.1))
        setter = python_worker("import proctor, sys; proctor.Event.from_arg(sys.argv[1]).set()",
                               event)
        setter.start()
        self.assertTrue(event.wait(30))
        self.assertTrue(event.is_set())
        event.clear()
        self.assertFalse(event.is_set())
        setter.join()

    def test_condition(self):
        condition = proctor.Condition(proctor.Lock())
        items = []

        def produce():
            with condition:
                items.append(1)
                condition.notify()

        with condition:
            self.assertFalse(condition.wait(0.1))  # timed out, lock held again
            threading.Timer(0.2, produce).start()
            self.assertTrue(condition.wait_for(lambda: items, 30))
        with self.assertRaisesRegex(RuntimeError, "cannot notify on un-acquired lock"):
            condition.notify_all()
        with self.assertRaises(TypeError):
            proctor.Condition(proctor.Event())

    def test_barrier(self):
        barrier = proctor.Barrier(2)
        self.assertEqual(barrier.parties, 2)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            indices = sorted(pool.map(lambda _: barrier.wait(30), range(2)))
        self.assertEqual(indices, [0, 1])
        with self.assertRaises(threading.BrokenBarrierError):
            barrier.wait(0.1)  # alone: the timeout breaks it
        self.assertTrue(barrier.broken)
        barrier.reset()
        self.assertFalse(barrier.broken)
        barrier.abort()
        with self.assertRaises(threading.BrokenBarrierError):
            barrier.wait(1)
        with self.assertRaisesRegex(ValueError, "takes no action"):
            proctor.Barrier(2, action=print)

    def test_a_bound_party_killed_before_arriving_breaks_the_barrier(self):
        barrier = proctor.Barrier(3)
        # Given the Barrier in its arguments, the child is one of its known parties.
        party = python_worker("import sys, time\n"
                              "print('running', flush=True)\n"
                              "time.sleep(60)\n", barrier)
        party.start()
        self.assertEqual([p.process for p in barrier.info().bound], [party.id])
        for _ in self.client.logs(party.id, follow=True):
            break  # "running"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(barrier.wait, 30)
            while barrier.n_waiting < 1:
                time.sleep(0.01)
            party.kill()
            with self.assertRaisesRegex(threading.BrokenBarrierError,
                                        f"process {party.id}, one of its bound parties, "
                                        "ended without arriving"):
                waiting.result()

    def test_barrier_binding_and_its_refusals(self):
        barrier = proctor.Barrier(2)
        barrier.bind()  # this program, as its session
        sleeper = proctor.Process(target=["sleep", "60"])
        with self.assertRaisesRegex(RuntimeError, "can only bind a started process"):
            barrier.bind(sleeper)
        sleeper.start()
        barrier.bind(sleeper)
        with self.assertRaises(proctor.ProctorError) as twice:
            barrier.bind(sleeper)
        self.assertEqual(twice.exception.code, grpc.StatusCode.ALREADY_EXISTS)
        late = proctor.Process(target=["sleep", "60"], args=[str(barrier)])
        with self.assertRaises(proctor.ProctorError) as full:
            late.start()  # one more than its parties: nothing is started
        self.assertEqual(full.exception.code, grpc.StatusCode.FAILED_PRECONDITION)
        self.assertIn("a new process cannot be one more", full.exception.message)
        self.assertIsNone(late.id)
        # An unbound arrival still counts: two threads of this program pass it.
        sleeper.kill()
        sleeper.join(30)
        self.assertTrue(barrier.broken)
        barrier.reset()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            self.assertEqual(sorted(pool.map(lambda _: barrier.wait(30), range(2))), [0, 1])

    def test_named_objects_and_bad_names(self):
        first = proctor.Event(name="py-ready")
        second = proctor.Event(name="py-ready")
        self.assertEqual(first.id, second.id)
        with self.assertRaisesRegex(ValueError, "names a Event, not a Lock"):
            proctor.Lock.from_arg(str(first))
        with self.assertRaisesRegex(ValueError, "does not name a sync object"):
            proctor.Lock.from_arg("lock-7")
        first.remove()
        with self.assertRaises(proctor.ProctorError) as raised:
            second.set()
        self.assertEqual(raised.exception.code, grpc.StatusCode.NOT_FOUND)


class AuthenticationTest(DaemonTest):
    def test_wrong_key_is_a_clear_error(self):
        with tempfile.NamedTemporaryFile() as wrong:
            wrong.write(b"not the key")
            wrong.flush()
            os.chmod(wrong.name, 0o600)
            client = proctor.Client(self.daemon.address, authkey_file=wrong.name)
            with self.assertRaises(proctor.AuthenticationError) as raised:
                client.status(1)
        message = str(raised.exception)
        self.assertIn(f"refused the key from authkey file {wrong.name}", message)
        self.assertIn("wrong key?", message)
        self.assertNotIn("not the key", message)
        self.assertEqual(raised.exception.code, grpc.StatusCode.UNAUTHENTICATED)

    def test_worker_key_from_the_environment(self):
        # A worker's own key: it reaches its subtree, not its parent's siblings.
        other = proctor.Process(target="sleep", args=("60",))
        other.start()
        worker = python_worker("import proctor, sys\n"
                               "client = proctor.Client()\n"
                               "print(client.credentials.key_id, client.credentials.source)\n"
                               "try:\n"
                               "    client.status(int(sys.argv[1]))\n"
                               "except proctor.ProctorError as e:\n"
                               "    print(e.code.name)\n", other.id)
        worker.start()
        worker.join(30)
        other.kill()
        self.assertEqual(worker.exitcode, 0)
        self.assertEqual(b"".join(self.client.logs(worker.id)).decode().splitlines(), [
            f"{worker.id} $PROCTOR_AUTHKEY of process {worker.id}", "PERMISSION_DENIED"])

    def test_key_discovery_order_and_errors(self):
        saved = dict(os.environ)
        try:
            for name in list(os.environ):
                if name.startswith("PROCTOR_"):
                    del os.environ[name]
            os.environ["HOME"] = self.daemon.dir.name  # no default key there
            os.environ["XDG_STATE_HOME"] = os.path.join(self.daemon.dir.name, "nothing")
            default_key = os.path.join(proctor._paths.default_state_dir(), "authkey")
            if not os.path.exists(default_key):  # root's is /var/lib/proctor/authkey
                with self.assertRaisesRegex(proctor.ProctorError,
                                            f"no authkey: .* run where {default_key} can be read"):
                    proctor.find_credentials()
            os.environ["PROCTOR_AUTHKEY"] = "zz"
            os.environ["PROCTOR_ID"] = "7"
            with self.assertRaisesRegex(proctor.ProctorError, "must be hex") as raised:
                proctor.find_credentials()
            self.assertEqual(raised.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
            os.environ["PROCTOR_AUTHKEY"] = "0a0b"
            worker = proctor.find_credentials()
            self.assertEqual((worker.key, worker.key_id), (b"\x0a\x0b", "7"))
            self.assertNotIn("0a0b", repr(worker))
            os.environ["PROCTOR_AUTHKEY_FILE"] = self.daemon.keyfile  # wins over the above
            admin = proctor.find_credentials()
            self.assertEqual(admin.key_id, "admin")
            self.assertIn("from $PROCTOR_AUTHKEY_FILE", admin.source)
            with self.assertRaisesRegex(proctor.ProctorError,
                                        "cannot read authkey file /nonexistent"):
                proctor.find_credentials("/nonexistent")
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def test_key_file_others_can_read_is_used_with_a_warning(self):
        with tempfile.NamedTemporaryFile() as shared:
            with open(self.daemon.keyfile, "rb") as key:
                shared.write(key.read())
            shared.flush()
            os.chmod(shared.name, 0o644)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                client = proctor.Client(self.daemon.address, authkey_file=shared.name)
            self.assertEqual([str(w.message) for w in caught], [
                f"key file {shared.name} is readable by others (mode 0644); "
                f"chmod 600 {shared.name}"])
            self.assertIs(caught[0].category, proctor.KeyFileWarning)
            self.assertEqual(len(client.list().processes), len(self.client.list().processes))

    def test_unreachable_daemon(self):
        client = proctor.Client("unix:" + os.path.join(self.daemon.dir.name, "none.sock"),
                                authkey_file=self.daemon.keyfile, call_timeout=5)
        with self.assertRaisesRegex(proctor.ProctorError,
                                    "cannot reach proctord at unix:") as raised:
            client.list()
        self.assertEqual(raised.exception.code, grpc.StatusCode.UNAVAILABLE)

    def test_bad_call_timeout(self):
        with self.assertRaisesRegex(ValueError, "call_timeout must be positive"):
            self.daemon.client(call_timeout=0)


class ImpostorServicer(proctor_pb2_grpc.ProctorServicer):
    """A server on proctord's API that does not hold the key: its proofs are wrong."""

    def __init__(self, proof):
        self.proof = proof

    def _answer(self, context):
        if self.proof is not None:
            context.send_initial_metadata([("x-proctor-server-proof", self.proof)])

    def Status(self, request, context):
        self._answer(context)
        if request.HasField("id"):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no process with id {request.id}")
        return proctor_pb2.StatusResponse(processes=[proctor_pb2.Process(id=1, name="fake")])

    def Watch(self, request, context):
        self._answer(context)
        yield proctor_pb2.Event(cursor=1, type=proctor_pb2.EVENT_STARTED)

    def Join(self, request, context):
        time.sleep(2)  # too slow for the client's call timeout
        return proctor_pb2.Process()


class ProofTest(unittest.TestCase):
    """Replies that do not prove the daemon holds the key are refused, errors and streams
    included."""

    def impostor(self, proof):
        directory = tempfile.TemporaryDirectory(prefix="proctor-py-")
        self.addCleanup(directory.cleanup)
        server = grpc.server(concurrent.futures.ThreadPoolExecutor(4))
        proctor_pb2_grpc.add_ProctorServicer_to_server(ImpostorServicer(proof), server)
        address = "unix:" + os.path.join(directory.name, "impostor.sock")
        server.add_insecure_port(address)
        server.start()
        self.addCleanup(server.stop, None)
        key = os.path.join(directory.name, "key")
        with open(key, "wb") as f:
            f.write(os.urandom(32))
        os.chmod(key, 0o600)
        return proctor.Client(address, authkey_file=key, call_timeout=1)

    def assert_refused(self, call):
        with self.assertRaisesRegex(proctor.AuthenticationError,
                                    "failed to prove it holds the key from authkey file") as raised:
            call()
        self.assertEqual(raised.exception.code, grpc.StatusCode.UNAUTHENTICATED)

    def test_wrong_proof_refused(self):
        client = self.impostor("0" * 64)
        self.assert_refused(client.list)
        self.assert_refused(lambda: client.status(7))  # an error reply too
        self.assert_refused(lambda: next(client.watch()))  # before any event is handed out

    def test_missing_proof_refused(self):
        client = self.impostor(None)
        self.assert_refused(client.list)
        self.assert_refused(lambda: client.status(7))
        self.assert_refused(lambda: next(client.watch()))

    def test_call_timeout(self):
        client = self.impostor(None)
        with self.assertRaisesRegex(proctor.ProctorError, "Join did not answer within") as raised:
            client.call("Join", proctor_pb2.JoinRequest(id=1))
        self.assertEqual(raised.exception.code, grpc.StatusCode.DEADLINE_EXCEEDED)


if __name__ == "__main__":
    unittest.main()
