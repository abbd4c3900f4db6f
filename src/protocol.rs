//! The HTTP protocol's bodies, shared by the server and the Rust client.
//!
//! Every body travels as JSON or MessagePack with the same keys. Byte fields
//! (`payload`) are base64 strings in JSON and `bin` in MessagePack; op ids are UUID
//! strings in JSON and 16-byte `bin` in MessagePack. Unknown keys are ignored, so
//! newer clients can talk to older servers. See docs/protocol.md.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::ids::{DeviceId, OpId, Seq};

/// Opaque op bytes (possibly end-to-end encrypted); the server never looks inside.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Payload(pub Vec<u8>);

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({} bytes)", self.0.len())
    }
}

impl utoipa::PartialSchema for Payload {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .content_encoding("base64")
            .description(Some("Opaque bytes: base64 in JSON (standard alphabet, padded), bin in MessagePack."))
            .into()
    }
}

impl utoipa::ToSchema for Payload {}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() { s.serialize_str(&BASE64.encode(&self.0)) } else { s.serialize_bytes(&self.0) }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Payload;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes (base64 in JSON, bin in MessagePack)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Payload, E> {
                BASE64.decode(v).map(Payload).map_err(|_| E::custom("payload is not valid base64"))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Payload, E> {
                Ok(Payload(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Payload, E> {
                Ok(Payload(v))
            }
        }
        if d.is_human_readable() { d.deserialize_str(V) } else { d.deserialize_bytes(V) }
    }
}

/// What to do when a push's `expected_head` is behind the server's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnStale {
    /// Store the ops anyway; the client rebases when it pulls (the default).
    #[default]
    Accept,
    /// Refuse the push (optimistic locking): nothing is stored, the answer says the head.
    Reject,
}

/// One op as a client sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewOp {
    /// Client-chosen UUID v7; pushing the same id again is a no-op answered `duplicate`.
    pub id: OpId,
    /// Opaque bytes.
    pub payload: Payload,
    /// An opaque entity key (e.g. a hash of the record id), for per-entity conflicts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
    /// The op's kind, e.g. `put`, `del`, `batch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The entity seq this op was based on: the push is refused if the entity moved since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Seq>,
    /// The client's timestamp, milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<i64>,
}

/// `POST /v1/ops`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PushRequest {
    /// The ops, stored atomically and consecutively in this order.
    pub ops: Vec<NewOp>,
    /// The pushing device (defaults to the token's device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceId>,
    /// The head the client last saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_head: Option<Seq>,
    /// What to do if `expected_head` is behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_stale: Option<OnStale>,
}

/// Whether a pushed op was stored now or had been stored before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OpStatus {
    /// Stored by this push.
    Stored,
    /// Stored by an earlier push; `seq` is its original seq.
    Duplicate,
}

/// One op's result in a push answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OpResult {
    /// The op's id.
    pub id: OpId,
    /// Its place in the log.
    pub seq: Seq,
    /// Stored now or before.
    pub status: OpStatus,
}

/// The answer to a push, sent only after the commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PushResponse {
    /// One result per pushed op, in the pushed order.
    pub results: Vec<OpResult>,
    /// The user's head after the push.
    pub head: Seq,
    /// The seq of the user's latest snapshot (0: none).
    #[serde(default)]
    pub snapshot_seq: Seq,
    /// More ops than the server's `snapshot_every` follow the latest snapshot: a
    /// client that can should upload one (`PUT /v1/snapshot`).
    #[serde(default)]
    pub snapshot_due: bool,
}

/// One op as the server stores and serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Op {
    /// Its place in the user's log.
    pub seq: Seq,
    /// The client's id.
    pub id: OpId,
    /// The device that pushed it (`null` if the push named none).
    #[serde(default)]
    pub device: Option<String>,
    /// The entity key, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
    /// The kind, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The `base` it was pushed with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Seq>,
    /// The client's timestamp, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<i64>,
    /// When the server received it, milliseconds since the Unix epoch.
    pub received_at: i64,
    /// The opaque bytes.
    pub payload: Payload,
}

/// `GET /v1/ops?since=N&limit=L`: one page of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PullResponse {
    /// Ops with seq > since, in seq order, without gaps.
    pub ops: Vec<Op>,
    /// The user's head when the page was read.
    pub head: Seq,
    /// Whether ops after the last one of this page exist (pull again from its seq).
    pub has_more: bool,
    /// The seq of the user's latest snapshot (0: none).
    #[serde(default)]
    pub snapshot_seq: Seq,
    /// A snapshot is due (see [`PushResponse::snapshot_due`]).
    #[serde(default)]
    pub snapshot_due: bool,
}

/// `POST /v1/ack`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AckRequest {
    /// The device (defaults to the token's device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceId>,
    /// How far the device has applied the log.
    pub seq: Seq,
}

/// The answer to an ack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AckResponse {
    /// The device.
    pub device: DeviceId,
    /// Its cursor after the ack (an older ack never moves it back).
    pub seq: Seq,
    /// The user's head.
    pub head: Seq,
}

/// A device in `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceStatus {
    /// Its name.
    pub id: String,
    /// How far it has acknowledged.
    pub ack_seq: Seq,
    /// Last push or ack, milliseconds since the Unix epoch.
    pub last_seen: i64,
    /// First seen, milliseconds since the Unix epoch.
    pub created_at: i64,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusResponse {
    /// The token's user.
    pub user: String,
    /// The user's head.
    pub head: Seq,
    /// The user's devices, by name.
    pub devices: Vec<DeviceStatus>,
    /// The server's clock, milliseconds since the Unix epoch.
    pub server_time: i64,
    /// Ops at or below this seq may have been pruned: a pull from below it is
    /// answered `resync_required`.
    #[serde(default)]
    pub horizon: Seq,
    /// The latest snapshot, if any.
    #[serde(default)]
    pub snapshot: Option<SnapshotInfo>,
    /// Devices whose cursor is below the horizon: they must resync from the snapshot.
    #[serde(default)]
    pub stale_devices: Vec<String>,
    /// Entities whose last op is a `del`, still remembered (until their TTL).
    #[serde(default)]
    pub tombstones: i64,
    /// Payload bytes of the user's stored ops: what counts against the quota.
    #[serde(default)]
    pub stored_bytes: i64,
    /// The user's storage quota in bytes (absent: unlimited). A push that would
    /// take `stored_bytes` past it is refused with `507 quota_exceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<i64>,
}

/// A stored snapshot, as `PUT /v1/snapshot` answers and `GET /v1/status` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SnapshotInfo {
    /// The seq it covers: the state after applying ops 1..=seq.
    pub seq: Seq,
    /// Its size in bytes.
    pub size: i64,
    /// SHA-256 of its bytes, lowercase hex.
    pub sha256: String,
    /// The Content-Type it was uploaded with.
    pub content_type: String,
    /// When it was stored, milliseconds since the Unix epoch.
    pub created_at: i64,
}

impl SnapshotInfo {
    /// Its entity tag (strong: the same seq and bytes give the same tag).
    pub fn etag(&self) -> String {
        format!("\"{}-{}\"", self.seq, &self.sha256)
    }
}

/// The answer to `DELETE /v1/account`: what was removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AccountDeleted {
    /// The user.
    pub user: String,
    /// Ops removed.
    pub ops: i64,
    /// Snapshots removed.
    pub snapshots: i64,
    /// Devices removed.
    pub devices: i64,
    /// Entity rows (last seqs and tombstones) removed.
    pub entities: i64,
}

/// One per-entity conflict in an `entity_conflict` error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EntityConflict {
    /// The refused op.
    pub id: OpId,
    /// Its entity.
    pub entity: String,
    /// The base it claimed.
    pub base: Seq,
    /// The entity's actual last seq.
    pub entity_seq: Seq,
}

/// Every error body: a stable code to branch on and a message for humans, plus
/// details for some codes (`head`, `ids`, `conflicts`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable snake_case code (see docs/protocol.md).
    #[schema(value_type = crate::error::ErrorCode)]
    pub error: String,
    /// What went wrong, for humans.
    pub message: String,
    /// The head, for `stale_head`, `head_ahead`, `since_beyond_head`, `seq_beyond_head`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<Seq>,
    /// The op ids concerned, for `op_id_conflict`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<OpId>>,
    /// The conflicting ops, for `entity_conflict`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflicts: Option<Vec<EntityConflict>>,
    /// The retention horizon, for `resync_required` and `snapshot_below_horizon`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub horizon: Option<Seq>,
    /// The latest snapshot's seq, for `resync_required` (absent: there is none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_seq: Option<Seq>,
    /// For `rate_limited`: how long to wait before the same request would pass,
    /// milliseconds (the `Retry-After` header rounds it up to whole seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_base64_in_json_and_bin_in_msgpack() -> Result<(), Box<dyn std::error::Error>> {
        let p = Payload(vec![0, 1, 2, 255]);
        assert_eq!(serde_json::to_string(&p)?, "\"AAEC/w==\"");
        assert_eq!(rmp_serde::to_vec(&p)?, vec![0xc4, 4, 0, 1, 2, 255]);
        assert_eq!(serde_json::from_str::<Payload>("\"AAEC/w==\"")?, p);
        assert_eq!(rmp_serde::from_slice::<Payload>(&[0xc4, 4, 0, 1, 2, 255])?, p);
        assert!(serde_json::from_str::<Payload>("\"not base64!\"").is_err());
        assert!(serde_json::from_str::<Payload>("[1,2]").is_err());
        Ok(())
    }
}
