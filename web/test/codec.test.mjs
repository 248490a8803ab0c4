// Checks web/quaver.js against the golden vectors shared with the Rust crate, and that its
// decoder only ever fails with ProtocolError on random and mutated input.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  ProtocolError, decode, encode, encodeFrame, FrameReader, varintEncode, varintDecode,
  encodeUplink, decodeUplink, decodeDownlink, hexToBytes, encodeWs, decodeWs,
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
    const { payload, ...header } = got;
    assert.deepEqual({ ...header, payload: hex(payload) }, d.value, d.name);
    if (d.name.startsWith('uplink')) assert.equal(hex(encodeUplink(header, payload)), d.hex);
  }
  assert.throws(() => decodeDownlink(new Uint8Array(9)), ProtocolError);
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
