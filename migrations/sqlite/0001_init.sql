-- Quaver schema, SQLite. Ids are snowflakes (i64), times are Unix milliseconds (i64),
-- flags are 0/1 integers, so one set of queries serves SQLite and PostgreSQL through sqlx::Any.

CREATE TABLE users (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE guilds (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL,
    owner_id    INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);

-- The @everyone role has the guild's id.
CREATE TABLE roles (
    id          INTEGER PRIMARY KEY,
    guild_id    INTEGER NOT NULL REFERENCES guilds(id) ON DELETE CASCADE,
    name        TEXT    NOT NULL,
    permissions INTEGER NOT NULL,
    position    INTEGER NOT NULL
);
CREATE INDEX roles_guild ON roles(guild_id);

CREATE TABLE members (
    guild_id    INTEGER NOT NULL REFERENCES guilds(id) ON DELETE CASCADE,
    user_id     INTEGER NOT NULL,
    joined_at   INTEGER NOT NULL,
    PRIMARY KEY (guild_id, user_id)
);
CREATE INDEX members_user ON members(user_id);

CREATE TABLE member_roles (
    guild_id    INTEGER NOT NULL REFERENCES guilds(id) ON DELETE CASCADE,
    user_id     INTEGER NOT NULL,
    role_id     INTEGER NOT NULL REFERENCES roles(id) ON DELETE CASCADE,
    PRIMARY KEY (guild_id, user_id, role_id)
);

CREATE TABLE bans (
    guild_id    INTEGER NOT NULL REFERENCES guilds(id) ON DELETE CASCADE,
    user_id     INTEGER NOT NULL,
    reason      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (guild_id, user_id)
);

CREATE TABLE invites (
    code        TEXT    PRIMARY KEY,
    guild_id    INTEGER NOT NULL REFERENCES guilds(id) ON DELETE CASCADE,
    inviter_id  INTEGER NOT NULL,
    max_uses    INTEGER NOT NULL,
    uses        INTEGER NOT NULL,
    expires_at  INTEGER,
    created_at  INTEGER NOT NULL
);

-- kind: 0 text, 1 voice, 2 DM, 3 group DM. guild_id is NULL for DMs.
CREATE TABLE channels (
    id          INTEGER PRIMARY KEY,
    guild_id    INTEGER REFERENCES guilds(id) ON DELETE CASCADE,
    kind        INTEGER NOT NULL,
    name        TEXT    NOT NULL,
    topic       TEXT    NOT NULL,
    position    INTEGER NOT NULL,
    user_limit  INTEGER NOT NULL,
    owner_id    INTEGER NOT NULL,
    last_seq    INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX channels_guild ON channels(guild_id);

CREATE TABLE channel_recipients (
    channel_id  INTEGER NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    user_id     INTEGER NOT NULL,
    PRIMARY KEY (channel_id, user_id)
);
CREATE INDEX channel_recipients_user ON channel_recipients(user_id);
-- One DM channel per pair: low user id, high user id.
CREATE TABLE dm_pairs (
    user_low    INTEGER NOT NULL,
    user_high   INTEGER NOT NULL,
    channel_id  INTEGER NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    PRIMARY KEY (user_low, user_high)
);

-- target_kind: 0 role, 1 member.
CREATE TABLE overwrites (
    channel_id  INTEGER NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    target_kind INTEGER NOT NULL,
    target_id   INTEGER NOT NULL,
    allow_bits  INTEGER NOT NULL,
    deny_bits   INTEGER NOT NULL,
    PRIMARY KEY (channel_id, target_kind, target_id)
);

CREATE TABLE messages (
    id          INTEGER PRIMARY KEY,
    channel_id  INTEGER NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    author_id   INTEGER NOT NULL,
    nonce       INTEGER NOT NULL,
    content     TEXT    NOT NULL,
    reply_to    INTEGER,
    mentions    TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    edited_at   INTEGER,
    deleted     INTEGER NOT NULL,
    UNIQUE (author_id, nonce)
);
CREATE INDEX messages_channel_id ON messages(channel_id, id);

CREATE TABLE reactions (
    message_id  INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    user_id     INTEGER NOT NULL,
    emoji       TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (message_id, user_id, emoji)
);

-- Every channel event, by the channel's seq: the source of catch-up after a reconnect.
CREATE TABLE channel_events (
    channel_id  INTEGER NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    body        BLOB    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (channel_id, seq)
);

CREATE TABLE read_states (
    user_id       INTEGER NOT NULL,
    channel_id    INTEGER NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    last_read_seq INTEGER NOT NULL,
    mention_count INTEGER NOT NULL,
    PRIMARY KEY (user_id, channel_id)
);
