"""Broadcast consumer groups with the unchanged official Python client (issue #8): a nameserver
and a 3-node group as separate processes. In a broadcast group every consumer (client id) gets
every message, with its own progress, from the earliest retained message; in a clustering
group (the default) the consumers share the messages."""

from rocketmq import Message, Producer

from conftest import Receiver, client_config, send_all, wait_for

COUNT = 500


def send(cluster, topic, count):
    p = Producer(client_config(cluster.nameserver), (topic,))
    p.startup()
    messages = []
    for i in range(count):
        m = Message()
        m.topic = topic
        m.body = f"broadcast-{i}-".encode() + bytes([i % 256]) * (1 + i % 40)
        m.tag = "B"
        m.add_property("index", str(i))
        messages.append(m)
    try:
        receipts = send_all(p, messages)
    finally:
        p.shutdown()
    return {r.message_id: m.body for r, m in zip(receipts, messages)}


def check_all_once(name, receiver, sent):
    ids = receiver.ids()
    assert len(ids) == len(set(ids)), f"{name}: {len(ids) - len(set(ids))} duplicate deliveries"
    assert set(ids) == set(sent), f"{name}: missing {len(set(sent) - set(ids))}, unknown {len(set(ids) - set(sent))}"
    for m, _ in receiver.snapshot():
        assert m.body == sent[m.message_id]
        assert m.delivery_attempt == 1
    assert not receiver.ack_failures, receiver.ack_failures[:3]


def test_two_consumers_of_a_broadcast_group_both_receive_all(cluster):
    topic = "broadcast-topic"
    group = "broadcast-g"
    cluster.create_topic(topic, queues=4)
    cluster.create_group(group, "--broadcast")
    info = next(g for g in cluster.admin("group", "list")["consumer_groups"] if g["name"] == group)
    assert info["broadcast"] is True, info
    # Sent before any consumer exists: broadcast consumers start from the earliest message.
    sent = send(cluster, topic, COUNT)
    with Receiver(cluster.nameserver, group, topic) as a, Receiver(cluster.nameserver, group, topic) as b:
        assert a.consumer.client_id != b.consumer.client_id
        a.wait_for_ids(sent, timeout=120)
        b.wait_for_ids(sent, timeout=120)
    check_all_once("consumer A", a, sent)
    check_all_once("consumer B", b, sent)
    # A consumer joining later has its own progress: it also gets all of them.
    with Receiver(cluster.nameserver, group, topic) as c:
        c.wait_for_ids(sent, timeout=120)
    check_all_once("late consumer C", c, sent)
    print(f"\nbroadcast: 3 consumers each received all {COUNT} messages once")


def test_two_consumers_of_a_clustering_group_share_the_messages(cluster):
    topic = "clustering-topic"
    group = "clustering-g"
    cluster.create_topic(topic, queues=4)
    cluster.create_group(group)
    info = next(g for g in cluster.admin("group", "list")["consumer_groups"] if g["name"] == group)
    assert info["broadcast"] is False, info
    sent = send(cluster, topic, 100)
    with Receiver(cluster.nameserver, group, topic) as a, Receiver(cluster.nameserver, group, topic) as b:
        wait_for(lambda: set(a.ids()) | set(b.ids()) >= set(sent), 60, "all messages received by the group")
    ids = a.ids() + b.ids()
    assert len(ids) == len(set(ids)) == len(sent), "a clustering group received a message twice"
    assert set(ids) == set(sent)
    print(f"\nclustering: consumers got {len(a.ids())} + {len(b.ids())} of {len(sent)}")
