// A browser joins a voice channel over WebRTC (RTCPeerConnection, Chromium's fake
// microphone) beside a datagram participant:
// (b) the datagram participant receives the browser's Opus frames from its slot; it sends
// them back as its own speech, and (a) the browser decodes them — audio with non-zero
// energy on a receiving track, whose speaker its session is told (`VoiceTrack`); (c) the
// browser's speaking is announced, and its mute stops its frames at the SFU.
//
// The datagram participant is the native Rust client (client/examples/voice_echo.rs, raw
// QUIC datagrams) with WebRTC on a port of its own, and a WebTransport session in the
// page (web/quaver.js) with WebRTC on the QUIC port itself.
//
// Needs the built server (QUAVER_BIN, default ../target/debug/quaver), the example
// (QUAVER_VOICE_ECHO, default beside the server in examples/) and Chromium (CHROMIUM,
// default /usr/bin/chromium).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';
import { BIN, startServer } from './server.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const ECHO = process.env.QUAVER_VOICE_ECHO ?? join(dirname(BIN), 'examples', 'voice_echo');
const SECRET = 'webrtc-test-secret-0123456789abcdefghij';

let own, shared, browser;

const token = (user) => execFileSync(BIN, ['token', '--user', String(user), '--name', `rtc${user}`, '--ttl', '10m'],
  { env: { ...process.env, JWT_SECRET: SECRET } }).toString().trim();
const sleep = (ms) => new Promise((res) => setTimeout(res, ms));

before(async () => {
  assert.ok(existsSync(BIN), `server binary ${BIN} missing: build it first (cargo build)`);
  assert.ok(existsSync(ECHO), `${ECHO} missing: cargo build --workspace --all-targets`);
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} missing: apt-get install chromium`);
  own = await startServer({ JWT_SECRET: SECRET, QUAVER_WEBRTC_LISTEN: '127.0.0.1:0' });
  // The same on the QUIC port itself (RFC 9443 demultiplexing).
  shared = await startServer({ JWT_SECRET: SECRET, QUAVER_WEBRTC_SHARED_PORT: 'true' });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
      // A fake microphone (a beep), no permission prompt, loopback ICE candidates, audio
      // that plays without a gesture.
      '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
      '--allow-loopback-in-peer-connection', '--autoplay-policy=no-user-gesture-required'],
  });
});

after(async () => {
  await browser?.close();
  own?.child.kill('SIGTERM');
  shared?.child.kill('SIGTERM');
});

// The page's side: a guild with a voice channel for users A and B (WebTransport sessions),
// and B's WebRTC join; state lives on `window.t`.
async function setUp(page, ta, tb) {
  return page.evaluate(async ([ta, tb]) => {
    const a = await window.quaverConnect(ta), b = await window.quaverConnect(tb);
    const ca = await a.openLane('Chat'), cb = await b.openLane('Chat');
    const g = await ca.request({ type: 'CreateGuild', name: 'webrtc voice' });
    const inv = await ca.request({ type: 'CreateInvite', guild_id: g.id, max_uses: 0, max_age_secs: 0 });
    await cb.request({ type: 'JoinGuild', code: inv.code });
    const vc = await ca.request({ type: 'CreateChannel', guild_id: g.id, kind: 'Voice', name: 'talk', topic: '', user_limit: 0 });
    const vb = await b.openLane('Voice');
    const events = [];
    vb.onevent = (m) => events.push(m.body);
    const audio = async (pc) => {
      let energy = 0, packets = 0;
      (await pc.getStats()).forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'audio') { energy += s.totalAudioEnergy ?? 0; packets += s.packetsReceived ?? 0; }
      });
      return { energy, packets };
    };
    // B: the microphone and three receiving tracks; the offer once ICE gathering is done
    // (the server reads no trickled candidates).
    const joinWebRtc = async () => {
      const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
      const pc = new RTCPeerConnection();
      pc.addTransceiver(mic.getAudioTracks()[0], { direction: 'sendonly' });
      const receiving = [];
      for (let i = 0; i < 3; i++) receiving.push(pc.addTransceiver('audio', { direction: 'recvonly' }));
      const playing = [];
      pc.ontrack = (e) => {
        // Chromium decodes a remote track's audio only while something plays it (unmuted:
        // a muted element decodes nothing, and the energy stays 0).
        const el = new Audio(); el.srcObject = new MediaStream([e.track]); el.play().catch(() => {});
        playing.push(el);
      };
      await pc.setLocalDescription(await pc.createOffer());
      await new Promise((res) => {
        if (pc.iceGatheringState === 'complete') return res();
        pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === 'complete') res(); };
        setTimeout(res, 3000);
      });
      const jb = await vb.request({ type: 'JoinVoiceWebRtc', channel_id: vc.id, self_mute: false, self_deaf: false, offer: pc.localDescription.sdp });
      const candidatePort = Number(jb.answer.match(/a=candidate:\S+ \d+ udp \d+ \S+ (\d+) typ host/i)?.[1]);
      await pc.setRemoteDescription({ type: 'answer', sdp: jb.answer });
      const t0 = Date.now();
      while (pc.connectionState !== 'connected' && Date.now() - t0 < 10000) await new Promise((r) => setTimeout(r, 50));
      window.t.pc = pc;
      return {
        state: pc.connectionState, slotB: jb.slot, tracks: playing.length, candidatePort,
        receivingMids: receiving.map((t) => t.mid),
      };
    };
    window.t = { a, b, vb, vc, events, audio, joinWebRtc, userB: b.ready.user.id };
    return { channel: vc.id, userB: b.ready.user.id };
  }, [ta, tb]);
}

// What B's session was told about its tracks, and B's decoded audio.
const pageReport = (page) => page.evaluate(async () => ({
  ...(await window.t.audio(window.t.pc)),
  tracks: window.t.events.filter((e) => e.type === 'VoiceTrack'),
}));

// The native client (raw QUIC datagrams) in the channel, echoing what it hears.
async function echoBot(server, channel, tok) {
  const cert = await (await fetch(`http://${server.http}/cert-hash`)).json();
  const child = spawn(ECHO, ['--addr', server.quic, '--cert-hash', cert.hash, '--channel', channel, '--echo'],
    { env: { ...process.env, QUAVER_TOKEN: tok }, stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const next = async () => {
    const l = await Promise.race([lines.next(), sleep(10000).then(() => ({ done: true }))]);
    assert.ok(!l.done, 'the voice_echo client answered');
    const v = JSON.parse(l.value);
    assert.ok(!v.error, `voice_echo: ${v.error}`);
    return v;
  };
  const joined = await next();
  return {
    slot: joined.joined,
    stats: async () => { child.stdin.write('stats\n'); return next(); },
    quit: () => { child.stdin.write('quit\n'); setTimeout(() => child.kill('SIGTERM'), 2000).unref(); },
  };
}

test('a WebRTC browser and a native datagram client hear each other in one voice channel', async () => {
  const page = await newPage(own);
  const [ta, tb] = [token(6101), token(6102)];
  const { channel, userB } = await setUp(page, ta, tb);
  const bot = await echoBot(own, channel, ta);
  const j = await page.evaluate(() => window.t.joinWebRtc());
  assert.equal(j.state, 'connected', 'ICE and DTLS with the ICE-lite server');
  assert.notEqual(j.slotB, bot.slot);
  assert.equal(j.tracks, 3, 'three receiving tracks');
  const before = await pageReport(page);

  // (b) The native client receives B's frames (and echoes them: (a)).
  let s;
  for (const stop = Date.now() + 10000; Date.now() < stop; await sleep(200)) {
    s = await bot.stats();
    if ((s.frames[j.slotB] ?? 0) >= 100) break;
  }
  const fromB = s.frames[j.slotB] ?? 0;
  assert.ok(fromB >= 100, `the native client received ${fromB} frames from the browser's slot`);
  assert.equal(s.small, 0, 'Opus packets, not empty');
  await sleep(500);
  const heard = await pageReport(page);
  console.log('webrtc (native):', JSON.stringify({ j, fromB, before, heard }));
  // (a) Decoded audio with energy on B's receiving track, from A's echo of B's frames (B is
  // not sent its own voice by the SFU, so what B decodes can only be A's).
  assert.ok(heard.packets >= fromB * 0.9, `B received ${heard.packets} RTP packets for ${fromB} frames echoed`);
  assert.ok(heard.energy > before.energy && heard.energy > 0, `decoded energy ${before.energy} → ${heard.energy}`);
  assertTrackOf(heard.tracks, bot.slot, j.receivingMids);

  // (c) Speaking, then mute: B's frames stop at the SFU while its microphone keeps sending.
  assert.ok(s.speaking.includes(userB), 'VoiceSpeaking for the browser');
  await page.evaluate(() => window.t.vb.request({ type: 'SetVoiceState', self_mute: true, self_deaf: false }));
  await sleep(300);
  const muted = (await bot.stats()).frames[j.slotB];
  await sleep(1000);
  const later = (await bot.stats()).frames[j.slotB];
  assert.equal(later, muted, 'nothing forwarded from a muted browser');
  assert.equal(j.candidatePort === Number(own.quic.split(':')[1]), false, 'a port of its own');
  bot.quit();
  await page.evaluate(() => { window.t.pc.close(); window.t.a.close(); window.t.b.close(); });
  await page.close();
});

test('a WebRTC browser and a WebTransport datagram participant, WebRTC on the QUIC port', async () => {
  const page = await newPage(shared);
  await setUp(page, token(6201), token(6202));
  const r = await page.evaluate(async () => {
    const { a, vc, events } = window.t;
    const sleep = (ms) => new Promise((res) => setTimeout(res, ms));
    const va = await a.openLane('Voice');
    const ja = await va.request({ type: 'JoinVoice', channel_id: vc.id, self_mute: false, self_deaf: false });
    const aEvents = [];
    va.onevent = (m) => aEvents.push(m.body);
    const j = await window.t.joinWebRtc();
    // (b) A hears B: Opus frames from B's slot.
    const fromB = [];
    const it = a.voice();
    const end = Date.now() + 6000;
    while (fromB.length < 100 && Date.now() < end) {
      const next = await Promise.race([it.next(), sleep(Math.max(0, end - Date.now())).then(() => null)]);
      if (!next || next.done) break;
      if (next.value.slot === j.slotB) fromB.push(next.value);
    }
    const speakingB = aEvents.some((e) => e.type === 'VoiceSpeaking' && e.user_id === window.t.userB && e.speaking);
    // (a) B hears A: A speaks B's own Opus frames back.
    const before = await window.t.audio(window.t.pc);
    for (let i = 0; i < fromB.length; i++) {
      const f = fromB[i];
      await a.sendVoice({ flags: i === 0 ? window.quaver.FLAG_TALKSPURT_START : 0, level: 20, voice: true, seq: i, timestamp: i * 960 }, f.payload);
      await sleep(20);
    }
    await sleep(500);
    const heard = await window.t.audio(window.t.pc);
    // (c) Mute: B's frames stop at the SFU while its microphone keeps sending.
    await window.t.vb.request({ type: 'SetVoiceState', self_mute: true, self_deaf: false });
    await sleep(300);
    // What arrived before the mute took effect is still queued in A's datagram reader:
    // take it until 100 ms pass without a frame.
    for (const stop = Date.now() + 1500; Date.now() < stop;) {
      const next = await Promise.race([it.next(), sleep(100).then(() => null)]);
      if (!next || next.done) break;
    }
    let late = 0;
    const end2 = Date.now() + 1000;
    while (Date.now() < end2) {
      const next = await Promise.race([it.next(), sleep(Math.max(0, end2 - Date.now())).then(() => null)]);
      if (!next || next.done) break;
      if (next.value.slot === j.slotB) late += 1;
    }
    const out = {
      j, slotA: ja.slot, fromB: fromB.length, levels: [...new Set(fromB.map((f) => f.level))],
      small: fromB.filter((f) => f.payload.length <= 2).length, speakingB, before, heard, late,
      tracks: events.filter((e) => e.type === 'VoiceTrack'),
    };
    window.t.pc.close(); a.close(); window.t.b.close();
    return out;
  });
  console.log('webrtc (shared port):', JSON.stringify(r));
  assert.equal(r.j.state, 'connected', 'ICE and DTLS with the ICE-lite server on the QUIC port');
  assert.notEqual(r.slotA, r.j.slotB);
  assert.equal(r.j.tracks, 3, 'three receiving tracks');
  assert.ok(r.fromB >= 90, `the datagram participant received ${r.fromB} frames from the browser's slot`);
  assert.equal(r.small, 0, 'Opus packets, not empty');
  assert.ok(r.heard.packets >= r.fromB * 0.9, `B received ${r.heard.packets} RTP packets of ${r.fromB}`);
  assert.ok(r.heard.energy > r.before.energy && r.heard.energy > 0, `decoded energy ${r.before.energy} → ${r.heard.energy}`);
  assertTrackOf(r.tracks, r.slotA, r.j.receivingMids);
  assert.ok(r.speakingB, 'VoiceSpeaking for the browser');
  assert.equal(r.late, 0, 'nothing forwarded from a muted browser');
  assert.equal(r.j.candidatePort, Number(shared.quic.split(':')[1]), 'the answer names the QUIC port');
  await page.close();
});

async function newPage(server) {
  const page = await browser.newPage();
  page.on('console', (m) => { if (process.env.QUAVER_TEST_VERBOSE) console.log('page:', m.text()); });
  await page.goto(`http://${server.http}/`);
  return page;
}

// The browser was told which of its receiving tracks carries the datagram speaker.
function assertTrackOf(tracks, slot, mids) {
  const t = tracks.filter((e) => e.slot === slot);
  assert.equal(t.length, 1, `one VoiceTrack for slot ${slot}: ${JSON.stringify(tracks)}`);
  assert.ok(mids.includes(t[0].mid), `VoiceTrack names a receiving transceiver's mid (${t[0].mid} of ${mids})`);
}
