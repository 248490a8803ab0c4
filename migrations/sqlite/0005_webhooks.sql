-- Webhooks. `hook_events` is the retained event log: a row is written in the same
-- transaction as the change it describes (or, for sessions and presence, before the server
-- acts on it). `hook_deliveries` holds one row per (endpoint, event) the endpoint wants,
-- written in that same transaction; any node delivers them, under a lease per (endpoint,
-- partition) in `hook_leases`.
CREATE TABLE hook_events (
    -- AUTOINCREMENT: an id is never reused, even after the newest rows were pruned.
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    type       TEXT    NOT NULL,
    -- Ordering key ("channel:<id>", "guild:<id>", "user:<id>") and its sequence.
    okey       TEXT    NOT NULL,
    kseq       INTEGER NOT NULL,
    -- The envelope's `data`, JSON.
    data       TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX hook_events_created ON hook_events (created_at);

-- The last sequence of each ordering key that is not a channel (a channel's is its seq).
CREATE TABLE hook_keys (
    okey     TEXT    PRIMARY KEY,
    last_seq INTEGER NOT NULL
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
    disabled_at     INTEGER,
    disabled_reason TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

CREATE TABLE hook_deliveries (
    endpoint_id TEXT    NOT NULL,
    event_id    INTEGER NOT NULL,
    okey        TEXT    NOT NULL,
    kseq        INTEGER NOT NULL,
    part        INTEGER NOT NULL,
    -- 0 pending, 1 delivered, 2 given up.
    state       INTEGER NOT NULL,
    attempts    INTEGER NOT NULL,
    next_at     INTEGER NOT NULL,
    last_status INTEGER,
    last_error  TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (endpoint_id, event_id)
);
CREATE INDEX hook_deliveries_due ON hook_deliveries (endpoint_id, state, part, next_at);
CREATE INDEX hook_deliveries_key ON hook_deliveries (endpoint_id, okey, state, kseq);

CREATE TABLE hook_leases (
    endpoint_id TEXT    NOT NULL,
    part        INTEGER NOT NULL,
    node        TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (endpoint_id, part)
);
