// A browser joins a voice channel over WebRTC (RTCPeerConnection, Chromium's fake
// microphone) beside a datagram participant (a WebTransport session with web/quaver.js):
// (b) the datagram participant receives the browser's Opus frames from its slot; it sends
// them back as its own speech, and (a) the browser decodes them — audio with non-zero
// energy on a receiving track; (c) the browser's speaking is announced, and its mute stops
// its frames at the SFU.
//
// Needs the built server (QUAVER_BIN, default ../target/debug/quaver) and Chromium
// (CHROMIUM, default /usr/bin/chromium).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chromium } from 'playwright-core';
import { BIN, startServer } from './server.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SECRET = 'webrtc-test-secret-0123456789abcdefghij';

let server, shared, browser, httpAddr, sharedHttp;

const token = (user) => execFileSync(BIN, ['token', '--user', String(user), '--name', `rtc${user}`, '--ttl', '10m'],
  { env: { ...process.env, JWT_SECRET: SECRET } }).toString().trim();

before(async () => {
  assert.ok(existsSync(BIN), `server binary ${BIN} missing: build it first (cargo build)`);
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} missing: apt-get install chromium`);
  const s = await startServer({ JWT_SECRET: SECRET, QUAVER_WEBRTC_LISTEN: '127.0.0.1:0' });
  [server, httpAddr] = [s.child, s.http];
  // The same on the QUIC port itself (RFC 9443 demultiplexing).
  const t = await startServer({ JWT_SECRET: SECRET, QUAVER_WEBRTC_SHARED_PORT: 'true' });
  [shared, sharedHttp] = [t.child, t.http];
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
  server?.kill('SIGTERM');
  shared?.kill('SIGTERM');
});

test('a WebRTC browser and a datagram participant hear each other in one voice channel', () => exchange(httpAddr, 6100));

test('the same with WebRTC on the QUIC port', () => exchange(sharedHttp, 6200));

async function exchange(httpAddr, users) {
  const page = await browser.newPage();
  page.on('console', (m) => { if (process.env.QUAVER_TEST_VERBOSE) console.log('page:', m.text()); });
  await page.goto(`http://${httpAddr}/`);
  const quicPort = (await (await fetch(`http://${httpAddr}/cert-hash`)).json()).port;
  const r = await page.evaluate(async ([ta, tb]) => {
    const sleep = (ms) => new Promise((res) => setTimeout(res, ms));
    const a = await window.quaverConnect(ta), b = await window.quaverConnect(tb);
    const ca = await a.openLane('Chat'), cb = await b.openLane('Chat');
    const g = await ca.request({ type: 'CreateGuild', name: 'webrtc voice' });
    const inv = await ca.request({ type: 'CreateInvite', guild_id: g.id, max_uses: 0, max_age_secs: 0 });
    await cb.request({ type: 'JoinGuild', code: inv.code });
    const vc = await ca.request({ type: 'CreateChannel', guild_id: g.id, kind: 'Voice', name: 'talk', topic: '', user_limit: 0 });
    const va = await a.openLane('Voice'), vb = await b.openLane('Voice');
    const events = [];
    va.onevent = (m) => events.push(m.body);
    const ja = await va.request({ type: 'JoinVoice', channel_id: vc.id, self_mute: false, self_deaf: false });

    // B: the microphone and three receiving tracks; the offer once ICE gathering is done
    // (the server reads no trickled candidates).
    const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
    const pc = new RTCPeerConnection();
    pc.addTransceiver(mic.getAudioTracks()[0], { direction: 'sendonly' });
    for (let i = 0; i < 3; i++) pc.addTransceiver('audio', { direction: 'recvonly' });
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
    while (pc.connectionState !== 'connected' && Date.now() - t0 < 10000) await sleep(50);
    const state = pc.connectionState;

    // (b) A hears B: Opus frames from B's slot.
    const fromB = [];
    const it = a.voice();
    const end = Date.now() + 6000;
    while (fromB.length < 100 && Date.now() < end) {
      const next = await Promise.race([it.next(), sleep(Math.max(0, end - Date.now())).then(() => null)]);
      if (!next || next.done) break;
      if (next.value.slot === jb.slot) fromB.push(next.value);
    }
    const speakingB = events.some((e) => e.type === 'VoiceSpeaking' && e.user_id === b.ready.user.id && e.speaking);

    // (a) B hears A: A speaks B's own Opus frames back (B is not sent its own voice by the
    // SFU, so what B decodes on a receiving track can only be A's).
    const energy = async () => {
      let total = 0;
      (await pc.getStats()).forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'audio') total += s.totalAudioEnergy ?? 0; });
      return total;
    };
    const packets = async () => {
      let total = 0;
      (await pc.getStats()).forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'audio') total += s.packetsReceived ?? 0; });
      return total;
    };
    const before = await energy();
    for (let i = 0; i < fromB.length; i++) {
      const f = fromB[i];
      await a.sendVoice({ flags: i === 0 ? window.quaver.FLAG_TALKSPURT_START : 0, level: 20, voice: true, seq: i, timestamp: i * 960 }, f.payload);
      await sleep(20);
    }
    await sleep(500);
    const after = await energy(), received = await packets();

    // (c) Mute: B's frames stop at the SFU while its microphone keeps sending.
    await vb.request({ type: 'SetVoiceState', self_mute: true, self_deaf: false });
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
      if (next.value.slot === jb.slot) late += 1;
    }
    const out = {
      state, slotA: ja.slot, slotB: jb.slot, tracks: playing.length,
      fromB: fromB.length, levels: [...new Set(fromB.map((f) => f.level))], sizes: fromB.map((f) => f.payload.length),
      speakingB, energyBefore: before, energyAfter: after, packetsReceived: received, lateAfterMute: late, candidatePort,
    };
    pc.close(); a.close(); b.close();
    return out;
  }, [token(users + 1), token(users + 2)]);
  console.log('webrtc test:', JSON.stringify({ ...r, sizes: undefined }));
  assert.equal(r.state, 'connected', 'ICE and DTLS with the ICE-lite server');
  assert.notEqual(r.slotA, r.slotB);
  assert.equal(r.tracks, 3, 'three receiving tracks');
  // (b) About 2 s of 20 ms frames at least, each a real Opus packet from Chromium's encoder.
  assert.ok(r.fromB >= 90, `the datagram participant received ${r.fromB} frames from the browser's slot`);
  assert.ok(r.sizes.every((n) => n > 2), 'Opus packets, not empty');
  // (a) Decoded audio with energy on B's receiving track, from A's frames.
  assert.ok(r.packetsReceived >= r.fromB * 0.9, `B received ${r.packetsReceived} RTP packets of ${r.fromB}`);
  assert.ok(r.energyAfter > r.energyBefore && r.energyAfter > 0, `decoded energy ${r.energyBefore} → ${r.energyAfter}`);
  // (c)
  assert.ok(r.speakingB, 'VoiceSpeaking for the browser');
  assert.equal(r.lateAfterMute, 0, 'nothing forwarded from a muted browser');
  assert.equal(r.candidatePort === quicPort, httpAddr === sharedHttp, `the answer's candidate port ${r.candidatePort} (QUIC ${quicPort})`);
  await page.close();
}
