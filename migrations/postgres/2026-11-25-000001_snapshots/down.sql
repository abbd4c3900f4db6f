DROP TABLE snapshots;
DROP INDEX entities_tombstones;
ALTER TABLE entities DROP COLUMN deleted_at;
ALTER TABLE users DROP COLUMN snapshot_seq;
ALTER TABLE users DROP COLUMN horizon;
