-- Relationships, mutes and notifications.

-- kind: 1 friend, 2 incoming request, 3 outgoing request, 4 blocked. One row per direction:
-- (user_id, other_id) is what other_id is to user_id.
CREATE TABLE relationships (
    user_id     BIGINT  NOT NULL,
    other_id    BIGINT  NOT NULL,
    kind        BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (user_id, other_id)
);

-- target_kind: 0 guild, 1 channel.
CREATE TABLE mutes (
    user_id     BIGINT  NOT NULL,
    target_kind BIGINT  NOT NULL,
    target_id   BIGINT  NOT NULL,
    PRIMARY KEY (user_id, target_kind, target_id)
);

-- kind: 0 mention, 1 reply, 2 reaction, 3 direct message, 4 friend request, 5 friend accepted.
CREATE TABLE notifications (
    id           BIGINT PRIMARY KEY,
    user_id      BIGINT  NOT NULL,
    kind         BIGINT  NOT NULL,
    actor_id     BIGINT  NOT NULL,
    guild_id     BIGINT,
    channel_id   BIGINT,
    message_id   BIGINT,
    preview      TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    delivered_at BIGINT,
    read_at      BIGINT
);
CREATE INDEX notifications_user ON notifications(user_id, id);
