// Unit tests of the reference client (node's test runner): `node --test gateway/web/`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  Book, CandleSeries, MSG, FLAG_RESYNC, decodeFrame, decodeTrade, formatFixed, parseFixed,
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
