// The web terminal: one page on the server's own origin, built on the reference client.
// Market data over one binary WebSocket, account data over REST, alerts over SSE. Paints
// at most once per animation frame, however fast the feed.
import { Connection, MSG, decodeBbo, formatFixed, parseFixed, replaceRequest } from '/tickgate.js';

const $ = (id) => document.getElementById(id);
const store = window.sessionStorage;
const state = {
  token: store.getItem('tickgate.token'),
  user: store.getItem('tickgate.user'),
  lastUser: store.getItem('tickgate.user'), // the user signed in last (kept after a sign-out)
  symbol: store.getItem('tickgate.symbol') || 'BTC-USD',
  instruments: [],
  bySymbol: new Map(),
  last: new Map(), // symbol -> { price, first } (raw BigInt)
  trades: [], // the followed market's tape (the connection's TradeTape), newest first
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

/** A REST call: `{ status, json }`, status 0 when the server could not be reached (the
 * page is offline: never a rejection). A 401 to the current token ends the session here,
 * with the server's reason, unless a renewal under way brings a new token (the call is
 * then made again with it). */
async function api(method, path, body, { token = state.token } = {}) {
  const headers = { 'content-type': 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  let r;
  try {
    r = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined });
  } catch {
    return { status: 0, json: { error: { code: 'unreachable', message: 'the server could not be reached' } } };
  }
  const json = r.status === 204 ? {} : await r.json().catch(() => ({}));
  if (r.status === 401 && token && !/\/auth\/(login|logout|refresh)$/.test(path)) {
    await renewing;
    if (state.token && state.token !== token) return api(method, path, body);
    if (token === state.token) signOut(`Signed out: the session is no longer valid (${json.error?.message ?? 'unauthorized'}). Log in again.`);
  }
  const retryAfter = Number(r.headers.get('retry-after')) || undefined;
  return { status: r.status, json, retryAfter };
}

/** `code (message)` of an error answer (REST's `{error}` or the WebSocket's). */
const why = (e) => (e ? `${e.code}${e.message ? ` (${e.message})` : ''}` : 'unknown');

/** Shows `text` for `ms`; the same text already shown is kept (and lasts longer), not
 * stacked. Returns the toast (its text may be changed while shown). */
function toast(text, { ms = 6000, kind = '' } = {}) {
  let t = [...$('toasts').children].find((c) => c.textContent === text);
  if (!t) {
    t = el('div', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text);
    $('toasts').append(t);
  }
  clearTimeout(t.timer);
  t.timer = setTimeout(() => { t.remove(); t.onremove?.(); }, ms);
  return t;
}

// ---- market data -------------------------------------------------------------------

/** Panels paint every 100 ms; market data twice as often keeps a paint at most 50 ms old. */
const WRITE_INTERVAL_MS = 50;

let conn;
function connect() {
  conn?.close();
  state.wasOpen = false;
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
    $('conn').title = e.detail === 'stale' ? 'nothing from the server lately: prices may be old' : '';
    state.dirty = true;
    // Back after a break: orders may have changed meanwhile (fills, cancels, an order
    // whose answer was lost).
    if (e.detail === 'open' && state.wasOpen) refreshAccount();
    if (e.detail === 'open') state.wasOpen = true;
  });
  // A token that no longer works (the server restarted with a new secret, the token
  // expired while away) and a session ended elsewhere: signed out, public market data.
  c.addEventListener('close', (e) => {
    if (c !== conn || !state.token) return;
    if (e.detail.code === 4401) signOut(`Signed out: the server no longer accepts this session (${e.detail.reason || 'unauthorized'}). Log in again.`);
    else if (e.detail.code === 4003) signOut('Signed out: the session was ended (logged out elsewhere). Log in again.');
  });
  c.addEventListener('refused', (e) => {
    if (c !== conn) return;
    toast(`${e.detail.request.channels.join(', ')} refused: ${why(e.detail.answer)}`, { kind: 'error' });
  });
  const channels = state.instruments.map((i) => `bbo.${i.symbol}`);
  channels.push(`book.${state.symbol}`, `trades.${state.symbol}`, `candles.${state.symbol}.${state.interval}`);
  if (state.token) channels.push('orders');
  conn.subscribe(channels);
  conn.onMarket = onMarket;
  conn.addEventListener('candles', (e) => { if (c === conn) onCandles(e.detail); });
  conn.addEventListener('frame', () => { if (c === conn) { state.dirty = true; state.lastTs = conn.lastTs; } });
  conn.addEventListener('resync', () => { state.dirty = true; });
  conn.addEventListener('control', (e) => {
    if (c === conn && (e.detail.op === 'execution' || e.detail.op === 'orders_gap')) refreshAccount();
  });
}

/** Follows `symbol`'s book and trades instead of the current market's. Only says what is
 * wanted: the connection sends the changes, however many clicks came meanwhile, as one
 * unsubscribe and a subscribe or two (within the server's rate). */
function follow(symbol) {
  const old = state.symbol;
  if (old === symbol || !state.bySymbol.has(symbol)) return;
  state.symbol = symbol;
  store.setItem('tickgate.symbol', symbol);
  state.dirty = true;
  conn.unsubscribe([`book.${old}`, `trades.${old}`]);
  conn.subscribe([`book.${symbol}`, `trades.${symbol}`]);
  followCandles();
  // A market order's price field stays empty; a limit price of the old market is wrong.
  if ($('ticket').type.value !== 'market') $('ticket').price.value = '';
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
    // The tape (merged by sequence) is the connection's; its newest trade is the last price.
    const newest = conn.tapes.get(symbol)?.trades[0];
    if (newest) {
      const entry = state.last.get(symbol) ?? {};
      entry.price = newest.price;
      entry.first ??= newest.price;
      state.last.set(symbol, entry);
    }
  }
  state.dirty = true;
}

// ---- candles ----------------------------------------------------------------------

/** Candles shown (the chart's width). */
const CANDLES_SHOWN = 120;

/** Follows the candles channel of the current symbol and interval (and no other). */
function followCandles() {
  const name = `candles.${state.symbol}.${state.interval}`;
  const old = [...conn.candles.keys()].filter((n) => n !== name);
  state.candles = conn.candles.get(name)?.candles.slice(-CANDLES_SHOWN) ?? [];
  state.chartDirty = true;
  if (old.length) conn.unsubscribe(old);
  if (!conn.candles.has(name)) conn.subscribe([name]);
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
  if (state.lastTs) {
    const latencyMs = Math.max(0, Date.now() - Number(state.lastTs / 1_000_000n));
    $('latency').textContent = `latency ${latencyMs} ms`;
    $('latency').className = latencyMs > 1000 ? 'slow' : '';
  }
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
  const tape = conn.tapes.get(state.symbol);
  state.trades = tape?.trades ?? [];
  if (changed('trades', `${state.symbol}|${tape?.version}|${conn.state}`)) {
    $('trades-info').textContent = tape?.missed ? `${tape.missed} missed` : conn.state === 'open' ? '' : conn.state;
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
  // Cleared by replaceChildren, a table has no tbody left: insertRow then makes one.
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

/** The markets list. Its rows are kept and only their changed cells rewritten (it is
 * repainted up to ten times a second): a row rebuilt between a press and its release
 * would lose the click. One listener on the table follows the clicked row's market. */
function paintInstruments() {
  setRows($('instruments'), state.instruments, (i) => {
    const l = state.last.get(i.symbol) ?? {};
    const px = l.price ?? l.bid;
    const raw = l.price !== undefined && l.first ? Number(l.price - l.first) / Number(l.first) * 100 : null;
    const change = raw === null ? null : Math.round(raw * 100) / 100 || 0; // no "-0.00%"
    // How old this market's top of book is (engine time of its last change), so a feed
    // that went quiet or stale shows.
    const age = l.at ? (Date.now() - Number(l.at / 1_000_000n)) / 1000 : null;
    return [[i.symbol, ''], [px !== undefined ? formatFixed(px, i.price_precision) : '-', 'num'],
      [change === null ? '' : `${change > 0 ? '+' : ''}${change.toFixed(2)}%`, change > 0 ? 'num buy' : change < 0 ? 'num sell' : 'num dim'],
      [age === null ? '' : `${age < 10 ? age.toFixed(1) : Math.round(age)} s`, age !== null && age > 5 ? 'num stale-age' : 'num dim']];
  }, (tr, i) => {
    const cls = `clickable${i.symbol === state.symbol ? ' selected' : ''}`;
    if (tr.className !== cls) tr.className = cls;
    tr.dataset.symbol = i.symbol;
  });
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

/** The private tables (and what was shown of them): emptied on sign-out, before anything
 * of another user can show. */
const PRIVATE_TABLES = ['open-orders', 'fills', 'balances', 'positions', 'alerts'];
let accountGeneration = 0; // a sign-in or sign-out makes answers still on their way stale

let refreshing = null;
let refreshAgain = false; // asked for while one was under way: its answers may predate it
function refreshAccount() {
  if (!state.token) return;
  if (refreshing) {
    refreshAgain = true;
    return;
  }
  const generation = accountGeneration;
  refreshAgain = false;
  refreshing = setTimeout(async () => {
    const answers = await Promise.all([
      api('GET', '/api/v1/orders?status=open&limit=50'), api('GET', '/api/v1/fills?limit=20'),
      api('GET', '/api/v1/account'), api('GET', '/api/v1/positions'), api('GET', '/api/v1/alerts'),
      // The ticket's unanswered order, found by its client id (its fate, if it came).
      unanswered ? api('GET', '/api/v1/orders?limit=50') : Promise.resolve(null),
    ]);
    refreshing = null;
    if (generation !== accountGeneration || !state.token) return;
    // An event came while these were on their way: what they say may be older than it.
    if (refreshAgain) refreshAccount();
    settleUnanswered(answers.pop());
    const [orders, fills, account, positions, alerts] = answers;
    const failed = answers.find((a) => a.status !== 200);
    if (failed) {
      // What is shown stays, marked as possibly old; the next execution, reconnect or
      // action refreshes it again.
      $('account-panel').classList.add('outdated');
      if (failed.status !== 401) toast(`Account not refreshed: ${why(failed.json.error)}`, { kind: 'error' });
    } else {
      $('account-panel').classList.remove('outdated');
    }
    if (orders.status === 200) {
      keyedRows($('open-orders'), orders.json.orders ?? [], (o) => o.id, (o) => `${o.price}|${o.open_qty}|${o.status}`, orderRow);
    }
    if (fills.status === 200) {
      keyedRows($('fills'), fills.json.fills ?? [], (f) => f.id ?? `${f.order_id}|${f.ts}`, (f) => `${f.price}|${f.qty}`, (f) => el('tr', {},
        td(f.symbol), td(f.side, f.side), td(f.price, 'num'), td(f.qty, 'num')));
    }
    if (account.status === 200) {
      keyedRows($('balances'), account.json.balances ?? [], (b) => b.asset, (b) => `${b.available}|${b.held}`, (b) => el('tr', {},
        td(b.asset), td(b.available, 'num'), td(b.held, 'num')));
    }
    if (positions.status === 200) {
      keyedRows($('positions'), positions.json.positions ?? [], (p) => p.symbol, (p) => p.qty, (p) => el('tr', {}, td(p.symbol), td(p.qty, 'num')));
    }
    if (alerts.status === 200) {
      keyedRows($('alerts'), alerts.json.alerts ?? [], (a) => a.id, (a) => `${a.condition}|${a.price}`, (a) => el('tr', {},
        td(a.symbol), td(a.condition), td(a.price, 'num'),
        el('td', {}, el('button', { onclick: (e) => deleteAlert(a, e.target) }, 'delete'))));
    }
  }, 50);
}

/**
 * Shows `items` in `table`, one row per key: a row whose item did not change (same
 * `sigOf`) is kept as it is, so a click on its buttons is never lost to a refresh.
 */
function keyedRows(table, items, keyOf, sigOf, build) {
  const old = new Map([...table.rows].map((tr) => [tr.dataset.key, tr]));
  const rows = items.map((item) => {
    const [key, sig] = [String(keyOf(item)), String(sigOf(item))];
    const kept = old.get(key);
    if (kept && kept.dataset.sig === sig) return kept;
    const tr = build(item);
    tr.dataset.key = key;
    tr.dataset.sig = sig;
    return tr;
  });
  if (rows.length !== table.rows.length || rows.some((tr, n) => table.rows[n] !== tr)) table.replaceChildren(...rows);
}

/** Empties every private table (sign-out, another user signing in); the ticket's last
 * result too unless `keepTicket` (signed out by the server: an order whose answer never
 * came must stay said). */
function clearPrivate({ keepTicket = false } = {}) {
  accountGeneration++;
  clearTimeout(refreshing);
  refreshing = null;
  refreshAgain = false;
  for (const id of PRIVATE_TABLES) $(id).replaceChildren();
  $('account-panel').classList.remove('outdated');
  if (keepTicket) return;
  $('ticket-result').textContent = '';
  $('ticket-result').className = '';
  unanswered = null;
}

async function deleteAlert(a, button) {
  button.disabled = true;
  const r = await api('DELETE', `/api/v1/alerts/${a.id}`);
  if (r.status !== 204 && r.status !== 200 && r.status !== 404) {
    button.disabled = false;
    toast(`Alert not deleted: ${why(r.json.error)}`, { kind: 'error' });
  }
  refreshAccount();
}

function orderRow(o) {
  return el('tr', { 'data-id': o.id },
    td(o.symbol), td(o.side, o.side), td(o.price, 'num'), td(o.open_qty, 'num'),
    el('td', {}, el('button', { onclick: () => replaceOrder(o) }, 'replace'),
      el('button', { class: 'cancel', onclick: (e) => cancelOrder(o.id, e.target) }, 'cancel')));
}

/** A refusal's toast, or, with no answer, what the user must check. */
function reportAnswer(what, answer) {
  if (answer.code === 'not_connected') toast(`${what}: not sent, no connection to the server`, { kind: 'error' });
  else if (answer.code === 'disconnected' || answer.code === 'timeout') {
    toast(`${what}: no answer (${answer.message}); it may have taken effect: check open orders`, { kind: 'error' });
  } else toast(`${what} refused: ${why(answer)}`, { kind: 'error' });
}

async function cancelOrder(id, button) {
  if (button) button.disabled = true;
  const answer = await conn.request({ op: 'order.cancel', order_id: id }, { timeoutMs: ORDER_TIMEOUT_MS });
  if (answer.op === 'error') {
    if (button) button.disabled = false;
    reportAnswer(`Cancel of order ${id}`, answer);
  }
  refreshAccount();
}

$('cancel-all').addEventListener('click', async () => {
  const answer = await conn.request({ op: 'order.cancel_all' }, { timeoutMs: ORDER_TIMEOUT_MS });
  if (answer.op === 'error') reportAnswer('Cancel all', answer);
  else if (answer.not_canceled.length) {
    const first = answer.not_canceled[0];
    toast(`${answer.not_canceled.length} not canceled (order ${first.order_id}: ${why(first)})`, { kind: 'error' });
  }
  refreshAccount();
});

async function replaceOrder(o) {
  const qty = window.prompt(`New open quantity for order ${o.id} (${o.filled_qty} filled so far)`, o.open_qty);
  if (!qty) return;
  const answer = await conn.request(replaceRequest(o, qty, state.bySymbol.get(o.symbol)), { timeoutMs: ORDER_TIMEOUT_MS });
  if (answer.op === 'error') reportAnswer(`Replace of order ${o.id}`, answer);
  refreshAccount();
}

/** How long an order request waits for its answer before the ticket says so. */
const ORDER_TIMEOUT_MS = 5000;

/** A market order takes no price (the server refuses one with a price rather than run it
 * without its limit): its price field is cleared and disabled. */
function syncPriceField() {
  const f = $('ticket');
  const market = f.type.value === 'market';
  f.price.disabled = market;
  if (market) f.price.value = '';
  f.price.placeholder = market ? 'price: none, at the market' : 'price';
}
$('ticket').type.addEventListener('change', syncPriceField);

/** The last order whose answer never came: placing the same order again reuses its
 * idempotency key, so it is placed once at most, until its fate is known (an account
 * refresh finds it by its client order id, or finds it was never placed). */
let unanswered = null;

/** With the account's recent orders (`recent`, an answer of `GET /api/v1/orders`): the
 * unanswered order, once it shows there, is said (and its key is not reused: the same
 * order again is a new order). */
function settleUnanswered(recent) {
  if (!unanswered || recent?.status !== 200) return;
  const found = (recent.json.orders ?? []).find((o) => o.client_order_id === unanswered.clientOrderId);
  if (!found) return;
  const result = $('ticket-result');
  result.className = '';
  result.textContent = `order ${found.id} (${unanswered.described}, sent without an answer): ${found.status}, filled ${found.filled_qty}`;
  unanswered = null;
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
  else if (conn.state !== 'open') problems.push(`not sent: the connection is ${conn.state} (wait until it is open)`);
  result.className = problems.length ? 'error' : '';
  if (problems.length) {
    // Still said: an earlier order whose fate is not known.
    if (unanswered) problems.push(`earlier: no answer for ${unanswered.described}, check open orders`);
    result.textContent = problems.join('; ');
    return;
  }
  const order = { op: 'order.new', symbol: state.symbol, side: f.side.value, type, qty: f.qty.value.trim() };
  if (type !== 'market') order.price = f.price.value.trim();
  const signature = JSON.stringify(order);
  const retry = unanswered?.signature === signature;
  order.idempotency_key = retry ? unanswered.key
    : `web-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
  // Its own client id: an account refresh can then tell whether it was placed.
  order.client_order_id = retry ? unanswered.clientOrderId
    : Math.floor(Math.random() * Number.MAX_SAFE_INTEGER);
  const described = `${order.side} ${order.qty} ${order.symbol}${order.price ? ` at ${order.price}` : ''} (${type})`;
  result.className = 'pending';
  result.textContent = `sending ${described}...`;
  $('place').disabled = true;
  const answer = await conn.request(order, { timeoutMs: ORDER_TIMEOUT_MS });
  $('place').disabled = false;
  if (unanswered?.signature === signature) unanswered = null; // its fate is known now
  if (answer.code === 'timeout' || answer.code === 'disconnected') {
    unanswered = { signature, key: order.idempotency_key, clientOrderId: order.client_order_id, described };
    result.className = 'error';
    result.textContent = `no answer for ${described} (${answer.message}): it may have been placed; open orders show it once the connection is back. Placing the same order again places it once at most.`;
    return;
  }
  if (answer.op === 'order.accepted') {
    const o = answer.order;
    result.className = '';
    result.textContent = `order ${o.id}: ${o.status}, filled ${o.filled_qty}`;
    // The answer is the engine's verdict: an order left open is shown at once (the
    // refresh below confirms it).
    if (o.status === 'open' && !document.querySelector(`#open-orders tr[data-id="${o.id}"]`)) {
      $('open-orders').prepend(orderRow(o));
    }
  } else {
    result.className = 'error';
    result.textContent = answer.code === 'not_connected' ? `not sent: ${answer.message}` : `refused: ${why(answer)}`;
  }
  refreshAccount();
});

$('alert-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const f = e.target;
  if (!state.token) { toast('Log in to set alerts', { kind: 'error' }); return; }
  const r = await api('POST', '/api/v1/alerts', { symbol: state.symbol, condition: f.condition.value, price: f.price.value.trim() });
  if (r.status !== 201) toast(r.status === 0 ? `Alert not set: ${why(r.json.error)}` : `Alert refused: ${why(r.json.error)}`, { kind: 'error' });
  refreshAccount();
});

// ---- alerts stream (SSE) -----------------------------------------------------------

let stream;
let streamRetry = null;
let streamBackoffMs = 1000;
function openStream() {
  stream?.close();
  clearTimeout(streamRetry);
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
  stream.addEventListener('open', () => { streamBackoffMs = 1000; });
  stream.addEventListener('fill', (e) => {
    remember(e);
    fillToast(JSON.parse(e.data));
  });
  stream.addEventListener('system', (e) => {
    remember(e);
    const d = JSON.parse(e.data);
    if (d.notice === 'session_revoked') signOut(`Signed out: ${d.message ?? 'the session was ended. Log in again.'}`);
    else toast(d.message ?? d.notice);
  });
  stream.addEventListener('reset', (e) => { remember(e); refreshAccount(); });
  // The browser retries a dropped stream by itself; one it gave up on (an answer other
  // than 200: the token no longer works, too many streams) is reopened here once the
  // session is known to be good, or the session ends with the reason.
  const opened = stream;
  stream.addEventListener('error', () => {
    if (opened !== stream || opened.readyState !== EventSource.CLOSED) return;
    streamRetry = setTimeout(async () => {
      if (opened !== stream || !state.token) return;
      const r = await api('GET', '/api/v1/account'); // a 401 signs out, with the reason
      if (opened === stream && state.token && r.status !== 401) openStream();
    }, streamBackoffMs);
    streamBackoffMs = Math.min(streamBackoffMs * 2, 30_000);
  });
}

/** One toast per order for its fills, updated as they come (a marketable order can fill
 * against many resting orders at once): total quantity and average price. */
const fillToasts = new Map(); // order id -> { toast, qty, notional, count }
function fillToast(d) {
  const spec = state.bySymbol.get(d.symbol);
  const [price, qty] = spec ? [parseFixed(d.price, spec.price_precision), parseFixed(d.qty, spec.qty_precision)] : [null, null];
  if (price === null || qty === null) { toast(`filled ${d.side} ${d.qty} ${d.symbol} at ${d.price}`); return; }
  const key = `${d.shard ?? 0}|${d.order_id}`;
  const g = fillToasts.get(key) ?? { qty: 0n, notional: 0n, count: 0 };
  g.qty += qty;
  g.notional += price * qty;
  g.count += 1;
  const average = g.qty > 0n ? formatFixed(g.notional / g.qty, spec.price_precision) : d.price;
  const text = `filled ${d.side} ${formatFixed(g.qty, spec.qty_precision)} ${d.symbol} at ${g.count > 1 ? `${average} on average (${g.count} fills)` : d.price}`
    + (d.status === 'filled' ? '' : `, ${d.open_qty} open`);
  if (g.toast?.isConnected) g.toast.firstChild.textContent = text;
  g.toast = toast(text, { ms: 6000 });
  g.toast.onremove = () => fillToasts.delete(key);
  fillToasts.set(key, g);
}

// ---- session -----------------------------------------------------------------------

function signedIn(token, user, expiresIn) {
  // The same user again (after the session ended): the ticket's unanswered order, and its
  // idempotency key (per user), stay.
  clearPrivate({ keepTicket: user === state.lastUser });
  state.lastUser = user;
  state.token = token;
  state.user = user;
  state.sessionEnding = false;
  store.setItem('tickgate.lifetime', String(expiresIn));
  store.setItem('tickgate.token', token);
  store.setItem('tickgate.user', user);
  showSession();
  connect();
  openStream();
  refreshAccount();
  renewLater(expiresIn);
}

/** Seconds until `token` (a JWT) expires, from its `exp` claim; 0.01 (renew now) when it
 * cannot be read. */
function secondsLeft(token) {
  try {
    const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const exp = JSON.parse(atob(payload)).exp;
    return Number.isFinite(exp) ? Math.max(0.01, exp - Date.now() / 1000) : 0.01;
  } catch {
    return 0.01;
  }
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
  // Counted from a truncated issue time: up to a second of it may be gone already.
  const lifeMs = expiresInSecs > 2 ? expiresInSecs * 1000 - 1000 : expiresInSecs * 1000;
  state.expiresAt = Date.now() + lifeMs;
  renewal = setTimeout(() => renew(1000), Math.max(lifeMs / 2, lifeMs - 60_000));
}

/** One renewal attempt. Not reached (offline), refused for the moment (429, 5xx): tried
 * again, `retryMs` doubling up to 10 s but sooner as the token's end nears (a third of
 * what is left), for as long as the token lives (and then the server answers 401).
 * Refused for good (401: the session reached its maximum age, was ended, or the token
 * expired meanwhile): signed out, with the reason. */
let renewing = null; // the renewal request under way, if any
let renewalToast = null; // the "renewal failing" toast, while shown
async function renew(retryMs) {
  const token = state.token;
  if (!token) return;
  renewing = api('POST', '/api/v1/auth/refresh', undefined, { token });
  const r = await renewing;
  renewing = null;
  if (token !== state.token) return; // signed out or in meanwhile
  if (r.status === 200) {
    state.token = r.json.token;
    store.setItem('tickgate.token', state.token);
    // A token shorter-lived than the login's: the session's maximum age is near (the
    // server renews up to it, not past it). Said once, well before.
    const lifetime = Number(store.getItem('tickgate.lifetime')) || r.json.expires_in;
    if (r.json.expires_in < lifetime - 1 && !state.sessionEnding) {
      state.sessionEnding = true;
      toast(`The session reaches its maximum age in ${r.json.expires_in} s: log in again then`, { kind: 'error', ms: 15_000 });
    }
    openStream();
    renewLater(r.json.expires_in);
    return;
  }
  if (r.status === 401) {
    signOut(state.sessionEnding ? 'Signed out: the session reached its maximum age. Log in again.'
      : `Signed out: the session could not be renewed (${r.json.error?.message ?? 'expired'}). Log in again.`);
    return;
  }
  if (retryMs >= 4000) {
    const left = Math.max(0, Math.round((state.expiresAt - Date.now()) / 1000));
    const text = `Session renewal failing (${why(r.json.error)}): retrying; the token ends in ${left} s without it`;
    // One toast, its text kept current (not one more per attempt).
    if (renewalToast?.isConnected) renewalToast.firstChild.textContent = text;
    else renewalToast = toast(text, { kind: 'error', ms: 15_000 });
  }
  // Sooner as the token's end nears, never sooner than the server's Retry-After; once
  // it has ended, backing off (1 s doubling to 10 s) until the server answers (a 401
  // then signs out): never a request storm.
  const retryAfterMs = (r.retryAfter ?? 0) * 1000;
  const left = state.expiresAt - Date.now();
  const waitMs = left > 0 ? Math.max(200, retryAfterMs, Math.min(retryMs, left / 3))
    : Math.max(retryMs, retryAfterMs);
  renewal = setTimeout(() => renew(Math.min(retryMs * 2, 10_000)), waitMs);
}

/** Ends the session on this page: no token, no private data shown, public market data.
 * `message` (why, when the user did not ask for it) is shown once. */
function signOut(message) {
  const wasSignedIn = !!state.token;
  clearTimeout(renewal);
  clearTimeout(streamRetry);
  state.token = null;
  state.user = null;
  state.sessionEnding = false;
  for (const k of ['tickgate.token', 'tickgate.user', 'tickgate.lastEventId', 'tickgate.lifetime']) store.removeItem(k);
  stream?.close();
  stream = null;
  clearPrivate({ keepTicket: !!message });
  showSession();
  if (message && wasSignedIn) toast(message, { kind: 'error', ms: 15_000 });
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
// Signed out here at once (nothing of the account stays on screen), then the server ends
// the session; if it cannot be reached, the user is told the session stays valid there.
$('logout').addEventListener('click', async () => {
  const token = state.token;
  signOut();
  const r = await api('POST', '/api/v1/auth/logout', undefined, { token });
  if (r.status === 0) toast('Logged out here, but the server could not be reached: the session stays valid until its token expires', { kind: 'error', ms: 15_000 });
});

// A click on a ladder row fills the ticket's price (one listener per side, not per row).
for (const id of ['asks', 'bids']) {
  $(id).addEventListener('click', (e) => {
    const tr = e.target.closest('tr');
    if (tr?.dataset.price && !$('ticket').price.disabled) $('ticket').price.value = tr.dataset.price;
  });
}
$('instruments').addEventListener('click', (e) => {
  const symbol = e.target.closest('tr')?.dataset.symbol;
  if (symbol) follow(symbol);
});
// The browser knows when the network went: stale at once (anything arriving makes it
// open again); when it is back, reconnect without waiting for the backoff.
window.addEventListener('offline', () => { if (conn?.state === 'open') conn.setState('stale'); });
window.addEventListener('online', () => conn?.reconnectNow());

async function start() {
  let r = await api('GET', '/api/v1/instruments');
  for (let waitMs = 1000; r.status !== 200; waitMs = Math.min(waitMs * 2, 10_000)) {
    toast(`Cannot load the markets: ${why(r.json.error)}; retrying`, { kind: 'error', ms: waitMs + 500 });
    await new Promise((resolve) => setTimeout(resolve, waitMs));
    r = await api('GET', '/api/v1/instruments');
  }
  state.instruments = r.json.instruments ?? [];
  for (const i of state.instruments) state.bySymbol.set(i.symbol, i);
  if (!state.bySymbol.has(state.symbol)) state.symbol = state.instruments[0]?.symbol;
  showSession();
  connect();
  openStream();
  refreshAccount();
  // A token kept across a reload: its own expiry says when to renew it.
  if (state.token) renewLater(secondsLeft(state.token));
  syncPriceField();
  $('interval').value = state.interval;
  $('interval').addEventListener('change', (e) => {
    state.interval = e.target.value;
    store.setItem('tickgate.interval', state.interval);
    followCandles();
  });
  requestAnimationFrame(paint);
}
start();
