#!/usr/bin/env python3
"""Per-hop latency of the raftmq write path from `RAFTMQ_HOP_TRACE` files (see src/hops.rs).

Usage: hops.py PREFIX [--skip N] [--json OUT]

Reads every `PREFIX.<pid>` file (the client and the three brokers of one run; CLOCK_MONOTONIC
is shared by all processes of the machine), finds the leader (the process that called
`client_write`) and, for every entry it proposed, joins the marks of all processes by Raft
index. Marks without an index (client send, handler entry, batcher, client_write call) are
paired by time, which is exact at in-flight 1 only. Prints p50 / mean / p90 / p99 per hop in µs.
"""

import bisect
import glob
import json
import statistics
import sys

NAMES = {
    1: "ClientSend", 2: "ClientAck", 3: "SendIn", 4: "BatchPropose", 5: "ClientWrite",
    6: "ClientWriteDone", 7: "LogAppend", 8: "FsyncStart", 9: "FsyncEnd", 10: "Flushed",
    11: "ApplyIn", 12: "ApplyOut", 13: "SendOut", 14: "StreamReqOut", 15: "StreamRespIn",
    16: "StreamReqIn", 17: "StreamRespOut", 18: "FlushQueued",
}
ID = {v: k for k, v in NAMES.items()}


def load(prefix):
    procs = {}
    for path in glob.glob(prefix + ".*"):
        pid = path.rsplit(".", 1)[1]
        if not pid.isdigit():
            continue
        ev = {}
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) != 3:
                    continue
                h, i, t = (int(x) for x in parts)
                ev.setdefault(NAMES.get(h, str(h)), []).append((t, i))
        for v in ev.values():
            v.sort()
        procs[pid] = ev
    return procs


class Series:
    """Marks of one hop in one process, by time, with lookups."""

    def __init__(self, marks):
        self.marks = marks or []
        self.times = [t for t, _ in self.marks]

    def last_before(self, t):
        k = bisect.bisect_left(self.times, t)
        return self.times[k - 1] if k > 0 else None

    def first_after(self, t):
        k = bisect.bisect_right(self.times, t)
        return self.times[k] if k < len(self.times) else None

    def first_index_at_least(self, i, after=0):
        """Earliest mark with index >= i at or after time `after`."""
        k = bisect.bisect_left(self.times, after)
        for t, idx in self.marks[k:]:
            if idx >= i:
                return t
        return None


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, int(round(p / 100 * (len(xs) - 1)))))
    return xs[k]


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__)
        sys.exit(2)
    prefix = args[0]
    skip = int(args[args.index("--skip") + 1]) if "--skip" in args else 100
    out_json = args[args.index("--json") + 1] if "--json" in args else None
    procs = load(prefix)
    client = [p for p, e in procs.items() if "ClientSend" in e]
    leader = [p for p, e in procs.items() if "ClientWriteDone" in e]
    if len(leader) != 1:
        sys.exit(f"expected one leader process, found {leader}")
    leader = leader[0]
    followers = [p for p, e in procs.items() if "StreamReqIn" in e and p != leader]
    S = lambda pid, h: Series(procs.get(pid, {}).get(h))  # noqa: E731
    L = {h: S(leader, h) for h in NAMES.values()}
    F = {f: {h: S(f, h) for h in NAMES.values()} for f in followers}
    C = {h: S(client[0], h) for h in ("ClientSend", "ClientAck")} if client else None

    rows = []
    done = L["ClientWriteDone"].marks
    prev_done = 0
    for t_done, i in done:
        r = {}
        r["ClientWriteDone"] = t_done
        r["LogAppend"] = L["LogAppend"].first_index_at_least(i, prev_done)
        if r["LogAppend"] is None:
            prev_done = t_done
            continue
        a = r["LogAppend"]
        r["ClientWrite"] = L["ClientWrite"].last_before(a)
        r["BatchPropose"] = L["BatchPropose"].last_before(r["ClientWrite"] or 0)
        r["SendIn"] = L["SendIn"].last_before(r["BatchPropose"] or 0)
        if not r["SendIn"] or r["SendIn"] < prev_done:
            prev_done = t_done
            continue  # not a lone in-flight-1 request
        lo = r["ClientWrite"]
        for h in ("FlushQueued", "FsyncStart", "FsyncEnd", "Flushed", "ApplyIn", "ApplyOut"):
            r[h] = L[h].first_index_at_least(i, lo)
        r["StreamReqOut"] = L["StreamReqOut"].first_index_at_least(i, lo)
        r["StreamRespIn"] = L["StreamRespIn"].first_index_at_least(i, lo)
        # The follower whose answer came first (it made the quorum).
        best = None
        for f in followers:
            fr = {}
            fr["StreamReqIn"] = F[f]["StreamReqIn"].first_index_at_least(i, lo)
            for h in ("LogAppend", "FlushQueued", "FsyncStart", "FsyncEnd", "Flushed",
                      "StreamRespOut"):
                fr[h] = F[f][h].first_index_at_least(i, fr["StreamReqIn"] or lo)
            if fr["StreamRespOut"] and (best is None or fr["StreamRespOut"] < best["StreamRespOut"]):
                best = fr
        if best is None:
            prev_done = t_done
            continue
        for k, v in best.items():
            r["F." + k] = v
        r["SendOut"] = L["SendOut"].first_after(t_done)
        if C:
            r["ClientSend"] = C["ClientSend"].last_before(r["SendIn"])
            r["ClientAck"] = C["ClientAck"].first_after(r["SendOut"] or t_done)
        prev_done = t_done
        if all(v is not None for v in r.values()):
            r["index"] = i
            rows.append(r)
    rows = rows[skip:]
    if not rows:
        sys.exit("no complete entries")

    def d(a, b):
        return [(r[b] - r[a]) / 1000 for r in rows]

    hops = []
    if C:
        hops.append(("client send → leader SendMessage handler", d("ClientSend", "SendIn")))
    hops += [
        ("handler → batcher writes the batch", d("SendIn", "BatchPropose")),
        ("batcher → Raft::client_write", d("BatchPropose", "ClientWrite")),
        ("client_write → leader log append (openraft: API → core → log IO)",
         d("ClientWrite", "LogAppend")),
        ("leader append: write + index", d("LogAppend", "FlushQueued")),
        ("leader flusher wake-up", d("FlushQueued", "FsyncStart")),
        ("leader fsync", d("FsyncStart", "FsyncEnd")),
        ("leader fsync → IOFlushed callback", d("FsyncEnd", "Flushed")),
        ("client_write → StreamAppend request out (openraft core → replication → transport)",
         d("ClientWrite", "StreamReqOut")),
        ("request out → follower decoded (HTTP/2, loopback)", d("StreamReqOut", "F.StreamReqIn")),
        ("follower decoded → log append (openraft follower)", d("F.StreamReqIn", "F.LogAppend")),
        ("follower append: write + index", d("F.LogAppend", "F.FlushQueued")),
        ("follower flusher wake-up", d("F.FlushQueued", "F.FsyncStart")),
        ("follower fsync", d("F.FsyncStart", "F.FsyncEnd")),
        ("follower fsync → IOFlushed callback", d("F.FsyncEnd", "F.Flushed")),
        ("follower flushed → response out (openraft)", d("F.Flushed", "F.StreamRespOut")),
        ("response out → leader has it (HTTP/2, loopback)", d("F.StreamRespOut", "StreamRespIn")),
    ]
    for r in rows:
        r["Quorum"] = max(r["Flushed"], r["StreamRespIn"])
    hops += [
        ("quorum flushed (max of the two) → apply starts (openraft commit → SM task)",
         d("Quorum", "ApplyIn")),
        ("apply", d("ApplyIn", "ApplyOut")),
        ("applied → client_write returns", d("ApplyOut", "ClientWriteDone")),
        ("client_write returned → handler answers", d("ClientWriteDone", "SendOut")),
    ]
    if C:
        hops.append(("handler answer → client has it", d("SendOut", "ClientAck")))
        hops.append(("TOTAL client send → ack", d("ClientSend", "ClientAck")))
    hops.append(("handler in → out (server)", d("SendIn", "SendOut")))
    hops.append(("client_write → returned (Raft)", d("ClientWrite", "ClientWriteDone")))
    hops.append(("client_write → quorum flushed", d("ClientWrite", "Quorum")))
    hops.append(("leader: client_write → own flush done", d("ClientWrite", "Flushed")))
    hops.append(("leader: client_write → first follower ack", d("ClientWrite", "StreamRespIn")))
    later = sum(1 for r in rows if r["StreamRespIn"] >= r["Flushed"])
    print(f"entries: {len(rows)} (first {skip} skipped); leader pid {leader}, followers "
          f"{followers}; follower ack after the leader's own flush in {later / len(rows):.0%}")
    print()
    print("| hop | p50 µs | mean µs | p90 µs | p99 µs |")
    print("|---|---:|---:|---:|---:|")
    table = []
    for name, xs in hops:
        row = (name, pct(xs, 50), statistics.fmean(xs), pct(xs, 90), pct(xs, 99))
        table.append(row)
        print(f"| {row[0]} | {row[1]:.0f} | {row[2]:.0f} | {row[3]:.0f} | {row[4]:.0f} |")
    if out_json:
        with open(out_json, "w") as f:
            json.dump({"entries": len(rows), "hops": table}, f, indent=1)


if __name__ == "__main__":
    main()
