"""Transaction messages with the unchanged official Python client (issue #8): a nameserver and
a 3-node group as separate processes, brokers checking unresolved half messages back after
1 s and discarding them after 3 unanswered checks."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from rocketmq import Message, Producer, TransactionChecker, TransactionResolution

from conftest import Receiver, client_config, wait_for

CHECK_INTERVAL_S = 1
MAX_CHECKS = 3
CLUSTER_EXTRA_ARGS = ["--transaction-check-interval", f"{CHECK_INTERVAL_S}s",
                      "--transaction-max-checks", str(MAX_CHECKS)]


class RecordingChecker(TransactionChecker):
    """Answers the broker's check with decide(message) (raising means: no answer) and records
    every call as (message_id, index property, body, time)."""

    def __init__(self, decide):
        self.decide = decide
        self.calls = []
        self.lock = threading.Lock()

    def check(self, message):
        with self.lock:
            self.calls.append((message.message_id, message.properties.get("index"), message.body, time.time()))
        return self.decide(message)

    def by_index(self):
        with self.lock:
            out = {}
            for mid, idx, body, at in self.calls:
                out.setdefault(idx, []).append((mid, body, at))
            return out


def never_answers(message):
    raise RuntimeError(f"the test's checker does not answer for {message.message_id}")


def half(topic, i, decision=""):
    m = Message()
    m.topic = topic
    m.body = f"tx-{i}-{decision}-".encode() + bytes([i % 256]) * (1 + i % 30)
    m.tag = "Tx"
    m.keys = f"tx-key-{i}"
    m.add_property("index", str(i))
    if decision:
        m.add_property("decision", decision)
    return m


def observe(seconds):
    """An observation window: lets a broker that would wrongly deliver (or check) do so."""
    start = time.time()
    wait_for(lambda: time.time() >= start + seconds, seconds + 5, f"{seconds} s of observation")


def exactly_once(receiver, ids):
    got = receiver.ids()
    for i in ids:
        assert got.count(i) == 1, f"{i} delivered {got.count(i)} times"


def test_committed_half_delivered_once_rolled_back_half_never(cluster):
    topic = "tx-basic"
    cluster.create_topic(topic, queues=4, message_type="transaction")
    checker = RecordingChecker(never_answers)
    p = Producer(client_config(cluster.nameserver), (topic,), checker=checker)
    p.startup()
    committed, rolled_back, slow = {}, {}, set()

    def one(i):
        # Even: committed, odd: rolled back, right after the half message's send.
        tx = p.begin_transaction()
        m = half(topic, i)
        t0 = time.time()
        receipt = p.send(m, tx)
        assert receipt.transaction_id, "a half message's send receipt has no transaction id"
        if i % 2 == 0:
            tx.commit()
            committed[receipt.message_id] = m.body
        else:
            tx.rollback()
            rolled_back[receipt.message_id] = m.body
        if time.time() - t0 > CHECK_INTERVAL_S / 2:
            slow.add(receipt.message_id)

    with Receiver(cluster.nameserver, "tx-basic-g", topic) as r:
        try:
            # Eight transactions at a time.
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(one, range(100)))
            assert len(committed) == len(rolled_back) == 50
            r.wait_for_ids(committed, timeout=60)
            observe(3)
        finally:
            p.shutdown()
    exactly_once(r, committed)
    for m, _ in r.snapshot():
        assert m.message_id not in rolled_back, f"rolled-back message {m.message_id} was delivered"
        assert m.body == committed[m.message_id]
        assert m.properties.get("index") is not None and int(m.properties["index"]) % 2 == 0
    # Every transaction was resolved within half a check interval of its send: none may
    # have been checked back.
    checked = {mid for mid, _, _, _ in checker.calls}
    assert not (checked - slow), f"resolved transactions were checked back: {sorted(checked - slow)[:5]}"
    assert not r.ack_failures, r.ack_failures[:3]


def test_unresolved_half_messages_are_checked_back_then_committed_or_dropped(cluster):
    topic = "tx-orphans"
    cluster.create_topic(topic, queues=4, message_type="transaction")

    def decide(message):
        return TransactionResolution.COMMIT if message.properties.get("decision") == "commit" \
            else TransactionResolution.ROLLBACK

    checker = RecordingChecker(decide)
    p = Producer(client_config(cluster.nameserver), (topic,), checker=checker)
    p.startup()
    sent = {}  # index -> (message_id, body, decision, send started at)
    with Receiver(cluster.nameserver, "tx-orphans-g", topic) as r:
        try:
            for i in range(20):
                decision = "commit" if i % 2 == 0 else "rollback"
                m = half(topic, i, decision)
                t0 = time.time()
                receipt = p.send(m, p.begin_transaction())  # never committed nor rolled back here
                sent[str(i)] = (receipt.message_id, m.body, decision, t0)
            commit_ids = {mid for mid, _, d, _ in sent.values() if d == "commit"}
            wait_for(lambda: set(checker.by_index()) >= set(sent), 30,
                     "a check-back of every unresolved half message")
            r.wait_for_ids(commit_ids, timeout=30)
            observe(3)
        finally:
            p.shutdown()
    calls = checker.by_index()
    deliveries = {m.message_id: at for m, at in r.snapshot()}
    for idx, (mid, body, decision, t0) in sent.items():
        checks = calls[idx]
        assert all(c_mid == mid and c_body == body for c_mid, c_body, _ in checks), \
            f"the check-back of #{idx} did not carry the half message intact: {checks[:1]}"
        first_check = min(at for _, _, at in checks)
        assert first_check >= t0 + CHECK_INTERVAL_S - 0.01, \
            f"#{idx} checked {first_check - t0:.3f} s after its send, before the {CHECK_INTERVAL_S} s interval"
        if decision == "commit":
            assert deliveries[mid] >= first_check, f"#{idx} was delivered before its check-back committed it"
        else:
            assert mid not in deliveries, f"#{idx}, rolled back by the checker, was delivered"
    exactly_once(r, {mid for mid, _, d, _ in sent.values() if d == "commit"})
    counts = sorted(len(v) for v in calls.values())
    print(f"\ntransactions: checks per unresolved half message: min {counts[0]}, max {counts[-1]}")
    assert not r.ack_failures, r.ack_failures[:3]


def test_half_messages_never_answered_are_discarded_after_max_checks(cluster):
    topic = "tx-unanswered"
    cluster.create_topic(topic, queues=2, message_type="transaction")
    checker = RecordingChecker(never_answers)
    p = Producer(client_config(cluster.nameserver), (topic,), checker=checker)
    p.startup()
    txs = {}
    with Receiver(cluster.nameserver, "tx-unanswered-g", topic) as r:
        try:
            for i in range(5):
                tx = p.begin_transaction()
                receipt = p.send(half(topic, i), tx)
                txs[str(i)] = (receipt.message_id, tx)
            wait_for(lambda: all(len(checker.by_index().get(i, [])) >= MAX_CHECKS for i in txs),
                     MAX_CHECKS * CHECK_INTERVAL_S + 30, f"{MAX_CHECKS} check-backs of every half message")
            # Discarded now: no further check for a few intervals.
            observe(3 * CHECK_INTERVAL_S + 1)
            calls = checker.by_index()
            for i in txs:
                assert len(calls[i]) == MAX_CHECKS, \
                    f"#{i} checked {len(calls[i])} times with --transaction-max-checks {MAX_CHECKS}"
                times = sorted(at for _, _, at in calls[i])
                gaps = [b - a for a, b in zip(times, times[1:])]
                # Measured where the client runs its checker (load may delay one check more
                # than the next): half an interval still tells a re-check "every interval" from
                # a burst.
                assert min(gaps) >= CHECK_INTERVAL_S / 2, f"#{i} re-checked after {min(gaps):.3f} s"
            # A commit arriving after the discard does not bring the message back.
            late = []
            for mid, tx in txs.values():
                try:
                    tx.commit()
                    late.append((mid, "OK"))
                except Exception as e:  # noqa: BLE001 - refusing the late commit is fine too
                    late.append((mid, str(e)[:80]))
            print(f"\ntransactions: commit after discard answered {late[0][1]!r}")
            observe(2)
        finally:
            p.shutdown()
    assert r.ids() == [], f"discarded half messages were delivered: {r.ids()}"


def test_end_transaction_twice_changes_nothing(cluster):
    topic = "tx-twice"
    cluster.create_topic(topic, queues=2, message_type="transaction")
    checker = RecordingChecker(never_answers)
    p = Producer(client_config(cluster.nameserver), (topic,), checker=checker)
    p.startup()
    plans = {"commit,commit": True, "commit,rollback": True, "rollback,commit": False, "rollback,rollback": False}
    ids = {}
    second = {}
    with Receiver(cluster.nameserver, "tx-twice-g", topic) as r:
        try:
            for i, plan in enumerate(plans):
                tx = p.begin_transaction()
                receipt = p.send(half(topic, i, plan.replace(",", "-")), tx)
                ids[plan] = receipt.message_id
                first, again = plan.split(",")
                getattr(tx, first)()
                try:
                    getattr(tx, again)()
                    second[plan] = "OK"
                except Exception as e:  # noqa: BLE001 - an error answer is allowed; the effect is what counts
                    second[plan] = str(e)[:80]
            delivered = {ids[k] for k, v in plans.items() if v}
            r.wait_for_ids(delivered, timeout=30)
            observe(3)
        finally:
            p.shutdown()
    print(f"\ntransactions: second EndTransaction answered {second}")
    exactly_once(r, delivered)
    assert set(r.ids()) == delivered, \
        f"delivered {sorted(set(r.ids()))}, expected only the ones committed first {sorted(delivered)}"
