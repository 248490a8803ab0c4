// The web app on a network that really drops UDP: run through `quaver-bench netem
// --drop-udp` (scripts/test does), which puts this test and its Chromium in one network
// namespace and the server in another, joined by a link that drops every UDP datagram —
// no port trick: the server's kernel never sees a packet of the WebTransport attempt. Both
// pages must fall back to the WebSocket framing within 3 s, say so, and chat, with voice
// heard both ways over it. `NETEM_SERVER_IP` (set by netem) is the server's address; its
// HTTP port is 8080 (the `--server-cmd` in scripts/test).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { chromium } from 'playwright-core';
import { CHROMIUM_ARGS, until, person, shown, sendText, createGuild, inviteCode, joinByLink, voiceBothWays } from './people.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const IP = process.env.NETEM_SERVER_IP;
const HTTP = `${IP}:8080`;
const run = { skip: !IP && 'run it through quaver-bench netem --drop-udp (scripts/test)' };

let browser, ada, bob;

before(async () => {
  if (!IP) return;
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} missing: apt-get install chromium`);
  // Not loopback, so not a secure context by itself: WebTransport and the microphone need
  // one (a deployment serves the page over HTTPS).
  // The other tests' resolver rule lets only loopback through; here the server's address too.
  const args = CHROMIUM_ARGS.map((a) => (a.startsWith('--host-resolver-rules=') ? `${a}, EXCLUDE ${IP}` : a));
  browser = await chromium.launch({
    executablePath: CHROMIUM, args: [...args, `--unsafely-treat-insecure-origin-as-secure=http://${HTTP}`],
  });
});

after(async () => {
  // Chromium itself logs the WebTransport attempt that got no answer; anything else is a
  // problem.
  const ours = (p) => p.problems.filter((x) => !/Failed to establish a connection to https:\/\/[\d.]+:\d+\/quaver: net::ERR_/.test(x));
  try {
    for (const p of [ada, bob]) if (p) assert.deepEqual(ours(p), [], 'no page errors and no console errors');
  } finally {
    await browser?.close();
  }
});

test('UDP dropped by the network: both pages connect over WebSocket within 3 s and chat', run, async () => {
  const timed = (name) => {
    let asked;
    return {
      page: person(browser, HTTP, name, {
        before: async (page) => page.on('request', (r) => { if (r.url().endsWith('/dev/token')) asked = Date.now(); }),
      }),
      took: () => Date.now() - asked,
    };
  };
  const a = timed('ada');
  ada = await a.page;
  const tookA = a.took();
  const b = timed('bob');
  bob = await b.page;
  const tookB = b.took();
  console.log(`connected over WebSocket ${tookA} and ${tookB} ms after asking for a token`);
  for (const [p, took] of [[ada, tookA], [bob, tookB]]) {
    assert.ok(await p.evaluate(() => typeof WebTransport === 'function'), 'the page has WebTransport to try');
    // WebTransport is tried first and its 2 s go unanswered: then the WebSocket wins.
    assert.ok(took >= 1500 && took < 3000, `connected after ${took} ms`);
    assert.equal(await p.$eval('#conn', (c) => c.dataset.transport), 'websocket');
    assert.match(await p.textContent('#conn'), /connected · WebSocket/);
  }
  await createGuild(ada, 'no udp at all');
  await joinByLink(bob, HTTP, await inviteCode(ada));
  await until('ada sees bob online', () => ada.$('#members .member[data-status="Online"]:has-text("bob")'), 5000);
  await sendText(ada, 'first');
  await sendText(bob, 'second');
  for (const p of [ada, bob]) {
    await until('both messages, once each, in order', async () => {
      const texts = (await shown(p)).map((m) => m.text);
      return texts.length === 2 && texts[0] === 'first' && texts[1] === 'second';
    });
  }
});

test('UDP dropped by the network: voice is heard both ways over the WebSocket', run, async () => {
  await voiceBothWays(ada, bob, 'lounge');
  await ada.click('#leave-voice');
  await bob.click('#leave-voice');
});
