"""Leader kill -9 and SIGSTOP under official producers (normal and FIFO) and consumers
(normal and FIFO groups), through the nameserver proxy: no send fails after the client's own
retries, nothing acknowledged is lost, FIFO order holds, and every producer keeps making
progress through each fault. The gap figures are printed, not asserted (timings belong in
the benchmark: `python tests/python/failover.py --faults 12`)."""

from failover import run, summary


def test_leader_faults_are_invisible_to_official_clients(cluster):
    report = run(cluster, faults=4, sends_between=40)
    print(summary(report))
    for k, p in report["producers"].items():
        assert p["failed"] == 0, f"{k} producer: {p['failed']} sends failed: {p['failures']}"
        assert p["acked"] > 0
    for k, c in report["consumers"].items():
        assert c["lost"] == 0, f"{k} consumer group never received {c['lost']} acknowledged messages: {c['lost_ids']}"
    assert report["consumers"]["fifo"]["order_violations"] == 0
