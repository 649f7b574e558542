"""Leader faults under the unchanged official Python client: a normal and a FIFO producer
(4 message groups) send without pause, a normal and a FIFO consumer group receive, and the
group leader is killed (SIGKILL, then restarted) or frozen (SIGSTOP, then SIGCONT), the two
alternating; or (`--kinds term`) the nodes get SIGTERM in turn and are started again once they
left, as a rolling restart does. Reported: failed sends (after the client's own retries), acknowledged messages
never delivered, FIFO order violations, and per fault the longest gap between acknowledged
sends of each producer, from just before the fault until the healed node is back and both
producers made progress again.

`test_failover.py` runs a few faults and asserts the correctness figures; the timing is a
benchmark (machines are noisy), run with more faults from the command line:

    cargo build --release
    target/pyenv/bin/python tests/python/failover.py --faults 12 --bin target/release/raftmq \
        [--out bench/results/failover.json]
    target/pyenv/bin/python tests/python/failover.py --faults 6 --kinds term --bin target/release/raftmq
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))

from conftest import Cluster, Receiver, client_config, wait_for  # noqa: E402

NORMAL, FIFO = "fo-normal", "fo-fifo"
NORMAL_G, FIFO_G = "fo-normal-g", "fo-fifo-g"
MESSAGE_GROUPS = 4


class SendLoop:
    """One official Producer sending one message at a time until stopped; every call is
    recorded as (start, end, ok, message id, message group, seq, error)."""

    def __init__(self, endpoint, topic, fifo):
        from rocketmq import Producer
        self.producer = Producer(client_config(endpoint), (topic,))
        self.topic, self.fifo = topic, fifo
        self.calls = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.producer.startup()
        self._thread.start()

    def _run(self):
        from rocketmq import Message
        seq = 0
        while not self._stop.is_set():
            m = Message()
            m.topic = self.topic
            group = f"mg{seq % MESSAGE_GROUPS}" if self.fifo else None
            if group:
                m.message_group = group
            m.body = f"{group or '-'}:{seq}".encode()
            m.add_property("seq", str(seq))
            t0 = time.time()
            try:
                r = self.producer.send(m)
                rec = (t0, time.time(), True, r.message_id, group, seq, None)
            except Exception as e:  # noqa: BLE001 - every failure is a recorded outcome
                rec = (t0, time.time(), False, None, group, seq, str(e)[:200])
            with self._lock:
                self.calls.append(rec)
            seq += 1

    def acked(self):
        with self._lock:
            return [c for c in self.calls if c[2]]

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=30)
        self.producer.shutdown()


def longest_gap(acks, start, end):
    """Longest time between consecutive acknowledgements (send completions) in [start, end],
    and when it began (seconds from `start`)."""
    ts = sorted(a[1] for a in acks if start <= a[1] <= end)
    ts = [start] + ts
    return max(((b - a, a - start) for a, b in zip(ts, ts[1:])), default=(end - start, 0.0))


def terminate(cluster, node, within=20):
    """SIGTERM `node` (a graceful leave: leadership transfer, deregistration, drain) and wait
    for it to exit by itself."""
    p = cluster.procs.pop(node)
    p.send_signal(signal.SIGTERM)
    try:
        code = p.wait(timeout=within)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=10)
        raise AssertionError(f"node {node} did not exit within {within}s of SIGTERM")
    assert code == 0, f"node {node} exited with {code} after SIGTERM"


def run(cluster, faults, sends_between=60, log=print, kinds=("kill", "stop")):
    """`faults` faults of `kinds` in turn: `kill` (SIGKILL the leader, restart it), `stop`
    (SIGSTOP the leader, SIGCONT it) or `term` (a rolling restart: SIGTERM each node in turn,
    highest id first as a StatefulSet update goes, and start it again once it exited)."""
    cluster.create_topic(NORMAL, queues=4)
    cluster.create_topic(FIFO, queues=4, message_type="fifo")
    cluster.create_group(NORMAL_G)
    cluster.create_group(FIFO_G, "--fifo")
    ep = cluster.nameserver
    producers = {"normal": SendLoop(ep, NORMAL, False), "fifo": SendLoop(ep, FIFO, True)}
    consumers = {"normal": Receiver(ep, NORMAL_G, NORMAL, invisible=15, await_duration=2),
                 "fifo": Receiver(ep, FIFO_G, FIFO, invisible=15, await_duration=2)}
    for c in consumers.values():
        c.__enter__()
    for p in producers.values():
        p.start()
    records = []
    try:
        def progressed(n):
            base = {k: len(p.acked()) for k, p in producers.items()}
            return lambda: all(len(p.acked()) >= base[k] + n for k, p in producers.items())

        wait_for(progressed(sends_between), 60, "sends before the first fault")
        nodes = sorted(cluster.ports, reverse=True)
        for i in range(faults):
            kind = kinds[i % len(kinds)]
            leader = nodes[i % len(nodes)] if kind == "term" else cluster.leader()
            t = time.time()
            if kind == "none":
                pass  # the control: the same windows with no fault (pauses the box makes itself)
            elif kind == "kill":
                cluster.kill(leader)
            elif kind == "term":
                terminate(cluster, leader)
            else:
                cluster.procs[leader].send_signal(signal.SIGSTOP)
            # Both producers must get going again with the leader gone or frozen.
            wait_for(progressed(sends_between), 60, f"sends after fault {i} ({kind} node {leader})")
            if kind in ("kill", "term"):
                cluster.start(leader)
            elif kind == "stop":
                cluster.procs[leader].send_signal(signal.SIGCONT)
            healed = time.time()
            cluster.wait_all_up()
            wait_for(progressed(sends_between // 2), 60, f"sends after healing fault {i}")
            # Gaps are measured up to here: a restarted node rejoining must not pause clients either.
            records.append({"fault": i, "kind": kind, "node": leader, "start": t, "healed": healed,
                            "settled": time.time()})
            log(f"fault {i}: {kind} node {leader}, healed after {healed - t:.2f}s")
    finally:
        for p in producers.values():
            p.stop()
    acked = {k: p.acked() for k, p in producers.items()}
    ids = {k: {a[3] for a in v} for k, v in acked.items()}
    for k, c in consumers.items():
        try:
            c.wait_for_ids(ids[k], 90)
        except AssertionError:
            pass  # reported as lost below
        c.stop()
    report = {"faults": records, "producers": {}, "consumers": {}}
    for k, p in producers.items():
        failed = [c for c in p.calls if not c[2]]
        gaps = [longest_gap(acked[k], r["start"] - 0.5, r["settled"]) for r in records]
        at = [round(g[1] - 0.5, 3) for g in gaps]
        gaps = [g[0] for g in gaps]
        report["producers"][k] = {
            "sends": len(p.calls), "acked": len(acked[k]), "failed": len(failed),
            "failures": [c[6] for c in failed[:5]],
            "gap_per_fault_s": [round(g, 3) for g in gaps],
            # When each longest gap began, in seconds after its fault.
            "gap_began_after_fault_s": at,
        }
    for k, c in consumers.items():
        got = c.snapshot()
        seen = {m.message_id for m, _ in got}
        lost = sorted(ids[k] - seen)
        entry = {"delivered": len(got), "distinct": len(seen), "lost": len(lost), "lost_ids": lost[:5],
                 "receive_errors": len(c.errors)}
        if k == "fifo":
            # First deliveries of each message group must follow send order.
            last, violations, first = {}, 0, set()
            for m, _ in got:
                if m.message_id in first:
                    continue
                first.add(m.message_id)
                seq = int(m.properties.get("seq", "-1"))
                g = m.message_group
                if g in last and seq < last[g]:
                    violations += 1
                last[g] = max(seq, last.get(g, -1))
            entry["order_violations"] = violations
        report["consumers"][k] = entry
    return report


def assert_clean(report):
    """The correctness figures of a report: no failed send, every producer acknowledged
    something, nothing lost, FIFO order kept."""
    for k, p in report["producers"].items():
        assert p["failed"] == 0, f"{k} producer: {p['failed']} sends failed: {p['failures']}"
        assert p["acked"] > 0, f"{k} producer acknowledged nothing"
    for k, c in report["consumers"].items():
        assert c["lost"] == 0, f"{k} consumer group never received {c['lost']} acknowledged messages: {c['lost_ids']}"
    assert report["consumers"]["fifo"]["order_violations"] == 0


def summary(report):
    lines = []
    for k, p in report["producers"].items():
        gaps = sorted(p["gap_per_fault_s"])
        p99 = gaps[min(len(gaps) - 1, int(round(0.99 * (len(gaps) - 1))))] if gaps else None
        lines.append(f"{k:6} producer: {p['sends']} sends, {p['acked']} acked, {p['failed']} failed; "
                     f"longest gap per fault p50 {gaps[len(gaps) // 2] if gaps else None}s "
                     f"p99 {p99}s max {gaps[-1] if gaps else None}s")
    for k, c in report["consumers"].items():
        lines.append(f"{k:6} consumer: {c['distinct']} distinct of {c['delivered']} deliveries, "
                     f"lost {c['lost']}" + (f", order violations {c['order_violations']}" if "order_violations" in c else ""))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faults", type=int, default=12)
    ap.add_argument("--kinds", default="kill,stop",
                    help="fault kinds in turn: kill, stop, term (rolling restart), none (no fault: the "
                         "control); default kill,stop")
    ap.add_argument("--bin", default=None, help="raftmq binary (default: $RAFTMQ_BIN or target/debug/raftmq)")
    ap.add_argument("--out", default=None, help="write the report as JSON here")
    ap.add_argument("--election-timeout-ms", type=int, default=None,
                    help="brokers' minimum election timeout (default: the broker's default)")
    a = ap.parse_args()
    if a.bin:
        import conftest
        conftest.BIN = a.bin
    extra = ["--election-timeout-ms", str(a.election_timeout_ms)] if a.election_timeout_ms else []
    c = Cluster(extra_args=extra)
    try:
        c.wait_all_up()
        c.leader()
        report = run(c, a.faults, kinds=a.kinds.split(","))
    finally:
        c.close()
    report["bin"] = a.bin
    report["election_timeout_ms"] = a.election_timeout_ms or "default"
    print(summary(report))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(report, f, indent=1)
    try:
        assert_clean(report)
    except AssertionError as e:
        print(f"FAILED: {e}")
        sys.exit(1)


if __name__ == "__main__":
    main()
