-- A user's avatar: an https:// URL set through the server API ('' = none; clients draw
-- initials).
ALTER TABLE users ADD COLUMN avatar_url TEXT NOT NULL DEFAULT '';

-- Member timeouts: until `until_ms` the member may read but not send, react or join voice.
-- Kept apart from `members` so that leaving and rejoining does not lift a timeout.
CREATE TABLE member_timeouts (
    guild_id    INTEGER NOT NULL,
    user_id     INTEGER NOT NULL,
    until_ms    INTEGER NOT NULL,
    PRIMARY KEY (guild_id, user_id)
);
