//! Remembers successful authorizations of unattenuated tokens, so a client that
//! sends many requests with one token pays the signature check and the Datalog
//! run (~90 µs) once rather than on every request.
//!
//! Only tokens made of the authority block alone are cached: the server minted
//! that block, and its one check is `time < expires`, which a hit re-checks
//! exactly against the `expires` fact. Revocation is re-checked on every hit too.
//! An attenuated token (whose blocks may hold any check) is always authorized in
//! full.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::{Operation, Principal};

/// How long an entry is trusted before the token is verified in full again.
const TTL: Duration = Duration::from_secs(10);
/// The most entries held; past it, expired entries go, then everything.
const CAPACITY: usize = 16_384;

struct Entry {
    principal: Principal,
    revocation_ids: Vec<String>,
    expires_at: SystemTime,
    fresh_until: Instant,
    /// Which operations the token was authorized for, by [`slot`].
    granted: [bool; 3],
}

fn slot(op: Operation) -> usize {
    match op {
        Operation::Read => 0,
        Operation::Write => 1,
        Operation::Admin => 2,
    }
}

/// Successful authorizations by token.
#[derive(Clone)]
pub(super) struct AuthCache {
    entries: Arc<Mutex<HashMap<Box<str>, Entry>>>,
    ttl: Duration,
}

impl Default for AuthCache {
    fn default() -> Self {
        Self { entries: Arc::default(), ttl: TTL }
    }
}

impl AuthCache {
    /// The principal of a remembered authorization that still holds, checking
    /// expiry and revocation (`revoked` says whether an id is revoked).
    pub(super) fn get(&self, token: &str, op: Operation, revoked: impl Fn(&str) -> bool) -> Option<Principal> {
        let entries = self.entries.lock().ok()?;
        let entry = entries.get(token)?;
        let valid = entry.granted[slot(op)]
            && entry.fresh_until > Instant::now()
            && entry.expires_at > SystemTime::now()
            && !entry.revocation_ids.iter().any(|id| revoked(id));
        valid.then(|| entry.principal.clone())
    }

    /// Remembers a successful authorization of an unattenuated token.
    pub(super) fn put(&self, token: &str, op: Operation, principal: &Principal, revocation_ids: Vec<String>) {
        let Some(expires_at) = principal.expires_at else { return };
        let Ok(mut entries) = self.entries.lock() else { return };
        if entries.len() >= CAPACITY {
            let now = Instant::now();
            entries.retain(|_, e| e.fresh_until > now);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        let now = Instant::now();
        let fresh = Entry {
            principal: principal.clone(),
            revocation_ids,
            expires_at,
            fresh_until: now + self.ttl,
            granted: [false; 3],
        };
        // A stale entry is replaced, not kept: kept, it would never be fresh again
        // and every later request would pay the full check.
        let entry = match entries.entry(Box::from(token)) {
            std::collections::hash_map::Entry::Occupied(o) if o.get().fresh_until > now => o.into_mut(),
            std::collections::hash_map::Entry::Occupied(o) => {
                let entry = o.into_mut();
                *entry = fresh;
                entry
            }
            std::collections::hash_map::Entry::Vacant(v) => v.insert(fresh),
        };
        entry.granted[slot(op)] = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::UserId;

    fn principal() -> Principal {
        Principal {
            user: UserId::new("u").unwrap_or_else(|_| unreachable!()),
            device: None,
            expires_at: Some(SystemTime::now() + Duration::from_secs(3600)),
        }
    }

    #[test]
    fn a_stale_entry_is_refreshed_by_the_next_full_check() {
        let cache = AuthCache { entries: Arc::default(), ttl: Duration::from_millis(30) };
        let p = principal();
        cache.put("t", Operation::Read, &p, vec![]);
        assert!(cache.get("t", Operation::Read, |_| false).is_some());
        assert!(cache.get("t", Operation::Write, |_| false).is_none(), "only what was authorized");
        std::thread::sleep(Duration::from_millis(40));
        assert!(cache.get("t", Operation::Read, |_| false).is_none(), "stale: verify in full");
        cache.put("t", Operation::Read, &p, vec![]);
        assert!(cache.get("t", Operation::Read, |_| false).is_some(), "the full check made it fresh again");
    }
}
