// The example backend (examples/ops-backend, on @quaver/server) driven as its operators would,
// with two people in headless Chromium watching: a member added, a deploy announced by the
// bot (once, though the hook fires twice), someone moved into the Standup voice channel (her
// page follows and keeps sending sound) and then out of voice (her page ends it), a ban (the
// guild leaves the banned person's page).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { BIN, startServerWithKey } from './server.mjs';
import { CHROMIUM_ARGS, until, person, shown } from './people.mjs';
import { Quaver } from '../../sdk/node/index.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SHOTS = new URL('../../target/screenshots/', import.meta.url).pathname;
const EXAMPLE = new URL('../../examples/ops-backend/server.mjs', import.meta.url).pathname;

let server, browser, backend, backendUrl, ada, bob, api, key, log = '';

/** A call to the example backend: its JSON answer (a failure if not 200). */
async function ops(method, path, body) {
  const r = await fetch(`${backendUrl}${path}`, { method, headers: { 'content-type': 'application/json' }, body: body ? JSON.stringify(body) : undefined });
  const json = await r.json();
  assert.equal(r.status, 200, `${method} ${path}: ${JSON.stringify(json)}\n${log}`);
  return json;
}

const idOf = (page) => page.evaluate(() => window.quaverApp.me.id);

before(async () => {
  assert.ok(existsSync(BIN), `server binary ${BIN} missing: build it first (cargo build)`);
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} missing: apt-get install chromium`);
  mkdirSync(SHOTS, { recursive: true });
  ({ server, api, key } = await startServerWithKey());
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  ada = await person(browser, server.http, 'ada');
  bob = await person(browser, server.http, 'bob');
  backend = spawn(process.execPath, [EXAMPLE], {
    env: { ...process.env, QUAVER_API_URL: api.replace(/\/api\/v1$/, ''), QUAVER_API_KEY: key, OWNER_ID: await idOf(ada) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  backend.stdout.on('data', (d) => { log += d; });
  backend.stderr.on('data', (d) => { log += d; });
  backendUrl = (await until('the example backend listening', () => log.match(/listening on (http:\/\/\S+)/), 15000))[1];
});

after(async () => {
  try {
    for (const p of [ada, bob]) if (p) assert.deepEqual(p.problems, [], 'no page errors and no console errors');
  } finally {
    backend?.kill('SIGTERM');
    await browser?.close();
    server?.child.kill('SIGTERM');
  }
});

test('an example backend adds, announces, moves and bans — each seen live in the browser', async () => {
  const g = await ops('GET', '/guild');
  // The guild it made for ada is on her page; bob is added and sees it too.
  await until('ada has the guild', () => ada.$(`#guilds .guild[data-id="${g.guild.id}"]`));
  await ops('POST', '/members', { user_id: await idOf(bob) });
  await until('bob has the guild', () => bob.$(`#guilds .guild[data-id="${g.guild.id}"]`));
  for (const page of [ada, bob]) {
    await page.click(`#guilds .guild[data-id="${g.guild.id}"]`);
    await page.click(`#channels .channel[data-id="${g.general}"]`);
  }
  // A deploy hook that fires twice: one message, from the bot.
  const first = await ops('POST', '/deploys', { version: '4711' });
  const again = await ops('POST', '/deploys', { version: '4711' });
  assert.equal(again.id, first.id, 'the retry got the first answer');
  for (const page of [ada, bob]) {
    await until('the deploy message', async () => (await shown(page)).some((m) => m.text === 'Deploy 4711 is live'));
  }
  await new Promise((r) => setTimeout(r, 300));
  assert.equal((await shown(bob)).filter((m) => m.text === 'Deploy 4711 is live').length, 1, 'once');
  await bob.screenshot({ path: join(SHOTS, 'example-deploy.png') });

  // Ada joins the lobby; the backend moves her to Standup: her page follows her there and
  // keeps sending her (fake) microphone; bob sees her in Standup.
  await ada.click(`#channels .channel[data-id="${g.lobby}"]`);
  const adaId = await idOf(ada);
  const inChannel = (page, channel) => page.$(`#channels li:has(> .channel[data-id="${channel}"]) .voice-user[data-user="${adaId}"]`);
  await until('ada in the lobby', () => inChannel(bob, g.lobby));
  await until('ada sending sound', async () => (await ada.evaluate(() => window.quaverApp.voiceStats.sentFrames)) > 10, 15000);
  const moved = await ops('POST', '/standup', { user_id: adaId });
  assert.equal(moved.carried_out, 'here');
  await until('bob sees ada in Standup', () => inChannel(bob, g.standup));
  await until("ada's page says Standup", async () => (await ada.textContent('#voice-where')).includes('Standup'));
  await until('ada shown in Standup on her page', () => ada.$(`#channels .channel.voice.selected[data-id="${g.standup}"]`));
  const sent = await ada.evaluate(() => window.quaverApp.voiceStats.sentFrames);
  await until('still sending after the move', async () => (await ada.evaluate(() => window.quaverApp.voiceStats.sentFrames)) > sent + 20, 10000);
  await ada.screenshot({ path: join(SHOTS, 'example-moved.png') });
  // Out of voice by the backend (the SDK directly): her page ends voice and says so.
  await new Quaver({ url: api, key }).voice.disconnect(g.guild.id, adaId);
  await until('voice over on her page', async () => !(await ada.isVisible('#voicebar')), 5000);
  await until('nobody in Standup for bob', async () => !(await inChannel(bob, g.standup)));

  // A ban: the guild leaves bob's page.
  await ops('POST', '/bans', { user_id: await idOf(bob), reason: 'spam' });
  await until('the guild gone from bob', async () => !(await bob.$(`#guilds .guild[data-id="${g.guild.id}"]`)));
  // The backend passes Quaver's refusals on, typed: banning the owner is refused.
  const r = await fetch(`${backendUrl}/bans`, { method: 'POST', body: JSON.stringify({ user_id: adaId }) });
  const refusal = await r.json();
  assert.equal(r.status, 409, JSON.stringify(refusal));
  assert.equal(refusal.code, 'OWNER');
});
