"""Fixtures: a nameserver and a 3-node broker group as separate processes of the built
`raftmq` binary, on 127.0.0.1 with free ports, killed at the end."""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

BIN = os.environ.get("RAFTMQ_BIN", os.path.join(os.path.dirname(__file__), "..", "..", "target", "debug", "raftmq"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, timeout, what):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - keep polling until the deadline
            last = e
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last})")


class Cluster:
    def __init__(self, n=3):
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
        self._spawn("ns", ["nameserver", "--listen", self.nameserver])

    def start(self, i):
        self._spawn(i, [
            "broker", "--group", "g1", "--node-id", str(i), "--listen", self.addr(i),
            "--peers", self.peers, "--data-dir", os.path.join(self.dir, f"node{i}"),
            "--segment-size", "64M", "--nameservers", self.nameserver,
        ])

    def kill(self, key):
        p = self.procs.pop(key, None)
        if p is not None:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=10)

    def admin(self, *args):
        out = subprocess.run([BIN, "admin", "--nameservers", self.nameserver, "--json", *args],
                             capture_output=True, timeout=60)
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

    def wait_all_up(self):
        def up():
            c = self.cluster()
            nodes = [n for g in c.get("groups", []) for n in g.get("nodes", [])]
            return len(nodes) == len(self.ports) and all(n.get("reachable") for n in nodes)
        wait_for(up, 60, "every node reachable")

    def create_topic(self, name, queues=4, message_type="normal"):
        wait_for(lambda: self.admin("topic", "create", name, "--queues", str(queues),
                                    "--message-type", message_type) is not None or True, 60, f"topic {name}")

    def close(self):
        for key in list(self.procs):
            self.kill(key)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    try:
        c.wait_all_up()
        c.leader()
        yield c
    finally:
        c.close()
