// Unit tests of the reference client (node's test runner): `node --test gateway/web/`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  Book, MSG, FLAG_RESYNC, decodeFrame, decodeTrade, formatFixed, parseFixed,
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
