// Unit tests of the reference client (node's test runner): `node --test gateway/web/`.
import { test, mock } from 'node:test';
import assert from 'node:assert/strict';
import {
  Book, CandleSeries, Connection, MSG, FLAG_RESYNC, TradeTape, decodeFrame, decodeTrade, formatFixed,
  parseFixed, replaceRequest,
} from './tickgate.js';

/** One binary message as the server frames it (docs/PROTOCOL.md). */
function message(type, seq, body, { flags = 0, channel = 1, ts = 7n } = {}) {
  const out = new DataView(new ArrayBuffer(24 + body.byteLength));
  out.setUint8(0, type);
  out.setUint8(1, flags);
  out.setUint16(2, body.byteLength, true);
  out.setUint32(4, channel, true);
  out.setBigUint64(8, BigInt(seq), true);
  out.setBigUint64(16, ts, true);
  new Uint8Array(out.buffer).set(new Uint8Array(body.buffer), 24);
  return new Uint8Array(out.buffer);
}

function frame(...messages) {
  const total = messages.reduce((n, m) => n + m.byteLength, 0);
  const out = new Uint8Array(total);
  let at = 0;
  for (const m of messages) { out.set(m, at); at += m.byteLength; }
  return out.buffer;
}

function snapshot(bids, asks) {
  const body = new DataView(new ArrayBuffer(8 + 16 * (bids.length + asks.length)));
  body.setUint16(0, bids.length, true);
  body.setUint16(2, asks.length, true);
  [...bids, ...asks].forEach(([p, q], n) => {
    body.setBigInt64(8 + 16 * n, BigInt(p), true);
    body.setBigInt64(16 + 16 * n, BigInt(q), true);
  });
  return body;
}

function delta(side, price, qty) {
  const body = new DataView(new ArrayBuffer(24));
  body.setUint8(0, side);
  body.setBigInt64(8, BigInt(price), true);
  body.setBigInt64(16, BigInt(qty), true);
  return body;
}

test('a book is rebuilt from a snapshot and contiguous deltas', () => {
  const book = new Book();
  const messages = [...decodeFrame(frame(
    message(MSG.BOOK_SNAPSHOT, 10, snapshot([[100, 5], [99, 1]], [[101, 2]])),
    message(MSG.BOOK_DELTA, 11, delta(0, 100, 0)),
    message(MSG.BOOK_DELTA, 12, delta(1, 102, 3)),
  ))];
  assert.equal(messages.length, 3);
  for (const m of messages) assert.equal(book.apply(m), true);
  assert.equal(book.seq, 12n);
  assert.deepEqual(book.levels('bids', 5), [[99n, 1n]]);
  assert.deepEqual(book.levels('asks', 5), [[101n, 2n], [102n, 3n]]);
  assert.equal(book.stale, false);
});

test('a gap makes the book stale until a fresh snapshot replaces it', () => {
  const book = new Book();
  const [snap, gap] = decodeFrame(frame(
    message(MSG.BOOK_SNAPSHOT, 1, snapshot([[100, 5]], [])),
    message(MSG.BOOK_DELTA, 3, delta(0, 99, 1)),
  ));
  book.apply(snap);
  assert.equal(book.apply(gap), false, 'seq 3 after 1 is a gap');
  assert.equal(book.stale, true);
  const [resync] = decodeFrame(frame(
    message(MSG.BOOK_SNAPSHOT, 9, snapshot([[98, 2]], [[103, 1]]), { flags: FLAG_RESYNC }),
  ));
  assert.equal(book.apply(resync), true);
  assert.deepEqual(book.levels('bids', 5), [[98n, 2n]], 'no ghost level left from before');
  assert.equal(book.stale, false);
});

test('truncated frames are refused, not misread', () => {
  const whole = frame(message(MSG.BOOK_DELTA, 2, delta(0, 1, 1)));
  assert.throws(() => [...decodeFrame(whole.slice(0, 30))], /truncated/);
  assert.throws(() => [...decodeFrame(whole.slice(0, 10))], /truncated/);
});

test('trades and fixed-point values decode exactly', () => {
  const body = new DataView(new ArrayBuffer(40));
  body.setBigInt64(0, 6500012n, true);
  body.setBigInt64(8, 15n, true);
  body.setUint8(16, 1);
  const [m] = decodeFrame(frame(message(MSG.TRADE, 4, body)));
  const t = decodeTrade(m.body);
  assert.equal(formatFixed(t.price, 2), '65000.12');
  assert.equal(formatFixed(t.qty, 4), '0.0015');
  assert.equal(t.takerSide, 'sell');
  assert.equal(formatFixed(-5n, 3), '-0.005');
  assert.equal(parseFixed('65000.12', 2), 6500012n);
  assert.equal(parseFixed('.5', 2), 50n);
  assert.equal(parseFixed('1.', 2), 100n);
  assert.equal(parseFixed('1.234', 2), null, 'too many decimals');
  assert.equal(parseFixed('abc', 2), null);
  // Beyond 2^53: BigInt keeps every digit.
  assert.equal(formatFixed(parseFixed('92233720368547758.07', 2), 2), '92233720368547758.07');
});

function candles(list, snapshot) {
  const first = snapshot ? 8 : 0;
  const body = new DataView(new ArrayBuffer(first + 56 * list.length));
  if (snapshot) body.setUint32(0, list.length, true);
  list.forEach((c, n) => {
    const at = first + 56 * n;
    body.setBigUint64(at, BigInt(c[0]), true);
    c.slice(1, 6).forEach((v, k) => body.setBigInt64(at + 8 * (k + 1), BigInt(v), true));
    body.setBigUint64(at + 48, BigInt(c[6]), true);
  });
  return body;
}

test('candles are rebuilt from a snapshot and whole-candle updates, in sequence', () => {
  const series = new CandleSeries(3);
  const apply = (type, seq, body) => {
    const [m] = [...decodeFrame(frame(message(type, seq, body)))];
    return series.apply(m.type, m.seq, m.body);
  };
  // start, open, high, low, close, volume, trades
  assert.equal(apply(MSG.CANDLES_SNAPSHOT, 5, candles([[60, 10, 12, 9, 11, 3, 2], [120, 11, 11, 11, 11, 1, 1]], true)), true);
  assert.equal(series.stale, false);
  // The open candle grows, then the next one opens, then two more: three kept.
  assert.equal(apply(MSG.CANDLE, 6, candles([[120, 11, 14, 11, 14, 2, 2]])), true);
  assert.equal(apply(MSG.CANDLE, 7, candles([[180, 14, 14, 13, 13, 5, 1]])), true);
  assert.equal(apply(MSG.CANDLE, 8, candles([[240, 13, 13, 13, 13, 1, 1]])), true);
  assert.deepEqual(series.candles.map((c) => [c.start, c.high, c.close, c.trades]),
    [[120n, 14n, 14n, 2n], [180n, 14n, 13n, 1n], [240n, 13n, 13n, 1n]]);
  // A gap makes the series stale (resubscribe for a fresh snapshot).
  assert.equal(apply(MSG.CANDLE, 10, candles([[240, 13, 13, 12, 12, 2, 2]])), false);
  assert.equal(series.stale, true);
  assert.equal(series.candles.at(-1).close, 13n, 'nothing applied past a gap');
  assert.throws(() => apply(MSG.CANDLES_SNAPSHOT, 11, candles([[1, 1, 1, 1, 1, 1, 1]], false)), /candles length/);
});

/** A TRADES_SNAPSHOT body of `seqs` (oldest first), price = 100 + seq. */
function tradesSnapshot(seqs) {
  const body = new DataView(new ArrayBuffer(8 + 40 * seqs.length));
  body.setUint32(0, seqs.length, true);
  seqs.forEach((seq, n) => {
    body.setBigUint64(8 + 40 * n, BigInt(seq), true);
    body.setBigInt64(8 + 40 * n + 16, BigInt(100 + seq), true);
    body.setBigInt64(8 + 40 * n + 24, 1n, true);
  });
  return body;
}

function tradeBody(seq) {
  const body = new DataView(new ArrayBuffer(40));
  body.setBigInt64(0, BigInt(100 + seq), true);
  body.setBigInt64(8, 1n, true);
  return body;
}

const seqsOf = (tape) => tape.trades.map((t) => Number(t.seq));
const range = (from, to) => Array.from({ length: to - from + 1 }, (_, n) => from + n);

test('a trade tape merges a snapshot by sequence: no trade twice, none out of order', () => {
  const tape = new TradeTape(50);
  tape.apply(MSG.TRADES_SNAPSHOT, 10n, 0n, tradesSnapshot(range(1, 10)));
  for (const seq of [11, 12, 13]) assert.equal(tape.apply(MSG.TRADE, BigInt(seq), 0n, tradeBody(seq)), true);
  // A reconnect: the snapshot's 32 most recent overlap what is kept.
  tape.apply(MSG.TRADES_SNAPSHOT, 20n, 0n, tradesSnapshot(range(5, 20)));
  assert.deepEqual(seqsOf(tape), range(1, 20).reverse());
  // A trade the snapshot already had is not shown twice.
  assert.equal(tape.apply(MSG.TRADE, 20n, 0n, tradeBody(20)), true);
  assert.equal(tape.trades.length, 20);
  assert.equal(tape.trades[0].price, 120n);
});

test('a trade tape never hides a hole: what does not join is replaced', () => {
  const tape = new TradeTape(5);
  tape.apply(MSG.TRADES_SNAPSHOT, 3n, 0n, tradesSnapshot([1, 2, 3]));
  // Trades 4..9 missed while away: the new snapshot replaces the tape.
  tape.apply(MSG.TRADES_SNAPSHOT, 12n, 0n, tradesSnapshot([10, 11, 12]));
  assert.deepEqual(seqsOf(tape), [12, 11, 10]);
  // A trade that skips one: kept alone, and the caller is told to resubscribe.
  assert.equal(tape.apply(MSG.TRADE, 14n, 0n, tradeBody(14)), false);
  assert.deepEqual(seqsOf(tape), [14]);
  tape.apply(MSG.TRADES_SNAPSHOT, 14n, 0n, tradesSnapshot(range(8, 14)));
  assert.deepEqual(seqsOf(tape), [14, 13, 12, 11, 10], 'refilled, and at most `keep`');
  // A server that starts over (no journal): its history replaces the old one.
  tape.apply(MSG.TRADES_SNAPSHOT, 2n, 0n, tradesSnapshot([1, 2]));
  assert.deepEqual(seqsOf(tape), [2, 1]);
  // GAP: the trades the server could not send are counted, the tape starts over after
  // them, and the caller resubscribes; the snapshot that comes fills the hole.
  const gap = new DataView(new ArrayBuffer(16));
  gap.setBigUint64(0, 3n, true);
  gap.setBigUint64(8, 7n, true);
  assert.equal(tape.apply(MSG.GAP, 7n, 0n, gap), false, 'resubscribe');
  assert.equal(tape.missed, 5n);
  assert.equal(tape.apply(MSG.TRADE, 8n, 0n, tradeBody(8)), true);
  assert.deepEqual(seqsOf(tape), [8]);
  tape.apply(MSG.TRADES_SNAPSHOT, 8n, 0n, tradesSnapshot(range(4, 8)));
  assert.deepEqual(seqsOf(tape), [8, 7, 6, 5, 4]);
  assert.equal(tape.missed, 5n, 'trade 3 is not back: still said');
  tape.apply(MSG.GAP, 9n, 0n, gap);
  tape.apply(MSG.TRADES_SNAPSHOT, 9n, 0n, tradesSnapshot(range(3, 9)));
  assert.equal(tape.missed, 0n, 'a snapshot back to the first skipped trade fills the hole');
});

/** A WebSocket the test plays the server of. */
class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeSocket.all.push(this);
  }
  send(text) { this.sent.push(JSON.parse(text)); }
  close() { this.readyState = 3; }
  accept({ heartbeat = 5000, welcome = true } = {}) {
    this.readyState = 1;
    this.onopen?.();
    if (welcome) this.receive({ op: 'welcome', id: null, version: 1, heartbeat_interval_ms: heartbeat });
  }
  receive(msg) { this.onmessage?.({ data: JSON.stringify(msg) }); }
  /** The server's close. */
  end(code, reason = '') {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  /** Answers every request not answered yet with `answer(request)` (or leaves it). */
  answer(answer) {
    for (const r of this.sent.splice(0)) {
      const a = answer(r);
      if (a) this.receive({ id: r.id, ...a });
    }
  }
}

/** Lets the connection's promises run (the timers are mocked, setImmediate is not). */
const flush = async () => { for (let n = 0; n < 5; n++) await new Promise((resolve) => setImmediate(resolve)); };

/** The server's usual answers to subscription requests. */
const serve = (r) => (r.op === 'subscribe' ? { op: 'subscribed', channels: r.channels.map((c) => ({ channel: c, channel_id: 1 })) }
  : r.op === 'unsubscribe' ? { op: 'unsubscribed', channels: r.channels } : r.op === 'ping' ? { op: 'pong' } : null);

function connection(options) {
  FakeSocket.all = [];
  mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'], now: 1_000_000 });
  const conn = new Connection('ws://test/ws', { WebSocketImpl: FakeSocket, ...options });
  const states = [];
  conn.addEventListener('state', (e) => states.push(e.detail));
  return { conn, states, socket: () => FakeSocket.all.at(-1) };
}

test('a silent connection is probed, marked stale, and dropped; anything arriving revives it', async (t) => {
  t.after(() => mock.timers.reset());
  const { conn, socket } = connection({ probeAfterMs: 1000 });
  socket().accept({ heartbeat: 5000 });
  assert.equal(conn.state, 'open');
  mock.timers.tick(1000);
  assert.deepEqual(socket().sent.map((r) => r.op), ['ping'], 'silent for probeAfterMs: a ping');
  mock.timers.tick(1750);
  assert.equal(conn.state, 'open', 'the pong has probeTimeoutMs');
  mock.timers.tick(500);
  assert.equal(conn.state, 'stale', 'no pong in time');
  socket().answer(serve);
  assert.equal(conn.state, 'open', 'the pong came after all');
  conn.close();
  mock.timers.reset();
  // With probes unanswered, still stale at one heartbeat interval and the margin at the latest.
  const quiet = connection({ probeAfterMs: 60_000 });
  quiet.socket().accept({ heartbeat: 2000 });
  mock.timers.tick(2750);
  assert.equal(quiet.conn.state, 'open');
  mock.timers.tick(500);
  assert.equal(quiet.conn.state, 'stale', 'heartbeat interval (from the welcome) + margin');
  const first = quiet.socket();
  mock.timers.tick(2000);
  assert.equal(quiet.conn.state, 'closed', 'two heartbeat intervals + margin: dropped');
  mock.timers.tick(500);
  assert.notEqual(quiet.socket(), first, 'and reconnected');
  quiet.conn.close();
});

test('requests are answered when the server does not answer: timeout, disconnected, not_connected', async (t) => {
  t.after(() => mock.timers.reset());
  const { conn, socket } = connection({ requestTimeoutMs: 3000, probeAfterMs: 60_000 });
  assert.equal((await conn.request({ op: 'ping' })).code, 'not_connected');
  socket().accept();
  const late = conn.request({ op: 'order.new' });
  mock.timers.tick(3000);
  assert.equal((await late).code, 'timeout');
  const cut = conn.request({ op: 'order.new' });
  socket().end(1006);
  assert.equal((await cut).code, 'disconnected');
  conn.close();
});

test('a connection refused at once (4401) is reported and does not reset the backoff', async (t) => {
  t.after(() => mock.timers.reset());
  const { conn, socket } = connection();
  const closes = [];
  conn.addEventListener('close', (e) => closes.push(e.detail.code));
  const opened = [];
  for (let n = 0; n < 4; n++) {
    opened.push(Date.now());
    socket().accept({ welcome: false });
    socket().end(4401, 'unauthorized: invalid or expired token');
    const before = FakeSocket.all.length;
    while (FakeSocket.all.length === before) mock.timers.tick(50);
  }
  assert.deepEqual(closes, [4401, 4401, 4401, 4401]);
  const waits = opened.slice(1).map((at, n) => at - opened[n]);
  assert.deepEqual(waits, [500, 1000, 2000], 'doubling');
  // A welcome (the connection was accepted) resets it.
  socket().accept();
  socket().end(1006);
  const at = Date.now();
  const before = FakeSocket.all.length;
  while (FakeSocket.all.length === before) mock.timers.tick(50);
  assert.equal(Date.now() - at, 500);
  conn.close();
});

test('subscription changes in quick succession are coalesced, with nothing left behind', async (t) => {
  t.after(() => mock.timers.reset());
  const { conn, socket } = connection({ probeAfterMs: 60_000 });
  conn.subscribe(['bbo.A', 'book.A', 'trades.A']);
  socket().accept();
  await flush();
  assert.deepEqual(socket().sent.map((r) => [r.op, r.channels]), [['subscribe', ['bbo.A', 'book.A', 'trades.A']]]);
  socket().answer(serve);
  await flush();
  // 31 switches in one turn: one unsubscribe and one subscribe, of the first and last only.
  let current = 'A';
  const follow = (symbol) => {
    conn.unsubscribe([`book.${current}`, `trades.${current}`]);
    conn.subscribe([`book.${symbol}`, `trades.${symbol}`]);
    current = symbol;
  };
  for (let n = 0; n < 31; n++) follow('BCDEFGH'[n % 7]);
  await flush();
  assert.deepEqual(socket().sent.map((r) => [r.op, r.channels]), [['unsubscribe', ['book.A', 'trades.A']]]);
  socket().answer(serve);
  await flush();
  assert.deepEqual(socket().sent.map((r) => [r.op, r.channels]), [['subscribe', [`book.${current}`, `trades.${current}`]]]);
  // Switches while that request is in flight join the next one.
  follow('X');
  follow('Y');
  socket().answer(serve);
  await flush();
  assert.deepEqual(socket().sent.map((r) => [r.op, r.channels]), [['unsubscribe', [`book.D`, `trades.D`]]]);
  socket().answer(serve);
  await flush();
  assert.deepEqual(socket().sent.map((r) => [r.op, r.channels]), [['subscribe', ['book.Y', 'trades.Y']]]);
  socket().answer(serve);
  await flush();
  assert.deepEqual([...conn.active].sort(), ['bbo.A', 'book.Y', 'trades.Y']);
  assert.deepEqual([...conn.books.keys()], ['Y']);
  conn.close();
});

test('a subscription refused as rate_limited is retried; one refused for good is reported', async (t) => {
  t.after(() => mock.timers.reset());
  const { conn, socket } = connection({ probeAfterMs: 60_000 });
  socket().accept();
  const refused = [];
  conn.addEventListener('refused', (e) => refused.push(e.detail.answer.code));
  const done = conn.subscribe(['book.A']);
  await flush();
  socket().answer(() => ({ op: 'error', code: 'rate_limited', message: 'over the inbound rate' }));
  await flush();
  assert.equal(socket().sent.length, 0, 'not at once');
  mock.timers.tick(1000);
  await flush();
  mock.timers.tick(200); // the subscription budget was drained: paced
  await flush();
  assert.deepEqual(socket().sent.map((r) => r.channels), [['book.A']]);
  socket().answer(serve);
  await done;
  assert.ok(conn.active.has('book.A'));
  conn.subscribe(['book.NOPE']);
  await flush();
  socket().answer(() => ({ op: 'error', code: 'unknown_symbol', message: 'no such instrument' }));
  await flush();
  assert.deepEqual(refused, ['unknown_symbol']);
  assert.equal(socket().sent.length, 0, 'not asked again');
  conn.close();
});

test('the subscription budget paces a burst of changes below the server\'s rate', async (t) => {
  t.after(() => mock.timers.reset());
  const { conn, socket } = connection({ probeAfterMs: 60_000, subscribeRate: 10, subscribeBurst: 4 });
  socket().accept();
  let sent = 0;
  for (let n = 0; n < 20; n++) {
    conn.subscribe([`book.S${n}`]);
    await flush();
    sent += socket().sent.length;
    socket().answer(serve);
    await flush();
  }
  assert.equal(sent, 4, 'the burst, then it waits');
  mock.timers.tick(100);
  await flush();
  assert.deepEqual(socket().sent.map((r) => r.channels.length), [16], 'the rest together, 100 ms later');
  conn.close();
});

test('a book gap resubscribes once, however many deltas arrive before the snapshot', async (t) => {
  t.after(() => mock.timers.reset());
  const { conn, socket } = connection({ probeAfterMs: 60_000 });
  conn.subscribe(['book.A']);
  socket().accept();
  await flush();
  socket().answer(serve);
  await flush();
  const resyncs = [];
  conn.addEventListener('resync', (e) => resyncs.push(e.detail));
  conn.onMessage(frame(message(MSG.BOOK_SNAPSHOT, 1, snapshot([[100, 5]], [[101, 1]]))));
  assert.equal(conn.books.get('A').stale, false);
  // seq 3 after 1, then more deltas while the resubscribe is under way.
  conn.onMessage(frame(...[3, 4, 5].map((seq) => message(MSG.BOOK_DELTA, seq, delta(0, 99, seq)))));
  conn.onMessage(frame(message(MSG.BOOK_DELTA, 6, delta(0, 99, 1))));
  await flush();
  assert.deepEqual(resyncs, ['A']);
  assert.deepEqual(socket().sent.map((r) => [r.op, r.channels]), [['subscribe', ['book.A']]]);
  socket().answer(serve);
  await flush();
  conn.onMessage(frame(message(MSG.BOOK_SNAPSHOT, 6, snapshot([[98, 2]], [[101, 1]]), { flags: FLAG_RESYNC })));
  assert.equal(conn.books.get('A').stale, false);
  assert.deepEqual(conn.books.get('A').levels('bids', 5), [[98n, 2n]]);
  assert.equal(socket().sent.length, 0);
  conn.close();
});

test('a replace asks for the whole quantity, counted from the fills the view showed', () => {
  const spec = { qty_precision: 4 };
  const order = { id: 42, open_qty: '0.7000', filled_qty: '0.3000' };
  assert.deepEqual(replaceRequest(order, ' 0.5 ', spec), { op: 'order.replace', order_id: 42, total_qty: '0.8000' });
  assert.deepEqual(replaceRequest({ ...order, filled_qty: '0.0000' }, '2', spec), { op: 'order.replace', order_id: 42, total_qty: '2.0000' });
  // What is not a positive quantity goes as typed: the server names what is wrong with it.
  for (const typed of ['0', '-1', 'abc', '0.00001']) {
    assert.deepEqual(replaceRequest(order, typed, spec), { op: 'order.replace', order_id: 42, qty: typed });
  }
  assert.deepEqual(replaceRequest(order, '1', undefined), { op: 'order.replace', order_id: 42, qty: '1' });
});
