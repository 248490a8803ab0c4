// The web app in a second engine: Debian's Firefox ESR (its own WebTransport, WebCodecs and
// WebRTC), driven over WebDriver BiDi by puppeteer-core, beside a Chromium user — sign in,
// join by invite link, chat both ways in order, typing, presence as soon as they share a
// guild and as it changes, voice over datagrams both ways (Opus decoded with energy), and
// voice over WebRTC from Firefox to a node listening on every interface (Firefox offers no
// loopback candidate: the node's answer names each of its addresses); and a Firefox without
// WebTransport falling back to the WebSocket framing by itself.
//
// Needs the built server (QUAVER_BIN), Chromium (CHROMIUM) and Firefox (FIREFOX, default
// /usr/bin/firefox-esr).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import puppeteer from 'puppeteer-core';
import { BIN, startServer } from './server.mjs';
import { CHROMIUM_ARGS, until, person, shown, sendText, createGuild, inviteCode, createChannel } from './people.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const FIREFOX = process.env.FIREFOX ?? '/usr/bin/firefox-esr';
const SHOTS = new URL('../../target/screenshots/', import.meta.url).pathname;

let server, chrome, firefox, ada, fox;

before(async () => {
  assert.ok(existsSync(BIN), `server binary ${BIN} missing: build it first (cargo build)`);
  assert.ok(existsSync(FIREFOX), `${FIREFOX} missing: apt-get install firefox-esr`);
  // WebRTC on every interface: Firefox reaches it on the machine's own address.
  server = await startServer({ QUAVER_WEBRTC_LISTEN: '0.0.0.0:0' });
  chrome = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  firefox = await puppeteer.launch({
    browser: 'firefox', executablePath: FIREFOX, headless: true,
    extraPrefsFirefox: {
      // A fake microphone, no permission prompt, and audio that runs without a sound device.
      'media.navigator.streams.fake': true, 'media.navigator.permission.disabled': true,
      'media.cubeb.force_mock_context': true, 'media.autoplay.default': 0,
    },
  });
});

after(async () => {
  try {
    if (fox) assert.deepEqual(fox.problems, [], 'no page errors in Firefox');
    if (ada) assert.deepEqual(ada.problems, [], 'no page errors in Chromium');
  } finally {
    await firefox?.close();
    await chrome?.close();
    server?.child.kill('SIGTERM');
  }
});

/** Firefox's page, with puppeteer's API under the names the tests use. */
async function foxPage(name, code, before = null) {
  const page = await firefox.newPage();
  if (before) await before(page);
  await page.setViewport({ width: 1280, height: 800 });
  page.problems = [];
  page.on('pageerror', (e) => { page.problems.push(String(e)); console.error(`[${name}] page error:`, e); });
  page.on('console', (m) => {
    if (m.text().startsWith('quaver:')) console.error(`[${name}] ${m.text()}`);
    if (m.type() === 'error') page.problems.push(m.text());
  });
  await page.goto(`http://${server.http}/#invite=${code}`);
  await page.waitForSelector('#name', { visible: true });
  await page.type('#name', name);
  await page.click('#signin-dev');
  await page.waitForFunction(() => ['ready', 'resumed'].includes(document.getElementById('conn').dataset.state), { timeout: 15000 });
  return page;
}

const foxShown = (page) => page.evaluate(() => [...document.querySelectorAll('#messages .msg')].map((e) => ({
  seq: Number(e.dataset.seq), text: e.querySelector('.content')?.textContent ?? '',
})));
async function foxSend(page, text) {
  await page.click('#composer');
  await page.type('#composer', text);
  await page.keyboard.press('Enter');
}
const stats = (p) => p.evaluate(() => ({ ...window.quaverApp.voiceStats }));

/** Clicks `selector` in Firefox, again if the element was redrawn between puppeteer finding
 * and clicking it (the channel list is redrawn on every voice change: CI saw "Node is
 * detached from document" once), as a person's second click would. */
async function foxClick(page, selector) {
  for (let attempt = 1; ; attempt++) {
    try {
      await page.click(selector);
      return;
    } catch (e) {
      if (attempt >= 5 || !/detached/i.test(String(e?.message))) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

test('a Firefox user and a Chromium user: invite, chat, typing, presence', async () => {
  ada = await person(chrome, server.http, 'ada');
  await createGuild(ada, 'Two engines');
  const code = await inviteCode(ada);
  fox = await foxPage('fox', code);
  await fox.waitForSelector('#join-invite', { visible: true });
  await fox.click('#join-invite');
  await fox.waitForSelector('#channels .channel[data-name="general"].selected');
  // Presence at once, both ways.
  await until('ada sees fox online', () => ada.$('#members .member[data-status="Online"]:has-text("fox")'), 3000);
  await until('fox sees ada online', () => fox.$('#members .member[data-status="Online"][data-user]'), 3000);
  // Chat both ways, one order.
  for (let i = 1; i <= 3; i++) {
    await sendText(ada, `from chromium ${i}`);
    await foxSend(fox, `from firefox ${i}`);
  }
  const a = await until('ada has six', async () => { const l = await shown(ada); return l.length >= 6 && l; });
  const f = await until('fox has six', async () => { const l = await foxShown(fox); return l.length >= 6 && l; });
  assert.equal(a.length, 6);
  assert.deepEqual(f.map((m) => m.text), a.map((m) => m.text), 'the same messages in the same order');
  // Typing from Firefox reaches Chromium.
  await fox.type('#composer', 'writing');
  await until('ada sees fox typing', async () => (await ada.textContent('#typing')).includes('fox is typing'));
  await fox.keyboard.press('Enter');
  // A status change from Firefox.
  await fox.click('#status-button');
  await fox.select('#status-select', 'Idle');
  await fox.click('#status-save');
  await until('ada sees fox idle', () => ada.$('#members .member[data-status="Idle"]:has-text("fox")'));
  await fox.screenshot({ path: join(SHOTS, 'firefox-chat.png') });
});

test('voice between Firefox and Chromium over datagrams, both ways', async () => {
  const channel = await createChannel(ada, 'lounge', 'Voice');
  await fox.waitForSelector(`#channels .channel[data-id="${channel}"]`);
  await ada.click(`#channels .channel[data-id="${channel}"]`);
  await foxClick(fox, `#channels .channel[data-id="${channel}"]`);
  await until('both in the channel', async () => (await ada.$$('#channels .voice-user')).length === 2);
  await until('each decodes the other with energy', async () => {
    const [a, f] = [await stats(ada), await stats(fox)];
    return a.decodedFrames > 20 && f.decodedFrames > 20 && a.decodedEnergy > 0 && f.decodedEnergy > 0 && [a, f];
  }, 20000);
  assert.equal(await fox.evaluate(() => document.getElementById('voice-problem').hidden), true, 'no voice problem in Firefox');
  await fox.click('#leave-voice');
  await until('fox left', async () => (await ada.$$('#channels .voice-user')).length === 1);
});

test('voice over WebRTC from Firefox, to a node on every interface', async () => {
  const channel = await (await ada.$('#channels .channel[data-kind="Voice"][data-name="lounge"]')).getAttribute('data-id');
  const [a0, f0] = [await stats(ada), await stats(fox)];
  await fox.click('#settings-button');
  await fox.click('#voice-webrtc');
  await fox.click('#dialog-buttons button.primary');
  await foxClick(fox, `#channels .channel[data-id="${channel}"]`);
  await until('fox is in the channel over WebRTC', async () => /WebRTC/.test(await fox.evaluate(() => document.getElementById('voice-where').textContent)), 10000);
  await until('each hears the other', async () => {
    const [a, f] = [await stats(ada), await stats(fox)];
    return a.decodedFrames > a0.decodedFrames + 20 && a.decodedEnergy > a0.decodedEnergy && f.receivedFrames > f0.receivedFrames + 20 && [a, f];
  }, 20000);
  assert.match(await fox.evaluate(() => document.getElementById('voice-where').textContent), /WebRTC/, 'no fallback was needed');
  await fox.click('#leave-voice');
});

test('a Firefox without WebTransport falls back to WebSocket and chats with Chromium', async () => {
  const code = await inviteCode(ada);
  const page = await foxPage('fox2', code, (p) => p.evaluateOnNewDocument(() => { delete window.WebTransport; }));
  try {
    assert.equal(await page.evaluate(() => document.getElementById('conn').dataset.transport), 'websocket');
    await page.waitForSelector('#join-invite', { visible: true });
    await page.click('#join-invite');
    await page.waitForSelector('#channels .channel[data-name="general"].selected');
    await foxSend(page, 'firefox over tcp');
    await until('ada sees it', async () => (await shown(ada)).some((m) => m.text === 'firefox over tcp'));
    assert.deepEqual(page.problems, [], 'no page errors in Firefox over WebSocket');
  } finally {
    await page.close();
  }
});
