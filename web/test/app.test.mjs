// The web app at `/`, in headless Debian Chromium, as two people would use it: both sign in
// with a development name, one creates a guild and an invite, the other joins; they chat
// (each sees every message once, in order), see each other type and change presence, get
// a mention notification, and a reload resumes without losing or doubling a message. Voice:
// with Chromium's fake microphone both join a voice channel and decode each other's Opus
// with non-zero energy, and a native participant (`quaver chat listen`) receives the
// browser's frames; then one page joins over WebRTC ("voice over WebRTC") and the two hear
// each other across the bridge. Screenshots of the main views go to target/screenshots/ (not committed).
//
// Needs the built server (QUAVER_BIN, default ../target/debug/quaver) and Chromium
// (CHROMIUM, default /usr/bin/chromium).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { BIN, startServer } from './server.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SHOTS = new URL('../../target/screenshots/', import.meta.url).pathname;

// The server runs without JWT_SECRET: it generates a development secret, so
// `POST /dev/token` mints tokens by name.
let server, browser, quicAddr, httpAddr, ada, bob;

async function person(name) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error(`[${name}] page error:`, e));
  page.on('console', (m) => { if (m.text().startsWith('quaver:')) console.error(`[${name}] ${m.text()} at ${new Date().toISOString()}`); });
  await page.goto(`http://${httpAddr}/`);
  await page.fill('#name', name);
  await page.click('#signin-dev');
  await page.waitForFunction(() => document.getElementById('conn').dataset.state === 'ready', null, { timeout: 10000 });
  return page;
}

/** The texts of the open channel's messages, in display order. */
const shown = (page) => page.$$eval('#messages .msg', (els) => els.map((e) => ({
  id: e.dataset.id, seq: Number(e.dataset.seq), text: e.querySelector('.content').textContent,
})));

async function sendText(page, text) {
  await page.fill('#composer', text);
  await page.press('#composer', 'Enter');
}

async function until(what, f, ms = 10000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    last = await f();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
}

before(async () => {
  assert.ok(existsSync(BIN), `server binary ${BIN} missing: build it first (cargo build)`);
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} missing: apt-get install chromium`);
  mkdirSync(SHOTS, { recursive: true });
  // With a WebRTC port, for the page's "voice over WebRTC".
  server = await startServer({ QUAVER_WEBRTC_LISTEN: '127.0.0.1:0' });
  [quicAddr, httpAddr] = [server.quic, server.http];
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
      '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream', '--autoplay-policy=no-user-gesture-required',
      '--allow-loopback-in-peer-connection'],
  });
});

after(async () => {
  // What the server warned about, for a failure's post-mortem.
  const warnings = (server?.log() ?? '').split('\n').filter((l) => / (WARN|ERROR) /.test(l) && !/development secret/.test(l));
  if (warnings.length) console.error(`server warnings:\n${warnings.slice(-30).join('\n')}`);
  await browser?.close();
  server?.child.kill('SIGTERM');
});

test('the dev token endpoint says what it is and refuses bad names', async () => {
  const ok = await fetch(`http://${httpAddr}/dev/token`, { method: 'POST', body: JSON.stringify({ name: 'Ada' }) });
  assert.equal(ok.status, 200);
  const body = await ok.json();
  assert.match(body.development, /generated development secret/);
  const again = await (await fetch(`http://${httpAddr}/dev/token`, { method: 'POST', body: JSON.stringify({ name: ' ada ' }) })).json();
  assert.equal(again.user_id, body.user_id, 'the same name is the same user');
  for (const bad of ['{}', '{"name": ""}', `{"name": "${'x'.repeat(33)}"}`, 'not json']) {
    const r = await fetch(`http://${httpAddr}/dev/token`, { method: 'POST', body: bad });
    assert.equal(r.status, 400, bad);
  }
});

test('two people: guild, invite, chat in order, typing, presence, a mention, a reload', async () => {
  ada = await person('ada');
  bob = await person('bob');
  // Ada creates a guild (it opens its general channel) and an invite.
  await ada.fill('#new-guild', 'Test guild');
  await ada.click('#create-guild');
  await ada.waitForSelector('#channels .channel[data-name="general"].selected');
  await ada.click('#create-invite');
  const code = await (await ada.waitForSelector('#invite-value')).textContent();
  // Bob joins with the link.
  await bob.fill('#invite-input', `http://${httpAddr}/#invite=${code}`);
  await bob.click('#join-guild');
  await bob.waitForSelector('#channels .channel[data-name="general"].selected');
  await until('ada sees bob among the members', () => ada.$('#members .member:has-text("bob")'));

  // They chat, interleaved: both see every message once, in seq order.
  const sent = [];
  for (let i = 1; i <= 5; i++) {
    await sendText(ada, `ada ${i}`); sent.push(`ada ${i}`);
    await sendText(bob, `bob ${i}`); sent.push(`bob ${i}`);
  }
  for (const page of [ada, bob]) {
    const list = await until('all ten messages', async () => { const l = await shown(page); return l.length >= 10 && l; });
    assert.equal(list.length, 10, 'each message once');
    assert.deepEqual(list.map((m) => m.seq), [...list.map((m) => m.seq)].sort((a, b) => a - b), 'in seq order');
    assert.deepEqual([...list.map((m) => m.text)].sort(), [...sent].sort());
    assert.equal(new Set(list.map((m) => m.id)).size, 10);
  }
  // The two agree on the order.
  assert.deepEqual((await shown(ada)).map((m) => m.text), (await shown(bob)).map((m) => m.text));

  // Typing: bob types, ada sees it; bob sends, it stops.
  await bob.fill('#composer', 'typing something');
  await bob.dispatchEvent('#composer', 'input');
  await until('ada sees bob typing', async () => (await ada.textContent('#typing')).includes('bob is typing'));
  await ada.screenshot({ path: join(SHOTS, 'chat-typing.png') });
  await bob.press('#composer', 'Enter');
  await until('the indicator stops on send', async () => (await ada.textContent('#typing')) === '');

  // Presence: bob goes do-not-disturb with a custom status; ada's member list shows it.
  await bob.fill('#custom-status', 'in a meeting');
  await bob.selectOption('#status-select', 'Dnd');
  await until('ada sees bob as dnd', () => ada.$('#members .member[data-status="Dnd"]:has-text("in a meeting")'));

  // A mention: bob mentions ada; she is notified and the message is highlighted.
  await sendText(bob, 'look here @ada');
  await until('a mention notification', async () => (await ada.textContent('#notif-count')) !== '0' && !(await ada.$eval('#notif-count', (e) => e.hidden)));
  await ada.click('#notif-button');
  await ada.waitForSelector('#notifications .notification.unread[data-kind="Mention"]:has-text("bob mentioned you: look here @ada")');
  await ada.screenshot({ path: join(SHOTS, 'notifications.png') });
  await ada.click('#notif-read-all');
  await until('marked read', async () => ada.$eval('#notif-count', (e) => e.hidden));
  await ada.click('#notif-button');
  await ada.waitForSelector('#messages .msg.mentions-me .mention');

  // A reload while ada keeps sending: bob's page comes back with every message once.
  const reload = bob.reload();
  for (let i = 1; i <= 3; i++) { await sendText(ada, `during reload ${i}`); sent.push(`during reload ${i}`); }
  await reload;
  await bob.waitForFunction(() => ['ready', 'resumed'].includes(document.getElementById('conn').dataset.state), null, { timeout: 10000 });
  await sendText(ada, 'after reload'); sent.push('after reload');
  sent.push('typing something', 'look here @ada');
  const after = await until('bob sees everything after the reload', async () => {
    const l = await shown(bob);
    return l.some((m) => m.text === 'after reload') && l;
  });
  assert.equal(after.length, sent.length, `each message once: ${JSON.stringify(after.map((m) => m.text))}`);
  assert.equal(new Set(after.map((m) => m.id)).size, sent.length);
  assert.deepEqual(after.map((m) => m.seq), [...after.map((m) => m.seq)].sort((a, b) => a - b));
  assert.deepEqual(after.map((m) => m.text), (await shown(ada)).map((m) => m.text), 'the same order on both');
  // Bob's status survived the reload.
  await until('ada still sees bob as dnd', () => ada.$('#members .member[data-status="Dnd"]:has-text("in a meeting")'));
  await until('ada sees herself online', () => ada.$('#members .member[data-status="Online"]:has-text("ada")'));
  await bob.screenshot({ path: join(SHOTS, 'after-reload.png') });
});

test('edit, delete, react and reply show on both sides', async () => {
  const act = async (page, text, action) => {
    const row = page.locator('#messages .msg', { hasText: text }).first();
    await row.hover();
    await row.locator(action).click();
  };
  await sendText(ada, 'to be edited');
  await until('ada sees her message', () => ada.$('#messages .msg:has-text("to be edited")'));
  ada.once('dialog', (d) => d.accept('edited text'));
  await act(ada, 'to be edited', '.act-edit');
  await until('bob sees the edit', () => bob.$('#messages .msg:has-text("edited text") .edited'));
  await act(bob, 'edited text', '.act-react');
  await until('ada sees the reaction', () => ada.$('#messages .msg:has-text("edited text") .reactions button:has-text("👍 1")'));
  await act(bob, 'edited text', '.act-reply');
  await sendText(bob, 'a reply');
  await until('ada sees the reply with its parent', () => ada.$('#messages .msg:has-text("a reply") .reply:has-text("edited text")'));
  await act(ada, 'edited text', '.act-delete');
  await until('bob sees the deletion', () => bob.$('#messages .msg.deleted'));
});

test('a network blip: the page resumes exactly and shows every message once', async () => {
  const before = (await shown(ada)).length;
  await ada.evaluate(() => window.quaverApp.client.dropConnection());
  for (let i = 1; i <= 4; i++) await sendText(bob, `while ada was away ${i}`);
  await ada.waitForFunction(() => document.getElementById('conn').dataset.state === 'resumed', null, { timeout: 15000 });
  const list = await until('ada sees the four', async () => { const l = await shown(ada); return l.filter((m) => m.text.startsWith('while ada was away')).length === 4 && l; });
  assert.equal(list.length, before + 4, 'nothing doubled');
  assert.equal(new Set(list.map((m) => m.id)).size, list.length);
  // A send made while disconnected goes out once when the connection is back.
  await ada.evaluate(() => window.quaverApp.client.dropConnection());
  await sendText(ada, 'sent during the blip');
  await until('bob gets it', async () => (await shown(bob)).some((m) => m.text === 'sent during the blip'));
  await new Promise((r) => setTimeout(r, 500));
  assert.equal((await shown(bob)).filter((m) => m.text === 'sent during the blip').length, 1);
});

test('a duplicated tab does not trade its session back and forth with the original', async () => {
  const carol = await person('carol');
  // A reload stores what a resume needs; a duplicated tab would carry it along.
  await carol.reload();
  await carol.waitForFunction(() => ['ready', 'resumed'].includes(document.getElementById('conn').dataset.state), null, { timeout: 10000 });
  const storage = await carol.evaluate(() => JSON.stringify({ ...sessionStorage }));
  // What the page would store on its next pagehide: the session it is on now.
  const live = await carol.evaluate(() => {
    const c = window.quaverApp.client;
    return JSON.stringify({ token: window.quaverApp.token, session_id: c.sessionId, lanes: c.laneSeq, channels: [...c.channelSeq] });
  });
  const copy = await carol.context().newPage();
  const states = [];
  for (const [who, p] of [['original', carol], ['copy', copy]]) {
    p.on('console', (m) => { if (m.text().startsWith('quaver: connection')) states.push(`${who} ${m.text()}`); });
  }
  await copy.addInitScript(([s, resume]) => {
    if (!sessionStorage.getItem('quaver.token')) {
      for (const [k, v] of Object.entries(JSON.parse(s))) sessionStorage.setItem(k, v);
      sessionStorage.setItem('quaver.resume', resume);
    }
  }, [storage, live]);
  await copy.goto(`http://${httpAddr}/`);
  await new Promise((r) => setTimeout(r, 4000));
  const reconnects = states.filter((x) => x.endsWith('reconnecting')).length;
  assert.ok(reconnects <= 2, `settled: ${JSON.stringify(states)}`);
  for (const p of [carol, copy]) {
    assert.ok(['ready', 'resumed'].includes(await p.evaluate(() => document.getElementById('conn').dataset.state)));
  }
  const ids = await Promise.all([carol, copy].map((p) => p.evaluate(() => window.quaverApp.client.sessionId)));
  assert.notEqual(ids[0], ids[1], 'two sessions');
  await copy.close();
  await carol.context().close();
});

test('unread and mention badges, friends and a DM', async () => {
  // Ada opens a second channel; bob stays in general and sees it unread, with a mention.
  await ada.fill('#new-channel-name', 'random');
  await ada.selectOption('#new-channel-kind', 'Text');
  await ada.click('#create-channel');
  await ada.waitForSelector('#channels .channel[data-name="random"].selected');
  await until('bob sees the channel', () => bob.$('#channels .channel[data-name="random"]'));
  await sendText(ada, 'over here @bob');
  await until('bob sees random unread with one mention', () => bob.$('#channels .channel.unread[data-name="random"] .mentions:has-text("1")'));
  await bob.click('#channels .channel[data-name="random"]');
  await until('reading clears it', async () => !(await bob.$('#channels .channel.unread[data-name="random"]')));
  // Friends: ada asks from the member list, bob accepts under Friends & DMs.
  await ada.click('#members .member:has-text("bob") button[title="add friend"]');
  await bob.click('#home-item');
  await (await until('bob sees the request', () => bob.$('#friends .friend[data-kind="IncomingRequest"] button:has-text("Accept")'))).click();
  await until('ada sees a friend', () => ada.evaluate(() => [...window.quaverApp.relationships.values()].includes('Friend')));
  // A DM from bob; ada is notified and reads it there.
  await (await bob.waitForSelector('#friends .friend[data-kind="Friend"] button:has-text("DM")')).click();
  await bob.waitForSelector('#chat-head:has-text("ada")');
  await sendText(bob, 'a direct hello');
  await until('ada is notified of the DM', () => ada.$('#notifications .notification[data-kind="DirectMessage"]'));
  await ada.click('#home-item');
  await ada.click('#dms .dm');
  await until('ada reads the DM', async () => (await shown(ada)).some((m) => m.text === 'a direct hello'));
  await ada.screenshot({ path: join(SHOTS, 'dm.png') });
  // Ada blocks bob: his next DM is refused (and says so), and unblocking lets it through.
  ada.once('dialog', (d) => d.accept());
  await ada.click('#members .member:has-text("bob") button[title="block"]');
  await until('blocked', () => ada.evaluate(() => [...window.quaverApp.relationships.values()].includes('Blocked')));
  await sendText(bob, 'are you there?');
  await until('bob is told', async () => (await bob.textContent('#toast')).includes('not sent'));
  assert.ok(!(await shown(bob)).some((m) => m.text === 'are you there?'));
  await ada.click('#members .member:has-text("bob") button[title="unblock"]');
  await until('unblocked', () => ada.evaluate(() => ![...window.quaverApp.relationships.values()].includes('Blocked')));
  // Back to the guild for the voice test.
  for (const p of [ada, bob]) await p.click('#guilds .guild');
});

test('scroll-back: a long channel loads older messages in order', async () => {
  await ada.click('#channels .channel[data-name="general"]');
  await bob.click('#channels .channel[data-name="general"]');
  // Enough for more than one page of history (50), paced under the default send limits.
  const burst = async (page, who) => {
    for (let i = 1; i <= 16; i++) { await sendText(page, `${who} filler ${i}`); await new Promise((r) => setTimeout(r, 220)); }
  };
  await Promise.all([burst(ada, 'ada'), burst(bob, 'bob')]);
  const all = await until('ada has them all', async () => { const l = await shown(ada); return l.filter((m) => m.text.includes('filler')).length === 32 && l; });
  assert.ok(all.length > 50, `${all.length} messages`);
  await bob.reload();
  await bob.waitForFunction(() => ['ready', 'resumed'].includes(document.getElementById('conn').dataset.state), null, { timeout: 10000 });
  await (await bob.waitForSelector('#older')).click();
  const back = await until('bob scrolled back to the start', async () => { const l = await shown(bob); return l.length === all.length && l; });
  assert.deepEqual(back.map((m) => m.id), all.map((m) => m.id), 'the same messages in the same order');
});

test('voice: fake microphones, decoded on the other side, heard by a native participant', async () => {
  // Ada creates a voice channel; both join it.
  await ada.fill('#new-channel-name', 'lounge');
  await ada.selectOption('#new-channel-kind', 'Voice');
  await ada.click('#create-channel');
  const channel = await (await until('bob sees the voice channel', () => bob.$('#channels .channel[data-kind="Voice"][data-name="lounge"]'))).getAttribute('data-id');
  // A native participant listens meanwhile (it joins muted and never speaks).
  const token = (await (await fetch(`http://${httpAddr}/dev/token`, { method: 'POST', body: JSON.stringify({ name: 'native' }) })).json()).token;
  // It must be a member: join with an invite from ada's page.
  const invite = await ada.evaluate(async (g) => (await window.quaverApp.client.request('Chat', { type: 'CreateInvite', guild_id: g, max_uses: 1, max_age_secs: 600 })).code,
    await ada.evaluate(() => window.quaverApp.guild));
  const cli = (args) => new Promise((resolve, reject) => execFile(BIN, ['chat', '--server', quicAddr, '--http', httpAddr, '--token', token, ...args],
    { env: { ...process.env, QUAVER_LOG: 'warn' } }, (e, stdout, stderr) => (e ? reject(new Error(`${e.message}\n${stderr}`)) : resolve(stdout))));
  await cli(['join', invite]);
  await ada.click(`#channels .channel[data-id="${channel}"]`);
  await bob.click(`#channels .channel[data-id="${channel}"]`);
  await until('both are in the channel', async () => (await ada.$$('#channels .voice-user')).length === 2);
  const listening = cli(['listen', '--channel', channel, '--seconds', '4']);
  await until('each decodes the other with energy', async () => {
    const [a, b] = await Promise.all([ada.evaluate(() => ({ ...window.quaverApp.voiceStats })), bob.evaluate(() => ({ ...window.quaverApp.voiceStats }))]);
    return a.decodedFrames > 20 && b.decodedFrames > 20 && a.decodedEnergy > 0 && b.decodedEnergy > 0 && [a, b];
  }, 15000);
  await until('a speaking indicator', async () => (await bob.evaluate(() => window.quaverApp.voiceStats.speakingSeen)) > 0);
  await ada.screenshot({ path: join(SHOTS, 'voice.png') });
  const heard = await listening;
  const ownSlots = await Promise.all([ada, bob].map((p) => p.evaluate(() => window.quaverApp.voiceSession.slot)));
  const frames = new Map(heard.split('\n').filter((l) => l.startsWith('frames\t')).map((l) => l.split('\t').slice(1).map(Number)));
  for (const slot of ownSlots) assert.ok((frames.get(slot) ?? 0) > 20, `the native participant heard slot ${slot}: ${heard}`);
  // A network blip while in voice: ada's page joins again and bob hears her again.
  const before = await bob.evaluate(() => window.quaverApp.voiceStats.decodedFrames);
  await ada.evaluate(() => window.quaverApp.client.dropConnection());
  await until('ada is back in the channel for bob', async () => {
    const again = await bob.$('#channels .voice-user:has-text("ada")');
    const now = await bob.evaluate(() => window.quaverApp.voiceStats.decodedFrames);
    return again && now > before + 20;
  }, 15000);
  // Mute: ada's frames stop reaching bob.
  await ada.click('#mute');
  await new Promise((r) => setTimeout(r, 1500));
  console.error('DEBUG', await ada.evaluate(() => JSON.stringify({ muted: window.quaverApp.voiceSession?.muted, me: window.quaverApp.me.id, state: window.quaverApp.client.state })),
    await bob.evaluate(() => JSON.stringify([...window.quaverApp.voice].map(([c, m]) => [c, [...m.values()]]))),
    await bob.evaluate(() => document.getElementById('channels').innerText));
  await until('bob sees ada muted', () => bob.$('#channels .voice-user:has-text("ada"):has-text("🔇")'));
  await ada.click('#leave-voice');
  await until('ada left', async () => (await bob.$$('#channels .voice-user')).length === 1);
});

test("voice over WebRTC: ada's page on an RTCPeerConnection, bob's on datagrams, hear each other", async () => {
  // Bob is still in the lounge (on datagrams); ada ticks "voice over WebRTC" and joins it.
  const channel = await (await ada.$('#channels .channel[data-kind="Voice"][data-name="lounge"]')).getAttribute('data-id');
  const stats = (p) => p.evaluate(() => ({ ...window.quaverApp.voiceStats }));
  const [a0, b0] = [await stats(ada), await stats(bob)];
  await ada.check('#voice-webrtc');
  await ada.click(`#channels .channel[data-id="${channel}"]`);
  await until('ada is in the channel for bob', () => bob.$('#channels .voice-user:has-text("ada")'));
  assert.match(await ada.textContent('#voice-where'), /WebRTC/);
  await until('each decodes the other with energy', async () => {
    const [a, b] = [await stats(ada), await stats(bob)];
    return a.decodedFrames > a0.decodedFrames + 20 && a.decodedEnergy > a0.decodedEnergy
      && b.decodedFrames > b0.decodedFrames + 20 && b.decodedEnergy > b0.decodedEnergy && [a, b];
  }, 15000);
  // Ada's page was told which of its tracks carries bob.
  const bobSlot = await bob.evaluate(() => window.quaverApp.voiceSession.slot);
  const tracks = await ada.evaluate(() => [...window.quaverApp.voiceSession.trackSlots]);
  assert.ok(tracks.some(([, slot]) => slot === bobSlot), `a VoiceTrack for bob's slot ${bobSlot}: ${JSON.stringify(tracks)}`);
  // Muting bob for herself silences the track that carries him (found by VoiceTrack), and only it.
  const bobsTrack = (slot) => ada.evaluate((slot) => {
    const v = window.quaverApp.voiceSession;
    return [...v.trackSlots].filter(([, s]) => s === slot).map(([mid]) => v.audioByMid.get(mid)?.muted);
  }, slot);
  assert.deepEqual(await bobsTrack(bobSlot), [false]);
  await ada.click('#channels .voice-user:has-text("bob") .mute-for-me');
  await until('bob muted for ada', () => ada.$('#channels .voice-user:has-text("bob"):has-text("muted for you")'));
  assert.deepEqual(await bobsTrack(bobSlot), [true], 'his track is muted');
  await ada.click('#channels .voice-user:has-text("bob") .mute-for-me');
  assert.deepEqual(await bobsTrack(bobSlot), [false], 'and heard again');
  await until('bob sees ada speaking', () => bob.$('#channels .voice-user.speaking:has-text("ada")'));
  // Mute stops what bob decodes from her.
  await ada.click('#mute');
  await until('bob sees ada muted', () => bob.$('#channels .voice-user:has-text("ada"):has-text("🔇")'));
  await new Promise((r) => setTimeout(r, 500));
  const muted = await bob.evaluate(() => window.quaverApp.voiceStats.receivedFrames);
  await new Promise((r) => setTimeout(r, 1000));
  assert.equal(await bob.evaluate(() => window.quaverApp.voiceStats.receivedFrames), muted, 'nothing from a muted WebRTC participant');
  await ada.click('#leave-voice');
  await until('ada left', async () => (await bob.$$('#channels .voice-user')).length === 1);
  await ada.uncheck('#voice-webrtc');
});
