// quaver.js — the Quaver browser client: the wire codec (frames, messages, voice datagrams)
// and a WebTransport session. An ES module with no dependencies and no build step.
//
// The codec is table-driven from SCHEMA below, which mirrors proto/src/msg.rs; the golden
// vectors in proto/vectors/messages.json are checked against it by web/test (node --test).
//
// Value conventions: structs are objects with snake_case fields as in PROTOCOL.md; C-like
// enums (Lane, DeviceKind, Compression) are strings; data enums are objects with a `type`
// field naming the variant plus the variant's fields; byte strings are Uint8Array; user ids
// are decimal strings (they exceed 2^53); other u64 values are Numbers (BigInt past 2^53).

export const PROTOCOL_VERSION = 2;
export const WEBTRANSPORT_PATH = '/quaver';
export const DEFAULT_MAX_FRAME = 256 * 1024;

/** Thrown for any malformed input. */
export class ProtocolError extends Error {
  constructor(message) { super(message); this.name = 'ProtocolError'; }
}

/** The server closed the session with a close code. */
export class ClosedError extends Error {
  constructor(code, reason) {
    super(`closed by server: ${code} ${reason}`);
    this.name = 'ClosedError';
    this.code = code;
    this.reason = reason;
    this.reconnect = code >= 1000 && code < 2000;
  }
}

/** Close codes (see PROTOCOL.md): 1000–1999 reconnect, 4000–4999 terminal. */
export const CloseCode = Object.freeze({
  NORMAL: 0, GOING_AWAY: 1000, OVERLOADED: 1001, HEARTBEAT_TIMEOUT: 1002, INTERNAL_ERROR: 1003,
  RATE_LIMITED: 1004, SESSION_REPLACED: 1005, TOKEN_REFRESH_MISSED: 1006, SLOW_CONSUMER: 1007, DISCONNECTED: 1008,
  PROTOCOL_ERROR: 4000, FRAME_TOO_LARGE: 4001, UNSUPPORTED_VERSION: 4002, HELLO_TIMEOUT: 4003,
  ORIGIN_NOT_ALLOWED: 4004, TOKEN_MISSING: 4010, TOKEN_MALFORMED: 4011, TOKEN_EXPIRED: 4012,
  TOKEN_NOT_YET_VALID: 4013, TOKEN_BAD_SIGNATURE: 4014, TOKEN_WRONG_ALGORITHM: 4015,
  TOKEN_UNSIGNED: 4016, TOKEN_INVALID_CLAIMS: 4017, RESUME_REFUSED: 4018, TOKEN_REVOKED: 4019, BANNED: 4030,
  REMOVED: 4031, REFUSED: 4032,
});

// ---------------------------------------------------------------------------------------
// QUIC varints (frame lengths)

export function varintEncode(v, out) {
  if (v < 0x40) out.push(v);
  else if (v < 0x4000) out.push(0x40 | (v >> 8), v & 0xff);
  else if (v < 0x40000000) out.push(0x80 | (v >>> 24), (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff);
  else {
    const b = BigInt(v) | (3n << 62n);
    for (let i = 7; i >= 0; i--) out.push(Number((b >> BigInt(i * 8)) & 0xffn));
  }
}

/** Returns [value, length] or null when `buf` (from `off`) does not hold a whole varint. */
export function varintDecode(buf, off = 0) {
  if (off >= buf.length) return null;
  const n = 1 << (buf[off] >> 6);
  if (buf.length - off < n) return null;
  let v = BigInt(buf[off] & 0x3f);
  for (let i = 1; i < n; i++) v = (v << 8n) | BigInt(buf[off + i]);
  return [v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v, n];
}

// ---------------------------------------------------------------------------------------
// The WebSocket framing (PROTOCOL.md §11): each binary message is a stream id (varint), a
// kind byte, and the kind's payload — stream bytes, a reset or stop code, or a datagram.

const WS_KINDS = ['Data', 'DataFin', 'Reset', 'Stop', 'Datagram'];

/** One WebSocket framing message as bytes: `{type: 'Data', stream, fin, bytes}`,
 * `{type: 'Reset'|'Stop', stream, code}` or `{type: 'Datagram', bytes}`. */
export function encodeWs(f) {
  const out = [];
  varintEncode(f.type === 'Datagram' ? 0 : f.stream, out);
  if (f.type === 'Data') out.push(f.fin ? 1 : 0);
  else if (f.type === 'Reset' || f.type === 'Stop') { out.push(f.type === 'Reset' ? 2 : 3); varintEncode(f.code, out); }
  else if (f.type === 'Datagram') out.push(4);
  else throw new ProtocolError(`unknown WebSocket frame ${f.type}`);
  const head = Uint8Array.from(out);
  if (f.type !== 'Data' && f.type !== 'Datagram') return head;
  const all = new Uint8Array(head.length + f.bytes.length);
  all.set(head); all.set(f.bytes, head.length);
  return all;
}

/** Reads one WebSocket framing message; throws ProtocolError on a malformed one. */
export function decodeWs(msg) {
  const id = varintDecode(msg);
  if (!id || id[1] >= msg.length) throw new ProtocolError('truncated WebSocket frame');
  const [stream, n] = id;
  const kind = WS_KINDS[msg[n]];
  const rest = msg.subarray(n + 1);
  switch (kind) {
    case 'Data': case 'DataFin': return { type: 'Data', stream, fin: kind === 'DataFin', bytes: rest };
    case 'Reset': case 'Stop': {
      const c = varintDecode(rest);
      if (!c) throw new ProtocolError('truncated WebSocket frame');
      if (c[1] !== rest.length) throw new ProtocolError('bytes after a WebSocket frame\'s code');
      return { type: kind, stream, code: c[0] };
    }
    case 'Datagram':
      if (stream !== 0) throw new ProtocolError('a datagram names a stream');
      return { type: 'Datagram', bytes: rest };
    default: throw new ProtocolError(`unknown WebSocket frame kind ${msg[n]}`);
  }
}

/** The WebSocket close code carrying Quaver close code `code` (PROTOCOL.md §11): 0 → 1000,
 * 1000–1999 → 3000–3999, 4000–4999 as they are, anything else 4000. */
export function wsCloseCode(code) {
  if (code === 0) return 1000;
  if (code >= 1000 && code <= 1999) return code + 2000;
  if (code >= 4000 && code <= 4999) return code;
  return 4000;
}

/** The Quaver close code a WebSocket close code carries, or null (1001, 1006, …: no
 * Quaver close). */
export function quaverCloseCode(ws) {
  if (ws === 1000) return 0;
  if (ws >= 3000 && ws <= 3999) return ws - 2000;
  if (ws >= 4000 && ws <= 4999) return ws;
  return null;
}

/** A voice datagram is dropped, not queued, while more than this waits in the socket. */
const WS_DATAGRAM_BACKLOG = 16 * 1024;

/**
 * The WebSocket framing (PROTOCOL.md §11) shaped like the part of the browser's
 * `WebTransport` a `Session` uses — `ready`, `closed`, `close()`,
 * `createBidirectionalStream()`, `datagrams` — so that everything above is the same on
 * either transport. A stream takes its id when it first sends (ids go out in increasing
 * order, as the server requires, whatever order streams are created in).
 */
export class WebSocketTransport {
  constructor(url) {
    this.ws = new WebSocket(url, 'quaver');
    this.ws.binaryType = 'arraybuffer';
    this.nextId = 0;
    /** The `ClosedError` of a close that carried a Quaver code, once closed. */
    this.closedWith = null;
    this.streams = new Map();
    this.ready = new Promise((resolve, reject) => {
      this.ws.addEventListener('open', () => resolve(), { once: true });
      this.ws.addEventListener('error', () => reject(new Error('the WebSocket connection failed')), { once: true });
      this.ws.addEventListener('close', (e) => reject(new Error(`the WebSocket closed (${e.code})`)), { once: true });
    });
    this.ready.catch(() => {});
    let dgController;
    const dgReadable = new ReadableStream({ start: (c) => { dgController = c; } }, { highWaterMark: 64 });
    this.closed = new Promise((resolve) => {
      this.ws.addEventListener('close', (e) => {
        const err = new ClosedError(quaverCloseCode(e.code) ?? e.code, e.reason);
        // A write after the close says why, when the close said (an upgrade refused at the
        // door is closed with `overloaded` before the page's `Hello` is written).
        if (quaverCloseCode(e.code) !== null) this.closedWith = err;
        for (const st of this.streams.values()) st.fail(err);
        this.streams.clear();
        try { dgController.close(); } catch (_) { /* already closed */ }
        resolve({ closeCode: quaverCloseCode(e.code), reason: e.reason });
      });
    });
    this.ws.addEventListener('message', (e) => {
      if (!(e.data instanceof ArrayBuffer)) return this.#protocolError('a text message');
      let f;
      try { f = decodeWs(new Uint8Array(e.data)); } catch (err) { return this.#protocolError(err.message); }
      if (f.type === 'Datagram') {
        // A reader that falls behind loses datagrams (real-time), as with WebTransport.
        if (dgController.desiredSize > 0) dgController.enqueue(f.bytes);
        return;
      }
      const st = this.streams.get(f.stream);
      if (!st) return; // a stream this side is done with
      if (f.type === 'Data') st.data(f.bytes, f.fin);
      else if (f.type === 'Reset') st.fail(new ClosedError(f.code, 'stream reset by the server'));
      else if (f.type === 'Stop') st.stopped = true;
    });
    const send = (bytes) => this.#send(bytes);
    this.datagrams = {
      readable: dgReadable,
      writable: new WritableStream({
        write: (bytes) => {
          if (this.ws.readyState !== WebSocket.OPEN) throw this.#closedError();
          if (this.ws.bufferedAmount > WS_DATAGRAM_BACKLOG) return; // late audio is worse than lost
          send(encodeWs({ type: 'Datagram', bytes }));
        },
      }),
    };
  }

  #send(bytes) {
    if (this.ws.readyState !== WebSocket.OPEN) throw this.#closedError();
    this.ws.send(bytes);
  }

  #closedError() {
    return this.closedWith ?? new Error('the WebSocket is closed');
  }

  #protocolError(why) {
    console.warn(`quaver: WebSocket framing error (${why}); closing`);
    try { this.ws.close(wsCloseCode(CloseCode.PROTOCOL_ERROR), 'protocol error'); } catch (_) { /* closing */ }
  }

  /** A client stream: `{ readable, writable }` as WebTransport's. */
  async createBidirectionalStream() {
    const self = this;
    const st = { id: null, controller: null, stopped: false, ended: false };
    const idOf = () => {
      if (st.id === null) { st.id = self.nextId; self.nextId += 4; self.streams.set(st.id, st); }
      return st.id;
    };
    st.data = (bytes, fin) => {
      try {
        if (bytes.length) st.controller.enqueue(bytes);
        if (fin) { st.controller.close(); st.ended = true; }
      } catch (_) { /* the reader cancelled: nothing to deliver to */ }
      if (fin) self.#settle(st);
    };
    st.fail = (err) => { try { st.controller.error(err); } catch (_) { /* already errored */ } st.ended = true; };
    const readable = new ReadableStream({
      start(c) { st.controller = c; },
      cancel(reason) {
        if (st.id === null || st.ended) return;
        try { self.#send(encodeWs({ type: 'Stop', stream: st.id, code: 0 })); } catch (_) { /* closed */ }
        void reason;
      },
    });
    const writable = new WritableStream({
      write(bytes) {
        if (st.stopped) throw new ClosedError(0, 'stream stopped by the server');
        self.#send(encodeWs({ type: 'Data', stream: idOf(), fin: false, bytes }));
      },
      close() {
        self.#send(encodeWs({ type: 'Data', stream: idOf(), fin: true, bytes: new Uint8Array(0) }));
        st.finished = true;
        self.#settle(st);
      },
      abort() {
        if (st.id === null) return;
        try { self.#send(encodeWs({ type: 'Reset', stream: st.id, code: 0 })); } catch (_) { /* closed */ }
        st.finished = true;
        self.#settle(st);
      },
    });
    return { readable, writable };
  }

  /** Both directions over: the stream is forgotten (late frames for it are dropped). */
  #settle(st) { if (st.finished && st.ended && st.id !== null) this.streams.delete(st.id); }

  /** As WebTransport's `close({ closeCode, reason })`. */
  close({ closeCode = 0, reason = '' } = {}) {
    try { this.ws.close(wsCloseCode(closeCode), reason.slice(0, 120)); } catch (_) { /* already closing */ }
  }
}

// ---------------------------------------------------------------------------------------
// bincode 2 "standard" encoding: little-endian; u16/u32/u64 as varints (< 251: one byte;
// 251 + u16; 252 + u32; 253 + u64); u8 and bool one byte; lengths and enum tags as varints.

const utf8enc = new TextEncoder();
const utf8dec = new TextDecoder('utf-8', { fatal: true });

class Writer {
  constructor() { this.b = []; }
  u8(v) { this.b.push(v & 0xff); }
  uint(v, max) {
    const big = typeof v === 'bigint' ? v : BigInt(v);
    if (big < 0n || big > max) throw new ProtocolError(`integer ${v} out of range`);
    if (big < 251n) { this.b.push(Number(big)); return; }
    let marker, bytes;
    if (big <= 0xffffn) { marker = 251; bytes = 2; } else if (big <= 0xffffffffn) { marker = 252; bytes = 4; } else { marker = 253; bytes = 8; }
    this.b.push(marker);
    for (let i = 0; i < bytes; i++) this.b.push(Number((big >> BigInt(8 * i)) & 0xffn));
  }
  raw(bytes) { for (const x of bytes) this.b.push(x); }
  bytes() { return Uint8Array.from(this.b); }
}

class Reader {
  constructor(buf) { this.buf = buf; this.off = 0; }
  need(n) { if (this.buf.length - this.off < n) throw new ProtocolError('message truncated'); }
  u8() { this.need(1); return this.buf[this.off++]; }
  uint(max) {
    const first = this.u8();
    let v;
    if (first < 251) v = BigInt(first);
    else {
      const bytes = { 251: 2, 252: 4, 253: 8 }[first];
      if (!bytes) throw new ProtocolError(`bad integer marker ${first}`);
      this.need(bytes);
      v = 0n;
      for (let i = 0; i < bytes; i++) v |= BigInt(this.buf[this.off + i]) << BigInt(8 * i);
      this.off += bytes;
    }
    if (v > max) throw new ProtocolError('integer out of range');
    return v;
  }
  take(n) { this.need(n); const s = this.buf.subarray(this.off, this.off + n); this.off += n; return s; }
}

const U16 = 0xffffn, U32 = 0xffffffffn, U64 = 0xffffffffffffffffn;
const num = (v) => (v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v);
const MAX_LEN = 4 * 1024 * 1024;
const length = (r) => { const n = Number(r.uint(U64 > BigInt(MAX_LEN) ? BigInt(MAX_LEN) : U64)); r.need(0); return n; };

export function hexToBytes(h) {
  if (h.length % 2 || /[^0-9a-f]/i.test(h)) throw new ProtocolError('bad hex');
  return Uint8Array.from(h.match(/../g) ?? [], (x) => parseInt(x, 16));
}

/** Lowercase hex of a byte string. */
export function bytesToHex(b) {
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}
const hex = bytesToHex;

// Type constructors: each is { enc(writer, value), dec(reader) }.
const T = {
  u8: { enc: (w, v) => w.u8(v), dec: (r) => r.u8() },
  u16: { enc: (w, v) => w.uint(v, U16), dec: (r) => Number(r.uint(U16)) },
  u32: { enc: (w, v) => w.uint(v, U32), dec: (r) => Number(r.uint(U32)) },
  u64: { enc: (w, v) => w.uint(v, U64), dec: (r) => num(r.uint(U64)) },
  id: { enc: (w, v) => w.uint(BigInt(v), U64), dec: (r) => r.uint(U64).toString() },
  bool: {
    enc: (w, v) => w.u8(v ? 1 : 0),
    dec: (r) => { const b = r.u8(); if (b > 1) throw new ProtocolError('bad bool'); return b === 1; },
  },
  string: {
    enc: (w, v) => { const b = utf8enc.encode(v); w.uint(b.length, U64); w.raw(b); },
    dec: (r) => { const n = length(r); try { return utf8dec.decode(r.take(n)); } catch (e) { if (e instanceof ProtocolError) throw e; throw new ProtocolError('invalid UTF-8'); } },
  },
  bytes: {
    enc: (w, v) => { w.uint(v.length, U64); w.raw(v); },
    dec: (r) => Uint8Array.from(r.take(length(r))),
  },
  sessionId: {
    enc: (w, v) => { const b = hexToBytes(v); if (b.length !== 16) throw new ProtocolError('session id is 16 bytes'); w.raw(b); },
    dec: (r) => hex(r.take(16)),
  },
};
const opt = (t) => ({
  enc: (w, v) => { if (v === null || v === undefined) w.u8(0); else { w.u8(1); t.enc(w, v); } },
  dec: (r) => { const tag = r.u8(); if (tag > 1) throw new ProtocolError('bad option tag'); return tag ? t.dec(r) : null; },
});
const vec = (t) => ({
  enc: (w, v) => { w.uint(v.length, U64); for (const x of v) t.enc(w, x); },
  dec: (r) => { const n = length(r); const out = []; for (let i = 0; i < n; i++) out.push(t.dec(r)); return out; },
});
const struct = (fields) => ({
  fields,
  enc: (w, v) => { for (const [k, t] of fields) t.enc(w, v[k]); },
  dec: (r) => { const o = {}; for (const [k, t] of fields) o[k] = t.dec(r); return o; },
});
// A C-like enum: values are the variant names.
const names = (...variants) => ({
  variants,
  enc: (w, v) => { const i = variants.indexOf(v); if (i < 0) throw new ProtocolError(`unknown variant ${v}`); w.uint(i, U32); },
  dec: (r) => { const i = Number(r.uint(U32)); if (i >= variants.length) throw new ProtocolError(`unknown variant ${i}`); return variants[i]; },
});
// A data enum: [name, fields] pairs; a newtype variant around a struct lists the struct's
// fields (the encoding is the same), around anything else names one field.
const tagged = (variants) => ({
  variants,
  enc: (w, v) => {
    const i = variants.findIndex(([n]) => n === v.type);
    if (i < 0) throw new ProtocolError(`unknown variant ${v.type}`);
    w.uint(i, U32);
    for (const [k, t] of variants[i][1]) t.enc(w, v[k]);
  },
  dec: (r) => {
    const i = Number(r.uint(U32));
    if (i >= variants.length) throw new ProtocolError(`unknown variant ${i}`);
    const [type, fields] = variants[i];
    const o = { type };
    for (const [k, t] of fields) o[k] = t.dec(r);
    return o;
  },
});

const Lane = names('Chat', 'Presence', 'Typing', 'Voice', 'Notifications');
const DeviceKind = names('Desktop', 'Mobile', 'Web');
const Compression = names('None', 'Zstd');
const LaneSeq = struct([['lane', Lane], ['seq', T.u64]]);
const ErrorBodyFields = [['code', T.u16], ['message', T.string], ['retry_after_ms', opt(T.u32)]];
const ErrorBody = struct(ErrorBodyFields);
const HelloFields = [
  ['version', T.u16], ['token', opt(T.string)], ['device', DeviceKind],
  ['resume', opt(struct([['session_id', T.sessionId], ['lanes', vec(LaneSeq)], ['channels', vec(struct([['channel_id', T.id], ['seq', T.u64]]))]]))],
  ['compression', Compression],
];
const HeartbeatFields = [['nonce', T.u32], ['lanes', vec(LaneSeq)]];
const ReadyFields = [
  ['session_id', T.sessionId], ['user', struct([['id', T.id], ['name', T.string]])],
  ['heartbeat_interval_ms', T.u32],
  ['limits', struct([['max_frame_bytes', T.u32], ['max_datagram_bytes', T.u32], ['heartbeat_timeout_ms', T.u32]])],
  ['compression', Compression], ['token_expires_at_ms', T.u64], ['node', T.string],
];
const ChannelKind = names('Text', 'Voice', 'Dm', 'GroupDm');
const OverwriteTarget = tagged([['Role', [['id', T.id]]], ['Member', [['id', T.id]]]]);
const Overwrite = struct([['target', OverwriteTarget], ['allow', T.u64], ['deny', T.u64]]);
const Guild = struct([['id', T.id], ['name', T.string], ['owner_id', T.id]]);
const GuildFields = Guild.fields;
const Role = struct([['id', T.id], ['guild_id', T.id], ['name', T.string], ['permissions', T.u64], ['position', T.u32]]);
const Channel = struct([
  ['id', T.id], ['guild_id', opt(T.id)], ['kind', ChannelKind], ['name', T.string], ['topic', T.string],
  ['last_seq', T.u64], ['overwrites', vec(Overwrite)], ['recipients', vec(T.id)], ['user_limit', T.u32],
]);
const Member = struct([
  ['user_id', T.id], ['name', T.string], ['roles', vec(T.id)], ['avatar_url', T.string], ['timed_out_until_ms', T.u64],
]);
const Mentions = struct([['users', vec(T.id)], ['roles', vec(T.id)], ['everyone', T.bool]]);
const Reaction = struct([['emoji', T.string], ['count', T.u32]]);
const Message = struct([
  ['id', T.id], ['channel_id', T.id], ['author_id', T.id], ['nonce', T.id], ['content', T.string],
  ['reply_to', opt(T.id)], ['mentions', Mentions], ['seq', T.u64], ['created_at_ms', T.u64],
  ['edited_at_ms', opt(T.u64)], ['deleted', T.bool], ['reactions', vec(Reaction)],
]);
const ReadState = struct([['channel_id', T.id], ['last_read_seq', T.u64], ['mention_count', T.u32]]);
const Invite = struct([['code', T.string], ['guild_id', T.id], ['max_uses', T.u32], ['expires_at_ms', opt(T.u64)]]);
const GuildSnapshot = struct([
  ['guild', Guild], ['roles', vec(Role)], ['channels', vec(Channel)], ['member_count', T.u32], ['members', vec(Member)],
]);
const PresenceStatus = names('Online', 'Idle', 'Dnd', 'Invisible', 'Offline');
const Presence = struct([
  ['user_id', T.id], ['status', PresenceStatus],
  ['client_status', struct([['desktop', PresenceStatus], ['mobile', PresenceStatus], ['web', PresenceStatus]])],
  ['custom_status', opt(T.string)], ['activity', opt(T.string)],
]);
const VoiceState = struct([
  ['guild_id', T.id], ['channel_id', T.id], ['user_id', T.id], ['slot', T.u16], ['self_mute', T.bool], ['self_deaf', T.bool],
  ['server_mute', T.bool], ['server_deaf', T.bool], ['speaking', T.bool],
]);
const VoiceDownlinkStats = struct([['packets', T.u64], ['lost', T.u64], ['jitter_us', T.u32], ['rtt_us', opt(T.u32)]]);
const VoiceParticipantStats = struct([
  ['user_id', T.id], ['slot', T.u16], ['received', T.u64], ['forwarded', T.u64], ['dropped', T.u64], ['lost', T.u64], ['jitter_us', T.u32],
  ['downlink', opt(VoiceDownlinkStats)],
]);
const RelationshipKind = names('Friend', 'IncomingRequest', 'OutgoingRequest', 'Blocked');
const Relationship = struct([['user_id', T.id], ['kind', RelationshipKind]]);
const MuteTarget = tagged([['Guild', [['id', T.id]]], ['Channel', [['id', T.id]]]]);
const NotificationKind = names('Mention', 'Reply', 'Reaction', 'DirectMessage', 'FriendRequest', 'FriendAccepted');
const Notification = struct([
  ['id', T.id], ['kind', NotificationKind], ['actor_id', T.id], ['guild_id', opt(T.id)], ['channel_id', opt(T.id)],
  ['message_id', opt(T.id)], ['preview', T.string], ['created_at_ms', T.u64], ['read', T.bool],
]);
ReadyFields.push(['guilds', vec(GuildSnapshot)], ['private_channels', vec(Channel)], ['read_states', vec(ReadState)],
  ['presences', vec(Presence)], ['relationships', vec(Relationship)], ['mutes', vec(MuteTarget)],
  ['notifications_unread', T.u32], ['notifications', vec(Notification)], ['voice_states', vec(VoiceState)]);
const HistoryAnchor = tagged([['Latest', []], ['Before', [['seq', T.u64]]], ['After', [['seq', T.u64]]], ['Around', [['seq', T.u64]]]]);
const FetchRequest = tagged([
  ['ServerInfo', []],
  ['History', [['channel_id', T.id], ['anchor', HistoryAnchor], ['limit', T.u32]]],
  ['Guilds', []],
  ['Channels', [['guild_id', T.id]]],
  ['Members', [['guild_id', T.id], ['after', T.id], ['limit', T.u32]]],
  ['Notifications', [['before', T.id], ['limit', T.u32]]],
  ['Relationships', []],
  ['Invite', [['code', T.string]]],
]);
const FetchResponse = tagged([
  ['ServerInfo', [['version', T.string], ['node', T.string], ['protocols', vec(T.u16)], ['max_frame_bytes', T.u32]]],
  ['History', [['messages', vec(Message)], ['more_before', T.bool], ['more_after', T.bool]]],
  ['Guilds', [['guilds', vec(GuildSnapshot)]]],
  ['Channels', [['channels', vec(Channel)]]],
  ['Members', [['members', vec(Member)]]],
  ['Notifications', [['notifications', vec(Notification)], ['unread', T.u32]]],
  ['Relationships', [['relationships', vec(Relationship)]]],
  ['Invite', [['invite', Invite], ['guild', Guild], ['member_count', T.u32], ['member', T.bool]]],
]);
const gid = ['guild_id', T.id], cid = ['channel_id', T.id], mid = ['message_id', T.id], uid = ['user_id', T.id];
const RequestBody = tagged([
  ['Ping', [['data', T.bytes]]],
  ['CreateGuild', [['name', T.string]]],
  ['RenameGuild', [gid, ['name', T.string]]],
  ['DeleteGuild', [gid]],
  ['CreateInvite', [gid, ['max_uses', T.u32], ['max_age_secs', T.u32]]],
  ['JoinGuild', [['code', T.string]]],
  ['LeaveGuild', [gid]],
  ['KickMember', [gid, uid]],
  ['BanMember', [gid, uid, ['reason', T.string]]],
  ['CreateRole', [gid, ['name', T.string], ['permissions', T.u64]]],
  ['UpdateRole', [gid, ['role_id', T.id], ['name', T.string], ['permissions', T.u64]]],
  ['SetMemberRole', [gid, uid, ['role_id', T.id], ['add', T.bool]]],
  ['CreateChannel', [gid, ['kind', ChannelKind], ['name', T.string], ['topic', T.string], ['user_limit', T.u32]]],
  ['DeleteChannel', [cid]],
  ['SetOverwrite', [cid, ['target', OverwriteTarget], ['allow', T.u64], ['deny', T.u64]]],
  ['DeleteOverwrite', [cid, ['target', OverwriteTarget]]],
  ['OpenDm', [uid]],
  ['CreateGroupDm', [['user_ids', vec(T.id)], ['name', T.string]]],
  ['SendMessage', [cid, ['nonce', T.id], ['content', T.string], ['reply_to', opt(T.id)]]],
  ['EditMessage', [cid, mid, ['content', T.string]]],
  ['DeleteMessage', [cid, mid]],
  ['AddReaction', [cid, mid, ['emoji', T.string]]],
  ['RemoveReaction', [cid, mid, ['emoji', T.string]]],
  ['MarkRead', [cid, ['seq', T.u64]]],
  ['SetPresence', [['status', PresenceStatus], ['custom_status', opt(T.string)], ['activity', opt(T.string)]]],
  ['TypingStart', [cid]],
  ['TypingStop', [cid]],
  ['WatchTyping', [cid]],
  ['SendFriendRequest', [uid]],
  ['AcceptFriendRequest', [uid]],
  ['DeclineFriendRequest', [uid]],
  ['CancelFriendRequest', [uid]],
  ['RemoveFriend', [uid]],
  ['BlockUser', [uid]],
  ['UnblockUser', [uid]],
  ['SetMute', [['target', MuteTarget], ['muted', T.bool]]],
  ['AckNotifications', [['up_to', T.id]]],
  ['MarkNotificationsRead', [['ids', vec(T.id)], ['all', T.bool]]],
  ['JoinVoice', [cid, ['self_mute', T.bool], ['self_deaf', T.bool]]],
  ['LeaveVoice', []],
  ['SetVoiceState', [['self_mute', T.bool], ['self_deaf', T.bool]]],
  ['ServerMute', [gid, uid, ['mute', T.bool]]],
  ['ServerDeafen', [gid, uid, ['deaf', T.bool]]],
  ['MoveMember', [gid, uid, cid]],
  ['VoiceStats', []],
  ['JoinVoiceWebRtc', [cid, ['self_mute', T.bool], ['self_deaf', T.bool], ['offer', T.string]]],
  ['DeleteRole', [gid, ['role_id', T.id]]],
  ['MoveRole', [gid, ['role_id', T.id], ['position', T.u32]]],
  ['TimeoutMember', [gid, uid, ['duration_secs', T.u32], ['reason', T.string]]],
  ['SetVoiceOptions', [['redundancy', T.bool]]],
  ['ViewChannels', [['channel_ids', opt(vec(T.id))]]],
]);
const ResponseBody = tagged([
  ['Pong', [['data', T.bytes]]],
  ['Done', []],
  ['Guild', GuildFields],
  ['Invite', Invite.fields],
  ['Role', Role.fields],
  ['Channel', Channel.fields],
  ['MessageSent', [['message_id', T.id], ['seq', T.u64], ['created_at_ms', T.u64], ['duplicate', T.bool]]],
  ['Sequenced', [['seq', T.u64]]],
  ['Typers', [cid, ['user_ids', vec(T.id)]]],
  ['Relationship', Relationship.fields],
  ['VoiceJoined', [cid, ['slot', T.u16], ['participants', vec(VoiceState)]]],
  ['VoiceStats', [['participants', vec(VoiceParticipantStats)]]],
  ['VoiceServer', [cid, ['endpoint', T.string], ['cert_hashes', vec(T.bytes)]]],
  ['VoiceJoinedWebRtc', [cid, ['slot', T.u16], ['participants', vec(VoiceState)], ['answer', T.string]]],
]);
const seq = ['seq', T.u64];
const EventBody = tagged([
  ['Notice', [['text', T.string]]],
  ['MessageCreated', [seq, ['message', Message]]],
  ['MessageEdited', [seq, cid, mid, ['content', T.string], ['mentions', Mentions], ['edited_at_ms', T.u64]]],
  ['MessageDeleted', [seq, cid, mid]],
  ['ReactionAdded', [seq, cid, mid, uid, ['emoji', T.string]]],
  ['ReactionRemoved', [seq, cid, mid, uid, ['emoji', T.string]]],
  ['GuildUpdated', [['guild', Guild]]],
  ['GuildRemoved', [gid]],
  ['ChannelUpdated', [['channel', Channel]]],
  ['ChannelRemoved', [cid]],
  ['RoleUpdated', [['role', Role]]],
  ['MemberUpdated', [gid, ['member', Member]]],
  ['MemberRemoved', [gid, uid]],
  ['ReadStateUpdated', [['state', ReadState]]],
  ['PresenceUpdated', [['presence', Presence]]],
  ['TypingStarted', [cid, uid, ['expires_in_ms', T.u32]]],
  ['TypingStopped', [cid, uid]],
  ['RelationshipUpdated', [['relationship', Relationship]]],
  ['RelationshipRemoved', [uid]],
  ['NotificationCreated', [['notification', Notification]]],
  ['NotificationsRead', [['ids', vec(T.id)], ['all', T.bool]]],
  ['MuteUpdated', [['target', MuteTarget], ['muted', T.bool]]],
  ['Gap', [cid, ['after_seq', T.u64], ['resumes_at', T.u64]]],
  ['VoiceStateUpdated', [['state', VoiceState]]],
  ['VoiceStateRemoved', [gid, cid, uid]],
  ['VoiceSpeaking', [cid, uid, ['slot', T.u16], ['speaking', T.bool]]],
  ['VoiceTrack', [cid, ['mid', T.string], ['slot', T.u16]]],
  ['PresenceSnapshot', [['presences', vec(Presence)]]],
  ['VoiceStatesSnapshot', [['channel_ids', vec(T.id)], ['states', vec(VoiceState)]]],
  ['AppEvent', [['name', T.string], ['data', T.string], ['channel_id', opt(T.id)], ['guild_id', opt(T.id)]]],
  ['RoleDeleted', [gid, ['role_id', T.id]]],
  ['VoiceMoved', [gid, cid]],
  ['ChannelActivity', [['channels', vec(struct([['channel_id', T.id], ['seq', T.u64]]))]]],
]);

/** Every top-level message type, by the name used in PROTOCOL.md and the vectors. */
export const SCHEMA = {
  ClientControl: tagged([
    ['Hello', HelloFields],
    ['Heartbeat', HeartbeatFields],
    ['RefreshToken', [['token', T.string]]],
  ]),
  ServerControl: tagged([
    ['Ready', ReadyFields],
    ['HeartbeatAck', HeartbeatFields],
    ['Goaway', [['reconnect_after_ms', T.u32], ['reason', T.string]]],
    ['RefreshNeeded', [['expires_at_ms', T.u64]]],
    ['TokenRefreshed', [['expires_at_ms', T.u64]]],
    ['Error', ErrorBodyFields],
    ['Closing', [['code', T.u32], ['reason', T.string]]],
    ['Resumed', ReadyFields],
  ]),
  StreamOpen: tagged([['Lane', [['lane', Lane]]], ['Fetch', [['request', FetchRequest]]]]),
  Request: struct([['id', T.u32], ['body', RequestBody]]),
  ServerLane: tagged([
    ['Ack', [['id', T.u32], ['body', ResponseBody]]],
    ['Error', [['id', T.u32], ['error', ErrorBody]]],
    ['Event', [['seq', T.u64], ['body', EventBody]]],
  ]),
  FetchReply: tagged([
    ['Ok', [['response', FetchResponse]]], ['Err', [['error', ErrorBody]]],
    ['Compressed', [['raw_len', T.u32], ['data', T.bytes]]],
  ]),
};

/** Encodes `value` as a message of `type` (a key of SCHEMA), without the length prefix. */
export function encode(type, value) {
  const w = new Writer();
  SCHEMA[type].enc(w, value);
  return w.bytes();
}

/** Decodes a whole frame payload as `type`; throws ProtocolError on any defect. */
export function decode(type, payload) {
  const r = new Reader(payload);
  const v = SCHEMA[type].dec(r);
  if (r.off !== payload.length) throw new ProtocolError(`${payload.length - r.off} trailing bytes`);
  return v;
}

/** Encodes `value` as one frame: varint length + payload. */
export function encodeFrame(type, value) {
  const payload = encode(type, value);
  const out = [];
  varintEncode(payload.length, out);
  const frame = new Uint8Array(out.length + payload.length);
  frame.set(out, 0);
  frame.set(payload, out.length);
  return frame;
}

/** Splits a byte stream into frame payloads, refusing frames over `max` bytes. */
export class FrameReader {
  constructor(max = DEFAULT_MAX_FRAME) { this.max = max; this.buf = new Uint8Array(0); }
  push(chunk) {
    const b = new Uint8Array(this.buf.length + chunk.length);
    b.set(this.buf, 0); b.set(chunk, this.buf.length);
    this.buf = b;
  }
  /** The next payload, or null if more bytes are needed. */
  next() {
    const v = varintDecode(this.buf, 0);
    if (!v) return null;
    const [len, n] = v;
    if (typeof len !== 'number' || len > this.max) throw new ProtocolError(`frame of ${len} bytes over the limit of ${this.max}`);
    if (this.buf.length < n + len) return null;
    const payload = this.buf.slice(n, n + len);
    this.buf = this.buf.slice(n + len);
    return payload;
  }
}

// ---------------------------------------------------------------------------------------
// Voice datagrams (fixed big-endian headers; see PROTOCOL.md)

export const FLAG_TALKSPURT_START = 0x01;
export const FLAG_DTX = 0x02;
/** The payload starts with the previous frame again: `previous` below (PROTOCOL.md §8). */
export const FLAG_REDUNDANT = 0x04;

/** Uplink datagram: {flags, level (0..127 = -dBov), voice, seq, timestamp, previous?} +
 * payload. With `previous` ({timestamp_offset, payload}: the frame before, seq − 1) the
 * datagram carries that frame again in front and FLAG_REDUNDANT is set. */
export function encodeUplink(h, payload) {
  const prev = h.previous;
  const block = prev ? 4 + prev.payload.length : 0;
  const d = new Uint8Array(8 + block + payload.length);
  const v = new DataView(d.buffer);
  v.setUint8(0, (h.flags & 0x3f & ~FLAG_REDUNDANT) | (prev ? FLAG_REDUNDANT : 0));
  v.setUint8(1, Math.min(127, h.level) | (h.voice ? 0x80 : 0));
  v.setUint16(2, h.seq);
  v.setUint32(4, h.timestamp);
  if (prev) {
    v.setUint16(8, prev.timestamp_offset);
    v.setUint16(10, prev.payload.length);
    d.set(prev.payload, 12);
  }
  d.set(payload, 8 + block);
  return d;
}

/** The frame's own payload and, with FLAG_REDUNDANT, the previous frame's copy. */
function splitRedundant(flags, rest) {
  if (!(flags & FLAG_REDUNDANT)) return { payload: rest };
  if (rest.length < 4) throw new ProtocolError('redundancy block past the end of the datagram');
  const v = new DataView(rest.buffer, rest.byteOffset, rest.byteLength);
  const len = v.getUint16(2);
  if (rest.length < 4 + len) throw new ProtocolError('redundancy block past the end of the datagram');
  return { previous: { timestamp_offset: v.getUint16(0), payload: rest.subarray(4, 4 + len) }, payload: rest.subarray(4 + len) };
}

/** Downlink datagram → {flags, level, voice, slot, seq, timestamp, previous?, payload}. */
export function decodeDownlink(d) {
  if (d.length < 10) throw new ProtocolError('datagram shorter than its header');
  if (d[0] & 0xc0) throw new ProtocolError('unknown datagram version');
  const v = new DataView(d.buffer, d.byteOffset, d.byteLength);
  return {
    flags: d[0], level: d[1] & 0x7f, voice: (d[1] & 0x80) !== 0, slot: v.getUint16(2),
    seq: v.getUint16(4), timestamp: v.getUint32(6), ...splitRedundant(d[0], d.subarray(10)),
  };
}

/** Uplink datagram → {flags, level, voice, seq, timestamp, previous?, payload} (used by tests and tools). */
export function decodeUplink(d) {
  if (d.length < 8) throw new ProtocolError('datagram shorter than its header');
  if (d[0] & 0xc0) throw new ProtocolError('unknown datagram version');
  const v = new DataView(d.buffer, d.byteOffset, d.byteLength);
  return { flags: d[0], level: d[1] & 0x7f, voice: (d[1] & 0x80) !== 0, seq: v.getUint16(2), timestamp: v.getUint32(4), ...splitRedundant(d[0], d.subarray(8)) };
}

/**
 * A listener's repair of one voice stream per speaker slot: given decoded downlink frames
 * in arrival order, `take(f)` returns the frames to decode, in order — the previous frame's
 * copy when it was never had (its datagram lost or still on the way), then the frame itself
 * unless it was had already (a late original after its copy, a duplicate). Counts
 * `recovered` and `duplicates`.
 */
export class VoiceRepair {
  constructor() { this.speakers = new Map(); this.recovered = 0; this.duplicates = 0; }
  /** Records `seq` for `slot`; false if had already (one 64 or more behind starts afresh). */
  #take(slot, seq) {
    let w = this.speakers.get(slot);
    if (!w) { w = { highest: (seq - 1) & 0xffff, had: 0n }; this.speakers.set(slot, w); }
    const ahead = (seq - w.highest) & 0xffff;
    if (ahead !== 0 && ahead < 0x8000) {
      w.had = ahead >= 64 ? 1n : ((w.had << BigInt(ahead)) | 1n) & 0xffffffffffffffffn;
      w.highest = seq;
      return true;
    }
    const behind = (w.highest - seq) & 0xffff;
    const bit = 1n << BigInt(behind);
    // Far from anything recent: the stream started again (a rejoin) — take it as new.
    if (behind >= 64) { w.highest = seq; w.had = 1n; return true; }
    if (w.had & bit) return false;
    w.had |= bit;
    return true;
  }
  take(f) {
    const out = [];
    const flags = f.flags & ~FLAG_REDUNDANT;
    if (f.previous && this.#take(f.slot, (f.seq - 1) & 0xffff)) {
      out.push({ ...f, flags, seq: (f.seq - 1) & 0xffff, timestamp: (f.timestamp - f.previous.timestamp_offset) >>> 0, payload: f.previous.payload, previous: undefined, recovered: true });
      this.recovered++;
    }
    if (this.#take(f.slot, f.seq)) out.push({ ...f, flags, previous: undefined, recovered: false });
    else this.duplicates++;
    return out;
  }
}

/**
 * A playout (jitter) buffer for one speaker's decoded audio — what the web app's playback
 * worklet runs per speaker (its source is embedded there with `toString()`, so it uses
 * nothing outside the class). Frames are placed by their media timestamp, not appended: a
 * frame plays at `timestamp + delay`, a missing one (lost, and not repaired from a copy) is
 * 20 ms of silence in its place, and one that comes after its time is dropped — so a loss
 * never shifts what follows, and the buffer never has to run dry and fill again.
 *
 * `delay` adapts to the jitter it measures: each frame arrives `now − timestamp` after its
 * media time; the playout delay aims at the lowest of those over the last 100 frames plus
 * their spread (95th percentile above the lowest) plus one frame, the spread part within
 * 40–200 ms. It rises at once when frames come late (silence while it waits), and falls
 * 1 ms per 100 ms of playback (skipping that much) once it is 5 ms above what the jitter
 * calls for. All times are in samples of `rate`.
 */
export class Playout {
  constructor(rate = 48000) {
    this.rate = rate;
    this.frame = rate / 50;
    this.min = rate * 0.04; this.max = rate * 0.2;
    this.frames = []; // [timestamp, samples], sorted by timestamp
    this.delays = [];
    this.delay = null; // media time + delay = local time it plays; null before the first frame
    this.played = 0; this.concealed = 0; this.late = 0; // in frames
    this.at = null; // the media time of the next sample out
    this.lastEnd = undefined; // the media time the last frame played out ended
  }
  /** The delay the measured arrivals call for. */
  wanted() {
    const sorted = [...this.delays].sort((a, b) => a - b);
    const spread = sorted[Math.floor((sorted.length - 1) * 0.95)] - sorted[0];
    return sorted[0] + Math.min(this.max, Math.max(this.min, spread + this.frame));
  }
  /** Adds a decoded frame that arrived at local sample time `now`, media time `timestamp`. */
  push(samples, now, timestamp) {
    const d = now - timestamp;
    const last = this.delays[this.delays.length - 1];
    if (last !== undefined && Math.abs(d - last) > this.max) {
      // A jump past what any depth would cover — another media clock (a speaker who
      // joined again, a sender whose clock stopped while muted): start afresh.
      this.frames = []; this.delays = []; this.delay = null; this.at = null; this.lastEnd = undefined;
    }
    this.delays.push(d);
    if (this.delays.length > 100) this.delays.shift();
    const wanted = this.want = this.wanted();
    // Late frames raise the delay at once (what plays next waits); an easing is slow (pull).
    if (this.delay === null || wanted > this.delay) this.delay = wanted;
    if (this.at !== null && timestamp + samples.length <= this.at) { this.late++; return; }
    let i = this.frames.length;
    while (i > 0 && this.frames[i - 1][0] > timestamp) i--;
    if (i > 0 && this.frames[i - 1][0] === timestamp) return; // had already
    this.frames.splice(i, 0, [timestamp, samples]);
  }
  /** Mixes what plays at local sample time `now` .. `now + out.length` into `out`. */
  pull(out, now) {
    if (this.delay === null) return;
    const wanted = this.want;
    // (5 ms of slack first, so a window that merely slides does not keep nudging it.)
    if (wanted < this.delay - this.rate / 200) this.delay = Math.max(wanted, this.delay - out.length / 100);
    const end = Math.round(now - this.delay) + out.length;
    // What has played stays played: a delay that rose leaves silence before `at`; one that
    // fell skips what lies before the window.
    const base = end - out.length;
    const from = this.at === null ? base : Math.max(this.at, base);
    for (const [ts, samples] of this.frames) {
      if (ts >= end) break;
      const a = Math.max(ts, from), b = Math.min(ts + samples.length, end);
      for (let t = a; t < b; t++) out[t - base] += samples[t - ts];
    }
    // Frames played out go. A hole of under 200 ms between two of them was a loss,
    // concealed by silence in its place; a longer one, a pause.
    while (this.frames.length && this.frames[0][0] + this.frames[0][1].length <= end) {
      const [ts, x] = this.frames.shift();
      const hole = this.lastEnd === undefined ? 0 : ts - this.lastEnd;
      if (hole > 0 && hole < this.rate / 5) this.concealed += Math.round(hole / this.frame);
      this.lastEnd = ts + x.length;
      this.played++;
    }
    this.at = Math.max(this.at ?? end, end);
  }
}

// ---------------------------------------------------------------------------------------
// The WebTransport session

class FramedStream {
  constructor(readable, max) { this.reader = readable.getReader(); this.frames = new FrameReader(max); }
  /** The next payload, or null at end of stream. */
  async next() {
    for (;;) {
      const f = this.frames.next();
      if (f) return f;
      const { value, done } = await this.reader.read();
      if (done) { if (this.frames.buf.length) throw new ProtocolError('stream ended inside a frame'); return null; }
      this.frames.push(value);
    }
  }
}

/**
 * Fetches the server's certificate hashes from its HTTP side port (`/cert-hash`), for
 * `serverCertificateHashes` with a development certificate.
 */
export async function fetchCertHashes(httpBase) {
  const r = await fetch(new URL('/cert-hash', httpBase));
  if (!r.ok) throw new Error(`/cert-hash answered ${r.status}`);
  return r.json();
}

/** How long a transport that fell back to WebSocket is tried first on this origin. */
const REMEMBER_WS_MS = 10 * 60 * 1000;
const rememberKey = (wsUrl) => `quaver.transport:${new URL(wsUrl).host}`;
function rememberedWs(wsUrl) {
  try { return Number(globalThis.localStorage?.getItem(rememberKey(wsUrl)) ?? 0) > Date.now(); } catch (_) { return false; }
}
function remember(wsUrl, kind) {
  try {
    if (kind === 'websocket') globalThis.localStorage?.setItem(rememberKey(wsUrl), String(Date.now() + REMEMBER_WS_MS));
    else globalThis.localStorage?.removeItem(rememberKey(wsUrl));
  } catch (_) { /* storage unavailable (private mode): nothing is remembered */ }
}

/**
 * Opens the connection a session runs on: WebTransport to `url`, or the WebSocket framing
 * at `wsUrl` — happy-eyeballs style when both may be tried (`transport: 'auto'`):
 * WebTransport first, WebSocket as soon as WebTransport fails or after `fallbackMs`
 * without an answer, the first one ready wins and the other is closed. A WebSocket win is
 * remembered for this host for 10 minutes (tried first on the next page load); a
 * WebTransport win forgets it. Resolves to `{ wt, kind }`.
 */
async function openTransport(url, { certHashes, timeoutMs, wsUrl, transport, fallbackMs }) {
  const hasWt = typeof WebTransport !== 'undefined' && transport !== 'websocket';
  const hasWs = !!wsUrl && typeof WebSocket !== 'undefined' && transport !== 'webtransport';
  if (!hasWt && !hasWs) {
    throw new UnreachableError(transport === 'websocket' ? 'no WebSocket address to try' : 'this browser has no WebTransport');
  }
  const order = hasWt ? ['webtransport'] : [];
  if (hasWs) { if (rememberedWs(wsUrl)) order.unshift('websocket'); else order.push('websocket'); }
  const open = (kind) => {
    if (kind === 'websocket') return new WebSocketTransport(wsUrl);
    const u = new URL(url);
    u.searchParams.delete('token');
    const options = {};
    if (certHashes && certHashes.length) {
      options.serverCertificateHashes = certHashes.map((h) => ({ algorithm: 'sha-256', value: hexToBytes(h) }));
    }
    return new WebTransport(u.toString(), options);
  };
  const shut = (t) => { try { t.close(); } catch (_) { /* it never opened */ } };
  return new Promise((resolve, reject) => {
    const tried = [];
    const errors = [];
    let done = false;
    let next = 0;
    let stagger = null;
    const end = (err, won) => {
      done = true;
      clearTimeout(overall); clearTimeout(stagger);
      for (const a of tried) if (a.t && a !== won) shut(a.t);
      if (err) reject(err); else resolve({ wt: won.t, kind: won.kind });
    };
    const overall = setTimeout(() => end(new UnreachableError(hasWs
      ? `no answer within ${Math.round(timeoutMs / 1000)} s over WebTransport or WebSocket`
      : `no answer within ${Math.round(timeoutMs / 1000)} s (a network that blocks UDP looks like this)`)), timeoutMs);
    const launch = () => {
      if (done || next >= order.length) return;
      const kind = order[next++];
      const a = { kind, t: null };
      tried.push(a);
      clearTimeout(stagger);
      if (next < order.length) stagger = setTimeout(launch, fallbackMs);
      let ready;
      try {
        a.t = open(kind);
        // Its end is observed through the control stream; a lost connection is not an error here.
        a.t.closed.catch(() => {});
        ready = a.t.ready;
      } catch (e) { ready = Promise.reject(e); }
      ready.then(() => {
        if (done) { shut(a.t); return; }
        if (hasWt && hasWs) remember(wsUrl, kind);
        end(null, a);
      }, (e) => {
        errors.push(`${kind}: ${String(e?.message || e).replace(/\.$/, '')}`);
        if (done) return;
        if (next < order.length) launch(); // failed fast: the next one at once
        else if (errors.length === tried.length) end(new UnreachableError(`the connection failed (${errors.join('; ')})`));
      });
    };
    launch();
  });
}

/**
 * Opens a session. `url` is `https://host:port/quaver` (WebTransport); `wsUrl`, when given,
 * is the WebSocket framing's address (`ws://host:httpport/quaver/ws`, PROTOCOL.md §11), the
 * fallback for networks that drop UDP and browsers without WebTransport (`transport`:
 * 'auto' — the default —, 'webtransport' or 'websocket'; see `openTransport`). Options:
 * `token` (sent in `Hello`, never in a URL: browsers log the URL of every failed connection
 * to the console, where error-reporting tools collect it), `certHashes` (hex SHA-256
 * strings, for dev certificates), `device` ('Web' by default), `resume` (`Hello.resume`,
 * see `Resilient`; a session resumes on either transport). Resolves to a Session after
 * `Ready` (its `transport` says which); rejects with ClosedError if the server refuses,
 * UnreachableError if no transport answers within `timeoutMs`.
 */
export async function connect(url, { token, certHashes, device = 'Web', maxFrame = DEFAULT_MAX_FRAME, resume = null, timeoutMs = 10000, wsUrl = null, transport = 'auto', fallbackMs = 2000 } = {}) {
  const { wt, kind } = await openTransport(url, { certHashes, timeoutMs, wsUrl, transport, fallbackMs });
  const control = await wt.createBidirectionalStream();
  const writer = control.writable.getWriter();
  const reader = new FramedStream(control.readable, maxFrame);
  await writer.write(encodeFrame('ClientControl', {
    type: 'Hello', version: PROTOCOL_VERSION, token: token ?? null, device, resume, compression: 'None',
  }));
  let first;
  try {
    const p = await reader.next();
    if (!p) throw new ProtocolError('control stream closed before Ready');
    first = decode('ServerControl', p);
  } catch (e) {
    wt.close();
    throw e;
  }
  if (first.type === 'Closing') { wt.close(); throw new ClosedError(first.code, first.reason); }
  if (first.type !== 'Ready' && first.type !== 'Resumed') { wt.close(); throw new ProtocolError(`expected Ready, got ${first.type}`); }
  const session = new Session(wt, writer, reader, first, maxFrame);
  session.token = token;
  session.device = device;
  session.transport = kind;
  return session;
}

/**
 * Joins voice channel `channelId` from `session` (its voice lane `lane`), following the
 * cluster: when the channel lives on another node the server answers `VoiceServer`, and this
 * opens a session there (same token, that node's certificate hashes; over WebSocket when the
 * answer is a WebSocket URL, as it is for a session on WebSocket), opens its voice lane
 * and joins on it. Resolves to `{ session, lane, joined, remote }`: voice datagrams and
 * voice requests (`LeaveVoice`, `SetVoiceState`, …) go on that `session`/`lane`; `remote`
 * says whether it is a new session (close it when leaving). Rejects with the ErrorBody.
 * With `offer` (an `RTCPeerConnection`'s SDP offer, ICE gathering complete) it joins as a
 * WebRTC participant (`JoinVoiceWebRtc`) and `joined` is `VoiceJoinedWebRtc`, its `answer`
 * for `setRemoteDescription`; audio then travels on the peer connection, not datagrams.
 * Over datagrams it first asks for redundant ones (`SetVoiceOptions`, unless
 * `redundancy: false`): each may carry the previous frame again, which `VoiceRepair` plays
 * when the datagram that carried the original was lost.
 */
export async function joinVoice(session, lane, channelId, { selfMute = false, selfDeaf = false, offer = null, redundancy = true } = {}) {
  const askRedundancy = async (l) => {
    if (offer || !redundancy) return;
    // A server without the request refuses it: voice then comes without copies.
    await l.request({ type: 'SetVoiceOptions', redundancy: true }).catch((e) => console.warn('quaver: voice redundancy declined', e));
  };
  await askRedundancy(lane);
  const request = offer
    ? { type: 'JoinVoiceWebRtc', channel_id: channelId, self_mute: selfMute, self_deaf: selfDeaf, offer }
    : { type: 'JoinVoice', channel_id: channelId, self_mute: selfMute, self_deaf: selfDeaf };
  const expected = offer ? 'VoiceJoinedWebRtc' : 'VoiceJoined';
  const first = await lane.request(request);
  if (first.type !== 'VoiceServer') return { session, lane, joined: first, remote: false };
  // A session on the WebSocket framing is sent to the node's WebSocket URL; the others to
  // its `host:port`.
  const viaWs = first.endpoint.includes('://');
  const there = await connect(viaWs ? null : `https://${first.endpoint}${WEBTRANSPORT_PATH}`, {
    token: session.token, certHashes: first.cert_hashes.map(bytesToHex), device: session.device, maxFrame: session.maxFrame,
    ...(viaWs ? { transport: 'websocket', wsUrl: first.endpoint } : {}),
  });
  try {
    const voiceLane = await there.openLane('Voice');
    await askRedundancy(voiceLane);
    const joined = await voiceLane.request(request);
    if (joined.type !== expected) throw new ProtocolError(`the voice node answered ${joined.type}`);
    return { session: there, lane: voiceLane, joined, remote: true };
  } catch (e) {
    there.close();
    throw e;
  }
}

/** An open session. Listen with `session.addEventListener(type, e => e.detail)` for
 * 'goaway', 'refresh-needed', 'token-refreshed', 'error', 'closed'. */
export class Session extends EventTarget {
  constructor(wt, writer, reader, ready, maxFrame) {
    super();
    this.wt = wt; this.writer = writer; this.reader = reader; this.ready = ready; this.maxFrame = maxFrame;
    this.nonce = 0;
    this.closeInfo = null;
    this.lastHeard = Date.now();
    // `heartbeatLanes()`, when set, reports the last event seq processed per lane.
    this.heartbeatLanes = null;
    // A heartbeat that cannot be written means the connection is gone: the control loop
    // below sees that end and reports it ('closed'); nothing else is to be done here.
    this.heartbeat = setInterval(() => this.#send({ type: 'Heartbeat', nonce: ++this.nonce, lanes: this.heartbeatLanes?.() ?? [] }).catch(() => {}),
      ready.heartbeat_interval_ms);
    this.closed = this.#controlLoop();
  }
  async #send(msg) { await this.writer.write(encodeFrame('ClientControl', msg)); }
  async #controlLoop() {
    try {
      for (;;) {
        const p = await this.reader.next();
        if (!p) break;
        const m = decode('ServerControl', p);
        this.lastHeard = Date.now();
        const kinds = { Goaway: 'goaway', RefreshNeeded: 'refresh-needed', TokenRefreshed: 'token-refreshed', Error: 'error', HeartbeatAck: 'heartbeat-ack' };
        // The server waits for us to close after telling us why.
        if (m.type === 'Closing') { this.closeInfo = { code: m.code, reason: m.reason }; this.#hangUp(); break; }
        else if (kinds[m.type]) this.dispatchEvent(new CustomEvent(kinds[m.type], { detail: m }));
      }
    } catch (e) {
      // The connection went away (`closeInfo` says why if the server told us) — or the
      // server sent something this client cannot read, which is a bug worth a log line.
      if (e instanceof ProtocolError) { this.protocolError = e; console.warn('quaver: unreadable control frame; the session ends', e); }
    }
    clearInterval(this.heartbeat);
    this.dispatchEvent(new CustomEvent('closed', { detail: this.closeInfo }));
    return this.closeInfo;
  }
  /** Sends a fresh token before the current one expires. */
  refreshToken(token) { this.token = token; return this.#send({ type: 'RefreshToken', token }); }
  /** Opens a lane ('Chat', 'Presence', 'Typing', 'Voice', 'Notifications'). */
  async openLane(lane) {
    const s = await this.wt.createBidirectionalStream();
    const w = s.writable.getWriter();
    await w.write(encodeFrame('StreamOpen', { type: 'Lane', lane }));
    return new LaneStream(lane, w, new FramedStream(s.readable, this.maxFrame));
  }
  /** A one-shot fetch: resolves to the response, rejects with the ErrorBody. */
  async fetch(request) {
    const s = await this.wt.createBidirectionalStream();
    const w = s.writable.getWriter();
    await w.write(encodeFrame('StreamOpen', { type: 'Fetch', request }));
    // Not awaited: the reply is what matters, not the acknowledgement of our FIN.
    w.close().catch(() => {});
    const p = await new FramedStream(s.readable, this.maxFrame).next();
    if (!p) throw new ProtocolError('fetch stream ended without a reply');
    const reply = decode('FetchReply', p);
    // This client asks for no compression (Hello.compression = 'None'), so a compressed
    // reply is a server bug.
    if (reply.type === 'Compressed') throw new ProtocolError('unexpected compressed reply');
    if (reply.type === 'Err') throw reply.error;
    return reply.response;
  }
  /** Sends a voice frame as a datagram. */
  async sendVoice(header, payload) {
    const w = this.datagramWriter ??= this.wt.datagrams.writable.getWriter();
    await w.write(encodeUplink(header, payload));
  }
  /**
   * Received voice frames (decoded downlink datagrams), as an async iterator. Any number
   * may be taken, one after another or at once (each gets every frame): one reader on the
   * session's datagrams feeds them all. `return()` (or `break` in `for await`) ends one at
   * once, even while it waits; the iterator ends by itself when the session does. A reader
   * that falls behind loses its oldest frames past 64 (late audio is worse than lost); a
   * malformed datagram is counted in `malformedDatagrams` and skipped.
   */
  voice() {
    const sub = { queue: [], wake: null, done: false, dropped: 0 };
    this.#voiceSubs.add(sub);
    this.#pumpDatagrams();
    const subs = this.#voiceSubs;
    const end = () => { sub.done = true; subs.delete(sub); sub.wake?.(); sub.wake = null; };
    return {
      [Symbol.asyncIterator]() { return this; },
      async next() {
        for (;;) {
          if (sub.queue.length) return { value: sub.queue.shift(), done: false };
          if (sub.done) return { value: undefined, done: true };
          await new Promise((r) => { sub.wake = r; });
        }
      },
      async return() { end(); return { value: undefined, done: true }; },
      /** Frames this reader lost for being behind. */
      get dropped() { return sub.dropped; },
    };
  }
  #voiceSubs = new Set();
  #pump = null;
  malformedDatagrams = 0;
  #pumpDatagrams() {
    if (this.#pump) return;
    const r = this.wt.datagrams.readable.getReader();
    this.#pump = (async () => {
      try {
        for (;;) {
          const { value, done } = await r.read();
          if (done) break;
          let f;
          try { f = decodeDownlink(value); } catch (_) { this.malformedDatagrams++; continue; }
          for (const s of this.#voiceSubs) {
            s.queue.push(f);
            if (s.queue.length > 64) { s.queue.shift(); s.dropped++; }
            s.wake?.(); s.wake = null;
          }
        }
      } catch (_) {
        // The session's datagrams end with its connection: every reader ends below.
      } finally {
        for (const s of this.#voiceSubs) { s.done = true; s.wake?.(); s.wake = null; }
        this.#voiceSubs.clear();
      }
    })();
  }
  /**
   * Ends the session for good: finishes the control stream (PROTOCOL.md §5b: that, not a
   * WebTransport close with code 0 — which browsers send on every page unload, a reload
   * included — is what ends a session), then closes the connection once the server
   * answers `Closing`, or after a second.
   */
  close() {
    clearInterval(this.heartbeat);
    if (this.#ending) return;
    this.#ending = true;
    this.writer.close().catch(() => { /* the stream is gone with the connection: nothing to end */ });
    setTimeout(() => this.#hangUp(), 1000);
  }
  #ending = false;
  #hangUp() { clearInterval(this.heartbeat); try { this.wt.close({ closeCode: 0, reason: 'bye' }); } catch (_) { /* already closed */ } }
}

/** One lane: `request(body)` resolves with the ack body or rejects with the ErrorBody;
 * events go to `onevent` (and are queued until it is set). */
export class LaneStream {
  constructor(lane, writer, reader) {
    this.lane = lane; this.writer = writer; this.reader = reader;
    this.nextId = 1; this.waiting = new Map(); this.queued = []; this.onevent = null;
    // Ends when the lane does; a lane lost with its connection is not an error here
    // (waiting requests are rejected, and `Resilient` reconnects).
    this.done = this.#loop().catch(() => {});
  }
  async #loop() {
    try {
      for (;;) {
        const p = await this.reader.next();
        if (!p) break;
        const m = decode('ServerLane', p);
        if (m.type === 'Event') { if (this.onevent) this.onevent(m); else this.queued.push(m); continue; }
        const w = this.waiting.get(m.id);
        if (!w) continue;
        this.waiting.delete(m.id);
        if (m.type === 'Ack') w.resolve(m.body); else w.reject(m.error);
      }
    } finally {
      this.ended = true;
      for (const w of this.waiting.values()) w.reject(new ProtocolError('lane closed'));
    }
  }
  /** Takes queued events (those that arrived before `onevent` was set). */
  drain() { const q = this.queued; this.queued = []; return q; }
  async request(body) {
    if (this.ended) throw new ProtocolError('lane closed');
    const id = this.nextId++;
    const p = new Promise((resolve, reject) => this.waiting.set(id, { resolve, reject }));
    // Observed here so that a write that fails (the connection went first) does not leave
    // it to be rejected with no one listening when the lane ends: the caller gets the write's
    // error instead.
    p.catch(() => {});
    try {
      await this.writer.write(encodeFrame('Request', { id, body }));
    } catch (e) {
      this.waiting.delete(id);
      throw e;
    }
    return p;
  }
}

export const LANES = Object.freeze(['Chat', 'Presence', 'Typing', 'Voice', 'Notifications']);

/** The channel and channel seq of a chat event that has one (`null` otherwise). */
export function channelSeqOf(body) {
  switch (body.type) {
    case 'MessageCreated': return [body.message.channel_id, body.seq];
    case 'MessageEdited': case 'MessageDeleted': case 'ReactionAdded': case 'ReactionRemoved':
      return [body.channel_id, body.seq];
    default: return null;
  }
}

/** A fresh random nonce for `SendMessage` (a decimal u64 string). */
export function newNonce() {
  const b = crypto.getRandomValues(new Uint32Array(2));
  return ((BigInt(b[0] & 0x7fffffff) << 32n) | BigInt(b[1])).toString();
}

// Requests that may be sent again after the connection died with them in flight: the server
// stores a resent SendMessage once (its nonce), and the others state a wanted end state.
const RESENDABLE = new Set(['SendMessage', 'EditMessage', 'AddReaction', 'RemoveReaction', 'MarkRead', 'ViewChannels',
  'SetPresence', 'TypingStop', 'WatchTyping', 'AckNotifications', 'MarkNotificationsRead', 'SetVoiceState', 'Ping']);

/** The connection is gone and this request was not safe to send again. */
/** The server could not be reached at all (no WebTransport, a failed or unanswered
 * connection); `message` says which, for the person. */
export class UnreachableError extends Error {
  constructor(why) { super(why); this.name = 'UnreachableError'; }
}

export class ConnectionLostError extends Error {
  constructor(type) { super(`connection lost before ${type} was answered; it may or may not have happened`); this.name = 'ConnectionLostError'; }
}

/**
 * A session that survives its connection, with the native client's rules (PROTOCOL.md §5b):
 * reconnects with exponential backoff and full jitter, resumes with its lane and channel
 * positions (exact resume, or catch-up by channel seq with explicit `Gap`s), drops events
 * already processed (by lane seq and by channel seq), resends in-flight requests that are safe
 * to resend (a `SendMessage` with its original nonce, so it is stored once), and replaces a
 * connection that has gone quiet for three heartbeat intervals.
 *
 * `connectInfo()` resolves to `{ url, certHashes, token, wsUrl? }` for each attempt (the
 * token may be fresh; with `wsUrl` an attempt falls back to WebSocket, see `connect`). Events (`addEventListener`): 'state' (detail: 'connecting' | 'ready' | 'resumed' |
 * 'reconnecting' | 'closed'), 'ready' (detail: { ready, resumed }), 'event' (detail:
 * { lane, body }), 'fatal' (detail: the ClosedError that ended it: a terminal close code),
 * 'trouble' (detail: { attempts, error, retryInMs }: an attempt to connect failed — from the
 * first, so a person can be told within seconds, not after minutes of "reconnecting").
 */
/**
 * How long `Resilient` waits before its next attempt after `attempt` (0-based) failed ones:
 * uniform in [0, min(max, backoff·2ⁿ)] ("full jitter"); after an `overloaded` refusal, uniform
 * in [w/2, w] with w = max(backoff, 1 s)·2ⁿ capped at max(max, 1 s) — the node is busy with a
 * crowd that arrived together, and coming straight back would meet the same queue
 * (PROTOCOL.md §1, "Refused at the door"; the native client's `Backoff::overloaded_delay`).
 */
export function retryDelayMs(attempt, overloaded, { backoffMs, maxBackoffMs }, random = Math.random()) {
  if (!overloaded) return random * Math.min(maxBackoffMs, backoffMs * 2 ** attempt);
  const w = Math.min(Math.max(maxBackoffMs, 1000), Math.max(backoffMs, 1000) * 2 ** Math.min(attempt, 16));
  return w / 2 + random * (w / 2);
}

export class Resilient extends EventTarget {
  constructor(connectInfo, { device = 'Web', backoffMs = 250, maxBackoffMs = 8000 } = {}) {
    super();
    this.connectInfo = connectInfo; this.device = device;
    this.backoffMs = backoffMs; this.maxBackoffMs = maxBackoffMs;
    this.session = null; this.lanes = {}; this.state = 'connecting';
    this.sessionId = null;
    this.laneSeq = Object.fromEntries(LANES.map((l) => [l, 0]));
    this.channelSeq = new Map();
    // The guild channels this session views (`ViewChannels`): null = all (the default).
    this.viewing = null;
    this.guildChannels = new Set();
    this.pending = []; // { lane, body, resolve, reject, sent }
    this.stopped = false;
    this.run = this.#loop();
  }

  #setState(s) { this.state = s; this.dispatchEvent(new CustomEvent('state', { detail: s })); }

  /** The position of channel `id` (its last processed seq): catch-up starts after it. */
  follow(id, seq) { if (!this.channelSeq.has(id) || this.channelSeq.get(id) < seq) this.channelSeq.set(id, seq); }

  /**
   * Says which guild channels this session looks at (PROTOCOL.md "Viewing channels"): only
   * their messages and typing come as they happen; the others' activity comes coalesced as
   * `ChannelActivity` (their newest seqs), mentions as notifications, DMs whole. `null`: every
   * channel. Kept across reconnects (sent again to a new session). Resolves once the server
   * applied it: fetch the history of a channel newly viewed after that. In a large guild it
   * decides presence too (PROTOCOL.md "Presence in large guilds"): its members' statuses are
   * kept current only while one of its channels is viewed, and come whole (a
   * `PresenceSnapshot`) when one is again.
   */
  view(channelIds) {
    this.viewing = channelIds === null ? null : [...new Set(channelIds)];
    return this.request('Chat', { type: 'ViewChannels', channel_ids: this.viewing });
  }

  /** Sends `body` on `lane`; resolves with the ack body, rejects with the ErrorBody (or a
   * ConnectionLostError). Waits for a connection when there is none. */
  request(lane, body) {
    return new Promise((resolve, reject) => {
      const p = { lane, body, resolve, reject, sent: false };
      this.pending.push(p);
      this.#flush();
    });
  }

  /** The current session (voice datagrams go on it), or null while reconnecting. */
  current() { return this.state === 'ready' || this.state === 'resumed' ? this.session : null; }

  #flush() {
    if (!this.current()) return;
    for (const p of this.pending) {
      if (p.sent) continue;
      const lane = this.lanes[p.lane];
      if (!lane) { p.reject(new ProtocolError(`lane ${p.lane} is not open`)); p.done = true; continue; }
      p.sent = true;
      lane.request(p.body).then((r) => { p.done = true; p.resolve(r); }, (e) => {
        // An Error is the transport (the lane closed with the connection): the reconnect
        // decides whether to resend. An ErrorBody is the server's answer.
        if (e instanceof Error) return;
        p.done = true; p.reject(e);
      }).finally(() => { this.pending = this.pending.filter((x) => !x.done); });
    }
  }

  #onEvent(lane, m) {
    if (m.seq <= this.laneSeq[lane]) return; // replayed twice
    this.laneSeq[lane] = m.seq;
    const cs = channelSeqOf(m.body);
    if (cs) {
      const [ch, seq] = cs;
      const at = this.channelSeq.get(ch) ?? 0;
      if (seq <= at) return; // seen (a live event may arrive twice around a catch-up)
      this.channelSeq.set(ch, seq);
    }
    if (m.body.type === 'Gap') this.follow(m.body.channel_id, m.body.resumes_at - 1);
    // What a channel not viewed had is not delivered: its position moves on, so a catch-up
    // does not bring it (opening the channel fetches its history).
    if (m.body.type === 'ChannelActivity') for (const c of m.body.channels) this.follow(c.channel_id, c.seq);
    if (m.body.type === 'ChannelUpdated' && m.body.channel.guild_id) this.guildChannels.add(m.body.channel.id);
    this.dispatchEvent(new CustomEvent('event', { detail: { lane, body: m.body } }));
  }

  /** The channel positions to resume from: with a view, only the channels viewed and DMs
   * (a catch-up of the others would deliver what the view chose not to receive). */
  #resumeChannels() {
    const viewed = this.viewing && new Set(this.viewing);
    return [...this.channelSeq]
      .filter(([ch]) => !viewed || viewed.has(ch) || !this.guildChannels.has(ch))
      .map(([channel_id, seq]) => ({ channel_id, seq }));
  }

  async #connectOnce() {
    const info = await this.connectInfo();
    const resume = this.sessionId ? {
      session_id: this.sessionId,
      lanes: LANES.map((lane) => ({ lane, seq: this.laneSeq[lane] })),
      channels: this.#resumeChannels(),
    } : (this.channelSeq.size ? {
      // No session to resume: catch the channels up from the event log.
      session_id: '00'.repeat(16), lanes: [],
      channels: this.#resumeChannels(),
    } : null);
    const s = await connect(info.url, { token: info.token, certHashes: info.certHashes, wsUrl: info.wsUrl ?? null, device: this.device, resume });
    const resumed = s.ready.type === 'Resumed';
    if (!resumed) for (const l of LANES) this.laneSeq[l] = 0; // a new session numbers afresh
    this.sessionId = s.ready.session_id;
    this.session = s;
    this.lanes = {};
    for (const [ch] of this.channelSeq) {
      // Channels the snapshot no longer lists are not followed any more.
      const listed = s.ready.guilds.some((g) => g.channels.some((c) => c.id === ch)) || s.ready.private_channels.some((c) => c.id === ch);
      if (!listed) this.channelSeq.delete(ch);
    }
    // New channels start where the snapshot stands (history up to there is fetched);
    // followed ones keep their position, so what is caught up after it is delivered.
    const channels = s.ready.guilds.flatMap((g) => g.channels).concat(s.ready.private_channels);
    for (const c of channels) if (c.kind !== 'Voice' && !this.channelSeq.has(c.id)) this.channelSeq.set(c.id, c.last_seq);
    this.guildChannels = new Set(s.ready.guilds.flatMap((g) => g.channels.map((c) => c.id)));
    // In a new session, guild channels outside the view were not caught up: they stand
    // where the snapshot says (their history is fetched when they are opened). An exact
    // resume replays what was sent, in order: nothing to move.
    if (this.viewing && !resumed) {
      const viewed = new Set(this.viewing);
      for (const c of channels) if (this.guildChannels.has(c.id) && !viewed.has(c.id)) this.follow(c.id, c.last_seq);
    }
    // The snapshot first, then the lanes' events (which are newer than it).
    this.dispatchEvent(new CustomEvent('ready', { detail: { ready: s.ready, resumed } }));
    for (const lane of LANES) {
      const l = await s.openLane(lane);
      l.onevent = (m) => this.#onEvent(lane, m);
      for (const m of l.drain()) this.#onEvent(lane, m);
      this.lanes[lane] = l;
    }
    s.heartbeatLanes = () => LANES.map((lane) => ({ lane, seq: this.laneSeq[lane] }));
    // A new session takes every channel until told otherwise: say the view again, first
    // (an exact resume kept it).
    if (!resumed && this.viewing && !this.pending.some((p) => !p.sent && p.body.type === 'ViewChannels')) {
      this.lanes.Chat.request({ type: 'ViewChannels', channel_ids: this.viewing })
        .catch((e) => console.warn('quaver: the channel view was not taken again', e));
    }
    return { s, resumed };
  }

  async #loop() {
    let attempt = 0;
    while (!this.stopped) {
      this.#setState(attempt === 0 && !this.sessionId ? 'connecting' : 'reconnecting');
      let s, resumed;
      try {
        ({ s, resumed } = await this.#connectOnce());
      } catch (e) {
        if (e instanceof ClosedError && !e.reconnect && e.code !== CloseCode.RESUME_REFUSED) {
          this.#fail(e); return;
        }
        if (e instanceof ClosedError && e.code === CloseCode.RESUME_REFUSED) this.sessionId = null;
        const delay = retryDelayMs(attempt, e instanceof ClosedError && e.code === CloseCode.OVERLOADED, this);
        attempt++;
        this.dispatchEvent(new CustomEvent('trouble', { detail: { attempts: attempt, error: e, retryInMs: Math.round(delay) } }));
        await new Promise((r) => setTimeout(r, delay));
        continue;
      }
      attempt = 0;
      this.#setState(resumed ? 'resumed' : 'ready');
      this.#flush();
      // Until it dies: closed by the server, or quiet for three heartbeat intervals.
      // A draining node's `Goaway` says when to come back: leave now, and return after
      // that delay plus up to as long again (jitter), so its clients do not all hit a node
      // that is restarting at the same moment (PROTOCOL.md §5).
      const quiet = 3 * s.ready.heartbeat_interval_ms;
      let comeBackMs = 0;
      const info = await new Promise((resolve) => {
        const timer = setInterval(() => { if (Date.now() - s.lastHeard > quiet) { clearInterval(timer); resolve(null); } }, 500);
        s.closed.then((ci) => { clearInterval(timer); resolve(ci); });
        s.addEventListener('goaway', (e) => { comeBackMs = e.detail.reconnect_after_ms; clearInterval(timer); resolve(null); });
      });
      try { s.wt.close({ closeCode: 1000, reason: 'replacing' }); } catch (_) { /* already closed: nothing to replace */ }
      if (this.stopped) break;
      if (comeBackMs > 0) {
        this.#setState('reconnecting');
        await new Promise((r) => setTimeout(r, comeBackMs * (1 + Math.random())));
        if (this.stopped) break;
      }
      if (info && info.code >= 4000) { this.#fail(new ClosedError(info.code, info.reason)); return; }
      // Another connection resumed this session (a duplicated tab carries its id along):
      // take a session of our own instead of taking it back, or the two would trade it
      // forever. The channels are caught up by seq.
      if (info && info.code === CloseCode.SESSION_REPLACED) this.sessionId = null;
      // In flight when it died: resend what is safe, reject the rest.
      for (const p of this.pending) {
        if (!p.sent) continue;
        if (RESENDABLE.has(p.body.type)) p.sent = false; else { p.done = true; p.reject(new ConnectionLostError(p.body.type)); }
      }
      this.pending = this.pending.filter((p) => !p.done);
      this.session = null;
    }
    this.#setState('closed');
  }

  #fail(e) {
    this.stopped = true;
    for (const p of this.pending) p.reject(e);
    this.pending = [];
    this.dispatchEvent(new CustomEvent('fatal', { detail: e }));
    this.#setState('closed');
  }

  /** For tests and the "drop connection" button: kills the connection without a goodbye
   * (the session stays resumable, as after a network failure). */
  dropConnection() { try { this.session?.wt.close({ closeCode: 1, reason: 'dropped' }); } catch (_) { /* already gone */ } }

  /** Ends the session for good. */
  close() { this.stopped = true; this.session?.close(); }
}
