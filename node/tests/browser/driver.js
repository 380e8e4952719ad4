// Browser check of a running node's status page and live log, driven by playwright-core with
// the system's Chromium. Called by node/tests/browser.rs:
//   node driver.js BASE_URL ENTRY_ID OUT_DIR
// Prints one JSON line with what it saw; exits non-zero on failure.
'use strict';
const path = require('path');
const { chromium } = require('playwright-core');

const [base, entry, outDir] = process.argv.slice(2);
const CHROMIUM = process.env.PACMESH_CHROMIUM || '/usr/bin/chromium';

function fail(msg) {
  console.error('browser check failed: ' + msg);
  process.exit(1);
}

(async () => {
  const userDataDir = path.join(outDir, 'profile-' + process.pid);
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    // Closed network: no background connections; root in CI: no sandbox.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--disable-dev-shm-usage'],
    viewport: { width: 412, height: 900 }, // a phone
    timeout: 60000,
  });
  try {
    const page = context.pages()[0] || await context.newPage();
    page.setDefaultTimeout(30000);
    const consoleErrors = [];
    page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
    page.on('pageerror', (e) => consoleErrors.push(String(e)));

    // The status page shows the entry as building, with a link to its log.
    await page.goto(base + '/', { waitUntil: 'load' });
    const row = page.locator('#queue tbody tr[data-state="building"]', { hasText: entry.slice(0, 12) });
    await row.waitFor({ state: 'visible' });
    const building = page.locator('#building tr', { hasText: entry.slice(0, 12) });
    await building.waitFor();
    // The filter hides what does not match and shows what does.
    await page.fill('#filter', 'no-such-package-anywhere');
    if (await row.isVisible()) fail('the filter did not hide the row');
    await page.fill('#filter', '');
    await page.screenshot({ path: path.join(outDir, 'status.png'), fullPage: true });

    // Open its live log and watch lines appear.
    await row.locator('a', { hasText: 'log' }).click();
    await page.waitForURL('**/logs/' + entry);
    const log = page.locator('#log');
    const ticks = async () => {
      const t = await log.textContent();
      const m = [...t.matchAll(/tick (\d+)/g)].map((x) => Number(x[1]));
      return m.length ? Math.max(...m) : 0;
    };
    await page.waitForFunction(() => /tick \d+/.test(document.getElementById('log').textContent));
    const first = await ticks();
    const t0 = Date.now();
    await page.waitForFunction(
      (n) => {
        const m = [...document.getElementById('log').textContent.matchAll(/tick (\d+)/g)];
        return m.some((x) => Number(x[1]) >= n);
      },
      first + 2,
      { timeout: 20000 },
    );
    const later = await ticks();
    const waited = Date.now() - t0;
    const note = await page.locator('#note').textContent();
    await page.screenshot({ path: path.join(outDir, 'log.png'), fullPage: true });
    if (consoleErrors.length) fail('console errors: ' + consoleErrors.join(' | '));
    console.log(JSON.stringify({ first, later, waited_ms: waited, note }));
  } finally {
    await context.close();
    require('fs').rmSync(userDataDir, { recursive: true, force: true });
  }
})().catch((e) => fail(e && e.stack || String(e)));
