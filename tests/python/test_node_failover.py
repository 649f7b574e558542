"""The unchanged official Node client (rocketmq-client-nodejs 1.0.8) through leader faults:
a normal and a FIFO Node producer (tests/node/send_loop.mjs) send without pause while the
group leader is killed (SIGKILL, restarted) and frozen (SIGSTOP, SIGCONT) in turn. No send
fails after the client's own retries, both producers make progress through every fault, and
an official Python consumer then receives every acknowledged message (FIFO order per message
group for the FIFO topic). Gaps are printed, not asserted."""

import os
import shutil
import signal
import subprocess
import threading
import time

from conftest import Receiver, wait_for
from failover import longest_gap

NODE_DIR = os.path.join(os.path.dirname(__file__), "..", "node")
NORMAL, FIFO = "node-fo-normal", "node-fo-fifo"
MESSAGE_GROUPS = 4


class NodeSendLoop:
    """`node send_loop.mjs` in the background; its result lines collected as they come."""

    def __init__(self, endpoint, topic, groups=0):
        node = shutil.which("node")
        assert node, "node is not installed (the Node client tests need it)"
        assert os.path.isdir(os.path.join(NODE_DIR, "node_modules", "rocketmq-client-nodejs")), \
            "tests/node/node_modules is missing: run `npm ci` in tests/node (.ci/run does)"
        args = [node, os.path.join(NODE_DIR, "send_loop.mjs"), endpoint, topic]
        if groups:
            args.append(str(groups))
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.ok, self.failed, self.done = [], [], False
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            parts = line.split(maxsplit=3)
            with self._lock:
                if parts and parts[0] == "ok":
                    self.ok.append((int(parts[1]) / 1000.0, parts[2], int(parts[3])))
                elif parts and parts[0] == "fail":
                    self.failed.append(line.strip())
                elif parts and parts[0] == "done":
                    self.done = True

    def acked(self):
        with self._lock:
            return list(self.ok)

    def stop(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self._reader.join(timeout=10)
        assert self.done, f"send_loop.mjs exited with {self.proc.returncode} before it shut down"


def test_node_producers_ride_through_leader_faults(cluster):
    cluster.create_topic(NORMAL, queues=4)
    cluster.create_topic(FIFO, queues=4, message_type="fifo")
    cluster.create_group("node-fo-normal-g")
    cluster.create_group("node-fo-fifo-g", "--fifo")
    loops = {"normal": NodeSendLoop(cluster.nameserver, NORMAL),
             "fifo": NodeSendLoop(cluster.nameserver, FIFO, MESSAGE_GROUPS)}
    gaps = []
    try:
        def progressed(n):
            base = {k: len(p.acked()) for k, p in loops.items()}
            return lambda: all(len(p.acked()) >= base[k] + n for k, p in loops.items())

        wait_for(progressed(30), 90, "Node sends before the first fault")
        for i, kind in enumerate(["kill", "stop", "kill", "stop"]):
            leader = cluster.leader()
            t = time.time()
            if kind == "kill":
                cluster.kill(leader)
            else:
                cluster.procs[leader].send_signal(signal.SIGSTOP)
            wait_for(progressed(30), 60, f"Node sends after fault {i} ({kind} node {leader})")
            if kind == "kill":
                cluster.start(leader)
            else:
                cluster.procs[leader].send_signal(signal.SIGCONT)
            cluster.wait_all_up()
            wait_for(progressed(15), 60, f"Node sends after healing fault {i}")
            now = time.time()
            # failover.longest_gap reads a send's completion time from field 1.
            gaps.append((kind, {k: round(longest_gap([(None, a[0]) for a in p.acked()], t - 0.5, now)[0], 3)
                                for k, p in loops.items()}))
    finally:
        for p in loops.values():
            p.stop()
    print(f"Node producers, longest gap per fault: {gaps}")
    for k, p in loops.items():
        assert not p.failed, f"{k} Node producer: {len(p.failed)} sends failed: {p.failed[:5]}"
        assert p.acked(), f"{k} Node producer acknowledged nothing"

    # Every acknowledged message reaches an official consumer; FIFO in order per message group.
    for k, topic, group in [("normal", NORMAL, "node-fo-normal-g"), ("fifo", FIFO, "node-fo-fifo-g")]:
        acked = loops[k].acked()
        with Receiver(cluster.nameserver, group, topic, invisible=15, await_duration=2) as r:
            r.wait_for_ids({m for _, m, _ in acked}, 90)
            got = r.snapshot()
        if k == "fifo":
            last, first = {}, set()
            for m, _ in got:
                if m.message_id in first:
                    continue
                first.add(m.message_id)
                seq = int(m.properties["seq"])
                g = m.message_group
                assert seq > last.get(g, -1), f"message group {g}: seq {seq} after {last[g]}"
                last[g] = seq
