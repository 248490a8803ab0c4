-- Quaver schema, PostgreSQL (the SQLite schema with BIGINT and BYTEA). Ids are snowflakes (i64), times are Unix milliseconds (i64),
-- flags are 0/1 integers, so one set of queries serves SQLite and PostgreSQL through sqlx::Any.

CREATE TABLE users (
    id          BIGINT PRIMARY KEY,
    name        TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);

CREATE TABLE guilds (
    id          BIGINT PRIMARY KEY,
    name        TEXT    NOT NULL,
    owner_id    BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL
);

-- The @everyone role has the guild's id.
CREATE TABLE roles (
    id          BIGINT PRIMARY KEY,
    guild_id    BIGINT  NOT NULL REFERENCES guilds(id) ON DELETE CASCADE,
    name        TEXT    NOT NULL,
    permissions BIGINT  NOT NULL,
    position    BIGINT  NOT NULL
);
CREATE INDEX roles_guild ON roles(guild_id);

CREATE TABLE members (
    guild_id    BIGINT  NOT NULL REFERENCES guilds(id) ON DELETE CASCADE,
    user_id     BIGINT  NOT NULL,
    joined_at   BIGINT  NOT NULL,
    PRIMARY KEY (guild_id, user_id)
);
CREATE INDEX members_user ON members(user_id);

CREATE TABLE member_roles (
    guild_id    BIGINT  NOT NULL REFERENCES guilds(id) ON DELETE CASCADE,
    user_id     BIGINT  NOT NULL,
    role_id     BIGINT  NOT NULL REFERENCES roles(id) ON DELETE CASCADE,
    PRIMARY KEY (guild_id, user_id, role_id)
);

CREATE TABLE bans (
    guild_id    BIGINT  NOT NULL REFERENCES guilds(id) ON DELETE CASCADE,
    user_id     BIGINT  NOT NULL,
    reason      TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (guild_id, user_id)
);

CREATE TABLE invites (
    code        TEXT    PRIMARY KEY,
    guild_id    BIGINT  NOT NULL REFERENCES guilds(id) ON DELETE CASCADE,
    inviter_id  BIGINT  NOT NULL,
    max_uses    BIGINT  NOT NULL,
    uses        BIGINT  NOT NULL,
    expires_at  BIGINT,
    created_at  BIGINT  NOT NULL
);

-- kind: 0 text, 1 voice, 2 DM, 3 group DM. guild_id is NULL for DMs.
CREATE TABLE channels (
    id          BIGINT PRIMARY KEY,
    guild_id    BIGINT  REFERENCES guilds(id) ON DELETE CASCADE,
    kind        BIGINT  NOT NULL,
    name        TEXT    NOT NULL,
    topic       TEXT    NOT NULL,
    position    BIGINT  NOT NULL,
    user_limit  BIGINT  NOT NULL,
    owner_id    BIGINT  NOT NULL,
    last_seq    BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL
);
CREATE INDEX channels_guild ON channels(guild_id);

CREATE TABLE channel_recipients (
    channel_id  BIGINT  NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    user_id     BIGINT  NOT NULL,
    PRIMARY KEY (channel_id, user_id)
);
CREATE INDEX channel_recipients_user ON channel_recipients(user_id);
-- One DM channel per pair: low user id, high user id.
CREATE TABLE dm_pairs (
    user_low    BIGINT  NOT NULL,
    user_high   BIGINT  NOT NULL,
    channel_id  BIGINT  NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    PRIMARY KEY (user_low, user_high)
);

-- target_kind: 0 role, 1 member.
CREATE TABLE overwrites (
    channel_id  BIGINT  NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    target_kind BIGINT  NOT NULL,
    target_id   BIGINT  NOT NULL,
    allow_bits  BIGINT  NOT NULL,
    deny_bits   BIGINT  NOT NULL,
    PRIMARY KEY (channel_id, target_kind, target_id)
);

CREATE TABLE messages (
    id          BIGINT PRIMARY KEY,
    channel_id  BIGINT  NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    author_id   BIGINT  NOT NULL,
    nonce       BIGINT  NOT NULL,
    content     TEXT    NOT NULL,
    reply_to    BIGINT,
    mentions    TEXT    NOT NULL,
    seq         BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL,
    edited_at   BIGINT,
    deleted     BIGINT  NOT NULL,
    UNIQUE (author_id, nonce)
);
CREATE INDEX messages_channel_id ON messages(channel_id, id);

CREATE TABLE reactions (
    message_id  BIGINT  NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    user_id     BIGINT  NOT NULL,
    emoji       TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (message_id, user_id, emoji)
);

-- Every channel event, by the channel's seq: the source of catch-up after a reconnect.
CREATE TABLE channel_events (
    channel_id  BIGINT  NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    seq         BIGINT  NOT NULL,
    body        BYTEA   NOT NULL,
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (channel_id, seq)
);

CREATE TABLE read_states (
    user_id       BIGINT  NOT NULL,
    channel_id    BIGINT  NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    last_read_seq BIGINT  NOT NULL,
    mention_count BIGINT  NOT NULL,
    PRIMARY KEY (user_id, channel_id)
);
