"""Leader kill -9 and SIGSTOP under official producers (normal and FIFO) and consumers
(normal and FIFO groups), through the nameserver proxy: no send fails after the client's own
retries, nothing acknowledged is lost, FIFO order holds, and every producer keeps making
progress through each fault. The gap figures are printed, not asserted (timings belong in
the benchmark: `python tests/python/failover.py --faults 12`)."""

from failover import assert_clean, run, summary


def test_leader_faults_are_invisible_to_official_clients(cluster):
    report = run(cluster, faults=4, sends_between=40)
    print(summary(report))
    assert_clean(report)
