-- Relationships, mutes and notifications.

-- kind: 1 friend, 2 incoming request, 3 outgoing request, 4 blocked. One row per direction:
-- (user_id, other_id) is what other_id is to user_id.
CREATE TABLE relationships (
    user_id     INTEGER NOT NULL,
    other_id    INTEGER NOT NULL,
    kind        INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (user_id, other_id)
);

-- target_kind: 0 guild, 1 channel.
CREATE TABLE mutes (
    user_id     INTEGER NOT NULL,
    target_kind INTEGER NOT NULL,
    target_id   INTEGER NOT NULL,
    PRIMARY KEY (user_id, target_kind, target_id)
);

-- kind: 0 mention, 1 reply, 2 reaction, 3 direct message, 4 friend request, 5 friend accepted.
CREATE TABLE notifications (
    id           INTEGER PRIMARY KEY,
    user_id      INTEGER NOT NULL,
    kind         INTEGER NOT NULL,
    actor_id     INTEGER NOT NULL,
    guild_id     INTEGER,
    channel_id   INTEGER,
    message_id   INTEGER,
    preview      TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    delivered_at INTEGER,
    read_at      INTEGER
);
CREATE INDEX notifications_user ON notifications(user_id, id);
