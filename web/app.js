// The Quaver web app: a small chat and voice client on quaver.js (ES modules, no build).
//
// State lives in `S`; every change re-renders the part of the page it touches. The
// connection is a `quaver.Resilient`: it reconnects, resumes or catches up by channel seq,
// drops duplicates and resends in-flight sends with their nonce. The app itself also keeps
// each channel's messages by id, so history fetched after a reload and events replayed by
// the server never show a message twice. Voice: the microphone through an AudioWorklet into
// WebCodecs' Opus `AudioEncoder`, out as datagrams; datagrams in through one `AudioDecoder`
// per speaker slot into a playback worklet with a small jitter buffer. Or, with "voice over
// WebRTC" (or without WebCodecs), an RTCPeerConnection to the node's ICE-lite WebRTC port:
// the browser's own echo cancellation, jitter buffer and loss concealment.
import * as quaver from '/quaver.js';

window.quaver = quaver;
const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
};

const S = {
  me: null, client: null, token: null,
  guilds: new Map(), // id → { guild, roles, channels: Map, members: Map }
  dms: new Map(), // id → Channel
  readStates: new Map(), // channel → { last_read_seq, mention_count }
  unread: new Set(), // channels with messages after the read position
  presences: new Map(),
  relationships: new Map(), // user → kind
  notifications: [], notifUnread: 0,
  voice: new Map(), // channel → Map(user → VoiceState)
  mutedForMe: new Set(JSON.parse(localStorage.getItem('quaver.mutedForMe') ?? '[]')), // users I do not hear
  messages: new Map(), // channel → { byId: Map, moreBefore, loaded }
  myReactions: new Set(), // `${message}:${emoji}`
  typing: new Map(), // channel → Map(user → expires at ms)
  names: new Map(),
  guild: null, channel: null, replyTo: null,
  lastTypingSent: 0,
  voiceSession: null, // { channel, session, lane, remote, slot, muted, deafened, ... }
  voiceStats: { sentFrames: 0, receivedFrames: 0, decodedFrames: 0, decodedEnergy: 0, speakingSeen: 0 },
};
window.quaverApp = S;

function toast(text) {
  const t = $('toast');
  t.textContent = text; t.style.display = 'block';
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.style.display = 'none'; }, 4000);
}
const errText = (e) => (e && e.message) ? `${e.message}${e.code !== undefined ? ` (${e.code})` : ''}` : String(e);
const nameOf = (id) => S.names.get(id) ?? `user ${id.slice(-4)}`;
const req = (lane, body) => S.client.request(lane, body);
/** A fetch on the current connection (rejects while reconnecting). */
const fetchReply = (request) => {
  const s = S.client?.current() ?? S.client?.session;
  return s ? s.fetch(request) : Promise.reject(new Error('not connected'));
};

// ---- sign-in -------------------------------------------------------------------------

/** Connects to the QUIC port this page's server announces at /cert-hash (kept for tests
 * and scripts: a plain session, no reconnects). */
window.quaverConnect = async (token) => {
  const info = await quaver.fetchCertHashes(location.origin);
  const url = `https://${location.hostname}:${info.port}${info.url_path}`;
  return quaver.connect(url, { token, certHashes: info.dev ? info.hashes : [] });
};

async function devToken(name) {
  const r = await fetch('/dev/token', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name }) });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error ?? `the server answered ${r.status}`);
  return body.token;
}

function showSignin(error = '') {
  $('signin').hidden = false; $('main').hidden = true; $('me-controls').hidden = true;
  $('signin-error').textContent = error;
  setConn('signed-out');
}

function setConn(state) {
  const c = $('conn');
  c.dataset.state = state;
  c.textContent = { 'signed-out': 'signed out', connecting: 'connecting…', reconnecting: 'reconnecting…', ready: 'connected', resumed: 'connected (resumed)', closed: 'disconnected' }[state] ?? state;
}

async function signIn(token) {
  sessionStorage.setItem('quaver.token', token);
  S.token = token;
  const saved = JSON.parse(sessionStorage.getItem('quaver.resume') ?? 'null');
  const client = new quaver.Resilient(async () => {
    const info = await quaver.fetchCertHashes(location.origin);
    return { url: `https://${location.hostname}:${info.port}${info.url_path}`, certHashes: info.dev ? info.hashes : [], token: S.token };
  });
  if (saved && saved.token === token) {
    // A reload: resume the session (or catch its channels up) from where the page was.
    client.sessionId = saved.session_id;
    for (const [lane, seq] of Object.entries(saved.lanes)) client.laneSeq[lane] = seq;
    for (const [ch, seq] of saved.channels) client.channelSeq.set(ch, seq);
  }
  S.client = client;
  client.addEventListener('state', (e) => { setConn(e.detail); console.info(`quaver: connection ${e.detail}`); });
  client.addEventListener('ready', (e) => onReady(e.detail.ready, e.detail.resumed));
  client.addEventListener('event', (e) => onEvent(e.detail.lane, e.detail.body));
  client.addEventListener('fatal', (e) => {
    sessionStorage.removeItem('quaver.token'); sessionStorage.removeItem('quaver.resume');
    showSignin(`the server closed the session: ${e.detail.code} ${e.detail.reason}`);
  });
  $('signin').hidden = true; $('main').hidden = false; $('me-controls').hidden = false;
}

// What a reload needs to resume: kept as the page goes away.
addEventListener('pagehide', () => {
  const c = S.client;
  if (!c || !c.sessionId) return;
  sessionStorage.setItem('quaver.resume', JSON.stringify({
    token: S.token, session_id: c.sessionId, lanes: c.laneSeq, channels: [...c.channelSeq],
  }));
});

// ---- snapshot and events ---------------------------------------------------------------

function addGuild(g) {
  const old = S.guilds.get(g.guild.id);
  const entry = { guild: g.guild, roles: g.roles, channels: new Map(g.channels.map((c) => [c.id, c])), members: old?.members ?? new Map(), memberCount: g.member_count };
  for (const m of g.members) { entry.members.set(m.user_id, m); S.names.set(m.user_id, m.name); }
  S.guilds.set(g.guild.id, entry);
  if (g.members.length === 0 && g.member_count > 0) loadMembers(g.guild.id);
}

async function loadMembers(guildId) {
  let after = '0';
  for (let page = 0; page < 10; page++) {
    const r = await fetchReply({ type: 'Members', guild_id: guildId, after, limit: 100 }).catch(() => null);
    if (!r) return;
    const g = S.guilds.get(guildId);
    for (const m of r.members) { g?.members.set(m.user_id, m); S.names.set(m.user_id, m.name); }
    if (r.members.length < 100) break;
    after = r.members[r.members.length - 1].user_id;
  }
  render();
}

function onReady(ready, resumed) {
  S.me = ready.user;
  S.names.set(ready.user.id, ready.user.name);
  $('whoami').textContent = `${ready.user.name} · ${ready.node}`;
  S.guilds.clear();
  for (const g of ready.guilds) addGuild(g);
  S.dms = new Map(ready.private_channels.map((c) => [c.id, c]));
  S.readStates = new Map(ready.read_states.map((r) => [r.channel_id, r]));
  for (const c of allChannels()) {
    const rs = S.readStates.get(c.id);
    if (c.kind !== 'Voice' && c.last_seq > (rs?.last_read_seq ?? 0)) S.unread.add(c.id);
  }
  S.presences = new Map(ready.presences.map((p) => [p.user_id, p]));
  S.relationships = new Map(ready.relationships.map((r) => [r.user_id, r.kind]));
  S.notifications = ready.notifications; S.notifUnread = ready.notifications_unread;
  S.voice = new Map();
  for (const v of ready.voice_states) voiceSet(v);
  // Presence belongs to sessions: a new one starts online, so say again what you had set.
  const chosen = JSON.parse(sessionStorage.getItem('quaver.presence') ?? 'null');
  if (chosen && !resumed) {
    $('status-select').value = chosen.status; $('custom-status').value = chosen.custom ?? '';
    if (chosen.status !== 'Online' || chosen.custom) setPresence();
  }
  if (!resumed) {
    // A fresh session: what we showed may be behind; refetch the open channel's latest.
    for (const [ch, m] of S.messages) if (ch !== S.channel) m.loaded = false;
  }
  if (S.guild && !S.guilds.has(S.guild)) S.guild = null;
  if (!S.guild && !S.channel && S.guilds.size) S.guild = [...S.guilds.keys()][0];
  if (S.channel && !findChannel(S.channel)) S.channel = null;
  if (!S.channel && S.guild) {
    const first = [...S.guilds.get(S.guild).channels.values()].find((c) => c.kind === 'Text');
    if (first) S.channel = first.id;
  }
  if (S.channel) openChannel(S.channel, { refetch: true });
  // A lost connection left its voice channel (voice is state, not history): join again.
  const v = S.voiceSession;
  if (v && !v.remote && v.session !== S.client.session) {
    // Once the new connection's lanes are open.
    const rejoin = () => {
      if (!S.client.current()) return;
      S.client.removeEventListener('state', rejoin);
      leaveVoice().then(() => joinVoiceChannel(v.channel));
    };
    S.client.addEventListener('state', rejoin);
  }
  render();
}

function allChannels() {
  return [...S.guilds.values()].flatMap((g) => [...g.channels.values()]).concat([...S.dms.values()]);
}
function findChannel(id) {
  for (const g of S.guilds.values()) if (g.channels.has(id)) return g.channels.get(id);
  return S.dms.get(id) ?? null;
}
function guildOfChannel(id) {
  for (const [gid, g] of S.guilds) if (g.channels.has(id)) return gid;
  return null;
}

function store(channel) {
  let m = S.messages.get(channel);
  if (!m) { m = { byId: new Map(), moreBefore: true, loaded: false }; S.messages.set(channel, m); }
  return m;
}

function mentionsMe(msg) {
  if (!S.me) return false;
  if (msg.mentions.users.includes(S.me.id) || msg.mentions.everyone) return true;
  const g = S.guilds.get(guildOfChannel(msg.channel_id));
  const mine = g?.members.get(S.me.id)?.roles ?? [];
  return msg.mentions.roles.some((r) => mine.includes(r));
}

function onEvent(lane, b) {
  switch (b.type) {
    case 'MessageCreated': {
      const m = b.message;
      store(m.channel_id).byId.set(m.id, m);
      const c = findChannel(m.channel_id);
      if (c) c.last_seq = Math.max(c.last_seq, m.seq);
      clearTyping(m.channel_id, m.author_id);
      if (m.channel_id === S.channel && document.visibilityState === 'visible') markRead(m.channel_id, m.seq);
      else if (m.author_id !== S.me?.id) {
        S.unread.add(m.channel_id);
        if (mentionsMe(m)) {
          const rs = S.readStates.get(m.channel_id) ?? { channel_id: m.channel_id, last_read_seq: 0, mention_count: 0 };
          S.readStates.set(m.channel_id, { ...rs, mention_count: rs.mention_count + 1 });
        }
      }
      break;
    }
    case 'MessageEdited': {
      const m = store(b.channel_id).byId.get(b.message_id);
      if (m) { m.content = b.content; m.mentions = b.mentions; m.edited_at_ms = b.edited_at_ms; }
      break;
    }
    case 'MessageDeleted': {
      const m = store(b.channel_id).byId.get(b.message_id);
      if (m) { m.deleted = true; m.content = ''; }
      break;
    }
    case 'ReactionAdded': case 'ReactionRemoved': {
      const m = store(b.channel_id).byId.get(b.message_id);
      const add = b.type === 'ReactionAdded';
      if (b.user_id === S.me?.id) S.myReactions[add ? 'add' : 'delete'](`${b.message_id}:${b.emoji}`);
      if (m) {
        const r = m.reactions.find((x) => x.emoji === b.emoji);
        if (r) r.count += add ? 1 : -1; else if (add) m.reactions.push({ emoji: b.emoji, count: 1 });
        m.reactions = m.reactions.filter((x) => x.count > 0);
      }
      break;
    }
    case 'Gap': {
      // Events between after_seq and resumes_at are gone: reload the channel's history.
      const m = store(b.channel_id);
      m.byId.clear(); m.loaded = false; m.moreBefore = true;
      if (b.channel_id === S.channel) openChannel(b.channel_id, { refetch: true });
      break;
    }
    case 'GuildUpdated': {
      const g = S.guilds.get(b.guild.id);
      if (g) g.guild = b.guild;
      else fetchReply({ type: 'Guilds' }).then((r) => { for (const x of r.guilds) if (!S.guilds.has(x.guild.id)) addGuild(x); render(); });
      break;
    }
    case 'GuildRemoved':
      S.guilds.delete(b.guild_id);
      if (S.guild === b.guild_id) { S.guild = null; S.channel = null; }
      break;
    case 'ChannelUpdated': {
      const c = b.channel;
      if (c.guild_id) S.guilds.get(c.guild_id)?.channels.set(c.id, c); else S.dms.set(c.id, c);
      if (!S.client.channelSeq.has(c.id) && c.kind !== 'Voice') S.client.follow(c.id, c.last_seq);
      break;
    }
    case 'ChannelRemoved':
      for (const g of S.guilds.values()) g.channels.delete(b.channel_id);
      S.dms.delete(b.channel_id);
      if (S.channel === b.channel_id) S.channel = null;
      break;
    case 'RoleUpdated': {
      const g = S.guilds.get(b.role.guild_id);
      if (g) g.roles = g.roles.filter((r) => r.id !== b.role.id).concat([b.role]);
      break;
    }
    case 'MemberUpdated':
      S.guilds.get(b.guild_id)?.members.set(b.member.user_id, b.member);
      S.names.set(b.member.user_id, b.member.name);
      break;
    case 'MemberRemoved':
      S.guilds.get(b.guild_id)?.members.delete(b.user_id);
      break;
    case 'ReadStateUpdated':
      S.readStates.set(b.state.channel_id, b.state);
      if ((findChannel(b.state.channel_id)?.last_seq ?? 0) <= b.state.last_read_seq) S.unread.delete(b.state.channel_id);
      break;
    case 'PresenceUpdated':
      S.presences.set(b.presence.user_id, b.presence);
      break;
    case 'PresenceSnapshot':
      // Someone we newly share a guild or a friendship with: what they show now.
      for (const p of b.presences) S.presences.set(p.user_id, p);
      break;
    case 'TypingStarted': {
      if (b.user_id === S.me?.id) return;
      const t = S.typing.get(b.channel_id) ?? new Map();
      t.set(b.user_id, Date.now() + b.expires_in_ms);
      S.typing.set(b.channel_id, t);
      setTimeout(renderTyping, b.expires_in_ms + 50);
      break;
    }
    case 'TypingStopped':
      clearTyping(b.channel_id, b.user_id);
      break;
    case 'RelationshipUpdated':
      S.relationships.set(b.relationship.user_id, b.relationship.kind);
      break;
    case 'RelationshipRemoved':
      S.relationships.delete(b.user_id);
      break;
    case 'NotificationCreated':
      S.notifications.unshift(b.notification);
      if (!b.notification.read) S.notifUnread++;
      toast(notificationText(b.notification));
      break;
    case 'NotificationsRead':
      for (const n of S.notifications) if (b.all || b.ids.includes(n.id)) n.read = true;
      S.notifUnread = b.all ? 0 : S.notifications.filter((n) => !n.read).length;
      break;
    case 'VoiceStateUpdated': voiceSet(b.state); break;
    case 'VoiceStatesSnapshot':
      // Voice channels we can newly see: everyone in them now.
      for (const c of b.channel_ids) S.voice.set(c, new Map());
      for (const st of b.states) voiceSet(st);
      break;
    case 'VoiceStateRemoved': S.voice.get(b.channel_id)?.delete(b.user_id); break;
    case 'VoiceTrack': {
      // Our WebRTC receiving track `mid` now carries the speaker in `slot`.
      const v = S.voiceSession;
      if (v?.trackSlots && v.channel === b.channel_id) { v.trackSlots.set(b.mid, b.slot); applyHearing(v); }
      break;
    }
    case 'VoiceSpeaking': {
      const v = S.voice.get(b.channel_id)?.get(b.user_id);
      if (v) v.speaking = b.speaking;
      if (b.speaking) S.voiceStats.speakingSeen++;
      break;
    }
    default: break;
  }
  render();
}

function voiceSet(v) {
  for (const [c, m] of S.voice) if (c !== v.channel_id) m.delete(v.user_id);
  const m = S.voice.get(v.channel_id) ?? new Map();
  m.set(v.user_id, v);
  S.voice.set(v.channel_id, m);
}

function clearTyping(channel, user) {
  S.typing.get(channel)?.delete(user);
}

// ---- channels and messages -------------------------------------------------------------

async function openChannel(id, { refetch = false } = {}) {
  S.channel = id;
  S.replyTo = null;
  const g = guildOfChannel(id);
  if (g) S.guild = g;
  const m = store(id);
  render();
  if (!m.loaded || refetch) {
    const r = await fetchReply({ type: 'History', channel_id: id, anchor: { type: 'Latest' }, limit: 50 }).catch((e) => { toast(errText(e)); return null; });
    if (r) {
      for (const msg of r.messages) m.byId.set(msg.id, msg);
      if (!m.loaded) m.moreBefore = r.more_before;
      m.loaded = true;
    }
    // Who is typing there right now.
    req('Typing', { type: 'WatchTyping', channel_id: id }).then((t) => {
      const map = new Map((t.user_ids ?? []).filter((u) => u !== S.me?.id).map((u) => [u, Date.now() + 10000]));
      S.typing.set(id, map); renderTyping();
    }).catch(() => {});
  }
  const latest = Math.max(0, ...[...m.byId.values()].map((x) => x.seq), findChannel(id)?.last_seq ?? 0);
  if (latest) markRead(id, latest);
  render();
  const box = $('messages');
  box.scrollTop = box.scrollHeight;
}

async function loadOlder() {
  const id = S.channel;
  const m = store(id);
  if (!m.moreBefore || loadOlder.busy) return;
  const oldest = Math.min(...[...m.byId.values()].map((x) => x.seq));
  if (!Number.isFinite(oldest)) return;
  loadOlder.busy = true;
  try {
    const r = await fetchReply({ type: 'History', channel_id: id, anchor: { type: 'Before', seq: oldest }, limit: 50 });
    const box = $('messages'), before = box.scrollHeight;
    for (const msg of r.messages) m.byId.set(msg.id, msg);
    m.moreBefore = r.more_before;
    render();
    box.scrollTop += box.scrollHeight - before;
  } catch (e) { toast(errText(e)); } finally { loadOlder.busy = false; }
}

const markTimers = new Map(); // channel → pending MarkRead timer

/** Marks `channel` read up to `seq` at once on screen; tells the server at most once a
 * second per channel (a busy channel would otherwise send one MarkRead per message). */
function markRead(channel, seq) {
  const rs = S.readStates.get(channel);
  S.unread.delete(channel);
  if (rs && rs.last_read_seq >= seq && rs.mention_count === 0) return;
  S.readStates.set(channel, { channel_id: channel, last_read_seq: seq, mention_count: 0 });
  if (markTimers.has(channel)) return;
  markTimers.set(channel, setTimeout(() => {
    markTimers.delete(channel);
    const upTo = S.readStates.get(channel)?.last_read_seq ?? seq;
    req('Chat', { type: 'MarkRead', channel_id: channel, seq: upTo }).catch(() => {});
  }, 1000));
}

/** `@name` → `<@id>` for members of the channel's guild (or DM recipients). */
function encodeMentions(text, channel) {
  const g = S.guilds.get(guildOfChannel(channel));
  const people = g ? [...g.members.values()].map((m) => [m.name, m.user_id]) : (findChannel(channel)?.recipients ?? []).map((u) => [nameOf(u), u]);
  people.sort((a, b) => b[0].length - a[0].length);
  return text.replace(/@([^\s@<>]+(?: [^\s@<>]+)?)/g, (all, word) => {
    if (word === 'everyone' || word === 'here') return all;
    for (const [name, id] of people) {
      if (word.toLowerCase() === name.toLowerCase()) return `<@${id}>`;
      if (word.toLowerCase().startsWith(name.toLowerCase() + ' ')) return `<@${id}>${word.slice(name.length)}`;
    }
    return all;
  });
}

function renderContent(text) {
  const out = document.createDocumentFragment();
  const re = /<@!?(\d+)>|<@&(\d+)>|@everyone|@here/g;
  let last = 0, m;
  while ((m = re.exec(text))) {
    out.append(text.slice(last, m.index));
    const label = m[1] ? `@${nameOf(m[1])}` : m[2] ? `@${S.guilds.get(S.guild)?.roles.find((r) => r.id === m[2])?.name ?? 'role'}` : m[0];
    out.append(el('span', { class: 'mention' }, label));
    last = re.lastIndex;
  }
  out.append(text.slice(last));
  return out;
}

async function send() {
  const input = $('composer');
  const text = input.value.trim();
  const channel = S.channel;
  if (!text || !channel) return;
  input.value = '';
  const body = { type: 'SendMessage', channel_id: channel, nonce: quaver.newNonce(), content: encodeMentions(text, channel), reply_to: S.replyTo };
  S.replyTo = null; renderReply();
  S.lastTypingSent = 0;
  try {
    await req('Chat', body);
  } catch (e) {
    toast(`not sent: ${errText(e)}`);
    if (!input.value) input.value = text;
  }
}

function onComposerInput() {
  if (!S.channel) return;
  const now = Date.now();
  if ($('composer').value && now - S.lastTypingSent > 4000) {
    S.lastTypingSent = now;
    req('Typing', { type: 'TypingStart', channel_id: S.channel }).catch(() => {});
  }
}

async function react(msg, emoji) {
  const mine = S.myReactions.has(`${msg.id}:${emoji}`);
  try {
    await req('Chat', { type: mine ? 'RemoveReaction' : 'AddReaction', channel_id: msg.channel_id, message_id: msg.id, emoji });
    S.myReactions[mine ? 'delete' : 'add'](`${msg.id}:${emoji}`);
    render();
  } catch (e) { toast(errText(e)); }
}

async function edit(msg) {
  const text = prompt('Edit message', msg.content);
  if (text == null || text === msg.content) return;
  try { await req('Chat', { type: 'EditMessage', channel_id: msg.channel_id, message_id: msg.id, content: encodeMentions(text, msg.channel_id) }); } catch (e) { toast(errText(e)); }
}

async function remove(msg) {
  try { await req('Chat', { type: 'DeleteMessage', channel_id: msg.channel_id, message_id: msg.id }); } catch (e) { toast(errText(e)); }
}

// ---- guild actions ---------------------------------------------------------------------

async function createGuild() {
  const name = $('new-guild').value.trim();
  if (!name) return;
  try {
    const g = await req('Chat', { type: 'CreateGuild', name });
    $('new-guild').value = '';
    await enterGuild(g.id);
  } catch (e) { toast(errText(e)); }
}

/** After creating or joining guild `id`: load it and open its first text channel. */
async function enterGuild(id) {
  const r = await fetchReply({ type: 'Guilds' });
  for (const x of r.guilds) addGuild(x);
  S.guild = id;
  const general = [...(S.guilds.get(id)?.channels.values() ?? [])].find((c) => c.kind === 'Text');
  if (general) openChannel(general.id);
  render();
}

async function joinGuild() {
  let code = $('invite-input').value.trim();
  const m = code.match(/[?#&]invite=([^&#]+)/) ?? code.match(/\/invite\/([^/?#]+)/);
  if (m) code = decodeURIComponent(m[1]);
  if (!code) return;
  try {
    const g = await req('Chat', { type: 'JoinGuild', code });
    $('invite-input').value = '';
    await enterGuild(g.id);
  } catch (e) { toast(`could not join: ${errText(e)}`); }
}

async function createChannel() {
  const name = $('new-channel-name').value.trim();
  if (!name || !S.guild) return;
  try {
    const c = await req('Chat', { type: 'CreateChannel', guild_id: S.guild, kind: $('new-channel-kind').value, name, topic: '', user_limit: 0 });
    $('new-channel-name').value = '';
    S.guilds.get(S.guild)?.channels.set(c.id, c);
    if (c.kind === 'Text') { S.client.follow(c.id, c.last_seq); openChannel(c.id); }
    render();
  } catch (e) { toast(errText(e)); }
}

async function createInvite() {
  if (!S.guild) return;
  try {
    const inv = await req('Chat', { type: 'CreateInvite', guild_id: S.guild, max_uses: 0, max_age_secs: 7 * 86400 });
    const link = `${location.origin}/#invite=${inv.code}`;
    $('invite-code').replaceChildren(el('code', { id: 'invite-value' }, inv.code), el('br'), el('small', {}, link));
    navigator.clipboard?.writeText(link).catch(() => {});
  } catch (e) { toast(errText(e)); }
}

async function leaveGuild() {
  if (!S.guild || !confirm('Leave this guild?')) return;
  try { await req('Chat', { type: 'LeaveGuild', guild_id: S.guild }); } catch (e) { toast(errText(e)); }
}

// ---- people ----------------------------------------------------------------------------

async function openDm(user) {
  try {
    const c = await req('Chat', { type: 'OpenDm', user_id: user });
    S.dms.set(c.id, c);
    S.client.follow(c.id, c.last_seq);
    S.guild = null;
    openChannel(c.id);
  } catch (e) { toast(errText(e)); }
}

async function relationship(type, user) {
  try { await req('Chat', { type, user_id: user }); } catch (e) { toast(errText(e)); }
}

async function setPresence() {
  const custom = $('custom-status').value.trim();
  sessionStorage.setItem('quaver.presence', JSON.stringify({ status: $('status-select').value, custom }));
  try { await req('Presence', { type: 'SetPresence', status: $('status-select').value, custom_status: custom || null, activity: null }); } catch (e) { toast(errText(e)); }
  render();
}

function notificationText(n) {
  const who = nameOf(n.actor_id);
  const what = { Mention: 'mentioned you', Reply: 'replied to you', Reaction: 'reacted to your message', DirectMessage: 'sent you a message', FriendRequest: 'sent you a friend request', FriendAccepted: 'accepted your friend request' }[n.kind] ?? n.kind;
  const preview = n.preview.replace(/<@!?(\d+)>/g, (_, id) => `@${nameOf(id)}`).replace(/<@&\d+>/g, '@role');
  return `${who} ${what}${preview ? `: ${preview}` : ''}`;
}

async function markAllNotificationsRead() {
  try { await req('Notifications', { type: 'MarkNotificationsRead', ids: [], all: true }); } catch (e) { toast(errText(e)); }
}

// ---- voice -----------------------------------------------------------------------------

const WORKLETS = `
class Capture extends AudioWorkletProcessor {
  process(inputs) { const c = inputs[0][0]; if (c) this.port.postMessage(c.slice(0)); return true; }
}
registerProcessor('quaver-capture', Capture);
class Playback extends AudioWorkletProcessor {
  constructor() {
    super();
    this.slots = new Map(); // slot → { queue: Float32Array[], offset, started }
    this.port.onmessage = (e) => {
      const { slot, samples } = e.data;
      let s = this.slots.get(slot);
      if (!s) { s = { queue: [], offset: 0, started: false, queued: 0 }; this.slots.set(slot, s); }
      s.queue.push(samples); s.queued += samples.length;
      // Jitter buffer: start once 60 ms are queued; drop the oldest past 300 ms.
      if (s.queued >= 2880) s.started = true;
      while (s.queued > 14400) { s.queued -= s.queue[0].length - s.offset; s.queue.shift(); s.offset = 0; }
    };
  }
  process(_, outputs) {
    const out = outputs[0][0];
    out.fill(0);
    for (const s of this.slots.values()) {
      if (!s.started) continue;
      let i = 0;
      while (i < out.length && s.queue.length) {
        const head = s.queue[0];
        const n = Math.min(out.length - i, head.length - s.offset);
        for (let k = 0; k < n; k++) out[i + k] += head[s.offset + k];
        i += n; s.offset += n; s.queued -= n;
        if (s.offset >= head.length) { s.queue.shift(); s.offset = 0; }
      }
      if (!s.queue.length) s.started = false; // underrun: buffer again
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    return true;
  }
}
registerProcessor('quaver-playback', Playback);
`;

function levelOf(samples) {
  let sum = 0;
  for (const x of samples) sum += x * x;
  const rms = Math.sqrt(sum / samples.length);
  const dbov = rms > 0 ? -20 * Math.log10(rms) : 127;
  return Math.max(0, Math.min(127, Math.round(dbov)));
}

const hasWebCodecs = () => 'AudioEncoder' in window && 'AudioDecoder' in window;

/** Joins a voice channel over WebRTC when asked (the checkbox) or when the browser has no
 * WebCodecs audio, else over WebTransport datagrams; a node without WebRTC falls back to
 * datagrams. */
async function joinVoiceChannel(channelId, { webrtc = $('voice-webrtc').checked || !hasWebCodecs() } = {}) {
  if (S.voiceSession?.channel === channelId) return;
  await leaveVoice();
  if (webrtc && !('RTCPeerConnection' in window)) { toast('this browser has no WebRTC: voice is unavailable'); return; }
  if (!webrtc && !hasWebCodecs()) { toast('this browser has no WebCodecs audio: voice is unavailable'); return; }
  const v = { channel: channelId, muted: false, deafened: false, seq: 0, timestamp: 0, talking: false, decoders: new Map(), webrtc };
  S.voiceSession = v;
  if (webrtc) {
    try {
      await startWebRtc(v, channelId);
    } catch (e) {
      const fallback = /not enabled/.test(e?.message ?? '') && hasWebCodecs();
      toast(fallback ? 'this node has no WebRTC: voice over datagrams' : `voice: ${errText(e)}`);
      await leaveVoice();
      if (fallback) await joinVoiceChannel(channelId, { webrtc: false });
    }
    render();
    return;
  }
  try {
    const j = await quaver.joinVoice(S.client.session, S.client.lanes.Voice, channelId, {});
    Object.assign(v, { session: j.session, lane: j.lane, remote: j.remote, slot: j.joined.slot });
    for (const p of j.joined.participants) voiceSet(p);
    if (j.remote) j.lane.onevent = (m) => onEvent('Voice', m.body);
    const ctx = new AudioContext({ sampleRate: 48000 });
    v.ctx = ctx;
    await ctx.audioWorklet.addModule(URL.createObjectURL(new Blob([WORKLETS], { type: 'text/javascript' })));
    v.playback = new AudioWorkletNode(ctx, 'quaver-playback', { outputChannelCount: [1] });
    v.gain = ctx.createGain();
    v.playback.connect(v.gain).connect(ctx.destination);
    await ctx.resume().catch(() => {});
    startPlayback(v);
    await startCapture(v);
  } catch (e) {
    toast(`voice: ${errText(e)}`);
    await leaveVoice();
  }
  render();
}

/** Voice over WebRTC: the microphone on one sending transceiver and three receiving ones
 * (the node forwards up to three speakers); the server answers as an ICE-lite peer. Which
 * speaker each receiving track carries comes as `VoiceTrack` events (`v.trackSlots`). */
async function startWebRtc(v, channelId) {
  v.stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true } });
  const pc = new RTCPeerConnection();
  Object.assign(v, { pc, trackSlots: new Map(), audio: [], audioByMid: new Map(), statsBase: { ...S.voiceStats } });
  pc.addTransceiver(v.stream.getAudioTracks()[0], { direction: 'sendonly' });
  for (let i = 0; i < 3; i++) pc.addTransceiver('audio', { direction: 'recvonly' });
  pc.ontrack = (e) => {
    // Chromium decodes a remote track only while an element plays it.
    const a = new Audio();
    a.srcObject = new MediaStream([e.track]);
    a.muted = v.deafened;
    a.play().catch(() => {});
    v.audio.push(a);
    if (e.transceiver?.mid != null) v.audioByMid.set(e.transceiver.mid, a);
    applyHearing(v);
  };
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === 'failed' && S.voiceSession === v) { toast('voice: the WebRTC connection failed'); leaveVoice(); }
  };
  await pc.setLocalDescription(await pc.createOffer());
  // The server reads no trickled candidates: offer once gathering is done.
  await new Promise((res) => {
    if (pc.iceGatheringState === 'complete') return res();
    pc.addEventListener('icegatheringstatechange', () => { if (pc.iceGatheringState === 'complete') res(); });
    setTimeout(res, 3000);
  });
  const j = await quaver.joinVoice(S.client.session, S.client.lanes.Voice, channelId, { offer: pc.localDescription.sdp });
  Object.assign(v, { session: j.session, lane: j.lane, remote: j.remote, slot: j.joined.slot });
  for (const p of j.joined.participants) voiceSet(p);
  if (j.remote) j.lane.onevent = (m) => onEvent('Voice', m.body);
  await pc.setRemoteDescription({ type: 'answer', sdp: j.joined.answer });
  // The counters the datagram path keeps, from the peer connection's statistics.
  v.statsTimer = setInterval(async () => {
    if (S.voiceSession !== v) return;
    let sent = 0, received = 0, energy = 0;
    (await pc.getStats()).forEach((s) => {
      if (s.kind !== 'audio') return;
      if (s.type === 'outbound-rtp') sent += s.packetsSent ?? 0;
      if (s.type === 'inbound-rtp') { received += s.packetsReceived ?? 0; energy += s.totalAudioEnergy ?? 0; }
    });
    const b = v.statsBase;
    Object.assign(S.voiceStats, {
      sentFrames: b.sentFrames + sent, receivedFrames: b.receivedFrames + received,
      decodedFrames: b.decodedFrames + received, decodedEnergy: b.decodedEnergy + energy,
    });
  }, 250);
}

async function startCapture(v) {
  v.stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true } });
  const source = v.ctx.createMediaStreamSource(v.stream);
  v.capture = new AudioWorkletNode(v.ctx, 'quaver-capture', { numberOfInputs: 1, numberOfOutputs: 0 });
  source.connect(v.capture);
  v.encoder = new AudioEncoder({
    output: (chunk) => {
      if (!v.session || v.muted) return;
      const buf = new Uint8Array(chunk.byteLength);
      chunk.copyTo(buf);
      const level = v.pendingLevels.shift() ?? 127;
      const voice = level < 55;
      const flags = voice && !v.talking ? quaver.FLAG_TALKSPURT_START : 0;
      v.talking = voice;
      if (buf.length > 1000) return; // never past the 1,024-byte voice frame bound
      v.session.sendVoice({ flags, level, voice, seq: v.seq & 0xffff, timestamp: v.timestamp >>> 0 }, buf).catch(() => {});
      v.seq++; v.timestamp += 960;
      S.voiceStats.sentFrames++;
    },
    error: (e) => toast(`encoder: ${e.message}`),
  });
  v.encoder.configure({ codec: 'opus', sampleRate: v.ctx.sampleRate, numberOfChannels: 1, bitrate: 32000, opus: { frameDuration: 20000 } });
  v.pendingLevels = [];
  let acc = new Float32Array(960), filled = 0, ts = 0;
  const frame = Math.round(v.ctx.sampleRate / 50);
  if (acc.length !== frame) acc = new Float32Array(frame);
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
        }
        ts += 20000; filled = 0;
      }
    }
  };
}

async function startPlayback(v) {
  const it = v.session.voice();
  // Ends with the session (a lost connection ends the loop; leaving cleans up).
  v.reading = (async () => {
    for await (const f of it) {
      if (S.voiceSession !== v) break;
      S.voiceStats.receivedFrames++;
      let d = v.decoders.get(f.slot);
      if (!d) {
        d = new AudioDecoder({
          output: (data) => {
            const samples = new Float32Array(data.numberOfFrames);
            data.copyTo(samples, { planeIndex: 0, format: 'f32-planar' });
            data.close();
            let sum = 0;
            for (const x of samples) sum += x * x;
            S.voiceStats.decodedFrames++;
            S.voiceStats.decodedEnergy += sum;
            if (!v.deafened && !S.mutedForMe.has(userInSlot(v.channel, f.slot))) {
              v.playback.port.postMessage({ slot: f.slot, samples }, [samples.buffer]);
            }
          },
          error: () => {},
        });
        d.configure({ codec: 'opus', sampleRate: 48000, numberOfChannels: 1 });
        v.decoders.set(f.slot, d);
      }
      if (f.payload.length === 0) continue;
      try { d.decode(new EncodedAudioChunk({ type: 'key', timestamp: f.timestamp * 1e6 / 48000, data: f.payload })); } catch (_) {}
    }
  })().catch(() => {});
}

/** The user in `slot` of voice channel `channel`, from its voice states. */
function userInSlot(channel, slot) {
  for (const st of S.voice.get(channel)?.values() ?? []) if (st.slot === slot) return st.user_id;
  return null;
}

/** WebRTC: each receiving track plays unless deafened or its speaker (`VoiceTrack`) is
 * muted for me. (Datagrams: checked per decoded frame.) */
function applyHearing(v) {
  if (!v?.pc) return;
  for (const a of v.audio) a.muted = v.deafened;
  for (const [mid, slot] of v.trackSlots) {
    const a = v.audioByMid.get(mid);
    if (a) a.muted = v.deafened || S.mutedForMe.has(userInSlot(v.channel, slot));
  }
}

function toggleMutedForMe(user) {
  if (S.mutedForMe.has(user)) S.mutedForMe.delete(user); else S.mutedForMe.add(user);
  localStorage.setItem('quaver.mutedForMe', JSON.stringify([...S.mutedForMe]));
  applyHearing(S.voiceSession);
  render();
}

async function setVoiceState() {
  const v = S.voiceSession;
  if (!v?.lane) return;
  if (v.gain) v.gain.gain.value = v.deafened ? 0 : 1;
  applyHearing(v);
  for (const t of v.stream?.getAudioTracks() ?? []) if (v.pc) t.enabled = !v.muted;
  try { await v.lane.request({ type: 'SetVoiceState', self_mute: v.muted, self_deaf: v.deafened }); } catch (e) { toast(errText(e)); }
  render();
}

async function leaveVoice() {
  const v = S.voiceSession;
  if (!v) return;
  S.voiceSession = null;
  // Bounded: on a connection that is gone the answer never comes (and leaving is moot).
  const left = v.lane?.request({ type: 'LeaveVoice' }).catch(() => {});
  await Promise.race([left, new Promise((r) => setTimeout(r, 1000))]);
  v.stream?.getTracks().forEach((t) => t.stop());
  clearInterval(v.statsTimer);
  v.pc?.close();
  for (const a of v.audio ?? []) a.srcObject = null;
  try { v.encoder?.close(); } catch (_) {}
  for (const d of v.decoders.values()) try { d.close(); } catch (_) {}
  v.ctx?.close().catch(() => {});
  if (v.remote) v.session.close();
  render();
}

// ---- rendering -------------------------------------------------------------------------

/** A user's presence; your own is what you set (the server does not echo it to you). */
function presenceOf(user) {
  if (user === S.me?.id && S.client?.current()) {
    const status = $('status-select').value;
    const custom = $('custom-status').value.trim() || null;
    const web = status === 'Invisible' ? 'Offline' : status;
    return { user_id: user, status: web, client_status: { desktop: 'Offline', mobile: 'Offline', web }, custom_status: custom, activity: null };
  }
  return S.presences.get(user);
}

function presenceDot(user) {
  const p = presenceOf(user);
  const st = p?.status ?? 'Offline';
  return el('span', { class: `dot ${st}`, title: st, 'data-status': st });
}

function renderGuilds() {
  $('guilds').replaceChildren(...[...S.guilds.values()].map((g) => {
    const unread = [...g.channels.keys()].some((c) => S.unread.has(c));
    const mentions = [...g.channels.keys()].reduce((n, c) => n + (S.readStates.get(c)?.mention_count ?? 0), 0);
    return el('div', { class: `item guild${g.guild.id === S.guild ? ' selected' : ''}${unread ? ' unread' : ''}`, dataset: { id: g.guild.id }, onclick: () => {
      S.guild = g.guild.id;
      const first = [...g.channels.values()].find((c) => c.kind === 'Text');
      if (first) openChannel(first.id); else { S.channel = null; render(); }
    } }, g.guild.name, mentions ? el('span', { class: 'badge' }, String(mentions)) : null);
  }));
  $('home-item').className = `item${S.guild === null ? ' selected' : ''}`;
}

function renderChannels() {
  const g = S.guilds.get(S.guild);
  $('guild-panel').hidden = !g; $('home-panel').hidden = !!g;
  if (!g) { renderHome(); return; }
  $('guild-name').textContent = g.guild.name;
  const rows = [];
  const channels = [...g.channels.values()].sort((a, b) => (a.kind === b.kind ? a.name.localeCompare(b.name) : a.kind === 'Text' ? -1 : 1));
  for (const c of channels) {
    const rs = S.readStates.get(c.id);
    const mentions = rs?.mention_count ?? 0;
    const voice = c.kind === 'Voice';
    rows.push(el('div', {
      class: `item channel${c.id === S.channel ? ' selected' : ''}${S.unread.has(c.id) ? ' unread' : ''}`,
      dataset: { id: c.id, name: c.name, kind: c.kind },
      onclick: () => (voice ? joinVoiceChannel(c.id) : openChannel(c.id)),
    }, voice ? '🔊 ' : '# ', c.name, mentions ? el('span', { class: 'badge mentions' }, String(mentions)) : null));
    if (voice) {
      for (const v of S.voice.get(c.id)?.values() ?? []) {
        // Someone else in the channel I am in: mute them for me alone.
        const hearable = S.voiceSession?.channel === c.id && v.user_id !== S.me?.id;
        const mine = S.mutedForMe.has(v.user_id);
        rows.push(el('div', { class: `voice-user${v.speaking ? ' speaking' : ''}`, dataset: { user: v.user_id } },
          nameOf(v.user_id), v.self_mute || v.server_mute ? ' 🔇' : '', v.self_deaf || v.server_deaf ? ' 🙉' : '',
          mine ? ' (muted for you)' : '',
          hearable ? el('button', {
            class: 'mute-for-me', title: mine ? 'hear them again' : 'stop hearing them (only you)',
            onclick: (e) => { e.stopPropagation(); toggleMutedForMe(v.user_id); },
          }, mine ? 'unmute' : 'mute') : null));
      }
    }
  }
  $('channels').replaceChildren(...rows);
}

function renderHome() {
  $('dms').replaceChildren(...[...S.dms.values()].map((c) => el('div', {
    class: `item dm${c.id === S.channel ? ' selected' : ''}${S.unread.has(c.id) ? ' unread' : ''}`, dataset: { id: c.id },
    onclick: () => openChannel(c.id),
  }, c.name || c.recipients.filter((u) => u !== S.me?.id).map(nameOf).join(', '))));
  const rows = [];
  for (const [user, kind] of S.relationships) {
    const actions = [];
    if (kind === 'IncomingRequest') actions.push(el('button', { onclick: () => relationship('AcceptFriendRequest', user) }, 'Accept'), el('button', { onclick: () => relationship('DeclineFriendRequest', user) }, 'Decline'));
    if (kind === 'OutgoingRequest') actions.push(el('button', { onclick: () => relationship('CancelFriendRequest', user) }, 'Cancel'));
    if (kind === 'Friend') actions.push(el('button', { onclick: () => openDm(user) }, 'DM'), el('button', { onclick: () => relationship('RemoveFriend', user) }, 'Remove'));
    if (kind === 'Blocked') actions.push(el('button', { onclick: () => relationship('UnblockUser', user) }, 'Unblock'));
    rows.push(el('div', { class: 'item friend', dataset: { user, kind } }, presenceDot(user), nameOf(user), el('small', {}, ` ${kind}`), ...actions));
  }
  $('friends').replaceChildren(...rows);
}

function renderMessages() {
  const c = findChannel(S.channel);
  $('composer').disabled = !c || c.kind === 'Voice'; $('send').disabled = $('composer').disabled;
  if (!c) { $('chat-head').textContent = 'Pick a channel'; $('messages').replaceChildren(); return; }
  $('chat-head').textContent = c.guild_id ? `# ${c.name}` : (c.name || c.recipients.filter((u) => u !== S.me?.id).map(nameOf).join(', '));
  const m = store(c.id);
  const list = [...m.byId.values()].sort((a, b) => a.seq - b.seq);
  const box = $('messages');
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  // Keyed: a message's element is rebuilt only when what it shows changed, so hovering,
  // selecting text and scrolling survive the events that re-render the channel.
  const rows = [];
  if (m.moreBefore && list.length) rows.push(S.olderButton ??= el('button', { id: 'older', onclick: loadOlder }, 'Load older messages'));
  const cache = S.msgNodes ??= new Map();
  for (const msg of list) {
    const parent = msg.reply_to ? m.byId.get(msg.reply_to) : null;
    const key = JSON.stringify([msg.content, msg.edited_at_ms, msg.deleted, msg.reactions, msg.reactions.map((r) => S.myReactions.has(`${msg.id}:${r.emoji}`)),
      nameOf(msg.author_id), parent?.content, parent?.author_id, mentionsMe(msg)]);
    const hit = cache.get(msg.id);
    if (hit && hit.key === key) { rows.push(hit.node); continue; }
    const node = messageNode(msg, parent);
    cache.set(msg.id, { key, node });
    rows.push(node);
  }
  if (cache.size > 5000) for (const id of cache.keys()) { if (!m.byId.has(id)) cache.delete(id); }
  // Put the rows in place, moving only what is out of place.
  let at = box.firstChild;
  for (const r of rows) {
    if (at === r) { at = at.nextSibling; continue; }
    box.insertBefore(r, at);
  }
  while (at) { const next = at.nextSibling; at.remove(); at = next; }
  if (atBottom) box.scrollTop = box.scrollHeight;
}

function messageNode(msg, parent) {
  const mine = msg.author_id === S.me?.id;
  const actions = el('span', { class: 'actions' },
    el('button', { title: 'reply', class: 'act-reply', onclick: () => { S.replyTo = msg.id; renderReply(); $('composer').focus(); } }, '↩'),
    el('button', { title: 'react 👍', class: 'act-react', onclick: () => react(msg, '👍') }, '👍'),
    mine && !msg.deleted ? el('button', { title: 'edit', class: 'act-edit', onclick: () => edit(msg) }, '✎') : null,
    mine && !msg.deleted ? el('button', { title: 'delete', class: 'act-delete', onclick: () => remove(msg) }, '🗑') : null);
  return el('div', { class: `msg${mentionsMe(msg) ? ' mentions-me' : ''}${msg.deleted ? ' deleted' : ''}`, dataset: { id: msg.id, seq: String(msg.seq), author: msg.author_id } },
    actions,
    msg.reply_to ? el('div', { class: 'reply' }, '↪ ', parent ? `${nameOf(parent.author_id)}: ${parent.deleted ? 'a deleted message' : parent.content.slice(0, 60)}` : 'an earlier message') : null,
    el('span', { class: 'author' }, nameOf(msg.author_id)),
    el('span', { class: 'content' }, msg.deleted ? 'message deleted' : renderContent(msg.content)),
    msg.edited_at_ms ? el('span', { class: 'edited' }, '(edited)') : null,
    el('span', { class: 'time' }, new Date(msg.created_at_ms).toLocaleTimeString()),
    msg.reactions.length && !msg.deleted ? el('div', { class: 'reactions' }, ...msg.reactions.map((r) => el('button', {
      class: S.myReactions.has(`${msg.id}:${r.emoji}`) ? 'mine' : '', onclick: () => react(msg, r.emoji),
    }, `${r.emoji} ${r.count}`))) : null);
}

function renderReply() {
  const r = $('replying');
  if (!S.replyTo) { r.hidden = true; return; }
  const msg = store(S.channel).byId.get(S.replyTo);
  r.hidden = false;
  r.replaceChildren(`Replying to ${msg ? nameOf(msg.author_id) : 'a message'} `, el('button', { onclick: () => { S.replyTo = null; renderReply(); } }, '✕'));
}

function renderTyping() {
  const t = S.typing.get(S.channel);
  const now = Date.now();
  const who = t ? [...t].filter(([, exp]) => exp > now).map(([u]) => nameOf(u)) : [];
  $('typing').textContent = who.length === 0 ? '' : who.length === 1 ? `${who[0]} is typing…` : who.length < 4 ? `${who.join(', ')} are typing…` : 'several people are typing…';
}

function renderMembers() {
  const g = S.guilds.get(S.guild);
  const c = findChannel(S.channel);
  const people = g ? [...g.members.values()].map((m) => m.user_id) : (c?.recipients ?? []);
  const rank = (u) => ({ Online: 0, Idle: 1, Dnd: 2 }[presenceOf(u)?.status] ?? 3);
  people.sort((a, b) => rank(a) - rank(b) || nameOf(a).localeCompare(nameOf(b)));
  $('members').replaceChildren(...people.map((u) => {
    const p = presenceOf(u);
    const devices = p ? Object.entries(p.client_status).filter(([, s]) => s !== 'Offline').map(([d, s]) => `${d}: ${s.toLowerCase()}`).join(', ') : '';
    const blocked = S.relationships.get(u) === 'Blocked';
    const actions = u === S.me?.id ? [] : [
      blocked ? null : el('button', { title: 'direct message', onclick: () => openDm(u) }, '✉'),
      S.relationships.has(u) ? null : el('button', { title: 'add friend', onclick: () => relationship('SendFriendRequest', u) }, '+'),
      blocked ? el('button', { title: 'unblock', onclick: () => relationship('UnblockUser', u) }, 'unblock')
        : el('button', { title: 'block', onclick: () => { if (confirm(`Block ${nameOf(u)}? No DMs or friend requests either way.`)) relationship('BlockUser', u); } }, '⛔'),
    ];
    return el('div', { class: 'item member', dataset: { user: u, status: p?.status ?? 'Offline' } },
      presenceDot(u), el('span', {}, nameOf(u), el('span', { class: 'devices' }, devices ? ` ${devices}` : ''), p?.custom_status ? el('span', { class: 'custom' }, p.custom_status) : null),
      el('span', { class: 'spacer' }), ...actions);
  }));
}

function renderNotifications() {
  const n = $('notif-count');
  n.hidden = S.notifUnread === 0; n.textContent = String(S.notifUnread);
  $('notifications').replaceChildren(...S.notifications.slice(0, 50).map((x) => el('div', {
    class: `notification${x.read ? '' : ' unread'}`, dataset: { kind: x.kind, id: x.id },
    onclick: () => {
      if (x.channel_id && findChannel(x.channel_id)) openChannel(x.channel_id);
      req('Notifications', { type: 'MarkNotificationsRead', ids: [x.id], all: false }).catch(() => {});
      $('notif-panel').style.display = 'none';
    },
  }, notificationText(x), el('div', { class: 'time' }, new Date(x.created_at_ms).toLocaleString()))));
}

function renderVoicebar() {
  const v = S.voiceSession;
  $('voicebar').style.display = v ? 'flex' : 'none';
  if (!v) return;
  $('voice-where').textContent = `🔊 ${findChannel(v.channel)?.name ?? 'voice'}${v.webrtc ? ' (WebRTC)' : ''}${v.remote ? ' (other node)' : ''}`;
  $('mute').textContent = v.muted ? 'Unmute' : 'Mute';
  $('deafen').textContent = v.deafened ? 'Undeafen' : 'Deafen';
}

function render() {
  if (!S.me) return;
  renderGuilds(); renderChannels(); renderMessages(); renderTyping(); renderMembers(); renderNotifications(); renderVoicebar();
}

// ---- wiring ----------------------------------------------------------------------------

$('signin-dev').onclick = async () => {
  const name = $('name').value.trim();
  if (!name) { $('signin-error').textContent = 'pick a name'; return; }
  try { await signIn(await devToken(name)); } catch (e) { $('signin-error').textContent = `${e.message}\nPaste a token instead.`; }
};
$('name').addEventListener('keydown', (e) => { if (e.key === 'Enter') $('signin-dev').click(); });
$('connect').onclick = () => { const t = $('token').value.trim(); if (t) signIn(t); };
$('signout').onclick = () => { leaveVoice(); S.client?.close(); sessionStorage.clear(); location.hash = ''; location.reload(); };
$('send').onclick = send;
$('composer').addEventListener('keydown', (e) => { if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); send(); } });
$('composer').addEventListener('input', onComposerInput);
$('messages').addEventListener('scroll', () => { if ($('messages').scrollTop < 20) loadOlder(); });
$('create-guild').onclick = createGuild;
$('join-guild').onclick = joinGuild;
$('create-channel').onclick = createChannel;
$('create-invite').onclick = createInvite;
$('leave-guild').onclick = leaveGuild;
$('home-item').onclick = () => { S.guild = null; S.channel = null; render(); };
$('add-friend').onclick = () => { const u = $('friend-id').value.trim(); if (/^\d+$/.test(u)) relationship('SendFriendRequest', u); };
$('status-select').onchange = setPresence;
$('custom-status').addEventListener('change', setPresence);
$('notif-button').onclick = () => { const p = $('notif-panel'); p.style.display = p.style.display === 'block' ? 'none' : 'block'; };
$('notif-read-all').onclick = markAllNotificationsRead;
$('mute').onclick = () => { if (S.voiceSession) { S.voiceSession.muted = !S.voiceSession.muted; setVoiceState(); } };
$('deafen').onclick = () => { if (S.voiceSession) { S.voiceSession.deafened = !S.voiceSession.deafened; setVoiceState(); } };
$('leave-voice').onclick = leaveVoice;
$('voice-webrtc').checked = localStorage.getItem('quaver.voice.webrtc') === '1';
$('voice-webrtc').onchange = () => localStorage.setItem('quaver.voice.webrtc', $('voice-webrtc').checked ? '1' : '0');
setInterval(renderTyping, 1000);
document.addEventListener('visibilitychange', () => { if (document.visibilityState === 'visible' && S.channel) openChannel(S.channel); });

// An invite link (`/#invite=CODE`) fills the join field.
const inviteInHash = location.hash.match(/invite=([^&]+)/);
if (inviteInHash) $('invite-input').value = decodeURIComponent(inviteInHash[1]);
const savedToken = sessionStorage.getItem('quaver.token');
if (savedToken) signIn(savedToken); else showSignin();
