//! Rate limits: how fast a device, a user and a client address may push and
//! connect, and how many WebSocket sessions a user may hold open at once
//! (`[rate_limits]` in the config file; docs/operations.md explains the defaults).
//!
//! Each limit is a token bucket, kept as GCRA: one "theoretical arrival time" per
//! bucket, the moment the bucket will be full again. A bucket whose time has passed
//! is full, exactly like a bucket never seen, so forgetting it loses nothing: the
//! tables evict such idle entries whenever they reach their capacity, and an
//! attacker who cycles keys (device names, addresses) cannot grow them without
//! bound. The tables are sharded, each shard behind its own mutex.
//!
//! A push is charged to its device's buckets and to its user's buckets in one step
//! (both shards locked, device table first): it passes all of them or is charged
//! to none. A charge larger than a bucket's burst is lowered to the burst, so a
//! push that is allowed by the size limits always passes once its buckets are full.
//! The clock is injected, so the arithmetic is tested without sleeping.

use std::collections::HashMap;
use std::hash::{BuildHasher as _, Hash, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::ids::{DeviceId, UserId};

/// One token bucket: a sustained rate and the burst a client may spend at once
/// after being idle.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Tokens added per second; 0 turns the bucket off.
    pub per_second: f64,
    /// The most tokens the bucket holds (at least 1).
    pub burst: f64,
}

impl Rate {
    /// A bucket of `per_second` with room for `burst`.
    pub const fn new(per_second: f64, burst: f64) -> Self {
        Self { per_second, burst }
    }

    /// A bucket that never refuses.
    pub const OFF: Rate = Rate::new(0.0, 0.0);

    fn is_on(self) -> bool {
        self.per_second > 0.0
    }
}

/// The `[rate_limits]` settings. Every rate may be 0 (that limit is off), and
/// `enabled = false` turns them all off (benchmarks).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    /// Whether any rate limit applies.
    pub enabled: bool,
    /// Pushes (HTTP and WebSocket) per device.
    pub device_pushes: Rate,
    /// Ops pushed per device.
    pub device_ops: Rate,
    /// Payload bytes pushed per device.
    pub device_bytes: Rate,
    /// Pushes per user, all devices together.
    pub user_pushes: Rate,
    /// Ops pushed per user.
    pub user_ops: Rate,
    /// Payload bytes pushed per user.
    pub user_bytes: Rate,
    /// WebSocket sessions and long-polls opened per device.
    pub device_connects: Rate,
    /// WebSocket sessions and long-polls opened per user.
    pub user_connects: Rate,
    /// WebSocket sessions one user may hold open on this node (0: no cap).
    pub max_sessions_per_user: usize,
    /// Requests that fail authentication, per client address.
    pub unauthenticated: Rate,
    /// Proxies (addresses or CIDR blocks) whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<String>,
}

impl Default for RateLimits {
    fn default() -> Self {
        const MIB: f64 = 1024.0 * 1024.0;
        Self {
            enabled: true,
            device_pushes: Rate::new(100.0, 200.0),
            device_ops: Rate::new(5_000.0, 10_000.0),
            device_bytes: Rate::new(8.0 * MIB, 16.0 * MIB),
            user_pushes: Rate::new(400.0, 800.0),
            user_ops: Rate::new(20_000.0, 40_000.0),
            user_bytes: Rate::new(32.0 * MIB, 64.0 * MIB),
            device_connects: Rate::new(10.0, 30.0),
            user_connects: Rate::new(40.0, 120.0),
            max_sessions_per_user: 100,
            unauthenticated: Rate::new(20.0, 50.0),
            trusted_proxies: Vec::new(),
        }
    }
}

impl RateLimits {
    /// Every limit off, but enabled: set the ones a test needs.
    pub fn none() -> Self {
        Self {
            enabled: true,
            device_pushes: Rate::OFF,
            device_ops: Rate::OFF,
            device_bytes: Rate::OFF,
            user_pushes: Rate::OFF,
            user_ops: Rate::OFF,
            user_bytes: Rate::OFF,
            device_connects: Rate::OFF,
            user_connects: Rate::OFF,
            max_sessions_per_user: 0,
            unauthenticated: Rate::OFF,
            trusted_proxies: Vec::new(),
        }
    }

    /// Checks every value: `(setting, reason)` for the first bad one.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (name, rate) in [
            ("rate_limits.device_pushes", self.device_pushes),
            ("rate_limits.device_ops", self.device_ops),
            ("rate_limits.device_bytes", self.device_bytes),
            ("rate_limits.user_pushes", self.user_pushes),
            ("rate_limits.user_ops", self.user_ops),
            ("rate_limits.user_bytes", self.user_bytes),
            ("rate_limits.device_connects", self.device_connects),
            ("rate_limits.user_connects", self.user_connects),
            ("rate_limits.unauthenticated", self.unauthenticated),
        ] {
            if !rate.per_second.is_finite() || rate.per_second < 0.0 {
                return Err((name, "per_second must be a number >= 0 (0: off)".into()));
            }
            if rate.is_on() && !(rate.burst.is_finite() && rate.burst >= 1.0) {
                return Err((name, "burst must be at least 1".into()));
            }
        }
        for proxy in &self.trusted_proxies {
            Net::parse(proxy).map_err(|reason| ("rate_limits.trusted_proxies", reason))?;
        }
        Ok(())
    }
}

/// What a refusal was about (the `scope` label of `opsync_rate_limited_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A device's pushes, ops or bytes.
    DevicePush,
    /// A user's pushes, ops or bytes.
    UserPush,
    /// A device's WebSocket sessions and long-polls.
    DeviceConnect,
    /// A user's WebSocket sessions and long-polls.
    UserConnect,
    /// A user's open WebSocket sessions.
    Sessions,
    /// A client address's failed authentications.
    Unauthenticated,
}

impl Scope {
    /// Every scope, in the order `/metrics` lists them.
    pub const ALL: [Scope; 6] = [
        Scope::DevicePush,
        Scope::UserPush,
        Scope::DeviceConnect,
        Scope::UserConnect,
        Scope::Sessions,
        Scope::Unauthenticated,
    ];

    /// Its label.
    pub fn label(self) -> &'static str {
        match self {
            Scope::DevicePush => "device_push",
            Scope::UserPush => "user_push",
            Scope::DeviceConnect => "device_connect",
            Scope::UserConnect => "user_connect",
            Scope::Sessions => "sessions",
            Scope::Unauthenticated => "unauthenticated",
        }
    }

    /// What was refused, for the error message.
    fn describe(self) -> &'static str {
        match self {
            Scope::DevicePush => "this device pushes faster than its rate limit",
            Scope::UserPush => "this user's devices push faster than the user's rate limit",
            Scope::DeviceConnect => "this device connects faster than its rate limit",
            Scope::UserConnect => "this user's devices connect faster than the user's rate limit",
            Scope::Sessions => "this user has as many WebSocket sessions open as allowed",
            Scope::Unauthenticated => "too many requests with a missing or invalid token from this address",
        }
    }
}

/// A request a limit refused: nothing of it was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Which limit.
    pub scope: Scope,
    /// How long until the same request would pass (if nothing else is spent meanwhile).
    pub retry_after: Duration,
}

impl std::fmt::Display for Limited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: retry in {:.3} s", self.scope.describe(), self.retry_after.as_secs_f64())
    }
}

/// How long a client refused for too many sessions is told to wait: sessions do
/// not end on a schedule.
const SESSIONS_RETRY: Duration = Duration::from_secs(5);

/// A monotonic clock, injected so tests control time.
pub trait Clock: Send + Sync + 'static {
    /// Time since a fixed origin.
    fn now(&self) -> Duration;
}

/// The real clock.
#[derive(Debug)]
pub struct Monotonic(Instant);

impl Default for Monotonic {
    fn default() -> Self {
        Self(Instant::now())
    }
}

impl Clock for Monotonic {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// Refusals so far, by scope.
#[derive(Debug, Default)]
pub struct LimitStats {
    refused: [AtomicU64; Scope::ALL.len()],
}

impl LimitStats {
    fn count(&self, scope: Scope) {
        if let Some(i) = Scope::ALL.iter().position(|s| *s == scope) {
            self.refused[i].fetch_add(1, Relaxed);
        }
    }

    /// Requests refused by `scope` so far.
    pub fn refused(&self, scope: Scope) -> u64 {
        Scope::ALL.iter().position(|s| *s == scope).map_or(0, |i| self.refused[i].load(Relaxed))
    }
}

/// One key's buckets: the time (ns on the limiter's clock) each is full again.
type Entry = [u64; 4];

/// The buckets of a user or a device entry.
#[derive(Debug, Clone, Copy)]
enum Bucket {
    Pushes = 0,
    Ops = 1,
    Bytes = 2,
    Connects = 3,
}

/// A cost to take from one bucket.
#[derive(Debug, Clone, Copy)]
struct Charge {
    bucket: Bucket,
    rate: Rate,
    cost: f64,
}

impl Charge {
    fn new(bucket: Bucket, rate: Rate, cost: f64) -> Self {
        Self { bucket, rate, cost }
    }
}

/// GCRA for one bucket whose full-again time is `tat`: the new full-again time,
/// or how long to wait (ns) before `cost` fits.
fn spend(tat: u64, now: u64, rate: Rate, cost: f64) -> Result<u64, u64> {
    if !rate.is_on() || cost <= 0.0 {
        return Ok(tat);
    }
    let interval = 1e9 / rate.per_second;
    let tolerance = rate.burst * interval;
    let debt = tat.saturating_sub(now) as f64 + cost.min(rate.burst) * interval;
    // Half a nanosecond of slack for the float arithmetic.
    if debt > tolerance + 0.5 {
        return Err((debt - tolerance).ceil() as u64);
    }
    Ok(now.saturating_add(debt.round() as u64))
}

/// Every charge against one entry: the entry after them all, or the longest wait.
fn spend_all(entry: &Entry, now: u64, charges: &[Charge]) -> Result<Entry, u64> {
    let mut next = *entry;
    let mut wait = 0;
    for charge in charges {
        match spend(entry[charge.bucket as usize], now, charge.rate, charge.cost) {
            Ok(tat) => next[charge.bucket as usize] = tat,
            Err(w) => wait = wait.max(w),
        }
    }
    if wait > 0 { Err(wait) } else { Ok(next) }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Shards per table.
const SHARDS: usize = 64;
/// Entries per table, all shards together (about 100 bytes each).
const TABLE_CAPACITY: usize = 65_536;

/// A bounded, sharded map from keys to bucket entries.
struct Table<K> {
    shards: Box<[Mutex<HashMap<K, Entry>>]>,
    hasher: RandomState,
    per_shard: usize,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, key: &K) -> &Mutex<HashMap<K, Entry>> {
        &self.shards[(self.hasher.hash_one(key) % SHARDS as u64) as usize]
    }

    /// Entries held, all shards together.
    fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

/// Stores `entry` under `key` in a locked shard holding at most `cap` entries:
/// idle entries (every bucket full) go first, then the one nearest to idle.
fn store<K: Hash + Eq + Clone>(map: &mut HashMap<K, Entry>, key: &K, entry: Entry, now: u64, cap: usize) {
    if let Some(slot) = map.get_mut(key) {
        *slot = entry;
        return;
    }
    if map.len() >= cap {
        map.retain(|_, e| e.iter().any(|&tat| tat > now));
        if map.len() >= cap
            && let Some(nearest) = map.iter().min_by_key(|(_, e)| e.iter().max().copied()).map(|(k, _)| k.clone())
        {
            map.remove(&nearest);
        }
    }
    map.insert(key.clone(), entry);
}

/// The rate limiter of one node: every bucket and the open-session counts.
pub struct RateLimiter {
    config: RateLimits,
    proxies: Vec<Net>,
    clock: Arc<dyn Clock>,
    devices: Table<(UserId, DeviceId)>,
    users: Table<UserId>,
    addresses: Table<IpAddr>,
    sessions: Arc<Mutex<HashMap<UserId, usize>>>,
    stats: LimitStats,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").field("config", &self.config).finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limiter with these (validated) settings on the real clock.
    pub fn new(config: RateLimits) -> Self {
        Self::with_clock(config, Arc::new(Monotonic::default()))
    }

    /// A limiter on `clock` (tests).
    pub fn with_clock(config: RateLimits, clock: Arc<dyn Clock>) -> Self {
        Self::with_capacity(config, clock, TABLE_CAPACITY)
    }

    fn with_capacity(config: RateLimits, clock: Arc<dyn Clock>, capacity: usize) -> Self {
        let proxies = config.trusted_proxies.iter().filter_map(|p| Net::parse(p).ok()).collect();
        Self {
            config,
            proxies,
            clock,
            devices: Table::new(capacity),
            users: Table::new(capacity),
            addresses: Table::new(capacity),
            sessions: Arc::default(),
            stats: LimitStats::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &RateLimits {
        &self.config
    }

    /// Refusals so far.
    pub fn stats(&self) -> &LimitStats {
        &self.stats
    }

    fn now(&self) -> u64 {
        u64::try_from(self.clock.now().as_nanos()).unwrap_or(u64::MAX)
    }

    fn refuse(&self, scope: Scope, wait_ns: u64) -> Limited {
        self.stats.count(scope);
        Limited { scope, retry_after: Duration::from_nanos(wait_ns) }
    }

    /// Charges a push of `ops` ops and `bytes` payload bytes to its device (if
    /// known) and its user: all or nothing.
    pub fn check_push(
        &self,
        user: &UserId,
        device: Option<&DeviceId>,
        ops: usize,
        bytes: usize,
    ) -> Result<(), Limited> {
        let c = &self.config;
        let (ops, bytes) = (ops as f64, bytes as f64);
        let on_device = [
            Charge::new(Bucket::Pushes, c.device_pushes, 1.0),
            Charge::new(Bucket::Ops, c.device_ops, ops),
            Charge::new(Bucket::Bytes, c.device_bytes, bytes),
        ];
        let on_user = [
            Charge::new(Bucket::Pushes, c.user_pushes, 1.0),
            Charge::new(Bucket::Ops, c.user_ops, ops),
            Charge::new(Bucket::Bytes, c.user_bytes, bytes),
        ];
        self.charge(user, device, &on_device, &on_user, (Scope::DevicePush, Scope::UserPush), true)
    }

    /// Whether a push from this device and user would be refused now, whatever
    /// its size (nothing is charged): lets a handler refuse before reading a body.
    pub fn push_limited(&self, user: &UserId, device: Option<&DeviceId>) -> Result<(), Limited> {
        let c = &self.config;
        let on_device = [Charge::new(Bucket::Pushes, c.device_pushes, 1.0)];
        let on_user = [Charge::new(Bucket::Pushes, c.user_pushes, 1.0)];
        self.charge(user, device, &on_device, &on_user, (Scope::DevicePush, Scope::UserPush), false)
    }

    /// Charges a WebSocket session or a long-poll to its device (if known) and user.
    pub fn check_connect(&self, user: &UserId, device: Option<&DeviceId>) -> Result<(), Limited> {
        self.connect(user, device, true)
    }

    /// Whether [`RateLimiter::check_connect`] would refuse now (nothing is charged).
    pub fn connect_limited(&self, user: &UserId, device: Option<&DeviceId>) -> Result<(), Limited> {
        self.connect(user, device, false)
    }

    fn connect(&self, user: &UserId, device: Option<&DeviceId>, commit: bool) -> Result<(), Limited> {
        let c = &self.config;
        let on_device = [Charge::new(Bucket::Connects, c.device_connects, 1.0)];
        let on_user = [Charge::new(Bucket::Connects, c.user_connects, 1.0)];
        self.charge(user, device, &on_device, &on_user, (Scope::DeviceConnect, Scope::UserConnect), commit)
    }

    /// Charges (or with `commit` false, only tries) the device's and the user's
    /// buckets together. Lock order: the device table's shard, then the user's.
    fn charge(
        &self,
        user: &UserId,
        device: Option<&DeviceId>,
        on_device: &[Charge],
        on_user: &[Charge],
        (device_scope, user_scope): (Scope, Scope),
        commit: bool,
    ) -> Result<(), Limited> {
        let on = |charges: &[Charge]| charges.iter().any(|c| c.rate.is_on());
        if !self.config.enabled || !(on(on_device) || on(on_user)) {
            return Ok(());
        }
        let now = self.now();
        // A table whose buckets are all off is not even looked at.
        let device_key = device.filter(|_| on(on_device)).map(|d| (user.clone(), d.clone()));
        let mut device_shard = device_key.as_ref().map(|key| (key, lock(self.devices.shard(key))));
        let mut user_shard = lock(self.users.shard(user));
        let device_before = device_shard.as_ref().map(|(key, map)| map.get(*key).copied().unwrap_or_default());
        let device_after = device_before.map(|entry| spend_all(&entry, now, on_device)).transpose();
        let user_before = user_shard.get(user).copied().unwrap_or_default();
        let user_after = spend_all(&user_before, now, on_user);
        match (device_after, user_after) {
            (Err(d), Err(u)) if d >= u => Err(self.refuse(device_scope, d)),
            (Err(d), Ok(_)) => Err(self.refuse(device_scope, d)),
            (_, Err(u)) => Err(self.refuse(user_scope, u)),
            (Ok(device_after), Ok(user_after)) => {
                if commit {
                    if let (Some((key, map)), Some(after)) = (device_shard.as_mut(), device_after)
                        && Some(after) != device_before
                    {
                        store(map, key, after, now, self.devices.per_shard);
                    }
                    if user_after != user_before {
                        store(&mut user_shard, user, user_after, now, self.users.per_shard);
                    }
                }
                Ok(())
            }
        }
    }

    /// A request from `client` failed authentication (no token, or an invalid,
    /// expired or revoked one): charges the address, and refuses once it has
    /// failed more often than its budget.
    pub fn auth_failed(&self, client: Option<IpAddr>) -> Result<(), Limited> {
        self.unauthenticated(client, true)
    }

    /// Whether the address is over its budget of failed authentications now
    /// (nothing is charged).
    pub fn unauthenticated_limited(&self, client: Option<IpAddr>) -> Result<(), Limited> {
        self.unauthenticated(client, false)
    }

    fn unauthenticated(&self, client: Option<IpAddr>, commit: bool) -> Result<(), Limited> {
        let rate = self.config.unauthenticated;
        let Some(ip) = client.map(address_key) else { return Ok(()) };
        if !self.config.enabled || !rate.is_on() {
            return Ok(());
        }
        let now = self.now();
        let mut shard = lock(self.addresses.shard(&ip));
        let before = shard.get(&ip).copied().unwrap_or_default();
        match spend(before[0], now, rate, 1.0) {
            Err(wait) => Err(self.refuse(Scope::Unauthenticated, wait)),
            Ok(tat) => {
                if commit {
                    store(&mut shard, &ip, [tat, 0, 0, 0], now, self.addresses.per_shard);
                }
                Ok(())
            }
        }
    }

    /// Takes one of the user's WebSocket session slots, held until the returned
    /// slot is dropped.
    pub fn open_session(&self, user: &UserId) -> Result<SessionSlot, Limited> {
        let cap = self.config.max_sessions_per_user;
        if !self.config.enabled || cap == 0 {
            return Ok(SessionSlot { user: user.clone(), sessions: None });
        }
        let mut open = lock(&self.sessions);
        let count = open.entry(user.clone()).or_insert(0);
        if *count >= cap {
            drop(open);
            return Err(self.refuse(Scope::Sessions, SESSIONS_RETRY.as_nanos() as u64));
        }
        *count += 1;
        Ok(SessionSlot { user: user.clone(), sessions: Some(self.sessions.clone()) })
    }

    /// The client's address: the peer, or, when the peer is a trusted proxy, the
    /// last address in `X-Forwarded-For` that is not a trusted proxy.
    pub fn client_ip(&self, peer: Option<IpAddr>, headers: &actix_web::http::header::HeaderMap) -> Option<IpAddr> {
        let peer = peer?;
        if !self.trusted(peer) {
            return Some(peer);
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|hop| hop.trim().parse::<IpAddr>())
            .collect::<Result<_, _>>()
            .unwrap_or_default();
        Some(forwarded.into_iter().rev().find(|hop| !self.trusted(*hop)).unwrap_or(peer))
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.proxies.iter().any(|net| net.contains(ip))
    }

    /// Entries held in the bucket tables (devices, users, addresses).
    pub fn entries(&self) -> (usize, usize, usize) {
        (self.devices.len(), self.users.len(), self.addresses.len())
    }
}

/// One of a user's WebSocket session slots; dropping it frees the slot.
#[derive(Debug)]
pub struct SessionSlot {
    user: UserId,
    sessions: Option<Arc<Mutex<HashMap<UserId, usize>>>>,
}

impl SessionSlot {
    /// The user whose slot this is.
    pub fn user(&self) -> &UserId {
        &self.user
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let Some(sessions) = &self.sessions else { return };
        let mut open = lock(sessions);
        if let Some(count) = open.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

/// The key an address is limited by: IPv4 addresses one by one, IPv6 by /64
/// (what one subscriber usually gets).
fn address_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & (u128::MAX << 64)).into()),
        v4 => v4,
    }
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An address block: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    addr: IpAddr,
    prefix: u32,
}

impl Net {
    fn parse(text: &str) -> Result<Net, String> {
        let bad = || format!("{text:?} is not an IP address or a CIDR block like 10.0.0.0/8");
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix.parse::<u32>().map_err(|_| bad())?)),
            None => (text.trim(), None),
        };
        let addr = canonical(addr.parse::<IpAddr>().map_err(|_| bad())?);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Net { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// A clock tests move by hand.
    #[derive(Default)]
    struct Manual(AtomicU64);

    impl Manual {
        fn advance(&self, d: Duration) {
            self.0.fetch_add(d.as_nanos() as u64, Relaxed);
        }
    }

    impl Clock for Manual {
        fn now(&self) -> Duration {
            Duration::from_nanos(self.0.load(Relaxed))
        }
    }

    fn limiter(config: RateLimits) -> (RateLimiter, Arc<Manual>) {
        let clock = Arc::new(Manual::default());
        // Start away from zero, as a real clock would be.
        clock.advance(Duration::from_secs(1000));
        (RateLimiter::with_clock(config, clock.clone()), clock)
    }

    fn user(name: &str) -> UserId {
        UserId::new(name).unwrap()
    }

    fn device(name: &str) -> DeviceId {
        DeviceId::new(name).unwrap()
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let config = RateLimits { device_pushes: Rate::new(10.0, 3.0), ..RateLimits::none() };
        let (limits, clock) = limiter(config);
        let (u, d) = (user("u"), device("d"));
        for _ in 0..3 {
            assert!(limits.check_push(&u, Some(&d), 1, 0).is_ok());
        }
        let refused = limits.check_push(&u, Some(&d), 1, 0).unwrap_err();
        assert_eq!(refused.scope, Scope::DevicePush);
        assert_eq!(refused.retry_after, Duration::from_millis(100), "one token every 100 ms");
        clock.advance(Duration::from_millis(99));
        assert!(limits.check_push(&u, Some(&d), 1, 0).is_err());
        clock.advance(Duration::from_millis(1));
        assert!(limits.check_push(&u, Some(&d), 1, 0).is_ok());
        assert!(limits.check_push(&u, Some(&d), 1, 0).is_err());
        // Idle for long: the burst again, never more.
        clock.advance(Duration::from_secs(60));
        for _ in 0..3 {
            assert!(limits.check_push(&u, Some(&d), 1, 0).is_ok());
        }
        assert!(limits.check_push(&u, Some(&d), 1, 0).is_err());
        assert_eq!(limits.stats().refused(Scope::DevicePush), 4);
    }

    #[test]
    fn retry_after_is_when_the_whole_cost_fits() {
        let config = RateLimits { device_ops: Rate::new(100.0, 200.0), ..RateLimits::none() };
        let (limits, clock) = limiter(config);
        let (u, d) = (user("u"), device("d"));
        assert!(limits.check_push(&u, Some(&d), 150, 0).is_ok());
        let refused = limits.check_push(&u, Some(&d), 100, 0).unwrap_err();
        // 50 tokens left; 100 needed: 50 more at 100/s.
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        clock.advance(refused.retry_after);
        assert!(limits.check_push(&u, Some(&d), 100, 0).is_ok());
        // A cost above the burst is lowered to it: it passes once the bucket is full.
        clock.advance(Duration::from_secs(10));
        assert!(limits.check_push(&u, Some(&d), 1000, 0).is_ok());
        assert_eq!(limits.check_push(&u, Some(&d), 1, 0).unwrap_err().retry_after, Duration::from_millis(10));
    }

    #[test]
    fn a_push_is_charged_to_every_bucket_or_to_none() {
        let config = RateLimits {
            device_pushes: Rate::new(1.0, 10.0),
            user_bytes: Rate::new(1000.0, 1000.0),
            ..RateLimits::none()
        };
        let (limits, _clock) = limiter(config);
        let (u, d) = (user("u"), device("d"));
        assert!(limits.check_push(&u, Some(&d), 1, 900).is_ok());
        // The user's bytes refuse it: the device's push bucket is not charged.
        for _ in 0..20 {
            assert_eq!(limits.check_push(&u, Some(&d), 1, 500).unwrap_err().scope, Scope::UserPush);
        }
        for _ in 0..9 {
            assert!(limits.check_push(&u, Some(&d), 1, 0).is_ok(), "9 pushes were left on the device");
        }
        assert_eq!(limits.check_push(&u, Some(&d), 1, 0).unwrap_err().scope, Scope::DevicePush);
    }

    #[test]
    fn devices_and_users_are_separate() {
        let config =
            RateLimits { device_pushes: Rate::new(1.0, 2.0), user_pushes: Rate::new(1.0, 3.0), ..RateLimits::none() };
        let (limits, _clock) = limiter(config);
        let (alice, bob) = (user("alice"), user("bob"));
        let (phone, laptop) = (device("phone"), device("laptop"));
        assert!(limits.check_push(&alice, Some(&phone), 1, 0).is_ok());
        assert!(limits.check_push(&alice, Some(&phone), 1, 0).is_ok());
        assert_eq!(limits.check_push(&alice, Some(&phone), 1, 0).unwrap_err().scope, Scope::DevicePush);
        // Another device of the same user: its own bucket, but the user's third push is its last.
        assert!(limits.check_push(&alice, Some(&laptop), 1, 0).is_ok());
        assert_eq!(limits.check_push(&alice, Some(&laptop), 1, 0).unwrap_err().scope, Scope::UserPush);
        assert_eq!(limits.check_push(&alice, None, 1, 0).unwrap_err().scope, Scope::UserPush);
        // Another user with the same device name: untouched.
        assert!(limits.check_push(&bob, Some(&phone), 1, 0).is_ok());
        assert!(limits.push_limited(&bob, Some(&phone)).is_ok());
        assert!(limits.push_limited(&alice, Some(&laptop)).is_err(), "the peek sees the user's bucket");
    }

    #[test]
    fn peeks_charge_nothing() {
        let config = RateLimits { device_connects: Rate::new(1.0, 1.0), ..RateLimits::none() };
        let (limits, _clock) = limiter(config);
        let (u, d) = (user("u"), device("d"));
        for _ in 0..5 {
            assert!(limits.connect_limited(&u, Some(&d)).is_ok());
        }
        assert!(limits.check_connect(&u, Some(&d)).is_ok());
        assert!(limits.connect_limited(&u, Some(&d)).is_err());
        assert_eq!(limits.check_connect(&u, Some(&d)).unwrap_err().scope, Scope::DeviceConnect);
    }

    #[test]
    fn failed_authentications_are_limited_per_address() {
        let config = RateLimits { unauthenticated: Rate::new(2.0, 3.0), ..RateLimits::none() };
        let (limits, clock) = limiter(config);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(limits.auth_failed(Some(a)).is_ok());
        }
        let refused = limits.auth_failed(Some(a)).unwrap_err();
        assert_eq!((refused.scope, refused.retry_after), (Scope::Unauthenticated, Duration::from_millis(500)));
        assert!(limits.unauthenticated_limited(Some(a)).is_err());
        assert!(limits.auth_failed(Some(b)).is_ok(), "another address is not affected");
        assert!(limits.auth_failed(None).is_ok(), "no address: not limited");
        clock.advance(Duration::from_millis(500));
        assert!(limits.unauthenticated_limited(Some(a)).is_ok());
        // IPv6 addresses count by /64.
        let v6a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let v6c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        for _ in 0..3 {
            assert!(limits.auth_failed(Some(v6a)).is_ok());
        }
        assert!(limits.auth_failed(Some(v6b)).is_err());
        assert!(limits.auth_failed(Some(v6c)).is_ok());
    }

    #[test]
    fn sessions_are_capped_per_user_and_freed_on_drop() {
        let config = RateLimits { max_sessions_per_user: 2, ..RateLimits::none() };
        let (limits, _clock) = limiter(config);
        let u = user("u");
        let one = limits.open_session(&u).unwrap();
        let two = limits.open_session(&u).unwrap();
        assert_eq!(limits.open_session(&u).unwrap_err().scope, Scope::Sessions);
        assert!(limits.open_session(&user("v")).is_ok());
        drop(one);
        let three = limits.open_session(&u).unwrap();
        drop((two, three));
        assert!(lock(&limits.sessions).is_empty(), "no entry left for a user without sessions");
    }

    #[test]
    fn disabled_limits_refuse_nothing() {
        let config = RateLimits { enabled: false, ..RateLimits::default() };
        let (limits, _clock) = limiter(config);
        let (u, d) = (user("u"), device("d"));
        for _ in 0..10_000 {
            assert!(limits.check_push(&u, Some(&d), 1000, 1 << 20).is_ok());
        }
        let ip = Some("192.0.2.1".parse().unwrap());
        for _ in 0..1000 {
            assert!(limits.auth_failed(ip).is_ok());
        }
        let slots: Vec<_> = (0..1000).map(|_| limits.open_session(&u).unwrap()).collect();
        assert_eq!(slots.len(), 1000);
        assert_eq!(limits.entries(), (0, 0, 0));
    }

    #[test]
    fn tables_stay_bounded_when_keys_cycle() {
        let config = RateLimits { device_pushes: Rate::new(1.0, 5.0), ..RateLimits::none() };
        let clock = Arc::new(Manual::default());
        let limits = RateLimiter::with_capacity(config, clock.clone(), SHARDS * 4);
        let u = user("u");
        // An attacker cycling device names: every one is new and busy.
        for i in 0..10_000 {
            assert!(limits.check_push(&u, Some(&device(&format!("d{i}"))), 1, 0).is_ok());
        }
        assert!(limits.entries().0 <= SHARDS * 4, "{:?}", limits.entries());
        // Idle entries are swept before anything else.
        clock.advance(Duration::from_secs(10));
        let keep = device("keep");
        for _ in 0..5 {
            assert!(limits.check_push(&u, Some(&keep), 1, 0).is_ok());
        }
        for i in 0..1000 {
            limits.check_push(&u, Some(&device(&format!("e{i}"))), 1, 0).unwrap();
            clock.advance(Duration::from_secs(2));
        }
        assert!(limits.entries().0 <= SHARDS * 4);
    }

    #[test]
    fn forwarded_addresses_count_only_behind_trusted_proxies() {
        use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
        let config = RateLimits { trusted_proxies: vec!["10.0.0.0/8".into(), "::1".into()], ..RateLimits::none() };
        assert!(config.validate().is_ok());
        let (limits, _clock) = limiter(config);
        let mut headers = HeaderMap::new();
        headers.insert(HeaderName::from_static("x-forwarded-for"), HeaderValue::from_static("198.51.100.7, 10.1.2.3"));
        let proxy: IpAddr = "10.9.9.9".parse().unwrap();
        let stranger: IpAddr = "203.0.113.5".parse().unwrap();
        assert_eq!(limits.client_ip(Some(proxy), &headers), Some("198.51.100.7".parse().unwrap()));
        assert_eq!(limits.client_ip(Some("::1".parse().unwrap()), &headers), Some("198.51.100.7".parse().unwrap()));
        assert_eq!(limits.client_ip(Some(stranger), &headers), Some(stranger), "an untrusted peer's header is ignored");
        assert_eq!(limits.client_ip(Some(proxy), &HeaderMap::new()), Some(proxy));
        headers.insert(HeaderName::from_static("x-forwarded-for"), HeaderValue::from_static("garbage"));
        assert_eq!(limits.client_ip(Some(proxy), &headers), Some(proxy));
        let bad = RateLimits { trusted_proxies: vec!["10.0.0.0/33".into()], ..RateLimits::none() };
        assert!(bad.validate().is_err());
        let bad = RateLimits { device_ops: Rate::new(10.0, 0.5), ..RateLimits::none() };
        assert!(bad.validate().is_err());
        assert!(RateLimits::default().validate().is_ok());
    }
}
