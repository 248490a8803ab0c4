// The web app where UDP does not get through, in headless Chromium: the page's QUIC port
// is a UDP socket that reads and never answers (as a firewall that drops UDP looks from
// the browser), so WebTransport never becomes ready and the page falls back to the
// WebSocket framing (PROTOCOL.md §11) on the HTTP port by itself — within 3 s, saying so in
// the badge. Chat, presence, typing and voice then work with someone on WebTransport; the
// next page load goes to WebSocket first; a browser without WebTransport uses it at once.
// Screenshots go to target/screenshots/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { mkdirSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { BIN, startServer } from './server.mjs';
import { CHROMIUM_ARGS, until, person, shown, sendText, createGuild, inviteCode, joinByLink, voiceBothWays } from './people.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SHOTS = new URL('../../target/screenshots/', import.meta.url).pathname;

let server, browser, httpAddr, blackhole, silentPort, ada, bob;

/** The page is told its QUIC port is the silent one. */
async function noUdp(page) {
  await page.route('**/cert-hash', async (route) => {
    const r = await route.fetch();
    await route.fulfill({ response: r, json: { ...(await r.json()), port: silentPort } });
  });
}

before(async () => {
  assert.ok(existsSync(BIN), `server binary ${BIN} missing: build it first (cargo build)`);
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} missing: apt-get install chromium`);
  mkdirSync(SHOTS, { recursive: true });
  server = await startServer();
  httpAddr = server.http;
  blackhole = createSocket('udp4');
  let swallowed = 0;
  blackhole.on('message', () => { swallowed++; });
  blackhole.swallowed = () => swallowed;
  await new Promise((r) => blackhole.bind(0, '127.0.0.1', r));
  silentPort = blackhole.address().port;
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
});

after(async () => {
  // Chromium itself logs the WebTransport attempt that got no answer (a console error no
  // page code can prevent); anything else is a problem.
  const ours = (p) => p.problems.filter((x) => !/Failed to establish a connection to https:\/\/127\.0\.0\.1:\d+\/quaver: net::ERR_QUIC/.test(x));
  try {
    for (const p of [ada, bob]) if (p) assert.deepEqual(ours(p), [], 'no page errors and no console errors');
  } finally {
    // Their `/cert-hash` handlers must not fail into the void as the browser goes.
    await Promise.all([ada, bob].map((p) => p?.unrouteAll({ behavior: 'ignoreErrors' })));
    await browser?.close();
    blackhole?.close();
    server?.child.kill('SIGTERM');
  }
});

test('with UDP dropped the page connects over WebSocket within 3 s and says so', async () => {
  let started;
  ada = await person(browser, httpAddr, 'ada', {
    before: async (page) => {
      await noUdp(page);
      page.on('request', (r) => { if (r.url().endsWith('/dev/token')) started = Date.now(); });
    },
  });
  const took = Date.now() - started;
  console.log(`signed in and connected over WebSocket ${took} ms after asking for a token`);
  assert.ok(took < 3000, `connected after ${took} ms`);
  assert.ok(blackhole.swallowed() > 0, 'WebTransport was tried first (its packets went unanswered)');
  assert.equal(await ada.$eval('#conn', (c) => c.dataset.transport), 'websocket');
  assert.match(await ada.textContent('#conn'), /connected · WebSocket/);
  assert.equal(await ada.isVisible('#reconnect-banner'), false, 'no trouble shown');
  await ada.screenshot({ path: join(SHOTS, 'websocket.png') });
});

test('chat, presence and typing between a WebSocket page and a WebTransport page', async () => {
  bob = await person(browser, httpAddr, 'bob');
  assert.equal(await bob.$eval('#conn', (c) => c.dataset.transport), 'webtransport');
  await createGuild(ada, 'no udp');
  await joinByLink(bob, httpAddr, await inviteCode(ada));
  await until('ada sees bob online', () => ada.$('#members .member[data-status="Online"]:has-text("bob")'), 3000);
  await until('bob sees ada online', () => bob.$('#members .member[data-status="Online"]:has-text("ada")'), 3000);
  await sendText(ada, 'over tcp');
  await sendText(bob, 'over quic');
  for (const p of [ada, bob]) {
    await until('both messages, once each, in order', async () => {
      const texts = (await shown(p)).map((m) => m.text);
      return texts.length === 2 && texts[0] === 'over tcp' && texts[1] === 'over quic';
    });
  }
  await ada.fill('#composer', 'typing over tcp');
  await until('bob sees ada typing', async () => (await bob.textContent('#typing')).includes('ada is typing'));
  await ada.fill('#composer', '');
  await until('and stop', async () => (await bob.textContent('#typing')) === '', 3000);
});

test('voice between a WebSocket page and a WebTransport page: each hears the other', async () => {
  await voiceBothWays(ada, bob, 'lounge');
  await ada.screenshot({ path: join(SHOTS, 'websocket-voice.png') });
  await ada.click('#leave-voice');
  await until('ada left', async () => (await bob.$$('#channels .voice-user')).length === 1);
  await bob.click('#leave-voice');
});

test('the next page load goes to WebSocket first and resumes the session', async () => {
  const before = blackhole.swallowed();
  const started = Date.now();
  await ada.reload();
  await ada.waitForFunction(() => ['ready', 'resumed'].includes(document.getElementById('conn').dataset.state), null, { timeout: 10000 });
  const took = Date.now() - started;
  assert.equal(await ada.$eval('#conn', (c) => c.dataset.transport), 'websocket');
  assert.ok(took < 2000, `back after ${took} ms: no wait for WebTransport`);
  assert.equal(blackhole.swallowed(), before, 'WebTransport was not tried: WebSocket won at once');
  await until('the conversation is there', async () => (await shown(ada)).length === 2);
});

test('a browser without WebTransport connects over WebSocket at once', async () => {
  const started = Date.now();
  const carol = await person(browser, httpAddr, 'carol', {
    before: (page) => page.addInitScript(() => { delete window.WebTransport; }),
  });
  const took = Date.now() - started;
  assert.equal(await carol.$eval('#conn', (c) => c.dataset.transport), 'websocket');
  assert.ok(took < 3000, `connected after ${took} ms`);
  assert.deepEqual(carol.problems, []);
  await carol.context().close();
});
