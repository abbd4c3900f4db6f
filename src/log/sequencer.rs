//! The pure heart of a push: given the user's head and what is already stored,
//! decide each op's seq (or why the push is refused). No I/O; property-tested.

use std::collections::HashMap;

use crate::ids::{OpId, Seq};
use crate::protocol::{EntityConflict, NewOp, OnStale, OpResult, OpStatus};

/// What the database holds for an op id the push repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOp {
    /// Its seq.
    pub seq: Seq,
    /// Its payload, entity and kind: a repeat must match them.
    pub payload: Vec<u8>,
    /// Entity key.
    pub entity: Option<String>,
    /// Kind.
    pub kind: Option<String>,
}

impl StoredOp {
    fn same_content(&self, op: &NewOp) -> bool {
        self.payload == op.payload.0 && self.entity == op.entity && self.kind == op.kind
    }
}

/// Why a push was refused; nothing of it is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// These ids are stored with other content.
    #[error("op ids already stored with different content")]
    IdReuse(Vec<OpId>),
    /// `on_stale: reject` and the client's head is behind.
    #[error("expected head {expected} but the head is {head}")]
    StaleHead {
        /// What the client said.
        expected: Seq,
        /// The server's head.
        head: Seq,
    },
    /// The client's head is beyond the server's.
    #[error("expected head {expected} is beyond the head {head}")]
    HeadAhead {
        /// What the client said.
        expected: Seq,
        /// The server's head.
        head: Seq,
    },
    /// An op's base is beyond the head: it cannot have been seen.
    #[error("op {id} has base {base}, beyond the head {head}")]
    BaseBeyondHead {
        /// The op.
        id: OpId,
        /// Its base.
        base: Seq,
        /// The server's head.
        head: Seq,
    },
    /// Entities moved past the ops' bases.
    #[error("entities changed since the ops' base")]
    EntityConflict(Vec<EntityConflict>),
}

/// The outcome of planning: every op's seq, and which ops to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// One result per op, in push order.
    pub results: Vec<OpResult>,
    /// Indexes (into the push's ops) of the ops to store, in seq order: the first
    /// gets `head + 1`, the next `head + 2`, and so on.
    pub new: Vec<usize>,
    /// The head after the push.
    pub head: Seq,
}

/// Decides a push. `existing` holds the stored ops whose ids the push repeats;
/// `entity_seqs` the last seq of each entity named by an op with a `base`.
pub fn plan(
    head: Seq,
    ops: &[NewOp],
    expected_head: Option<Seq>,
    on_stale: OnStale,
    existing: &HashMap<OpId, StoredOp>,
    entity_seqs: &HashMap<String, Seq>,
) -> Result<Plan, Rejection> {
    let reused: Vec<OpId> = ops
        .iter()
        .filter(|op| existing.get(&op.id).is_some_and(|stored| !stored.same_content(op)))
        .map(|op| op.id)
        .collect();
    if !reused.is_empty() {
        return Err(Rejection::IdReuse(reused));
    }
    let new: Vec<usize> = (0..ops.len()).filter(|&i| !existing.contains_key(&ops[i].id)).collect();
    // A pure retry of a committed push is answered as such, whatever its head says.
    if !new.is_empty() {
        if let Some(expected) = expected_head {
            if expected > head {
                return Err(Rejection::HeadAhead { expected, head });
            }
            if expected < head && on_stale == OnStale::Reject {
                return Err(Rejection::StaleHead { expected, head });
            }
        }
        let mut conflicts = Vec::new();
        for op in new.iter().map(|&i| &ops[i]) {
            let (Some(base), Some(entity)) = (op.base, op.entity.as_ref()) else { continue };
            if base > head {
                return Err(Rejection::BaseBeyondHead { id: op.id, base, head });
            }
            let entity_seq = entity_seqs.get(entity).copied().unwrap_or(0);
            if entity_seq > base {
                conflicts.push(EntityConflict { id: op.id, entity: entity.clone(), base, entity_seq });
            }
        }
        if !conflicts.is_empty() {
            return Err(Rejection::EntityConflict(conflicts));
        }
    }
    let mut next = head;
    let results = ops
        .iter()
        .map(|op| match existing.get(&op.id) {
            Some(stored) => OpResult { id: op.id, seq: stored.seq, status: OpStatus::Duplicate },
            None => {
                next += 1;
                OpResult { id: op.id, seq: next, status: OpStatus::Stored }
            }
        })
        .collect();
    Ok(Plan { results, new, head: next })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::protocol::Payload;

    fn op(payload: u8) -> NewOp {
        NewOp { id: OpId::generate(), payload: Payload(vec![payload]), entity: None, kind: None, base: None, ts: None }
    }

    fn stored(op: &NewOp, seq: Seq) -> StoredOp {
        StoredOp { seq, payload: op.payload.0.clone(), entity: op.entity.clone(), kind: op.kind.clone() }
    }

    proptest! {
        /// New ops get head+1.. in push order, repeats keep their seq, the head
        /// moves by the number of new ops.
        #[test]
        fn seqs_are_consecutive_and_repeats_keep_theirs(head in 0i64..1_000_000, n in 1usize..50, dup_mask in any::<u64>()) {
            let ops: Vec<NewOp> = (0..n).map(|i| op(i as u8)).collect();
            let existing: HashMap<OpId, StoredOp> = ops.iter().enumerate()
                .filter(|(i, _)| dup_mask & (1 << (i % 64)) != 0)
                .map(|(i, o)| (o.id, stored(o, 1 + i as i64)))
                .collect();
            let plan = plan(head, &ops, None, OnStale::Accept, &existing, &HashMap::new()).unwrap();
            let new_count = (n - existing.len()) as i64;
            prop_assert_eq!(plan.head, head + new_count);
            prop_assert_eq!(plan.new.len() as i64, new_count);
            let mut expect = head;
            for (i, (o, r)) in ops.iter().zip(&plan.results).enumerate() {
                prop_assert_eq!(r.id, o.id);
                if let Some(s) = existing.get(&o.id) {
                    prop_assert_eq!(r.status, OpStatus::Duplicate);
                    prop_assert_eq!(r.seq, s.seq);
                } else {
                    expect += 1;
                    prop_assert_eq!(r.status, OpStatus::Stored);
                    prop_assert_eq!(r.seq, expect);
                    prop_assert!(plan.new.contains(&i));
                }
            }
        }

        /// A stale head is refused only when asked, and never for a pure retry.
        #[test]
        fn stale_heads(head in 1i64..1000, behind in 1i64..1000, reject in any::<bool>()) {
            let ops = vec![op(1)];
            let expected = (head - behind).max(0);
            let mode = if reject { OnStale::Reject } else { OnStale::Accept };
            let res = plan(head, &ops, Some(expected), mode, &HashMap::new(), &HashMap::new());
            if reject {
                prop_assert_eq!(res, Err(Rejection::StaleHead { expected, head }));
            } else {
                prop_assert!(res.is_ok());
            }
            let retry: HashMap<_, _> = [(ops[0].id, stored(&ops[0], head))].into();
            prop_assert!(plan(head, &ops, Some(expected), mode, &retry, &HashMap::new()).is_ok());
        }

        /// An op based on an entity's current seq (or later) passes; an older base conflicts.
        #[test]
        fn entity_bases(entity_seq in 0i64..100, base in 0i64..100) {
            let head = 100;
            let mut o = op(1);
            o.entity = Some("e".into());
            o.base = Some(base);
            let seqs: HashMap<String, Seq> = [("e".to_owned(), entity_seq)].into();
            let res = plan(head, std::slice::from_ref(&o), None, OnStale::Accept, &HashMap::new(), &seqs);
            if base >= entity_seq {
                prop_assert!(res.is_ok());
            } else {
                prop_assert_eq!(res, Err(Rejection::EntityConflict(vec![EntityConflict {
                    id: o.id, entity: "e".into(), base, entity_seq,
                }])));
            }
        }
    }

    #[test]
    fn reused_id_with_other_content_is_refused() {
        let o = op(1);
        let mut other = stored(&o, 3);
        other.payload = vec![2];
        let existing = [(o.id, other)].into();
        let res = plan(5, std::slice::from_ref(&o), None, OnStale::Accept, &existing, &HashMap::new());
        assert_eq!(res, Err(Rejection::IdReuse(vec![o.id])));
    }

    #[test]
    fn head_ahead_and_base_beyond_head_are_refused() {
        let mut o = op(1);
        let res = plan(5, std::slice::from_ref(&o), Some(6), OnStale::Accept, &HashMap::new(), &HashMap::new());
        assert_eq!(res, Err(Rejection::HeadAhead { expected: 6, head: 5 }));
        o.entity = Some("e".into());
        o.base = Some(9);
        let res = plan(5, std::slice::from_ref(&o), None, OnStale::Accept, &HashMap::new(), &HashMap::new());
        assert_eq!(res, Err(Rejection::BaseBeyondHead { id: o.id, base: 9, head: 5 }));
    }
}
