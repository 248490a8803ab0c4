// Chromium against webrtc 0.21 (issue 14's library comparison): the browser's fake
// microphone on one sendrecv audio transceiver; `webrtc-compare reflect` answers as an
// ICE-lite peer and sends the browser's Opus packets back; the browser decodes them.
// Prints what it measured; exits 1 if the browser did not connect or decoded nothing.
//
//   (cd web && npm ci) && node bench/webrtc-compare/chromium.mjs
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { createRequire } from 'node:module';
import { createServer } from 'node:http';

const require = createRequire(new URL('../../web/package.json', import.meta.url));
const { chromium } = require('playwright-core');
const BIN = new URL('target/release/webrtc-compare', import.meta.url).pathname;
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ['--no-sandbox', '--disable-gpu', '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
    '--allow-loopback-in-peer-connection', '--autoplay-policy=no-user-gesture-required'],
});
const page = await browser.newPage();
// getUserMedia needs a secure context: a page from 127.0.0.1.
const http = createServer((_, res) => res.end('<!doctype html><title>reflect</title>')).listen(0, '127.0.0.1');
await new Promise((r) => http.once('listening', r));
await page.goto(`http://127.0.0.1:${http.address().port}/`);
const server = spawn(BIN, ['reflect'], { stdio: ['pipe', 'pipe', 'inherit'] });
const lines = createInterface({ input: server.stdout })[Symbol.asyncIterator]();

await page.evaluate(async () => {
  const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
  const pc = new RTCPeerConnection();
  pc.addTransceiver(mic.getAudioTracks()[0], { direction: 'sendrecv' });
  pc.ontrack = (e) => { const el = new Audio(); el.srcObject = new MediaStream([e.track]); el.play().catch(() => {}); window.el = el; };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((res) => {
    if (pc.iceGatheringState === 'complete') return res();
    pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === 'complete') res(); };
    setTimeout(res, 3000);
  });
  window.pc = pc;
});
const offer = await page.evaluate(() => window.pc.localDescription.sdp);
server.stdin.write(offer.trim().split(/\r?\n/).join('\n') + '\n.\n');
let answer = '';
for (;;) {
  const l = await lines.next();
  if (l.done || l.value === '.') break;
  answer += l.value + '\r\n';
}
const r = await page.evaluate(async (sdp) => {
  const pc = window.pc;
  await pc.setRemoteDescription({ type: 'answer', sdp });
  const t0 = Date.now();
  while (pc.connectionState !== 'connected' && Date.now() - t0 < 10000) await new Promise((r) => setTimeout(r, 50));
  const state = pc.connectionState, connectMs = Date.now() - t0;
  await new Promise((r) => setTimeout(r, 3000));
  let energy = 0, packets = 0, lost = 0, jitter = 0;
  (await pc.getStats()).forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'audio') {
      energy += s.totalAudioEnergy ?? 0; packets += s.packetsReceived ?? 0; lost += s.packetsLost ?? 0; jitter = s.jitter ?? 0;
    }
  });
  pc.close();
  return { state, connectMs, energy, packets, lost, jitter };
}, answer);
console.log('chromium ↔ webrtc 0.21:', JSON.stringify(r));
server.stdin.end();
await browser.close();
http.close();
process.exit(r.state === 'connected' && r.energy > 0 && r.packets > 100 ? 0 : 1);
