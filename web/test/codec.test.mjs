// Checks web/quaver.js against the golden vectors shared with the Rust crate, and that its
// decoder only ever fails with ProtocolError on random and mutated input.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  ProtocolError, decode, encode, encodeFrame, FrameReader, varintEncode, varintDecode,
  encodeUplink, decodeUplink, decodeDownlink, hexToBytes, encodeWs, decodeWs, VoiceRepair,
  LaneStream,
} from '../quaver.js';

const vectors = JSON.parse(readFileSync(new URL('../../proto/vectors/messages.json', import.meta.url)));
const hex = (b) => Buffer.from(b).toString('hex');
// JSON cannot hold byte strings: vectors write them as {"$bytes": "hex"}.
const fromJson = (v) => {
  if (Array.isArray(v)) return v.map(fromJson);
  if (v && typeof v === 'object') {
    if ('$bytes' in v) return hexToBytes(v.$bytes);
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, fromJson(x)]));
  }
  return v;
};

test('every vector decodes to its value and encodes to its bytes', () => {
  assert.ok(vectors.messages.length >= 19);
  for (const v of vectors.messages) {
    const value = fromJson(v.value);
    assert.deepEqual(decode(v.type, hexToBytes(v.payload)), value, v.name);
    assert.equal(hex(encode(v.type, value)), v.payload, v.name);
    assert.equal(hex(encodeFrame(v.type, value)), v.frame, v.name);
  }
});

test('WebSocket framing vectors, and malformed frames refused', () => {
  assert.ok(vectors.websocket.length >= 5);
  for (const w of vectors.websocket) {
    const { bytes, ...rest } = w.value;
    const value = bytes === undefined ? rest : { ...rest, bytes: hexToBytes(bytes) };
    const got = decodeWs(hexToBytes(w.hex));
    assert.deepEqual(got.bytes === undefined ? got : { ...got, bytes: new Uint8Array(got.bytes) }, value, w.name);
    assert.equal(hex(encodeWs(value)), w.hex, w.name);
  }
  for (const bad of ['', '00', '40', '0009', '0402', '04020101', '040401']) {
    assert.throws(() => decodeWs(hexToBytes(bad)), ProtocolError, bad);
  }
});

test('datagram vectors', () => {
  for (const d of vectors.datagrams) {
    const bytes = hexToBytes(d.hex);
    const got = d.name.startsWith('uplink') ? decodeUplink(bytes) : decodeDownlink(bytes);
    const { payload, previous, ...header } = got;
    const shown = previous ? { previous: { ...previous, payload: hex(previous.payload) } } : {};
    assert.deepEqual({ ...header, ...shown, payload: hex(payload) }, d.value, d.name);
    if (d.name.startsWith('uplink')) assert.equal(hex(encodeUplink({ ...header, previous }, payload)), d.hex);
  }
  assert.throws(() => decodeDownlink(new Uint8Array(9)), ProtocolError);
});

test('a lost voice datagram is played from the copy in the next one; late and duplicate frames are not', () => {
  // What the SFU makes of speaker 3's frames: the downlink header, then the uplink payload.
  const frame = (seq, withPrevious = true) => {
    const up = encodeUplink({ flags: 0, level: 20, voice: true, seq, timestamp: seq * 960,
      previous: withPrevious && seq > 0 ? { timestamp_offset: 960, payload: Uint8Array.of(seq - 1) } : undefined }, Uint8Array.of(seq));
    const down = new Uint8Array(up.length + 2);
    down.set(up.subarray(0, 2)); down.set([0, 3], 2); down.set(up.subarray(2), 4);
    return decodeDownlink(down);
  };
  const r = new VoiceRepair();
  const got = [0, 1, 3, 4, 2, 4].flatMap((n) => r.take(frame(n)));
  assert.deepEqual(got.map((f) => [f.seq, f.recovered, f.payload[0], f.timestamp, f.flags]),
    [[0, false, 0, 0, 0], [1, false, 1, 960, 0], [2, true, 2, 1920, 0], [3, false, 3, 2880, 0], [4, false, 4, 3840, 0]]);
  assert.equal(r.recovered, 1);
  assert.equal(r.duplicates, 2);
  // Without copies a loss stays a gap; seq wraps.
  const plain = new VoiceRepair();
  assert.deepEqual([65534, 0, 1].flatMap((n) => plain.take(frame(n, false))).map((f) => f.seq), [65534, 0, 1]);
  // A late frame never had is still given (the playback buffer places it); a repeat is not.
  assert.deepEqual(plain.take(frame(65535, false)).map((f) => f.seq), [65535]);
  assert.deepEqual(plain.take(frame(0, false)), []);
});

test('varints round-trip at every boundary', () => {
  for (const v of [0, 63, 64, 16383, 16384, 2 ** 30 - 1, 2 ** 30, 2 ** 40]) {
    const out = [];
    varintEncode(v, out);
    assert.deepEqual(varintDecode(Uint8Array.from(out)), [v, out.length]);
    assert.equal(varintDecode(Uint8Array.from(out.slice(0, -1))), null);
  }
});

test('frame reader splits chunked streams and refuses oversized frames', () => {
  const frames = vectors.messages.map((v) => hexToBytes(v.frame));
  const all = Uint8Array.from(frames.flatMap((f) => [...f]));
  for (const size of [1, 3, 17, 4096]) {
    const r = new FrameReader(1024);
    const got = [];
    for (let i = 0; i < all.length; i += size) {
      r.push(all.subarray(i, i + size));
      for (let p; (p = r.next());) got.push(hex(p));
    }
    assert.deepEqual(got, vectors.messages.map((v) => v.payload));
  }
  const r = new FrameReader(100);
  r.push(Uint8Array.from([0x40, 101]));
  assert.throws(() => r.next(), ProtocolError);
});

test('random and mutated input only ever raises ProtocolError', () => {
  let seed = 0x12345678;
  const rnd = (n) => { seed ^= seed << 13; seed ^= seed >>> 17; seed ^= seed << 5; return (seed >>> 0) % n; };
  const types = ['ClientControl', 'ServerControl', 'StreamOpen', 'Request', 'ServerLane', 'FetchReply'];
  const seeds = vectors.messages.map((v) => hexToBytes(v.payload));
  let accepted = 0;
  for (let i = 0; i < 20000; i++) {
    let p;
    if (i % 2) p = Uint8Array.from({ length: rnd(48) }, () => rnd(256));
    else {
      p = Uint8Array.from(seeds[i % seeds.length]);
      if (p.length) p[rnd(p.length)] ^= 1 << rnd(8);
      if (rnd(3) === 0) p = p.subarray(0, rnd(p.length + 1));
    }
    for (const t of types) {
      try { decode(t, p); accepted++; } catch (e) { assert.ok(e instanceof ProtocolError, `${t}: ${e}`); }
    }
    try { decodeWs(p); accepted++; } catch (e) { assert.ok(e instanceof ProtocolError, `WebSocket: ${e}`); }
  }
  assert.ok(accepted > 0);
});

test('a request whose write fails as its lane ends rejects once, with the write error, and leaves nothing unobserved', async () => {
  // The connection went (a revocation, say) while a request was being written: the write
  // fails, and the lane's reader ends. Only the caller hears of it — a rejection no one
  // listens to would be an uncaught error on the page (and Node fails the test run on one).
  const unhandled = [];
  const onUnhandled = (e) => unhandled.push(e);
  process.on('unhandledRejection', onUnhandled);
  try {
    let endReader;
    const reader = { next: () => new Promise((resolve) => { endReader = () => resolve(null); }) };
    const writer = { write: () => new Promise((_, reject) => setTimeout(() => { endReader(); reject(new Error('connection closed')); }, 5)) };
    const lane = new LaneStream('Chat', writer, reader);
    await assert.rejects(lane.request({ type: 'MarkRead', channel_id: 1, seq: 1 }), /connection closed/);
    await lane.done;
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(unhandled, []);
    await assert.rejects(lane.request({ type: 'MarkRead', channel_id: 1, seq: 1 }), ProtocolError);
  } finally {
    process.off('unhandledRejection', onUnhandled);
  }
});
