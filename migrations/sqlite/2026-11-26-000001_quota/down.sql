ALTER TABLE users DROP COLUMN stored_bytes;
