// The web terminal in a real browser (headless Debian Chromium driven by playwright-core)
// against a running server: `TICKGATE_URL=http://127.0.0.1:PORT node gateway/web/e2e.mjs`.
// Checks what a person sees: no console error; the ladder equals the REST book at the
// same sequence; log in; a resting order appears in open orders and goes on cancel, two
// more on cancel all; an IOC that fills shows in fills and positions; an alert arrives as
// a toast; a dropped connection shows the stale flag and comes back live with a correct
// book; a reload keeps the session; a short-lived token is renewed in time. Screenshots
// go to target/web/.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import net from 'node:net';
import { execSync } from 'node:child_process';
import assert from 'node:assert/strict';

const server = process.env.TICKGATE_URL;
assert.ok(server, 'TICKGATE_URL is required');

// The page talks to the server through this proxy, so the test can drop every connection
// the way a network does (the server sees them close too).
const sockets = new Set();
const target = new URL(server);
const proxy = net.createServer((client) => {
  const upstream = net.connect(Number(target.port), target.hostname);
  for (const s of [client, upstream]) {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
  }
  client.pipe(upstream).pipe(client);
});
await new Promise((resolve) => proxy.listen(0, '127.0.0.1', resolve));
const base = `http://127.0.0.1:${proxy.address().port}`;
const dropAll = () => { for (const s of sockets) s.destroy(); };
const executablePath = process.env.CHROMIUM || execSync('command -v chromium').toString().trim();
const shots = new URL('../../target/web/', import.meta.url).pathname;
mkdirSync(shots, { recursive: true });

const browser = await chromium.launch({ executablePath, args: ['--no-sandbox'] });
const step = async (name, f) => {
  const started = Date.now();
  await f();
  console.log(`ok ${name} (${Date.now() - started} ms)`);
};
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const errors = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  page.on('pageerror', (e) => errors.push(String(e)));
  const live = () => page.waitForFunction(() => document.getElementById('book-state').textContent === 'live', null, { timeout: 15_000 });

  await step('the page loads and its book goes live', async () => {
    await page.goto(`${base}/`);
    await live();
  });

  // The page shows market data up to ~150 ms late (written every 50 ms, painted every
  // 100 ms) while the book moves: remember what the ladder and REST showed at each
  // sequence and compare at the first sequence both have seen.
  const ladderEqualsRest = async () => {
    const [painted, served] = [new Map(), new Map()];
    for (let attempt = 0; ; attempt++) {
      const [rest, shown] = await Promise.all([
        fetch(`${server}/api/v1/markets/BTC-USD/book?depth=20`).then((r) => r.json()),
        page.evaluate(() => {
          const rows = (id) => [...document.querySelectorAll(`#${id} tr`)].map((r) => [...r.cells].map((c) => c.textContent));
          return { seq: document.getElementById('book-seq').textContent, asks: rows('asks').reverse(), bids: rows('bids') };
        }),
      ]);
      served.set(String(rest.seq), rest);
      painted.set(shown.seq, shown);
      const seq = [...painted.keys()].find((s) => served.has(s));
      if (seq !== undefined) {
        assert.deepEqual(painted.get(seq).bids, served.get(seq).bids.slice(0, 20));
        assert.deepEqual(painted.get(seq).asks, served.get(seq).asks.slice(0, 20));
        return;
      }
      assert.ok(attempt < 1000, `never at the same sequence (page ${shown.seq}, REST ${rest.seq})`);
      await page.waitForTimeout(5);
    }
  };

  await step('the ladder equals the REST book at the same sequence', ladderEqualsRest);

  await step('the chart shows the candles endpoint\'s candles', async () => {
    await page.waitForFunction(() => window.tickgate.state.candles.length > 0, null, { timeout: 15_000 });
    // 1 s candles: several closed ones within seconds (the channel switches with the menu).
    await page.selectOption('#interval', '1s');
    await page.waitForFunction(() => window.tickgate.state.candles.length >= 3, null, { timeout: 15_000 });
    const rest = await (await fetch(`${base}/api/v1/markets/BTC-USD/candles?interval=1s&limit=120`)).json();
    const shown = await page.evaluate(() => window.tickgate.state.candles.map((c) => ({
      start: c.start.toString(), ohlc: [c.open, c.high, c.low, c.close].map(String), trades: String(c.trades),
    })));
    // The newest candle may still be moving; every earlier one is the endpoint's, value
    // for value (raw fixed-point on the page, decimal strings in REST).
    const byStart = new Map(rest.candles.map((c) => [String(c.start), {
      start: String(c.start), ohlc: [c.open, c.high, c.low, c.close].map((v) => v.replace('.', '')), trades: String(c.trades),
    }]));
    assert.ok(shown.length > 0 && byStart.size > 0);
    assert.deepEqual(shown.slice(0, -1), shown.slice(0, -1).map((c) => byStart.get(c.start)));
    assert.ok(byStart.has(shown.at(-1).start), 'the open candle is the endpoint\'s too');
    // Drawn at the next paint (at most 100 ms after the candles came).
    await page.waitForFunction(() => {
      const c = document.getElementById('chart');
      const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      return data.some((v, n) => n % 4 === 3 && v > 0);
    }, null, { timeout: 5_000 });
    await page.selectOption('#interval', '1m');
    await page.waitForFunction(() => [...window.tickgate.conn.candles.keys()].join() === 'candles.BTC-USD.1m');
  });

  await step('log in', async () => {
    await page.fill('#login [name=username]', 'alice');
    await page.fill('#login [name=password]', 'alice-demo-password');
    await page.click('#login button');
    await page.waitForSelector('#who:not([hidden])');
  });

  await step('a resting order shows in open orders, and goes on cancel', async () => {
    await page.selectOption('#ticket [name=type]', 'limit');
    await page.check('#ticket [value=buy]');
    await page.fill('#ticket [name=price]', '1000.00');
    await page.fill('#ticket [name=qty]', '0.0010');
    await page.click('#place');
    await page.waitForFunction(() => /open/.test(document.getElementById('ticket-result').textContent));
    const id = (await page.textContent('#ticket-result')).match(/order (\d+)/)[1];
    await page.waitForSelector(`#open-orders tr[data-id="${id}"]`);
    await page.click(`#open-orders tr[data-id="${id}"] button.cancel`);
    await page.waitForSelector(`#open-orders tr[data-id="${id}"]`, { state: 'detached' });
  });

  await step('cancel all empties open orders', async () => {
    const ids = [];
    for (const price of ['1000.00', '1001.00']) {
      await page.fill('#ticket [name=price]', price);
      const before = await page.textContent('#ticket-result');
      await page.click('#place');
      await page.waitForFunction((b) => {
        const text = document.getElementById('ticket-result').textContent;
        return text !== b && /open/.test(text);
      }, before);
      ids.push((await page.textContent('#ticket-result')).match(/order (\d+)/)[1]);
    }
    for (const id of ids) await page.waitForSelector(`#open-orders tr[data-id="${id}"]`);
    await page.click('#cancel-all');
    await page.waitForFunction(() => document.querySelectorAll('#open-orders tr').length === 0);
  });

  await step('a refused order shows the engine\'s reason', async () => {
    await page.selectOption('#ticket [name=type]', 'post_only');
    await page.fill('#ticket [name=price]', '6000000.00');
    await page.click('#place');
    await page.waitForFunction(() => /would_cross/.test(document.getElementById('ticket-result').textContent));
  });

  await step('an IOC that fills shows in fills and positions', async () => {
    await page.selectOption('#ticket [name=type]', 'ioc');
    await page.fill('#ticket [name=price]', '6000000.00');
    await page.fill('#ticket [name=qty]', '0.0010');
    await page.click('#place');
    await page.waitForFunction(() => /filled 0\.0010/.test(document.getElementById('ticket-result').textContent));
    await page.waitForSelector('#fills tr');
    await page.waitForFunction(() => /BTC-USD/.test(document.getElementById('positions').textContent));
  });

  await step('an alert at the price arrives as a toast', async () => {
    await page.selectOption('#alert-form [name=condition]', 'above');
    await page.fill('#alert-form [name=price]', '0.01');
    await page.click('#alert-form button');
    await page.waitForFunction(() => /BTC-USD above 0\.01/.test(document.getElementById('toasts').textContent), null, { timeout: 15_000 });
  });
  await page.screenshot({ path: `${shots}terminal.png` });
  assert.equal(await page.textContent('#conn'), 'open', 'the connection badge tells the current connection');

  await step('a dropped connection shows stale, then comes back live and correct', async () => {
    assert.deepEqual(errors, [], 'no console errors before the drop');
    dropAll();
    await page.waitForFunction(() => document.getElementById('book-state').textContent !== 'live');
    await live();
    // And the rebuilt book is the server's, at the same sequence.
    await ladderEqualsRest();
  });

  await step('a reload keeps the session', async () => {
    await page.reload();
    await page.waitForSelector('#who:not([hidden])');
    await live();
    await page.waitForSelector('#fills tr');
  });
  await page.screenshot({ path: `${shots}after-reload.png` });

  await step('the page renews its token before it expires (run with --token-lifetime-secs 3)', async () => {
    await page.waitForTimeout(4000);
    await page.selectOption('#ticket [name=type]', 'limit');
    await page.fill('#ticket [name=price]', '1000.00');
    await page.fill('#ticket [name=qty]', '0.0010');
    await page.click('#place');
    await page.waitForFunction(() => /open/.test(document.getElementById('ticket-result').textContent));
    await page.waitForSelector('#who:not([hidden])');
    const account = await page.evaluate(async () => (await fetch('/api/v1/account', { headers: { authorization: `Bearer ${window.tickgate.state.token}` } })).status);
    assert.equal(account, 200, 'the renewed token works');
  });
  await step('a refused WebSocket tells the page why (close 4401 and the reason for a bad token)', async () => {
    const closed = await page.evaluate(() => new Promise((resolve) => {
      const ws = new WebSocket(`${location.origin.replace(/^http/, 'ws')}/ws?token=forged.token.x`);
      ws.onclose = (e) => resolve({ code: e.code, reason: e.reason });
    }));
    assert.equal(closed.code, 4401, JSON.stringify(closed));
    assert.match(closed.reason, /^unauthorized/);
  });
  // The drop itself is reported by the browser (the cut streams); nothing else may be.
  const unexpected = errors.filter((e) => !/net::ERR_|WebSocket connection/.test(e));
  assert.deepEqual(unexpected, [], 'no console errors but the drop\'s own');
  console.log(`web terminal: all steps passed; screenshots in ${shots}`);
} finally {
  await browser.close();
  dropAll();
  proxy.close();
}
