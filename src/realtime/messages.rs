//! The WebSocket protocol, version 1 (`opsync.v1`): one MessagePack map per binary
//! frame, its `type` key naming the message. Keys and value shapes are those of the
//! HTTP bodies (op ids as 16-byte bin, payloads as bin). See docs/protocol.md.

use serde::{Deserialize, Serialize};

use crate::ids::OpId;
use crate::ids::{DeviceId, Seq};
use crate::protocol::{EntityConflict, ErrorBody, NewOp, OnStale, Op, OpResult};

/// The protocol version this server speaks.
pub const VERSION: u32 = 1;
/// The subprotocol naming it.
pub const SUBPROTOCOL: &str = "opsync.v1";
/// The prefix of the subprotocol entry carrying a token: `bearer.TOKEN`.
pub const BEARER_PREFIX: &str = "bearer.";

/// A message from a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Envelope", into = "Envelope")]
pub enum ClientMsg {
    /// The first message: who is connecting and from where to deliver.
    Hello {
        /// The token, unless the subprotocol offer carried it.
        token: Option<String>,
        /// The device this connection acts as (defaults to the token's).
        device: Option<DeviceId>,
        /// Deliver every op after this seq (0 when absent: the whole log).
        since: Option<Seq>,
    },
    /// Append ops, as `POST /v1/ops`; answered by `pushed` or `error` with `id`.
    Push {
        /// The client's request id, echoed in the answer.
        id: u64,
        /// The ops.
        ops: Vec<NewOp>,
        /// The head the client last saw.
        expected_head: Option<Seq>,
        /// What to do if `expected_head` is behind.
        on_stale: Option<OnStale>,
    },
    /// The device has applied the log up to `seq`.
    Ack {
        /// How far.
        seq: Seq,
    },
    /// Answered by `pong`.
    Ping {
        /// Echoed.
        id: Option<u64>,
    },
}

/// The flat map every client message is (decoded without buffering).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Envelope {
    /// The message type.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device: Option<DeviceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<Seq>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ops: Option<Vec<NewOp>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expected_head: Option<Seq>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on_stale: Option<OnStale>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seq: Option<Seq>,
}

/// Why a client message was refused at decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadMessage {
    /// A `type` this server does not know.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// A key the type requires is missing.
    #[error("{kind} needs `{key}`")]
    Missing {
        /// The message type.
        kind: &'static str,
        /// The key.
        key: &'static str,
    },
}

impl TryFrom<Envelope> for ClientMsg {
    type Error = BadMessage;

    fn try_from(e: Envelope) -> Result<Self, BadMessage> {
        Ok(match e.kind.as_str() {
            "hello" => ClientMsg::Hello { token: e.token, device: e.device, since: e.since },
            "push" => ClientMsg::Push {
                id: e.id.ok_or(BadMessage::Missing { kind: "push", key: "id" })?,
                ops: e.ops.ok_or(BadMessage::Missing { kind: "push", key: "ops" })?,
                expected_head: e.expected_head,
                on_stale: e.on_stale,
            },
            "ack" => ClientMsg::Ack { seq: e.seq.ok_or(BadMessage::Missing { kind: "ack", key: "seq" })? },
            "ping" => ClientMsg::Ping { id: e.id },
            _ => {
                // Quoted in the answer, cut to 64 bytes, at a character boundary
                // (`truncate` panics inside a character: a client's type of 22
                // U+FFFD characters killed its session).
                let mut kind = e.kind;
                let mut end = kind.len().min(64);
                while !kind.is_char_boundary(end) {
                    end -= 1;
                }
                kind.truncate(end);
                return Err(BadMessage::UnknownType(kind));
            }
        })
    }
}

impl From<ClientMsg> for Envelope {
    fn from(m: ClientMsg) -> Envelope {
        match m {
            ClientMsg::Hello { token, device, since } => {
                Envelope { kind: "hello".into(), token, device, since, ..Envelope::default() }
            }
            ClientMsg::Push { id, ops, expected_head, on_stale } => Envelope {
                kind: "push".into(),
                id: Some(id),
                ops: Some(ops),
                expected_head,
                on_stale,
                ..Envelope::default()
            },
            ClientMsg::Ack { seq } => Envelope { kind: "ack".into(), seq: Some(seq), ..Envelope::default() },
            ClientMsg::Ping { id } => Envelope { kind: "ping".into(), id, ..Envelope::default() },
        }
    }
}

/// Why the server says `resync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResyncReason {
    /// The session fell behind live delivery; the server now resends every op after
    /// `from` (catch-up pages follow). Nothing for the client to do.
    Lagging,
    /// Ops after `from` are below the retention horizon: bootstrap from the
    /// snapshot at `snapshot_seq`, then reconnect with `since` = that seq.
    Horizon,
}

/// A message from the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// The answer to `hello`: the session is live; ops after `since` follow.
    Welcome {
        /// The protocol version.
        v: u32,
        /// The token's user.
        user: String,
        /// The device this session acts as, if any.
        #[serde(default)]
        device: Option<String>,
        /// The user's head at connection.
        head: Seq,
        /// This session's id (in the server's logs).
        session: u64,
        /// How often the server pings, milliseconds.
        heartbeat_ms: u64,
    },
    /// Ops in seq order, continuing exactly where the previous `ops` or `pushed`
    /// left off.
    Ops {
        /// The ops.
        ops: Vec<Op>,
        /// The user's head as far as this server knows.
        head: Seq,
        /// For live frames: when the commit returned, microseconds since the Unix
        /// epoch (catch-up pages have none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        committed_us: Option<i64>,
    },
    /// The answer to a `push`.
    Pushed {
        /// The request id.
        id: u64,
        /// One per pushed op, in the pushed order.
        results: Vec<OpResult>,
        /// The head after the push.
        head: Seq,
        /// The latest snapshot's seq (0: none), as in the HTTP push answer.
        #[serde(default)]
        snapshot_seq: Seq,
        /// More than `snapshot_every` ops follow the latest snapshot: upload one.
        #[serde(default)]
        snapshot_due: bool,
    },
    /// A request failed (with its `id`), or the connection is about to close.
    Error {
        /// The request id, if the error answers one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// Stable snake_case code, as in HTTP error bodies.
        code: String,
        /// For humans.
        message: String,
        /// The head, for the codes that carry one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        head: Option<Seq>,
        /// The op ids concerned, for `op_id_conflict`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ids: Option<Vec<OpId>>,
        /// The conflicting ops, for `entity_conflict`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conflicts: Option<Vec<EntityConflict>>,
        /// For `rate_limited`: how long to wait before the same request would
        /// pass, milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// Live delivery was interrupted after `from`; see [`ResyncReason`].
    Resync {
        /// The last seq delivered to this session.
        from: Seq,
        /// Why.
        reason: ResyncReason,
        /// For `horizon`: the snapshot to bootstrap from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        snapshot_seq: Option<Seq>,
    },
    /// The answer to `ping`.
    Pong {
        /// The ping's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
}

impl ServerMsg {
    /// An `error` from an HTTP-style error body.
    pub fn error(id: Option<u64>, body: ErrorBody) -> Self {
        ServerMsg::Error {
            id,
            code: body.error,
            message: body.message,
            head: body.head,
            ids: body.ids,
            conflicts: body.conflicts,
            retry_after_ms: body.retry_after_ms,
        }
    }

    /// The frame's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        rmp_serde::to_vec_named(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Payload;

    #[test]
    fn client_messages_round_trip_and_unknown_types_are_named() {
        let push = ClientMsg::Push {
            id: 7,
            ops: vec![NewOp {
                id: OpId::generate(),
                payload: Payload(vec![1, 2, 3]),
                entity: Some("e".into()),
                kind: None,
                base: None,
                ts: None,
            }],
            expected_head: Some(3),
            on_stale: Some(OnStale::Reject),
        };
        let bytes = rmp_serde::to_vec_named(&push).unwrap();
        assert_eq!(rmp_serde::from_slice::<ClientMsg>(&bytes).unwrap(), push);
        let unknown = rmp_serde::to_vec_named(&Envelope { kind: "shout".into(), ..Envelope::default() }).unwrap();
        let err = rmp_serde::from_slice::<ClientMsg>(&unknown).unwrap_err().to_string();
        assert!(err.contains("unknown message type \"shout\""), "{err}");
        let missing = rmp_serde::to_vec_named(&Envelope { kind: "ack".into(), ..Envelope::default() }).unwrap();
        assert!(rmp_serde::from_slice::<ClientMsg>(&missing).is_err());
    }

    #[test]
    fn long_unknown_types_are_cut_at_a_character_boundary() {
        for name in ["x".to_owned() + &"é".repeat(40), "\u{fffd}".repeat(22), "a".repeat(100), "é".repeat(3)] {
            let bytes = rmp_serde::to_vec_named(&Envelope { kind: name.clone(), ..Envelope::default() }).unwrap();
            let err = rmp_serde::from_slice::<ClientMsg>(&bytes).unwrap_err().to_string();
            let quoted = err.split('"').nth(1).unwrap_or_default().to_owned();
            assert!(quoted.len() <= 64 && name.starts_with(&quoted) && quoted.len() >= 62.min(name.len()), "{err}");
        }
    }

    #[test]
    fn server_messages_round_trip_through_the_tag() {
        let ops = ServerMsg::Ops {
            ops: vec![Op {
                seq: 4,
                id: OpId::generate(),
                device: Some("d".into()),
                entity: None,
                kind: Some("put".into()),
                base: None,
                ts: Some(1),
                received_at: 2,
                payload: Payload(vec![9; 5]),
            }],
            head: 4,
            committed_us: Some(5),
        };
        let bytes = ops.encode().unwrap();
        assert_eq!(rmp_serde::from_slice::<ServerMsg>(&bytes).unwrap(), ops);
        let resync = ServerMsg::Resync { from: 3, reason: ResyncReason::Lagging, snapshot_seq: None };
        assert_eq!(rmp_serde::from_slice::<ServerMsg>(&resync.encode().unwrap()).unwrap(), resync);
    }
}
