-- Secrets the nodes share and keep across restarts (src/transport/keys.rs): the QUIC
-- stateless-reset key (kind 'quic_reset', period 0, kept), and the TLS session-ticket keys
-- (kind 'tls_ticket', one per period of time, erased once no ticket they sealed is valid).
CREATE TABLE server_keys (
    kind        TEXT    NOT NULL,
    period      BIGINT  NOT NULL,
    secret      BYTEA   NOT NULL,
    created_ms  BIGINT  NOT NULL,
    PRIMARY KEY (kind, period)
);
