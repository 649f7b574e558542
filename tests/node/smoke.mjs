// Smoke test of raftmq with the unchanged official RocketMQ 5 Node client
// (`rocketmq-client-nodejs` 1.0.8, pinned in package.json / package-lock.json).
//
//   node tests/node/smoke.mjs <endpoint> <topic> [count]
//
// A Producer sends `count` (default 50) messages with tag, keys, a property and a
// per-message body; a SimpleConsumer then receives until every one of them arrived,
// checks id, topic, body, tag, keys and property against what was sent, and acks each.
// Prints one JSON summary line on stdout and exits 0 only if everything matched; any
// mismatch, duplicate, error or the deadline makes it exit 1. Client logs go to stderr.
// Run by tests/node_client.rs.
//
// SMOKE_TLS=1: both clients connect with TLS (`sslEnabled: true`: grpc-js
// `ChannelCredentials.createSsl()` with the default roots); the server's CA then comes from
// GRPC_DEFAULT_SSL_ROOTS_FILE_PATH or NODE_EXTRA_CA_CERTS. Run so by tests/python/test_tls.py.

import { randomBytes } from 'node:crypto';
import rmq from 'rocketmq-client-nodejs';

const { Producer, SimpleConsumer } = rmq;

const [ endpoint, topic, countArg ] = process.argv.slice(2);
if (!endpoint || !topic) {
  process.stderr.write('usage: node smoke.mjs <endpoint> <topic> [count]\n');
  process.exit(2);
}
const COUNT = Number(countArg ?? 50);
const DEADLINE_MS = Number(process.env.SMOKE_DEADLINE_MS ?? 120000);
const SSL = process.env.SMOKE_TLS === '1';
// SMOKE_ACCESS_KEY / SMOKE_SECRET_KEY: sign requests (ACL) with these credentials
// (`sessionCredentials`). The consumer group is SMOKE_GROUP (default node-smoke-<topic>).
const CREDENTIALS = process.env.SMOKE_ACCESS_KEY
  ? { accessKey: process.env.SMOKE_ACCESS_KEY, accessSecret: process.env.SMOKE_SECRET_KEY ?? '' }
  : undefined;
const GROUP = process.env.SMOKE_GROUP ?? `node-smoke-${topic}`;
const STEP_TIMEOUT_MS = 30000;
const started = Date.now();

const summary = {
  endpoint,
  topic,
  tls: SSL,
  sent: 0,
  received: 0,
  acked: 0,
  duplicates: 0,
  unknown: 0,
  mismatches: [],
  errors: [],
  send_ms: 0,
  receive_ms: 0,
  total_ms: 0,
  ok: false,
};

function log(level, args) {
  const [ fmt, ...rest ] = args;
  let i = 0;
  const text = typeof fmt === 'string' ?
    fmt.replace(/%[sdjo]/g, () => (i < rest.length ? fmtArg(rest[i++]) : '')) : fmtArg(fmt);
  const extra = rest.slice(i).map(fmtArg).join(' ');
  process.stderr.write(`[node ${new Date().toISOString()} ${level}] ${text}${extra ? ' ' + extra : ''}\n`);
}

function fmtArg(a) {
  if (a instanceof Error) return a.stack ?? String(a);
  if (typeof a === 'object' && a !== null) {
    try { return JSON.stringify(a); } catch { return String(a); }
  }
  return String(a);
}

// The client's default logger writes to ~/logs/rocketmq; keep everything on stderr.
const logger = {
  info: (...a) => log('INFO', a),
  warn: (...a) => log('WARN', a),
  error: (...a) => log('ERROR', a),
  debug: process.env.SMOKE_DEBUG ? (...a) => log('DEBUG', a) : undefined,
};

function finish(code) {
  summary.total_ms = Date.now() - started;
  summary.ok = code === 0;
  process.stdout.write(JSON.stringify(summary) + '\n', () => process.exit(code));
  // In case the write callback never runs.
  setTimeout(() => process.exit(code), 2000).unref();
}

function fail(what, err) {
  summary.errors.push(`${what}: ${err instanceof Error ? err.message : String(err)}`);
  if (err instanceof Error) log('ERROR', [ what, err ]);
  finish(1);
}

// Hard deadline for the whole run, whatever the client is doing.
const watchdog = setTimeout(() => fail('deadline', new Error(`not done after ${DEADLINE_MS} ms`)), DEADLINE_MS);

function withTimeout(promise, ms, what) {
  let t;
  const timeout = new Promise((_, reject) => {
    t = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
  });
  return Promise.race([ promise, timeout ]).finally(() => clearTimeout(t));
}

function bodyFor(i) {
  // Text prefix plus a few random (binary) bytes, a length varying with i.
  return Buffer.concat([ Buffer.from(`node-smoke-${i}-`), randomBytes(1 + (i % 40)) ]);
}

async function produce() {
  const producer = new Producer({ endpoints: endpoint, namespace: '', topics: [ topic ], sslEnabled: SSL,
    sessionCredentials: CREDENTIALS, logger });
  await withTimeout(producer.startup(), STEP_TIMEOUT_MS, 'producer startup');
  const sent = new Map();
  const t0 = Date.now();
  try {
    for (let i = 0; i < COUNT; i++) {
      const msg = {
        topic,
        tag: i % 2 === 0 ? 'TagA' : 'TagB',
        keys: [ `key-${i}` ],
        properties: new Map([ [ 'index', String(i) ] ]),
        body: bodyFor(i),
      };
      const receipt = await withTimeout(producer.send(msg), STEP_TIMEOUT_MS, `send #${i}`);
      if (!receipt || typeof receipt.messageId !== 'string' || receipt.messageId.length === 0) {
        throw new Error(`send #${i}: receipt without message id: ${fmtArg(receipt)}`);
      }
      if (sent.has(receipt.messageId)) {
        throw new Error(`send #${i}: message id ${receipt.messageId} returned twice`);
      }
      sent.set(receipt.messageId, { i, ...msg });
      summary.sent++;
    }
  } finally {
    summary.send_ms = Date.now() - t0;
    await withTimeout(producer.shutdown(), 10000, 'producer shutdown').catch(e => log('WARN', [ 'producer shutdown', e ]));
  }
  return sent;
}

function check(m, expected) {
  const bad = [];
  if (m.topic !== topic) bad.push(`topic ${m.topic}`);
  if (m.corrupted) bad.push('corrupted (body digest mismatch)');
  if (!Buffer.from(m.body).equals(expected.body)) bad.push(`body ${Buffer.from(m.body).toString('hex')} != ${expected.body.toString('hex')}`);
  if (m.tag !== expected.tag) bad.push(`tag ${m.tag} != ${expected.tag}`);
  if (JSON.stringify(m.keys) !== JSON.stringify(expected.keys)) bad.push(`keys ${JSON.stringify(m.keys)} != ${JSON.stringify(expected.keys)}`);
  if (m.properties.get('index') !== String(expected.i)) bad.push(`property index ${m.properties.get('index')} != ${expected.i}`);
  if (!m.receiptHandle) bad.push('no receipt handle');
  if (!(m.deliveryAttempt >= 1)) bad.push(`delivery attempt ${m.deliveryAttempt}`);
  return bad.length ? `message ${m.messageId} (#${expected.i}): ${bad.join('; ')}` : null;
}

async function consume(sent) {
  const consumer = new SimpleConsumer({
    consumerGroup: GROUP,
    endpoints: endpoint,
    namespace: '',
    subscriptions: new Map([ [ topic, '*' ] ]),
    awaitDuration: 3000,
    sslEnabled: SSL,
    sessionCredentials: CREDENTIALS,
    logger,
  });
  await withTimeout(consumer.startup(), STEP_TIMEOUT_MS, 'consumer startup');
  const seen = new Set();
  const t0 = Date.now();
  const receiveUntil = started + DEADLINE_MS - 15000;
  let receiveErrors = 0;
  try {
    while (seen.size < sent.size) {
      if (Date.now() > receiveUntil) {
        throw new Error(`received ${seen.size} of ${sent.size} before the deadline`);
      }
      let batch;
      try {
        batch = await withTimeout(consumer.receive(16, 15000), STEP_TIMEOUT_MS, 'receive');
      } catch (e) {
        // A transient error (e.g. a member still catching up); retried until the deadline.
        receiveErrors++;
        log('WARN', [ 'receive failed, retrying:', e ]);
        if (receiveErrors > 20) throw e;
        continue;
      }
      for (const m of batch) {
        summary.received++;
        const expected = sent.get(m.messageId);
        if (!expected) {
          summary.unknown++;
          summary.mismatches.push(`unexpected message id ${m.messageId}`);
        } else if (seen.has(m.messageId)) {
          summary.duplicates++;
        } else {
          seen.add(m.messageId);
          const bad = check(m, expected);
          if (bad) summary.mismatches.push(bad);
        }
        await withTimeout(consumer.ack(m), STEP_TIMEOUT_MS, `ack ${m.messageId}`);
        summary.acked++;
      }
    }
  } finally {
    summary.receive_ms = Date.now() - t0;
    summary.receive_errors = receiveErrors;
    await withTimeout(consumer.shutdown(), 10000, 'consumer shutdown').catch(e => log('WARN', [ 'consumer shutdown', e ]));
  }
}

try {
  const sent = await produce();
  await consume(sent);
  clearTimeout(watchdog);
  const good = summary.sent === COUNT && summary.received === COUNT && summary.acked === COUNT &&
    summary.duplicates === 0 && summary.unknown === 0 && summary.mismatches.length === 0;
  finish(good ? 0 : 1);
} catch (e) {
  clearTimeout(watchdog);
  fail('smoke', e);
}
