// Voice in the web app: join, leave, switch and rejoin any number of times, over WebTransport
// datagrams (the microphone through an AudioWorklet into WebCodecs' Opus encoder; each
// speaker's datagrams through an AudioDecoder into a playback worklet with a small jitter
// buffer) or over WebRTC (an RTCPeerConnection to the node's ICE-lite port: the browser's
// own echo cancellation, jitter buffer and loss concealment).
//
// Nothing fails silently: a microphone that cannot open, sound the browser will not play, a
// WebRTC connection that does not come up (it falls back to datagrams where WebCodecs
// exists), a decoder error — each is said to the person, in the voice panel or a toast.
import * as quaver from '/quaver.js';

/** How long a WebRTC connection may take to come up before voice falls back to datagrams. */
const WEBRTC_CONNECT_MS = 8000;
/** How long the browser may take to start audio output before the person is asked. */
const AUDIO_START_MS = 2500;
/** Opus decoders kept at once (the SFU forwards three speakers; a few more for changes). */
const MAX_DECODERS = 6;

const WORKLETS = `
class Capture extends AudioWorkletProcessor {
  process(inputs) { const c = inputs[0][0]; if (c) this.port.postMessage(c.slice(0)); return true; }
}
registerProcessor('quaver-capture', Capture);
${quaver.Playout.toString()}
class Playback extends AudioWorkletProcessor {
  constructor() {
    super();
    this.slots = new Map(); // slot → Playout (adaptive jitter buffer, quaver.js)
    this.port.onmessage = (e) => {
      const { slot, samples, timestamp } = e.data;
      let s = this.slots.get(slot);
      if (!s) { s = new Playout(sampleRate); this.slots.set(slot, s); }
      s.push(samples, currentFrame, timestamp);
    };
  }
  process(_, outputs) {
    const out = outputs[0][0];
    out.fill(0);
    for (const s of this.slots.values()) s.pull(out, currentFrame);
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    // Twice a second, what each speaker's buffer did (the page's voice stats).
    if (currentFrame - (this.reported ?? 0) >= sampleRate / 2) {
      this.reported = currentFrame;
      const report = {};
      for (const [slot, s] of this.slots) {
        report[slot] = { played: s.played, concealed: s.concealed, late: s.late, delayMs: s.delay === null ? null : Math.round(s.delay - Math.min(...s.delays)) * 1000 / sampleRate };
      }
      this.port.postMessage(report);
    }
    return true;
  }
}
registerProcessor('quaver-playback', Playback);
`;

export const hasWebCodecs = () => 'AudioEncoder' in window && 'AudioDecoder' in window;
export const hasWebRtc = () => 'RTCPeerConnection' in window;

function levelOf(samples) {
  let sum = 0;
  for (const x of samples) sum += x * x;
  const rms = Math.sqrt(sum / samples.length);
  const dbov = rms > 0 ? -20 * Math.log10(rms) : 127;
  return Math.max(0, Math.min(127, Math.round(dbov)));
}

const errText = (e) => (e && e.message) ? e.message : String(e);

/** `lane`, whose requests wait out a rate limit (`RATE_LIMITED`, `retry_after_ms`) and go
 * again — up to five times, at most 5 s each: someone leaving and joining quickly is served
 * a moment later, not refused. */
function patient(lane, wanted = () => true) {
  return {
    async request(body) {
      for (let attempt = 0; ; attempt++) {
        try { return await lane.request(body); } catch (e) {
          const wait = e?.code === 5 ? e.retry_after_ms ?? 500 : null;
          if (wait == null || attempt >= 4 || wait > 5000) throw e;
          await new Promise((r) => setTimeout(r, wait + 20));
          // Not sent again once it is no longer wanted (left, or joined elsewhere meanwhile).
          if (!wanted()) throw new Error('superseded');
        }
      }
    },
  };
}
const micError = (e) => ({
  NotAllowedError: 'the microphone is blocked for this site',
  NotFoundError: 'no microphone was found',
  NotReadableError: 'the microphone is in use by another program',
}[e?.name] ?? errText(e));

/**
 * The voice part of the app. `app` gives it: `client()` (the `quaver.Resilient`),
 * `onVoiceEvent(body)` (events of a voice lane on another node), `voiceSet(state)`,
 * `userInSlot(channel, slot)`, `mutedForMe` (a Set of user ids), `changed()` (re-render),
 * `toast(text, opts)`.
 */
export class VoiceEngine {
  constructor(app) {
    this.app = app;
    /** The current voice connection (null when not in voice). */
    this.current = null;
    /** Counters for the page and its tests (cumulative). */
    this.stats = { sentFrames: 0, voicedFrames: 0, receivedFrames: 0, redundantReceived: 0, recoveredFrames: 0, playedFrames: 0, playout: {}, decodedFrames: 0, decodedEnergy: 0, speakingSeen: 0, joins: 0 };
    this.generation = 0;
  }

  /** A problem the person should know about while in voice (shown in the voice panel). */
  problem(text, action = null) {
    const v = this.current;
    if (!v) return;
    v.problem = text ? { text, action } : null;
    this.app.changed();
  }

  #fail(text, e) {
    console.warn(`quaver: voice: ${text}`, e ?? '');
    this.app.toast(e ? `${text}: ${errText(e)}` : text, { error: true });
  }

  /**
   * Joins voice channel `channelId` (leaving any other first). `webrtc`: over an
   * RTCPeerConnection instead of datagrams. Resolves once joined (or refused, said).
   */
  join(channelId, options) { return this.#serially(() => this.#join(channelId, options)); }

  /** Leaves voice (bounded: on a connection that is gone the answer never comes). */
  leave() { return this.#serially(() => this.#leave()); }

  /** One join or leave at a time, in the order asked: a join that is still being answered
   * is never overtaken by the next (a late answer would move you back). */
  #serially(op) {
    const run = this.#queue.then(op, op);
    // The queue only orders; each caller gets its own outcome from `run`.
    this.#queue = run.catch(() => {});
    return run;
  }
  #queue = Promise.resolve();

  async #join(channelId, { webrtc = false } = {}) {
    await this.#leave();
    const gen = ++this.generation;
    if (webrtc && !hasWebRtc()) { this.#fail('this browser has no WebRTC; voice is unavailable'); return; }
    if (!webrtc && !hasWebCodecs()) {
      if (hasWebRtc()) { webrtc = true; } else { this.#fail('this browser can do neither WebCodecs audio nor WebRTC; voice is unavailable'); return; }
    }
    const v = {
      channel: channelId, webrtc, muted: false, deafened: false, seq: 0, timestamp: 0, talking: false,
      decoders: new Map(), problem: null, gen, joinedAt: Date.now(),
    };
    this.current = v;
    this.app.changed();
    try {
      if (webrtc) await this.#startWebRtc(v);
      else await this.#startDatagrams(v);
      if (this.current !== v) return; // left (or switched) meanwhile
      this.stats.joins++;
    } catch (e) {
      if (this.current !== v) return;
      const noWebRtcHere = webrtc && /not enabled/.test(e?.message ?? '');
      await this.#leave();
      if (noWebRtcHere && hasWebCodecs()) {
        this.app.toast('this server has no WebRTC voice: joined over datagrams instead');
        await this.#join(channelId, { webrtc: false });
      } else {
        this.#fail('could not join voice', e);
      }
      return;
    }
    this.app.changed();
  }

  async #leave() {
    const v = this.current;
    if (!v) return;
    this.current = null;
    this.generation++;
    const left = v.lane?.request({ type: 'LeaveVoice' }).catch((e) => {
      // Refused or the lane is gone with its connection: either way, voice is over here.
      console.warn('quaver: voice: LeaveVoice', e);
    });
    await Promise.race([left, new Promise((r) => setTimeout(r, 1000))]);
    this.#teardown(v);
    this.app.changed();
  }

  #teardown(v) {
    clearTimeout(v.removal);
    clearInterval(v.statsTimer);
    clearTimeout(v.watchdog);
    v.frames?.return();
    v.stream?.getTracks().forEach((t) => t.stop());
    if (v.capture) v.capture.port.onmessage = null;
    v.pc?.close();
    for (const a of v.audio ?? []) { a.pause(); a.srcObject = null; }
    if (v.encoder && v.encoder.state !== 'closed') v.encoder.close();
    for (const d of v.decoders.values()) if (d.state !== 'closed') d.close();
    v.ctx?.close().catch((e) => console.warn('quaver: voice: closing audio', e));
    if (v.remote) v.session.close();
  }

  /** The server moved this page's participant to `channel` (a moderator or the backend):
   * the same connection carries on there, in `slot`. */
  movedTo(channel, slot) {
    const v = this.current;
    if (!v || !v.lane) return;
    // A move is a removal from the old channel followed by this: not a disconnect.
    clearTimeout(v.removal);
    v.removal = null;
    if (v.channel === channel) return;
    v.channel = channel;
    v.slot = slot;
    this.app.toast('You were moved to another voice channel');
    this.app.changed();
  }

  /** The server moved this page's participant to `channel`, which another node serves
   * (`VoiceMoved`): join it there, the same way, muted and deafened as before. */
  followMove(channel) {
    return this.#serially(async () => {
      const v = this.current;
      if (!v) return;
      clearTimeout(v.removal);
      const { muted, deafened, webrtc } = v;
      this.app.toast('You were moved to another voice channel');
      await this.#join(channel, { webrtc });
      const now = this.current;
      if (now?.channel === channel && (muted || deafened)) {
        Object.assign(now, { muted, deafened });
        await this.#sendState();
      }
    });
  }

  /** The server took this page's participant out of `channel`: unless a move follows at
   * once (a move removes, then adds), voice is over here. */
  removedFrom(channel) {
    const v = this.current;
    if (!v || v.channel !== channel || !v.lane) return;
    clearTimeout(v.removal);
    v.removal = setTimeout(() => this.#serially(async () => {
      if (this.current !== v || v.channel !== channel) return;
      this.current = null;
      this.generation++;
      this.#teardown(v);
      this.app.toast('You were disconnected from voice');
      this.app.changed();
    }), 1500);
  }

  async setMuted(muted) { if (this.current) { this.current.muted = muted; await this.#sendState(); } }
  async setDeafened(deafened) { if (this.current) { this.current.deafened = deafened; await this.#sendState(); } }

  async #sendState() {
    const v = this.current;
    if (!v?.lane) return;
    if (v.gain) v.gain.gain.value = v.deafened ? 0 : 1;
    this.applyHearing();
    for (const t of v.stream?.getAudioTracks() ?? []) if (v.pc) t.enabled = !v.muted;
    try {
      await v.lane.request({ type: 'SetVoiceState', self_mute: v.muted, self_deaf: v.deafened });
    } catch (e) { this.#fail('could not change your voice state', e); }
    this.app.changed();
  }

  /** Where the voice requests go: this connection, or the channel's node (`VoiceServer`). */
  async #joinOn(v, options) {
    const c = this.app.client();
    const session = c.current();
    if (!session) throw new Error('not connected; try again in a moment');
    const wanted = () => this.current === v;
    const j = await quaver.joinVoice(session, patient(c.lanes.Voice, wanted), v.channel, options);
    Object.assign(v, { session: j.session, lane: patient(j.lane), remote: j.remote, slot: j.joined.slot });
    for (const p of j.joined.participants) this.app.voiceSet(p);
    if (j.remote) j.lane.onevent = (m) => this.app.onVoiceEvent(m.body);
    return j;
  }

  // ---- datagrams -------------------------------------------------------------------

  async #startDatagrams(v) {
    await this.#joinOn(v, {});
    const ctx = new AudioContext({ sampleRate: 48000 });
    v.ctx = ctx;
    await ctx.audioWorklet.addModule(URL.createObjectURL(new Blob([WORKLETS], { type: 'text/javascript' })));
    v.playback = new AudioWorkletNode(ctx, 'quaver-playback', { outputChannelCount: [1] });
    v.gain = ctx.createGain();
    v.playback.connect(v.gain).connect(ctx.destination);
    // Per speaker slot: frames played, concealed (lost), too late; the buffer's depth.
    v.playback.port.onmessage = (e) => {
      if (this.current !== v) return;
      this.stats.playout = e.data;
      this.stats.playedFrames = Object.values(e.data).reduce((n, s) => n + s.played, 0);
    };
    this.#startPlayback(v);
    this.#watchAudio(v);
    try {
      await this.#startCapture(v);
    } catch (e) {
      // Still in the channel, listening: say why nobody hears you.
      console.warn('quaver: voice: microphone', e);
      this.problem(`You can listen, but not speak: ${micError(e)}.`);
      v.muted = true;
      await this.#sendState();
    }
  }

  /** Audio output the browser does not start (no device, autoplay rules) is said at once,
   * with a button that starts it (a click is what browsers wait for). */
  #watchAudio(v) {
    const ask = () => this.problem('Your browser is not playing sound for this page.', {
      label: 'Turn sound on',
      run: async () => {
        await Promise.all([v.ctx?.resume(), ...(v.audio ?? []).map((a) => a.play())].filter(Boolean)).catch((e) => console.warn('quaver: voice: sound', e));
        if ((!v.ctx || v.ctx.state === 'running') && !(v.audio ?? []).some((a) => a.paused)) this.problem(null);
      },
    });
    const resumed = v.ctx ? v.ctx.resume() : Promise.resolve();
    const timer = new Promise((r) => { v.watchdog = setTimeout(r, AUDIO_START_MS); });
    Promise.race([resumed.then(() => 'ok', () => 'failed'), timer.then(() => 'late')]).then((how) => {
      if (this.current !== v) return;
      if (how !== 'ok' || v.ctx?.state !== 'running') ask();
    });
    v.askForSound = ask;
  }

  async #startCapture(v) {
    v.stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true } });
    if (this.current !== v) { v.stream.getTracks().forEach((t) => t.stop()); return; }
    const source = v.ctx.createMediaStreamSource(v.stream);
    v.capture = new AudioWorkletNode(v.ctx, 'quaver-capture', { numberOfInputs: 1, numberOfOutputs: 0 });
    source.connect(v.capture);
    v.pendingLevels = [];
    v.encoder = new AudioEncoder({
      output: (chunk) => {
        if (this.current !== v || v.muted) return;
        const buf = new Uint8Array(chunk.byteLength);
        chunk.copyTo(buf);
        const level = v.pendingLevels.shift() ?? 127;
        const voice = level < 55;
        const flags = voice && !v.talking ? quaver.FLAG_TALKSPURT_START : 0;
        v.talking = voice;
        if (buf.length > 1000) return; // never past the 1,024-byte voice frame bound
        // The frame just before goes again in front of this one (PROTOCOL.md §8), when both
        // fit the bound: a listener who lost its datagram plays this copy.
        const seq = v.seq & 0xffff;
        const prev = v.lastSent;
        const previous = prev && prev.seq === ((seq - 1) & 0xffff) && prev.payload.length + 4 + buf.length <= 1000
          ? { timestamp_offset: (v.timestamp - prev.timestamp) & 0xffff, payload: prev.payload } : undefined;
        v.lastSent = { seq, timestamp: v.timestamp, payload: buf };
        v.session.sendVoice({ flags, level, voice, seq, timestamp: v.timestamp >>> 0, previous }, buf).catch((e) => {
          // The connection went: the reconnect rejoins; one line in the log, not a toast a frame.
          if (!v.sendFailed) console.warn('quaver: voice: sending', e);
          v.sendFailed = true;
        });
        v.seq++; v.timestamp += 960;
        this.stats.sentFrames++;
        if (voice) this.stats.voicedFrames++;
      },
      error: (e) => { if (this.current === v) this.problem(`Your microphone stopped: ${errText(e)}.`); },
    });
    v.encoder.configure({ codec: 'opus', sampleRate: v.ctx.sampleRate, numberOfChannels: 1, bitrate: 32000, opus: { frameDuration: 20000 } });
    const frame = Math.round(v.ctx.sampleRate / 50);
    let acc = new Float32Array(frame), filled = 0, ts = 0;
    v.capture.port.onmessage = (e) => {
      const input = e.data;
      let i = 0;
      while (i < input.length) {
        const n = Math.min(frame - filled, input.length - i);
        acc.set(input.subarray(i, i + n), filled);
        filled += n; i += n;
        if (filled === frame) {
          if (!v.muted && v.encoder.state === 'configured') {
            v.pendingLevels.push(levelOf(acc));
            v.encoder.encode(new AudioData({ format: 'f32-planar', sampleRate: v.ctx.sampleRate, numberOfFrames: frame, numberOfChannels: 1, timestamp: ts, data: acc.slice(0) }));
          } else {
            // The media clock runs on while muted (as RTP's does), so a listener's jitter
            // buffer sees the pause for what it is, not as frames arriving late.
            v.timestamp += 960;
          }
          ts += 20000; filled = 0;
        }
      }
    };
  }

  #decoder(v, slot) {
    let d = v.decoders.get(slot);
    if (d) { d.lastUsed = performance.now(); return d; }
    // One decoder per speaker heard lately: slots change with every join, and browsers
    // allow only so many decoders at once — the one unused longest goes.
    if (v.decoders.size >= MAX_DECODERS) {
      const [oldest] = [...v.decoders].sort(([, a], [, b]) => a.lastUsed - b.lastUsed)[0];
      const old = v.decoders.get(oldest);
      v.decoders.delete(oldest);
      if (old.state !== 'closed') old.close();
    }
    d = new AudioDecoder({
      output: (data) => {
        const samples = new Float32Array(data.numberOfFrames);
        data.copyTo(samples, { planeIndex: 0, format: 'f32-planar' });
        // The media time in samples (AudioData's timestamp is in µs).
        const timestamp = Math.round(data.timestamp * 48000 / 1e6);
        data.close();
        let sum = 0;
        for (const x of samples) sum += x * x;
        this.stats.decodedFrames++;
        this.stats.decodedEnergy += sum;
        if (!v.deafened && !this.app.mutedForMe.has(this.app.userInSlot(v.channel, slot))) {
          v.playback.port.postMessage({ slot, samples, timestamp }, [samples.buffer]);
        }
      },
      error: (e) => {
        // A broken stream from one speaker: a fresh decoder takes their next frame.
        console.warn(`quaver: voice: decoding slot ${slot}`, e);
        v.decoders.delete(slot);
      },
    });
    d.configure({ codec: 'opus', sampleRate: 48000, numberOfChannels: 1 });
    d.lastUsed = performance.now();
    v.decoders.set(slot, d);
    return d;
  }

  #startPlayback(v) {
    v.frames = v.session.voice();
    (async () => {
      // A frame whose datagram was lost comes from the copy in the next one.
      const repair = new quaver.VoiceRepair();
      for await (const datagram of v.frames) {
        if (this.current !== v) break;
        this.stats.receivedFrames++;
        if (datagram.previous) this.stats.redundantReceived++;
        for (const f of repair.take(datagram)) {
          if (f.recovered) this.stats.recoveredFrames++;
          if (f.payload.length === 0) continue;
          const d = this.#decoder(v, f.slot);
          if (d.state !== 'configured') continue;
          d.decode(new EncodedAudioChunk({ type: 'key', timestamp: f.timestamp * 1e6 / 48000, data: f.payload }));
        }
      }
    })().catch((e) => { if (this.current === v) this.problem(`Incoming voice stopped: ${errText(e)}.`); });
  }

  // ---- WebRTC ----------------------------------------------------------------------

  /** The microphone on one sending transceiver and three receiving ones (the node forwards
   * up to three speakers); which speaker each receiving track carries comes as
   * `VoiceTrack` events (`v.trackSlots`). */
  async #startWebRtc(v) {
    try {
      v.stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true } });
    } catch (e) {
      throw new Error(`the microphone could not be opened: ${micError(e)}`);
    }
    const pc = new RTCPeerConnection();
    Object.assign(v, { pc, trackSlots: new Map(), audio: [], audioByMid: new Map(), statsBase: { ...this.stats } });
    pc.addTransceiver(v.stream.getAudioTracks()[0], { direction: 'sendonly' });
    for (let i = 0; i < 3; i++) pc.addTransceiver('audio', { direction: 'recvonly' });
    pc.ontrack = (e) => {
      // Chromium decodes a remote track only while an element plays it.
      const a = new Audio();
      a.srcObject = new MediaStream([e.track]);
      a.muted = v.deafened;
      a.play().catch((err) => { console.warn('quaver: voice: playing a track', err); v.askForSound?.(); });
      v.audio.push(a);
      if (e.transceiver?.mid != null) v.audioByMid.set(e.transceiver.mid, a);
      this.applyHearing();
    };
    const fallBack = (why) => {
      if (this.current !== v || v.fellBack) return;
      v.fellBack = true;
      const channel = v.channel;
      if (hasWebCodecs()) {
        this.app.toast(`Voice over WebRTC ${why}: switched to datagrams.`);
        this.join(channel, { webrtc: false });
      } else {
        this.#fail(`Voice over WebRTC ${why}`);
        this.leave();
      }
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === 'connected') clearTimeout(v.watchdog);
      if (pc.connectionState === 'failed') fallBack('could not connect');
    };
    await pc.setLocalDescription(await pc.createOffer());
    // The server reads no trickled candidates: offer once gathering is done.
    await new Promise((res) => {
      if (pc.iceGatheringState === 'complete') return res();
      pc.addEventListener('icegatheringstatechange', () => { if (pc.iceGatheringState === 'complete') res(); });
      setTimeout(res, 3000);
    });
    if (this.current !== v) return;
    const j = await this.#joinOn(v, { offer: pc.localDescription.sdp });
    await pc.setRemoteDescription({ type: 'answer', sdp: j.joined.answer });
    v.watchdog = setTimeout(() => { if (pc.connectionState !== 'connected') fallBack('did not connect in time'); }, WEBRTC_CONNECT_MS);
    v.askForSound = () => this.problem('Your browser is not playing sound for this page.', {
      label: 'Turn sound on',
      run: async () => {
        try { await Promise.all(v.audio.map((a) => a.play())); this.problem(null); } catch (e) { console.warn('quaver: voice: sound', e); }
      },
    });
    // The counters the datagram path keeps, from the peer connection's statistics.
    v.statsTimer = setInterval(async () => {
      if (this.current !== v) return;
      let sent = 0, received = 0, energy = 0;
      (await pc.getStats()).forEach((s) => {
        if (s.kind !== 'audio') return;
        if (s.type === 'outbound-rtp') sent += s.packetsSent ?? 0;
        if (s.type === 'inbound-rtp') { received += s.packetsReceived ?? 0; energy += s.totalAudioEnergy ?? 0; }
      });
      const b = v.statsBase;
      Object.assign(this.stats, {
        sentFrames: b.sentFrames + sent, receivedFrames: b.receivedFrames + received,
        decodedFrames: b.decodedFrames + received, decodedEnergy: b.decodedEnergy + energy,
      });
    }, 250);
  }

  /** A `VoiceTrack` event: our receiving track `mid` now carries the speaker in `slot`. */
  trackCarries(channel, mid, slot) {
    const v = this.current;
    if (v?.trackSlots && v.channel === channel) { v.trackSlots.set(mid, slot); this.applyHearing(); }
  }

  /** WebRTC: each receiving track plays unless deafened or its speaker is muted for me.
   * (Datagrams: checked per decoded frame.) */
  applyHearing() {
    const v = this.current;
    if (!v?.pc) return;
    for (const a of v.audio) a.muted = v.deafened;
    for (const [mid, slot] of v.trackSlots) {
      const a = v.audioByMid.get(mid);
      if (a) a.muted = v.deafened || this.app.mutedForMe.has(this.app.userInSlot(v.channel, slot));
    }
  }
}
