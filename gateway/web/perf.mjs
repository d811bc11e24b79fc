// The web terminal's cost in headless Chromium against a running server (default feed):
// paints per second, main-thread busy share and JS heap over DURATION_S (default 300) with
// every instrument's book followed, then the time from clicking "Place" to the order
// showing in open orders, over CLICKS (default 100) clicks.
// `TICKGATE_URL=http://127.0.0.1:8080 node gateway/web/perf.mjs`
import { chromium } from 'playwright-core';
import { execSync } from 'node:child_process';

const base = process.env.TICKGATE_URL;
const seconds = Number(process.env.DURATION_S ?? 300);
const clicks = Number(process.env.CLICKS ?? 100);
const executablePath = process.env.CHROMIUM || execSync('command -v chromium').toString().trim();
const browser = await chromium.launch({ executablePath, args: ['--no-sandbox'] });
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
const cdp = await page.context().newCDPSession(page);
await cdp.send('Performance.enable');
const metrics = async () => Object.fromEntries((await cdp.send('Performance.getMetrics')).metrics.map((m) => [m.name, m.value]));

await page.goto(`${base}/`);
await page.waitForFunction(() => document.getElementById('book-state').textContent === 'live');
await page.evaluate(() => {
  const { conn, state } = window.tickgate;
  conn.subscribe(state.instruments.map((i) => `book.${i.symbol}`));
});
const pct = (xs, p) => xs.slice().sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))];
const samples = [];
let before = await metrics();
let counts = await page.evaluate(() => ({ paints: window.tickgate.state.paints, frames: window.tickgate.conn.framesReceived ?? 0 }));
for (let t = 0; t < seconds; t += 10) {
  await page.waitForTimeout(10_000);
  const now = await metrics();
  const c = await page.evaluate(() => ({ paints: window.tickgate.state.paints, frames: window.tickgate.conn.framesReceived ?? 0 }));
  samples.push({
    paints: (c.paints - counts.paints) / 10,
    frames: (c.frames - counts.frames) / 10,
    busy: (now.TaskDuration - before.TaskDuration) / 10,
    heapMb: now.JSHeapUsedSize / 1e6,
  });
  [before, counts] = [now, c];
}
const heaps = samples.map((s) => s.heapMb);
console.log(JSON.stringify({
  seconds,
  books: await page.evaluate(() => window.tickgate.conn.books.size),
  paints_per_s_median: pct(samples.map((s) => s.paints), 0.5),
  frames_per_s_median: pct(samples.map((s) => s.frames), 0.5),
  busy_share_median: pct(samples.map((s) => s.busy), 0.5),
  busy_share_max: Math.max(...samples.map((s) => s.busy)),
  heap_mb_first: heaps[0], heap_mb_last: heaps.at(-1), heap_mb_max: Math.max(...heaps),
}));

// Click to open.
await page.fill('#login [name=username]', 'alice');
await page.fill('#login [name=password]', 'alice-demo-password');
await page.click('#login button');
await page.waitForSelector('#who:not([hidden])');
await page.selectOption('#ticket [name=type]', 'limit');
await page.fill('#ticket [name=price]', '1000.00');
await page.fill('#ticket [name=qty]', '0.0010');
const latencies = [];
for (let n = 0; n < clicks; n++) {
  const previous = await page.textContent('#ticket-result');
  const started = Date.now();
  await page.click('#place');
  await page.waitForFunction((p) => document.getElementById('ticket-result').textContent !== p, previous);
  const id = (await page.textContent('#ticket-result')).match(/order (\d+)/)[1];
  await page.waitForSelector(`#open-orders tr[data-id="${id}"]`);
  latencies.push(Date.now() - started);
  // Cancelled out of band, so the open orders list never fills up.
  await page.evaluate((id) => fetch(`/api/v1/orders/${id}`, {
    method: 'DELETE', headers: { authorization: `Bearer ${window.tickgate.state.token}` },
  }), id);
}
console.log(JSON.stringify({ clicks, click_to_open_ms_p50: pct(latencies, 0.5), click_to_open_ms_p99: pct(latencies, 0.99) }));
await browser.close();
