//! Checks a push must pass before it reaches the writer.

use std::collections::HashSet;

use crate::ids::Seq;
use crate::protocol::{NewOp, OnStale};

/// Size limits, configurable (see the README's configuration table).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Ops in one push.
    pub max_ops_per_push: usize,
    /// Bytes of one op's payload.
    pub max_op_bytes: usize,
    /// Bytes of one request body (after decompression).
    pub max_body_bytes: usize,
    /// Ops in one pull page (the most a client may ask for).
    pub max_page_ops: usize,
    /// Payload bytes in one pull page (a page always holds at least one op).
    pub max_page_bytes: usize,
    /// Bytes of one snapshot.
    pub max_snapshot_bytes: usize,
    /// Op payload bytes one user may store (0: unlimited).
    pub quota_bytes: u64,
}

impl Limits {
    /// The per-user storage quota in bytes, if there is one.
    pub fn quota(&self) -> Option<i64> {
        (self.quota_bytes > 0).then(|| i64::try_from(self.quota_bytes).unwrap_or(i64::MAX))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_ops_per_push: 1000,
            max_op_bytes: 256 * 1024,
            max_body_bytes: 8 * 1024 * 1024,
            max_page_ops: 10_000,
            max_page_bytes: 4 * 1024 * 1024,
            max_snapshot_bytes: 64 * 1024 * 1024,
            quota_bytes: 1 << 30,
        }
    }
}

/// The longest entity key, in bytes.
pub const MAX_ENTITY_BYTES: usize = 256;
/// The longest kind, in bytes.
pub const MAX_KIND_BYTES: usize = 64;
/// How far in the future a client timestamp may be (clock skew), in ms.
pub const MAX_FUTURE_TS_MS: i64 = 24 * 3600 * 1000;

/// Why a push was refused before it reached the database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// No ops.
    #[error("a push needs at least one op")]
    EmptyPush,
    /// Too many ops.
    #[error("a push holds at most {max} ops, got {got}")]
    TooManyOps {
        /// The limit.
        max: usize,
        /// The count.
        got: usize,
    },
    /// A payload over the limit.
    #[error("op {id} has a {got}-byte payload; the limit is {max}")]
    OpTooLarge {
        /// The op.
        id: String,
        /// The limit.
        max: usize,
        /// Its size.
        got: usize,
    },
    /// The same id twice.
    #[error("op id {0} appears more than once in the push")]
    DuplicateInBatch(String),
    /// A bad field in an op.
    #[error("op {id}: {reason}")]
    Op {
        /// The op.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// A bad field outside the ops.
    #[error("{0}")]
    Field(String),
}

/// Validates a push's optimistic-locking fields: a head is never negative, and
/// refusing a stale head needs a head to compare.
pub fn validate_head(expected_head: Option<Seq>, on_stale: OnStale) -> Result<(), Invalid> {
    match expected_head {
        Some(head) if head < 0 => Err(Invalid::Field(format!("expected_head must be >= 0, got {head}"))),
        None if on_stale == OnStale::Reject => Err(Invalid::Field("on_stale \"reject\" needs expected_head".into())),
        _ => Ok(()),
    }
}

/// Validates a push against the limits and the op rules; `now` in ms.
pub fn validate_push(ops: &[NewOp], limits: &Limits, now: i64) -> Result<(), Invalid> {
    if ops.is_empty() {
        return Err(Invalid::EmptyPush);
    }
    if ops.len() > limits.max_ops_per_push {
        return Err(Invalid::TooManyOps { max: limits.max_ops_per_push, got: ops.len() });
    }
    let mut seen = HashSet::with_capacity(ops.len());
    for op in ops {
        let bad = |reason: String| Invalid::Op { id: op.id.to_string(), reason };
        if !seen.insert(op.id) {
            return Err(Invalid::DuplicateInBatch(op.id.to_string()));
        }
        if op.payload.0.len() > limits.max_op_bytes {
            return Err(Invalid::OpTooLarge {
                id: op.id.to_string(),
                max: limits.max_op_bytes,
                got: op.payload.0.len(),
            });
        }
        if let Some(entity) = &op.entity
            && (entity.is_empty() || entity.len() > MAX_ENTITY_BYTES)
        {
            return Err(bad(format!("entity must be 1 to {MAX_ENTITY_BYTES} bytes")));
        }
        if let Some(kind) = &op.kind
            && (kind.is_empty() || kind.len() > MAX_KIND_BYTES || kind.chars().any(char::is_control))
        {
            return Err(bad(format!("kind must be 1 to {MAX_KIND_BYTES} bytes without control characters")));
        }
        match (op.base, &op.entity) {
            (Some(base), _) if base < 0 => return Err(bad(format!("base must be >= 0, got {base}"))),
            (Some(_), None) => return Err(bad("base needs an entity".into())),
            _ => {}
        }
        if let Some(ts) = op.ts
            && (ts < 0 || ts > now.saturating_add(MAX_FUTURE_TS_MS))
        {
            return Err(bad(format!("ts {ts} is negative or more than a day in the future")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::OpId;
    use crate::protocol::Payload;

    fn op() -> NewOp {
        NewOp { id: OpId::generate(), payload: Payload(vec![1]), entity: None, kind: None, base: None, ts: None }
    }

    #[test]
    fn rules() {
        let l = Limits { max_ops_per_push: 2, max_op_bytes: 4, ..Limits::default() };
        let now = 1_000_000;
        assert_eq!(validate_push(&[], &l, now), Err(Invalid::EmptyPush));
        assert!(matches!(validate_push(&[op(), op(), op()], &l, now), Err(Invalid::TooManyOps { .. })));
        let a = op();
        assert!(matches!(validate_push(&[a.clone(), a], &l, now), Err(Invalid::DuplicateInBatch(_))));
        let big = NewOp { payload: Payload(vec![0; 5]), ..op() };
        assert!(matches!(validate_push(&[big], &l, now), Err(Invalid::OpTooLarge { .. })));
        let orphan_base = NewOp { base: Some(1), ..op() };
        assert!(matches!(validate_push(&[orphan_base], &l, now), Err(Invalid::Op { .. })));
        let negative = NewOp { base: Some(-1), entity: Some("e".into()), ..op() };
        assert!(matches!(validate_push(&[negative], &l, now), Err(Invalid::Op { .. })));
        let future = NewOp { ts: Some(now + MAX_FUTURE_TS_MS + 1), ..op() };
        assert!(matches!(validate_push(&[future], &l, now), Err(Invalid::Op { .. })));
        let empty_entity = NewOp { entity: Some(String::new()), ..op() };
        assert!(matches!(validate_push(&[empty_entity], &l, now), Err(Invalid::Op { .. })));
        let fine = NewOp { entity: Some("e".into()), base: Some(0), kind: Some("put".into()), ts: Some(now), ..op() };
        assert_eq!(validate_push(&[fine], &l, now), Ok(()));
    }

    #[test]
    fn head_rules() {
        assert!(matches!(validate_head(Some(-1), OnStale::Accept), Err(Invalid::Field(_))));
        assert!(matches!(validate_head(None, OnStale::Reject), Err(Invalid::Field(_))));
        assert_eq!(validate_head(None, OnStale::Accept), Ok(()));
        assert_eq!(validate_head(Some(0), OnStale::Reject), Ok(()));
    }
}
