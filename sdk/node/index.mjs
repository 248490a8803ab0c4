// Quaver's server API for Node (18+): a small client for your backend — keys, typed errors,
// retries that are safe because every change carries an Idempotency-Key. No dependencies:
// it uses the platform's fetch and crypto. Types are in index.d.ts.
//
//   import { Quaver } from '@quaver/server';
//   const q = new Quaver({ url: 'http://127.0.0.1:8081', key: process.env.QUAVER_API_KEY });
//   await q.messages.create(channelId, { author_id: botId, content: 'deploy 4711 is live' });
import { randomUUID } from 'node:crypto';

/** An answer of the API that is an error: its problem document, typed. */
export class QuaverApiError extends Error {
  constructor(status, problem, method, path) {
    super(`${method} ${path}: ${status} ${problem?.code_name ?? ''} ${problem?.detail ?? ''}`.trim());
    this.name = 'QuaverApiError';
    /** The HTTP status. */
    this.status = status;
    /** The machine code (PROTOCOL.md §6; 100 and up: the API's own). */
    this.code = problem?.code ?? 0;
    /** Its name, e.g. `NOT_FOUND`, `SCOPE_MISSING`. */
    this.codeName = problem?.code_name ?? 'UNKNOWN';
    /** What went wrong, in words. */
    this.detail = problem?.detail ?? '';
    /** The request field at fault, if one is. */
    this.field = problem?.field ?? null;
    /** When to try again (rate limited, unavailable), in ms. */
    this.retryAfterMs = problem?.retry_after_ms ?? null;
    this.problem = problem;
  }
}

const CHANGES = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);
const enc = encodeURIComponent;

export class Quaver {
  /**
   * @param {object} o
   * @param {string} o.url The API's origin (`http://127.0.0.1:8081`), with or without `/api/v1`.
   * @param {string} o.key An API key (`qk_<id>_<secret>`).
   * @param {number} [o.retries] Tries after the first on 429, 409 (in flight), 502–504 and
   *   network errors (default 3). Changes are retried with the same Idempotency-Key.
   * @param {number} [o.timeoutMs] Per try (default 10 000).
   */
  constructor({ url, key, retries = 3, timeoutMs = 10000, fetch: f = globalThis.fetch } = {}) {
    if (!url || !key) throw new TypeError('Quaver: url and key are required');
    this.base = url.replace(/\/+$/, '').replace(/\/api\/v1$/, '') + '/api/v1';
    this.key = key;
    this.retries = retries;
    this.timeoutMs = timeoutMs;
    this.fetch = f;
    const q = this;
    /** Messages and reactions. */
    this.messages = {
      create: (channelId, m, o) => q.request('POST', `/channels/${channelId}/messages`, m, o),
      edit: (channelId, messageId, content, o) => q.request('PATCH', `/channels/${channelId}/messages/${messageId}`, { content }, o),
      delete: (channelId, messageId, o) => q.request('DELETE', `/channels/${channelId}/messages/${messageId}`, undefined, o),
      history: (channelId, query = {}) => q.request('GET', `/channels/${channelId}/messages${qs(query)}`),
      react: (channelId, messageId, emoji, userId, o) =>
        q.request('PUT', `/channels/${channelId}/messages/${messageId}/reactions/${enc(emoji)}/${userId}`, undefined, o),
      unreact: (channelId, messageId, emoji, userId, o) =>
        q.request('DELETE', `/channels/${channelId}/messages/${messageId}/reactions/${enc(emoji)}/${userId}`, undefined, o),
      bulkDelete: (channelId, messageIds, o) =>
        q.request('POST', `/channels/${channelId}/messages/bulk-delete`, { message_ids: messageIds.map(String) }, o),
    };
    /** Guilds, members, bans, channels, roles, invites. */
    this.guilds = {
      create: (g, o) => q.request('POST', '/guilds', g, o),
      get: (guildId) => q.request('GET', `/guilds/${guildId}`),
      rename: (guildId, name, o) => q.request('PATCH', `/guilds/${guildId}`, { name }, o),
      delete: (guildId, o) => q.request('DELETE', `/guilds/${guildId}`, undefined, o),
      members: (guildId, query = {}) => q.request('GET', `/guilds/${guildId}/members${qs(query)}`),
      addMember: (guildId, userId, o) => q.request('PUT', `/guilds/${guildId}/members/${userId}`, undefined, o),
      kick: (guildId, userId, o) => q.request('DELETE', `/guilds/${guildId}/members/${userId}`, undefined, o),
      ban: (guildId, userId, reason = '', o) => q.request('PUT', `/guilds/${guildId}/bans/${userId}`, { reason }, o),
      unban: (guildId, userId, o) => q.request('DELETE', `/guilds/${guildId}/bans/${userId}`, undefined, o),
      createChannel: (guildId, c, o) => q.request('POST', `/guilds/${guildId}/channels`, c, o),
      deleteChannel: (channelId, o) => q.request('DELETE', `/channels/${channelId}`, undefined, o),
      createRole: (guildId, r, o) => q.request('POST', `/guilds/${guildId}/roles`, r, o),
      updateRole: (guildId, roleId, r, o) => q.request('PATCH', `/guilds/${guildId}/roles/${roleId}`, r, o),
      deleteRole: (guildId, roleId, o) => q.request('DELETE', `/guilds/${guildId}/roles/${roleId}`, undefined, o),
      timeout: (guildId, userId, seconds, reason = '', o) => q.request('PUT', `/guilds/${guildId}/members/${userId}/timeout`, { seconds, reason }, o),
      liftTimeout: (guildId, userId, o) => q.request('DELETE', `/guilds/${guildId}/members/${userId}/timeout`, undefined, o),
      setOverwrite: (channelId, kind, targetId, bits, o) => q.request('PUT', `/channels/${channelId}/overwrites/${kind}/${targetId}`, bits, o),
      deleteOverwrite: (channelId, kind, targetId, o) => q.request('DELETE', `/channels/${channelId}/overwrites/${kind}/${targetId}`, undefined, o),
      openDm: (userIds, name, o) => q.request('POST', '/dms', { user_ids: userIds.map(String), ...(name ? { name } : {}) }, o),
      addRole: (guildId, userId, roleId, o) => q.request('PUT', `/guilds/${guildId}/members/${userId}/roles/${roleId}`, undefined, o),
      removeRole: (guildId, userId, roleId, o) => q.request('DELETE', `/guilds/${guildId}/members/${userId}/roles/${roleId}`, undefined, o),
      createInvite: (guildId, i = {}, o) => q.request('POST', `/guilds/${guildId}/invites`, i, o),
      permissions: (guildId, userId, channelId) =>
        q.request('GET', `/guilds/${guildId}/members/${userId}/permissions${qs({ channel_id: channelId })}`),
      presence: (guildId) => q.request('GET', `/guilds/${guildId}/presence`),
    };
    /** Users and presence. */
    this.users = {
      put: (userId, u, o) => q.request('PUT', `/users/${userId}`, u, o),
      get: (userId) => q.request('GET', `/users/${userId}`),
      delete: (userId, o) => q.request('DELETE', `/users/${userId}`, undefined, o),
      befriend: (userId, otherId, o) => q.request('PUT', `/users/${userId}/friends/${otherId}`, undefined, o),
      unfriend: (userId, otherId, o) => q.request('DELETE', `/users/${userId}/friends/${otherId}`, undefined, o),
      block: (userId, otherId, o) => q.request('PUT', `/users/${userId}/blocks/${otherId}`, undefined, o),
      unblock: (userId, otherId, o) => q.request('DELETE', `/users/${userId}/blocks/${otherId}`, undefined, o),
      presence: (userIds) => q.request('POST', '/presence/query', { user_ids: userIds.map(String) }),
    };
    /** Token revocation and disconnects, on every node. */
    this.sessions = {
      list: (userId) => q.request('GET', `/users/${userId}/sessions`),
      disconnectOne: (userId, sessionId, d = {}, o) => q.request('POST', `/users/${userId}/sessions/${sessionId}/disconnect`, d, o),
      revoke: (userId, r = {}, o) => q.request('POST', `/users/${userId}/revocations`, r, o),
      disconnect: (userId, d = {}, o) => q.request('POST', `/users/${userId}/disconnect`, d, o),
    };
    /** Voice participants and moderation. */
    this.voice = {
      participants: (channelId) => q.request('GET', `/voice/channels/${channelId}/participants`),
      set: (guildId, userId, change, o) => q.request('PATCH', `/guilds/${guildId}/voice/${userId}`, change, o),
      move: (guildId, userId, channelId, o) => q.request('PATCH', `/guilds/${guildId}/voice/${userId}`, { channel_id: String(channelId) }, o),
      disconnect: (guildId, userId, o) => q.request('DELETE', `/guilds/${guildId}/voice/${userId}`, undefined, o),
    };
    /** Application events (not stored). */
    this.events = { send: (e, o) => q.request('POST', '/events', e, o) };
  }

  /** The key in use and its scopes. */
  whoami() { return this.request('GET', '/whoami'); }

  /** Many operations in one call: `[{ method, path, body }]`. */
  batch(operations, { stopOnError = false, ...o } = {}) {
    return this.request('POST', '/batch', { operations, stop_on_error: stopOnError }, o);
  }

  /**
   * One call: its JSON answer (null when empty), or a QuaverApiError. A change carries
   * `idempotencyKey` (default: a new one), the same on every retry.
   */
  async request(method, path, body, { idempotencyKey, signal } = {}) {
    const headers = { authorization: `Bearer ${this.key}`, accept: 'application/json' };
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (CHANGES.has(method)) headers['idempotency-key'] = idempotencyKey ?? randomUUID();
    for (let attempt = 0; ; attempt++) {
      let r;
      try {
        r = await this.fetch(`${this.base}${path}`, {
          method, headers, body: body === undefined ? undefined : JSON.stringify(body),
          signal: signal ?? AbortSignal.timeout(this.timeoutMs),
        });
      } catch (e) {
        if (attempt >= this.retries || signal?.aborted) throw e;
        await sleep(backoff(attempt));
        continue;
      }
      const text = await r.text();
      let json = null;
      try { json = text ? JSON.parse(text) : null; } catch { json = { detail: text }; }
      if (r.ok) return json;
      const err = new QuaverApiError(r.status, json, method, path);
      const again = r.status === 429 || r.status === 409 && err.code === 102 || r.status >= 502 && r.status <= 504;
      if (!again || attempt >= this.retries) throw err;
      const after = Number(r.headers.get('retry-after'));
      await sleep(err.retryAfterMs ?? (Number.isFinite(after) && after > 0 ? after * 1000 : backoff(attempt)));
    }
  }
}

function qs(query) {
  const p = Object.entries(query).filter(([, v]) => v !== undefined && v !== null).map(([k, v]) => `${enc(k)}=${enc(String(v))}`);
  return p.length ? `?${p.join('&')}` : '';
}
const backoff = (attempt) => Math.min(4000, 100 * 2 ** attempt) * (0.5 + Math.random() / 2);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
