"""FIFO-group vs normal-group consumption of one FIFO topic, through the unchanged official
Python client (5.1.2): N messages in G message groups (one sending thread per message
group, so each group is stored in send order), then a `SimpleConsumer` of a group created
`--fifo` and one of a normal group each receive(32, invisible 15 s) and ack every message.
With `--rounds R` the two consume the same messages R times each, alternating (a fresh
consumer group per round), and the ratio is of the medians, so that a busy moment of the box
does not land on one side only. Prints msg/s of both, their ratio and FIFO order violations;
exits 1 if a group does not get everything in time ("no progress" is a failure) or order
breaks.

    cargo build --release
    target/pyenv/bin/python bench/python/fifo_vs_normal.py --bin target/release/raftmq \
        [--messages 2000] [--groups 4] [--rounds 3] [--out bench/results/fifo-vs-normal.json]
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
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per group kind (default 3)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    conftest.BIN = a.bin
    c = Cluster()
    try:
        c.wait_all_up()
        c.leader()
        c.create_topic(TOPIC, queues=4, message_type="fifo")
        errors = produce(c.nameserver, a.messages, a.groups)
        rounds = {"fifo": [], "normal": []}
        for i in range(a.rounds):
            for kind in (("fifo", "normal") if i % 2 == 0 else ("normal", "fifo")):
                group = f"bench-{kind}-g{i}"
                c.create_group(group, *(["--fifo"] if kind == "fifo" else []))
                rounds[kind].append(consume(c.nameserver, group, a.messages, a.timeout))
    finally:
        c.close()

    def median_rate(rs):
        rates = sorted(r["msgs_per_s"] or 0.0 for r in rs)
        return rates[len(rates) // 2]
    fifo, normal = median_rate(rounds["fifo"]), median_rate(rounds["normal"])
    ratio = round(fifo / normal, 2) if fifo and normal else None
    report = {"messages": a.messages, "message_groups": a.groups, "send_errors": len(errors),
              "rounds": a.rounds, "fifo_group": rounds["fifo"], "normal_group": rounds["normal"],
              "fifo_median_msgs_per_s": fifo, "normal_median_msgs_per_s": normal,
              "fifo_over_normal": ratio, "bin": a.bin}
    print(f"{'group':8} {'round':>5} {'consumed':>9} {'seconds':>8} {'msg/s':>8} {'order violations':>17}")
    for kind in ("fifo", "normal"):
        for i, r in enumerate(rounds[kind]):
            print(f"{kind:8} {i:>5} {r['consumed']:>9} {r['seconds']:>8} {r['msgs_per_s']!s:>8} {r['order_violations']:>17}")
    print(f"median msg/s: fifo {fifo}, normal {normal}; fifo / normal: {ratio}   send errors: {len(errors)}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(report, f, indent=1)
    ok = all(r["consumed"] == a.messages and r["order_violations"] == 0
             for rs in rounds.values() for r in rs) and not errors
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
