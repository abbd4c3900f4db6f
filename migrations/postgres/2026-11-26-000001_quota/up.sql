-- The storage quota: payload bytes of the ops each user stores. Every write keeps
-- it up to date in its own transaction (pushes add, compaction subtracts, imports
-- add); this counts what is already stored.
ALTER TABLE users ADD COLUMN stored_bytes BIGINT NOT NULL DEFAULT 0;
UPDATE users SET stored_bytes = COALESCE((SELECT SUM(LENGTH(payload)) FROM ops WHERE ops.user_id = users.id), 0);
