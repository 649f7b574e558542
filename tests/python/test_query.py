"""Message query and trace (`raftmq admin message get|trace --json`) on messages sent with the
unchanged official Python client (issue #8): a nameserver and a 3-node group as separate
processes. The stored message must come back with body and headers intact."""

import base64
import time

from rocketmq import Message, Producer

from conftest import AdminUsageError, Receiver, client_config, wait_for

SHARED_KEY = "order-batch-7"


def body_for(i):
    # Binary, with NUL and non-UTF-8 bytes, a length varying with i.
    return f"query-{i}-".encode() + bytes(range(256))[(i * 7) % 256:] + b"\x00\xff\xfe" * (i % 5)


def build(topic, i, group=None, due_s=None):
    m = Message()
    m.topic = topic
    m.body = body_for(i)
    m.tag = f"Tag{i % 3}"
    m.keys = f"qkey-{i}"
    if i < 5:
        m.keys = SHARED_KEY
    m.add_property("index", str(i))
    m.add_property("note", f"ünïcode = {i}; with spaces & symbols/%")
    if group is not None:
        m.message_group = group
    if due_s is not None:
        m.delivery_timestamp = due_s
    return m


def get(cluster, topic, *selector, broker=None):
    args = ["message", "get", "--topic", topic, *selector]
    if broker is not None:
        args = ["--broker", broker, *args]
    return cluster.admin(*args)["messages"]


def get_one_by_id(cluster, topic, mid, broker=None):
    msgs = wait_for(lambda: get(cluster, topic, "--id", mid, broker=broker), 30, f"message {mid} by id")
    assert len(msgs) == 1, f"query by id {mid} returned {len(msgs)} messages"
    return msgs[0]


def check_stored(stored, topic, mid, m, window):
    t0, t1 = window
    assert stored["topic"] == topic
    assert stored["message_id"] == mid
    assert base64.b64decode(stored["body_base64"]) == m.body, "body changed in the store"
    assert stored["tag"] == m.tag
    assert set(stored["keys"]) == set(m.keys)
    for k, v in m.properties.items():
        assert stored["properties"].get(k) == v, f"property {k}: {stored['properties'].get(k)!r} != {v!r}"
    # The Python client sends born_timestamp in whole seconds.
    assert int(t0) * 1000 <= stored["born_timestamp_ms"] <= t1 * 1000
    assert int(t0) * 1000 <= stored["store_timestamp_ms"] <= t1 * 1000 + 1000
    assert isinstance(stored["queue_id"], int) and stored["queue_id"] >= 0
    # A delay message not yet due is in no queue yet: offset -1.
    in_queue = stored["delivery_timestamp_ms"] <= time.time() * 1000
    assert isinstance(stored["queue_offset"], int) and stored["queue_offset"] >= (0 if in_queue else -1)
    assert isinstance(stored["commitlog_position"], int) and stored["commitlog_position"] >= 0


def send_all(cluster, topic, messages):
    p = Producer(client_config(cluster.nameserver), (topic,))
    p.startup()
    out = {}
    try:
        t0 = time.time()
        for m in messages:
            r = p.send(m)
            out[r.message_id] = (m, r)
        t1 = time.time()
    finally:
        p.shutdown()
    return out, (t0, t1)


def test_query_by_id_and_key_returns_stored_message_intact(cluster):
    topic = "query-normal"
    cluster.create_topic(topic, queues=4)
    sent, window = send_all(cluster, topic, [build(topic, i) for i in range(20)])
    positions = set()
    for mid, (m, _) in sent.items():
        stored = get_one_by_id(cluster, topic, mid)
        check_stored(stored, topic, mid, m, window)
        assert not stored.get("message_group")
        positions.add((stored["queue_id"], stored["queue_offset"]))
        positions.add(("commitlog", stored["commitlog_position"]))
    assert len(positions) == 2 * len(sent), "two messages share a queue offset or commitlog position"

    # By a unique key: exactly that message.
    for mid, (m, _) in list(sent.items())[5:8]:
        key = next(k for k in m.keys if k != SHARED_KEY)
        msgs = get(cluster, topic, "--key", key)
        assert [x["message_id"] for x in msgs] == [mid], f"key {key}: {msgs}"
        check_stored(msgs[0], topic, mid, m, window)
    # By the key shared by the first five messages: all of them.
    shared = {mid for mid, (m, _) in sent.items() if SHARED_KEY in m.keys}
    msgs = get(cluster, topic, "--key", SHARED_KEY)
    assert {x["message_id"] for x in msgs} == shared and len(msgs) == len(shared), msgs
    for x in msgs:
        check_stored(x, topic, x["message_id"], sent[x["message_id"]][0], window)
    # Nothing under an unknown key or id (an empty answer or a not-found error).
    for selector in (["--key", "no-such-key"], ["--id", "0000000000000000000000000000000000"]):
        try:
            assert get(cluster, topic, *selector) == [], selector
        except (RuntimeError, AdminUsageError) as e:
            assert "not found" in str(e).lower() or "no message" in str(e).lower(), e

    # Every node of the group answers from its own replica, with the same message.
    mid, (m, _) = next(iter(sent.items()))
    for node in cluster.ports:
        stored = get_one_by_id(cluster, topic, mid, broker=cluster.addr(node))
        check_stored(stored, topic, mid, m, window)


def test_query_shows_message_group_and_delivery_time(cluster):
    fifo, delay = "query-fifo", "query-delay"
    cluster.create_topic(fifo, queues=2, message_type="fifo")
    cluster.create_topic(delay, queues=2, message_type="delay")
    sent_f, window_f = send_all(cluster, fifo, [build(fifo, i, group=f"grp-{i % 2}") for i in range(6)])
    for mid, (m, _) in sent_f.items():
        stored = get_one_by_id(cluster, fifo, mid)
        check_stored(stored, fifo, mid, m, window_f)
        assert stored["message_group"] == m.message_group
    due_s = int(time.time()) + 3600
    sent_d, window_d = send_all(cluster, delay, [build(delay, 100, due_s=due_s)])
    mid, (m, _) = next(iter(sent_d.items()))
    stored = get_one_by_id(cluster, delay, mid)
    check_stored(stored, delay, mid, m, window_d)
    assert stored["delivery_timestamp_ms"] == due_s * 1000


def test_trace_shows_storage_and_per_group_deliveries(cluster):
    topic = "query-trace"
    cluster.create_topic(topic, queues=1)
    sent, window = send_all(cluster, topic, [build(topic, 50)])
    mid, (m, _) = next(iter(sent.items()))
    t_recv = time.time()
    with Receiver(cluster.nameserver, "trace-acker", topic) as acker:
        acker.wait_for_ids([mid], timeout=30)
    with Receiver(cluster.nameserver, "trace-holder", topic, invisible=30, ack=False) as holder:
        holder.wait_for_ids([mid], timeout=30)
    t_done = time.time()

    def traced():
        t = cluster.admin("message", "trace", "--topic", topic, "--id", mid)
        groups = {g["group"]: g for g in t["groups"]}
        return t if {"trace-acker", "trace-holder"} <= set(groups) and groups["trace-acker"]["acked"] else None

    assert not acker.ack_failures, acker.ack_failures
    t = wait_for(traced, 30, "a trace with both groups, the acker's ack recorded")
    check_stored(t["message"], topic, mid, m, window)
    assert t["stored"]["raft_index"] > 0 and t["stored"]["term"] >= 1
    assert t["stored"]["leader_node"] in cluster.ports, t["stored"]
    groups = {g["group"]: g for g in t["groups"]}
    for name, acked in (("trace-acker", True), ("trace-holder", False)):
        g = groups[name]
        assert g["acked"] is acked, g
        assert [d["attempt"] for d in g["deliveries"]] == [1], g
        at = g["deliveries"][0]["at_ms"]
        assert t_recv * 1000 - 1000 <= at <= t_done * 1000 + 1000, (at, t_recv, t_done)
