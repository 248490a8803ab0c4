// The Quaver web app: chat, friends, DMs, presence, notifications and voice on quaver.js
// (ES modules, no build step). This module holds the state (`S`), the connection and what
// its events do to the state, the person's actions, and the page's wiring; app-views.js
// draws, app-voice.js does voice, app-ui.js holds the small pieces (dialogs, toasts, emoji).
//
// The connection is a `quaver.Resilient`: it reconnects, resumes (a reload too) or catches
// up by channel seq, drops duplicates and resends in-flight sends with their nonce. The app
// keeps each channel's messages by id, so history fetched after a reload and events
// replayed by the server never show a message twice.
//
// No error is swallowed: what the person asked for and could not be done is said in a
// toast; what failed in the background is logged (`quaver: …` in the console) and, where it
// changes what the person sees, said too.
import * as quaver from '/quaver.js';
import { $, el, toast, dialog, closeDialog, confirmDialog, pickEmoji, statusLabel } from './app-ui.js';
import * as V from './app-views.js';
import { VoiceEngine, hasWebCodecs } from './app-voice.js';

window.quaver = quaver;

const S = {
  me: null, client: null, token: null,
  guilds: new Map(), // id → { guild, roles, channels: Map, members: Map, memberCount }
  dms: new Map(), // id → Channel
  readStates: new Map(), // channel → { last_read_seq, mention_count }
  unread: new Set(), // channels with messages after the read position
  newSince: new Map(), // channel → the read position when it was opened (the "new messages" line)
  presences: new Map(),
  relationships: new Map(), // user → kind
  notifications: [], notifUnread: 0,
  voice: new Map(), // channel → Map(user → VoiceState)
  mutedForMe: new Set(JSON.parse(localStorage.getItem('quaver.mutedForMe') ?? '[]')), // users I do not hear
  messages: new Map(), // channel → { byId: Map, moreBefore, loaded }
  myReactions: new Set(), // `${message}:${emoji}`
  typing: new Map(), // channel → Map(user → expires at ms)
  names: new Map(),
  avatars: new Map(),
  view: 'guild', // or 'home' (friends and DMs)
  homeTab: 'all',
  guild: null, channel: null, replyTo: null, editing: null,
  myStatus: JSON.parse(sessionStorage.getItem('quaver.presence') ?? 'null') ?? { status: 'Online', custom: '' },
  lastTypingSent: 0, typingIn: null,
  ready: null,
};
window.quaverApp = S;

const voice = new VoiceEngine({
  client: () => S.client,
  onVoiceEvent: (body) => onEvent('Voice', body),
  voiceSet: (st) => voiceSet(st),
  userInSlot: (channel, slot) => userInSlot(channel, slot),
  mutedForMe: S.mutedForMe,
  changed: () => render(),
  toast: (text, opts) => toast(text, opts),
});
Object.defineProperty(S, 'voiceSession', { get: () => voice.current });
S.voiceStats = voice.stats;

const errText = (e) => (e && e.message) ? e.message : String(e);
/** A failed action the person asked for: said, and logged. */
function failed(what, e) {
  console.warn(`quaver: ${what}`, e);
  toast(`${what}: ${errText(e)}`, { error: true });
}
/** A background failure: logged (the state it would have changed is fixed by the next event or reconnect). */
const logged = (what) => (e) => console.warn(`quaver: ${what}`, e);
const req = (lane, body) => S.client.request(lane, body);
/** A fetch on the current connection — or on the one being set up, from its `Ready`
 * (rejects while there is none). */
const fetchReply = (request) => {
  const s = S.client?.current() ?? S.client?.session;
  return s ? s.fetch(request) : Promise.reject(new Error('not connected'));
};

S.findChannel = (id) => {
  for (const g of S.guilds.values()) if (g.channels.has(id)) return g.channels.get(id);
  return S.dms.get(id) ?? null;
};
S.store = (channel) => {
  let m = S.messages.get(channel);
  if (!m) { m = { byId: new Map(), moreBefore: true, loaded: false }; S.messages.set(channel, m); }
  return m;
};
S.mentionsMe = (msg) => {
  if (!S.me || msg.author_id === S.me.id) return false;
  if (msg.mentions.users.includes(S.me.id) || msg.mentions.everyone) return true;
  const g = S.guilds.get(guildOfChannel(msg.channel_id));
  const mine = g?.members.get(S.me.id)?.roles ?? [];
  return msg.mentions.roles.some((r) => mine.includes(r));
};
function guildOfChannel(id) {
  for (const [gid, g] of S.guilds) if (g.channels.has(id)) return gid;
  return null;
}
function allChannels() {
  return [...S.guilds.values()].flatMap((g) => [...g.channels.values()]).concat([...S.dms.values()]);
}

// ---- sign-in -------------------------------------------------------------------------

/** Connects to the QUIC port this page's server announces at /cert-hash (for tests and
 * scripts: a plain session, no reconnects). */
window.quaverConnect = async (token, options = {}) => {
  const info = await quaver.fetchCertHashes(location.origin);
  const url = `https://${location.hostname}:${info.port}${info.url_path}`;
  return quaver.connect(url, { token, certHashes: info.dev ? info.hashes : [], wsUrl: wsUrlOf(info), ...options });
};

/** The WebSocket framing's address: this page's own host and port (the server's HTTP port,
 * or the proxy in front of it), `wss:` when the page came over HTTPS. */
function wsUrlOf(info) {
  if (!info.ws_path) return null;
  return `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}${info.ws_path}`;
}

async function devToken(name) {
  // A request that gets no answer is said (as "timed out"), not waited on forever.
  const r = await fetch('/dev/token', {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name }), signal: AbortSignal.timeout(10000),
  });
  // An error answer without a JSON body is said by its status instead.
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error ?? `the server answered ${r.status}`);
  return body.token;
}

/** Whether the server mints development names (`GET /dev/token` says). A check that gets
 * no answer within 3 s is dropped and asked again, three times in all: one stalled request
 * must not leave the page offering the wrong way in (seen in the UDP-blocked browser test,
 * where the page sat on the access-key form). */
async function devMode() {
  for (let attempt = 1; attempt <= 3; attempt++) {
    try {
      const r = await fetch('/dev/token', { signal: AbortSignal.timeout(3000) });
      return r.ok && (await r.json()).available === true;
    } catch (e) { console.warn(`quaver: checking for development sign-in (attempt ${attempt} of 3)`, e); }
  }
  return false;
}

async function showSignin(error = '') {
  $('signin').hidden = false; $('app').hidden = true;
  $('signin-error').textContent = error;
  if (!error && /invite=/.test(location.hash)) $('signin-error').textContent = 'You were invited to a guild: sign in to accept.';
  setConn('signed-out');
  const dev = await devMode();
  $('signin-dev-box').hidden = !dev;
  $('signin-key-box').hidden = dev;
  // In development the access key is the second way in, tucked away.
  if (dev) $('key-slot').append($('key-form')); else $('signin-key-box').after($('key-form'));
  (dev ? $('name') : $('token')).focus();
}

const CONN_TEXT = { 'signed-out': 'signed out', connecting: 'connecting…', reconnecting: 'reconnecting…', ready: 'connected', resumed: 'connected (resumed)', closed: 'disconnected', unreachable: 'cannot reach the server' };
function setConn(state) {
  // While attempts keep failing, what failed stays on screen between them.
  if (S.trouble && (state === 'connecting' || state === 'reconnecting')) state = 'unreachable';
  if (state === 'ready' || state === 'resumed') S.trouble = null;
  const c = $('conn');
  const was = c.dataset.state;
  c.dataset.state = state;
  // Which transport carries the session: said when it is the fallback over TCP.
  const transport = (state === 'ready' || state === 'resumed') ? S.client?.session?.transport : null;
  c.dataset.transport = transport ?? '';
  c.textContent = (CONN_TEXT[state] ?? state) + (transport === 'websocket' ? ' · WebSocket' : '');
  c.setAttribute('aria-label', `Connection: ${c.textContent}. Details`);
  const lost = state === 'reconnecting' || state === 'unreachable' || (state === 'connecting' && ['ready', 'resumed'].includes(was));
  const banner = $('reconnect-banner');
  banner.hidden = !lost;
  if (state === 'unreachable') {
    const { error, retryInMs } = S.trouble;
    banner.textContent = `Can't reach the server: ${errText(error)}. Trying again in ${Math.max(1, Math.ceil(retryInMs / 1000))} s.`
      + (S.everReady ? ' Messages you send now go out when it is back.' : '');
  } else if (lost) {
    banner.textContent = 'Connection lost — reconnecting. Messages you send now go out when it is back.';
  }
}

/** An attempt to connect failed: said at once (the badge and the banner), not after minutes
 * of "reconnecting…". A server that said "come back later" is not a failure to reach it. */
function onTrouble({ error, retryInMs, attempts }) {
  console.warn(`quaver: connecting failed (attempt ${attempts})`, error);
  if (error instanceof quaver.ClosedError) return;
  S.trouble = { error, retryInMs };
  setConn('unreachable');
}

async function signIn(token) {
  sessionStorage.setItem('quaver.token', token);
  S.token = token;
  const saved = JSON.parse(sessionStorage.getItem('quaver.resume') ?? 'null');
  const client = new quaver.Resilient(async () => {
    const info = await quaver.fetchCertHashes(location.origin);
    return { url: `https://${location.hostname}:${info.port}${info.url_path}`, certHashes: info.dev ? info.hashes : [], wsUrl: wsUrlOf(info), token: S.token };
  });
  if (saved && saved.token === token) {
    // A reload: resume the session (or catch its channels up) from where the page was.
    client.sessionId = saved.session_id;
    for (const [lane, seq] of Object.entries(saved.lanes)) client.laneSeq[lane] = seq;
    for (const [ch, seq] of saved.channels) client.channelSeq.set(ch, seq);
  }
  S.client = client;
  client.addEventListener('state', (e) => { setConn(e.detail); console.info(`quaver: connection ${e.detail}`); render(); });
  client.addEventListener('ready', (e) => { S.everReady = true; onReady(e.detail.ready, e.detail.resumed); });
  client.addEventListener('trouble', (e) => onTrouble(e.detail));
  client.addEventListener('event', (e) => onEvent(e.detail.lane, e.detail.body));
  client.addEventListener('fatal', (e) => {
    sessionStorage.removeItem('quaver.token'); sessionStorage.removeItem('quaver.resume');
    const why = {
      4012: 'your sign-in expired',
      4019: 'your sign-in was revoked',
      4030: 'you are banned from this server',
      4031: e.detail.reason || 'the application ended your session',
      4032: e.detail.reason || 'the application refused the connection',
    }[e.detail.code] ?? e.detail.reason;
    showSignin(`You were signed out: ${why}. Sign in again.`);
  });
  $('signin').hidden = true; $('app').hidden = false;
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

/** What a member entry tells about a person: name, picture, and your own timeout's end. */
function learn(m) {
  S.names.set(m.user_id, m.name);
  if (m.avatar_url) S.avatars.set(m.user_id, m.avatar_url); else S.avatars.delete(m.user_id);
  // Your timeout ends by itself (no event): draw the composer again when it does.
  const left = m.timed_out_until_ms - Date.now();
  if (m.user_id === S.me?.id && left > 0) setTimeout(render, Math.min(left + 50, 2 ** 31 - 1));
}

function addGuild(g) {
  const old = S.guilds.get(g.guild.id);
  const entry = { guild: g.guild, roles: g.roles, channels: new Map(g.channels.map((c) => [c.id, c])), members: old?.members ?? new Map(), memberCount: g.member_count };
  for (const m of g.members) { entry.members.set(m.user_id, m); learn(m); }
  S.guilds.set(g.guild.id, entry);
  if (g.members.length === 0 && g.member_count > 0) loadMembers(g.guild.id);
}

async function loadMembers(guildId) {
  let after = '0';
  for (let page = 0; page < 10; page++) {
    let r;
    try { r = await fetchReply({ type: 'Members', guild_id: guildId, after, limit: 100 }); } catch (e) { logged('loading members')(e); return; }
    const g = S.guilds.get(guildId);
    for (const m of r.members) { g?.members.set(m.user_id, m); learn(m); }
    if (r.members.length < 100) break;
    after = r.members[r.members.length - 1].user_id;
  }
  render();
}

function onReady(ready, resumed) {
  S.ready = { node: ready.node, session: ready.session_id, resumed };
  S.me = ready.user;
  S.names.set(ready.user.id, ready.user.name);
  S.guilds.clear();
  for (const g of ready.guilds) addGuild(g);
  S.dms = new Map(ready.private_channels.map((c) => [c.id, c]));
  for (const c of S.dms.values()) for (const u of c.recipients) if (!S.names.has(u)) S.names.set(u, `user ${u.slice(-4)}`);
  S.readStates = new Map(ready.read_states.map((r) => [r.channel_id, r]));
  S.unread.clear();
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
  if (!resumed && (S.myStatus.status !== 'Online' || S.myStatus.custom)) sendPresence();
  if (!resumed) {
    // A fresh session: what we showed may be behind; refetch channels when opened.
    for (const [ch, m] of S.messages) if (ch !== S.channel) m.loaded = false;
  }
  if (S.guild && !S.guilds.has(S.guild)) S.guild = null;
  if (S.channel && !S.findChannel(S.channel)) S.channel = null;
  if (S.view === 'guild' && !S.guild && S.guilds.size) S.guild = [...S.guilds.keys()][0];
  if (S.view === 'guild' && !S.guild) S.view = 'home';
  if (!S.channel && S.view === 'guild' && S.guild) S.channel = firstText(S.guild);
  if (S.channel) openChannel(S.channel, { refetch: true, keepDivider: true });
  // A lost connection left its voice channel (voice is state, not history): join again.
  const v = voice.current;
  if (v && !v.remote && v.session && v.session !== S.client.session) {
    const rejoin = () => {
      if (!S.client.current()) return;
      S.client.removeEventListener('state', rejoin);
      voice.join(v.channel, { webrtc: v.webrtc });
    };
    S.client.addEventListener('state', rejoin);
  }
  render();
  takeInviteFromLink();
}

function firstText(guild) {
  return [...(S.guilds.get(guild)?.channels.values() ?? [])].filter((c) => c.kind === 'Text').sort((a, b) => a.name.localeCompare(b.name))[0]?.id ?? null;
}

/** Guilds whose snapshot is being fetched (a guild just joined), with the events about them
 * that arrived meanwhile: applied once the snapshot is in, in order — not dropped because the
 * guild was not known yet (a channel created right after the join was lost that way). */
const loadingGuilds = new Map();

/** The guild an event changes the structure of, if any. */
function structureGuild(b) {
  switch (b.type) {
    case 'ChannelUpdated': return b.channel.guild_id;
    case 'RoleUpdated': return b.role.guild_id;
    case 'RoleDeleted': case 'MemberUpdated': case 'MemberRemoved': return b.guild_id;
    default: return null;
  }
}

/** Fetches the guilds and adds `id`'s (and any other new one), then applies what waited. */
function loadGuild(id) {
  if (loadingGuilds.has(id)) return;
  loadingGuilds.set(id, []);
  fetchReply({ type: 'Guilds' }).then((r) => {
    for (const x of r.guilds) if (!S.guilds.has(x.guild.id)) addGuild(x);
    const waited = loadingGuilds.get(id) ?? [];
    loadingGuilds.delete(id);
    if (S.guilds.has(id)) for (const [lane, e] of waited) onEvent(lane, e);
    render();
  }, (e) => { loadingGuilds.delete(id); logged('loading a new guild')(e); });
}

function onEvent(lane, b) {
  const waiting = loadingGuilds.get(structureGuild(b));
  if (waiting) { waiting.push([lane, b]); return; }
  switch (b.type) {
    case 'MessageCreated': {
      const m = b.message;
      S.store(m.channel_id).byId.set(m.id, m);
      const c = S.findChannel(m.channel_id);
      if (c) c.last_seq = Math.max(c.last_seq, m.seq);
      clearTyping(m.channel_id, m.author_id);
      if (m.author_id === S.me?.id) { if (m.channel_id === S.channel) S.scrollToEnd = true; break; }
      if (m.channel_id === S.channel && document.visibilityState === 'visible') markRead(m.channel_id, m.seq);
      else {
        S.unread.add(m.channel_id);
        if (S.mentionsMe(m)) {
          const rs = S.readStates.get(m.channel_id) ?? { channel_id: m.channel_id, last_read_seq: 0, mention_count: 0 };
          S.readStates.set(m.channel_id, { ...rs, mention_count: rs.mention_count + 1 });
        }
      }
      break;
    }
    case 'MessageEdited': {
      const m = S.store(b.channel_id).byId.get(b.message_id);
      if (m) { m.content = b.content; m.mentions = b.mentions; m.edited_at_ms = b.edited_at_ms; }
      break;
    }
    case 'MessageDeleted': {
      const m = S.store(b.channel_id).byId.get(b.message_id);
      if (m) { m.deleted = true; m.content = ''; }
      if (S.editing === b.message_id) S.editing = null;
      break;
    }
    case 'ReactionAdded': case 'ReactionRemoved': {
      const m = S.store(b.channel_id).byId.get(b.message_id);
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
      const m = S.store(b.channel_id);
      m.byId.clear(); m.loaded = false; m.moreBefore = true;
      if (b.channel_id === S.channel) openChannel(b.channel_id, { refetch: true });
      break;
    }
    case 'GuildUpdated': {
      const g = S.guilds.get(b.guild.id);
      if (g) g.guild = b.guild;
      else loadGuild(b.guild.id);
      break;
    }
    case 'GuildRemoved': {
      const g = S.guilds.get(b.guild_id);
      S.guilds.delete(b.guild_id);
      if (g && voice.current && g.channels.has(voice.current.channel)) voice.leave();
      if (S.guild === b.guild_id) {
        S.guild = [...S.guilds.keys()][0] ?? null; S.channel = S.guild ? firstText(S.guild) : null;
        if (!S.guild) S.view = 'home';
        if (g) toast(`You are no longer in ${g.guild.name}.`);
      }
      break;
    }
    case 'ChannelUpdated': {
      const c = b.channel;
      if (c.guild_id) S.guilds.get(c.guild_id)?.channels.set(c.id, c); else S.dms.set(c.id, c);
      if (!S.client.channelSeq.has(c.id) && c.kind !== 'Voice') S.client.follow(c.id, c.last_seq);
      break;
    }
    case 'ChannelRemoved':
      for (const g of S.guilds.values()) g.channels.delete(b.channel_id);
      S.dms.delete(b.channel_id);
      if (S.channel === b.channel_id) S.channel = S.view === 'guild' && S.guild ? firstText(S.guild) : null;
      break;
    case 'RoleUpdated': {
      const g = S.guilds.get(b.role.guild_id);
      if (g) g.roles = g.roles.filter((r) => r.id !== b.role.id).concat([b.role]);
      break;
    }
    case 'MemberUpdated':
      S.guilds.get(b.guild_id)?.members.set(b.member.user_id, b.member);
      learn(b.member);
      break;
    case 'RoleDeleted': {
      const g = S.guilds.get(b.guild_id);
      if (!g) break;
      g.roles = g.roles.filter((r) => r.id !== b.role_id);
      for (const m of g.members.values()) m.roles = m.roles.filter((r) => r !== b.role_id);
      for (const c of g.channels.values()) c.overwrites = c.overwrites.filter((o) => !(o.target.type === 'Role' && o.target.id === b.role_id));
      break;
    }
    case 'MemberRemoved':
      S.guilds.get(b.guild_id)?.members.delete(b.user_id);
      break;
    case 'ReadStateUpdated':
      S.readStates.set(b.state.channel_id, b.state);
      if ((S.findChannel(b.state.channel_id)?.last_seq ?? 0) <= b.state.last_read_seq) S.unread.delete(b.state.channel_id);
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
      setTimeout(V.renderTyping, b.expires_in_ms + 50);
      V.renderTyping();
      return;
    }
    case 'TypingStopped':
      clearTyping(b.channel_id, b.user_id);
      V.renderTyping();
      return;
    case 'RelationshipUpdated':
      S.relationships.set(b.relationship.user_id, b.relationship.kind);
      break;
    case 'RelationshipRemoved':
      S.relationships.delete(b.user_id);
      break;
    case 'NotificationCreated': {
      const n = b.notification;
      S.notifications.unshift(n);
      if (!n.read) S.notifUnread++;
      // A mention in a guild channel this page does not view: its message was not sent
      // here (only the channel's activity), so the notification is what counts it.
      if (n.kind === 'Mention' && n.channel_id && guildOfChannel(n.channel_id) && !viewed(n.channel_id)) {
        const rs = S.readStates.get(n.channel_id) ?? { channel_id: n.channel_id, last_read_seq: 0, mention_count: 0 };
        S.readStates.set(n.channel_id, { ...rs, mention_count: rs.mention_count + 1 });
      }
      notify(n);
      break;
    }
    case 'ChannelActivity':
      // Guild channels this page does not view had messages (PROTOCOL.md "Viewing channels").
      for (const { channel_id: id, seq } of b.channels) {
        const c = S.findChannel(id);
        if (!c) continue;
        c.last_seq = Math.max(c.last_seq, seq);
        const m = S.messages.get(id);
        if (m && m.byId.size) {
          // What this page holds of it is no longer the latest: fetched anew when opened
          // (kept pages would leave a hole before the new ones).
          if (id === S.channel) openChannel(id, { refetch: true, keepDivider: true });
          else { m.byId.clear(); m.loaded = false; m.moreBefore = true; }
        }
        if (id !== S.channel && seq > (S.readStates.get(id)?.last_read_seq ?? 0)) S.unread.add(id);
      }
      break;
    case 'NotificationsRead':
      for (const n of S.notifications) if (b.all || b.ids.includes(n.id)) n.read = true;
      S.notifUnread = b.all ? 0 : Math.max(0, S.notifUnread - S.notifications.filter((n) => b.ids.includes(n.id)).length);
      if (!b.all && S.notifications.length >= S.notifUnread) S.notifUnread = S.notifications.filter((n) => !n.read).length;
      break;
    case 'VoiceStateUpdated':
      voiceSet(b.state);
      // Moved by a moderator (or the application's backend): the same connection carries on
      // in the new channel.
      if (b.state.user_id === S.me?.id) voice.movedTo(b.state.channel_id, b.state.slot);
      break;
    case 'VoiceStateRemoved':
      S.voice.get(b.channel_id)?.delete(b.user_id);
      // Taken out of voice (not by leaving here): voice is over on this page.
      if (b.user_id === S.me?.id) voice.removedFrom(b.channel_id);
      break;
    case 'VoiceMoved':
      // Moved to a channel another node serves: follow (the join goes to its node).
      voice.followMove(b.channel_id).catch(logged('following a voice move'));
      break;
    case 'VoiceStatesSnapshot':
      // Voice channels we can newly see: everyone in them now.
      for (const c of b.channel_ids) S.voice.set(c, new Map());
      for (const st of b.states) voiceSet(st);
      break;
    case 'VoiceSpeaking': {
      const st = S.voice.get(b.channel_id)?.get(b.user_id);
      if (st) st.speaking = b.speaking;
      if (b.speaking) voice.stats.speakingSeen++;
      break;
    }
    case 'VoiceTrack': voice.trackCarries(b.channel_id, b.mid, b.slot); break;
    case 'Notice': toast(b.text); break;
    case 'MuteUpdated': break;
    default: console.warn(`quaver: an event this page does not know: ${b.type}`);
  }
  render();
}

function voiceSet(v) {
  for (const [c, m] of S.voice) if (c !== v.channel_id) m.delete(v.user_id);
  const m = S.voice.get(v.channel_id) ?? new Map();
  m.set(v.user_id, v);
  S.voice.set(v.channel_id, m);
}

/** The user in `slot` of voice channel `channel`, from its voice states. */
function userInSlot(channel, slot) {
  for (const st of S.voice.get(channel)?.values() ?? []) if (st.slot === slot) return st.user_id;
  return null;
}

function clearTyping(channel, user) { S.typing.get(channel)?.delete(user); }

// ---- notifications: in the page, on the desktop ------------------------------------------

const dnd = () => S.myStatus.status === 'Dnd';

/** A new notification: a toast unless it is about the conversation in view (then it is
 * read at once) or you are on do-not-disturb; on the desktop when the tab is hidden. */
function notify(n) {
  const inView = n.channel_id && n.channel_id === S.channel && document.visibilityState === 'visible';
  if (inView) { readNotifications([n]); return; }
  if (dnd()) return;
  const text = V.notificationText(n);
  if (document.visibilityState === 'hidden' && localStorage.getItem('quaver.desktop') === '1'
    && 'Notification' in window && Notification.permission === 'granted') {
    const d = new Notification('Quaver', { body: text, tag: n.id });
    d.onclick = () => { window.focus(); openNotification(n); };
  } else {
    toast(text);
  }
}

function readNotifications(list) {
  const ids = list.filter((n) => !n.read).map((n) => n.id);
  if (!ids.length) return;
  for (const n of list) n.read = true;
  S.notifUnread = Math.max(0, S.notifUnread - ids.length);
  req('Notifications', { type: 'MarkNotificationsRead', ids, all: false }).catch(logged('marking notifications read'));
}

function openNotification(n) {
  readNotifications([n]);
  closeNotifications();
  if (n.channel_id && S.findChannel(n.channel_id)) openChannel(n.channel_id);
  else if (n.kind === 'FriendRequest' || n.kind === 'FriendAccepted') { S.homeTab = n.kind === 'FriendRequest' ? 'pending' : 'all'; openHome(); }
  render();
}

function toggleNotifications() {
  const p = $('notif-panel');
  if (!p.hidden) { closeNotifications(); return; }
  p.hidden = false;
  $('notif-button').setAttribute('aria-expanded', 'true');
  (p.querySelector('.notification') ?? $('notif-read-all')).focus();
}
function closeNotifications() {
  $('notif-panel').hidden = true;
  $('notif-button').setAttribute('aria-expanded', 'false');
}

// ---- channels and messages -------------------------------------------------------------

function closeDrawers() { $('app').classList.remove('nav-open', 'members-open'); $('menu-button').setAttribute('aria-expanded', 'false'); }

function openGuild(id) {
  S.view = 'guild'; S.guild = id;
  const c = S.channel && guildOfChannel(S.channel) === id ? S.channel : firstText(id);
  if (c) openChannel(c); else { S.channel = null; render(); }
}

function openHome() {
  S.view = 'home'; S.channel = null; S.replyTo = null; S.editing = null;
  declareView().catch(logged('saying which channel is open'));
  closeDrawers();
  render();
}

/** Whether the server sends this page `id`'s messages as they happen. */
function viewed(id) {
  return S.client.viewing === null || S.client.viewing.includes(id);
}

/** Tells the server which guild channel this page shows (PROTOCOL.md "Viewing channels"):
 * only its messages and typing come as they happen; the other guild channels' activity comes
 * coalesced (unread marks), mentions as notifications, DMs whole. Resolves once it applies. */
function declareView() {
  const want = S.channel && guildOfChannel(S.channel) ? [S.channel] : [];
  const has = S.client.viewing;
  if (has && has.length === want.length && has.every((x, i) => x === want[i])) return Promise.resolve();
  return S.client.view(want);
}

async function openChannel(id, { refetch = false, keepDivider = false } = {}) {
  if (S.channel !== id) { S.replyTo = null; S.editing = null; stopTyping(); }
  const g = guildOfChannel(id);
  S.view = g ? 'guild' : 'home';
  if (g) S.guild = g;
  if (!keepDivider || !S.newSince.has(id)) {
    const rs = S.readStates.get(id);
    if (S.unread.has(id) && rs) S.newSince.set(id, rs.last_read_seq); else S.newSince.delete(id);
  }
  const wasViewed = viewed(id);
  S.channel = id;
  S.scrollToEnd = true;
  closeDrawers();
  const m = S.store(id);
  render();
  // Reading a conversation reads its notifications.
  readNotifications(S.notifications.filter((n) => n.channel_id === id && !n.read));
  // Its messages come live from the view's answer on; the history fetched after it covers
  // what came before (merged by id with what arrives meanwhile).
  try { await declareView(); } catch (e) { logged('saying which channel is open')(e); }
  if (!wasViewed && m.byId.size && (S.findChannel(id)?.last_seq ?? 0) > Math.max(...[...m.byId.values()].map((x) => x.seq))) {
    m.byId.clear(); m.loaded = false; m.moreBefore = true;
  }
  if (S.channel !== id) return; // another channel was opened meanwhile
  if (!m.loaded || refetch) {
    try {
      const r = await fetchReply({ type: 'History', channel_id: id, anchor: { type: 'Latest' }, limit: 50 });
      for (const msg of r.messages) m.byId.set(msg.id, msg);
      if (!m.loaded) m.moreBefore = r.more_before;
      m.loaded = true;
    } catch (e) {
      // Without a connection the next Ready loads them; with one, the person is told.
      if (S.client.current()) failed('could not load the messages', e); else logged('loading messages')(e);
    }
    // Who is typing there right now.
    req('Typing', { type: 'WatchTyping', channel_id: id }).then((t) => {
      const map = new Map((t.user_ids ?? []).filter((u) => u !== S.me?.id).map((u) => [u, Date.now() + 10000]));
      S.typing.set(id, map); V.renderTyping();
    }, logged('asking who is typing'));
  }
  const latest = Math.max(0, ...[...m.byId.values()].map((x) => x.seq), S.findChannel(id)?.last_seq ?? 0);
  if (latest && document.visibilityState === 'visible') markRead(id, latest);
  S.scrollToEnd = true;
  render();
}

async function loadOlder() {
  const id = S.channel;
  const m = S.store(id);
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
  } catch (e) { failed('could not load older messages', e); } finally { loadOlder.busy = false; }
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
    req('Chat', { type: 'MarkRead', channel_id: channel, seq: upTo }).catch(logged('marking a channel read'));
  }, 1000));
}

/** `@name` → `<@id>` for members of the channel's guild (or DM recipients). */
function encodeMentions(text, channel) {
  const g = S.guilds.get(guildOfChannel(channel));
  const people = g ? [...g.members.values()].map((m) => [m.name, m.user_id]) : (S.findChannel(channel)?.recipients ?? []).map((u) => [V.nameOf(u), u]);
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

async function send() {
  const input = $('composer');
  const text = input.value.trim();
  const channel = S.channel;
  if (!text || !channel) return;
  input.value = ''; grow();
  const body = { type: 'SendMessage', channel_id: channel, nonce: quaver.newNonce(), content: encodeMentions(text, channel), reply_to: S.replyTo };
  S.replyTo = null; V.renderReply();
  S.lastTypingSent = 0; S.typingIn = null; // sending ends the indicator on the server
  S.newSince.delete(channel);
  try {
    await req('Chat', body);
  } catch (e) {
    failed('your message was not sent', e);
    if (!input.value) { input.value = text; grow(); }
  }
}

function grow() {
  const t = $('composer');
  t.style.height = 'auto';
  t.style.height = `${Math.min(t.scrollHeight, 192)}px`;
}

/** Typing: started while there is a draft (refreshed every 4 s), stopped when it is emptied. */
function onComposerInput() {
  grow();
  if (!S.channel) return;
  const now = Date.now();
  if ($('composer').value.trim()) {
    if (now - S.lastTypingSent > 4000 || S.typingIn !== S.channel) {
      S.lastTypingSent = now; S.typingIn = S.channel;
      req('Typing', { type: 'TypingStart', channel_id: S.channel }).catch(logged('saying you are typing'));
    }
  } else {
    stopTyping();
  }
}

function stopTyping() {
  if (!S.typingIn) return;
  const channel = S.typingIn;
  S.typingIn = null; S.lastTypingSent = 0;
  req('Typing', { type: 'TypingStop', channel_id: channel }).catch(logged('saying you stopped typing'));
}

async function react(msg, emoji) {
  const mine = S.myReactions.has(`${msg.id}:${emoji}`);
  try {
    await req('Chat', { type: mine ? 'RemoveReaction' : 'AddReaction', channel_id: msg.channel_id, message_id: msg.id, emoji });
    S.myReactions[mine ? 'delete' : 'add'](`${msg.id}:${emoji}`);
    render();
  } catch (e) { failed('could not react', e); }
}

async function saveEdit(msg, text) {
  const content = encodeMentions(text.trim(), msg.channel_id);
  S.editing = null;
  render();
  if (!content || content === msg.content) return;
  try { await req('Chat', { type: 'EditMessage', channel_id: msg.channel_id, message_id: msg.id, content }); } catch (e) { failed('could not edit', e); }
}

async function remove(msg, atOnce = false) {
  if (!atOnce) {
    const preview = el('div', { class: 'preview' }, V.plainMentions(msg.content));
    if (!(await confirmDialog('Delete message', 'Delete this message? Everyone sees that a message was deleted.', 'Delete', { danger: true, extra: [preview] }))) return;
  }
  try { await req('Chat', { type: 'DeleteMessage', channel_id: msg.channel_id, message_id: msg.id }); } catch (e) { failed('could not delete', e); }
}

// ---- guilds ----------------------------------------------------------------------------

async function addGuildDialog() {
  const name = el('input', { id: 'new-guild', maxlength: '100', autocomplete: 'off' });
  const code = el('input', { id: 'invite-input', autocomplete: 'off', 'aria-describedby': 'invite-hint' });
  const choice = await dialog({
    title: 'Create or join a guild',
    body: [
      el('label', { for: 'new-guild' }, 'Name of a new guild'), name,
      el('label', { for: 'invite-input' }, 'Or an invite you were given'), code,
      el('p', { class: 'hint', id: 'invite-hint' }, 'A code like “hTKzmgs7Qa”, or a link.'),
    ],
    buttons: [{ label: 'Cancel', value: 'cancel' }, { label: 'Join', value: 'join', id: 'join-guild' }, { label: 'Create', value: 'create', id: 'create-guild', primary: true }],
    onopen: () => name.focus(),
  });
  if (choice === 'create') {
    if (!name.value.trim()) { toast('Give the new guild a name.', { error: true }); return; }
    try { const g = await req('Chat', { type: 'CreateGuild', name: name.value.trim() }); await enterGuild(g.id); } catch (e) { failed('could not create the guild', e); }
  } else if (choice === 'join') {
    const c = codeOf(code.value);
    if (!c) { toast('Paste an invite code or link.', { error: true }); return; }
    await joinByCode(c);
  }
}

function codeOf(text) {
  const t = text.trim();
  const m = t.match(/[?#&]invite=([^&#\s]+)/) ?? t.match(/\/invite\/([^/?#\s]+)/);
  return m ? decodeURIComponent(m[1]) : t;
}

async function joinByCode(code) {
  try {
    const g = await req('Chat', { type: 'JoinGuild', code });
    await enterGuild(g.id);
    toast(`Welcome to ${g.name}!`);
  } catch (e) { failed('could not join', e); }
}

/** An invite link (`/#invite=CODE`): "Join <guild>?" in one click, once signed in. */
async function takeInviteFromLink() {
  const m = location.hash.match(/invite=([^&]+)/);
  if (!m) return;
  const code = decodeURIComponent(m[1]);
  history.replaceState(null, '', location.pathname + location.search);
  let r;
  try { r = await fetchReply({ type: 'Invite', code }); } catch (e) { failed('this invite does not work', e); return; }
  if (r.member) { await enterGuild(r.guild.id); return; }
  const go = await dialog({
    title: `Join ${r.guild.name}?`,
    body: [el('p', {}, `You were invited to ${r.guild.name}, with ${r.member_count} member${r.member_count === 1 ? '' : 's'}.`)],
    buttons: [{ label: 'Not now', value: 'no' }, { label: `Join ${r.guild.name}`, value: 'join', id: 'join-invite', primary: true }],
  });
  if (go === 'join') await joinByCode(code);
}

/** After creating or joining guild `id`: load it and open its first text channel. */
async function enterGuild(id) {
  try {
    const r = await fetchReply({ type: 'Guilds' });
    for (const x of r.guilds) addGuild(x);
  } catch (e) { logged('loading guilds')(e); }
  S.view = 'guild'; S.guild = id;
  const c = firstText(id);
  if (c) openChannel(c); else render();
}

async function newChannel(kind = 'Text') {
  if (!S.guild) return;
  const name = el('input', { id: 'new-channel-name', maxlength: '100', autocomplete: 'off' });
  const select = el('select', { id: 'new-channel-kind' },
    el('option', { value: 'Text', selected: kind === 'Text' }, 'Text — messages'), el('option', { value: 'Voice', selected: kind === 'Voice' }, 'Voice — talk'));
  const go = await dialog({
    title: 'Create a channel',
    body: [el('label', { for: 'new-channel-name' }, 'Name'), name, el('label', { for: 'new-channel-kind' }, 'Kind'), select],
    buttons: [{ label: 'Cancel', value: 'cancel' }, { label: 'Create', value: 'create', id: 'create-channel', primary: true }],
    onopen: () => name.focus(),
  });
  if (go !== 'create') return;
  if (!name.value.trim()) { toast('Give the channel a name.', { error: true }); return; }
  try {
    const c = await req('Chat', { type: 'CreateChannel', guild_id: S.guild, kind: select.value, name: name.value.trim(), topic: '', user_limit: 0 });
    S.guilds.get(S.guild)?.channels.set(c.id, c);
    if (c.kind === 'Text') { S.client.follow(c.id, c.last_seq); openChannel(c.id); }
    render();
  } catch (e) { failed('could not create the channel', e); }
}

async function createInvite() {
  if (!S.guild) return;
  let inv;
  try { inv = await req('Chat', { type: 'CreateInvite', guild_id: S.guild, max_uses: 0, max_age_secs: 7 * 86400 }); } catch (e) { failed('could not create an invite', e); return; }
  const link = `${location.origin}/#invite=${inv.code}`;
  const field = el('input', { id: 'invite-link', readonly: true, value: link, 'aria-describedby': 'invite-note' });
  const said = el('p', { class: 'copied', role: 'status' });
  const copy = el('button', {
    type: 'button', id: 'copy-invite', class: 'primary',
    onclick: async () => {
      try { await navigator.clipboard.writeText(link); said.textContent = 'Copied!'; } catch (e) {
        console.warn('quaver: copying the invite', e);
        field.select(); said.textContent = 'Selected: press Ctrl+C (⌘C) to copy.';
      }
    },
  }, 'Copy');
  await dialog({
    title: `Invite people to ${S.guilds.get(S.guild)?.guild.name ?? 'this guild'}`,
    body: [el('label', { for: 'invite-link' }, 'Send them this link'), el('div', { class: 'invite-link' }, field, copy), said,
      el('p', { class: 'hint', id: 'invite-note' }, 'It works for a week. Code: ', el('code', { id: 'invite-value' }, inv.code))],
    buttons: [{ label: 'Done', value: 'done' }],
    onopen: () => copy.focus(),
  });
}

async function leaveGuild() {
  const g = S.guilds.get(S.guild);
  if (!g || !(await confirmDialog(`Leave ${g.guild.name}`, `Leave ${g.guild.name}? You can come back with an invite.`, 'Leave', { danger: true }))) return;
  try { await req('Chat', { type: 'LeaveGuild', guild_id: S.guild }); } catch (e) { failed('could not leave', e); }
}

// ---- people ----------------------------------------------------------------------------

async function openDm(user) {
  try {
    const c = await req('Chat', { type: 'OpenDm', user_id: user });
    S.dms.set(c.id, c);
    S.client.follow(c.id, c.last_seq);
    openChannel(c.id);
  } catch (e) { failed('could not open the conversation', e); }
}

const REL_DONE = { SendFriendRequest: 'Friend request sent.', AcceptFriendRequest: 'You are friends now.', UnblockUser: 'Unblocked.' };
async function relationship(type, user) {
  try {
    await req('Chat', { type, user_id: user });
    if (REL_DONE[type]) toast(REL_DONE[type]);
    // Answering a request reads its notification.
    if (type === 'AcceptFriendRequest' || type === 'DeclineFriendRequest') {
      readNotifications(S.notifications.filter((n) => n.kind === 'FriendRequest' && n.actor_id === user));
      render();
    }
  } catch (e) { failed('that did not work', e); }
}

async function block(user) {
  const who = V.nameOf(user);
  if (await confirmDialog(`Block ${who}`, `Block ${who}? Neither of you can send the other messages or friend requests until you unblock.`, 'Block', { danger: true })) {
    await relationship('BlockUser', user);
  }
}

async function removeFriend(user) {
  if (await confirmDialog('Remove friend', `Remove ${V.nameOf(user)} from your friends?`, 'Remove', { danger: true })) await relationship('RemoveFriend', user);
}

function sendPresence() {
  sessionStorage.setItem('quaver.presence', JSON.stringify(S.myStatus));
  req('Presence', { type: 'SetPresence', status: S.myStatus.status, custom_status: S.myStatus.custom || null, activity: null })
    .catch((e) => failed('could not set your status', e));
}

async function statusDialog() {
  const select = el('select', { id: 'status-select' }, ...['Online', 'Idle', 'Dnd', 'Invisible'].map((s) => el('option', { value: s, selected: S.myStatus.status === s }, statusLabel(s))));
  const custom = el('input', { id: 'custom-status', maxlength: '128', value: S.myStatus.custom ?? '', autocomplete: 'off' });
  const go = await dialog({
    title: 'Your status',
    body: [el('label', { for: 'status-select' }, 'Status'), select,
      el('p', { class: 'hint' }, 'Do not disturb silences notifications; invisible shows you offline.'),
      el('label', { for: 'custom-status' }, 'Custom status (optional)'), custom],
    buttons: [{ label: 'Cancel', value: 'cancel' }, { label: 'Save', value: 'save', id: 'status-save', primary: true }],
    onopen: () => select.focus(),
  });
  if (go !== 'save') return;
  S.myStatus = { status: select.value, custom: custom.value.trim() };
  sendPresence();
  render();
}

// ---- settings and details --------------------------------------------------------------

function applyTheme() {
  const t = localStorage.getItem('quaver.theme') ?? 'system';
  const dark = t === 'dark' || (t === 'system' && matchMedia('(prefers-color-scheme: dark)').matches);
  document.documentElement.dataset.theme = dark ? 'dark' : 'light';
}
matchMedia('(prefers-color-scheme: dark)').addEventListener('change', applyTheme);

async function settingsDialog() {
  const theme = localStorage.getItem('quaver.theme') ?? 'system';
  const radio = (value, label) => el('label', { class: 'choice' }, el('input', {
    type: 'radio', name: 'theme', id: `theme-${value}`, value, checked: theme === value,
    onchange: () => { localStorage.setItem('quaver.theme', value); applyTheme(); },
  }), label);
  const desktop = el('input', {
    type: 'checkbox', id: 'desktop-notify', checked: localStorage.getItem('quaver.desktop') === '1' && 'Notification' in window && Notification.permission === 'granted',
    onchange: async (e) => {
      if (!e.target.checked) { localStorage.setItem('quaver.desktop', '0'); return; }
      if (!('Notification' in window)) { e.target.checked = false; toast('This browser has no desktop notifications.', { error: true }); return; }
      const p = await Notification.requestPermission();
      e.target.checked = p === 'granted';
      localStorage.setItem('quaver.desktop', p === 'granted' ? '1' : '0');
      if (p !== 'granted') toast('Desktop notifications are blocked for this site in your browser’s settings.', { error: true });
    },
  });
  const webrtc = el('input', {
    type: 'checkbox', id: 'voice-webrtc', checked: localStorage.getItem('quaver.voice.webrtc') === '1',
    onchange: (e) => localStorage.setItem('quaver.voice.webrtc', e.target.checked ? '1' : '0'),
  });
  const go = await dialog({
    title: 'Settings',
    body: [
      el('fieldset', {}, el('legend', {}, 'Theme'), radio('system', 'Same as my system'), radio('light', 'Light'), radio('dark', 'Dark')),
      el('fieldset', {}, el('legend', {}, 'Notifications'),
        el('label', { class: 'choice' }, desktop, 'Desktop notifications when this tab is in the background (not while on do not disturb)')),
      el('fieldset', {}, el('legend', {}, 'Voice'),
        el('label', { class: 'choice' }, webrtc, 'Voice over WebRTC (the browser’s echo cancellation and jitter buffer)'),
        hasWebCodecs() ? null : el('p', { class: 'hint' }, 'This browser always uses WebRTC for voice.')),
    ],
    buttons: [{ label: 'Sign out', value: 'signout', id: 'signout', danger: true }, { label: 'Close', value: 'close', primary: true }],
  });
  if (go === 'signout') signOut();
}

async function signOut() {
  await voice.leave();
  S.client?.close();
  sessionStorage.clear();
  location.hash = '';
  location.reload();
}

async function connectionDialog() {
  const c = S.client;
  const row = (k, v) => [el('dt', {}, k), el('dd', {}, v)];
  await dialog({
    title: 'Connection',
    body: [el('dl', { class: 'details' },
      ...row('State', CONN_TEXT[c?.state] ?? c?.state ?? 'signed out'),
      ...row('Server node', S.ready?.node ?? '—'),
      ...row('Session', S.ready?.session ?? '—'),
      ...row('Last connect', S.ready ? (S.ready.resumed ? 'resumed exactly' : 'new session (caught up by channel)') : '—'),
      ...row('Transport', 'WebTransport over QUIC'),
      ...row('Voice', voice.current ? `${voice.current.webrtc ? 'WebRTC' : 'datagrams'}${voice.current.remote ? ', on another node' : ''}` : 'not in voice'))],
  });
}

// ---- rendering -------------------------------------------------------------------------

let renderQueued = false;
/** Draws every part once per frame at most (events come in bursts). */
function render() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    if (!S.me) return;
    V.renderRail(); V.renderSidebar(); V.renderChatHead(); if (!$('messages').hidden) V.renderMessages();
    V.renderReply(); V.renderTyping(); V.renderMembers(); V.renderNotifications(); V.renderVoicebar(); V.renderUserbar(); V.renderTitle();
  });
}
// Tests and scripts can ask for a render now.
window.quaverRender = () => { renderQueued = false; render(); };

V.bind(S, {
  openGuild, openChannel, loadOlder, relationship, openDm, block, removeFriend,
  joinVoice: (id) => {
    if (voice.current?.channel === id) return;
    voice.join(id, { webrtc: localStorage.getItem('quaver.voice.webrtc') === '1' || !hasWebCodecs() });
  },
  toggleMutedForMe: (user) => {
    if (S.mutedForMe.has(user)) S.mutedForMe.delete(user); else S.mutedForMe.add(user);
    localStorage.setItem('quaver.mutedForMe', JSON.stringify([...S.mutedForMe]));
    voice.applyHearing();
    render();
  },
  newChannel,
  replyTo: (id) => { S.replyTo = id; V.renderReply(); if (id) $('composer').focus(); },
  pickReaction: async (msg, anchor) => { const e = await pickEmoji(anchor); if (e) react(msg, e); },
  react,
  startEdit: (id) => { S.editing = id; render(); },
  saveEdit,
  cancelEdit: () => { S.editing = null; render(); $('composer').focus(); },
  remove,
  openNotification,
});

// ---- wiring ----------------------------------------------------------------------------

$('dev-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const name = $('name').value.trim();
  if (!name) { $('signin-error').textContent = 'Pick a name.'; return; }
  try { await signIn(await devToken(name)); } catch (err) { $('signin-error').textContent = `That did not work: ${err.message}.`; }
});
$('key-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const t = $('token').value.trim();
  if (t) signIn(t); else $('signin-error').textContent = 'Paste your access key.';
});
$('composer-box').addEventListener('submit', (e) => { e.preventDefault(); send(); });
$('composer').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); send(); return; }
  if (e.key === 'Escape' && S.replyTo) { S.replyTo = null; V.renderReply(); }
  if (e.key === 'ArrowUp' && !$('composer').value) {
    // Edit your last message, as in other chat apps.
    const mine = [...S.store(S.channel).byId.values()].filter((m) => m.author_id === S.me?.id && !m.deleted).sort((a, b) => b.seq - a.seq)[0];
    if (mine) { e.preventDefault(); S.editing = mine.id; render(); }
  }
});
$('composer').addEventListener('input', onComposerInput);
$('composer').addEventListener('blur', () => { if (!$('composer').value.trim()) stopTyping(); });
$('messages').addEventListener('scroll', () => { if ($('messages').scrollTop < 20) loadOlder(); });
$('add-guild').onclick = addGuildDialog;
$('home-item').onclick = openHome;
$('friends-nav').onclick = openHome;
$('guild-menu-button').onclick = () => {
  const m = $('guild-menu'), open = m.hidden;
  m.hidden = !open;
  $('guild-menu-button').setAttribute('aria-expanded', String(open));
  if (open) m.querySelector('button').focus();
};
$('guild-menu').addEventListener('click', () => { $('guild-menu').hidden = true; $('guild-menu-button').setAttribute('aria-expanded', 'false'); });
$('guild-menu').addEventListener('keydown', (e) => {
  const items = [...$('guild-menu').querySelectorAll('button')];
  const i = items.indexOf(document.activeElement);
  if (e.key === 'Escape') { $('guild-menu').hidden = true; $('guild-menu-button').focus(); }
  if (e.key === 'ArrowDown') { e.preventDefault(); items[(i + 1) % items.length].focus(); }
  if (e.key === 'ArrowUp') { e.preventDefault(); items[(i - 1 + items.length) % items.length].focus(); }
});
$('create-invite').onclick = createInvite;
$('new-channel').onclick = () => newChannel('Text');
$('leave-guild').onclick = leaveGuild;
$('status-button').onclick = statusDialog;
$('settings-button').onclick = settingsDialog;
$('conn').onclick = connectionDialog;
$('notif-button').onclick = toggleNotifications;
$('notif-read-all').onclick = () => {
  for (const n of S.notifications) n.read = true;
  S.notifUnread = 0; render();
  req('Notifications', { type: 'MarkNotificationsRead', ids: [], all: true }).catch((e) => failed('could not mark them read', e));
};
$('notif-panel').addEventListener('keydown', (e) => { if (e.key === 'Escape') { closeNotifications(); $('notif-button').focus(); } });
document.addEventListener('pointerdown', (e) => {
  if (!$('notif-panel').hidden && !$('notif-panel').contains(e.target) && !$('notif-button').contains(e.target)) closeNotifications();
  if (!$('guild-menu').hidden && !$('guild-menu').contains(e.target) && !$('guild-menu-button').contains(e.target)) $('guild-menu').hidden = true;
});
$('mute').onclick = () => voice.setMuted(!voice.current?.muted);
$('deafen').onclick = () => voice.setDeafened(!voice.current?.deafened);
$('leave-voice').onclick = () => voice.leave();
$('menu-button').onclick = () => {
  const open = !$('app').classList.contains('nav-open');
  $('app').classList.toggle('nav-open', open);
  $('app').classList.remove('members-open');
  $('menu-button').setAttribute('aria-expanded', String(open));
  if (open) ($('sidebar').querySelector('.selected') ?? $('home-item')).focus();
};
$('members-button').onclick = () => {
  const narrow = matchMedia('(max-width: 1199px)').matches;
  if (narrow) {
    const open = !$('app').classList.contains('members-open');
    $('app').classList.toggle('members-open', open);
    $('app').classList.remove('nav-open');
    $('members-button').setAttribute('aria-expanded', String(open));
  } else {
    const hidden = $('app').classList.toggle('members-hidden');
    $('members-button').setAttribute('aria-expanded', String(!hidden));
  }
};
$('scrim').onclick = closeDrawers;
document.addEventListener('keydown', (e) => { if (e.key === 'Escape' && $('app').matches('.nav-open, .members-open')) closeDrawers(); });
for (const t of document.querySelectorAll('#home-view [role="tab"]')) {
  t.onclick = () => {
    S.homeTab = t.dataset.tab;
    // Seeing the requests reads their notifications.
    if (S.homeTab === 'pending') readNotifications(S.notifications.filter((n) => n.kind === 'FriendRequest'));
    render();
    if (S.homeTab === 'add') $('friend-query').focus();
  };
  t.addEventListener('keydown', (e) => {
    const tabs = [...document.querySelectorAll('#home-view [role="tab"]')];
    const i = tabs.indexOf(t), step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
    if (step) { e.preventDefault(); const n = tabs[(i + step + tabs.length) % tabs.length]; n.focus(); n.click(); }
  });
}
$('friend-query').addEventListener('input', () => V.renderFriends());
addEventListener('hashchange', () => { if (S.client?.current()) takeInviteFromLink(); });
setInterval(V.renderTyping, 1000);
document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible' && S.channel) {
    const c = S.findChannel(S.channel);
    if (c?.last_seq) markRead(S.channel, c.last_seq);
    render();
  }
});

// An invite link that arrives before sign-in waits for it (`takeInviteFromLink` after Ready).
const savedToken = sessionStorage.getItem('quaver.token');
if (savedToken) signIn(savedToken); else showSignin();
