"""Fixtures: a nameserver and a 3-node broker group as separate processes of the built
`raftmq` binary, on 127.0.0.1 with free ports, killed at the end."""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

BIN = os.environ.get("RAFTMQ_BIN", os.path.join(os.path.dirname(__file__), "..", "..", "target", "debug", "raftmq"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProcessExitedError(Exception):
    """A cluster process exited by itself: waiting longer cannot help."""


class AdminUsageError(Exception):
    """`raftmq admin` refused its arguments (usage error) or panicked: retrying cannot help."""


def wait_for(cond, timeout, what):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            v = cond()
            if v:
                return v
        except (ProcessExitedError, AdminUsageError):
            raise
        except Exception as e:  # noqa: BLE001 - keep polling until the deadline
            last = e
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last})")


class Cluster:
    def __init__(self, n=3, extra_args=None, ns_extra_args=None, admin_args=None):
        # Extra `raftmq broker` flags for every node (e.g. ["--max-delay", "1h"]), kept for restarts.
        self.extra_args = list(extra_args or [])
        # Extra `raftmq nameserver` and `raftmq admin` flags (e.g. the --tls-* files).
        self.ns_extra_args = list(ns_extra_args or [])
        self.admin_args = list(admin_args or [])
        self.dir = tempfile.mkdtemp(prefix="raftmq-py-")
        self.ns_port = free_port()
        self.ports = {i: free_port() for i in range(1, n + 1)}
        self.procs = {}
        self.peers = ",".join(f"{i}=127.0.0.1:{p}" for i, p in self.ports.items())
        self.start_nameserver()
        for i in self.ports:
            self.start(i)

    @property
    def nameserver(self):
        return f"127.0.0.1:{self.ns_port}"

    def addr(self, i):
        return f"127.0.0.1:{self.ports[i]}"

    def _spawn(self, key, args):
        log = open(os.path.join(self.dir, f"{key}.log"), "ab")
        self.procs[key] = subprocess.Popen([BIN] + args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def start_nameserver(self):
        self._spawn("ns", ["nameserver", "--listen", self.nameserver, *self.ns_extra_args])

    def start(self, i):
        self._spawn(i, [
            "broker", "--group", "g1", "--node-id", str(i), "--listen", self.addr(i),
            "--peers", self.peers, "--data-dir", os.path.join(self.dir, f"node{i}"),
            "--segment-size", "64M", "--nameservers", self.nameserver,
            *self.extra_args,
        ])

    def kill(self, key):
        p = self.procs.pop(key, None)
        if p is not None:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=10)

    def admin(self, *args):
        out = subprocess.run([BIN, "admin", "--nameservers", self.nameserver, *self.admin_args, "--json", *args],
                             capture_output=True, timeout=60)
        if (out.returncode == 2 and b"Usage:" in out.stderr) or b"panicked at" in out.stderr:
            raise AdminUsageError(f"raftmq admin {' '.join(args)}: {out.stderr.decode()}")
        if out.returncode != 0:
            raise RuntimeError(f"raftmq admin {' '.join(args)} failed: {out.stderr.decode()} {out.stdout.decode()}")
        return json.loads(out.stdout) if out.stdout.strip() else None

    def cluster(self):
        return self.admin("cluster")

    def leader(self):
        def find():
            c = self.cluster()
            for g in c.get("groups", []):
                for n in g.get("nodes", []):
                    # A killed node's last report may still say leader: trust live answers.
                    if n.get("role") == "leader" and n.get("reachable"):
                        return int(n["node_id"])
            return None
        return wait_for(find, 30, "a leader")

    def exited(self):
        """Processes that died on their own (e.g. a flag the binary refused), with their log tails."""
        out = []
        for key, p in self.procs.items():
            if p.poll() is not None:
                try:
                    with open(os.path.join(self.dir, f"{key}.log"), "rb") as f:
                        tail = f.read()[-2000:].decode(errors="replace")
                except OSError:
                    tail = ""
                out.append(f"{key} exited with {p.returncode}: {tail}")
        return out

    def wait_all_up(self):
        def up():
            dead = self.exited()
            if dead:
                # Not worth waiting for: fail at once with the reason.
                raise ProcessExitedError("\n".join(dead))
            c = self.cluster()
            nodes = [n for g in c.get("groups", []) for n in g.get("nodes", [])]
            return len(nodes) == len(self.ports) and all(n.get("reachable") for n in nodes)
        wait_for(up, 60, "every node reachable")

    def create_topic(self, name, queues=4, message_type="normal"):
        wait_for(lambda: self.admin("topic", "create", name, "--queues", str(queues),
                                    "--message-type", message_type) is not None or True, 60, f"topic {name}")

    def create_group(self, name, *flags):
        """`raftmq admin group create NAME FLAGS...`, retried while the cluster settles."""
        return wait_for(lambda: self.admin("group", "create", name, *flags) or True, 60, f"group {name}")

    def close(self):
        for key in list(self.procs):
            self.kill(key)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(request):
    # A test module may set CLUSTER_EXTRA_ARGS = [...] to start its brokers with extra flags.
    c = Cluster(extra_args=getattr(request.module, "CLUSTER_EXTRA_ARGS", None))
    try:
        c.wait_all_up()
        c.leader()
        yield c
    finally:
        c.close()


# ---- Official-client helpers shared by the feature tests (delay, transactions, push, broadcast, query).

def client_config(endpoint):
    from rocketmq import ClientConfiguration, Credentials
    return ClientConfiguration(endpoint, Credentials())


class Receiver:
    """An official SimpleConsumer receiving in a background thread until stopped.

    Records every delivery as (message, time.time() right after `receive` returned) and acks
    each message (retrying a failed ack for a while) unless ack=False. Receive errors (a node of
    the route may be down) are recorded and retried after a short pause."""

    def __init__(self, endpoint, group, topic, invisible=10, await_duration=2, ack=True, expression="*"):
        from rocketmq import FilterExpression, SimpleConsumer
        self.consumer = SimpleConsumer(client_config(endpoint), group, {topic: FilterExpression(expression)},
                                       await_duration=await_duration)
        self.invisible = invisible
        self.ack = ack
        self.deliveries = []  # (message, received_at)
        self.errors = []
        self.ack_failures = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._ack_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="receiver-ack")

    def __enter__(self):
        self.consumer.startup()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def _run(self):
        while not self._stop.is_set():
            try:
                batch = self.consumer.receive(32, self.invisible)
            except Exception as e:  # noqa: BLE001 - recorded; retried after a pause
                self.errors.append((time.time(), str(e)[:200]))
                self._stop.wait(0.1)
                continue
            now = time.time()
            with self._lock:
                self.deliveries.extend((m, now) for m in batch)
            if self.ack:
                # Acked in the background (each is a replicated write) so that the next receive
                # is not held up; stop() waits for them.
                for m in batch:
                    self._ack_pool.submit(self._ack, m)

    def _ack(self, m):
        deadline = time.time() + 20
        while True:
            try:
                self.consumer.ack(m)
                return
            except Exception as e:  # noqa: BLE001 - retried until the deadline, then recorded
                if time.time() > deadline:
                    self.ack_failures.append((m.message_id, str(e)[:200]))
                    return
                time.sleep(0.1)  # retry pause

    def snapshot(self):
        with self._lock:
            return list(self.deliveries)

    def ids(self):
        return [m.message_id for m, _ in self.snapshot()]

    def wait_for_ids(self, expected, timeout):
        """Wait until every id in `expected` was delivered at least once."""
        expected = set(expected)
        try:
            wait_for(lambda: expected <= set(self.ids()), timeout, f"{len(expected)} deliveries")
        except AssertionError as e:
            have = len(expected & set(self.ids()))
            raise AssertionError(f"{e}; {have} of {len(expected)} delivered, "
                                 f"last receive errors: {self.errors[-3:]}") from None

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
            self._ack_pool.shutdown(wait=True)
            try:
                self.consumer.shutdown()
            except Exception as e:  # noqa: BLE001 - shutdown errors do not change the results
                print(f"consumer shutdown: {e}")


def send_all(producer, messages, window=16):
    """Sends `messages` with up to `window` sends in flight; returns their receipts in order."""
    receipts = [None] * len(messages)
    for start in range(0, len(messages), window):
        futures = [(i, producer.send_async(messages[i])) for i in range(start, min(start + window, len(messages)))]
        for i, f in futures:
            receipts[i] = f.result(timeout=60)
    return receipts
