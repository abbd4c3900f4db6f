-- Retention: ops at or below `horizon` may have been pruned (a pull from below it
-- must resync); `snapshot_seq` is the seq of the user's latest snapshot (0: none).
ALTER TABLE users ADD COLUMN horizon BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN snapshot_seq BIGINT NOT NULL DEFAULT 0;

-- A tombstone: when the entity's last op is a `del`, the time it was received.
ALTER TABLE entities ADD COLUMN deleted_at BIGINT;
CREATE INDEX entities_tombstones ON entities (user_id, deleted_at) WHERE deleted_at IS NOT NULL;

-- Opaque client snapshots of a user's state after applying ops up to `seq`.
CREATE TABLE snapshots (
    user_id       TEXT NOT NULL,
    seq           BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    size          BIGINT NOT NULL,
    sha256        TEXT NOT NULL,
    content_type  TEXT NOT NULL,
    data          BLOB NOT NULL,
    PRIMARY KEY (user_id, seq)
);
