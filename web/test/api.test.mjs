// The server API seen from the web app, in headless Debian Chromium: what a backend does
// through /api/v1 shows up live on the page of the person it concerns — a guild made for
// her, a bot's message in it, an edit and a delete; a disconnect the page reconnects from by
// itself; a removal and a token revocation that sign her out, saying why.
//
// Needs the built server (QUAVER_BIN, default ../target/debug/quaver) and Chromium
// (CHROMIUM, default /usr/bin/chromium).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { BIN, startServerWithKey, apiCaller } from './server.mjs';
import { CHROMIUM_ARGS, until, person, shown } from './people.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SHOTS = new URL('../../target/screenshots/', import.meta.url).pathname;

let server, browser, api, key, ada;

/** One API call ({ status, body }), and one that must answer a status. */
const call = (method, path, body) => apiCaller(api, key).call(method, path, body);
const ok = (status, method, path, body) => apiCaller(api, key).ok(status, method, path, body);

before(async () => {
  assert.ok(existsSync(BIN), `server binary ${BIN} missing: build it first (cargo build)`);
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} missing: apt-get install chromium`);
  mkdirSync(SHOTS, { recursive: true });
  ({ server, api, key } = await startServerWithKey());
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
});

after(async () => {
  // The browser and the server go whatever the checks say (a failed check must not leave
  // them holding the test process open).
  try {
    // Only the sign-out the test caused may be said on the console.
    if (ada) assert.deepEqual(ada.problems.filter((p) => !/ClosedError|4019|4031/.test(p)), [], 'no page errors and no console errors');
  } finally {
    await browser?.close();
    server?.child.kill('SIGTERM');
  }
});

test("a backend's guild, bot message, edit and delete appear live on the page", async () => {
  ada = await person(browser, server.http, 'ada');
  const adaId = await ada.evaluate(() => window.quaverApp.me.id);
  await ok(200, 'PUT', '/users/900', { name: 'Deploy bot' });
  const g = await ok(201, 'POST', '/guilds', { owner_id: adaId, name: 'Operations' });
  await ok(201, 'PUT', `/guilds/${g.id}/members/900`);
  // The guild appears in her rail without a reload.
  // The rail may be redrawn between finding the item and clicking it (the membership event
  // follows the guild's): click by selector, which finds the element again.
  await until('the guild in the rail', () => ada.$(`#guilds .guild[data-id="${g.id}"]`));
  await ada.click(`#guilds .guild[data-id="${g.id}"]`);
  await ada.waitForSelector('#channels .channel[data-name="general"]');
  await ada.click('#channels .channel[data-name="general"]');
  const details = await ok(200, 'GET', `/guilds/${g.id}`);
  const channel = details.channels.find((c) => c.kind === 'text').id;
  const posted = await ok(201, 'POST', `/channels/${channel}/messages`, { author_id: '900', content: 'deploy 4711 is live' });
  await until('the bot message on the page', async () => (await shown(ada)).some((m) => m.text === 'deploy 4711 is live'));
  await until('with its author', () => ada.$('#messages .msg:has-text("Deploy bot")'));
  await ada.screenshot({ path: join(SHOTS, 'api-bot-message.png') });
  await ok(200, 'PATCH', `/channels/${channel}/messages/${posted.id}`, { content: 'deploy 4711 rolled back' });
  await until('the edit on the page', async () => (await shown(ada)).some((m) => m.text.startsWith('deploy 4711 rolled back')));
  await ok(204, 'DELETE', `/channels/${channel}/messages/${posted.id}`);
  await until('the delete on the page', async () => !(await shown(ada)).some((m) => m.text.startsWith('deploy 4711')));
  // She sees the bot among the members, offline (it never connected).
  await until('the bot among the members', () => ada.$('#members .member:has-text("Deploy bot")'));
});

test('a channel made while the page is loading a guild it just joined is not lost', async () => {
  // The page loads a new guild's snapshot when it hears of the guild; hold that answer, and
  // create a channel once the snapshot was taken: its event arrives before the guild is known.
  await ada.evaluate(() => {
    const s = window.quaverApp.client.current();
    const fetch = s.fetch.bind(s);
    s.fetch = async (req) => {
      const answer = await fetch(req);
      if (req.type === 'Guilds') {
        window.__guildsAnswered = (window.__guildsAnswered ?? 0) + 1;
        await new Promise((r) => setTimeout(r, 1500));
      }
      return answer;
    };
  });
  const adaId = await ada.evaluate(() => window.quaverApp.me.id);
  const g = await ok(201, 'POST', '/guilds', { owner_id: adaId, name: 'Quick' });
  await until('the page took the snapshot', () => ada.evaluate(() => window.__guildsAnswered > 0));
  const late = await ok(201, 'POST', `/guilds/${g.id}/channels`, { kind: 'text', name: 'late' });
  await until('the guild in the rail', () => ada.$(`#guilds .guild[data-id="${g.id}"]`));
  await ada.click(`#guilds .guild[data-id="${g.id}"]`);
  await until('the late channel listed', () => ada.$(`#channels .channel[data-id="${late.id}"]`), 5000);
});

test("a backend's avatar shows as a picture; a timeout closes the composer until lifted", async () => {
  // The picture's host, answered inside the browser (the test has no network).
  const svg = '<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="64" height="64" fill="#2a7"/></svg>';
  await ada.context().route('https://avatars.test/**', (r) => r.fulfill({ status: 200, contentType: 'image/svg+xml', body: svg }));
  const adaId = await ada.evaluate(() => window.quaverApp.me.id);
  const bad = await call('PUT', '/users/900', { name: 'Deploy bot', avatar_url: 'javascript:alert(1)' });
  assert.equal(bad.status, 400);
  assert.equal(bad.body.field, 'avatar_url');
  await ok(200, 'PUT', '/users/900', { name: 'Deploy bot', avatar_url: 'https://avatars.test/bot.svg' });
  // A guild the bot owns, with her in it: the bot can time her out.
  const g = await ok(201, 'POST', '/guilds', { owner_id: '900', name: 'Bot hall' });
  await ok(201, 'PUT', `/guilds/${g.id}/members/${adaId}`);
  await until('the bot hall in the rail', () => ada.$(`#guilds .guild[data-id="${g.id}"]`));
  await ada.click(`#guilds .guild[data-id="${g.id}"]`);
  await ada.waitForSelector('#channels .channel[data-name="general"]');
  await ada.click('#channels .channel[data-name="general"]');
  await until('the bot with its picture', () => ada.$eval('#members .member:has-text("Deploy bot")', (m) => {
    const img = m.querySelector('img');
    return img && img.complete && img.naturalWidth > 0 && img.getAttribute('src') === 'https://avatars.test/bot.svg';
  }).catch(() => false));
  await ok(204, 'PUT', `/guilds/${g.id}/members/${adaId}/timeout`, { seconds: 600, reason: 'test' });
  await until('the composer closed', () => ada.$eval('#composer', (c) => c.disabled && c.placeholder.startsWith('You are timed out here until')));
  await ada.screenshot({ path: join(SHOTS, 'timed-out.png') });
  await ok(204, 'DELETE', `/guilds/${g.id}/members/${adaId}/timeout`);
  await until('the composer open again', () => ada.$eval('#composer', (c) => !c.disabled && c.placeholder === 'Message #general'));
});

test('a disconnect is reconnected from; a removal and a revocation sign her out, saying why', async () => {
  const adaId = await ada.evaluate(() => window.quaverApp.me.id);
  const states = [];
  await ada.exposeFunction('recordState', (s) => states.push(s));
  await ada.evaluate(() => new MutationObserver(() => window.recordState(document.getElementById('conn').dataset.state))
    .observe(document.getElementById('conn'), { attributes: true, attributeFilter: ['data-state'] }));
  const d = await ok(202, 'POST', `/users/${adaId}/disconnect`, { reason: 'permissions changed' });
  assert.equal(d.close_code, 1008);
  await until('reconnected by itself', () => states.includes('reconnecting') || states.includes('connecting'));
  await ada.waitForFunction(() => document.getElementById('conn').dataset.state === 'ready', null, { timeout: 10000 });
  // A removal: back to the sign-in page, with the backend's reason.
  await ok(202, 'POST', `/users/${adaId}/disconnect`, { reconnect: false, reason: 'Your account was suspended' });
  await until('signed out with the reason', async () => (await ada.textContent('#signin-error')).includes('Your account was suspended'));
  assert.equal(await ada.isVisible('#signin'), true);
  // Signed in again, then her tokens are revoked: signed out again, told so.
  await ada.fill('#name', 'ada');
  await ada.click('#signin-dev');
  await ada.waitForFunction(() => document.getElementById('conn').dataset.state === 'ready', null, { timeout: 10000 });
  // Tokens issued up to now; the one she holds was minted within this second, so "now" + 1 s.
  await ok(201, 'POST', `/users/${adaId}/revocations`, { issued_before: Date.now() + 1000 });
  await until('signed out: revoked', async () => (await ada.textContent('#signin-error')).includes('revoked'));
  await ada.screenshot({ path: join(SHOTS, 'api-revoked.png') });
});
