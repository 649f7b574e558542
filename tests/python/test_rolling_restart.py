"""A rolling restart, as a StatefulSet update does it: each node in turn gets SIGTERM, leaves
the group gracefully (a leader hands leadership over first, the node deregisters from the
nameservers, drains its requests, exits 0) and is started again, under official producers
(normal and FIFO) and consumers. No send fails after the client's own retries, nothing
acknowledged is lost, FIFO order holds, and both producers keep making progress through
every restart. The gaps are printed, not asserted (the timing is a benchmark:
`python tests/python/failover.py --kinds term --faults 6`)."""

from failover import assert_clean, run, summary


def test_rolling_restart_is_invisible_to_official_clients(cluster):
    # Every node once, highest id first; the leader is among them.
    report = run(cluster, faults=len(cluster.ports), sends_between=40, kinds=("term",))
    print(summary(report))
    assert {f["node"] for f in report["faults"]} == set(cluster.ports)
    assert_clean(report)
