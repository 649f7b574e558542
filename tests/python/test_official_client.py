"""The unchanged official Python client (rocketmq-python-client 5.1.x) against raftmq:
a nameserver and a 3-node group, each a separate process."""

import threading
import time

import grpc
import pytest
from rocketmq import ClientConfiguration, Credentials, FilterExpression, Message, Producer, SimpleConsumer
from rocketmq.grpc_protocol import definition_pb2, service_pb2, service_pb2_grpc

from conftest import wait_for


def config(endpoint):
    return ClientConfiguration(endpoint, Credentials())


def make(topic, i, group=None):
    m = Message()
    m.topic = topic
    m.body = f"body-{i}-".encode() + bytes([i % 256]) * (i % 50)
    m.tag = "TagA" if i % 2 == 0 else "TagB"
    m.keys = f"key-{i}"
    m.add_property("index", str(i))
    m.add_property("parity", "even" if i % 2 == 0 else "odd")
    if group is not None:
        m.message_group = group
    return m


def consume(endpoint, group, topic, expected, invisible=15, timeout=120, ack=True):
    """Receive until `expected` messages arrived; returns them in arrival order."""
    c = SimpleConsumer(config(endpoint), group, {topic: FilterExpression("*")}, await_duration=2)
    c.startup()
    got = []
    try:
        deadline = time.time() + timeout
        while len(got) < expected and time.time() < deadline:
            try:
                batch = c.receive(32, invisible)
            except Exception as e:  # noqa: BLE001 - a node of the route may be down: retry
                print(f"receive failed, retrying: {str(e)[:120]}")
                continue
            for m in batch:
                got.append(m)
                if ack:
                    c.ack(m)
    finally:
        c.shutdown()
    return got


def follower(cluster):
    leader = cluster.leader()
    return next(i for i in cluster.ports if i != leader)


@pytest.mark.parametrize("via", ["nameserver", "follower"])
def test_thousand_messages_round_trip(cluster, via):
    topic = f"orders-{via}"
    cluster.create_topic(topic, queues=4)
    endpoint = cluster.nameserver if via == "nameserver" else cluster.addr(follower(cluster))
    p = Producer(config(endpoint), (topic,))
    p.startup()
    sent = {}
    try:
        for i in range(1000):
            m = make(topic, i)
            sent[p.send(m).message_id] = (m.body, m.tag, m.keys, dict(m.properties))
    finally:
        p.shutdown()
    assert len(sent) == 1000

    got = consume(endpoint, f"g-{via}", topic, 1000, invisible=3)
    ids = [m.message_id for m in got]
    assert len(ids) == len(set(ids)), "a message was delivered twice"
    assert set(ids) == set(sent), "received set differs from sent set"
    for m in got:
        body, tag, keys, props = sent[m.message_id]
        assert m.body == body
        assert m.tag == tag
        assert m.keys == keys or list(m.keys) == [keys]
        for k, v in props.items():
            assert m.properties.get(k) == v
        assert m.delivery_attempt == 1
        assert not m.corrupted

    # Nothing acked comes back once its invisible duration (3 s) is over.
    time.sleep(4)
    again = consume(endpoint, f"g-{via}", topic, 1, invisible=3, timeout=5)
    assert again == [], f"acked messages were redelivered: {[m.message_id for m in again]}"


def test_fifo_groups_consumed_in_send_order(cluster):
    topic = "fifo-orders"
    cluster.create_topic(topic, queues=4, message_type="fifo")
    # Order is a property of the consumer group (RocketMQ's orderly groups), not of the topic.
    cluster.create_group("fifo-consumer", "--fifo")
    p = Producer(config(cluster.nameserver), (topic,))
    p.startup()
    order = {g: [] for g in ("g0", "g1", "g2")}
    try:
        for i in range(200):
            for g in order:
                m = make(topic, i, group=g)
                order[g].append(p.send(m).message_id)
    finally:
        p.shutdown()
    got = consume(cluster.nameserver, "fifo-consumer", topic, 600)
    seen = {g: [] for g in order}
    for m in got:
        seen[m.message_group].append(m.message_id)
    for g in order:
        assert seen[g] == order[g], f"message group {g} consumed out of order"


def test_unacked_messages_come_back_then_go_to_dlq(cluster):
    topic = "retry-me"
    group = "retry-group"
    cluster.create_topic(topic, queues=1)
    cluster.admin("group", "create", group, "--max-attempts", "3")
    p = Producer(config(cluster.nameserver), (topic,))
    p.startup()
    try:
        ids = {p.send(make(topic, i)).message_id for i in range(3)}
    finally:
        p.shutdown()
    c = SimpleConsumer(config(cluster.nameserver), group, {topic: FilterExpression("*")}, await_duration=2)
    c.startup()
    try:
        attempts = {}
        deadline = time.time() + 60
        # Never ack: each message is delivered with attempts 1, 2, 3, then dead-lettered.
        while time.time() < deadline and not all(attempts.get(i) == [1, 2, 3] for i in ids):
            for m in c.receive(16, 1):
                attempts.setdefault(m.message_id, []).append(m.delivery_attempt)
        assert all(attempts.get(i) == [1, 2, 3] for i in ids), attempts
    finally:
        c.shutdown()
    # The leader dead-letters a message once its last delivery expires: the topic appears.
    wait_for(lambda: cluster.admin("topic", "route", f"%DLQ%{group}"), 30, "the dead-letter topic")
    dlq = consume(cluster.nameserver, "dlq-reader", f"%DLQ%{group}", 3, timeout=60)
    assert {m.message_id for m in dlq} == ids


def raw_stub(endpoint):
    return service_pb2_grpc.MessagingServiceStub(grpc.insecure_channel(endpoint))


MD = [("x-mq-client-id", "raw-test"), ("x-mq-protocol", "GRPC_V2")]


def raw_send(stub, topic, body=b"x", message_type=definition_pb2.NORMAL, group=None, mid="RAW0001"):
    sp = definition_pb2.SystemProperties(message_id=mid, message_type=message_type,
                                         body_encoding=definition_pb2.IDENTITY)
    if group:
        sp.message_group = group
    m = definition_pb2.Message(topic=definition_pb2.Resource(name=topic), body=body, system_properties=sp)
    return stub.SendMessage(service_pb2.SendMessageRequest(messages=[m]), timeout=10, metadata=MD)


def test_bad_input_gets_proper_status_and_broker_keeps_serving(cluster):
    cluster.create_topic("plain", queues=2)
    for endpoint in (cluster.addr(cluster.leader()), cluster.addr(follower(cluster))):
        stub = raw_stub(endpoint)
        assert raw_send(stub, "no-such-topic").status.code == definition_pb2.TOPIC_NOT_FOUND
        r = raw_send(stub, "plain", message_type=definition_pb2.FIFO, group="g")
        assert r.status.code == definition_pb2.MESSAGE_PROPERTY_CONFLICT_WITH_TYPE
        assert raw_send(stub, "plain", body=b"x" * (5 << 20)).status.code == definition_pb2.MESSAGE_BODY_TOO_LARGE
        ack = stub.AckMessage(service_pb2.AckMessageRequest(
            group=definition_pb2.Resource(name="g"), topic=definition_pb2.Resource(name="plain"),
            entries=[service_pb2.AckMessageEntry(message_id="x", receipt_handle="not-a-handle")]),
            timeout=10, metadata=MD)
        assert ack.status.code == definition_pb2.INVALID_RECEIPT_HANDLE
        r = raw_send(stub, "plain", mid=f"OK-{endpoint}")
        assert r.status.code == definition_pb2.OK and r.entries[0].status.code == definition_pb2.OK


def test_acks_and_invisibility_survive_a_leader_change(cluster):
    topic = "acked-then-failover"
    cluster.create_topic(topic, queues=2)
    p = Producer(config(cluster.nameserver), (topic,))
    p.startup()
    try:
        ids = [p.send(make(topic, i)).message_id for i in range(20)]
    finally:
        p.shutdown()
    got = consume(cluster.nameserver, "ack-group", topic, 20, invisible=4, ack=False)
    assert sorted(m.message_id for m in got) == sorted(ids)
    c = SimpleConsumer(config(cluster.nameserver), "ack-group", {topic: FilterExpression("*")}, await_duration=2)
    c.startup()
    try:
        acked = set()
        for m in got[:10]:
            c.ack(m)
            acked.add(m.message_id)
    finally:
        c.shutdown()
    old = cluster.leader()
    cluster.kill(old)
    try:
        wait_for(lambda: cluster.leader() != old, 30, "a new leader")
        cluster.start(old)
    # After the invisible time, exactly the unacked ten come back, on their second attempt.
        back = consume(cluster.nameserver, "ack-group", topic, 10, invisible=30, timeout=60)
        assert {m.message_id for m in back} == set(ids) - acked
        assert all(m.delivery_attempt == 2 for m in back)
        again = consume(cluster.nameserver, "ack-group", topic, 1, invisible=30, timeout=5)
        assert again == [], "acked messages were redelivered after the leader change"
    finally:
        if old not in cluster.procs:
            cluster.start(old)


def test_sends_survive_leader_kill(cluster):
    topic = "failover"
    cluster.create_topic(topic, queues=4)
    p = Producer(config(cluster.nameserver), (topic,))
    p.startup()
    acked, failures, stop = [], [], threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            try:
                r = p.send(make(topic, i))
                acked.append((r.message_id, time.time()))
            except Exception as e:  # noqa: BLE001 - a failed send is recorded, not fatal
                failures.append((time.time(), str(e)[:200]))
            i += 1

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        wait_for(lambda: len(acked) >= 100, 60, "100 acked sends")
        leader = cluster.leader()
        killed_at = time.time()
        cluster.kill(leader)
        before = len(acked)
        wait_for(lambda: len(acked) >= before + 200, 120, "sends after the leader kill")
    finally:
        stop.set()
        t.join(timeout=30)
        p.shutdown()
    times = sorted(ts for _, ts in acked)
    gaps = [b - a for a, b in zip(times, times[1:]) if b > killed_at - 1]
    fail_times = [ts for ts, _ in failures if ts >= killed_at]
    print(f"\nfailover: longest gap between acknowledged sends after the kill "
          f"{1000 * max(gaps):.0f} ms; {len(fail_times)} sends failed after client retries, "
          f"the last {1000 * (max(fail_times) - killed_at) if fail_times else 0:.0f} ms after the kill; "
          f"{len(acked)} acked")
    ids = {m for m, _ in acked}
    got = consume(cluster.nameserver, "after-failover", topic, len(ids), timeout=120)
    missing = ids - {m.message_id for m in got}
    assert not missing, f"{len(missing)} acknowledged messages lost"
