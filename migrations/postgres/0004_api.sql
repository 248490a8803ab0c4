-- The server API: idempotency keys with their answers (cluster-wide, 24 h), and token
-- revocations (every node checks them at Hello and ends live sessions they cover).
CREATE TABLE api_idempotency (
    key_id       TEXT    NOT NULL,
    idem_key     TEXT    NOT NULL,
    request_hash TEXT    NOT NULL,
    -- 0 while the first request is being answered; then its HTTP status.
    status       BIGINT NOT NULL,
    response     TEXT,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (key_id, idem_key)
);
CREATE INDEX api_idempotency_created ON api_idempotency (created_at);

CREATE TABLE token_revocations (
    user_id    BIGINT NOT NULL,
    -- Tokens of the user issued (iat) before this instant (Unix ms) are refused; 0: none.
    before_ms  BIGINT NOT NULL,
    -- Or the one token with this jti ('' when the row is by time).
    jti        TEXT    NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, jti)
);
