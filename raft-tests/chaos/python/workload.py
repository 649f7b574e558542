"""Chaos workload driver on the official Python client (rocketmq-python-client 5.1.2, unchanged).

One process per role, started by the chaos runner (raft-tests/chaos/src/pyclient.rs):

  producer       sends to a normal topic, one message at a time; a failed send is recorded and
                 the producer moves on to the next message.
  fifo-producer  sends to a FIFO topic round robin over N message groups (default 4), one
                 message at a time, so each group is sequential; a failed send is sent again
                 (as a new `send()` call, hence a new message id) until one is acknowledged.
  consumer       a SimpleConsumer of one group: `receive(32, 15)`, then `ack` each message.

Every outcome is one JSON object per line on stdout (flushed), which the runner turns into
history events. Times are milliseconds since the run started (`--start-ms`, the run's start as
Unix epoch milliseconds). One `producer.send()` call is one `send` line: the client retries
inside the call (up to its max attempts, 3), so a failed call is a failed send.

Control: stdin lines `hold` / `go` pause and resume a producer (the runner's retention fault
holds producers until consumers have caught up); each `hold` is confirmed with a `held` line
once no send is in progress; `stop`, end of stdin, SIGTERM, SIGINT or the
`--stop-file` appearing stop the role. A consumer stops after the receive in progress.

Observation only: the driver wraps two client internals without changing what they do, to
record what the public API does not expose: the SendMessage RPC (to count the attempts one
`send()` made, so that the checker can tell a client retry's duplicate from a broker fault) and
`Message.fromProtobuf` (to read the queue id, offset and store host a delivered message
carries: the client's Message keeps none of them).
"""

import argparse
import json
import os
import signal
import sys
import threading
import time
import traceback


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--role", required=True, choices=["producer", "fifo-producer", "consumer"])
    p.add_argument("--access-point", required=True, help="nameserver address host:port")
    p.add_argument("--topic", required=True)
    p.add_argument("--group", help="consumer group (consumer role)")
    p.add_argument("--fifo", action="store_true", help="the consumer group is orderly (recorded only)")
    p.add_argument("--name", required=True, help="producer or consumer name in the history")
    p.add_argument("--start-ms", type=int, required=True, help="the run's start, Unix epoch ms")
    p.add_argument("--message-groups", type=int, default=4)
    p.add_argument("--gap-ms", type=int, default=20, help="pause between two sends")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--invisible-s", type=int, default=15)
    p.add_argument("--await-s", type=int, default=5, help="long polling of a receive")
    p.add_argument("--stop-file")
    p.add_argument("--run", default="", help="the run's tag (lets the runner find its processes)")
    return p.parse_args()


ARGS = parse_args()
OUT_LOCK = threading.Lock()
STOP = threading.Event()
HOLD = threading.Event()
# `hold` commands not yet confirmed with a `held` line (each is, once no send is in progress).
HOLDS_PENDING = [0]
HOLDS_LOCK = threading.Lock()


def now():
    return max(0, int(time.time() * 1000) - ARGS.start_ms)


def emit(obj):
    line = json.dumps(obj, separators=(",", ":"))
    with OUT_LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def err_text(e):
    s = f"{type(e).__name__}: {e}".replace("\n", " ")
    return s[:300]


def stopped():
    if STOP.is_set():
        return True
    if ARGS.stop_file and os.path.exists(ARGS.stop_file):
        STOP.set()
    return STOP.is_set()


def control_reader():
    """stdin: `hold`, `go`, `stop`; end of file = stop."""
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "hold":
            with HOLDS_LOCK:
                HOLDS_PENDING[0] += 1
            HOLD.set()
        elif cmd == "go":
            HOLD.clear()
        elif cmd == "stop":
            STOP.set()
    STOP.set()


def on_signal(signum, _frame):
    STOP.set()


# ---- observation wrappers (see the module doc)

def count_send_attempts(producer):
    """Counts SendMessage RPCs per message id; returns the counter (a dict)."""
    counts = {}
    rpc = producer.rpc_client
    orig = rpc.send_message_async

    def observed(endpoints, req, metadata, timeout=3):
        try:
            mid = req.messages[0].system_properties.message_id
            counts[mid] = counts.get(mid, 0) + 1
        except Exception:  # noqa: BLE001 - observation must never change the call
            pass
        return orig(endpoints, req, metadata, timeout=timeout)

    rpc.send_message_async = observed
    return counts


def observe_delivered_places():
    from rocketmq.v5.model.message import Message
    orig = Message.fromProtobuf

    def observed(self, message):
        r = orig(self, message)
        try:
            sp = message.system_properties
            self._chaos_queue = int(sp.queue_id)
            self._chaos_offset = int(sp.queue_offset) if sp.HasField("queue_offset") else -1
            self._chaos_store_host = sp.store_host
        except Exception:  # noqa: BLE001
            pass
        return r

    Message.fromProtobuf = observed


# ---- roles

def config():
    from rocketmq import ClientConfiguration, Credentials
    return ClientConfiguration(ARGS.access_point, Credentials())


def route_entry(receipt):
    """(broker name, queue id) of the route entry the client sent to. Not necessarily where the
    message is stored: the client's SendMessage carries no queue id, the broker picks one."""
    try:
        mq = receipt.message_queue.message_queue0()
        return mq.broker.name, int(mq.id)
    except Exception:  # noqa: BLE001
        return None, None


def run_producer(fifo):
    from rocketmq import Message, Producer
    producer = Producer(config(), (ARGS.topic,))
    producer.startup()
    attempts = count_send_attempts(producer)
    emit({"type": "ready", "t": now(), "role": ARGS.role, "name": ARGS.name})
    seq = 0
    calls = failed = 0
    try:
        while not stopped():
            # Here no send is in progress: confirm every hold asked for so far.
            with HOLDS_LOCK:
                pending, HOLDS_PENDING[0] = HOLDS_PENDING[0], 0
            for _ in range(pending):
                emit({"type": "held", "t": now()})
            if HOLD.is_set():
                time.sleep(0.02)
                continue
            group = f"{ARGS.name}-mg{seq % ARGS.message_groups}" if fifo else None
            msg = Message()
            msg.topic = ARGS.topic
            msg.tag = "t"
            msg.keys = f"{ARGS.name}-{seq}"
            msg.body = f"{ARGS.name}:{seq}:".encode() + b"x" * 100
            if group is not None:
                msg.message_group = group
            t0 = now()
            rec = {"type": "send", "t0": t0, "producer": ARGS.name, "topic": ARGS.topic,
                   "message_group": group, "seq": seq}
            try:
                r = producer.send(msg)
                rec["t1"] = now()
                broker, q = route_entry(r)
                rec.update(ok=True, id=r.message_id, offset=int(r.offset), route_broker=broker,
                           route_queue=q)
            except Exception as e:  # noqa: BLE001 - every failure is an outcome to record
                rec["t1"] = now()
                rec.update(ok=False, id=msg.message_id, error=err_text(e))
            calls += 1
            rec["attempts"] = attempts.pop(msg.message_id, None) if msg.message_id else None
            if not rec["id"]:
                # Refused before an id was assigned (e.g. no route yet): nothing was sent.
                rec["id"] = f"unsent-{ARGS.name}-{calls}"
            emit(rec)
            if rec["ok"]:
                seq += 1
                time.sleep(ARGS.gap_ms / 1000)
            else:
                failed += 1
                # A normal producer moves on; a FIFO producer sends this message again (its
                # successor must not overtake it).
                if not fifo:
                    seq += 1
                time.sleep(0.1)
    finally:
        try:
            producer.shutdown()
        except Exception as e:  # noqa: BLE001
            emit({"type": "error", "t": now(), "what": "shutdown", "error": err_text(e)})
    return {"calls": calls, "failed": failed}


def run_consumer():
    from rocketmq import FilterExpression, SimpleConsumer
    observe_delivered_places()
    consumer = SimpleConsumer(config(), ARGS.group, {ARGS.topic: FilterExpression("*")},
                              await_duration=ARGS.await_s)
    consumer.startup()
    emit({"type": "ready", "t": now(), "role": ARGS.role, "name": ARGS.name, "group": ARGS.group,
          "fifo": ARGS.fifo})
    received = receive_errors = ack_failures = 0
    try:
        while not stopped():
            try:
                batch = consumer.receive(ARGS.batch, ARGS.invisible_s)
            except Exception as e:  # noqa: BLE001
                receive_errors += 1
                emit({"type": "error", "t": now(), "what": "receive", "error": err_text(e)})
                STOP.wait(0.1)
                continue
            t = now()
            for m in batch:
                received += 1
                emit({"type": "deliver", "t": t, "consumer_group": ARGS.group, "consumer": ARGS.name,
                      "id": m.message_id, "topic": m.topic, "endpoint": str(m.endpoints),
                      "store_host": getattr(m, "_chaos_store_host", ""),
                      "queue": getattr(m, "_chaos_queue", -1), "offset": getattr(m, "_chaos_offset", -1),
                      "attempt": m.delivery_attempt or 0, "message_group": m.message_group})
            for m in batch:
                rec = {"type": "ack", "consumer_group": ARGS.group, "id": m.message_id}
                try:
                    consumer.ack(m)
                    rec["ok"] = True
                except Exception as e:  # noqa: BLE001
                    ack_failures += 1
                    rec.update(ok=False, error=err_text(e))
                rec["t"] = now()
                emit(rec)
    finally:
        try:
            consumer.shutdown()
        except Exception as e:  # noqa: BLE001
            emit({"type": "error", "t": now(), "what": "shutdown", "error": err_text(e)})
    return {"received": received, "receive_errors": receive_errors, "ack_failures": ack_failures}


def main():
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=control_reader, daemon=True).start()
    try:
        if ARGS.role == "consumer":
            if not ARGS.group:
                raise SystemExit("--group is required for the consumer role")
            stats = run_consumer()
        else:
            stats = run_producer(ARGS.role == "fifo-producer")
    except Exception as e:  # noqa: BLE001 - reported to the runner, then a non-zero exit
        emit({"type": "exit", "t": now(), "ok": False, "error": err_text(e)})
        traceback.print_exc()
        sys.stdout.flush()
        os._exit(1)
    emit({"type": "exit", "t": now(), "ok": True, "stats": stats})
    sys.stdout.flush()
    # The client leaves non-daemon threads behind after shutdown: do not wait for them.
    os._exit(0)


if __name__ == "__main__":
    main()
