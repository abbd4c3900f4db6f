//! The set of revoked token ids, kept in memory and refreshed from the database so a
//! revocation made by `opsync token revoke` (or on another node) takes effect
//! everywhere within [`REFRESH_INTERVAL`].

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use diesel::prelude::*;

use crate::db::DbConn;
use crate::db::schema::revoked_tokens;

/// How often a running server re-reads the revocation table.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Revoked revocation ids (hex), shared by every request handler.
#[derive(Debug, Clone, Default)]
pub struct RevocationList {
    ids: Arc<RwLock<HashSet<String>>>,
}

impl RevocationList {
    /// Whether `id` is revoked.
    pub fn contains(&self, id: &str) -> bool {
        match self.ids.read() {
            Ok(ids) => ids.contains(id),
            Err(poisoned) => poisoned.into_inner().contains(id),
        }
    }

    /// Marks `id` revoked in this process (the database is the caller's business).
    pub fn insert(&self, id: String) {
        match self.ids.write() {
            Ok(mut ids) => ids.insert(id),
            Err(poisoned) => poisoned.into_inner().insert(id),
        };
    }

    /// Replaces the set with the database's.
    pub fn reload(&self, conn: &mut DbConn) -> QueryResult<usize> {
        let fresh: HashSet<String> = load(conn)?;
        let n = fresh.len();
        match self.ids.write() {
            Ok(mut ids) => *ids = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(n)
    }
}

/// Every revoked id in the database.
pub fn load(conn: &mut DbConn) -> QueryResult<HashSet<String>> {
    Ok(revoked_tokens::table.select(revoked_tokens::id).load::<String>(conn)?.into_iter().collect())
}

/// Records revocation ids (hex) in the database; already revoked ids are kept.
pub fn revoke(conn: &mut DbConn, ids: &[String]) -> QueryResult<usize> {
    crate::db::dialect::insert_revoked(conn, ids, crate::log::now_ms())
}
