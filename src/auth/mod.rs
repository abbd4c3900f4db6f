//! Tokens: biscuit-auth tokens signed by the server's root key.
//!
//! A token's authority block names the user (its partition of the log), optionally
//! the device, the rights it grants (`read`, `write`, `admin`) and an expiry check.
//! Holders may attenuate a token offline by appending blocks with more checks (read
//! only, a shorter expiry); the server honours every block. Every request is
//! authorized by [`Verifier::authorize`], the one place the policy lives.

mod cache;
mod keys;
pub mod revocation;

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use biscuit_auth::builder::{self, Algorithm};
use biscuit_auth::error::{FailedCheck, Logic, Token as TokenError};
use biscuit_auth::macros::{authorizer, biscuit, block};
use biscuit_auth::{AuthorizerLimits, Biscuit, KeyPair, PublicKey};

pub use keys::{KeyError, RootKey};
pub use revocation::{REFRESH_INTERVAL, RevocationList, revoke};

use crate::ids::{DeviceId, UserId};

/// The longest token accepted, in bytes of base64.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Datalog limits for every authorization. Facts and iterations bound the work
/// deterministically (tokens are at most [`MAX_TOKEN_BYTES`]); the time limit is
/// only a backstop, generous because a busy machine must not turn an honest
/// token's 0.1 ms check into a refusal.
fn limits() -> AuthorizerLimits {
    AuthorizerLimits { max_facts: 500, max_iterations: 100, max_time: Duration::from_millis(500) }
}

/// What a request wants to do; each maps to the right a token must grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Pull, status.
    Read,
    /// Push, ack.
    Write,
    /// Server administration.
    Admin,
}

impl Operation {
    /// The name used in the `operation(…)` fact and `right(…)` facts.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Admin => "admin",
        }
    }
}

/// What a token grants, for minting.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    /// The user (partition) the token reaches.
    pub user: UserId,
    /// Binds the token to one device.
    pub device: Option<DeviceId>,
    /// How long it is valid.
    pub ttl: Duration,
    /// Grants `write` as well as `read`.
    pub write: bool,
    /// Grants `admin`.
    pub admin: bool,
}

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user whose log the token reaches (and no other).
    pub user: UserId,
    /// The device the token is bound to, if any.
    pub device: Option<DeviceId>,
    /// When the token's authority block expires.
    pub expires_at: Option<SystemTime>,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Missing, malformed, oversized, or not signed by this server.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// A time check failed.
    #[error("the token has expired")]
    Expired,
    /// One of its revocation ids is revoked.
    #[error("the token has been revoked")]
    Revoked,
    /// Valid, but does not grant this operation.
    #[error("the token does not allow {0}")]
    Forbidden(&'static str),
}

/// Mints and verifies tokens with the server's root key.
#[derive(Clone)]
pub struct Verifier {
    public: PublicKey,
    revoked: RevocationList,
    cache: cache::AuthCache,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("public", &self.public.to_bytes_hex()).finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for tokens signed by `public`, refusing the ids in `revoked`.
    pub fn new(public: PublicKey, revoked: RevocationList) -> Self {
        Self { public, revoked, cache: cache::AuthCache::default() }
    }

    /// The revocation list this verifier checks.
    pub fn revocations(&self) -> &RevocationList {
        &self.revoked
    }

    /// The root public key tokens must be signed with.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// Authorizes `token` for `op`: signature, revocation, every block's checks,
    /// then the server's policy. The one function every request goes through.
    pub fn authorize(&self, token: &str, op: Operation) -> Result<Principal, AuthError> {
        let text = token.trim();
        if let Some(principal) = self.cache.get(text, op, |id| self.revoked.contains(id)) {
            return Ok(principal);
        }
        let token = parse(text, &self.public)?;
        let ids = revocation_ids(&token);
        if ids.iter().any(|id| self.revoked.contains(id)) {
            return Err(AuthError::Revoked);
        }
        // The policy: a request is allowed if the authority block grants the right the
        // operation needs; every check of every block must also pass (an attenuated
        // block may demand `operation("read")` or an earlier expiry).
        let mut authorizer = authorizer!(
            r#"
            operation({op});
            allow if user($u), right({op});
            deny if true;
            "#,
            op = op.as_str(),
        )
        .time()
        .set_limits(limits())
        .build(&token)
        .map_err(|e| AuthError::Invalid(e.to_string()))?;
        authorizer.authorize().map_err(|e| refusal(e, op))?;
        let principal = principal(&mut authorizer)?;
        if token.block_count() == 1 {
            self.cache.put(text, op, &principal, ids);
        }
        Ok(principal)
    }
}

/// Reads the facts the authority block states about the holder.
fn principal(authorizer: &mut biscuit_auth::Authorizer) -> Result<Principal, AuthError> {
    let invalid = |e: TokenError| AuthError::Invalid(e.to_string());
    let users: Vec<(String,)> = authorizer.query("data($u) <- user($u)").map_err(invalid)?;
    let [(user,)] = users.as_slice() else {
        return Err(AuthError::Invalid("the token must name exactly one user".into()));
    };
    let devices: Vec<(String,)> = authorizer.query("data($d) <- device($d)").map_err(invalid)?;
    let device = match devices.as_slice() {
        [] => None,
        [(d,)] => Some(DeviceId::new(d.clone()).map_err(|e| AuthError::Invalid(e.to_string()))?),
        _ => return Err(AuthError::Invalid("the token names several devices".into())),
    };
    let expiries: Vec<(SystemTime,)> = authorizer.query("data($e) <- expires($e)").map_err(invalid)?;
    Ok(Principal {
        user: UserId::new(user.clone()).map_err(|e| AuthError::Invalid(e.to_string()))?,
        device,
        expires_at: expiries.first().map(|(e,)| *e),
    })
}

/// Classifies a failed authorization: a failed time check is an expiry, anything
/// else a missing right.
fn refusal(error: TokenError, op: Operation) -> AuthError {
    let checks = match &error {
        TokenError::FailedLogic(Logic::Unauthorized { checks, .. } | Logic::NoMatchingPolicy { checks }) => checks,
        _ => return AuthError::Forbidden(op.as_str()),
    };
    let expired = checks.iter().any(|c| match c {
        FailedCheck::Block(b) => b.rule.contains("time("),
        FailedCheck::Authorizer(a) => a.rule.contains("time("),
    });
    if expired { AuthError::Expired } else { AuthError::Forbidden(op.as_str()) }
}

/// Parses a token and checks its signatures.
pub fn parse(token: &str, public: &PublicKey) -> Result<Biscuit, AuthError> {
    let token = token.trim();
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Invalid(format!("a token is 1 to {MAX_TOKEN_BYTES} bytes")));
    }
    Biscuit::from_base64(token, public).map_err(|e| AuthError::Invalid(e.to_string()))
}

/// The revocation ids of every block, hex-encoded: revoking the first one revokes
/// the token and every token attenuated from it.
pub fn revocation_ids(token: &Biscuit) -> Vec<String> {
    token.revocation_identifiers().iter().map(hex::encode).collect()
}

/// The id that revokes this token and every token attenuated from it, but not
/// the token it was attenuated from: its last block's.
pub fn own_revocation_id(token: &Biscuit) -> String {
    token.revocation_identifiers().last().map(hex::encode).unwrap_or_default()
}

/// Mints a token.
pub fn mint(root: &KeyPair, spec: &TokenSpec) -> Result<String, TokenError> {
    let expires = SystemTime::now() + spec.ttl;
    let mut builder = biscuit!(
        r#"
        user({user});
        right("read");
        expires({expires});
        check if time($t), $t < {expires};
        "#,
        user = spec.user.as_str(),
        expires = expires,
    );
    if let Some(device) = &spec.device {
        builder = builder.fact(builder::fact("device", &[builder::string(device.as_str())]))?;
    }
    if spec.write {
        builder = builder.fact(builder::fact("right", &[builder::string("write")]))?;
    }
    if spec.admin {
        builder = builder.fact(builder::fact("right", &[builder::string("admin")]))?;
    }
    builder.build(root)?.to_base64()
}

/// Attenuates a token offline: appends a block that restricts it to reads and/or
/// to a shorter life. Needs no root key beyond the public one to parse.
pub fn attenuate(token: &Biscuit, read_only: bool, ttl: Option<Duration>) -> Result<String, TokenError> {
    let mut restriction = builder::BlockBuilder::new();
    if read_only {
        restriction = restriction.merge(block!(r#"check if operation("read");"#));
    }
    if let Some(ttl) = ttl {
        let until = SystemTime::now() + ttl;
        restriction = restriction.merge(block!(r#"check if time($t), $t < {until};"#, until = until));
    }
    token.append(restriction)?.to_base64()
}

/// A readable account of a token for `opsync token inspect`.
pub fn describe(token: &Biscuit, revoked: &HashSet<String>) -> String {
    let mut out = summary(token).unwrap_or_else(|e| format!("(facts unreadable: {e})\n"));
    for i in 0..token.block_count() {
        let source = token.print_block_source(i).unwrap_or_else(|e| format!("<unreadable: {e}>"));
        let title = if i == 0 { "authority block".to_owned() } else { format!("block {i} (attenuation)") };
        out.push_str(&format!("{title}:\n"));
        for line in source.lines().filter(|l| !l.trim().is_empty()) {
            out.push_str(&format!("    {}\n", line.trim()));
        }
    }
    out.push_str("revocation ids:\n");
    for id in revocation_ids(token) {
        let mark = if revoked.contains(&id) { "  (revoked)" } else { "" };
        out.push_str(&format!("    {id}{mark}\n"));
    }
    out
}

/// The authority block's facts in plain words: user, device, rights, expiry.
fn summary(token: &Biscuit) -> Result<String, TokenError> {
    let mut authorizer = token.authorizer()?;
    let strings = |a: &mut biscuit_auth::Authorizer, rule: &str| -> Result<Vec<String>, TokenError> {
        Ok(a.query::<_, (String,), _>(rule)?.into_iter().map(|(v,)| v).collect())
    };
    let users = strings(&mut authorizer, "data($u) <- user($u)")?;
    let devices = strings(&mut authorizer, "data($d) <- device($d)")?;
    let mut rights = strings(&mut authorizer, "data($r) <- right($r)")?;
    rights.sort();
    let expiries: Vec<(SystemTime,)> = authorizer.query("data($e) <- expires($e)")?;
    let mut out = format!("user:      {}\n", users.join(", "));
    out.push_str(&format!("device:    {}\n", if devices.is_empty() { "(any)".into() } else { devices.join(", ") }));
    out.push_str(&format!("rights:    {}\n", rights.join(", ")));
    for (expiry,) in expiries {
        let state = match expiry.duration_since(SystemTime::now()) {
            Ok(left) => format!("in {}", humantime::format_duration(Duration::from_secs(left.as_secs()))),
            Err(_) => "expired".to_owned(),
        };
        out.push_str(&format!("expires:   {} ({state})\n", humantime::format_rfc3339_seconds(expiry)));
    }
    if token.block_count() > 1 {
        out.push_str(&format!("attenuated: {} block(s) with further checks\n", token.block_count() - 1));
    }
    Ok(out)
}

/// A new random root key.
pub fn generate_root() -> KeyPair {
    KeyPair::new_with_algorithm(Algorithm::Ed25519)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(write: bool) -> TokenSpec {
        TokenSpec {
            user: UserId::new("alice").unwrap_or_else(|_| unreachable!()),
            device: None,
            ttl: Duration::from_secs(3600),
            write,
            admin: false,
        }
    }

    fn setup() -> (KeyPair, Verifier) {
        let root = generate_root();
        let verifier = Verifier::new(root.public(), RevocationList::default());
        (root, verifier)
    }

    #[test]
    fn full_token_reads_and_writes_but_is_not_admin() -> Result<(), Box<dyn std::error::Error>> {
        let (root, v) = setup();
        let token = mint(&root, &spec(true))?;
        let p = v.authorize(&token, Operation::Write)?;
        assert_eq!(p.user.as_str(), "alice");
        assert!(p.expires_at.is_some());
        assert!(v.authorize(&token, Operation::Read).is_ok());
        assert!(matches!(v.authorize(&token, Operation::Admin), Err(AuthError::Forbidden("admin"))));
        Ok(())
    }

    #[test]
    fn read_only_token_cannot_write() -> Result<(), Box<dyn std::error::Error>> {
        let (root, v) = setup();
        let token = mint(&root, &spec(false))?;
        assert!(v.authorize(&token, Operation::Read).is_ok());
        assert!(matches!(v.authorize(&token, Operation::Write), Err(AuthError::Forbidden(_))));
        Ok(())
    }

    #[test]
    fn attenuated_token_is_honoured() -> Result<(), Box<dyn std::error::Error>> {
        let (root, v) = setup();
        let token = mint(&root, &spec(true))?;
        let parsed = parse(&token, &root.public())?;
        let read_only = attenuate(&parsed, true, None)?;
        assert!(v.authorize(&read_only, Operation::Read).is_ok());
        assert!(matches!(v.authorize(&read_only, Operation::Write), Err(AuthError::Forbidden(_))));
        let expired = attenuate(&parsed, false, Some(Duration::ZERO))?;
        assert!(matches!(v.authorize(&expired, Operation::Read), Err(AuthError::Expired)));
        Ok(())
    }

    #[test]
    fn expired_token_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let (root, v) = setup();
        let token = mint(&root, &TokenSpec { ttl: Duration::ZERO, ..spec(true) })?;
        assert!(matches!(v.authorize(&token, Operation::Read), Err(AuthError::Expired)));
        Ok(())
    }

    #[test]
    fn other_keys_and_garbage_are_invalid() -> Result<(), Box<dyn std::error::Error>> {
        let (_, v) = setup();
        let other = generate_root();
        let token = mint(&other, &spec(true))?;
        assert!(matches!(v.authorize(&token, Operation::Read), Err(AuthError::Invalid(_))));
        assert!(matches!(v.authorize("garbage", Operation::Read), Err(AuthError::Invalid(_))));
        assert!(matches!(v.authorize("", Operation::Read), Err(AuthError::Invalid(_))));
        let huge = "A".repeat(MAX_TOKEN_BYTES + 1);
        assert!(matches!(v.authorize(&huge, Operation::Read), Err(AuthError::Invalid(_))));
        Ok(())
    }

    #[test]
    fn revoked_token_and_its_attenuations_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let (root, v) = setup();
        let token = mint(&root, &spec(true))?;
        let parsed = parse(&token, &root.public())?;
        let child = attenuate(&parsed, true, None)?;
        let sibling = attenuate(&parsed, false, Some(Duration::from_secs(60)))?;
        // Revoking a child leaves its parent and siblings alone.
        v.revocations().insert(own_revocation_id(&parse(&child, &root.public())?));
        assert!(matches!(v.authorize(&child, Operation::Read), Err(AuthError::Revoked)));
        assert!(v.authorize(&token, Operation::Read).is_ok());
        assert!(v.authorize(&sibling, Operation::Read).is_ok());
        // Revoking the root token takes every attenuation with it.
        v.revocations().insert(own_revocation_id(&parsed));
        assert!(matches!(v.authorize(&token, Operation::Read), Err(AuthError::Revoked)));
        assert!(matches!(v.authorize(&sibling, Operation::Read), Err(AuthError::Revoked)));
        Ok(())
    }

    #[test]
    fn remembered_authorizations_still_honour_revocation_and_expiry() -> Result<(), Box<dyn std::error::Error>> {
        let (root, v) = setup();
        let token = mint(&root, &spec(true))?;
        assert!(v.authorize(&token, Operation::Write).is_ok());
        assert!(v.authorize(&token, Operation::Write).is_ok(), "a cache hit");
        assert!(matches!(v.authorize(&token, Operation::Admin), Err(AuthError::Forbidden(_))), "per operation");
        v.revocations().insert(own_revocation_id(&parse(&token, &root.public())?));
        assert!(matches!(v.authorize(&token, Operation::Write), Err(AuthError::Revoked)));

        let short = mint(&root, &TokenSpec { ttl: Duration::from_secs(1), ..spec(true) })?;
        assert_expires_within_a_second(&v, &short);
        Ok(())
    }

    /// Authorized now (and so possibly remembered), refused as expired 1.1 s later.
    fn assert_expires_within_a_second(v: &Verifier, token: &str) {
        assert!(v.authorize(token, Operation::Read).is_ok());
        std::thread::sleep(Duration::from_millis(1100));
        assert!(matches!(v.authorize(token, Operation::Read), Err(AuthError::Expired)));
    }

    #[test]
    fn attenuated_tokens_are_always_checked_in_full() -> Result<(), Box<dyn std::error::Error>> {
        let (root, v) = setup();
        let parsed = parse(&mint(&root, &spec(true))?, &root.public())?;
        // Expires in 1 s through an attenuation block the cache cannot see into.
        let child = attenuate(&parsed, false, Some(Duration::from_secs(1)))?;
        assert_expires_within_a_second(&v, &child);
        Ok(())
    }

    #[test]
    fn device_binding_is_read() -> Result<(), Box<dyn std::error::Error>> {
        let (root, v) = setup();
        let token = mint(&root, &TokenSpec { device: Some(DeviceId::new("phone")?), ..spec(true) })?;
        assert_eq!(v.authorize(&token, Operation::Write)?.device, Some(DeviceId::new("phone")?));
        Ok(())
    }

    #[test]
    fn describe_names_the_facts() -> Result<(), Box<dyn std::error::Error>> {
        let (root, _) = setup();
        let token = mint(&root, &TokenSpec { device: Some(DeviceId::new("phone")?), ..spec(false) })?;
        let text = describe(&parse(&token, &root.public())?, &HashSet::new());
        assert!(text.contains("user:      alice\n"), "{text}");
        assert!(text.contains("device:    phone\n"), "{text}");
        assert!(text.contains("rights:    read\n"), "{text}");
        assert!(text.contains("(in 59m"), "{text}");
        assert!(text.contains("revocation ids:"), "{text}");
        Ok(())
    }

    #[test]
    fn names_with_quotes_cannot_inject_datalog() -> Result<(), Box<dyn std::error::Error>> {
        let (root, v) = setup();
        let sneaky = TokenSpec { device: Some(DeviceId::new(r#"x");right("admin"#)?), ..spec(false) };
        let token = mint(&root, &sneaky)?;
        assert!(matches!(v.authorize(&token, Operation::Admin), Err(AuthError::Forbidden(_))));
        Ok(())
    }
}
