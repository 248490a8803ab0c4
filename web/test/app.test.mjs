// The web app at `/`, in headless Debian Chromium, as people would use it — only through
// what the page shows: sign in with a development name, create a guild, invite by link
// (one click to join), chat (each message once, in order, through a reload that resumes),
// typing that stops when the draft is emptied, presence that is right the moment someone
// joins, inline edit, delete with confirmation, reactions from a picker, replies, unread and
// mention badges and a "new messages" line, friends found by name, DMs, notifications that
// count down as they are read and stay quiet on do-not-disturb; narrow screens and the dark
// theme; axe-core finds no serious or critical problem on the sign-in page, a guild channel,
// a DM and voice, in both themes. Voice: fake microphones decoded on the other side, a
// native participant hearing the browser, leave/join 20 times hearing each time, over
// datagrams and over WebRTC; WebRTC that cannot connect falls back to datagrams; sound the
// browser will not start is said. Screenshots go to target/screenshots/ (not committed).
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
import {
  CHROMIUM_ARGS, until, person, signIn, shown, sendText, createGuild, inviteCode, joinByLink, createChannel, inSettings, accessible,
} from './people.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SHOTS = new URL('../../target/screenshots/', import.meta.url).pathname;

// The server runs without JWT_SECRET: it generates a development secret, so
// `POST /dev/token` mints tokens by name.
let server, browser, quicAddr, httpAddr, ada, bob;

const me = (page) => page.evaluate(() => window.quaverApp.me.id);
const stats = (p) => p.evaluate(() => ({ ...window.quaverApp.voiceStats }));

before(async () => {
  assert.ok(existsSync(BIN), `server binary ${BIN} missing: build it first (cargo build)`);
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} missing: apt-get install chromium`);
  mkdirSync(SHOTS, { recursive: true });
  // With a WebRTC port, for "voice over WebRTC".
  server = await startServer({ QUAVER_WEBRTC_LISTEN: '127.0.0.1:0' });
  [quicAddr, httpAddr] = [server.quic, server.http];
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
});

after(async () => {
  // What the server warned about, for a failure's post-mortem.
  const warnings = (server?.log() ?? '').split('\n').filter((l) => / (WARN|ERROR) /.test(l) && !/development secret/.test(l));
  if (warnings.length) console.error(`server warnings:\n${warnings.slice(-30).join('\n')}`);
  try {
    for (const p of [ada, bob]) if (p) assert.deepEqual(p.problems, [], 'no page errors and no console errors');
  } finally {
    await browser?.close();
    server?.child.kill('SIGTERM');
  }
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
  assert.deepEqual(await (await fetch(`http://${httpAddr}/dev/token`)).json(), { available: true });
});

test('the sign-in page shows only sign-in, explains itself without JWTs, and is accessible in both themes', async () => {
  for (const colorScheme of ['light', 'dark']) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, colorScheme });
    const page = await context.newPage();
    await page.goto(`http://${httpAddr}/`);
    await page.waitForSelector('#signin-dev-box:not([hidden])');
    assert.equal(await page.isVisible('#app'), false, 'the app is not drawn under the sign-in card');
    assert.equal(await page.isVisible('#token'), false, 'the access key is tucked away in development');
    assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), colorScheme, 'the system theme is followed');
    const text = await page.textContent('#signin');
    assert.doesNotMatch(text, /JWT|token/i, 'no jargon');
    await accessible(page, `sign-in (${colorScheme})`);
    await page.screenshot({ path: join(SHOTS, `signin-${colorScheme}.png`) });
    // An empty name is refused by the form itself, then a real one signs in.
    await page.click('#signin-dev');
    assert.equal(await page.isVisible('#app'), false);
    await signIn(page, `visitor-${colorScheme}`);
    assert.equal(await page.isVisible('#signin'), false);
    await context.close();
  }
});

test('two people: guild, one-click invite, presence at once, chat in order, typing, a mention, a reload that resumes', async () => {
  ada = await person(browser, httpAddr, 'ada');
  bob = await person(browser, httpAddr, 'bob');
  await createGuild(ada, 'Test guild');
  const code = await inviteCode(ada);
  await joinByLink(bob, httpAddr, code);
  // Presence is right at once, without a reload or a status change (the old system's
  // complaint): each sees the other online, in words.
  await until('ada sees bob online', () => ada.$('#members .member[data-status="Online"]:has-text("bob"):has-text("Online on web")'), 3000);
  await until('bob sees ada online', () => bob.$('#members .member[data-status="Online"]:has-text("ada")'), 3000);
  assert.match(await ada.textContent('#chat-head'), /general/);

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
  }
  assert.deepEqual((await shown(ada)).map((m) => m.text), (await shown(bob)).map((m) => m.text));
  assert.ok(await ada.$('#messages .day:has-text("Today")'), 'a day separator');
  await ada.screenshot({ path: join(SHOTS, 'chat.png') });

  // Typing: bob types, ada sees it; bob empties the draft, it stops at once (not 10 s later).
  await bob.fill('#composer', 'typing something');
  await until('ada sees bob typing', async () => (await ada.textContent('#typing')).includes('bob is typing'));
  await ada.screenshot({ path: join(SHOTS, 'chat-typing.png') });
  await bob.fill('#composer', '');
  await until('the indicator stops when the draft is emptied', async () => (await ada.textContent('#typing')) === '', 2000);
  // And when he sends.
  await bob.fill('#composer', 'typing something');
  await until('typing again', async () => (await ada.textContent('#typing')).includes('bob is typing'));
  await bob.press('#composer', 'Enter');
  await until('the indicator stops on send', async () => (await ada.textContent('#typing')) === '');

  // Presence: bob goes do-not-disturb with a custom status; ada's member list says so.
  await bob.click('#status-button');
  await bob.selectOption('#status-select', 'Dnd');
  await bob.fill('#custom-status', 'in a meeting');
  await bob.click('#status-save');
  await until('ada sees bob as dnd', () => ada.$('#members .member[data-status="Dnd"]:has-text("Do not disturb"):has-text("in a meeting")'));

  // A mention: ada is notified (a toast, a count), and the count drops as she reads it.
  await ada.click('#home-item');
  await sendText(bob, 'look here @ada');
  await until('a mention notification', async () => !(await ada.$eval('#notif-count', (e) => e.hidden)) && (await ada.textContent('#notif-count')) === '1');
  await until('a toast says it', async () => (await ada.textContent('#toasts')).includes('bob mentioned you'));
  await until('the guild shows a mention', () => ada.$('#guilds .guild .badge:has-text("1")'));
  await until('the tab title counts it', async () => /^\(1\)/.test(await ada.title()));
  await ada.click('#notif-button');
  await ada.waitForSelector('#notifications .notification.unread[data-kind="Mention"]:has-text("bob mentioned you: look here @ada")');
  await ada.screenshot({ path: join(SHOTS, 'notifications.png') });
  await ada.click('#notifications .notification[data-kind="Mention"]');
  await until('read: the count is gone', async () => ada.$eval('#notif-count', (e) => e.hidden));
  await until('it opened the channel', async () => (await ada.textContent('#chat-head')).includes('general'));
  await ada.waitForSelector('#messages .msg.mentions-me .mention');
  assert.doesNotMatch(await ada.title(), /^\(/, 'nothing unread in the title');

  // A reload while ada keeps sending: bob's page resumes exactly, every message once.
  const reload = bob.reload();
  for (let i = 1; i <= 3; i++) { await sendText(ada, `during reload ${i}`); sent.push(`during reload ${i}`); }
  await reload;
  await bob.waitForFunction(() => document.getElementById('conn').dataset.state === 'resumed', null, { timeout: 10000 });
  assert.match(await bob.textContent('#conn'), /resumed/);
  await sendText(ada, 'after reload'); sent.push('after reload');
  sent.push('typing something', 'look here @ada');
  const after = await until('bob sees everything after the reload', async () => {
    const l = await shown(bob);
    return l.some((m) => m.text === 'after reload') && l;
  });
  assert.equal(after.length, sent.length, `each message once: ${JSON.stringify(after.map((m) => m.text))}`);
  assert.deepEqual(after.map((m) => m.seq), [...after.map((m) => m.seq)].sort((a, b) => a - b));
  const adaSees = await until('ada sees her own last message', async () => { const l = await shown(ada); return l.some((m) => m.text === 'after reload') && l; });
  assert.deepEqual(after.map((m) => m.text), adaSees.map((m) => m.text), 'the same order on both');
  // Bob's status survived the reload; ada sees herself online.
  await until('ada still sees bob as dnd', () => ada.$('#members .member[data-status="Dnd"]:has-text("in a meeting")'));
  await until('ada sees herself online', () => ada.$('#members .member[data-status="Online"]:has-text("ada")'));
  await bob.screenshot({ path: join(SHOTS, 'after-reload.png') });
  // Back to online for what follows.
  await bob.click('#status-button');
  await bob.selectOption('#status-select', 'Online');
  await bob.fill('#custom-status', '');
  await bob.click('#status-save');
});

test('inline edit, delete with confirmation, reactions from a picker, replies', async () => {
  const row = (page, text) => page.locator('#messages .msg', { hasText: text }).first();
  const act = async (page, text, action) => { await row(page, text).hover(); await row(page, text).locator(action).click(); };
  await sendText(ada, 'to be edited');
  await until('ada sees her message', () => ada.$('#messages .msg:has-text("to be edited")'));
  await act(ada, 'to be edited', '.act-edit');
  await ada.fill('#messages .edit-box', 'edited text');
  await ada.press('#messages .edit-box', 'Enter');
  await until('bob sees the edit', () => bob.$('#messages .msg:has-text("edited text") .edited'));
  // Escape leaves an edit unchanged.
  await act(ada, 'edited text', '.act-edit');
  await ada.fill('#messages .edit-box', 'never sent');
  await ada.press('#messages .edit-box', 'Escape');
  await new Promise((r) => setTimeout(r, 300));
  assert.ok(!(await bob.$('#messages .msg:has-text("never sent")')));
  // A reaction from the picker, with its name for screen readers.
  await act(bob, 'edited text', '.act-react');
  await bob.click('.emoji-picker button[aria-label="heart"]');
  await until('ada sees the reaction', () => ada.$('#messages .msg:has-text("edited text") .reactions button:has-text("❤️ 1")'));
  await act(bob, 'edited text', '.act-reply');
  await sendText(bob, 'a reply');
  await until('ada sees the reply with its parent', () => ada.$('#messages .msg:has-text("a reply") .reply:has-text("edited text")'));
  // Delete asks first; cancelling keeps it.
  await act(ada, 'edited text', '.act-delete');
  await ada.click('#dialog-buttons button[value="cancel"]');
  await new Promise((r) => setTimeout(r, 300));
  assert.ok(!(await bob.$('#messages .msg.deleted')));
  await act(ada, 'edited text', '.act-delete');
  await ada.click('#confirm-ok');
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
  const carol = await person(browser, httpAddr, 'carol');
  // A reload stores what a resume needs; a duplicated tab would carry it along.
  await carol.reload();
  await carol.waitForFunction(() => ['ready', 'resumed'].includes(document.getElementById('conn').dataset.state), null, { timeout: 10000 });
  const storage = await carol.evaluate(() => JSON.stringify({ ...sessionStorage }));
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
  assert.deepEqual(carol.problems, []);
  await carol.context().close();
});

test('unread badges and a new-messages line, friends found by name, a DM, quiet notifications', async () => {
  // Ada opens a second channel; bob stays in general and sees it unread, with a mention.
  await createChannel(ada, 'random', 'Text');
  await until('bob sees the channel', () => bob.$('#channels .channel[data-name="random"]'));
  await sendText(ada, 'first in random');
  await sendText(ada, 'over here @bob');
  await until('bob sees random unread with one mention', () => bob.$('#channels .channel.unread[data-name="random"] .mentions:has-text("1")'));
  assert.match(await bob.textContent('#channels .channel[data-name="random"] .visually-hidden'), /1 mention/, 'said to screen readers too');
  // Bob's page views general only (PROTOCOL.md "Viewing channels"): random's messages were
  // not sent to it — its activity and the mention's notification were.
  const passiveState = () => bob.evaluate(() => {
    const S = window.quaverApp;
    const random = [...S.guilds.values()].flatMap((g) => [...g.channels.values()]).find((c) => c.name === 'random');
    return { viewing: S.client.viewing, random: random.id, general: S.channel, held: S.messages.get(random.id)?.byId.size ?? 0, last: random.last_seq };
  });
  // The first report comes at once, the next within the 2 s coalescing interval.
  await until("random's activity says where it stands", async () => (await passiveState()).last === 2);
  const passive = await passiveState();
  assert.deepEqual(passive.viewing, [passive.general], 'the page says it views the channel it shows');
  assert.equal(passive.held, 0, "random's messages did not come to a page that does not view it");
  await bob.click('#channels .channel[data-name="random"]');
  await until('reading clears it', async () => !(await bob.$('#channels .channel.unread[data-name="random"]')));
  await bob.waitForSelector('#messages .new-divider');
  await until('opening it fetched what was held back', async () => {
    const texts = (await shown(bob)).map((m) => m.text);
    return texts.includes('first in random') && texts.some((t) => t.startsWith('over here'));
  });
  assert.deepEqual(await bob.evaluate(() => window.quaverApp.client.viewing), [passive.random], 'and now views it');
  // No toast for the conversation in view: ada replies to bob while he reads random.
  const toastsBefore = await bob.$$eval('#toasts .toast', (t) => t.length);
  await sendText(ada, 'still here @bob');
  await until('bob sees it', async () => (await shown(bob)).some((m) => m.text.includes('still here')));
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(await bob.$$eval('#toasts .toast', (t) => t.length), toastsBefore, 'no toast for what is on screen');
  assert.equal(await bob.$eval('#notif-count', (e) => e.hidden), true, 'and nothing to count');

  // Friends: bob finds ada by name under Add friend; ada accepts under Pending.
  await bob.click('#home-item');
  await bob.click('#tab-add');
  await bob.fill('#friend-query', 'ad');
  await bob.click('#friends .friend:has-text("ada") button:has-text("Send friend request")');
  await ada.click('#home-item');
  await ada.click('#tab-pending');
  await ada.click('#friends .friend[data-kind="IncomingRequest"]:has-text("Wants to be your friend") button:has-text("Accept")');
  await ada.click('#tab-all');
  await until('friends, online', () => ada.$('#friends .friend[data-kind="Friend"]:has-text("bob"):has-text("Online")'));
  // A DM from bob: ada's home shows it unread, she reads it.
  await bob.click('#tab-all');
  await bob.click('#friends .friend[data-kind="Friend"] button:has-text("Message")');
  await bob.waitForSelector('#chat-head:has-text("ada")');
  await ada.click('#guilds .guild');
  await sendText(bob, 'a direct hello');
  await until('ada is told of the DM', async () => (await ada.textContent('#toasts')).includes('bob sent you a message'));
  await until('home counts it', () => ada.$('#home-item #home-badge:not([hidden])'));
  await ada.click('#home-item');
  await ada.click('#dms .dm');
  await until('ada reads the DM', async () => (await shown(ada)).some((m) => m.text === 'a direct hello'));
  await until('reading it read its notifications', () => ada.$eval('#notif-count', (e) => e.hidden));
  await ada.screenshot({ path: join(SHOTS, 'dm.png') });
  await accessible(ada, 'a DM (light)');

  // Do not disturb: nothing pops up, but the notification is counted.
  await ada.click('#status-button');
  await ada.selectOption('#status-select', 'Dnd');
  await ada.click('#status-save');
  await ada.click('#guilds .guild');
  await ada.click('#channels .channel[data-name="random"]');
  const quietBefore = await ada.$$eval('#toasts .toast', (t) => t.length);
  await bob.click('#guilds .guild');
  await bob.click('#channels .channel[data-name="general"]');
  await sendText(bob, 'are you busy @ada');
  await until('counted', async () => (await ada.textContent('#notif-count')) !== '0' && !(await ada.$eval('#notif-count', (e) => e.hidden)));
  assert.equal(await ada.$$eval('#toasts .toast', (t) => t.length), quietBefore, 'no toast on do not disturb');
  await ada.click('#notif-button');
  await ada.click('#notif-read-all');
  await ada.click('#status-button');
  await ada.selectOption('#status-select', 'Online');
  await ada.click('#status-save');

  // Ada blocks bob (after confirming): his next DM is refused, and he is told.
  await ada.click('#channels .channel[data-name="general"]');
  await ada.hover('#members .member:has-text("bob")');
  await ada.click('#members .member:has-text("bob") button[title="block"]');
  await ada.click('#confirm-ok');
  await until('blocked', () => ada.evaluate(() => [...window.quaverApp.relationships.values()].includes('Blocked')));
  await bob.click('#home-item');
  await bob.click('#dms .dm');
  await sendText(bob, 'are you there?');
  await until('bob is told', async () => (await bob.textContent('#toasts')).includes('not sent'));
  assert.ok(!(await shown(bob)).some((m) => m.text === 'are you there?'));
  await ada.hover('#members .member:has-text("bob")');
  await ada.click('#members .member:has-text("bob") button[title="unblock"]');
  await until('unblocked', () => ada.evaluate(() => ![...window.quaverApp.relationships.values()].includes('Blocked')));
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
  await bob.click('#older');
  const back = await until('bob scrolled back to the start', async () => { const l = await shown(bob); return l.length === all.length && l; });
  assert.deepEqual(back.map((m) => m.id), all.map((m) => m.id), 'the same messages in the same order');
});

test('narrow screens: the channel list and the members are drawers; the dark theme; accessible in both', async () => {
  await ada.setViewportSize({ width: 390, height: 820 });
  await new Promise((r) => setTimeout(r, 400));
  assert.equal(await ada.isVisible('#composer'), true, 'the chat fills the screen');
  const box = await ada.$eval('#chat', (e) => e.getBoundingClientRect().width);
  assert.ok(box >= 380, `the chat is ${box} px wide`);
  // The closed drawers leave nothing on screen (no strip of the channel list at the edge).
  const edges = await ada.$$eval('.rail, .sidebar', (els) => els.map((e) => e.getBoundingClientRect().right));
  assert.ok(edges.every((r) => r <= 0), `closed drawers end at ${edges} px`);
  await ada.click('#menu-button');
  await ada.waitForSelector('#app.nav-open');
  await new Promise((r) => setTimeout(r, 300));
  await ada.screenshot({ path: join(SHOTS, 'narrow-channels.png') });
  await ada.click('#channels .channel[data-name="random"]');
  await until('picking a channel closes the drawer', async () => !(await ada.$('#app.nav-open')));
  await ada.click('#members-button');
  await ada.waitForSelector('#app.members-open');
  await new Promise((r) => setTimeout(r, 300));
  await ada.screenshot({ path: join(SHOTS, 'narrow-members.png') });
  await ada.keyboard.press('Escape');
  await until('Escape closes it', async () => !(await ada.$('#app.members-open')));
  await new Promise((r) => setTimeout(r, 300));
  const closed = await ada.$$eval('.rail, .sidebar', (els) => els.map((e) => e.getBoundingClientRect().right));
  assert.ok(closed.every((r) => r <= 0), `closed again, drawers end at ${closed} px`);
  const members = await ada.$eval('.members', (e) => e.getBoundingClientRect().left);
  assert.ok(members >= 390 + 24, `the closed members drawer (and its shadow) starts at ${members} px`);
  await ada.screenshot({ path: join(SHOTS, 'narrow.png') });
  await accessible(ada, 'narrow guild channel');
  await ada.setViewportSize({ width: 1280, height: 800 });
  // The theme toggle, remembered.
  await inSettings(ada, (p) => p.check('#theme-dark'));
  assert.equal(await ada.evaluate(() => document.documentElement.dataset.theme), 'dark');
  await ada.screenshot({ path: join(SHOTS, 'dark.png') });
  await accessible(ada, 'guild channel (dark)');
  await ada.click('#home-item');
  await ada.click('#dms .dm');
  await accessible(ada, 'a DM (dark)');
  await ada.reload();
  await ada.waitForFunction(() => ['ready', 'resumed'].includes(document.getElementById('conn').dataset.state), null, { timeout: 10000 });
  assert.equal(await ada.evaluate(() => document.documentElement.dataset.theme), 'dark', 'kept across a reload');
  await inSettings(ada, (p) => p.check('#theme-light'));
  await ada.click('#guilds .guild');
  await ada.click('#channels .channel[data-name="general"]');
  await accessible(ada, 'guild channel (light)');
});

test('voice: fake microphones decoded on the other side, a native listener, leave and join 20 times', async () => {
  const channel = await createChannel(ada, 'lounge', 'Voice');
  await until('bob sees the voice channel', () => bob.$(`#channels .channel[data-id="${channel}"]`));
  // A native participant listens meanwhile (it joins muted and never speaks).
  const token = (await (await fetch(`http://${httpAddr}/dev/token`, { method: 'POST', body: JSON.stringify({ name: 'native' }) })).json()).token;
  const invite = await ada.evaluate(async (g) => (await window.quaverApp.client.request('Chat', { type: 'CreateInvite', guild_id: g, max_uses: 1, max_age_secs: 600 })).code,
    await ada.evaluate(() => window.quaverApp.guild));
  const cli = (args) => new Promise((resolve, reject) => execFile(BIN, ['chat', '--server', quicAddr, '--http', httpAddr, '--token', token, ...args],
    { env: { ...process.env, QUAVER_LOG: 'warn' } }, (e, stdout, stderr) => (e ? reject(new Error(`${e.message}\n${stderr}`)) : resolve(stdout))));
  await cli(['join', invite]);
  await ada.click(`#channels .channel[data-id="${channel}"]`);
  await bob.click(`#channels .channel[data-id="${channel}"]`);
  await until('both are in the channel', async () => (await ada.$$('#channels .voice-user')).length === 2);
  const listening = cli(['listen', '--channel', channel, '--seconds', '4']);
  const [heardByAda, heardByBob] = await until('each decodes the other with energy', async () => {
    const [a, b] = [await stats(ada), await stats(bob)];
    return a.decodedFrames > 20 && b.decodedFrames > 20 && a.decodedEnergy > 0 && b.decodedEnergy > 0 && [a, b];
  }, 15000);
  // Each page sends the frame before again in every datagram, and asked for such datagrams.
  for (const s of [heardByAda, heardByBob]) assert.ok(s.redundantReceived > 10, `redundant datagrams arrive: ${JSON.stringify(s)}`);
  // And the playback worklet's jitter buffer plays them out (quaver.js Playout).
  await until('frames played out on both pages', async () => (await stats(ada)).playedFrames > 20 && (await stats(bob)).playedFrames > 20, 10000);
  await until('a speaking indicator', async () => (await bob.evaluate(() => window.quaverApp.voiceStats.speakingSeen)) > 0);
  await ada.screenshot({ path: join(SHOTS, 'voice.png') });
  await accessible(ada, 'voice (light)');
  const heard = await listening;
  const ownSlots = await Promise.all([ada, bob].map((p) => p.evaluate(() => window.quaverApp.voiceSession.slot)));
  const frames = new Map(heard.split('\n').filter((l) => l.startsWith('frames\t')).map((l) => l.split('\t').slice(1).map(Number)));
  for (const slot of ownSlots) assert.ok((frames.get(slot) ?? 0) > 20, `the native participant heard slot ${slot}: ${heard}`);
  // A network blip while in voice: ada's page joins again and bob hears her again.
  const before = (await stats(bob)).decodedFrames;
  await ada.evaluate(() => window.quaverApp.client.dropConnection());
  await until('ada is back in the channel for bob', async () => {
    const again = await bob.$('#channels .voice-user:has-text("ada")');
    return again && (await stats(bob)).decodedFrames > before + 20;
  }, 15000);
  // Mute: bob sees it.
  await ada.click('#mute');
  await until('bob sees ada muted', () => bob.$('#channels .voice-user[data-muted="true"]:has-text("ada")'));
  await ada.click('#mute');
  // Leave and join 20 times (and switch channels in between): bob hears ada after each join.
  const other = await createChannel(ada, 'side room', 'Voice');
  for (let round = 0; round < 20; round++) {
    if (round % 5 === 4) {
      // A switch: into the side room and back (a rejoin by another path).
      await ada.click(`#channels .channel[data-id="${other}"]`);
      await until('ada in the side room', () => ada.$(`#channels .channel.selected[data-id="${other}"]`));
    } else {
      await ada.click('#leave-voice');
      await until('ada left', async () => !(await bob.$('#channels .voice-user:has-text("ada")')));
    }
    const b0 = (await stats(bob)).decodedFrames;
    await ada.click(`#channels .channel[data-id="${channel}"]`);
    await until(`round ${round}: bob hears ada again`, async () => (await stats(bob)).decodedFrames > b0 + 10, 15000);
  }
  assert.equal(await ada.isVisible('#voice-problem'), false, 'no voice problem shown');
  await ada.click('#leave-voice');
  await until('ada left', async () => (await bob.$$('#channels .voice-user')).length === 1);
});

test('a sign-in check that gets no answer is asked again: the page still offers names', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const warned = [];
  page.on('console', (m) => { if (m.type() === 'warning') warned.push(m.text()); });
  // The first `GET /dev/token` is never answered (as on a connection that stalls).
  let asked = 0;
  await page.route('**/dev/token', async (route) => {
    if (route.request().method() === 'GET' && ++asked === 1) return; // held: no answer
    await route.continue();
  });
  await page.goto(`http://${httpAddr}/`);
  await page.waitForSelector('#name', { state: 'visible', timeout: 8000 });
  assert.equal(asked, 2, 'asked again once');
  assert.equal(await page.isVisible('#signin-key-box'), false, 'not the access-key form');
  assert.ok(warned.some((w) => /checking for development sign-in \(attempt 1 of 3\)/.test(w)), JSON.stringify(warned));
  await signIn(page, 'patient');
  await page.unrouteAll({ behavior: 'ignoreErrors' });
  await context.close();
});

test('a server the page cannot reach is said within seconds, not "reconnecting…" forever', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  // The page is served, but neither transport gets through: its QUIC port answers nothing
  // (UDP port 9: no listener) and its WebSocket address is refused — as on a network that
  // drops the server's UDP, behind a proxy that refuses WebSockets.
  await page.route('**/cert-hash', async (route) => {
    const r = await route.fetch();
    await route.fulfill({ response: r, json: { ...(await r.json()), port: 9, ws_path: '/no-websocket-here' } });
  });
  await page.goto(`http://${httpAddr}/`);
  await page.fill('#name', 'nobody');
  const started = Date.now();
  await page.click('#signin-dev');
  await until('the badge says it', () => page.$eval('#conn', (c) => c.dataset.state === 'unreachable'), 12000);
  const waited = Date.now() - started;
  assert.ok(waited < 11000, `told after ${waited} ms`);
  const banner = await page.textContent('#reconnect-banner');
  assert.match(banner, /^Can't reach the server: .+\. Trying again in \d+ s\.$/, banner);
  assert.equal(await page.isVisible('#reconnect-banner'), true);
  // The user panel does not claim you are online while nothing is connected.
  assert.equal((await page.textContent('#status-button')).trim(), 'Offline');
  await page.screenshot({ path: join(SHOTS, 'unreachable.png') });
  // The page keeps retrying: a retry's handler still running when the context closes would
  // fail (its response disposed) with nobody to tell. Let running ones finish first.
  await page.unrouteAll({ behavior: 'wait' });
  await context.close();
});

test("voice over WebRTC: ada on an RTCPeerConnection, bob on datagrams, hear each other, rejoin 20 times", async () => {
  // Bob is still in the lounge (on datagrams); ada turns on "voice over WebRTC" and joins it.
  const channel = await (await ada.$('#channels .channel[data-kind="Voice"][data-name="lounge"]')).getAttribute('data-id');
  const [a0, b0] = [await stats(ada), await stats(bob)];
  await inSettings(ada, (p) => p.check('#voice-webrtc'));
  await ada.click(`#channels .channel[data-id="${channel}"]`);
  await until('ada is in the channel for bob', () => bob.$('#channels .voice-user:has-text("ada")'));
  assert.match(await ada.textContent('#voice-where'), /WebRTC/);
  await until('each decodes the other with energy', async () => {
    const [a, b] = [await stats(ada), await stats(bob)];
    return a.decodedFrames > a0.decodedFrames + 20 && a.decodedEnergy > a0.decodedEnergy
      && b.decodedFrames > b0.decodedFrames + 20 && b.decodedEnergy > b0.decodedEnergy && [a, b];
  }, 15000);
  // The voice view in the dark theme is as accessible as in the light one.
  await inSettings(ada, (p) => p.check('#theme-dark'));
  await accessible(ada, 'voice (dark)');
  await inSettings(ada, (p) => p.check('#theme-light'));
  // Ada's page was told which of its tracks carries bob.
  const bobSlot = await bob.evaluate(() => window.quaverApp.voiceSession.slot);
  const tracks = await ada.evaluate(() => [...window.quaverApp.voiceSession.trackSlots]);
  assert.ok(tracks.some(([, slot]) => slot === bobSlot), `a VoiceTrack for bob's slot ${bobSlot}: ${JSON.stringify(tracks)}`);
  // Muting bob for herself silences the track that carries him, and only it.
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
  // Mute stops what bob receives from her.
  await ada.click('#mute');
  await until('bob sees ada muted', () => bob.$('#channels .voice-user[data-muted="true"]:has-text("ada")'));
  await new Promise((r) => setTimeout(r, 500));
  const muted = (await stats(bob)).receivedFrames;
  await new Promise((r) => setTimeout(r, 1000));
  assert.equal((await stats(bob)).receivedFrames, muted, 'nothing from a muted WebRTC participant');
  await ada.click('#mute');
  // Leave and join 20 times over WebRTC: bob hears ada after each join.
  for (let round = 0; round < 20; round++) {
    await ada.click('#leave-voice');
    await until('ada left', async () => !(await bob.$('#channels .voice-user:has-text("ada")')));
    const b1 = (await stats(bob)).decodedFrames;
    await ada.click(`#channels .channel[data-id="${channel}"]`);
    await until(`round ${round}: bob hears ada over WebRTC again`, async () => (await stats(bob)).decodedFrames > b1 + 10, 15000);
    assert.match(await ada.textContent('#voice-where'), /WebRTC/);
  }
  await ada.click('#leave-voice');
  await until('ada left', async () => (await bob.$$('#channels .voice-user')).length === 1);
  await inSettings(ada, (p) => p.uncheck('#voice-webrtc'));
});

test('WebRTC that cannot connect falls back to datagrams; sound that will not start is said', async () => {
  // A page whose WebRTC cannot reach the node's WebRTC port (a firewall in between): the
  // answer's candidate is bent to a port nobody listens on, so ICE never connects.
  const strict = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  try {
    const dora = await person(strict, httpAddr, 'dora', {
      before: (p) => p.addInitScript(() => {
        const set = RTCPeerConnection.prototype.setRemoteDescription;
        RTCPeerConnection.prototype.setRemoteDescription = function (d) {
          const sdp = d.sdp.replace(/(a=candidate:\S+ \d+ \S+ \d+ \S+ )\d+( typ host)/g, '$19$2');
          return set.call(this, { type: d.type, sdp });
        };
      }),
    });
    const code = await inviteCode(ada);
    await joinByLink(dora, httpAddr, code);
    const channel = await (await dora.waitForSelector('#channels .channel[data-kind="Voice"][data-name="lounge"]')).getAttribute('data-id');
    await inSettings(dora, (p) => p.check('#voice-webrtc'));
    const b0 = (await stats(bob)).decodedFrames;
    await dora.click(`#channels .channel[data-id="${channel}"]`);
    await until('dora is told, and moved to datagrams', async () => (await dora.textContent('#toasts')).includes('switched to datagrams'), 20000);
    await until('on datagrams', async () => !/WebRTC/.test(await dora.textContent('#voice-where')));
    await until('bob hears dora', async () => (await stats(bob)).decodedFrames > b0 + 20, 15000);
    await dora.click('#leave-voice');
    assert.deepEqual(dora.problems, []);
  } finally { await strict.close(); }
  // A page whose audio output never starts (no device; Firefox waits forever on resume()).
  const eve = await person(browser, httpAddr, 'eve', {
    before: (p) => p.addInitScript(() => { AudioContext.prototype.resume = () => new Promise(() => {}); }),
  });
  await joinByLink(eve, httpAddr, await inviteCode(ada));
  const channel = await (await eve.waitForSelector('#channels .channel[data-kind="Voice"][data-name="lounge"]')).getAttribute('data-id');
  const t0 = Date.now();
  await eve.click(`#channels .channel[data-id="${channel}"]`);
  await until('said within seconds', () => eve.$('#voice-problem:has-text("not playing sound") #voice-fix'), 6000);
  assert.ok(Date.now() - t0 < 6000);
  await accessible(eve, 'voice with a problem');
  await eve.click('#leave-voice');
  await eve.context().close();
});

test('desktop notifications while the tab is in the background, none on do not disturb', async () => {
  // The browser's Notification and visibility, observed (headless Chromium shows neither).
  const gus = await person(browser, httpAddr, 'gus', {
    before: (p) => p.addInitScript(() => {
      window.__shown = [];
      window.__hidden = false;
      window.Notification = class { constructor(title, o) { window.__shown.push({ title, ...o }); } static permission = 'default'; static async requestPermission() { this.permission = 'granted'; return 'granted'; } };
      Object.defineProperty(document, 'visibilityState', { get: () => (window.__hidden ? 'hidden' : 'visible') });
    }),
  });
  await joinByLink(gus, httpAddr, await inviteCode(ada));
  await inSettings(gus, (p) => p.check('#desktop-notify'));
  await gus.evaluate(() => { window.__hidden = true; });
  await bob.click('#channels .channel[data-name="general"]');
  await sendText(bob, 'ping @gus');
  await until('a desktop notification', () => gus.evaluate(() => window.__shown.find((n) => /bob mentioned you/.test(n.body))));
  assert.equal(await gus.$$eval('#toasts .toast', (t) => t.filter((x) => /bob mentioned you/.test(x.textContent)).length), 0, 'not a toast as well');
  // Do not disturb: nothing shown, still counted.
  await gus.evaluate(() => { window.__hidden = false; });
  await gus.click('#status-button');
  await gus.selectOption('#status-select', 'Dnd');
  await gus.click('#status-save');
  await gus.evaluate(() => { window.__hidden = true; });
  const before = await gus.evaluate(() => window.__shown.length);
  await sendText(bob, 'ping again @gus');
  await until('counted', async () => (await gus.textContent('#notif-count')) === '2');
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(await gus.evaluate(() => window.__shown.length), before, 'no desktop notification on do not disturb');
  assert.deepEqual(gus.problems, []);
  await gus.context().close();
});
