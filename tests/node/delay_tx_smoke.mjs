// Delay and transaction smoke test of raftmq with the unchanged official RocketMQ 5 Node
// client (`rocketmq-client-nodejs` 1.0.8, pinned in package.json / package-lock.json).
//
//   node tests/node/delay_tx_smoke.mjs <endpoint> <delay-topic> <transaction-topic>
//
// Delay: 10 messages due 3 s after their send (deliveryTimestamp, millisecond precision); a
// SimpleConsumer polling all along must receive each exactly once, never before its due time,
// carrying its due time back; the lateness is reported.
// Transactions (brokers started with a short --transaction-check-interval): one half message
// committed, one rolled back, one committed twice, and two never resolved by the producer,
// which the broker checks back through the producer's TransactionChecker (one answered
// COMMIT, one ROLLBACK). The committed ones (3) must be received exactly once, the others never.
//
// Prints one JSON summary line on stdout and exits 0 only if everything held; client logs go
// to stderr. Run by tests/node_client.rs.

import rmq from 'rocketmq-client-nodejs';
import definition from 'rocketmq-client-nodejs/proto/apache/rocketmq/v2/definition_pb.js';

const { Producer, SimpleConsumer } = rmq;
const { TransactionResolution } = definition;

const [ endpoint, delayTopic, txTopic ] = process.argv.slice(2);
if (!endpoint || !delayTopic || !txTopic) {
  process.stderr.write('usage: node delay_tx_smoke.mjs <endpoint> <delay-topic> <transaction-topic>\n');
  process.exit(2);
}
const DELAY_COUNT = 10;
const DELAY_MS = 3000;
const DEADLINE_MS = Number(process.env.SMOKE_DEADLINE_MS ?? 120000);
const STEP_TIMEOUT_MS = 30000;
// After everything expected arrived, keep receiving this long: a message that must never
// (or only once) arrive would show up here.
const OBSERVE_MS = 3000;
const started = Date.now();

const summary = {
  endpoint,
  delay: { sent: 0, received: 0, duplicates: 0, early: [], late_ms_min: null, late_ms_max: null, mismatches: [] },
  tx: { committed: 0, received: 0, duplicates: 0, unexpected: [], checked: [], second_end: null, mismatches: [] },
  errors: [],
  total_ms: 0,
  ok: false,
};

function fmtArg(a) {
  if (a instanceof Error) return a.stack ?? String(a);
  if (typeof a === 'object' && a !== null) {
    try { return JSON.stringify(a); } catch { return String(a); }
  }
  return String(a);
}

function log(level, args) {
  const [ fmt, ...rest ] = args;
  let i = 0;
  const text = typeof fmt === 'string' ?
    fmt.replace(/%[sdjo]/g, () => (i < rest.length ? fmtArg(rest[i++]) : '')) : fmtArg(fmt);
  const extra = rest.slice(i).map(fmtArg).join(' ');
  process.stderr.write(`[node ${new Date().toISOString()} ${level}] ${text}${extra ? ' ' + extra : ''}\n`);
}

const logger = {
  info: (...a) => log('INFO', a),
  warn: (...a) => log('WARN', a),
  error: (...a) => log('ERROR', a),
  // The transaction code calls logger.debug unconditionally: a no-op unless SMOKE_DEBUG is set.
  debug: process.env.SMOKE_DEBUG ? (...a) => log('DEBUG', a) : () => {},
};

function finish(code) {
  summary.total_ms = Date.now() - started;
  summary.ok = code === 0;
  process.stdout.write(JSON.stringify(summary) + '\n', () => process.exit(code));
  setTimeout(() => process.exit(code), 2000).unref();
}

function fail(what, err) {
  summary.errors.push(`${what}: ${err instanceof Error ? err.message : String(err)}`);
  if (err instanceof Error) log('ERROR', [ what, err ]);
  finish(1);
}

const watchdog = setTimeout(() => fail('deadline', new Error(`not done after ${DEADLINE_MS} ms`)), DEADLINE_MS);

function withTimeout(promise, ms, what) {
  let t;
  const timeout = new Promise((_, reject) => {
    t = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
  });
  return Promise.race([ promise, timeout ]).finally(() => clearTimeout(t));
}

// A SimpleConsumer receiving (and acking) in the background until stop(); records
// [message, receivedAtMs] for every delivery.
function startReceiver(group, topic) {
  const consumer = new SimpleConsumer({
    consumerGroup: group,
    endpoints: endpoint,
    namespace: '',
    subscriptions: new Map([ [ topic, '*' ] ]),
    awaitDuration: 2000,
    logger,
  });
  const deliveries = [];
  let stopping = false;
  let errors = 0;
  const loop = (async () => {
    await withTimeout(consumer.startup(), STEP_TIMEOUT_MS, `consumer ${group} startup`);
    while (!stopping) {
      let batch;
      try {
        batch = await withTimeout(consumer.receive(16, 20000), STEP_TIMEOUT_MS, 'receive');
      } catch (e) {
        errors++;
        log('WARN', [ 'receive failed, retrying:', e ]);
        if (errors > 20) throw e;
        await new Promise(r => setTimeout(r, 100));
        continue;
      }
      const at = Date.now();
      for (const m of batch) {
        deliveries.push([ m, at ]);
        await withTimeout(consumer.ack(m), STEP_TIMEOUT_MS, `ack ${m.messageId}`);
      }
    }
  })();
  return {
    deliveries,
    loop,
    async stop() {
      stopping = true;
      await loop;
      await withTimeout(consumer.shutdown(), 10000, 'consumer shutdown').catch(e => log('WARN', [ 'consumer shutdown', e ]));
    },
  };
}

// Resolves once pred() holds, polling every 50 ms; rejects at the deadline or if the
// receiver loop failed.
async function until(pred, ms, what, receiver) {
  const end = Math.min(Date.now() + ms, started + DEADLINE_MS - 5000);
  let failed = null;
  receiver?.loop.catch(e => { failed = e; });
  while (!pred()) {
    if (failed) throw failed;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise(r => setTimeout(r, 50));
  }
}

function observe(ms) {
  const end = Date.now() + ms;
  return until(() => Date.now() >= end, ms + 1000, `${ms} ms of observation`);
}

const checks = [];
const checker = {
  async check(messageView) {
    const decision = messageView.properties.get('decision');
    checks.push({ id: messageView.messageId, decision, at: Date.now() });
    return decision === 'commit' ? TransactionResolution.COMMIT : TransactionResolution.ROLLBACK;
  },
};

async function delaySmoke(producer) {
  const receiver = startReceiver(`node-delay-${delayTopic}`, delayTopic);
  const sent = new Map();
  try {
    for (let i = 0; i < DELAY_COUNT; i++) {
      const due = new Date(Date.now() + DELAY_MS);
      const body = Buffer.from(`node-delay-${i}`);
      const r = await withTimeout(producer.send({
        topic: delayTopic, tag: 'Delayed', keys: [ `node-delay-${i}` ], body,
        properties: new Map([ [ 'index', String(i) ] ]), deliveryTimestamp: due,
      }), STEP_TIMEOUT_MS, `send delay #${i}`);
      sent.set(r.messageId, { i, due: due.getTime(), body });
      summary.delay.sent++;
    }
    const lastDue = Math.max(...[ ...sent.values() ].map(s => s.due));
    await until(() => new Set(receiver.deliveries.map(([ m ]) => m.messageId)).size >= sent.size,
      lastDue - Date.now() + 30000, 'every delay message', receiver);
    await observe(1000);
  } finally {
    await receiver.stop();
  }
  const seen = new Set();
  const late = [];
  for (const [ m, at ] of receiver.deliveries) {
    summary.delay.received++;
    const s = sent.get(m.messageId);
    if (!s) { summary.delay.mismatches.push(`unknown ${m.messageId}`); continue; }
    if (seen.has(m.messageId)) { summary.delay.duplicates++; continue; }
    seen.add(m.messageId);
    if (!Buffer.from(m.body).equals(s.body)) summary.delay.mismatches.push(`#${s.i} body`);
    if (m.properties.get('index') !== String(s.i)) summary.delay.mismatches.push(`#${s.i} property`);
    // Node sends the due time as seconds + nanos; allow the broker to keep milliseconds.
    if (!m.deliveryTimestamp || Math.abs(m.deliveryTimestamp.getTime() - s.due) > 1) {
      summary.delay.mismatches.push(`#${s.i} delivery timestamp ${m.deliveryTimestamp?.getTime()} != ${s.due}`);
    }
    if (at < s.due) summary.delay.early.push({ i: s.i, early_ms: s.due - at });
    late.push(at - s.due);
  }
  summary.delay.late_ms_min = Math.min(...late);
  summary.delay.late_ms_max = Math.max(...late);
  return seen.size === sent.size && summary.delay.duplicates === 0 && summary.delay.early.length === 0 &&
    summary.delay.mismatches.length === 0;
}

async function txSmoke(producer) {
  const receiver = startReceiver(`node-tx-${txTopic}`, txTopic);
  const expected = new Set();
  const never = new Set();
  const unresolved = new Set();
  try {
    const half = async (name, decision) => {
      const tx = producer.beginTransaction();
      const r = await withTimeout(producer.send({
        topic: txTopic, tag: 'Tx', keys: [ `node-tx-${name}` ], body: Buffer.from(`node-tx-${name}`),
        properties: new Map([ [ 'name', name ], [ 'decision', decision ] ]),
      }, tx), STEP_TIMEOUT_MS, `send half ${name}`);
      if (!r.transactionId) throw new Error(`half message ${name}: send receipt without transaction id`);
      return [ tx, r.messageId ];
    };
    let [ tx, id ] = await half('commit', 'commit');
    await tx.commit();
    expected.add(id);
    [ tx, id ] = await half('rollback', 'rollback');
    await tx.rollback();
    never.add(id);
    [ tx, id ] = await half('commit-twice', 'commit');
    await tx.commit();
    try {
      await tx.commit();
      summary.tx.second_end = 'OK';
    } catch (e) {
      summary.tx.second_end = String(e.message ?? e).slice(0, 100);
    }
    expected.add(id);
    // Never resolved here: the broker checks them back through `checker`.
    [ , id ] = await half('orphan-commit', 'commit');
    expected.add(id);
    unresolved.add(id);
    [ , id ] = await half('orphan-rollback', 'rollback');
    never.add(id);
    unresolved.add(id);
    summary.tx.committed = expected.size;
    await until(() => [ ...unresolved ].every(u => checks.some(c => c.id === u)), 60000,
      'check-backs of the unresolved half messages', receiver);
    await until(() => [ ...expected ].every(e => receiver.deliveries.some(([ m ]) => m.messageId === e)), 60000,
      'every committed transaction message', receiver);
    await observe(OBSERVE_MS);
  } finally {
    await receiver.stop();
  }
  summary.tx.checked = checks.map(c => c.decision);
  const seen = new Set();
  for (const [ m ] of receiver.deliveries) {
    summary.tx.received++;
    if (never.has(m.messageId) || !expected.has(m.messageId)) {
      summary.tx.unexpected.push(m.properties.get('name') ?? m.messageId);
    } else if (seen.has(m.messageId)) {
      summary.tx.duplicates++;
    } else {
      seen.add(m.messageId);
      if (Buffer.from(m.body).toString() !== `node-tx-${m.properties.get('name')}`) {
        summary.tx.mismatches.push(`${m.messageId} body`);
      }
    }
  }
  return seen.size === expected.size && summary.tx.duplicates === 0 && summary.tx.unexpected.length === 0 &&
    summary.tx.mismatches.length === 0;
}

try {
  const producer = new Producer({
    endpoints: endpoint, namespace: '', topics: [ delayTopic, txTopic ], checker, logger,
  });
  await withTimeout(producer.startup(), STEP_TIMEOUT_MS, 'producer startup');
  let good;
  try {
    const delayOk = await delaySmoke(producer);
    const txOk = await txSmoke(producer);
    good = delayOk && txOk;
  } finally {
    await withTimeout(producer.shutdown(), 10000, 'producer shutdown').catch(e => log('WARN', [ 'producer shutdown', e ]));
  }
  clearTimeout(watchdog);
  finish(good ? 0 : 1);
} catch (e) {
  clearTimeout(watchdog);
  fail('delay/tx smoke', e);
}
