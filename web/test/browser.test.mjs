// Headless Debian Chromium loads the page served by a real quaver server, takes the
// certificate hash from /cert-hash, connects over WebTransport with ?token=, and reaches
// Ready; with a bad token it is refused with the right close code.
//
// Needs the built server (QUAVER_BIN, default ../target/debug/quaver) and Chromium
// (CHROMIUM, default /usr/bin/chromium).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const BIN = process.env.QUAVER_BIN ?? new URL('../../target/debug/quaver', import.meta.url).pathname;
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SECRET = 'browser-test-secret-0123456789abcdefgh';

let server, browser, httpAddr;

function startServer() {
  const dir = mkdtempSync(join(tmpdir(), 'quaver-browser-'));
  // The server runs on its embedded defaults (SQLite in the temp dir), whatever the
  // environment says about other databases.
  const { DATABASE_URL: _ignored, ...inherited } = process.env;
  const env = {
    ...inherited, JWT_SECRET: SECRET, QUAVER_LISTEN: '127.0.0.1:0', QUAVER_HTTP_LISTEN: '127.0.0.1:0',
    QUAVER_DATA_DIR: join(dir, 'data'), QUAVER_CERT_DIR: join(dir, 'certs'), QUAVER_LOG: 'info', NO_COLOR: '1',
  };
  const child = spawn(BIN, ['serve'], { env, stdio: ['ignore', 'ignore', 'pipe'] });
  return new Promise((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${text}`)), 20000);
    child.stderr.on('data', (d) => {
      text += d;
      const m = text.replace(/\x1b\[[0-9;]*m/g, '').match(/http=(127\.0\.0\.1:\d+)/);
      if (m) { clearTimeout(timer); resolve([child, m[1]]); }
    });
    child.on('exit', (code) => { clearTimeout(timer); reject(new Error(`server exited ${code}:\n${text}`)); });
  });
}

const token = (user) => execFileSync(BIN, ['token', '--user', String(user), '--name', `web${user}`, '--ttl', '10m'],
  { env: { ...process.env, JWT_SECRET: SECRET } }).toString().trim();

before(async () => {
  assert.ok(existsSync(BIN), `server binary ${BIN} missing: build it first (cargo build)`);
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} missing: apt-get install chromium`);
  [server, httpAddr] = await startServer();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1'],
  });
});

after(async () => {
  await browser?.close();
  server?.kill('SIGTERM');
});

test('browser reaches Ready over WebTransport with ?token= and the /cert-hash hash', async () => {
  const page = await browser.newPage();
  await page.goto(`http://${httpAddr}/`);
  const result = await page.evaluate(async (tok) => {
    const s = await window.quaverConnect(tok);
    const chat = await s.openLane('Chat');
    const pong = await chat.request({ type: 'Ping', data: new Uint8Array([7, 8]) });
    const info = await s.fetch({ type: 'ServerInfo' });
    const out = { user: s.ready.user, pong: Array.from(pong.data), protocols: info.protocols, maxDatagram: s.ready.limits.max_datagram_bytes };
    s.close();
    return out;
  }, token(4242));
  assert.deepEqual(result.user, { id: '4242', name: 'web4242' });
  assert.deepEqual(result.pong, [7, 8]);
  assert.deepEqual(result.protocols, [1]);
  assert.ok(result.maxDatagram > 1000, `datagrams available: ${result.maxDatagram}`);
  // The UI path too: the button connects and shows Ready.
  await page.fill('#token', token(7));
  await page.click('#connect');
  await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('ready'), null, { timeout: 10000 });
  await page.close();
});

test('browser with a bad token does not reach Ready and learns why', async () => {
  const page = await browser.newPage();
  await page.goto(`http://${httpAddr}/`);
  const err = await page.evaluate(async () => {
    try { await window.quaverConnect('not.a.token'); return { ok: true }; } catch (e) { return { name: e.name, code: e.code }; }
  });
  assert.deepEqual(err, { name: 'ClosedError', code: 4011 });
  const expired = await page.evaluate(async () => {
    try { await window.quaverConnect(''); return { ok: true }; } catch (e) { return { name: e.name, code: e.code }; }
  });
  assert.deepEqual(expired, { name: 'ClosedError', code: 4010 });
  await page.close();
});
