// The unchanged official RocketMQ 5 Node client (`rocketmq-client-nodejs` 1.0.8) as a
// producer that sends one message at a time until its standard input closes, for fault tests
// driven from Python (tests/python/test_node_failover.py).
//
//   node tests/node/send_loop.mjs <endpoint> <topic> [message-group-count]
//
// With a message-group count the messages are FIFO messages in that many message groups.
// Prints one line per finished send on stdout, `ok <end ms> <message id> <seq>` or
// `fail <end ms> <seq> <error>`, and `done` once the producer shut down. Client logs go to
// stderr. A hard deadline (SEND_LOOP_DEADLINE_MS, default 300 s) ends a run that hangs.
import rmq from 'rocketmq-client-nodejs';

const { Producer } = rmq;
const [ endpoint, topic, groupsArg ] = process.argv.slice(2);
if (!endpoint || !topic) {
  process.stderr.write('usage: node send_loop.mjs <endpoint> <topic> [message-group-count]\n');
  process.exit(2);
}
const GROUPS = Number(groupsArg ?? 0);
const DEADLINE_MS = Number(process.env.SEND_LOOP_DEADLINE_MS ?? 300000);

const err = (level, args) => process.stderr.write(`[node ${new Date().toISOString()} ${level}] ${args.map(String).join(' ')}\n`);
const logger = { info: (...a) => err('INFO', a), warn: (...a) => err('WARN', a), error: (...a) => err('ERROR', a) };

let stopping = false;
process.stdin.on('end', () => { stopping = true; });
process.stdin.on('close', () => { stopping = true; });
process.stdin.resume();
setTimeout(() => { err('ERROR', [ `deadline of ${DEADLINE_MS} ms` ]); process.exit(3); }, DEADLINE_MS).unref();

const producer = new Producer({ endpoints: endpoint, namespace: '', topics: [ topic ], logger });
await producer.startup();
for (let seq = 0; !stopping; seq++) {
  const msg = { topic, body: Buffer.from(`node:${seq}`), properties: new Map([ [ 'seq', String(seq) ] ]) };
  if (GROUPS > 0) msg.messageGroup = `mg${seq % GROUPS}`;
  try {
    const r = await producer.send(msg);
    process.stdout.write(`ok ${Date.now()} ${r.messageId} ${seq}\n`);
  } catch (e) {
    process.stdout.write(`fail ${Date.now()} ${seq} ${String(e && e.message || e).replace(/\s+/g, ' ').slice(0, 200)}\n`);
  }
}
await producer.shutdown().catch(e => err('WARN', [ 'shutdown', e ]));
process.stdout.write('done\n', () => process.exit(0));
