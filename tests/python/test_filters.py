"""Tag and SQL92 subscriptions with the unchanged official Python client (issue #8 item 3):
a nameserver and a 3-node group as separate processes.

1,000 messages with random tags and random user properties (numbers, strings with blanks and
quotes, missing ones) are sent once; then one consumer group per filter expression receives
until every expected message arrived and the queues stay quiet, and the received set must
equal a reference evaluation, in Python, of the same expression over what was sent.

The reference follows RocketMQ's SQL92 semantics (apache/rocketmq `filter` module, see
`src/filter/sql92.rs`): properties are strings, absent = NULL; three-valued AND/OR/NOT with
short-circuit; `=` with NULL on the left is NULL; a string compared with an integer literal
is converted by Java's `Integer.parseInt` (no blanks, no decimals), with a float literal by
`Double.valueOf` (blanks trimmed); a failed conversion makes the broker skip the message
whatever the rest of the expression says; `TAGS` is the message tag."""

import random
import re
import threading
import time

from rocketmq import FilterExpression, Message, Producer, SimpleConsumer
from rocketmq.grpc_protocol import Code, FilterType

from conftest import client_config

TOPIC = "filter-topic"
COUNT = 1000
SEED = 20240808
TAGS = ["TagA", "TagB", "TagC", None]
A_VALUES = [str(i) for i in range(11)] + ["+7", " 7", "x", "2.5", "3000000000"]
B_VALUES = ["x", "y", "z", "it's", "X"]
D_VALUES = ["-1", "0.5", "1.5", "2.5", "1e3", " 3 ", "4.0f"]


# ---- reference evaluation -------------------------------------------------------------------

class EvalError(Exception):
    """RocketMQ's evaluation throws: the broker does not deliver the message."""


def java_int(s):
    if not re.fullmatch(r"[+-]?[0-9]+", s):
        raise EvalError(f"Integer.parseInt({s!r})")
    v = int(s)
    if not -2**31 <= v < 2**31:
        raise EvalError(f"Integer.parseInt({s!r}) overflows")
    return v


JAVA_DOUBLE = re.compile(r"[+-]?(?:NaN|Infinity|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[fFdD]?)")


def java_double(s):
    t = s.strip("".join(chr(c) for c in range(33)))
    if not JAVA_DOUBLE.fullmatch(t):
        raise EvalError(f"Double.valueOf({s!r})")
    return float(t.rstrip("fFdD"))


def compare(v, lit):
    """A property string against a numeric literal (int = Java Integer, float = Double)."""
    x = java_int(v) if isinstance(lit, int) else java_double(v)
    return (x > lit) - (x < lit)


def eq(v, lit):
    if v is None:
        return None
    if isinstance(lit, str):
        return v == lit
    return compare(v, lit) == 0


def ne(v, lit):
    return NOT(eq(v, lit))


def gt(v, lit):
    return None if v is None else compare(v, lit) > 0


def ge(v, lit):
    return None if v is None else compare(v, lit) >= 0


def lt(v, lit):
    return None if v is None else compare(v, lit) < 0


def le(v, lit):
    return None if v is None else compare(v, lit) <= 0


def is_null(v):
    return v is None


def NOT(x):
    return None if x is None else not x


def AND(*parts):
    """Operands are thunks, evaluated left to right, stopping at the first FALSE."""
    unknown = False
    for p in parts:
        r = p()
        if r is False:
            return False
        unknown |= r is None
    return None if unknown else True


def OR(*parts):
    unknown = False
    for p in parts:
        r = p()
        if r is True:
            return True
        unknown |= r is None
    return None if unknown else False


def between(v, lo, hi):
    return AND(lambda: ge(v, lo), lambda: le(v, hi))


def not_between(v, lo, hi):
    return OR(lambda: lt(v, lo), lambda: gt(v, hi))


def in_(v, items):
    return None if v is None else v in items


def not_in(v, items):
    return None if v is None else v not in items


# (expression, reference over p(name) -> value or None)
SQL_CASES = [
    ("a > 5 AND (b = 'x' OR c IS NULL)",
     lambda p: AND(lambda: gt(p("a"), 5), lambda: OR(lambda: eq(p("b"), "x"), lambda: is_null(p("c"))))),
    ("a BETWEEN 2 AND 4 OR b IN ('y', 'it''s')",
     lambda p: OR(lambda: between(p("a"), 2, 4), lambda: in_(p("b"), ("y", "it's")))),
    ("TAGS = 'TagA' OR c IS NOT NULL AND b <> 'z'",
     lambda p: OR(lambda: eq(p("TAGS"), "TagA"),
                  lambda: AND(lambda: not is_null(p("c")), lambda: ne(p("b"), "z")))),
    ("not (b = 'x') and d >= 1.5",
     lambda p: AND(lambda: NOT(eq(p("b"), "x")), lambda: ge(p("d"), 1.5))),
    ("a NOT BETWEEN 3 AND 7 OR b NOT IN ('x', 'y') AND d < 0.75",
     lambda p: OR(lambda: not_between(p("a"), 3, 7),
                  lambda: AND(lambda: not_in(p("b"), ("x", "y")), lambda: lt(p("d"), 0.75)))),
    ("d = 4 OR d = 3.0 OR TAGS IS NULL AND a IS NULL",
     lambda p: OR(lambda: eq(p("d"), 4), lambda: eq(p("d"), 3.0),
                  lambda: AND(lambda: is_null(p("TAGS")), lambda: is_null(p("a"))))),
]

TAG_EXPRESSION = "TagA || TagC"

MALFORMED = ["a >", "(a = 1", "b = 'x", "a == 1", "a = 1 junk", "a > 'x'", "a IN ()", "a BETWEEN 5 AND 1"]


def sql_matches(reference, tag, props):
    def p(name):
        return tag if name == "TAGS" else props.get(name)
    try:
        return reference(p) is True
    except EvalError:
        return False


def test_reference_evaluation_examples():
    """The reference itself, on hand-checked cases."""
    ref = dict(SQL_CASES)
    first = ref["a > 5 AND (b = 'x' OR c IS NULL)"]
    assert sql_matches(first, None, {"a": "6"})
    assert sql_matches(first, None, {"a": "+7", "b": "x", "c": "1"})
    assert not sql_matches(first, None, {"a": " 7"})  # Integer.parseInt fails: skipped
    assert not sql_matches(first, None, {"a": "2.5"})
    assert not sql_matches(first, None, {"a": "5"})
    assert not sql_matches(first, None, {"b": "x"})  # NULL AND TRUE
    d = ref["not (b = 'x') and d >= 1.5"]
    assert sql_matches(d, None, {"b": "y", "d": " 3 "})  # Double.valueOf trims
    assert not sql_matches(d, None, {"d": "1e3"})  # NOT NULL is NULL
    assert sql_matches(d, None, {"b": "X", "d": "4.0f"})
    t = ref["TAGS = 'TagA' OR c IS NOT NULL AND b <> 'z'"]
    assert sql_matches(t, "TagA", {"a": "x"}) and not sql_matches(t, "TagB", {"c": "1"})
    assert sql_matches(t, None, {"c": "1", "b": "y"})
    nb = ref["a NOT BETWEEN 3 AND 7 OR b NOT IN ('x', 'y') AND d < 0.75"]
    assert not sql_matches(nb, None, {"a": "x", "b": "z", "d": "0.5"})  # the error comes first
    assert sql_matches(nb, None, {"a": "8", "b": "x"})
    e = ref["d = 4 OR d = 3.0 OR TAGS IS NULL AND a IS NULL"]
    assert not sql_matches(e, None, {"d": "4.0f"})  # Integer.parseInt("4.0f") throws...
    assert not sql_matches(e, None, {"d": " 3 "})  # ...before `d = 3.0` could match
    assert sql_matches(e, None, {"d": "-1"}) and sql_matches(e, None, {})
    assert not sql_matches(e, None, {"d": "-1", "a": "1"})


# ---- the live test ---------------------------------------------------------------------------

def random_message(rng, i):
    tag = rng.choice(TAGS)
    props = {}
    if rng.random() < 0.85:
        props["a"] = rng.choice(A_VALUES)
    if rng.random() < 0.75:
        props["b"] = rng.choice(B_VALUES)
    if rng.random() < 0.5:
        props["c"] = "1"
    if rng.random() < 0.7:
        props["d"] = rng.choice(D_VALUES)
    m = Message()
    m.topic = TOPIC
    m.body = f"filter-{i}".encode()
    if tag is not None:
        m.tag = tag
    for k, v in props.items():
        m.add_property(k, v)
    return m, tag, props


class FilteredConsumer:
    """Receives with one filter expression until `expected` arrived and then `QUIET`
    consecutive receives came back empty (so unexpected extras would have been seen)."""

    QUIET = 8

    def __init__(self, endpoint, group, expression, expected, timeout=180):
        self.consumer = SimpleConsumer(client_config(endpoint), group, {TOPIC: expression}, await_duration=1)
        self.expected = set(expected)
        self.timeout = timeout
        self.got = {}
        self.duplicates = []
        self.errors = []
        self.rejected = None  # ILLEGAL_FILTER_EXPRESSION from the broker

    def run(self):
        self.consumer.startup()
        try:
            deadline = time.time() + self.timeout
            empties = 0
            while time.time() < deadline:
                done = self.expected <= self.got.keys()
                if done and empties >= self.QUIET:
                    return
                try:
                    batch = self.consumer.receive(32, 60)
                except Exception as e:  # noqa: BLE001 - recorded; a node may still be settling
                    if getattr(e, "code", None) == Code.ILLEGAL_FILTER_EXPRESSION:
                        self.rejected = str(e)
                        return
                    self.errors.append(str(e)[:200])
                    time.sleep(0.1)
                    continue
                empties = 0 if batch else empties + 1
                for m in batch:
                    if m.message_id in self.got:
                        self.duplicates.append(m.message_id)
                    self.got[m.message_id] = m
                    try:
                        self.consumer.ack(m)
                    except Exception as e:  # noqa: BLE001 - the invisible time (60 s) outlasts the test
                        self.errors.append(f"ack: {str(e)[:200]}")
        finally:
            self.consumer.shutdown()


def check(name, c, expected, sent):
    assert c.rejected is None, f"{name}: the broker rejected a valid expression: {c.rejected}"
    got = set(c.got)
    missing = expected - got
    extra = got - expected

    def show(ids):
        return [(sent[i][0], sent[i][1]) for i in list(ids)[:5]]
    assert not missing and not extra, (
        f"{name}: expected {len(expected)}, received {len(got)}; {len(missing)} missing e.g. {show(missing)}, "
        f"{len(extra)} unexpected e.g. {show(extra & sent.keys())}; last errors {c.errors[-3:]}")
    assert not c.duplicates, f"{name}: delivered twice: {c.duplicates[:5]}"
    for i, m in c.got.items():
        tag, props = sent[i]
        assert m.tag == tag and dict(m.properties) == props, (i, m.tag, dict(m.properties), tag, props)


def test_tag_and_sql92_subscriptions_receive_exactly_the_matching_subset(cluster):
    cluster.create_topic(TOPIC, queues=4)
    rng = random.Random(SEED)
    sent = {}
    p = Producer(client_config(cluster.nameserver), (TOPIC,))
    p.startup()
    try:
        for i in range(COUNT):
            m, tag, props = random_message(rng, i)
            sent[p.send(m).message_id] = (tag, props)
    finally:
        p.shutdown()
    assert len(sent) == COUNT

    cases = [("tag " + TAG_EXPRESSION, FilterExpression(TAG_EXPRESSION),
              {i for i, (tag, _) in sent.items() if tag in ("TagA", "TagC")})]
    for n, (expr, ref) in enumerate(SQL_CASES):
        expected = {i for i, (tag, props) in sent.items() if sql_matches(ref, tag, props)}
        cases.append((f"sql {expr}", FilterExpression(expr, FilterType.SQL), expected))
    sizes = [len(e) for _, _, e in cases]
    print(f"\nfilters: expected subset sizes of {COUNT}: " + ", ".join(f"{n!r}: {s}" for (n, _, _), s in zip(cases, sizes)))
    # Every expression selects a real, proper subset, so both wrong directions would show.
    assert all(0 < s < COUNT for s in sizes), sizes

    consumers = [FilteredConsumer(cluster.nameserver, f"filter-g{n}", fe, expected)
                 for n, (_, fe, expected) in enumerate(cases)]
    failures = []

    def run(c):
        try:
            c.run()
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append(repr(e))
    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in consumers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not failures, failures
    for (name, _, expected), c in zip(cases, consumers):
        check(name, c, expected, sent)


def test_malformed_sql92_gets_illegal_filter_expression(cluster):
    topic = "filter-bad-topic"
    cluster.create_topic(topic, queues=2)
    for n, expr in enumerate(MALFORMED):
        c = SimpleConsumer(client_config(cluster.nameserver), f"filter-bad{n}",
                           {topic: FilterExpression(expr, FilterType.SQL)}, await_duration=1)
        code, last = None, None
        deadline = time.time() + 60
        started = False
        try:
            while code is None and time.time() < deadline:
                try:
                    if not started:
                        c.startup()
                        started = True
                    batch = c.receive(8, 30)
                    assert not batch, f"{expr!r}: received messages with a malformed expression"
                    last = "an empty receive"
                except AssertionError:
                    raise
                except Exception as e:  # noqa: BLE001 - the code is checked below
                    last = e
                    if getattr(e, "code", None) == Code.ILLEGAL_FILTER_EXPRESSION:
                        code = e.code
                    else:
                        time.sleep(0.1)
        finally:
            if started:
                c.shutdown()
        assert code == Code.ILLEGAL_FILTER_EXPRESSION == 40010, f"{expr!r}: last result {last!r}"
