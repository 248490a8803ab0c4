// Headless Debian Chromium loads the page served by a real quaver server, takes the
// certificate hash from /cert-hash, connects over WebTransport with ?token=, and reaches
// Ready; with a bad token it is refused with the right close code. Two browser sessions in
// one voice channel exchange voice datagrams through the SFU with web/quaver.js, also across
// two nodes of a cluster (REDIS_URL and a PostgreSQL DATABASE_URL; required in CI).
//
// Needs the built server (QUAVER_BIN, default ../target/debug/quaver) and Chromium
// (CHROMIUM, default /usr/bin/chromium).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { BIN, startServer } from './server.mjs';
import { PROTOCOL_VERSION } from '../quaver.js';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SECRET = 'browser-test-secret-0123456789abcdefgh';

let server, browser, httpAddr;

// `cluster`: join the cluster on REDIS_URL and DATABASE_URL under this key prefix; else the
// server runs on its embedded defaults, whatever the environment says about other services.
async function startNode(cluster = null) {
  const services = cluster
    ? { DATABASE_URL: process.env.DATABASE_URL, REDIS_URL: process.env.REDIS_URL, QUAVER_REDIS_PREFIX: cluster.prefix, QUAVER_NODE_NAME: cluster.name }
    : {};
  const s = await startServer({ ...services, JWT_SECRET: SECRET });
  return [s.child, s.http];
}

const token = (user) => execFileSync(BIN, ['token', '--user', String(user), '--name', `web${user}`, '--ttl', '10m'],
  { env: { ...process.env, JWT_SECRET: SECRET } }).toString().trim();

before(async () => {
  assert.ok(existsSync(BIN), `server binary ${BIN} missing: build it first (cargo build)`);
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} missing: apt-get install chromium`);
  [server, httpAddr] = await startNode();
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

test('browser reaches Ready over WebTransport with the token in Hello and the /cert-hash hash', async () => {
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
  assert.deepEqual(result.protocols, [PROTOCOL_VERSION]);
  assert.ok(result.maxDatagram > 1000, `datagrams available: ${result.maxDatagram}`);
  // The UI path too: a pasted token connects and shows the connection as ready.
  await page.fill('#token', token(7));
  await page.click('#connect');
  await page.waitForFunction(() => document.getElementById('conn').dataset.state === 'ready', null, { timeout: 10000 });
  await page.close();
});

test('an idle browser session stays up (past every server-side stream deadline)', async () => {
  // Chromium opens its QPACK streams at once and may say nothing on them; a server that
  // stops them after a deadline kills the connection (this one did, at 10 s).
  const page = await browser.newPage();
  await page.goto(`http://${httpAddr}/`);
  const r = await page.evaluate(async (tok) => {
    const s = await window.quaverConnect(tok);
    let closed = null;
    s.closed.then(() => { closed = Date.now(); });
    const t0 = Date.now();
    await new Promise((res) => setTimeout(res, 13000));
    const chat = await s.openLane('Chat').catch(() => null);
    const pong = chat ? await chat.request({ type: 'Ping', data: new Uint8Array([1]) }).catch(() => null) : null;
    s.close();
    return { closedAfter: closed && closed - t0, pong: !!pong };
  }, token(4343));
  assert.deepEqual(r, { closedAfter: null, pong: true });
  await page.close();
});

test('a draining node\'s Goaway: quaver.js Resilient leaves at once and comes back only after reconnect_after_ms', async () => {
  // A node of its own (this test stops it), telling its clients to come back after 2 s.
  const dir = mkdtempSync(join(tmpdir(), 'quaver-goaway-'));
  const config = join(dir, 'quaver.toml');
  writeFileSync(config, '[session]\nreconnect_after = "2s"\n');
  const node = await startServer({ JWT_SECRET: SECRET, QUAVER_CONFIG: config });
  const page = await browser.newPage();
  try {
    await page.goto(`http://${node.http}/`);
    await page.evaluate(async (tok) => {
      const info = await window.quaver.fetchCertHashes(location.origin);
      const at = { attempts: [], states: [] };
      window.goaway = at;
      const r = new window.quaver.Resilient(async () => {
        at.attempts.push(Date.now());
        return { url: `https://${location.hostname}:${info.port}${info.url_path}`, certHashes: info.dev ? info.hashes : [], token: tok };
      }, { backoffMs: 100, maxBackoffMs: 200 });
      r.addEventListener('state', (e) => at.states.push([e.detail, Date.now()]));
      r.addEventListener('trouble', (e) => at.states.push(['trouble', Date.now(), String(e.detail.error), e.detail.retryInMs]));
      window.goawayClient = r;
      await new Promise((res, rej) => {
        const t = setTimeout(() => rej(new Error('no Ready')), 10000);
        r.addEventListener('state', (e) => { if (e.detail === 'ready') { clearTimeout(t); res(); } });
      });
    }, token(4444));
    const stoppedAt = await page.evaluate(() => Date.now());
    node.child.kill('SIGTERM');
    // The node drains and exits; the client has left and waits (its later attempts fail:
    // nothing listens any more, and its backoff is short on purpose).
    await new Promise((res) => setTimeout(res, 6000));
    const at = await page.evaluate(() => { window.goawayClient.close(); return window.goaway; });
    const left = at.states.find(([s, t]) => s === 'reconnecting' && t >= stoppedAt);
    assert.ok(left, `left after the Goaway: ${JSON.stringify(at.states)}`);
    assert.ok(left[1] - stoppedAt < 1500, `left at once, not at a heartbeat timeout: ${left[1] - stoppedAt} ms`);
    const again = at.attempts.filter((t) => t >= stoppedAt);
    assert.ok(again.length >= 1, `came back within 6 s of a 2 s delay: ${JSON.stringify(at.attempts)}`);
    // Within [d, 2d] of leaving (the jitter spreads a node's clients over that window).
    const waited = again[0] - left[1];
    assert.ok(waited >= 2000 && waited <= 5000, `waited ${waited} ms after leaving before connecting again: ${JSON.stringify(at.states)}`);
  } finally {
    await page.close();
    node.child.kill('SIGKILL');
  }
});

test('a WebSocket refused at the door: quaver.js rejects with overloaded, the cue Resilient waits longer on', async () => {
  // A node of its own that sets up one connection at a time; the page's first WebSocket
  // holds that place (it never says Hello), so the next is refused at the door.
  const node = await startServer({ JWT_SECRET: SECRET, QUAVER_MAX_HANDSHAKES: '1', QUAVER_HELLO_TIMEOUT: '30s' });
  const page = await browser.newPage();
  try {
    await page.goto(`http://${node.http}/`);
    const r = await page.evaluate(async (tok) => {
      const q = window.quaver;
      const wsUrl = `ws://${location.host}/quaver/ws`;
      const holder = new WebSocket(wsUrl, 'quaver');
      await new Promise((res, rej) => { holder.onopen = res; holder.onerror = () => rej(new Error('the holder did not open')); });
      let refused;
      const t0 = Date.now();
      try {
        await q.connect(null, { token: tok, transport: 'websocket', wsUrl });
        refused = { connected: true };
      } catch (e) {
        refused = { closed: e instanceof q.ClosedError, code: e.code, reconnect: e.reconnect, ms: Date.now() - t0 };
      }
      const gone = new Promise((res) => { holder.onclose = res; });
      holder.close();
      await gone;
      // The place is given back when the server sees the close; then a session gets in.
      let s = null;
      for (let i = 0; i < 20 && !s; i++) {
        try { s = await q.connect(null, { token: tok, transport: 'websocket', wsUrl }); } catch (_) { await new Promise((res) => setTimeout(res, 100)); }
      }
      const user = s?.ready.user.id;
      s?.close();
      return { refused, user };
    }, token(4545));
    assert.deepEqual({ ...r.refused, ms: undefined }, { closed: true, code: 1001, reconnect: true, ms: undefined }, JSON.stringify(r));
    assert.ok(r.refused.ms < 2000, `refused at once: ${r.refused.ms} ms`);
    assert.equal(String(r.user), '4545', 'in once the place is free');
  } finally {
    await page.close();
    node.child.kill('SIGKILL');
  }
});

test('the token is never in a URL: failed connections log nothing a reporter could collect', async () => {
  const page = await browser.newPage();
  const logged = [];
  page.on('console', (m) => logged.push(m.text()));
  page.on('pageerror', (e) => logged.push(String(e)));
  await page.goto(`http://${httpAddr}/`);
  const tok = token(4545);
  const r = await page.evaluate(async (tok) => {
    const info = await window.quaver.fetchCertHashes(location.origin);
    const out = {};
    // Nobody listens on port 9 (discard): the connection fails, and Chromium logs its URL.
    try { await window.quaver.connect(`https://127.0.0.1:9${info.url_path}`, { token: tok, certHashes: info.hashes }); } catch (e) { out.failed = e.name ?? String(e); }
    // A real connection: the token went in Hello.
    const s = await window.quaverConnect(tok);
    out.user = s.ready.user.id;
    s.close();
    return out;
  }, tok);
  assert.ok(r.failed, 'the connection to a closed port failed');
  assert.equal(r.user, '4545');
  await new Promise((res) => setTimeout(res, 300));
  assert.ok(logged.some((l) => l.includes('127.0.0.1:9')), `Chromium logged the failed connection: ${JSON.stringify(logged)}`);
  const [, payload] = tok.split('.');
  for (const l of logged) assert.ok(!l.includes(payload), `the token is in the console: ${l}`);
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

// The shared part of the voice tests: each session collects what it hears until it has
// `want` frames or 5 s pass; `talk` sends 20 frames tagged `tag`.
const VOICE_HELPERS = `
  window.collectVoice = async (s, want) => {
    const got = [], it = s.voice(), end = Date.now() + 5000;
    while (got.length < want) {
      const timeout = new Promise((res) => setTimeout(() => res(null), Math.max(0, end - Date.now())));
      const next = await Promise.race([it.next(), timeout]);
      if (!next || next.done) break;
      got.push([next.value.slot, next.value.seq, Array.from(next.value.payload)]);
    }
    await it.return();
    return got;
  };
  window.talk = async (s, tag) => {
    for (let i = 0; i < 20; i++) {
      await s.sendVoice({ flags: i === 0 ? window.quaver.FLAG_TALKSPURT_START : 0, level: 20, voice: true, seq: i, timestamp: i * 960 },
        new Uint8Array([tag, i, 0xee]));
      await new Promise((res) => setTimeout(res, 20));
    }
  };`;

test('browser voice: two WebTransport sessions hear each other through the SFU, never themselves', async () => {
  const page = await browser.newPage();
  await page.goto(`http://${httpAddr}/`);
  await page.evaluate(VOICE_HELPERS);
  const r = await page.evaluate(async ([ta, tb]) => {
    const a = await window.quaverConnect(ta), b = await window.quaverConnect(tb);
    const ca = await a.openLane('Chat'), cb = await b.openLane('Chat');
    const g = await ca.request({ type: 'CreateGuild', name: 'web voice' });
    const inv = await ca.request({ type: 'CreateInvite', guild_id: g.id, max_uses: 0, max_age_secs: 0 });
    await cb.request({ type: 'JoinGuild', code: inv.code });
    const vc = await ca.request({ type: 'CreateChannel', guild_id: g.id, kind: 'Voice', name: 'talk', topic: '', user_limit: 0 });
    const va = await a.openLane('Voice'), vb = await b.openLane('Voice');
    const ja = await va.request({ type: 'JoinVoice', channel_id: vc.id, self_mute: false, self_deaf: false });
    const jb = await vb.request({ type: 'JoinVoice', channel_id: vc.id, self_mute: false, self_deaf: false });
    const heardByA = window.collectVoice(a, 20), heardByB = window.collectVoice(b, 20);
    await window.talk(a, 1);
    await window.talk(b, 2);
    const out = { slotA: ja.slot, slotB: jb.slot, heardByA: await heardByA, heardByB: await heardByB };
    a.close(); b.close();
    return out;
  }, [token(5101), token(5102)]);
  assert.notEqual(r.slotA, r.slotB);
  const expect = (slot, tag) => Array.from({ length: 20 }, (_, i) => [slot, i, [tag, i, 0xee]]);
  // Every frame of the other speaker, in order, payload untouched, and none of its own.
  assert.deepEqual(r.heardByB, expect(r.slotA, 1));
  assert.deepEqual(r.heardByA, expect(r.slotB, 2));
  await page.close();
});

test('browser voice: leave and join 20 times on one connection, hearing the other each time', async () => {
  const page = await browser.newPage();
  await page.goto(`http://${httpAddr}/`);
  await page.evaluate(VOICE_HELPERS);
  const r = await page.evaluate(async ([ta, tb]) => {
    const a = await window.quaverConnect(ta), b = await window.quaverConnect(tb);
    const ca = await a.openLane('Chat'), cb = await b.openLane('Chat');
    const g = await ca.request({ type: 'CreateGuild', name: 'rejoin' });
    const inv = await ca.request({ type: 'CreateInvite', guild_id: g.id, max_uses: 0, max_age_secs: 0 });
    await cb.request({ type: 'JoinGuild', code: inv.code });
    const rooms = [];
    for (const name of ['one', 'two']) rooms.push((await ca.request({ type: 'CreateChannel', guild_id: g.id, kind: 'Voice', name, topic: '', user_limit: 0 })).id);
    const va = await a.openLane('Voice'), vb = await b.openLane('Voice');
    // Voice-lane requests are rate-limited (10 at once, 2 a second): wait when told to.
    const ask = async (lane, body) => {
      for (;;) {
        try { return await lane.request(body); } catch (e) {
          if (e.code !== 5) throw new Error(`${body.type}: ${e.code} ${e.message}`);
          await new Promise((res) => setTimeout(res, e.retry_after_ms ?? 500));
        }
      }
    };
    const heard = [];
    for (let round = 0; round < 20; round++) {
      // Alternate between two channels: a rejoin and a switch, on the same connections.
      const room = rooms[round % 2];
      await ask(va, { type: 'JoinVoice', channel_id: room, self_mute: false, self_deaf: false });
      await ask(vb, { type: 'JoinVoice', channel_id: room, self_mute: false, self_deaf: false });
      const got = window.collectVoice(b, 20);
      await window.talk(a, round);
      heard.push((await got).filter(([, , p]) => p[0] === round).length);
      await ask(va, { type: 'LeaveVoice' });
      await ask(vb, { type: 'LeaveVoice' });
    }
    a.close(); b.close();
    return heard;
  }, [token(5201), token(5202)]);
  assert.deepEqual(r, Array(20).fill(20), 'every frame of every round heard');
  await page.close();
});

// Two nodes, a voice channel homed on node a by user a, user b on node b joining it: b is
// sent to node a (over WebSocket when b's session is on WebSocket) and both hear each other.
async function clusterVoice(t, bOverWs) {
  const { REDIS_URL, DATABASE_URL } = process.env;
  if (!REDIS_URL || !DATABASE_URL?.startsWith('postgres')) {
    assert.ok(process.env.CI !== 'true', 'CI needs REDIS_URL and a PostgreSQL DATABASE_URL for the cluster browser test');
    t.skip('set REDIS_URL and DATABASE_URL=postgres://… to run');
    return;
  }
  const prefix = `webtest${process.pid}${Date.now()}:`;
  // One after the other: the first applies the migrations.
  const [nodeA, httpA] = await startNode({ prefix, name: `web-a-${process.pid}` });
  let nodeB;
  try {
    let httpB;
    [nodeB, httpB] = await startNode({ prefix, name: `web-b-${process.pid}` });
    const infoB = await (await fetch(`http://${httpB}/cert-hash`)).json();
    const page = await browser.newPage();
    await page.goto(`http://${httpA}/`);
    await page.evaluate(VOICE_HELPERS);
    // Users unique to this run (the database is shared with other runs).
    const base = 7_000_000 + Math.floor(Math.random() * 1_000_000) * 2;
    const r = await page.evaluate(async ([ta, tb, urlB, hashesB, wsB]) => {
      const q = window.quaver;
      const a = await window.quaverConnect(ta);
      const b = wsB
        ? await q.connect(null, { token: tb, transport: 'websocket', wsUrl: wsB })
        : await q.connect(urlB, { token: tb, certHashes: hashesB });
      const ca = await a.openLane('Chat'), cb = await b.openLane('Chat');
      const g = await ca.request({ type: 'CreateGuild', name: 'cluster voice' });
      const inv = await ca.request({ type: 'CreateInvite', guild_id: g.id, max_uses: 0, max_age_secs: 0 });
      await cb.request({ type: 'JoinGuild', code: inv.code });
      const vc = await ca.request({ type: 'CreateChannel', guild_id: g.id, kind: 'Voice', name: 'talk', topic: '', user_limit: 0 });
      const ja = await q.joinVoice(a, await a.openLane('Voice'), vc.id);
      const jb = await q.joinVoice(b, await b.openLane('Voice'), vc.id);
      const heardByA = window.collectVoice(ja.session, 20), heardByB = window.collectVoice(jb.session, 20);
      await window.talk(ja.session, 1);
      await window.talk(jb.session, 2);
      const out = {
        nodes: [a.ready.node, b.ready.node, jb.session.ready.node],
        remote: [ja.remote, jb.remote],
        participants: jb.joined.participants.length,
        slotA: ja.joined.slot, slotB: jb.joined.slot,
        transports: [b.transport, jb.session.transport],
        heardByA: await heardByA, heardByB: await heardByB,
      };
      await jb.lane.request({ type: 'LeaveVoice' });
      jb.session.close(); a.close(); b.close();
      return out;
    }, [token(base), token(base + 1), `https://127.0.0.1:${infoB.port}${infoB.url_path}`, infoB.dev ? infoB.hashes : [],
      bOverWs ? `ws://${httpB}${infoB.ws_path}` : null]);
    const kind = bOverWs ? 'websocket' : 'webtransport';
    assert.deepEqual(r.transports, [kind, kind], 'user b reaches the channel\'s node the way it reached its own');
    assert.notEqual(r.nodes[0], r.nodes[1], 'the two users are on different nodes');
    assert.equal(r.nodes[2], r.nodes[0], "user b's voice session is on the channel's node");
    assert.deepEqual(r.remote, [false, true]);
    assert.equal(r.participants, 2);
    const expect = (slot, tag) => Array.from({ length: 20 }, (_, i) => [slot, i, [tag, i, 0xee]]);
    assert.deepEqual(r.heardByB, expect(r.slotA, 1));
    assert.deepEqual(r.heardByA, expect(r.slotB, 2));
    await page.close();
  } finally {
    nodeA.kill('SIGTERM');
    nodeB?.kill('SIGTERM');
  }
}

test('browser voice in a cluster: a join on the other node follows VoiceServer to the channel\'s node', (t) => clusterVoice(t, false));

test('browser voice in a cluster over WebSocket: VoiceServer names the node\'s WebSocket URL and the page follows it', (t) => clusterVoice(t, true));
