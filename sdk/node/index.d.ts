// Types of @quaver/server (index.mjs). Ids are decimal strings (they pass 2^53).

export type Id = string;

/** An RFC 9457 problem document, as every error answer carries. */
export interface Problem {
  type: string; title: string; status: number; detail: string;
  code: number; code_name: string; field?: string; retry_after_ms?: number;
}

export class QuaverApiError extends Error {
  readonly status: number;
  readonly code: number;
  readonly codeName: string;
  readonly detail: string;
  readonly field: string | null;
  readonly retryAfterMs: number | null;
  readonly problem: Problem | null;
}

export interface CallOptions { idempotencyKey?: string; signal?: AbortSignal }

export interface Mentions { users: Id[]; roles: Id[]; everyone: boolean }
export interface Message {
  id: Id; channel_id: Id; author_id: Id; content: string; nonce: Id; reply_to: Id | null;
  mentions: Mentions; seq: number; created_at_ms: number; edited_at_ms: number | null; deleted: boolean;
  reactions: { emoji: string; count: number }[];
}
export interface Page { messages: Message[]; more_before: boolean; more_after: boolean }
export interface Guild { id: Id; name: string; owner_id: Id }
export type ChannelKind = 'text' | 'voice' | 'dm' | 'group_dm';
export interface Channel { id: Id; guild_id: Id | null; kind: ChannelKind; name: string; topic: string; last_seq: number; user_limit: number }
export interface Role { id: Id; name: string; permissions: string; position: number }
export interface GuildDetails { guild: Guild; channels: Channel[]; roles: Role[]; member_count: number }
export interface Member { user_id: Id; name: string; roles: Id[]; avatar_url: string | null; timed_out_until_ms: number | null }
export interface Invite { code: string; guild_id: Id; max_uses: number; expires_at_ms: number | null }
export type Status = 'online' | 'idle' | 'dnd' | 'offline';
export interface Presence {
  user_id: Id; status: Status; desktop: Status; mobile: Status; web: Status; custom_status: string | null;
}
export interface Participant {
  user_id: Id; channel_id: Id; self_mute: boolean; self_deaf: boolean;
  server_mute: boolean; server_deaf: boolean; speaking: boolean;
}
export interface VoiceOrder { carried_out: 'here' | 'bus' }
export interface Operation { method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE'; path: string; body?: unknown }
export interface Outcome { status: number; body: unknown }

export class Quaver {
  constructor(o: { url: string; key: string; retries?: number; timeoutMs?: number; fetch?: typeof fetch });
  whoami(): Promise<{ key_id: string; scopes: string[] }>;
  batch(operations: Operation[], o?: CallOptions & { stopOnError?: boolean }): Promise<{ results: Outcome[]; skipped: number }>;
  request<T = unknown>(method: string, path: string, body?: unknown, o?: CallOptions): Promise<T>;
  messages: {
    create(channelId: Id, m: { author_id: Id; content: string; nonce?: Id; reply_to?: Id }, o?: CallOptions): Promise<Message>;
    edit(channelId: Id, messageId: Id, content: string, o?: CallOptions): Promise<Message>;
    delete(channelId: Id, messageId: Id, o?: CallOptions): Promise<null>;
    history(channelId: Id, q?: { before?: number; after?: number; around?: number; limit?: number }): Promise<Page>;
    react(channelId: Id, messageId: Id, emoji: string, userId: Id, o?: CallOptions): Promise<null>;
    unreact(channelId: Id, messageId: Id, emoji: string, userId: Id, o?: CallOptions): Promise<null>;
    bulkDelete(channelId: Id, messageIds: Id[], o?: CallOptions): Promise<{ deleted: Id[]; not_found: Id[] }>;
  };
  guilds: {
    create(g: { owner_id: Id; name: string }, o?: CallOptions): Promise<Guild>;
    get(guildId: Id): Promise<GuildDetails>;
    rename(guildId: Id, name: string, o?: CallOptions): Promise<Guild>;
    delete(guildId: Id, o?: CallOptions): Promise<null>;
    members(guildId: Id, q?: { after?: Id; limit?: number }): Promise<{ members: Member[] }>;
    addMember(guildId: Id, userId: Id, o?: CallOptions): Promise<null>;
    kick(guildId: Id, userId: Id, o?: CallOptions): Promise<null>;
    ban(guildId: Id, userId: Id, reason?: string, o?: CallOptions): Promise<null>;
    unban(guildId: Id, userId: Id, o?: CallOptions): Promise<null>;
    createChannel(guildId: Id, c: { kind: 'text' | 'voice'; name: string; topic?: string; user_limit?: number }, o?: CallOptions): Promise<Channel>;
    deleteChannel(channelId: Id, o?: CallOptions): Promise<null>;
    createRole(guildId: Id, r: { name: string; permissions?: string }, o?: CallOptions): Promise<Role>;
    /** `position`: 1 is just above `@everyone`; past the top is the top. */
    updateRole(guildId: Id, roleId: Id, r: { name?: string; permissions?: string; position?: number }, o?: CallOptions): Promise<Role>;
    /** Members lose it; channel overwrites naming it go. */
    deleteRole(guildId: Id, roleId: Id, o?: CallOptions): Promise<null>;
    /** Until it ends (1 s – 28 days) they read but do not send, react, or stay in voice. */
    timeout(guildId: Id, userId: Id, seconds: number, reason?: string, o?: CallOptions): Promise<null>;
    liftTimeout(guildId: Id, userId: Id, o?: CallOptions): Promise<null>;
    setOverwrite(channelId: Id, kind: 'role' | 'member', targetId: Id, bits: { allow?: string; deny?: string }, o?: CallOptions): Promise<null>;
    deleteOverwrite(channelId: Id, kind: 'role' | 'member', targetId: Id, o?: CallOptions): Promise<null>;
    openDm(userIds: Id[], name?: string, o?: CallOptions): Promise<Channel>;
    addRole(guildId: Id, userId: Id, roleId: Id, o?: CallOptions): Promise<null>;
    removeRole(guildId: Id, userId: Id, roleId: Id, o?: CallOptions): Promise<null>;
    createInvite(guildId: Id, i?: { max_uses?: number; max_age_secs?: number }, o?: CallOptions): Promise<Invite>;
    permissions(guildId: Id, userId: Id, channelId?: Id): Promise<{ bits: string; names: string[]; channel_id: Id | null }>;
    presence(guildId: Id): Promise<{ members: number; online: number; status_online: number; status_idle: number; status_dnd: number }>;
  };
  users: {
    /** `avatar_url`: an `https://` URL, `''` to remove it, absent to keep it. */
    put(userId: Id, u: { name: string; avatar_url?: string }, o?: CallOptions): Promise<{ id: Id; name: string; avatar_url: string | null }>;
    get(userId: Id): Promise<{ id: Id; name: string }>;
    delete(userId: Id, o?: CallOptions): Promise<{ user_id: Id; guilds_left: number; sessions_ended_here: number }>;
    befriend(userId: Id, otherId: Id, o?: CallOptions): Promise<null>;
    unfriend(userId: Id, otherId: Id, o?: CallOptions): Promise<null>;
    /** `userId` blocks `otherId` (no DMs, friend requests or notifications from them). */
    block(userId: Id, otherId: Id, o?: CallOptions): Promise<null>;
    /** `userId` unblocks `otherId` (`NO_RELATIONSHIP` if there was no block). */
    unblock(userId: Id, otherId: Id, o?: CallOptions): Promise<null>;
    presence(userIds: Id[]): Promise<{ presences: Presence[]; online: number }>;
  };
  sessions: {
    list(userId: Id): Promise<{ sessions: { id: string; node: string; transport: 'quic' | 'webtransport'; device: 'desktop' | 'mobile' | 'web'; connected_at_ms: number; connected: boolean }[]; /** every live node answered */ complete: boolean }>;
    disconnectOne(userId: Id, sessionId: string, d?: { reconnect?: boolean; reason?: string }, o?: CallOptions): Promise<{ user_id: Id; close_code: number; sessions_ended_here: number }>;
    revoke(userId: Id, r?: { issued_before?: number; jti?: string }, o?: CallOptions): Promise<{ user_id: Id; issued_before: number; jti: string | null; sessions_ended_here: number }>;
    disconnect(userId: Id, d?: { reconnect?: boolean; reason?: string }, o?: CallOptions): Promise<{ user_id: Id; close_code: number; sessions_ended_here: number }>;
  };
  voice: {
    participants(channelId: Id): Promise<{ participants: Participant[] }>;
    set(guildId: Id, userId: Id, change: { server_mute?: boolean; server_deaf?: boolean; channel_id?: Id }, o?: CallOptions): Promise<VoiceOrder>;
    move(guildId: Id, userId: Id, channelId: Id, o?: CallOptions): Promise<VoiceOrder>;
    disconnect(guildId: Id, userId: Id, o?: CallOptions): Promise<VoiceOrder>;
  };
  events: {
    send(e: { name: string; data?: unknown; user_ids?: Id[]; channel_id?: Id; guild_id?: Id }, o?: CallOptions): Promise<{ to: 'users' | 'channel' | 'guild' }>;
  };
}
