"""Delay messages with the unchanged official Python client (issue #8): a nameserver and a
3-node group as separate processes.

The Python client sends `delivery_timestamp` in whole epoch seconds, so each message's due
time is exactly the value the test set (`due_s`), and the received message carries it back in
milliseconds. Receive times are taken with time.time() right after `receive` returned."""

import math
import time

from rocketmq import Message, Producer

from conftest import Receiver, client_config, send_all, wait_for

# The largest delay accepted by the brokers of this module (default 24h): tested below.
CLUSTER_EXTRA_ARGS = ["--max-delay", "1h"]

COUNT = 100
DELAY_S = 5
ILLEGAL_DELIVERY_TIME = 40012


def delayed(topic, i, due_s):
    m = Message()
    m.topic = topic
    m.body = f"delayed-{i}-".encode() + bytes([i % 256]) * (1 + i % 20)
    m.tag = "Delayed"
    m.keys = f"delay-key-{i}"
    m.add_property("index", str(i))
    m.delivery_timestamp = due_s
    return m


def send_delayed(endpoint, topic, count):
    """Sends `count` messages due DELAY_S seconds from now (rounded up to a whole second); returns
    {message_id: (index, due_s, body)} and the time the last send returned."""
    p = Producer(client_config(endpoint), (topic,))
    p.startup()
    try:
        due_s = math.ceil(time.time()) + DELAY_S
        messages = [delayed(topic, i, due_s) for i in range(count)]
        receipts = send_all(p, messages)
    finally:
        p.shutdown()
    return {r.message_id: (i, due_s, m.body) for i, (r, m) in enumerate(zip(receipts, messages))}, time.time()


def check_deliveries(sent, deliveries):
    """Exactly once, intact, never before the due time. Returns {id: lateness in s}."""
    ids = [m.message_id for m, _ in deliveries]
    dups = {i for i in ids if ids.count(i) > 1}
    assert not dups, f"{len(dups)} delay messages delivered more than once"
    assert set(ids) == set(sent), f"missing {len(set(sent) - set(ids))}, unknown {len(set(ids) - set(sent))}"
    late = {}
    early = []
    for m, at in deliveries:
        i, due_s, body = sent[m.message_id]
        assert m.body == body and m.properties.get("index") == str(i) and m.tag == "Delayed"
        assert m.delivery_timestamp == due_s * 1000, (m.delivery_timestamp, due_s)
        assert m.delivery_attempt == 1
        if at < due_s:
            early.append((m.message_id, round(due_s - at, 3)))
        late[m.message_id] = at - due_s
    assert not early, f"{len(early)} delay messages received before their due time (id, seconds early): {early[:5]}"
    return late


def test_hundred_delay_messages_arrive_on_time(cluster):
    topic = "delay-on-time"
    cluster.create_topic(topic, queues=4, message_type="delay")
    # The consumer polls all along, so an early delivery would be seen.
    with Receiver(cluster.nameserver, "delay-on-time-g", topic, invisible=20) as r:
        sent, sent_at = send_delayed(cluster.nameserver, topic, COUNT)
        first_due = min(d for _, d, _ in sent.values())
        assert sent_at < first_due, "sending took longer than the delay: the test cannot judge earliness"
        last_due = max(d for _, d, _ in sent.values())
        r.wait_for_ids(sent, timeout=last_due - time.time() + 30)
        late = check_deliveries(sent, r.snapshot())
    worst = max(late.values())
    print(f"\ndelay: {COUNT} messages due in {DELAY_S} s: received {min(late.values()) * 1000:.0f}.."
          f"{worst * 1000:.0f} ms after due")
    assert worst <= 1.0, f"a delay message arrived {worst:.3f} s after its due time (more than 1 s)"
    assert not r.ack_failures, r.ack_failures[:3]


def test_delay_messages_survive_a_leader_kill_exactly_once(cluster):
    topic = "delay-failover"
    cluster.create_topic(topic, queues=4, message_type="delay")
    # Invisible 5 s: an ack lost in the failover would show up as a redelivery within the
    # observation window below.
    invisible = 5
    with Receiver(cluster.nameserver, "delay-failover-g", topic, invisible=invisible) as r:
        sent, sent_at = send_delayed(cluster.nameserver, topic, COUNT)
        first_due = min(d for _, d, _ in sent.values())
        last_due = max(d for _, d, _ in sent.values())
        assert sent_at < first_due, "sending took longer than the delay: the leader would not be killed while they wait"
        old = cluster.leader()
        cluster.kill(old)
        killed_at = time.time()
        try:
            assert killed_at < first_due, "the leader was killed after the first message was due"
            assert r.ids() == [], "delay messages were delivered before their due time"
            new = wait_for(lambda: cluster.leader() != old and cluster.leader(), 30, "a new leader")
            print(f"\ndelay failover: leader {old} killed {first_due - killed_at:.1f} s before the first due "
                  f"time, node {new} leads")
            r.wait_for_ids(sent, timeout=last_due - time.time() + 60)
            # Keep receiving past one invisible duration: nothing may come a second time.
            done = time.time()
            wait_for(lambda: time.time() > done + invisible + 2, invisible + 10, "the observation window")
            late = check_deliveries(sent, r.snapshot())
        finally:
            if old not in cluster.procs:
                cluster.start(old)
    print(f"delay failover: received {min(late.values()) * 1000:.0f}..{max(late.values()) * 1000:.0f} ms "
          f"after due; {len(r.errors)} receive errors retried")
    assert not r.ack_failures, r.ack_failures[:3]
    cluster.wait_all_up()


def test_delivery_time_beyond_max_delay_is_rejected(cluster):
    topic = "delay-limits"
    cluster.create_topic(topic, queues=2, message_type="delay")
    p = Producer(client_config(cluster.nameserver), (topic,))
    p.startup()
    try:
        now = int(time.time())
        # --max-delay 1h: two hours is refused with ILLEGAL_DELIVERY_TIME (after client retries).
        try:
            p.send(delayed(topic, 0, now + 2 * 3600))
            raise AssertionError("a delivery time 2 h ahead was accepted with --max-delay 1h")
        except AssertionError:
            raise
        except Exception as e:  # noqa: BLE001 - the client's exception carries the status code
            assert getattr(e, "code", None) == ILLEGAL_DELIVERY_TIME, f"expected code 40012, got {e!r}"
        # Within the limit: accepted and stored with its due time.
        far = now + 1800
        ok = p.send(delayed(topic, 1, far))
        assert ok.message_id
    finally:
        p.shutdown()
    got = wait_for(lambda: cluster.admin("message", "get", "--topic", topic, "--id", ok.message_id)["messages"],
                   30, "the stored delay message")
    assert got[0]["delivery_timestamp_ms"] == far * 1000
    # Not due for 30 minutes: a consumer sees nothing.
    with Receiver(cluster.nameserver, "delay-limits-g", topic) as r:
        start = time.time()
        wait_for(lambda: time.time() > start + 4, 10, "an observation window")
        assert r.ids() == [], "a message due in 30 minutes was delivered"
