// The web app on a two-node cluster (REDIS_URL and a PostgreSQL DATABASE_URL; required in
// CI): ada's page is on node a, in a voice channel node a serves; bob's page is on node b, in
// one node b serves. The backend moves ada to bob's channel: node a takes her out and tells
// her page (`VoiceMoved`), which follows to node b by itself — she hears bob there.
//
// Needs the built server (QUAVER_BIN, default ../target/debug/quaver) and Chromium
// (CHROMIUM, default /usr/bin/chromium).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { BIN, apiCaller, startServer, startServerWithKey } from './server.mjs';
import { CHROMIUM_ARGS, until, person } from './people.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

let browser;
const children = [];

before(async () => {
  assert.ok(existsSync(BIN), `server binary ${BIN} missing: build it first (cargo build)`);
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} missing: apt-get install chromium`);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
});

after(async () => {
  await browser?.close();
  for (const c of children) c.kill('SIGTERM');
});

test('a backend moves a participant to a voice channel another node serves: the page follows', async (t) => {
  const { REDIS_URL, DATABASE_URL } = process.env;
  if (!REDIS_URL || !DATABASE_URL?.startsWith('postgres')) {
    assert.ok(process.env.CI !== 'true', 'CI needs REDIS_URL and a PostgreSQL DATABASE_URL for the cluster app test');
    t.skip('set REDIS_URL and DATABASE_URL=postgres://… to run');
    return;
  }
  // Both nodes on one development secret (each reads it from its data directory), so a
  // token either one mints is good on the other, as in a real cluster with JWT_SECRET.
  const secret = randomBytes(48).toString('hex');
  const dataDir = () => {
    const d = mkdtempSync(join(tmpdir(), 'quaver-cluster-app-'));
    writeFileSync(join(d, 'dev-jwt-secret'), secret);
    return d;
  };
  const prefix = `appcluster${process.pid}${Date.now()}:`;
  const cluster = (name) => ({ DATABASE_URL, REDIS_URL, QUAVER_REDIS_PREFIX: prefix, QUAVER_NODE_NAME: `${name}-${process.pid}`, QUAVER_DATA_DIR: dataDir() });
  // One after the other: the first applies the migrations.
  const { server: a, api, key } = await startServerWithKey(['admin'], cluster('app-a'));
  children.push(a.child);
  const b = await startServer(cluster('app-b'));
  children.push(b.child);
  const { call, ok } = apiCaller(api, key);
  // Names unique to this run (the database is shared with other runs).
  const tag = `${process.pid % 10000}${Date.now() % 10000}`;
  const ada = await person(browser, a.http, `ada${tag}`);
  const bob = await person(browser, b.http, `bob${tag}`);
  const [adaId, bobId] = await Promise.all([ada, bob].map((p) => p.evaluate(() => window.quaverApp.me.id)));
  const g = await ok(201, 'POST', '/guilds', { owner_id: adaId, name: 'Two nodes' });
  await ok(201, 'PUT', `/guilds/${g.id}/members/${bobId}`);
  const talk = (await ok(201, 'POST', `/guilds/${g.id}/channels`, { kind: 'voice', name: 'talk' })).id;
  const stage = (await ok(201, 'POST', `/guilds/${g.id}/channels`, { kind: 'voice', name: 'stage' })).id;
  // (Clicks by selector: the lists are redrawn as events arrive.)
  for (const p of [ada, bob]) {
    await until('the guild in the rail', () => p.$(`#guilds .guild[data-id="${g.id}"]`));
    await p.click(`#guilds .guild[data-id="${g.id}"]`);
  }
  // Bob homes `stage` on node b, ada `talk` on node a.
  await until('stage for bob', () => bob.$(`#channels .channel[data-id="${stage}"]`));
  await bob.click(`#channels .channel[data-id="${stage}"]`);
  await until('bob in stage', () => bob.evaluate((c) => window.quaverApp.voiceSession?.channel === c && window.quaverApp.voiceStats.joins > 0, stage));
  await until('talk for ada', () => ada.$(`#channels .channel[data-id="${talk}"]`));
  await ada.click(`#channels .channel[data-id="${talk}"]`);
  await until('ada in talk', () => ada.evaluate((c) => window.quaverApp.voiceSession?.channel === c && window.quaverApp.voiceStats.joins > 0, talk));
  const joinsBefore = await ada.evaluate(() => window.quaverApp.voiceStats.joins);
  // The move, sent to node a's API: carried out where ada's voice is.
  const moved = await call('PATCH', `/guilds/${g.id}/voice/${adaId}`, { channel_id: stage });
  assert.ok([200, 202].includes(moved.status), JSON.stringify(moved));
  await until('ada followed to stage', () => ada.evaluate(([c, n]) => window.quaverApp.voiceSession?.channel === c
    && window.quaverApp.voiceStats.joins > n, [stage, joinsBefore]), 15000);
  await until('she was told', async () => (await ada.textContent('#toasts')).includes('moved to another voice channel'));
  // On node b, with bob: each hears the other.
  const heard = (p) => p.evaluate(() => window.quaverApp.voiceStats.decodedFrames);
  const [a0, b0] = [await heard(ada), await heard(bob)];
  await until('ada and bob hear each other in stage', async () => (await heard(ada)) > a0 + 20 && (await heard(bob)) > b0 + 20, 15000);
  await until('bob sees ada in stage', () => bob.$(`#channels .voice-user:has-text("ada${tag}")`));
  const inTalk = await ok(200, 'GET', `/voice/channels/${talk}/participants`);
  assert.deepEqual(inTalk.participants, [], 'out of talk');
  for (const p of [ada, bob]) assert.deepEqual(p.problems, [], 'no page errors and no console errors');
});
