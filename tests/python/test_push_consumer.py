"""PushConsumer with the unchanged official Python client (issue #8): a nameserver and a 3-node
group as separate processes.

The Python PushConsumer asks QueryAssignment for its queues, long-polls each with
auto_renew, and nacks a failed message with ChangeInvisibleDuration(backoff[attempt - 1]),
where the backoff table comes from the broker's Telemetry Settings reply (the group's
--retry-backoff). FIFO consumption (Settings `fifo`, from the group's --fifo) consumes one
message group strictly in order, retrying a failure locally."""

import threading
import time

from rocketmq import ConsumeResult, FilterExpression, Message, MessageListener, Producer, PushConsumer

from conftest import client_config, wait_for

BACKOFF = [1, 2, 3]  # seconds, the group's --retry-backoff


class Listener(MessageListener):
    """Records every call as (message_id, index, message_group, delivery_attempt, time, result);
    fails when fail(message) is true."""

    def __init__(self, fail):
        self.fail = fail
        self.calls = []
        self.lock = threading.Lock()

    def consume(self, message):
        result = ConsumeResult.FAILURE if self.fail(message) else ConsumeResult.SUCCESS
        with self.lock:
            self.calls.append((message.message_id, int(message.properties["index"]), message.message_group,
                               message.delivery_attempt, time.time(), result))
        return result

    def snapshot(self):
        with self.lock:
            return list(self.calls)

    def successes(self):
        return [c for c in self.snapshot() if c[5] == ConsumeResult.SUCCESS]


def message(topic, i, group=None):
    m = Message()
    m.topic = topic
    m.body = f"push-{i}-".encode() + bytes([i % 256]) * (1 + i % 25)
    m.tag = "Push"
    m.keys = f"push-key-{i}"
    m.add_property("index", str(i))
    if group is not None:
        m.message_group = group
    return m


def start_push(cluster, group, topic, listener):
    c = PushConsumer(client_config(cluster.nameserver), group, listener, {topic: FilterExpression("*")})
    c.startup()
    return c


def group_info(cluster, name):
    groups = cluster.admin("group", "list")
    for g in groups["consumer_groups"]:
        if g["name"] == name:
            return g
    raise AssertionError(f"group {name} not in `group list`: {groups}")


def test_failing_listener_sees_retries_with_backoff_then_consumes_all_once(cluster):
    topic = "push-retry"
    group = "push-retry-g"
    cluster.create_topic(topic, queues=2)
    cluster.create_group(group, "--max-attempts", "5", "--retry-backoff", ",".join(f"{s}s" for s in BACKOFF))
    info = group_info(cluster, group)
    assert info.get("retry_backoff") == [f"{s}s" for s in BACKOFF], f"`group list --json`: {info}"
    assert info["broadcast"] is False and info["max_delivery_attempts"] == 5, info
    count = 30
    p = Producer(client_config(cluster.nameserver), (topic,))
    p.startup()
    try:
        ids = {p.send(message(topic, i)).message_id: i for i in range(count)}
    finally:
        p.shutdown()

    # Every 3rd message fails on its first two deliveries and succeeds on the third.
    listener = Listener(lambda m: int(m.properties["index"]) % 3 == 2 and m.delivery_attempt < 3)
    c = start_push(cluster, group, topic, listener)
    try:
        # The Settings reply carried the group's backoff (the client keeps it in its consumption).
        policy = c._PushConsumer__consumption.backoff_policy
        assert policy.durations == BACKOFF, f"PushConsumer backoff {policy.durations}, group has {BACKOFF}"
        assert policy.max_attempts == 5, f"PushConsumer max attempts {policy.max_attempts}, group has 5"
        assert c.fifo is False
        wait_for(lambda: {mid for mid, *_ in listener.successes()} >= set(ids), 60,
                 "every message consumed successfully")
        # A short window in which an acked message would come back if the ack were lost.
        done = time.time()
        wait_for(lambda: time.time() > done + 2, 10, "an observation window")
    finally:
        c.shutdown()

    calls = listener.snapshot()
    per_id = {}
    for mid, idx, _, attempt, at, result in calls:
        assert mid in ids, f"unexpected message {mid}"
        per_id.setdefault(mid, []).append((attempt, at, result))
    for mid, idx in ids.items():
        seq = per_id[mid]
        assert sum(1 for _, _, r in seq if r == ConsumeResult.SUCCESS) == 1, f"#{idx} consumed successfully {seq}"
        attempts = [a for a, _, _ in seq]
        if idx % 3 == 2:
            assert attempts == [1, 2, 3], f"#{idx} (fails twice) delivered with attempts {attempts}"
            times = [t for _, t, _ in seq]
            for k in range(2):
                gap = times[k + 1] - times[k]
                assert gap >= BACKOFF[k] - 0.05, \
                    f"#{idx} redelivered {gap:.3f} s after failure {k + 1}, backoff is {BACKOFF[k]} s"
        else:
            assert attempts == [1], f"#{idx} (never fails) delivered with attempts {attempts}"
    gaps = [seq[k + 1][1] - seq[k][1] for seq in per_id.values() for k in range(len(seq) - 1)]
    print(f"\npush: {len(calls)} listener calls for {count} messages; redelivery after failure "
          f"{min(gaps):.2f}..{max(gaps):.2f} s (backoff {BACKOFF} s)")


def test_fifo_push_consumption_keeps_group_order(cluster):
    topic = "push-fifo"
    group = "push-fifo-g"
    cluster.create_topic(topic, queues=4, message_type="fifo")
    cluster.create_group(group, "--fifo")
    assert group_info(cluster, group)["fifo"] is True
    groups = ["ga", "gb", "gc"]
    per_group = 30
    p = Producer(client_config(cluster.nameserver), (topic,))
    p.startup()
    order = {g: [] for g in groups}
    try:
        for i in range(per_group):
            for g in groups:
                order[g].append(p.send(message(topic, i, group=g)).message_id)
    finally:
        p.shutdown()

    failed_once = set()
    lock = threading.Lock()

    def fail(m):
        # Message #5 of each group fails once: the client retries it locally, in place.
        if int(m.properties["index"]) == 5:
            with lock:
                if m.message_id not in failed_once:
                    failed_once.add(m.message_id)
                    return True
        return False

    listener = Listener(fail)
    c = start_push(cluster, group, topic, listener)
    try:
        assert c.fifo is True, "the Settings reply did not mark the FIFO group's PushConsumer fifo"
        everything = {i for ids in order.values() for i in ids}
        wait_for(lambda: {mid for mid, *_ in listener.successes()} >= everything, 90,
                 "every FIFO message consumed")
        done = time.time()
        wait_for(lambda: time.time() > done + 2, 10, "an observation window")
    finally:
        c.shutdown()
    seen = {g: [] for g in groups}
    for mid, _, g, _, _, result in listener.successes():
        seen[g].append(mid)
    for g in groups:
        assert seen[g] == order[g], f"message group {g} consumed out of order or more than once"
    assert len(failed_once) == len(groups)
