DROP TABLE revoked_tokens;
DROP TABLE devices;
DROP TABLE entities;
DROP TABLE ops;
DROP TABLE users;
