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
#[derive(Clone, Default)]
pub(super) struct AuthCache {
    entries: Arc<Mutex<HashMap<Box<str>, Entry>>>,
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
        let entry = entries.entry(Box::from(token)).or_insert_with(|| Entry {
            principal: principal.clone(),
            revocation_ids,
            expires_at,
            fresh_until: Instant::now() + TTL,
            granted: [false; 3],
        });
        entry.granted[slot(op)] = true;
    }
}
