// tickgate.js: the reference browser client of the tickgate protocol (v1, docs/PROTOCOL.md).
//
// Decodes binary market-data frames with DataView and BigInt (prices and quantities are
// raw fixed-point integers; exact, never floats), keeps L2 books from snapshot + deltas
// with sequence checks, and runs one WebSocket with reconnect, resubscribe and resync.
// No dependencies; works in browsers and in node (for its tests).

export const MSG = Object.freeze({
  BOOK_SNAPSHOT: 1,
  BOOK_DELTA: 2,
  BBO: 3,
  TRADE: 4,
  TRADES_SNAPSHOT: 5,
  GAP: 6,
  HEARTBEAT: 7,
  CANDLE: 8,
  CANDLES_SNAPSHOT: 9,
});
export const FLAG_RESYNC = 1;
export const FLAG_SNAPSHOT = 2;
const HEADER_BYTES = 24;

/** Channel kinds in a channel id (`instrument_index * 4 + kind`; candles channels are
 * `65536 + instrument_index * 4 + interval`). */
export const KIND = Object.freeze({ BOOK: 1, BBO: 2, TRADES: 3 });
const CANDLE_BYTES = 56;

/** The messages of one binary frame payload (an ArrayBuffer); throws on a truncated one. */
export function* decodeFrame(buffer) {
  const view = new DataView(buffer);
  let at = 0;
  while (at < view.byteLength) {
    if (at + HEADER_BYTES > view.byteLength) throw new Error(`truncated header at ${at}`);
    const bodyLen = view.getUint16(at + 2, true);
    const body = at + HEADER_BYTES;
    if (body + bodyLen > view.byteLength) throw new Error(`truncated body at ${at}`);
    yield {
      type: view.getUint8(at),
      flags: view.getUint8(at + 1),
      channel: view.getUint32(at + 4, true),
      seq: view.getBigUint64(at + 8, true),
      ts: view.getBigUint64(at + 16, true),
      body: new DataView(buffer, body, bodyLen),
    };
    at = body + bodyLen;
  }
}

/** `[price, qty]` levels (BigInt raw values) of a BOOK_SNAPSHOT body: bids, asks. */
export function decodeBookSnapshot(body) {
  const bids = body.getUint16(0, true);
  const asks = body.getUint16(2, true);
  if (body.byteLength !== 8 + 16 * (bids + asks)) throw new Error('book snapshot length');
  const level = (n) => [body.getBigInt64(8 + 16 * n, true), body.getBigInt64(16 + 16 * n, true)];
  const out = { bids: [], asks: [] };
  for (let n = 0; n < bids; n++) out.bids.push(level(n));
  for (let n = bids; n < bids + asks; n++) out.asks.push(level(n));
  return out;
}

/** A BOOK_DELTA body: side (0 bid, 1 ask), price, qty (0: the level is gone). */
export function decodeBookDelta(body) {
  return { side: body.getUint8(0), price: body.getBigInt64(8, true), qty: body.getBigInt64(16, true) };
}

/** A TRADE body. */
export function decodeTrade(body) {
  return {
    price: body.getBigInt64(0, true),
    qty: body.getBigInt64(8, true),
    takerSide: body.getUint8(16) === 0 ? 'buy' : 'sell',
  };
}

/** A BBO body. */
export function decodeBbo(body) {
  return {
    bidPrice: body.getBigInt64(0, true),
    bidQty: body.getBigInt64(8, true),
    askPrice: body.getBigInt64(16, true),
    askQty: body.getBigInt64(24, true),
  };
}

/** The trades of a TRADES_SNAPSHOT body, oldest first. */
export function decodeTradesSnapshot(body) {
  const count = body.getUint32(0, true);
  const out = [];
  for (let n = 0; n < count; n++) {
    const at = 8 + 40 * n;
    out.push({
      seq: body.getBigUint64(at, true),
      ts: body.getBigUint64(at + 8, true),
      price: body.getBigInt64(at + 16, true),
      qty: body.getBigInt64(at + 24, true),
      takerSide: body.getUint8(at + 32) === 0 ? 'buy' : 'sell',
    });
  }
  return out;
}

/** The candles of a CANDLE (one) or CANDLES_SNAPSHOT body, oldest first: start (ns),
 * open, high, low, close, volume (raw fixed-point) and trades, all BigInt. */
export function decodeCandles(type, body) {
  const first = type === MSG.CANDLES_SNAPSHOT ? 8 : 0;
  const count = type === MSG.CANDLES_SNAPSHOT ? body.getUint32(0, true) : 1;
  if (body.byteLength !== first + CANDLE_BYTES * count) throw new Error('candles length');
  const out = [];
  for (let n = 0; n < count; n++) {
    const at = first + CANDLE_BYTES * n;
    const i64 = (k) => body.getBigInt64(at + 8 * k, true);
    out.push({
      start: body.getBigUint64(at, true), open: i64(1), high: i64(2), low: i64(3), close: i64(4),
      volume: i64(5), trades: body.getBigUint64(at + 48, true),
    });
  }
  return out;
}

/** A candles channel kept from its snapshot and updates: each update is a whole candle,
 * replacing the one with the same start or opening the next. */
export class CandleSeries {
  constructor(keep = 1000) {
    this.keep = keep;
    this.candles = [];
    this.seq = null;
    this.stale = true;
  }

  /** Applies one message; `false` on a sequence gap (resubscribe for a fresh snapshot). */
  apply(type, seq, body) {
    if (type === MSG.HEARTBEAT) return this.seq !== null && seq >= this.seq;
    if (type === MSG.CANDLES_SNAPSHOT) {
      this.candles = decodeCandles(type, body);
      this.seq = seq;
      this.stale = false;
      return true;
    }
    if (type !== MSG.CANDLE) return true;
    if (this.seq === null || seq !== this.seq + 1n) {
      this.stale = true;
      return false;
    }
    this.seq = seq;
    for (const c of decodeCandles(type, body)) {
      const last = this.candles.at(-1);
      if (last && last.start === c.start) this.candles[this.candles.length - 1] = c;
      else if (!last || c.start > last.start) this.candles.push(c);
    }
    if (this.candles.length > this.keep) this.candles.splice(0, this.candles.length - this.keep);
    return true;
  }
}

/** `raw` (BigInt) as a decimal string with `precision` decimals ("65000.12"). */
export function formatFixed(raw, precision) {
  const negative = raw < 0n;
  const digits = (negative ? -raw : raw).toString().padStart(precision + 1, '0');
  const int = digits.slice(0, digits.length - precision);
  const frac = precision > 0 ? '.' + digits.slice(digits.length - precision) : '';
  return (negative ? '-' : '') + int + frac;
}

/** A decimal string ("65000.12", ".5", "1.") as a raw BigInt at `precision`; null if invalid. */
export function parseFixed(text, precision) {
  const m = /^(-?)([0-9]*)(?:\.([0-9]*))?$/.exec(String(text).trim());
  if (!m || (m[2] === '' && (m[3] ?? '') === '')) return null;
  const frac = m[3] ?? '';
  if (frac.length > precision) return null;
  const raw = BigInt((m[2] || '0') + frac.padEnd(precision, '0'));
  return m[1] ? -raw : raw;
}

/**
 * An L2 book kept from a snapshot and contiguous deltas. `apply` returns false when a
 * message cannot be applied (a sequence gap): the caller must resubscribe, and the book
 * says `stale` until a fresh snapshot arrives.
 */
export class Book {
  constructor() {
    this.bids = new Map(); // price (BigInt) -> qty (BigInt)
    this.asks = new Map();
    this.seq = null; // BigInt once a snapshot arrived
    this.stale = true;
    this.ts = 0n;
  }

  /** Applies one decoded message of the book channel. */
  apply(msg) {
    return this.applyAt(msg.type, msg.seq, msg.ts, msg.body, 0);
  }

  /**
   * Applies the message of `type` whose body starts at `at` in `view`: the allocation-free
   * path the connection takes for every delta (no message object, no DataView per
   * message).
   */
  applyAt(type, seq, ts, view, at) {
    if (type === MSG.BOOK_SNAPSHOT) {
      const bids = view.getUint16(at, true);
      const asks = view.getUint16(at + 2, true);
      const level = (n) => [view.getBigInt64(at + 8 + 16 * n, true), view.getBigInt64(at + 16 + 16 * n, true)];
      this.bids = new Map();
      this.asks = new Map();
      for (let n = 0; n < bids; n++) this.bids.set(...level(n));
      for (let n = bids; n < bids + asks; n++) this.asks.set(...level(n));
      this.seq = seq;
      this.ts = ts;
      this.stale = false;
      return true;
    }
    if (type === MSG.HEARTBEAT) return this.seq !== null && seq >= this.seq;
    if (type !== MSG.BOOK_DELTA) return true;
    if (this.stale || this.seq === null || seq !== this.seq + 1n) {
      this.stale = true;
      return false;
    }
    const side = view.getUint8(at) === 0 ? this.bids : this.asks;
    const price = view.getBigInt64(at + 8, true);
    const qty = view.getBigInt64(at + 16, true);
    if (qty === 0n) side.delete(price);
    else side.set(price, qty);
    this.seq = seq;
    this.ts = ts;
    return true;
  }

  /** The best `n` levels of a side ('bids' best = highest, 'asks' best = lowest). */
  levels(side, n) {
    const entries = [...this[side].entries()];
    entries.sort((a, b) => (side === 'bids' ? (b[0] > a[0] ? 1 : -1) : a[0] > b[0] ? 1 : -1));
    return entries.slice(0, n);
  }
}

/**
 * One WebSocket to the server: binary market data plus JSON control messages. Keeps the
 * set of channels asked for; on every (re)connect, with backoff (0.5 s doubling to 10 s),
 * it subscribes them all again and every book waits, marked stale, for its fresh snapshot.
 * A book that sees a gap resubscribes its channel (the server answers with a snapshot).
 */
export class Connection extends EventTarget {
  /** `url`: the WebSocket URL, or a function giving it (asked on every (re)connect, so a
   * renewed token is used). */
  constructor(url, { WebSocketImpl = globalThis.WebSocket } = {}) {
    super();
    this.url = url;
    this.WebSocketImpl = WebSocketImpl;
    this.wanted = new Set(); // channel names asked for, kept across reconnects
    this.channels = new Map(); // name -> the server's description (channel_id, precisions)
    this.byId = new Map(); // channel id -> name
    this.books = new Map(); // symbol -> Book
    this.candles = new Map(); // candles channel name -> CandleSeries
    this.candlesKept = 120; // candles each series keeps (and asks for on subscribe)
    this.pending = new Map(); // request id -> resolve
    this.nextId = 1;
    this.state = 'connecting';
    this.backoffMs = 500;
    this.lastMessageAt = 0;
    this.closedByUser = false;
    /** Called with (kind, symbol, message) for every bbo and trades message. */
    this.onMarket = null;
    /** Engine timestamp of the newest market-data message (BigInt ns). */
    this.lastTs = 0n;
    this.open();
  }

  open() {
    const ws = new this.WebSocketImpl(typeof this.url === 'function' ? this.url() : this.url);
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    this.setState('connecting');
    ws.onopen = () => {
      this.backoffMs = 500;
      this.channels.clear();
      this.byId.clear();
      for (const book of this.books.values()) book.stale = true;
      for (const series of this.candles.values()) series.stale = true;
      this.send([...this.wanted]);
      this.setState('open');
    };
    ws.onmessage = (event) => this.onMessage(event.data);
    ws.onclose = () => {
      this.setState('closed');
      for (const book of this.books.values()) book.stale = true;
      for (const series of this.candles.values()) series.stale = true;
      for (const resolve of this.pending.values()) resolve({ op: 'error', code: 'disconnected' });
      this.pending.clear();
      if (this.closedByUser) return;
      setTimeout(() => this.open(), this.backoffMs);
      this.backoffMs = Math.min(this.backoffMs * 2, 10_000);
    };
  }

  setState(state) {
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: state }));
  }

  close() {
    this.closedByUser = true;
    this.ws?.close();
  }

  /** Sends a control request and resolves with its answer (matched by id). */
  request(body) {
    const id = this.nextId++;
    return new Promise((resolve) => {
      if (this.ws?.readyState !== 1) return resolve({ op: 'error', code: 'disconnected' });
      this.pending.set(id, resolve);
      this.ws.send(JSON.stringify({ ...body, id }));
    });
  }

  /** Follows `names` from now on, across reconnects. */
  subscribe(names) {
    for (const name of names) {
      this.wanted.add(name);
      const [kind, symbol] = name.split('.');
      if (kind === 'book' && !this.books.has(symbol)) this.books.set(symbol, new Book());
      if (kind === 'candles' && !this.candles.has(name)) this.candles.set(name, new CandleSeries(this.candlesKept));
    }
    return this.ws?.readyState === 1 ? this.send(names) : Promise.resolve(null);
  }

  /** Stops following `names`. */
  unsubscribe(names) {
    for (const name of names) {
      this.wanted.delete(name);
      const [kind, symbol] = name.split('.');
      if (kind === 'book') this.books.delete(symbol);
      this.candles.delete(name);
    }
    return this.request({ op: 'unsubscribe', channels: names });
  }

  /** Subscribe requests for `names` (the private `orders` channel goes alone; candles
   * channels together, with their series' depth: as many candles as it keeps). */
  async send(names) {
    const candles = names.filter((n) => n.startsWith('candles.'));
    const market = names.filter((n) => n !== 'orders' && !n.startsWith('candles.'));
    let answer = null;
    if (names.includes('orders')) answer = await this.request({ op: 'subscribe', channels: ['orders'] });
    const depth = Math.max(1, ...candles.map((n) => this.candles.get(n)?.keep ?? 1));
    for (const [channels, d] of [[market, 50], [candles, Math.min(depth, 1000)]]) {
      if (!channels.length) continue;
      answer = await this.request({ op: 'subscribe', channels, depth: d });
      if (answer.op === 'subscribed') {
        for (const c of answer.channels) {
          this.channels.set(c.channel, c);
          const [kind, symbol] = c.channel.split('.');
          this.byId.set(c.channel_id, { name: c.channel, kind, symbol });
        }
      }
    }
    return answer;
  }

  onMessage(data) {
    this.lastMessageAt = Date.now();
    this.framesReceived = (this.framesReceived ?? 0) + 1;
    if (typeof data === 'string') {
      const msg = JSON.parse(data);
      const resolve = msg.id !== undefined ? this.pending.get(msg.id) : undefined;
      if (resolve) {
        this.pending.delete(msg.id);
        resolve(msg);
      } else {
        this.dispatchEvent(new CustomEvent('control', { detail: msg }));
      }
      return;
    }
    // One pass over the frame with one DataView: book messages go straight into their
    // book; only bbo and trades messages become objects (for `onMarket`).
    const view = new DataView(data);
    for (let at = 0; at + 24 <= view.byteLength;) {
      const bodyLen = view.getUint16(at + 2, true);
      const body = at + 24;
      if (body + bodyLen > view.byteLength) throw new Error(`truncated body at ${at}`);
      const type = view.getUint8(at);
      const channel = this.byId.get(view.getUint32(at + 4, true));
      if (channel) {
        const seq = view.getBigUint64(at + 8, true);
        const ts = view.getBigUint64(at + 16, true);
        if (type !== MSG.HEARTBEAT) this.lastTs = ts;
        if (channel.kind === 'book') {
          const book = this.books.get(channel.symbol);
          if (book && !book.applyAt(type, seq, ts, view, body)) {
            // A gap: resubscribing sends a fresh snapshot, with no ghost levels.
            this.dispatchEvent(new CustomEvent('resync', { detail: channel.symbol }));
            this.send([channel.name]).catch(() => {});
          }
        } else if (channel.kind === 'candles') {
          const series = this.candles.get(channel.name);
          if (series && !series.apply(type, seq, new DataView(data, body, bodyLen))) {
            this.send([channel.name]).catch(() => {});
          }
          if (series) this.dispatchEvent(new CustomEvent('candles', { detail: channel.name }));
        } else if (this.onMarket) {
          const msg = { type, flags: view.getUint8(at + 1), seq, ts, body: new DataView(data, body, bodyLen) };
          this.onMarket(channel.kind, channel.symbol, msg);
        }
      }
      at = body + bodyLen;
    }
    this.dispatchEvent(new Event('frame'));
  }
}
