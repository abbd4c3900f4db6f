//! The one schema shared by both backends. Written by hand: the migrations under
//! `migrations/sqlite` and `migrations/postgres` must produce exactly these columns.
//! Types are the common subset of SQLite and Postgres (`Text`, `BigInt`, `Binary`);
//! op ids are UUIDs stored as 16 bytes, times are milliseconds since the Unix epoch.

diesel::table! {
    users (id) {
        id -> Text,
        head -> BigInt,
        created_at -> BigInt,
        horizon -> BigInt,
        snapshot_seq -> BigInt,
        stored_bytes -> BigInt,
    }
}

diesel::table! {
    ops (user_id, seq) {
        user_id -> Text,
        seq -> BigInt,
        op_id -> Binary,
        device -> Nullable<Text>,
        entity -> Nullable<Text>,
        kind -> Nullable<Text>,
        base -> Nullable<BigInt>,
        client_ts -> Nullable<BigInt>,
        received_at -> BigInt,
        payload -> Binary,
    }
}

diesel::table! {
    entities (user_id, entity) {
        user_id -> Text,
        entity -> Text,
        last_seq -> BigInt,
        deleted_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    devices (user_id, id) {
        user_id -> Text,
        id -> Text,
        ack_seq -> BigInt,
        last_seen -> BigInt,
        created_at -> BigInt,
    }
}

diesel::table! {
    revoked_tokens (id) {
        id -> Text,
        revoked_at -> BigInt,
    }
}

diesel::table! {
    snapshots (user_id, seq) {
        user_id -> Text,
        seq -> BigInt,
        created_at -> BigInt,
        size -> BigInt,
        sha256 -> Text,
        content_type -> Text,
        data -> Binary,
    }
}

diesel::define_sql_function! {
    /// The size of a byte string in bytes (`length` of a SQLite blob or a Postgres bytea).
    fn length(x: diesel::sql_types::Binary) -> diesel::sql_types::Integer;
}

diesel::allow_tables_to_appear_in_same_query!(users, ops, entities, devices, revoked_tokens, snapshots);
