"""FIFO-group vs normal-group consumption of one FIFO topic, through the unchanged official
Python client (5.1.2): N messages in G message groups (one sending thread per message
group, so each group is stored in send order), then a `SimpleConsumer` of a group created
`--fifo` and one of a normal group each receive(32, invisible 15 s) and ack every message.
Prints msg/s of both, their ratio and FIFO order violations; exits 1 if a group does not
get everything in time ("no progress" is a failure) or order breaks.

    cargo build --release
    target/pyenv/bin/python bench/python/fifo_vs_normal.py --bin target/release/raftmq \
        [--messages 2000] [--groups 4] [--out bench/results/fifo-vs-normal.json]
"""

import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "python"))

import conftest  # noqa: E402
from conftest import Cluster, client_config  # noqa: E402

TOPIC = "bench-fifo"


def produce(ep, n, groups):
    from rocketmq import Message, Producer
    p = Producer(client_config(ep), (TOPIC,))
    p.startup()
    errors = []

    def one_group(g):
        for seq in range(g, n, groups):
            m = Message()
            m.topic, m.message_group, m.body = TOPIC, f"mg{g}", f"{g}:{seq}".encode()
            m.add_property("seq", str(seq))
            try:
                p.send(m)
            except Exception as e:  # noqa: BLE001
                errors.append(str(e))
    ts = [threading.Thread(target=one_group, args=(g,)) for g in range(groups)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    p.shutdown()
    return errors


def consume(ep, group, n, timeout):
    from rocketmq import FilterExpression, SimpleConsumer
    c = SimpleConsumer(client_config(ep), group, {TOPIC: FilterExpression("*")}, await_duration=2)
    c.startup()
    seen, first, last_seq, violations = set(), None, {}, 0
    deadline = time.time() + timeout
    try:
        while len(seen) < n and time.time() < deadline:
            msgs = c.receive(32, 15)
            if first is None and msgs:
                first = time.time()
            for m in msgs:
                c.ack(m)
                if m.message_id in seen:
                    continue
                seen.add(m.message_id)
                s = int(m.properties.get("seq", "-1"))
                if s < last_seq.get(m.message_group, -1):
                    violations += 1
                last_seq[m.message_group] = s
        end = time.time()
    finally:
        c.shutdown()
    secs = end - (first or end)
    return {"consumed": len(seen), "seconds": round(secs, 2),
            "msgs_per_s": round(len(seen) / secs, 1) if secs > 0 else None, "order_violations": violations}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/raftmq")
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=180)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    conftest.BIN = a.bin
    c = Cluster()
    try:
        c.wait_all_up()
        c.leader()
        c.create_topic(TOPIC, queues=4, message_type="fifo")
        c.create_group("bench-fifo-g", "--fifo")
        c.create_group("bench-normal-g")
        errors = produce(c.nameserver, a.messages, a.groups)
        fifo = consume(c.nameserver, "bench-fifo-g", a.messages, a.timeout)
        normal = consume(c.nameserver, "bench-normal-g", a.messages, a.timeout)
    finally:
        c.close()
    ratio = round(fifo["msgs_per_s"] / normal["msgs_per_s"], 2) if fifo["msgs_per_s"] and normal["msgs_per_s"] else None
    report = {"messages": a.messages, "message_groups": a.groups, "send_errors": len(errors),
              "fifo_group": fifo, "normal_group": normal, "fifo_over_normal": ratio, "bin": a.bin}
    print(f"{'group':8} {'consumed':>9} {'seconds':>8} {'msg/s':>8} {'order violations':>17}")
    for k in ("fifo_group", "normal_group"):
        r = report[k]
        print(f"{k[:-6]:8} {r['consumed']:>9} {r['seconds']:>8} {r['msgs_per_s']!s:>8} {r['order_violations']:>17}")
    print(f"fifo / normal: {ratio}   send errors: {len(errors)}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(report, f, indent=1)
    ok = fifo["consumed"] == normal["consumed"] == a.messages and fifo["order_violations"] == 0 and not errors
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
