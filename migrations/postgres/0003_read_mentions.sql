-- Where a user was last mentioned in a channel: a MarkRead up to an earlier seq (a read
-- that raced a new mention) keeps the mention counted.
ALTER TABLE read_states ADD COLUMN last_mention_seq BIGINT NOT NULL DEFAULT 0;
