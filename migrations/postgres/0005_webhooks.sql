-- Webhooks. `hook_events` is the retained event log: a row is written in the same
-- transaction as the change it describes (or, for sessions and presence, before the server
-- acts on it). `hook_deliveries` holds one row per (endpoint, event) the endpoint wants,
-- written in that same transaction; any node delivers them, under a lease per (endpoint,
-- partition) in `hook_leases`.
CREATE TABLE hook_events (
    -- A sequence: an id is never reused.
    id         BIGSERIAL PRIMARY KEY,
    type       TEXT    NOT NULL,
    -- Ordering key ("channel:<id>", "guild:<id>", "user:<id>") and its sequence.
    okey       TEXT    NOT NULL,
    kseq       BIGINT NOT NULL,
    -- The envelope's `data`, JSON.
    data       TEXT    NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX hook_events_created ON hook_events (created_at);

-- The last sequence of each ordering key that is not a channel (a channel's is its seq).
CREATE TABLE hook_keys (
    okey     TEXT    PRIMARY KEY,
    last_seq BIGINT NOT NULL
);

CREATE TABLE hook_endpoints (
    id              TEXT    PRIMARY KEY,
    url             TEXT    NOT NULL,
    -- JSON: [{"secret": "whsec_…", "expires_at": null | ms}], newest first.
    secrets         TEXT    NOT NULL,
    -- JSON: event type patterns ("message.created", "message.*", "*").
    events          TEXT    NOT NULL,
    -- 'config' (from the config file, changed only there) or 'api'.
    source          TEXT    NOT NULL,
    description     TEXT    NOT NULL,
    disabled_at     BIGINT,
    disabled_reason TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

CREATE TABLE hook_deliveries (
    endpoint_id TEXT    NOT NULL,
    event_id    BIGINT NOT NULL,
    okey        TEXT    NOT NULL,
    kseq        BIGINT NOT NULL,
    part        BIGINT NOT NULL,
    -- 0 pending, 1 delivered, 2 given up.
    state       BIGINT NOT NULL,
    attempts    BIGINT NOT NULL,
    next_at     BIGINT NOT NULL,
    last_status BIGINT,
    last_error  TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (endpoint_id, event_id)
);
CREATE INDEX hook_deliveries_due ON hook_deliveries (endpoint_id, state, part, next_at);
CREATE INDEX hook_deliveries_key ON hook_deliveries (endpoint_id, okey, state, kseq);

CREATE TABLE hook_leases (
    endpoint_id TEXT    NOT NULL,
    part        BIGINT NOT NULL,
    node        TEXT    NOT NULL,
    expires_at  BIGINT NOT NULL,
    PRIMARY KEY (endpoint_id, part)
);
