// Small UI pieces of the web app that know nothing of Quaver: elements, icons, avatars,
// readable presence, dates, toasts, dialogs and the emoji picker. Every control made here
// has an accessible name; dialogs trap focus (the browser's <dialog>) and give it back.

export const $ = (id) => document.getElementById(id);

/** Puts `children` into `parent` in place of what it held, leaving out null and false
 * (the DOM's own `replaceChildren` would write them as text). */
export function fill(parent, ...children) {
  parent.replaceChildren(...children.filter((c) => c != null && c !== false));
  return parent;
}

/** `el('button', { class, onclick, 'aria-label': … }, ...children)`. */
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c != null && c !== false) e.append(c);
  return e;
}

const PATHS = {
  hash: 'M10 3 8.5 9H4v2h4l-1 4H3v2h3.5L5 21h2l1.5-4h4L11 21h2l1.5-4H19v-2h-4l1-4h4V9h-3.5L18 3h-2l-1.5 6h-4L12 3zm-1 8h4l-1 4H8z',
  speaker: 'M4 9v6h4l5 5V4L8 9zm12.5 3a4.5 4.5 0 0 0-2.5-4v8a4.5 4.5 0 0 0 2.5-4zM14 3.2v2.1a7 7 0 0 1 0 13.4v2.1a9 9 0 0 0 0-17.6z',
  reply: 'M10 9V5l-7 7 7 7v-4.1c5 0 8.5 1.6 11 5.1-1-5-4-10-11-11z',
  smile: 'M12 2a10 10 0 1 0 10 10A10 10 0 0 0 12 2Zm-3.5 6A1.5 1.5 0 1 1 7 9.5 1.5 1.5 0 0 1 8.5 8Zm7 0A1.5 1.5 0 1 1 14 9.5 1.5 1.5 0 0 1 15.5 8ZM12 18a6 6 0 0 1-5.2-3h10.4A6 6 0 0 1 12 18Z',
  pencil: 'M3 17.3V21h3.7l11-11-3.7-3.7zM20.7 7a1 1 0 0 0 0-1.4l-2.3-2.3a1 1 0 0 0-1.4 0l-1.8 1.8 3.7 3.7z',
  trash: 'M6 19a2 2 0 0 0 2 2h8a2 2 0 0 0 2-2V7H6zM19 4h-3.5l-1-1h-5l-1 1H5v2h14z',
  plus: 'M11 5h2v6h6v2h-6v6h-2v-6H5v-2h6z',
  close: 'M19 6.4 17.6 5 12 10.6 6.4 5 5 6.4 10.6 12 5 17.6 6.4 19 12 13.4 17.6 19 19 17.6 13.4 12z',
  micOff: 'M19 11h-1.7a5.3 5.3 0 0 1-.5 2.3l1.2 1.2A7 7 0 0 0 19 11zM15 11.2V5a3 3 0 0 0-6 0v.2zM4.3 3 3 4.3l6 6V11a3 3 0 0 0 4.5 2.6l1.6 1.6A5.3 5.3 0 0 1 6.7 11H5a7 7 0 0 0 6 6.9V21h2v-3.1a7 7 0 0 0 3.5-1.4l3.2 3.2L21 18.4z',
  headOff: 'M12 3a9 9 0 0 0-9 9v7a2 2 0 0 0 2 2h3v-8H5v-1a7 7 0 0 1 12.3-4.6l1.4-1.4A9 9 0 0 0 12 3zm7 7.4L10.4 19H16v2h3a2 2 0 0 0 2-2v-7a9 9 0 0 0-.4-2.6zM3.7 20.7 2.3 19.3l17-17 1.4 1.4z',
  at: 'M12 2a10 10 0 0 0 0 20h5v-2h-5a8 8 0 1 1 8-8v1.4a1.6 1.6 0 0 1-3.2 0V12A4.8 4.8 0 1 0 15.4 15.4 3.6 3.6 0 0 0 22 13.4V12A10 10 0 0 0 12 2Zm0 12.8A2.8 2.8 0 1 1 14.8 12 2.8 2.8 0 0 1 12 14.8Z',
};

/** An icon (decorative: the control around it carries the name). */
export function icon(name) {
  const holder = document.createElement('span');
  holder.innerHTML = `<svg viewBox="0 0 24 24" aria-hidden="true" focusable="false"><path d="${PATHS[name]}"/></svg>`;
  return holder.firstChild;
}

/** Initials of a display name: "Ada Lovelace" → "AL", "bob" → "BO". */
export function initials(name) {
  const words = String(name).trim().split(/\s+/).filter(Boolean);
  if (words.length >= 2) return (words[0][0] + words[1][0]).toUpperCase();
  return String(name).trim().slice(0, 2).toUpperCase() || '?';
}

/** A stable colour for an id (enough contrast with white text in both themes). */
export function colourOf(id) {
  let h = 0;
  for (const ch of String(id)) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return `hsl(${h % 360} 50% 30%)`;
}

/**
 * An avatar: the picture at `url` when there is one (initials on a colour until it loads, and
 * if it cannot), with a presence dot when `status` is given.
 */
export function avatar(id, name, { size = '', status = null, url = '' } = {}) {
  const a = el('span', { class: `avatar${size ? ` ${size}` : ''}`, style: `background:${colourOf(id)}`, 'aria-hidden': 'true' }, initials(name));
  if (url) {
    // No referrer to the image's host; a broken picture leaves the initials.
    const img = el('img', { src: url, alt: '', referrerpolicy: 'no-referrer', loading: 'lazy', decoding: 'async' });
    img.addEventListener('error', () => img.remove());
    a.append(img);
  }
  if (status == null) return a;
  return el('span', { class: 'avatar-wrap' }, a, el('span', { class: `dot ${status}`, 'aria-hidden': 'true' }));
}

const STATUS_LABEL = { Online: 'Online', Idle: 'Idle', Dnd: 'Do not disturb', Invisible: 'Invisible', Offline: 'Offline' };
const PLATFORM = { desktop: 'desktop', mobile: 'mobile', web: 'web' };

/** What a presence says in words: "Online on web and desktop", "Do not disturb", "Offline". */
export function statusText(p) {
  const status = p?.status ?? 'Offline';
  if (status === 'Offline') return 'Offline';
  const on = Object.entries(p.client_status ?? {}).filter(([, s]) => s !== 'Offline').map(([d]) => PLATFORM[d] ?? d);
  const label = STATUS_LABEL[status] ?? status;
  if (on.length === 0) return label;
  return `${label} on ${on.length === 1 ? on[0] : `${on.slice(0, -1).join(', ')} and ${on[on.length - 1]}`}`;
}
export const statusLabel = (s) => STATUS_LABEL[s] ?? s;

const sameDay = (a, b) => a.getFullYear() === b.getFullYear() && a.getMonth() === b.getMonth() && a.getDate() === b.getDate();

/** A day's heading: "Today", "Yesterday" or "Monday, 3 December 2026". */
export function dayLabel(ms, now = new Date()) {
  const d = new Date(ms);
  if (sameDay(d, now)) return 'Today';
  const y = new Date(now); y.setDate(now.getDate() - 1);
  if (sameDay(d, y)) return 'Yesterday';
  return d.toLocaleDateString(undefined, { weekday: 'long', day: 'numeric', month: 'long', year: 'numeric' });
}
export const dayKey = (ms) => new Date(ms).toDateString();
export const timeLabel = (ms) => new Date(ms).toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
export const fullTime = (ms) => new Date(ms).toLocaleString();

/** Shows a short message in the corner (never over the message box); errors stay longer. */
export function toast(text, { error = false, ms = error ? 7000 : 4000 } = {}) {
  const t = el('div', { class: `toast${error ? ' error' : ''}`, role: error ? 'alert' : null }, text);
  $('toasts').append(t);
  setTimeout(() => t.remove(), ms);
  while ($('toasts').children.length > 4) $('toasts').firstChild.remove();
  return t;
}

/**
 * Opens the app's dialog: `title`, `body` (nodes), `buttons` ([{ label, value, primary,
 * danger }]). Resolves to the value of the button used (`null` on Escape). `onopen` runs
 * once it shows (to focus a field).
 */
export function dialog({ title, body = [], buttons = [{ label: 'Close', value: 'close' }], onopen = null }) {
  const d = $('dialog');
  $('dialog-title').textContent = title;
  fill($('dialog-body'), ...body);
  $('dialog-buttons').replaceChildren(...buttons.map((b) => el('button', {
    type: 'submit', value: b.value, id: b.id ?? null, class: b.primary ? 'primary' : b.danger ? 'danger' : null,
  }, b.label)));
  const back = document.activeElement;
  return new Promise((resolve) => {
    d.addEventListener('close', () => {
      resolve(d.returnValue || null);
      if (back && back.isConnected) back.focus();
    }, { once: true });
    d.returnValue = '';
    d.showModal();
    if (onopen) onopen(d);
  });
}

/** Closes the dialog if it is open (answered as if cancelled). */
export function closeDialog() { if ($('dialog').open) $('dialog').close(''); }

/** A yes/no question: resolves to true when `yes` is chosen. */
export async function confirmDialog(title, text, yes = 'OK', { danger = false, extra = [] } = {}) {
  const v = await dialog({
    title, body: [el('p', {}, text), ...extra],
    buttons: [{ label: 'Cancel', value: 'cancel' }, { label: yes, value: 'yes', id: 'confirm-ok', primary: !danger, danger }],
  });
  return v === 'yes';
}

export const EMOJI = ['👍', '❤️', '😂', '🎉', '😮', '😢', '🙏', '🔥', '👀', '✅', '👏', '🤔'];
const EMOJI_NAMES = ['thumbs up', 'heart', 'laughing', 'party', 'surprised', 'sad', 'thank you', 'fire', 'eyes', 'check mark', 'clapping', 'thinking'];

/** Opens the emoji picker beside `anchor`; resolves to the emoji chosen (null: dismissed). */
export function pickEmoji(anchor) {
  document.querySelector('.emoji-picker')?.remove();
  return new Promise((resolve) => {
    const done = (v) => { picker.remove(); document.removeEventListener('pointerdown', outside, true); resolve(v); anchor.focus?.(); };
    const picker = el('div', { class: 'emoji-picker', role: 'dialog', 'aria-label': 'Pick a reaction' },
      ...EMOJI.map((e, i) => el('button', { type: 'button', 'aria-label': EMOJI_NAMES[i], title: EMOJI_NAMES[i], dataset: { emoji: e }, onclick: () => done(e) }, e)));
    picker.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') { e.preventDefault(); done(null); return; }
      const all = [...picker.querySelectorAll('button')];
      const i = all.indexOf(document.activeElement);
      const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: 6, ArrowUp: -6 }[e.key];
      if (step && i >= 0) { e.preventDefault(); all[(i + step + all.length) % all.length].focus(); }
    });
    const outside = (e) => { if (!picker.contains(e.target)) done(null); };
    document.addEventListener('pointerdown', outside, true);
    document.body.append(picker);
    const r = anchor.getBoundingClientRect();
    const w = picker.offsetWidth, h = picker.offsetHeight;
    picker.style.left = `${Math.max(8, Math.min(innerWidth - w - 8, r.right - w))}px`;
    picker.style.top = `${r.top - h - 6 > 8 ? r.top - h - 6 : Math.min(innerHeight - h - 8, r.bottom + 6)}px`;
    picker.querySelector('button').focus();
  });
}
