// The web app's jitter buffer (quaver.js `Playout`) against simulated arrivals: 20 ms
// frames of 48 kHz audio, a network delay with uniform jitter and loss, the audio thread
// pulling 128 samples at a time. Each frame's samples hold its own index, so what played
// where can be checked sample by sample.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Playout } from '../quaver.js';

const FRAME = 960;

/** A seeded generator (the same runs every time). */
function rng(seed) {
  let x = seed >>> 0 || 1;
  return () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x / 2 ** 32; };
}

/**
 * Runs `seconds` of one speaker through a Playout: frame n is sent at n·20 ms and arrives
 * after 50 ms plus jitter (uniform, up to `jitter(t)` ms at send time t), unless lost.
 * Returns the buffer, the frames lost, and what was heard: per frame index, whether its
 * samples came out in order (the n-th frame's samples are all n + 1).
 */
function run({ seconds = 20, jitter = () => 0, loss = 0, seed = 1 }) {
  const r = rng(seed);
  const p = new Playout(48000);
  const frames = seconds * 50;
  const arrivals = [];
  let lost = 0;
  for (let n = 0; n < frames; n++) {
    if (r() < loss) { lost++; continue; }
    const at = n * FRAME + 2400 + Math.round(r() * jitter(n * 20) * 48);
    arrivals.push([at, n]);
  }
  arrivals.sort((a, b) => a[0] - b[0]);
  const heard = new Map();
  let next = 0;
  const delays = [];
  for (let now = 0; now < frames * FRAME + 48000; now += 128) {
    while (next < arrivals.length && arrivals[next][0] <= now) {
      const n = arrivals[next][1];
      p.push(new Float32Array(FRAME).fill(n + 1), now, n * FRAME);
      next++;
    }
    const out = new Float32Array(128);
    p.pull(out, now);
    for (const x of out) if (x > 0) heard.set(x - 1, (heard.get(x - 1) ?? 0) + 1);
    if (p.delay !== null) delays.push(p.delay);
  }
  const whole = [...heard.values()].filter((c) => c === FRAME).length;
  // Samples of heard frames left out when the delay came down (it skips 1 ms per 100 ms).
  const cut = [...heard.values()].reduce((a, c) => a + FRAME - c, 0);
  return { p, lost, frames, whole, heard: heard.size, cut, meanDelayMs: delays.reduce((a, b) => a + b, 0) / delays.length / 48 };
}

test('a steady stream plays every frame whole, at the lowest delay (40 ms above the network)', () => {
  const { p, whole, frames, meanDelayMs } = run({});
  assert.equal(whole, frames);
  assert.equal(p.late, 0);
  assert.equal(p.concealed, 0);
  // 50 ms of network, 40 of buffer, and the arrival seen at the next 128-sample pull.
  assert.ok(meanDelayMs >= 90 && meanDelayMs <= 93, `delay ${meanDelayMs} ms`);
});

test('20 ms of jitter: nearly every frame in time, at a delay that covers the spread', () => {
  const { p, heard, frames, meanDelayMs } = run({ jitter: () => 20 });
  assert.ok(p.late <= frames * 0.005, `late ${p.late} of ${frames}`);
  assert.ok(heard >= frames * 0.995, `${heard} of ${frames} heard`);
  // 50 ms + the spread (≈ 19 ms at the 95th percentile) + a frame, or the 40 ms floor.
  assert.ok(meanDelayMs > 90 && meanDelayMs < 105, `delay ${meanDelayMs} ms`);
});

test('a loss is silence in its place, not a shift of everything after it', () => {
  const { p, lost, heard, cut, frames } = run({ jitter: () => 20, loss: 0.03, seed: 7 });
  assert.ok(lost > 15, `the simulation lost ${lost}`);
  // Every frame that arrived in time was heard; each loss is concealed once (two in a row
  // count two), none is taken for a pause; what the delay's easing skipped is a sliver.
  assert.equal(heard + lost + p.late, frames);
  assert.ok(Math.abs(p.concealed - lost) <= 2, `concealed ${p.concealed} for ${lost} lost`);
  assert.ok(cut < frames * FRAME * 0.01, `${cut} samples skipped`);
});

test('jitter that grows mid-stream raises the delay; when it eases the delay comes down', () => {
  const { p, frames, heard, meanDelayMs } = run({ seconds: 40, jitter: (t) => (t > 10000 && t < 25000 ? 80 : 5) });
  assert.ok(heard >= frames * 0.995, `${heard} of ${frames} heard`);
  assert.ok(p.late <= frames * 0.005, `late ${p.late}`);
  // After the bursty stretch the delay settles back near 50 + 40 ms.
  assert.ok(p.delay / 48 < 100, `delay at the end ${p.delay / 48} ms`);
  assert.ok(meanDelayMs > 95, `it did rise: mean ${meanDelayMs} ms`);
});

test('a jump of the media clock past the deepest buffer starts afresh; a smaller one is jitter', () => {
  const p = new Playout(48000);
  p.push(new Float32Array(FRAME).fill(1), 10_000, 0);
  p.push(new Float32Array(FRAME).fill(2), 10_960, 960 - 48000 * 0.15);
  assert.equal(p.frames.length, 2, '150 ms: kept');
  p.push(new Float32Array(FRAME).fill(3), 11_920, 9_000_000);
  assert.equal(p.frames.length, 1, 'far off: only the new frame');
  assert.equal(p.delays.length, 1);
});
