// What the web app shows: each part of the page drawn from the app's state `S`, with the
// app's actions (`A`, set by app.js) on its controls. Lists are rebuilt from state; the
// message list is keyed (a message's element is rebuilt only when what it shows changed),
// so scrolling, selection, focus and hover survive the events that re-render a channel.
import { $, el, fill, icon, avatar, statusText, dayLabel, dayKey, timeLabel, fullTime } from './app-ui.js';

let S, A;
/** Hands the views the state and the actions. */
export function bind(state, actions) { S = state; A = actions; }

export const nameOf = (id) => S.names.get(id) ?? `user ${String(id).slice(-4)}`;

/** A user's avatar: their picture when their backend set one, else their initials. */
const face = (id, name, opts = {}) => avatar(id, name, { ...opts, url: S.avatars.get(id) ?? '' });

/** A user's presence; yours is what you set (the server does not echo it to you) — and
 * offline while this page is not connected, whatever was last heard about you. */
export function presenceOf(user) {
  if (user === S.me?.id) {
    const status = !S.client?.current() || S.myStatus.status === 'Invisible' ? 'Offline' : S.myStatus.status;
    return { user_id: user, status, client_status: { desktop: 'Offline', mobile: 'Offline', web: status }, custom_status: S.myStatus.custom || null, activity: null };
  }
  return S.presences.get(user);
}

const statusOf = (u) => presenceOf(u)?.status ?? 'Offline';

/** A DM's title: its name, or its other people. */
export function dmTitle(c) {
  return c.name || c.recipients.filter((u) => u !== S.me?.id).map(nameOf).join(', ') || 'Just you';
}

function channelMentions(id) { return S.readStates.get(id)?.mention_count ?? 0; }

export function renderRail() {
  fill($('guilds'), ...[...S.guilds.values()].map((g) => {
    const ids = [...g.channels.keys()];
    const unread = ids.some((c) => S.unread.has(c));
    const mentions = ids.reduce((n, c) => n + channelMentions(c), 0);
    const selected = S.view === 'guild' && g.guild.id === S.guild;
    const label = `${g.guild.name}${mentions ? `, ${mentions} mention${mentions > 1 ? 's' : ''}` : unread ? ', unread messages' : ''}`;
    // The name comes from the hidden text, not a label, so what is read contains nothing
    // that is shown differently (the initials are for the eye only).
    return el('li', {}, el('button', {
      type: 'button', class: `rail-item guild${selected ? ' selected' : ''}${unread ? ' unread' : ''}`,
      dataset: { id: g.guild.id }, title: g.guild.name, 'aria-current': selected ? 'page' : null,
      onclick: () => A.openGuild(g.guild.id),
    }, el('span', { 'aria-hidden': 'true' }, initialsOf(g.guild.name)), el('span', { class: 'visually-hidden' }, label),
    mentions ? el('span', { class: 'badge', 'aria-hidden': 'true' }, String(mentions)) : null));
  }));
  const home = $('home-item');
  const dmUnread = [...S.dms.keys()].filter((c) => S.unread.has(c)).length;
  const pending = [...S.relationships.values()].filter((k) => k === 'IncomingRequest').length;
  const n = dmUnread + pending;
  home.classList.toggle('selected', S.view === 'home');
  home.classList.toggle('unread', n > 0);
  home.setAttribute('aria-label', `Friends and direct messages${n ? `, ${n} unread` : ''}`);
  $('home-badge').hidden = n === 0;
  $('home-badge').textContent = String(n);
}

function initialsOf(name) {
  const words = name.trim().split(/\s+/);
  return (words.length > 1 ? words[0][0] + words[1][0] : name.slice(0, 2)).toUpperCase();
}

function groupHead(title, add, addLabel) {
  return el('div', { class: 'group-head' }, el('h3', {}, title),
    el('button', { type: 'button', class: 'icon', 'aria-label': addLabel, title: addLabel, onclick: add }, icon('plus')));
}

export function renderSidebar() {
  const g = S.view === 'guild' ? S.guilds.get(S.guild) : null;
  $('guild-panel').hidden = !g; $('home-panel').hidden = !!g;
  if (!g) { renderDms(); return; }
  $('guild-name').textContent = g.guild.name;
  const channels = [...g.channels.values()];
  const text = channels.filter((c) => c.kind === 'Text').sort((a, b) => a.name.localeCompare(b.name));
  const voice = channels.filter((c) => c.kind === 'Voice').sort((a, b) => a.name.localeCompare(b.name));
  const parts = [groupHead('Text channels', () => A.newChannel('Text'), 'Create a text channel')];
  parts.push(el('ul', {}, ...text.map((c) => {
    const mentions = channelMentions(c.id);
    const unread = S.unread.has(c.id);
    const selected = c.id === S.channel;
    const extra = mentions ? `, ${mentions} mention${mentions > 1 ? 's' : ''}` : unread ? ', unread' : '';
    return el('li', {}, el('button', {
      type: 'button', class: `channel${selected ? ' selected' : ''}${unread ? ' unread' : ''}`,
      dataset: { id: c.id, name: c.name, kind: c.kind }, 'aria-current': selected ? 'page' : null,
      onclick: () => A.openChannel(c.id),
    }, icon('hash'), el('span', { class: 'name' }, c.name), extra ? el('span', { class: 'visually-hidden' }, extra) : null,
    mentions ? el('span', { class: 'badge mentions', 'aria-hidden': 'true' }, String(mentions)) : null));
  })));
  parts.push(groupHead('Voice channels', () => A.newChannel('Voice'), 'Create a voice channel'));
  const vc = S.voiceSession;
  parts.push(el('ul', {}, ...voice.map((c) => {
    const inside = [...(S.voice.get(c.id)?.values() ?? [])].sort((a, b) => a.slot - b.slot);
    const here = vc?.channel === c.id;
    return el('li', {}, el('button', {
      type: 'button', class: `channel voice${here ? ' selected' : ''}`, dataset: { id: c.id, name: c.name, kind: c.kind },
      onclick: () => A.joinVoice(c.id),
    }, icon('speaker'), el('span', { class: 'name' }, c.name),
    el('span', { class: 'visually-hidden' }, `, voice channel, ${inside.length ? `${inside.length} inside` : 'empty'}${here ? ', you are in it' : ''}`)),
    inside.length ? el('ul', { class: 'voice-users', 'aria-label': `In ${c.name}` }, ...inside.map((v) => voiceUser(v, here))) : null);
  })));
  fill($('channels'), ...parts);
}

function voiceUser(v, here) {
  const me = v.user_id === S.me?.id;
  const mutedForMe = S.mutedForMe.has(v.user_id);
  const muted = v.self_mute || v.server_mute, deaf = v.self_deaf || v.server_deaf;
  const flags = [muted ? 'muted' : null, deaf ? 'deafened' : null, mutedForMe ? 'muted for you' : null].filter(Boolean);
  return el('li', {
    class: `voice-user${v.speaking ? ' speaking' : ''}`, dataset: { user: v.user_id, muted: String(muted), deaf: String(deaf) },
  }, face(v.user_id, nameOf(v.user_id), { size: 'small' }), el('span', {}, nameOf(v.user_id)),
  v.speaking ? el('span', { class: 'visually-hidden' }, ', speaking') : null,
  muted ? icon('micOff') : null, deaf ? icon('headOff') : null,
  flags.length ? el('span', { class: 'flags' }, `(${flags.join(', ')})`) : null,
  here && !me ? el('button', {
    type: 'button', class: 'mute-for-me', 'aria-pressed': String(mutedForMe),
    title: mutedForMe ? 'Hear them again' : 'Stop hearing them (only you)',
    onclick: (e) => { e.stopPropagation(); A.toggleMutedForMe(v.user_id); },
  }, mutedForMe ? 'unmute' : 'mute', el('span', { class: 'visually-hidden' }, ` ${nameOf(v.user_id)} for you only`)) : null);
}

function renderDms() {
  $('friends-nav').classList.toggle('selected', S.view === 'home' && !S.channel);
  const pending = [...S.relationships.values()].filter((k) => k === 'IncomingRequest').length;
  $('pending-badge').hidden = pending === 0; $('pending-badge').textContent = String(pending);
  const dms = [...S.dms.values()].sort((a, b) => (b.last_seq ?? 0) - (a.last_seq ?? 0));
  fill($('dms'), ...dms.map((c) => {
    const other = c.recipients.find((u) => u !== S.me?.id) ?? S.me?.id;
    const unread = S.unread.has(c.id);
    const selected = c.id === S.channel;
    return el('li', {}, el('button', {
      type: 'button', class: `dm${selected ? ' selected' : ''}${unread ? ' unread' : ''}`, dataset: { id: c.id },
      'aria-current': selected ? 'page' : null,
      onclick: () => A.openChannel(c.id),
    }, c.kind === 'Dm' ? face(other, nameOf(other), { size: 'medium', status: statusOf(other) }) : avatar(c.id, dmTitle(c), { size: 'medium' }),
    el('span', { class: 'name' }, dmTitle(c)), unread ? el('span', { class: 'visually-hidden' }, ', unread') : null));
  }));
}

const KIND_LABEL = {
  Friend: 'Friend', IncomingRequest: 'Wants to be your friend', OutgoingRequest: 'Friend request sent', Blocked: 'Blocked',
};

function personRow(user, label, actions) {
  return el('li', { class: 'friend', dataset: { user, kind: S.relationships.get(user) ?? 'None' } },
    face(user, nameOf(user), { status: statusOf(user) }),
    el('div', { class: 'who' }, el('span', { class: 'name' }, nameOf(user)), el('span', { class: 'label' }, label)),
    el('div', { class: 'friend-actions' }, ...actions));
}

const btn = (label, onclick, extra = {}) => el('button', { type: 'button', onclick, ...extra }, label);

/** The Friends view (home, no conversation open): tabs All, Pending, Blocked, Add friend. */
export function renderFriends() {
  const tab = S.homeTab;
  for (const t of document.querySelectorAll('#home-view [role="tab"]')) {
    const on = t.dataset.tab === tab;
    t.setAttribute('aria-selected', String(on));
    t.tabIndex = on ? 0 : -1;
  }
  $('friends-panel').setAttribute('aria-labelledby', `tab-${tab}`);
  $('friend-search').hidden = tab !== 'add';
  const rows = [];
  const rel = [...S.relationships];
  const name = (u) => nameOf(u).toLowerCase();
  if (tab === 'add') {
    const q = $('friend-query').value.trim().toLowerCase();
    const known = [...S.names.keys()].filter((u) => u !== S.me?.id && !S.relationships.has(u));
    const found = known.filter((u) => !q || name(u).includes(q)).sort((a, b) => name(a).localeCompare(name(b))).slice(0, 50);
    for (const u of found) rows.push(personRow(u, statusText(presenceOf(u)), [btn('Send friend request', () => A.relationship('SendFriendRequest', u))]));
    if (!found.length) rows.push(el('li', { class: 'empty' }, q ? `Nobody called “${q}” among the people you share a guild or a conversation with.` : 'Join a guild to meet people.'));
  } else {
    const want = { all: ['Friend'], pending: ['IncomingRequest', 'OutgoingRequest'], blocked: ['Blocked'] }[tab];
    for (const [u, kind] of rel.filter(([, k]) => want.includes(k)).sort(([a], [b]) => name(a).localeCompare(name(b)))) {
      const actions = [];
      if (kind === 'IncomingRequest') actions.push(btn('Accept', () => A.relationship('AcceptFriendRequest', u), { class: 'primary' }), btn('Decline', () => A.relationship('DeclineFriendRequest', u)));
      if (kind === 'OutgoingRequest') actions.push(btn('Cancel request', () => A.relationship('CancelFriendRequest', u)));
      if (kind === 'Friend') actions.push(btn('Message', () => A.openDm(u), { 'aria-label': `Message ${nameOf(u)}` }), btn('Remove', () => A.removeFriend(u), { 'aria-label': `Remove ${nameOf(u)} as a friend` }));
      if (kind === 'Blocked') actions.push(btn('Unblock', () => A.relationship('UnblockUser', u)));
      rows.push(personRow(u, kind === 'Friend' ? statusText(presenceOf(u)) : KIND_LABEL[kind], actions));
    }
    if (!rows.length) rows.push(el('li', { class: 'empty' }, { all: 'No friends yet: find people under “Add friend”.', pending: 'No pending requests.', blocked: 'Nobody is blocked.' }[tab]));
  }
  fill($('friends'), ...rows);
}

export function renderChatHead() {
  const c = S.channel ? S.findChannel(S.channel) : null;
  const home = S.view === 'home' && !c;
  $('home-view').hidden = !home;
  $('messages').hidden = home; $('typing').hidden = home; $('composer-box').hidden = home;
  if (home) {
    $('chat-head').textContent = 'Friends';
    $('chat-topic').textContent = '';
    renderFriends();
    return;
  }
  $('chat-head').textContent = c ? (c.guild_id ? `# ${c.name}` : dmTitle(c)) : 'Pick a channel';
  $('chat-topic').textContent = c?.topic ?? '';
  const until = c?.guild_id ? timedOutUntil(c.guild_id) : 0;
  const can = !!c && c.kind !== 'Voice' && !until;
  $('composer').disabled = !can; $('send').disabled = !can;
  $('composer').placeholder = until ? `You are timed out here until ${fullTime(until)}`
    : c ? `Message ${c.guild_id ? `#${c.name}` : dmTitle(c)}` : 'Pick a channel';
}

/** When your timeout in `guild` ends (Unix ms), or 0 if you are not timed out there. */
export function timedOutUntil(guild) {
  const until = S.guilds.get(guild)?.members.get(S.me?.id)?.timed_out_until_ms ?? 0;
  return until > Date.now() ? until : 0;
}

/** `<@id>` and role mentions as readable names. */
export function renderContent(text) {
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

/** `<@id>` → `@name` (what an edit box shows). */
export const plainMentions = (text) => text.replace(/<@!?(\d+)>/g, (_, id) => `@${nameOf(id)}`);

const GROUP_MS = 7 * 60 * 1000;

export function renderMessages() {
  const box = $('messages');
  const c = S.channel ? S.findChannel(S.channel) : null;
  if (!c || c.kind === 'Voice') { fill(box, el('p', { class: 'empty' }, S.guilds.size || S.dms.size ? 'Pick a channel to read it.' : 'Create a guild or join one with an invite to start.')); return; }
  box.setAttribute('aria-label', `Messages in ${c.guild_id ? `#${c.name}` : dmTitle(c)}`);
  const m = S.store(c.id);
  const list = [...m.byId.values()].sort((a, b) => a.seq - b.seq);
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 60;
  const rows = [];
  if (m.moreBefore && list.length) rows.push(S.olderButton ??= el('button', { id: 'older', type: 'button', onclick: () => A.loadOlder() }, 'Load older messages'));
  if (!list.length && m.loaded) rows.push(el('p', { class: 'empty' }, `This is the start of ${c.guild_id ? `#${c.name}` : `your conversation with ${dmTitle(c)}`}.`));
  const cache = S.msgNodes ??= new Map();
  let prev = null;
  const divider = S.newSince.get(c.id);
  let dividerShown = false;
  for (const msg of list) {
    if (!prev || dayKey(prev.created_at_ms) !== dayKey(msg.created_at_ms)) {
      const key = `day:${dayKey(msg.created_at_ms)}`;
      let d = cache.get(key)?.node;
      if (!d) { d = el('div', { class: 'day', role: 'separator' }, dayLabel(msg.created_at_ms)); cache.set(key, { key, node: d }); }
      rows.push(d);
      prev = null;
    }
    if (divider != null && !dividerShown && msg.seq > divider && msg.author_id !== S.me?.id) {
      rows.push(S.newDivider ??= el('div', { class: 'new-divider', role: 'separator' }, 'New messages'));
      dividerShown = true;
      prev = null;
    }
    const first = !prev || prev.author_id !== msg.author_id || msg.created_at_ms - prev.created_at_ms > GROUP_MS || !!msg.reply_to;
    const parent = msg.reply_to ? m.byId.get(msg.reply_to) : null;
    const editing = S.editing === msg.id;
    const key = JSON.stringify([first, editing, msg.content, msg.edited_at_ms, msg.deleted, msg.reactions, msg.reactions.map((r) => S.myReactions.has(`${msg.id}:${r.emoji}`)),
      nameOf(msg.author_id), parent?.content, parent?.author_id, parent?.deleted, S.mentionsMe(msg)]);
    const hit = cache.get(msg.id);
    if (hit && hit.key === key) rows.push(hit.node);
    else {
      const node = messageNode(msg, parent, first, editing);
      cache.set(msg.id, { key, node });
      rows.push(node);
    }
    prev = msg;
  }
  if (cache.size > 5000) for (const id of cache.keys()) { if (!m.byId.has(id) && !id.startsWith('day:')) cache.delete(id); }
  // Put the rows in place, moving only what is out of place.
  let at = box.firstChild;
  for (const r of rows) {
    if (at === r) { at = at.nextSibling; continue; }
    box.insertBefore(r, at);
  }
  while (at) { const next = at.nextSibling; at.remove(); at = next; }
  if (atBottom || S.scrollToEnd) { box.scrollTop = box.scrollHeight; S.scrollToEnd = false; }
}

function messageNode(msg, parent, first, editing) {
  const mine = msg.author_id === S.me?.id;
  const who = nameOf(msg.author_id);
  const actions = msg.deleted ? null : el('div', { class: 'actions', role: 'toolbar', 'aria-label': `Message from ${who}` },
    el('button', { type: 'button', class: 'act-reply', 'aria-label': 'Reply', title: 'Reply', onclick: () => A.replyTo(msg.id) }, icon('reply')),
    el('button', { type: 'button', class: 'act-react', 'aria-label': 'Add a reaction', title: 'Add a reaction', onclick: (e) => A.pickReaction(msg, e.currentTarget) }, icon('smile')),
    mine ? el('button', { type: 'button', class: 'act-edit', 'aria-label': 'Edit', title: 'Edit', onclick: () => A.startEdit(msg.id) }, icon('pencil')) : null,
    mine ? el('button', { type: 'button', class: 'act-delete', 'aria-label': 'Delete', title: 'Delete (Shift: at once)', onclick: (e) => A.remove(msg, e.shiftKey) }, icon('trash')) : null);
  const body = el('div', { class: 'body' });
  const add = (...c) => { for (const x of c) if (x != null && x !== false) body.append(x); };
  if (first) {
    add(el('div', { class: 'head' }, el('span', { class: 'author' }, who),
      el('time', { class: 'time', datetime: new Date(msg.created_at_ms).toISOString(), title: fullTime(msg.created_at_ms) }, timeLabel(msg.created_at_ms))));
  } else {
    add(el('span', { class: 'visually-hidden' }, `${who}, ${timeLabel(msg.created_at_ms)}: `));
  }
  if (editing) {
    const box = el('textarea', { class: 'edit-box', 'aria-label': 'Edit your message', rows: '2' });
    box.value = plainMentions(msg.content);
    box.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); A.saveEdit(msg, box.value); }
      if (e.key === 'Escape') { e.preventDefault(); A.cancelEdit(); }
    });
    add(box, el('div', { class: 'edit-hint' }, 'Enter to save · Escape to cancel'));
    queueMicrotask(() => { box.focus(); box.setSelectionRange(box.value.length, box.value.length); });
  } else {
    add(el('div', { class: 'content' }, msg.deleted ? 'This message was deleted.' : renderContent(msg.content)),
      msg.edited_at_ms && !msg.deleted ? el('span', { class: 'edited', title: fullTime(msg.edited_at_ms) }, '(edited)') : null);
  }
  if (msg.reactions.length && !msg.deleted) {
    add(el('div', { class: 'reactions' }, ...msg.reactions.map((r) => {
      const mineR = S.myReactions.has(`${msg.id}:${r.emoji}`);
      return el('button', {
        type: 'button', class: mineR ? 'mine' : null, 'aria-pressed': String(mineR),
        'aria-label': `${r.emoji} ${r.count}, ${mineR ? 'remove your reaction' : 'react with it too'}`, onclick: () => A.react(msg, r.emoji),
      }, `${r.emoji} ${r.count}`);
    })));
  }
  const row = el('div', {
    class: `msg${first ? ' first' : ''}${S.mentionsMe(msg) ? ' mentions-me' : ''}${msg.deleted ? ' deleted' : ''}`,
    dataset: { id: msg.id, seq: String(msg.seq), author: msg.author_id },
  },
  msg.reply_to ? el('div', { class: 'reply' }, '↪ ', parent ? `${nameOf(parent.author_id)}: ${parent.deleted ? 'a deleted message' : plainMentions(parent.content).slice(0, 80)}` : 'an earlier message') : null,
  el('div', { class: 'gutter' }, first ? face(msg.author_id, who) : el('span', { class: 'hover-time', 'aria-hidden': 'true' }, timeLabel(msg.created_at_ms))),
  body, actions);
  return row;
}

export function renderReply() {
  const r = $('replying');
  if (!S.replyTo) { r.hidden = true; return; }
  const msg = S.store(S.channel).byId.get(S.replyTo);
  r.hidden = false;
  fill(r, el('span', {}, `Replying to ${msg ? nameOf(msg.author_id) : 'a message'}`),
    el('button', { type: 'button', class: 'icon', 'aria-label': 'Cancel the reply', onclick: () => A.replyTo(null) }, icon('close')));
}

export function renderTyping() {
  const t = S.typing.get(S.channel);
  const now = Date.now();
  const who = t ? [...t].filter(([, exp]) => exp > now).map(([u]) => nameOf(u)) : [];
  const text = who.length === 0 ? '' : who.length === 1 ? `${who[0]} is typing…` : who.length < 4 ? `${who.join(', ')} are typing…` : 'Several people are typing…';
  if ($('typing').textContent !== text) $('typing').textContent = text;
}

export function renderMembers() {
  const g = S.view === 'guild' ? S.guilds.get(S.guild) : null;
  const c = S.channel ? S.findChannel(S.channel) : null;
  const people = g ? [...g.members.values()].map((m) => m.user_id) : (c?.recipients ?? []);
  const online = people.filter((u) => statusOf(u) !== 'Offline').sort((a, b) => nameOf(a).localeCompare(nameOf(b)));
  const offline = people.filter((u) => statusOf(u) === 'Offline').sort((a, b) => nameOf(a).localeCompare(nameOf(b)));
  const section = (title, list) => (list.length ? [el('h3', {}, `${title} — ${list.length}`), el('ul', {}, ...list.map(memberRow))] : []);
  // The Friends view has no member list (its people are the view itself).
  $('member-col').hidden = !g && !c;
  $('members-button').hidden = !g && !c;
  fill($('members'), ...section('Online', online), ...section('Offline', offline));
}

function memberRow(u) {
  const p = presenceOf(u);
  const status = p?.status ?? 'Offline';
  const rel = S.relationships.get(u);
  const blocked = rel === 'Blocked';
  const me = u === S.me?.id;
  const who = nameOf(u);
  const actions = me ? [] : [
    blocked ? null : el('button', { type: 'button', title: 'direct message', 'aria-label': `Message ${who}`, onclick: () => A.openDm(u) }, 'Message'),
    rel ? null : el('button', { type: 'button', title: 'add friend', 'aria-label': `Add ${who} as a friend`, onclick: () => A.relationship('SendFriendRequest', u) }, 'Add friend'),
    blocked ? el('button', { type: 'button', title: 'unblock', 'aria-label': `Unblock ${who}`, onclick: () => A.relationship('UnblockUser', u) }, 'Unblock')
      : el('button', { type: 'button', title: 'block', 'aria-label': `Block ${who}`, onclick: () => A.block(u) }, 'Block'),
  ];
  const words = statusText(p);
  return el('li', { class: `member${status === 'Offline' ? ' offline' : ''}`, dataset: { user: u, status } },
    face(u, who, { size: 'medium', status }),
    el('div', { class: 'who' }, el('span', { class: 'name' }, who, me ? ' (you)' : ''),
      el('span', { class: 'status-text' }, p?.custom_status ? `${words} · ${p.custom_status}` : words)),
    el('div', { class: 'member-actions' }, ...actions));
}

export function notificationText(n) {
  const who = nameOf(n.actor_id);
  const what = { Mention: 'mentioned you', Reply: 'replied to you', Reaction: 'reacted to your message', DirectMessage: 'sent you a message', FriendRequest: 'sent you a friend request', FriendAccepted: 'accepted your friend request' }[n.kind] ?? 'did something';
  const preview = plainMentions(n.preview).replace(/<@&\d+>/g, '@role');
  return `${who} ${what}${preview ? `: ${preview}` : ''}`;
}

export function renderNotifications() {
  const n = $('notif-count');
  n.hidden = S.notifUnread === 0; n.textContent = String(S.notifUnread);
  $('notif-button').setAttribute('aria-label', `Notifications${S.notifUnread ? `, ${S.notifUnread} unread` : ''}`);
  const items = S.notifications.slice(0, 50);
  fill($('notifications'), ...items.map((x) => el('li', {}, el('button', {
    type: 'button', class: `notification${x.read ? '' : ' unread'}`, dataset: { kind: x.kind, id: x.id },
    onclick: () => A.openNotification(x),
  }, el('span', { class: 'text' }, notificationText(x)), el('span', { class: 'time' }, ` · ${fullTime(x.created_at_ms)}`), x.read ? null : el('span', { class: 'visually-hidden' }, ' (unread)')))),
  items.length ? null : el('li', { class: 'empty' }, 'Nothing yet.'));
}

export function renderVoicebar() {
  const v = S.voiceSession;
  $('voicebar').hidden = !v;
  if (!v) return;
  const c = S.findChannel(v.channel);
  $('voice-where').textContent = `${v.session ? 'Voice connected' : 'Joining voice'} · ${c?.name ?? 'voice'}${v.webrtc ? ' · WebRTC' : ''}${v.remote ? ' · other node' : ''}`;
  $('mute').textContent = v.muted ? 'Unmute' : 'Mute';
  $('mute').setAttribute('aria-pressed', String(v.muted));
  $('deafen').textContent = v.deafened ? 'Undeafen' : 'Deafen';
  $('deafen').setAttribute('aria-pressed', String(v.deafened));
  const p = $('voice-problem');
  p.hidden = !v.problem;
  if (v.problem) {
    fill(p, el('span', {}, v.problem.text), v.problem.action ? el('div', {}, el('button', { type: 'button', id: 'voice-fix', onclick: v.problem.action.run }, v.problem.action.label)) : null);
  }
}

export function renderUserbar() {
  if (!S.me) return;
  $('whoami').textContent = S.me.name;
  fill($('me-avatar'), face(S.me.id, S.me.name, { size: 'medium', status: presenceOf(S.me.id)?.status ?? 'Offline' }));
  const chosen = S.myStatus.status === 'Invisible' ? 'Invisible' : statusText(presenceOf(S.me.id));
  $('status-button').textContent = S.myStatus.custom ? `${chosen} · ${S.myStatus.custom}` : chosen;
  $('status-button').setAttribute('aria-label', `Your status: ${$('status-button').textContent}. Change it`);
}

export function renderTitle() {
  const mentions = [...S.readStates.values()].reduce((n, r) => n + (r.mention_count ?? 0), 0);
  const dms = [...S.dms.keys()].filter((c) => S.unread.has(c)).length;
  const n = mentions + dms;
  const where = S.channel ? S.findChannel(S.channel) : null;
  const place = where ? (where.guild_id ? `#${where.name}` : dmTitle(where)) : S.view === 'home' ? 'Friends' : '';
  document.title = `${n ? `(${n}) ` : ''}${place ? `${place} · ` : ''}Quaver`;
}
