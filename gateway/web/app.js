// The web terminal: one page on the server's own origin, built on the reference client.
// Market data over one binary WebSocket, account data over REST, alerts over SSE. Paints
// at most once per animation frame, however fast the feed.
import { Connection, MSG, decodeBbo, decodeTrade, decodeTradesSnapshot, formatFixed, parseFixed } from '/tickgate.js';

const $ = (id) => document.getElementById(id);
const store = window.sessionStorage;
const state = {
  token: store.getItem('tickgate.token'),
  user: store.getItem('tickgate.user'),
  symbol: store.getItem('tickgate.symbol') || 'BTC-USD',
  instruments: [],
  bySymbol: new Map(),
  last: new Map(), // symbol -> { price, first } (raw BigInt)
  trades: [],
  lastTs: 0n,
  dirty: true,
  interval: store.getItem('tickgate.interval') || '1m',
  candles: [], // the newest of the candles channel followed (candles.<SYM>.<interval>)
  chartDirty: true,
};
window.tickgate = { state };

const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  e.append(...children.map((c) => (c instanceof Node ? c : document.createTextNode(String(c)))));
  return e;
};
const td = (text, cls = '') => el('td', { class: cls }, text);
const fill = (table, rows) => table.replaceChildren(...rows);

async function api(method, path, body) {
  const headers = { 'content-type': 'application/json' };
  if (state.token) headers.authorization = `Bearer ${state.token}`;
  const r = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined });
  const json = r.status === 204 ? {} : await r.json().catch(() => ({}));
  if (r.status === 401 && state.token && !path.endsWith('/login')) signOut();
  return { status: r.status, json };
}

function toast(text) {
  const t = el('div', { class: 'toast' }, text);
  $('toasts').append(t);
  setTimeout(() => t.remove(), 6000);
}

// ---- market data -------------------------------------------------------------------

/** Panels paint every 100 ms; market data twice as often keeps a paint at most 50 ms old. */
const WRITE_INTERVAL_MS = 50;

let conn;
function connect() {
  conn?.close();
  const proto = location.protocol === 'https:' ? 'wss' : 'ws';
  // Asked on every reconnect: the current (renewed) token. Market data at most every
  // WRITE_INTERVAL_MS (all of it, batched: a browser pays per WebSocket frame).
  const url = () => `${proto}://${location.host}/ws?interval_ms=${WRITE_INTERVAL_MS}${state.token ? `&token=${encodeURIComponent(state.token)}` : ''}`;
  const c = new Connection(url);
  conn = c;
  window.tickgate.conn = c;
  // A connection replaced (log in, log out) still reports its close: not ours any more.
  c.addEventListener('state', (e) => {
    if (c !== conn) return;
    $('conn').textContent = e.detail;
    $('conn').className = `badge ${e.detail}`;
    state.dirty = true;
  });
  const channels = state.instruments.map((i) => `bbo.${i.symbol}`);
  channels.push(`book.${state.symbol}`, `trades.${state.symbol}`, `candles.${state.symbol}.${state.interval}`);
  if (state.token) channels.push('orders');
  conn.subscribe(channels);
  conn.onMarket = onMarket;
  conn.addEventListener('candles', (e) => { if (c === conn) onCandles(e.detail); });
  conn.addEventListener('frame', () => { state.dirty = true; state.lastTs = conn.lastTs; });
  conn.addEventListener('resync', () => { state.dirty = true; });
  conn.addEventListener('control', (e) => {
    if (e.detail.op === 'execution') refreshAccount();
  });
}

async function follow(symbol) {
  const old = state.symbol;
  if (old === symbol) return;
  state.symbol = symbol;
  store.setItem('tickgate.symbol', symbol);
  state.trades = [];
  state.dirty = true;
  const candles = followCandles();
  await conn.unsubscribe([`book.${old}`, `trades.${old}`]);
  await conn.subscribe([`book.${symbol}`, `trades.${symbol}`]);
  await candles;
}

function onMarket(kind, symbol, msg) {
  state.marketsVersion = (state.marketsVersion ?? 0) + 1;
  if (kind === 'bbo' && msg.type === MSG.BBO) {
    const b = decodeBbo(msg.body);
    const entry = state.last.get(symbol) ?? {};
    entry.at = msg.ts;
    entry.bid = b.bidPrice;
    entry.ask = b.askPrice;
    state.last.set(symbol, entry);
  } else if (kind === 'trades' && symbol === state.symbol) {
    const trades = msg.type === MSG.TRADES_SNAPSHOT ? decodeTradesSnapshot(msg.body)
      : msg.type === MSG.TRADE ? [{ ...decodeTrade(msg.body), seq: msg.seq, ts: msg.ts }] : [];
    for (const t of trades) {
      state.trades.unshift(t);
      const entry = state.last.get(symbol) ?? {};
      entry.price = t.price;
      entry.first ??= t.price;
      state.last.set(symbol, entry);
    }
    state.trades.length = Math.min(state.trades.length, 50);
  }
  state.dirty = true;
}

// ---- candles ----------------------------------------------------------------------

/** Candles shown (the chart's width). */
const CANDLES_SHOWN = 120;

/** Follows the candles channel of the current symbol and interval (and no other). */
async function followCandles() {
  const name = `candles.${state.symbol}.${state.interval}`;
  const old = [...conn.candles.keys()].filter((n) => n !== name);
  state.candles = conn.candles.get(name)?.candles.slice(-CANDLES_SHOWN) ?? [];
  state.chartDirty = true;
  if (old.length) await conn.unsubscribe(old);
  if (!conn.candles.has(name)) await conn.subscribe([name]);
}

function onCandles(name) {
  if (name !== `candles.${state.symbol}.${state.interval}`) return;
  state.candles = conn.candles.get(name).candles.slice(-CANDLES_SHOWN);
  state.chartDirty = true;
}

/** Cumulative depth: bids rising to the left of the middle, asks to the right. */
function drawDepth(bids, asks) {
  const canvas = $('depth');
  if (canvas.width !== canvas.clientWidth) canvas.width = canvas.clientWidth;
  const ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const cumulative = (levels) => { let sum = 0n; return levels.map(([, q]) => (sum += q)); };
  const [b, a] = [cumulative(bids), cumulative(asks)];
  const max = Number([...b, ...a].reduce((m, q) => (q > m ? q : m), 1n));
  const half = canvas.width / 2;
  const side = (sums, color, dir) => {
    ctx.fillStyle = color;
    sums.forEach((q, n) => {
      const w = half / 20;
      const h = (canvas.height - 2) * Number(q) / max;
      ctx.fillRect(half + dir * (n + 1) * w - (dir < 0 ? 0 : w), canvas.height - h, w - 1, h);
    });
  };
  side(b, '#2fbf7188', -1);
  side(a, '#e5534b88', 1);
}

function drawChart() {
  const canvas = $('chart');
  const width = canvas.clientWidth;
  if (canvas.width !== width) canvas.width = width;
  const ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const candles = state.candles;
  $('chart-symbol').textContent = state.symbol;
  $('chart-info').textContent = `${candles.length} candles`;
  if (!candles.length) return;
  let hi = candles[0].high, lo = candles[0].low;
  for (const c of candles) { if (c.high > hi) hi = c.high; if (c.low < lo) lo = c.low; }
  const span = Number(hi - lo) || 1;
  const y = (p) => 8 + (canvas.height - 16) * (1 - Number(p - lo) / span);
  const step = canvas.width / CANDLES_SHOWN;
  candles.forEach((c, n) => {
    const x = (CANDLES_SHOWN - candles.length + n) * step + step / 2;
    ctx.strokeStyle = ctx.fillStyle = c.close >= c.open ? '#2fbf71' : '#e5534b';
    ctx.beginPath(); ctx.moveTo(x, y(c.high)); ctx.lineTo(x, y(c.low)); ctx.stroke();
    const top = y(c.open > c.close ? c.open : c.close), bottom = y(c.open > c.close ? c.close : c.open);
    ctx.fillRect(x - step * 0.35, top, step * 0.7, Math.max(1, bottom - top));
  });
}

// ---- painting ----------------------------------------------------------------------

/** Panels repaint at most this often: a person reads ten updates a second, not sixty, and
 * each repaint costs the browser layout and raster (measured: most of the page's time). */
const PAINT_INTERVAL_MS = 100;
let lastPaint = 0;

function paint(now) {
  requestAnimationFrame(paint);
  state.frames = (state.frames ?? 0) + 1;
  if (now - lastPaint < PAINT_INTERVAL_MS) return;
  lastPaint = now;
  const book = conn?.books.get(state.symbol);
  const age = book && book.ts ? Date.now() - Number(book.ts / 1_000_000n) : null;
  $('book-age').textContent = age === null ? '-' : `${(age / 1000).toFixed(1)} s`;
  if (state.lastTs) $('latency').textContent = `latency ${Math.max(0, Date.now() - Number(state.lastTs / 1_000_000n))} ms`;
  if (state.chartDirty) { state.chartDirty = false; drawChart(); }
  if (!state.dirty) return;
  state.dirty = false;
  state.paints = (state.paints ?? 0) + 1;
  const spec = state.bySymbol.get(state.symbol);
  if (!spec) return;
  const [pp, qp] = [spec.price_precision, spec.qty_precision];
  // Ages move with time: repainted at least once a second even when no message came.
  const second = Math.floor(Date.now() / 1000);
  if (changed('instruments', `${state.symbol}|${state.marketsVersion}|${second}`)) paintInstruments();
  const live = book && !book.stale && conn.state === 'open';
  if (changed('book', `${state.symbol}|${book?.seq}|${book?.stale}|${conn.state}`)) paintBook(book, live, pp, qp);
  if (changed('trades', `${state.symbol}|${state.trades.length}|${state.trades[0]?.seq}`)) {
    setRows($('trades'), state.trades, (t) => [
      [formatFixed(t.price, pp), `num ${t.takerSide}`], [formatFixed(t.qty, qp), 'num'],
      [new Date(Number(t.ts / 1_000_000n)).toLocaleTimeString(), '']]);
  }
}

/**
 * Shows `items` in `table`, one row each, reusing the rows already there and touching a
 * cell only when its text or class changed (no new nodes, less layout, per repaint).
 * `cells(item)` gives `[text, class]` per cell; `onRow(tr, item)` may set data on the row.
 */
function setRows(table, items, cells, onRow) {
  while (table.rows.length > items.length) table.deleteRow(-1);
  items.forEach((item, n) => {
    const want = cells(item);
    const tr = table.rows[n] ?? table.insertRow();
    while (tr.cells.length < want.length) tr.insertCell();
    want.forEach(([text, cls], k) => {
      const cell = tr.cells[k];
      if (cell.textContent !== text) cell.textContent = text;
      if (cell.className !== cls) cell.className = cls;
    });
    onRow?.(tr, item);
  });
}

/** Panels are rebuilt only when what they show changed (a book at a new sequence...). */
const painted = new Map();
function changed(panel, key) {
  if (painted.get(panel) === key) return false;
  painted.set(panel, key);
  return true;
}

function paintInstruments() {
  fill($('instruments'), state.instruments.map((i) => {
    const l = state.last.get(i.symbol) ?? {};
    const px = l.price ?? l.bid;
    const change = l.price !== undefined && l.first ? Number(l.price - l.first) / Number(l.first) * 100 : null;
    // How old this market's top of book is (engine time of its last change), so a feed
    // that went quiet or stale shows.
    const age = l.at ? (Date.now() - Number(l.at / 1_000_000n)) / 1000 : null;
    return el('tr', { class: `clickable${i.symbol === state.symbol ? ' selected' : ''}`, onclick: () => follow(i.symbol) },
      td(i.symbol), td(px !== undefined ? formatFixed(px, i.price_precision) : '-', 'num'),
      td(change === null ? '' : `${change >= 0 ? '+' : ''}${change.toFixed(2)}%`, change >= 0 ? 'num buy' : 'num sell'),
      td(age === null ? '' : `${age < 10 ? age.toFixed(1) : Math.round(age)} s`, age !== null && age > 5 ? 'num stale-age' : 'num dim'));
  }));
}

function paintBook(book, live, pp, qp) {
  $('book-symbol').textContent = state.symbol;
  $('book-state').textContent = !book || conn.state !== 'open' ? 'stale' : book.stale ? 'resyncing' : 'live';
  $('book-state').className = `badge ${$('book-state').textContent}`;
  $('book-seq').textContent = book?.seq?.toString() ?? '-';
  const asks = book ? book.levels('asks', 20) : [];
  const bids = book ? book.levels('bids', 20) : [];
  const cells = ([p, q]) => [[formatFixed(p, pp), 'price num'], [formatFixed(q, qp), 'num']];
  const clickable = (tr, [p]) => { tr.className = 'clickable'; tr.dataset.price = formatFixed(p, pp); };
  setRows($('asks'), asks.slice().reverse(), cells, clickable);
  setRows($('bids'), bids, cells, clickable);
  $('spread').textContent = live && asks.length && bids.length ? formatFixed(asks[0][0] - bids[0][0], pp) : '-';
  drawDepth(bids, asks);
}

// ---- account -----------------------------------------------------------------------

let refreshing = null;
function refreshAccount() {
  if (!state.token || refreshing) return;
  refreshing = setTimeout(async () => {
    refreshing = null;
    const [orders, fills, account, positions, alerts] = await Promise.all([
      api('GET', '/api/v1/orders?status=open&limit=50'), api('GET', '/api/v1/fills?limit=20'),
      api('GET', '/api/v1/account'), api('GET', '/api/v1/positions'), api('GET', '/api/v1/alerts'),
    ]);
    fill($('open-orders'), (orders.json.orders ?? []).map(orderRow));
    fill($('fills'), (fills.json.fills ?? []).map((f) => el('tr', {},
      td(f.symbol), td(f.side, f.side), td(f.price, 'num'), td(f.qty, 'num'))));
    fill($('balances'), (account.json.balances ?? []).map((b) => el('tr', {},
      td(b.asset), td(b.available, 'num'), td(b.held, 'num'))));
    fill($('positions'), (positions.json.positions ?? []).map((p) => el('tr', {}, td(p.symbol), td(p.qty, 'num'))));
    fill($('alerts'), (alerts.json.alerts ?? []).map((a) => el('tr', {},
      td(a.symbol), td(a.condition), td(a.price, 'num'),
      el('td', {}, el('button', { onclick: async () => { await api('DELETE', `/api/v1/alerts/${a.id}`); refreshAccount(); } }, 'delete')))));
  }, 50);
}

function orderRow(o) {
  return el('tr', { 'data-id': o.id },
    td(o.symbol), td(o.side, o.side), td(o.price, 'num'), td(o.open_qty, 'num'),
    el('td', {}, el('button', { onclick: () => replaceOrder(o) }, 'replace'),
      el('button', { class: 'cancel', onclick: () => cancelOrder(o.id) }, 'cancel')));
}

async function cancelOrder(id) {
  const answer = await conn.request({ op: 'order.cancel', order_id: id });
  if (answer.op === 'error') toast(`cancel refused: ${answer.code}`);
  refreshAccount();
}

$('cancel-all').addEventListener('click', async () => {
  const answer = await conn.request({ op: 'order.cancel_all' });
  if (answer.op === 'error') toast(`cancel all refused: ${answer.code}`);
  else if (answer.not_canceled.length) {
    const first = answer.not_canceled[0];
    toast(`${answer.not_canceled.length} not canceled (order ${first.order_id}: ${first.code})`);
  }
  refreshAccount();
});

async function replaceOrder(o) {
  const qty = window.prompt(`New open quantity for order ${o.id}`, o.open_qty);
  if (!qty) return;
  const answer = await conn.request({ op: 'order.replace', order_id: o.id, qty });
  if (answer.op === 'error') toast(`replace refused: ${answer.code}`);
  refreshAccount();
}

$('ticket').addEventListener('submit', async (e) => {
  e.preventDefault();
  const f = e.target;
  const result = $('ticket-result');
  const spec = state.bySymbol.get(state.symbol);
  const type = f.type.value;
  const problems = [];
  if (parseFixed(f.qty.value, spec.qty_precision) === null) problems.push(`quantity: a decimal with at most ${spec.qty_precision} decimals`);
  if (type !== 'market' && parseFixed(f.price.value, spec.price_precision) === null) problems.push(`price: a decimal with at most ${spec.price_precision} decimals`);
  if (!state.token) problems.push('log in first');
  result.className = problems.length ? 'error' : '';
  if (problems.length) { result.textContent = problems.join('; '); return; }
  const order = { op: 'order.new', symbol: state.symbol, side: f.side.value, type, qty: f.qty.value.trim() };
  if (type !== 'market') order.price = f.price.value.trim();
  const answer = await conn.request(order);
  if (answer.op === 'order.accepted') {
    const o = answer.order;
    result.textContent = `order ${o.id}: ${o.status}, filled ${o.filled_qty}`;
    // The answer is the engine's verdict: an order left open is shown at once (the
    // refresh below confirms it).
    if (o.status === 'open' && !document.querySelector(`#open-orders tr[data-id="${o.id}"]`)) {
      $('open-orders').prepend(orderRow(o));
    }
  } else {
    result.className = 'error';
    result.textContent = `refused: ${answer.code}${answer.message ? ` (${answer.message})` : ''}`;
  }
  refreshAccount();
});

$('alert-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const f = e.target;
  const r = await api('POST', '/api/v1/alerts', { symbol: state.symbol, condition: f.condition.value, price: f.price.value.trim() });
  if (r.status !== 201) toast(`alert refused: ${r.json.error?.code}`);
  refreshAccount();
});

// ---- alerts stream (SSE) -----------------------------------------------------------

let stream;
function openStream() {
  stream?.close();
  if (!state.token) return;
  const last = store.getItem('tickgate.lastEventId');
  const resume = last ? `&last_event_id=${encodeURIComponent(last)}` : '';
  stream = new EventSource(`/api/v1/alerts/stream?token=${encodeURIComponent(state.token)}${resume}`);
  const remember = (e) => { if (e.lastEventId) store.setItem('tickgate.lastEventId', e.lastEventId); };
  stream.addEventListener('price', (e) => {
    remember(e);
    const d = JSON.parse(e.data);
    toast(`${d.symbol} ${d.condition} ${d.price}: last ${d.last_price}`);
    refreshAccount();
  });
  stream.addEventListener('fill', (e) => {
    remember(e);
    const d = JSON.parse(e.data);
    toast(`filled ${d.side} ${d.qty} ${d.symbol} at ${d.price}`);
  });
  stream.addEventListener('system', (e) => {
    remember(e);
    const d = JSON.parse(e.data);
    toast(d.message ?? d.notice);
    if (d.notice === 'session_revoked') signOut();
  });
  stream.addEventListener('reset', (e) => { remember(e); refreshAccount(); });
}

// ---- session -----------------------------------------------------------------------

function signedIn(token, user, expiresIn) {
  state.token = token;
  state.user = user;
  store.setItem('tickgate.token', token);
  store.setItem('tickgate.user', user);
  showSession();
  connect();
  openStream();
  refreshAccount();
  renewLater(expiresIn);
}

/** Renews the token a minute before it expires, or at half its life if that is shorter
 * (`expires_in` counts whole seconds from a truncated issue time, so up to a second of it
 * may already be gone). The session itself has a maximum age: when the server refuses,
 * the user logs in again. The WebSocket keeps its connection; the alert
 * stream is reopened with the new token (it resumes from Last-Event-ID). */
let renewal = null;
function renewLater(expiresInSecs) {
  clearTimeout(renewal);
  if (!state.token || !expiresInSecs) return;
  renewal = setTimeout(async () => {
    const r = await api('POST', '/api/v1/auth/refresh');
    if (r.status !== 200) return;
    state.token = r.json.token;
    store.setItem('tickgate.token', state.token);
    openStream();
    renewLater(r.json.expires_in);
  }, Math.max(expiresInSecs * 500, expiresInSecs * 1000 - 60_000));
}

function signOut() {
  clearTimeout(renewal);
  state.token = null;
  for (const k of ['tickgate.token', 'tickgate.user', 'tickgate.lastEventId']) store.removeItem(k);
  stream?.close();
  showSession();
  connect();
}

function showSession() {
  $('login').hidden = !!state.token;
  $('who').hidden = $('logout').hidden = !state.token;
  $('who').textContent = state.user ?? '';
}

$('login').addEventListener('submit', async (e) => {
  e.preventDefault();
  const f = e.target;
  const r = await api('POST', '/api/v1/auth/login', { username: f.username.value, password: f.password.value });
  if (r.status === 200) signedIn(r.json.token, f.username.value, r.json.expires_in);
  else toast(r.status === 429 ? 'too many attempts: wait a moment' : 'wrong username or password');
});
$('logout').addEventListener('click', async () => { await api('POST', '/api/v1/auth/logout'); signOut(); });

// A click on a ladder row fills the ticket's price (one listener per side, not per row).
for (const id of ['asks', 'bids']) {
  $(id).addEventListener('click', (e) => {
    const tr = e.target.closest('tr');
    if (tr?.dataset.price) $('ticket').price.value = tr.dataset.price;
  });
}

async function start() {
  const r = await api('GET', '/api/v1/instruments');
  state.instruments = r.json.instruments ?? [];
  for (const i of state.instruments) state.bySymbol.set(i.symbol, i);
  if (!state.bySymbol.has(state.symbol)) state.symbol = state.instruments[0]?.symbol;
  showSession();
  connect();
  openStream();
  refreshAccount();
  // A token kept across a reload has an unknown age: renew it now.
  if (state.token) renewLater(0.01);
  $('interval').value = state.interval;
  $('interval').addEventListener('change', (e) => {
    state.interval = e.target.value;
    store.setItem('tickgate.interval', state.interval);
    followCandles();
  });
  requestAnimationFrame(paint);
}
start();
