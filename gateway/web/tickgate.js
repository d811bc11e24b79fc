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

/** The `order.replace` request for a new open quantity `qty` (text as typed) of order `o`
 * (its REST/WebSocket view) of an instrument `spec`: the order's whole quantity
 * (`total_qty`), counted from what the view `o` showed as filled, so that a fill landing
 * after it was shown counts against it instead of adding to the order (10 open,
 * 8 fill meanwhile, "5": 5 in all, the order ends, not 5 more). Text that is not a
 * positive quantity goes as typed, for the server to say what is wrong with it. */
export function replaceRequest(o, qty, spec) {
  const p = spec?.qty_precision;
  const [open, filled] = spec ? [parseFixed(qty, p), parseFixed(o.filled_qty, p)] : [null, null];
  if (open === null || filled === null || open <= 0n) return { op: 'order.replace', order_id: o.id, qty: qty.trim() };
  return { op: 'order.replace', order_id: o.id, total_qty: formatFixed(open + filled, p) };
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
 * The recent trades of one trades channel, newest first, always one contiguous run of
 * sequences (a trade's `seq` is its id, one more per trade). A snapshot (after a reconnect
 * or a resubscribe) is merged by `seq`: no trade twice, none out of order. A snapshot or a
 * trade that does not join what is kept (trades were missed) replaces it, so the tape
 * never hides a hole; `apply` then returns false (resubscribe: the snapshot refills what it
 * can). A `GAP` (trades the server could no longer send) empties it, counts them in
 * `missed` and asks for a resubscribe: the snapshot then refills what the server still
 * keeps, and clears `missed` when it reaches back to them. `version` grows with every
 * change (for painting).
 */
export class TradeTape {
  constructor(keep = 50) {
    this.keep = keep;
    this.trades = []; // newest first: { seq, ts, price, qty, takerSide } (BigInt values)
    this.seq = null; // the channel's last sequence seen (BigInt), null before a snapshot
    this.missed = 0n; // trades a GAP skipped that no snapshot has filled in since
    this.gapFrom = null; // the first of them
    this.version = 0;
  }

  /** Applies one message of the channel (`body` a DataView of its body); false on a gap. */
  apply(type, seq, ts, body) {
    if (type === MSG.TRADES_SNAPSHOT) {
      this.merge(decodeTradesSnapshot(body), seq);
      return true;
    }
    if (type === MSG.HEARTBEAT) return this.seq === null || seq <= this.seq;
    if (type === MSG.GAP) {
      const from = body.getBigUint64(0, true);
      this.missed += body.getBigUint64(8, true) - from + 1n;
      this.gapFrom ??= from;
      this.trades = [];
      this.seq = seq;
      this.version++;
      // Resubscribe: the server's snapshot refills what it still has of them.
      return false;
    }
    if (type !== MSG.TRADE) return true;
    if (this.seq !== null && seq <= this.seq) return true; // already kept (a snapshot had it)
    const trade = { ...decodeTrade(body), seq, ts };
    const follows = this.seq === null || seq === this.seq + 1n;
    if (follows) this.trades.unshift(trade);
    else this.trades = [trade];
    if (this.trades.length > this.keep) this.trades.length = this.keep;
    this.seq = seq;
    this.version++;
    return follows;
  }

  /** Merges `list` (trades oldest first, contiguous, as a TRADES_SNAPSHOT has them) valid
   * at the channel's sequence `seq`. */
  merge(list, seq) {
    const incoming = list.slice().reverse();
    const oldest = incoming.at(-1)?.seq ?? seq + 1n;
    const newest = this.trades[0]?.seq;
    // Kept trades join the snapshot only if they reach its oldest and are not newer than
    // it (a server that lost its history, e.g. without a journal, starts over at 1).
    const joins = newest !== undefined && newest + 1n >= oldest && newest <= seq;
    if (joins) {
      const older = this.trades.filter((t) => t.seq < oldest);
      this.trades = incoming.concat(older);
    } else {
      this.trades = incoming;
    }
    if (this.trades.length > this.keep) this.trades.length = this.keep;
    // A snapshot that reaches back to the first trade a GAP skipped filled the hole.
    if (this.gapFrom !== null && incoming.length && oldest <= this.gapFrom) {
      this.missed = 0n;
      this.gapFrom = null;
    }
    this.seq = seq;
    this.version++;
  }
}

/** `setTimeout` as a promise. */
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * One WebSocket to the server: binary market data plus JSON control messages.
 *
 * - Channels: `subscribe` / `unsubscribe` change the set of channels wanted; one loop
 *   brings the server's set to it (`sync`), a request at a time, so changes made in quick
 *   succession (a user scanning markets) go out together as at most one unsubscribe and a
 *   subscribe or two. It stays within its own share of the server's inbound rate
 *   (`subscribeRate` per second, `subscribeBurst`: half the server's default 20/s, burst
 *   40, leaving the rest for orders) and retries what the server refused as
 *   `rate_limited` or left unanswered. A channel refused for good (`unknown_symbol`,
 *   `limit_exceeded`, `unauthorized`...) is reported as a `refused` event and not asked
 *   for again until subscribed again.
 * - Reconnects: on every (re)connect, with backoff (0.5 s doubling to 10 s, reset only by
 *   the server's `welcome`, so a connection refused at once, as close 4401 is, does not
 *   reset it), it subscribes every channel wanted again and every book, tape and candles
 *   series waits, marked stale, for its fresh snapshot. Each close is reported as a
 *   `close` event with the code and reason (4401: the token no longer works; 4003: the
 *   session was ended), before the reconnect is scheduled: a listener may `close()`.
 * - Gaps: a book, tape or candles series that sees one resubscribes its channel once (the
 *   server answers with a snapshot, so no level survives from before).
 * - Liveness: the state is `connecting`, `open`, `stale` or `closed`. Each subscribed
 *   channel hears from the server at least every `heartbeat_interval_ms` (the welcome's),
 *   so silence means a stuck link: after `probeAfterMs` of it the connection sends a
 *   `ping`; no answer within `probeTimeoutMs`, or nothing at all for a heartbeat interval
 *   and `staleMarginMs`, makes it `stale` (and the server's own `market_data` stale
 *   notice does too); anything arriving makes it `open` again. Silent for two heartbeat
 *   intervals and the margin, it is dropped and reconnected.
 * - Requests: `request` answers every request, with `{op: "error"}` and code
 *   `not_connected` (not sent), `disconnected` (sent, the connection ended before the
 *   answer: it may have taken effect) or `timeout` (no answer within its time).
 */
export class Connection extends EventTarget {
  /** `url`: the WebSocket URL, or a function giving it (asked on every (re)connect, so a
   * renewed token is used). */
  constructor(url, {
    WebSocketImpl = globalThis.WebSocket, probeAfterMs = 2500, probeTimeoutMs = 2000,
    staleMarginMs = 1000, requestTimeoutMs = 10_000, subscribeRate = 10, subscribeBurst = 20,
    connectTimeoutMs = 10_000,
  } = {}) {
    super();
    this.url = url;
    this.WebSocketImpl = WebSocketImpl;
    this.wanted = new Set(); // channel names asked for, kept across reconnects
    this.active = new Set(); // channel names the server follows for this socket
    this.refresh = new Set(); // followed channels that need a fresh snapshot (a gap)
    this.refused = new Set(); // channels the server refused for good
    this.channels = new Map(); // name -> the server's description (channel_id, precisions)
    this.byId = new Map(); // channel id -> { name, kind, symbol }
    this.books = new Map(); // symbol -> Book
    this.tapes = new Map(); // symbol -> TradeTape
    this.candles = new Map(); // candles channel name -> CandleSeries
    this.candlesKept = 120; // candles each series keeps (and asks for on subscribe)
    this.tradesKept = 50; // trades each tape keeps
    this.bookDepth = 50; // levels per side of book snapshots
    this.pending = new Map(); // request id -> resolve
    this.nextId = 1;
    this.state = 'connecting';
    this.backoffMs = 500;
    this.welcome = null; // the server's welcome on this socket
    this.heartbeatMs = 5000; // from the welcome
    this.probeAfterMs = probeAfterMs;
    this.probeTimeoutMs = probeTimeoutMs;
    this.staleMarginMs = staleMarginMs;
    this.requestTimeoutMs = requestTimeoutMs;
    this.connectTimeoutMs = connectTimeoutMs;
    this.subscribeRate = subscribeRate;
    this.subscribeBurst = subscribeBurst;
    this.tokens = subscribeBurst;
    this.tokensAt = Date.now();
    this.retryMs = 1000; // after a subscription request refused as rate_limited or unanswered
    this.lastMessageAt = 0;
    this.probeSentAt = null;
    this.serverStale = false; // the server said its market data is stale
    this.syncing = null;
    this.closedByUser = false;
    /** Called with (kind, symbol, message) for every bbo and trades message. */
    this.onMarket = null;
    /** Engine timestamp of the newest market-data message (BigInt ns). */
    this.lastTs = 0n;
    this.open();
  }

  open() {
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    const ws = new this.WebSocketImpl(typeof this.url === 'function' ? this.url() : this.url);
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    this.welcome = null;
    this.serverStale = false;
    this.setState('connecting');
    this.connectTimer = setTimeout(() => {
      if (ws === this.ws && ws.readyState === 0) this.drop('no answer to the connection request');
    }, this.connectTimeoutMs);
    ws.onopen = () => {
      clearTimeout(this.connectTimer);
      this.lastMessageAt = Date.now();
      this.probeSentAt = null;
      this.active.clear();
      this.refresh.clear();
      this.channels.clear();
      this.byId.clear();
      this.markStale();
      clearInterval(this.watchdog);
      this.watchdog = setInterval(() => this.checkAlive(), 250);
      this.sync();
    };
    ws.onmessage = (event) => this.onMessage(event.data);
    ws.onclose = (event) => this.closed(ws, event.code, event.reason);
  }

  /** Every book, tape and candles series waits for a fresh snapshot. */
  markStale() {
    for (const book of this.books.values()) book.stale = true;
    for (const series of this.candles.values()) series.stale = true;
  }

  /** The end of socket `ws` (its close event, or `drop`): report it, then reconnect. */
  closed(ws, code, reason) {
    if (ws !== this.ws || ws.closedSeen) return;
    ws.closedSeen = true;
    ws.onopen = ws.onmessage = ws.onclose = null;
    clearTimeout(this.connectTimer);
    clearInterval(this.watchdog);
    this.active.clear();
    this.markStale();
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const resolve of pending) {
      resolve({ op: 'error', code: 'disconnected', message: 'the connection ended before the answer' });
    }
    this.setState('closed');
    this.dispatchEvent(new CustomEvent('close', { detail: { code, reason } }));
    if (this.closedByUser) return;
    this.reconnectTimer = setTimeout(() => this.open(), this.backoffMs);
    this.backoffMs = Math.min(this.backoffMs * 2, 10_000);
  }

  /** Gives up on the current socket (it stopped answering) and reconnects. */
  drop(reason) {
    const ws = this.ws;
    try { ws.close(); } catch { /* already closing */ }
    this.closed(ws, 1006, reason);
  }

  /** Reconnects now instead of at the end of the backoff (the network came back). */
  reconnectNow() {
    if (this.state !== 'closed' || this.closedByUser) return;
    this.backoffMs = 500;
    this.open();
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: state }));
  }

  close() {
    this.closedByUser = true;
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.connectTimer);
    clearInterval(this.watchdog);
    this.ws?.close();
  }

  /** The watchdog: probes a silent connection, marks it stale, drops a dead one. */
  checkAlive() {
    if (this.ws?.readyState !== 1) return;
    const now = Date.now();
    const silentMs = now - this.lastMessageAt;
    if (silentMs >= 2 * this.heartbeatMs + this.staleMarginMs) {
      this.drop(`nothing from the server for ${silentMs} ms`);
      return;
    }
    if (this.state !== 'open' && this.state !== 'stale') return;
    if (silentMs >= this.probeAfterMs && this.probeSentAt === null) {
      this.probeSentAt = now;
      this.request({ op: 'ping' }, { timeoutMs: 2 * this.heartbeatMs });
    }
    const late = this.probeSentAt !== null && now - this.probeSentAt >= this.probeTimeoutMs;
    if (late || silentMs >= this.heartbeatMs + this.staleMarginMs) this.setState('stale');
  }

  /** Sends a control request and resolves with its answer (matched by id), or with an
   * error `not_connected`, `disconnected` or `timeout` (see the class). */
  request(body, { timeoutMs = this.requestTimeoutMs } = {}) {
    const id = this.nextId++;
    return new Promise((resolve) => {
      if (this.ws?.readyState !== 1) {
        resolve({ op: 'error', id, code: 'not_connected', message: 'not connected to the server' });
        return;
      }
      const timer = setTimeout(() => {
        this.pending.delete(id);
        resolve({ op: 'error', id, code: 'timeout', message: `no answer within ${timeoutMs / 1000} s` });
      }, timeoutMs);
      this.pending.set(id, (answer) => { clearTimeout(timer); resolve(answer); });
      this.ws.send(JSON.stringify({ ...body, id }));
    });
  }

  /** Follows `names` from now on, across reconnects; resolves once the server follows
   * them (or refused them). */
  subscribe(names) {
    for (const name of names) {
      this.wanted.add(name);
      this.refused.delete(name);
      const [kind, symbol] = name.split('.');
      let fresh = false;
      if (kind === 'book' && !this.books.has(symbol)) { this.books.set(symbol, new Book()); fresh = true; }
      if (kind === 'trades' && !this.tapes.has(symbol)) { this.tapes.set(symbol, new TradeTape(this.tradesKept)); fresh = true; }
      if (kind === 'candles' && !this.candles.has(name)) { this.candles.set(name, new CandleSeries(this.candlesKept)); fresh = true; }
      // Still followed (an unsubscribe not sent yet): only a new snapshot is needed.
      if (fresh && this.active.has(name)) this.refresh.add(name);
    }
    return this.sync();
  }

  /** Stops following `names`. */
  unsubscribe(names) {
    for (const name of names) {
      this.wanted.delete(name);
      this.refresh.delete(name);
      const [kind, symbol] = name.split('.');
      if (kind === 'book') this.books.delete(symbol);
      if (kind === 'trades') this.tapes.delete(symbol);
      this.candles.delete(name);
    }
    return this.sync();
  }

  /** A followed channel saw a gap: resubscribe it once for a fresh snapshot. */
  resync(channel) {
    if (this.refresh.has(channel.name) || !this.wanted.has(channel.name)) return;
    this.refresh.add(channel.name);
    this.dispatchEvent(new CustomEvent('resync', { detail: channel.symbol }));
    this.sync();
  }

  /** Brings the server's channels to the wanted set; resolves when they match (or the
   * socket closed: the next one starts over). One loop at a time. */
  sync() {
    this.syncing ??= this.syncLoop();
    return this.syncing;
  }

  async syncLoop() {
    try {
      await null; // changes made in the same turn go out together
      for (;;) {
        const ws = this.ws;
        if (ws?.readyState !== 1) return;
        const request = this.nextSubscription();
        if (!request) return;
        const waitMs = this.takeToken();
        if (waitMs > 0) { await sleep(waitMs); continue; } // then ask again: things change
        const answer = await this.request(request);
        if (ws !== this.ws) continue;
        if (answer.code === 'rate_limited' || answer.code === 'timeout') {
          this.tokens = 0;
          await sleep(this.retryMs);
        } else if (answer.code === 'disconnected' || answer.code === 'not_connected') {
          return;
        } else {
          this.settle(request, answer);
        }
      }
    } finally {
      this.syncing = null; // before the promise settles: a sync() from now on starts anew
    }
  }

  /** The next request that brings the server's channels closer to the wanted ones: the
   * private `orders` channel alone, then what is no longer wanted, then market data (book
   * depth `bookDepth`), then candles (with their series' depth). */
  nextSubscription() {
    const missing = [...this.wanted].filter((n) => (!this.active.has(n) || this.refresh.has(n)) && !this.refused.has(n));
    if (missing.includes('orders')) return { op: 'subscribe', channels: ['orders'] };
    const gone = [...this.active].filter((n) => !this.wanted.has(n));
    if (gone.length) return { op: 'unsubscribe', channels: gone.slice(0, 64) };
    const market = missing.filter((n) => n !== 'orders' && !n.startsWith('candles.')).slice(0, 64);
    if (market.length) return { op: 'subscribe', channels: market, depth: this.bookDepth };
    const candles = missing.filter((n) => n.startsWith('candles.')).slice(0, 64);
    const depth = Math.min(1000, Math.max(1, ...candles.map((n) => this.candles.get(n)?.keep ?? 1)));
    if (candles.length) return { op: 'subscribe', channels: candles, depth };
    return null;
  }

  /** Takes one request from the subscription budget: 0, or the milliseconds to wait. */
  takeToken() {
    const now = Date.now();
    this.tokens = Math.min(this.subscribeBurst, this.tokens + ((now - this.tokensAt) * this.subscribeRate) / 1000);
    this.tokensAt = now;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return 0;
    }
    return Math.ceil(((1 - this.tokens) * 1000) / this.subscribeRate);
  }

  /** Records the server's answer to a subscription request. */
  settle(request, answer) {
    if (answer.op === 'subscribed') {
      for (const name of request.channels) {
        this.active.add(name);
        this.refresh.delete(name);
      }
      for (const c of answer.channels ?? []) {
        if (typeof c !== 'object' || c.channel_id === undefined) continue;
        this.channels.set(c.channel, c);
        const [kind, symbol] = c.channel.split('.');
        this.byId.set(c.channel_id, { name: c.channel, kind, symbol });
      }
      return;
    }
    if (answer.op === 'unsubscribed' || request.op === 'unsubscribe') {
      // Refused (not_subscribed): the server does not follow them either.
      for (const name of request.channels) {
        this.active.delete(name);
        const id = this.channels.get(name)?.channel_id;
        this.channels.delete(name);
        if (id !== undefined && this.byId.get(id)?.name === name) this.byId.delete(id);
      }
      if (answer.op === 'unsubscribed') return;
    } else {
      for (const name of request.channels) {
        this.refused.add(name);
        this.refresh.delete(name);
      }
    }
    this.dispatchEvent(new CustomEvent('refused', { detail: { request, answer } }));
  }

  onMessage(data) {
    this.lastMessageAt = Date.now();
    this.probeSentAt = null;
    if (this.state === 'stale' && !this.serverStale) this.setState('open');
    this.framesReceived = (this.framesReceived ?? 0) + 1;
    if (typeof data === 'string') {
      const msg = JSON.parse(data);
      const resolve = msg.id !== undefined && msg.id !== null ? this.pending.get(msg.id) : undefined;
      if (resolve) {
        this.pending.delete(msg.id);
        resolve(msg);
        return;
      }
      if (msg.op === 'welcome') {
        this.welcome = msg;
        if (msg.heartbeat_interval_ms > 0) this.heartbeatMs = msg.heartbeat_interval_ms;
        this.backoffMs = 500;
        this.setState('open');
      } else if (msg.op === 'market_data') {
        this.serverStale = msg.state === 'stale';
        if (this.welcome) this.setState(this.serverStale ? 'stale' : 'open');
      }
      this.dispatchEvent(new CustomEvent('control', { detail: msg }));
      return;
    }
    // One pass over the frame with one DataView: book messages go straight into their
    // book; only bbo and trades messages become objects (for the tape and `onMarket`).
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
          if (book && !book.applyAt(type, seq, ts, view, body)) this.resync(channel);
        } else if (channel.kind === 'candles') {
          const series = this.candles.get(channel.name);
          if (series && !series.apply(type, seq, new DataView(data, body, bodyLen))) this.resync(channel);
          if (series) this.dispatchEvent(new CustomEvent('candles', { detail: channel.name }));
        } else {
          const msg = { type, flags: view.getUint8(at + 1), seq, ts, body: new DataView(data, body, bodyLen) };
          const tape = channel.kind === 'trades' ? this.tapes.get(channel.symbol) : undefined;
          if (tape && !tape.apply(type, seq, ts, msg.body)) this.resync(channel);
          if (this.onMarket && (channel.kind !== 'trades' || tape)) this.onMarket(channel.kind, channel.symbol, msg);
        }
      }
      at = body + bodyLen;
    }
    this.dispatchEvent(new Event('frame'));
  }
}
