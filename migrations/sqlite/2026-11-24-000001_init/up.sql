-- Users own one log each. `head` is the highest seq assigned to the user.
CREATE TABLE users (
    id          TEXT PRIMARY KEY NOT NULL,
    head        BIGINT NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL
);

-- The op log. (user_id, seq) is the order; (user_id, op_id) the idempotency key.
CREATE TABLE ops (
    user_id      TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    op_id        BLOB NOT NULL,
    device       TEXT,
    entity       TEXT,
    kind         TEXT,
    base         BIGINT,
    client_ts    BIGINT,
    received_at  BIGINT NOT NULL,
    payload      BLOB NOT NULL,
    PRIMARY KEY (user_id, seq)
);
CREATE UNIQUE INDEX ops_user_op_id ON ops (user_id, op_id);

-- The last seq that touched each entity: what per-entity `base` conflicts check.
CREATE TABLE entities (
    user_id   TEXT NOT NULL,
    entity    TEXT NOT NULL,
    last_seq  BIGINT NOT NULL,
    PRIMARY KEY (user_id, entity)
) WITHOUT ROWID;

-- Devices of a user: how far each has applied the log, and when it was last seen.
CREATE TABLE devices (
    user_id     TEXT NOT NULL,
    id          TEXT NOT NULL,
    ack_seq     BIGINT NOT NULL DEFAULT 0,
    last_seen   BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (user_id, id)
) WITHOUT ROWID;

-- Revocation ids (hex) of revoked tokens.
CREATE TABLE revoked_tokens (
    id          TEXT PRIMARY KEY NOT NULL,
    revoked_at  BIGINT NOT NULL
);
