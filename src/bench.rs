//! `opsync bench`: a load generator that drives a running server over real HTTP and
//! WebSocket connections and reports latency percentiles (HdrHistogram). It mints
//! its tokens with the server's root key (same settings as `opsync serve`), so run
//! it on the server's machine or give it the key.
//!
//! Load is open-loop: pushes are scheduled at a fixed rate and each latency is
//! measured from its scheduled time, so a slow answer cannot hide by delaying the
//! next request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use hdrhistogram::Histogram;

use crate::auth::{self, TokenSpec};
use crate::client::Client;
use crate::client::ws::{self, TokenIn, WsConn};
use crate::ids::{DeviceId, OpId, Seq, UserId};
use crate::log::now_us;
use crate::protocol::{NewOp, Payload, PushRequest};
use crate::realtime::messages::{ClientMsg, ServerMsg};

/// `opsync bench …`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// U users × D devices connected over WebSocket; pushes over HTTP at a fixed
    /// rate; measures commit-to-delivery latency (the server stamps the commit time).
    Fanout {
        /// The server's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
        /// Users.
        #[arg(long, default_value_t = 1)]
        users: usize,
        /// Connected devices per user.
        #[arg(long, default_value_t = 300)]
        devices: usize,
        /// Pushes per second, all users together.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// How long to push, e.g. 10s.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Payload bytes per op.
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// The server's process id, to report its memory.
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// N pushers × B-op batches over HTTP or WebSocket: ops/s and push-ack latency.
    Ingest(Ingest),
    /// C idle authenticated WebSockets: connects/s and the server's memory per connection.
    Connections(Connections),
    /// Pull one user's whole log over HTTP MessagePack pages and over WebSocket: ops/s, MB/s.
    Catchup(Catchup),
    /// A new device of a user with N ops: time to fully synced without and with a snapshot.
    Bootstrap(Bootstrap),
    /// Every scenario, seconds-long and small (CI proves they work; figures are noisy).
    Quick {
        #[command(flatten)]
        target: Target,
    },
}

/// The server under test.
#[derive(Debug, Clone, Args)]
struct Target {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// The server's process id, to report its memory.
    #[arg(long)]
    server_pid: Option<u32>,
}

/// How pushes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Transport {
    /// `POST /v1/ops` (MessagePack), one connection per pusher.
    Http,
    /// `push` messages on one WebSocket per pusher, pipelined by request id.
    Ws,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Http => "HTTP",
            Transport::Ws => "WebSocket",
        }
    }
}

#[derive(Debug, Clone, Args)]
struct Ingest {
    #[command(flatten)]
    target: Target,
    /// Concurrent pushers (connections).
    #[arg(long, default_value_t = 16)]
    pushers: usize,
    /// Ops per push.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// HTTP or WebSocket.
    #[arg(long, value_enum, default_value_t = Transport::Http)]
    transport: Transport,
    /// How long to push, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Pushes per second, all pushers together, open loop; 0: closed loop (each
    /// pusher pushes again as soon as it has its answer).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Users the pushers are spread over (default: one per pusher; 1: a hot user).
    #[arg(long)]
    users: Option<usize>,
    /// Payload bytes per op.
    #[arg(long, default_value_t = 64)]
    payload: usize,
}

#[derive(Debug, Clone, Args)]
struct Connections {
    #[command(flatten)]
    target: Target,
    /// WebSockets to hold.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Users the connections belong to (default: one per connection).
    #[arg(long)]
    users: Option<usize>,
    /// Connections opened at a time.
    #[arg(long, default_value_t = 64)]
    parallel: usize,
    /// How long to hold them once all are open, e.g. 30s.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    hold: Duration,
}

#[derive(Debug, Clone, Args)]
struct Catchup {
    #[command(flatten)]
    target: Target,
    /// Ops in the log.
    #[arg(long, default_value_t = 100_000)]
    ops: usize,
    /// Ops per HTTP page (the server caps it at its max_page_ops).
    #[arg(long, default_value_t = 1000)]
    page: usize,
    /// Payload bytes per op.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Timed pulls per transport (the report gives each and the median).
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

#[derive(Debug, Clone, Args)]
struct Bootstrap {
    #[command(flatten)]
    target: Target,
    /// Ops in the log.
    #[arg(long, default_value_t = 100_000)]
    ops: usize,
    /// Entities the ops write to (the snapshot holds the newest payload of each).
    #[arg(long, default_value_t = 10_000)]
    entities: usize,
    /// Ops after the snapshot.
    #[arg(long, default_value_t = 1000)]
    tail: usize,
    /// Ops per page.
    #[arg(long, default_value_t = 1000)]
    page: usize,
    /// Timed bootstraps of each kind (the report gives the median).
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

/// Runs a scenario.
pub fn run(config: &crate::config::Config, args: BenchArgs) -> anyhow::Result<()> {
    let key = crate::cli::root_key(config, false)?;
    let outcome = actix_web::rt::System::new().block_on(async move {
        match args.scenario {
            Scenario::Fanout { server, users, devices, rate, duration, payload, server_pid } => {
                let plan = Fanout { server, users, devices, rate, duration, payload };
                let report = fanout(&plan, key.pair()).await?;
                report.print(&plan, server_pid);
                Ok(())
            }
            Scenario::Ingest(plan) => ingest(&plan, key.pair()).await?.print(&plan),
            Scenario::Connections(plan) => connections(&plan, key.pair()).await?.print(&plan),
            Scenario::Catchup(plan) => catchup(&plan, key.pair()).await?.print(&plan),
            Scenario::Bootstrap(plan) => bootstrap(&plan, key.pair()).await?.print(&plan),
            Scenario::Quick { target } => quick(target, key.pair()).await,
        }
    });
    // The scenarios push far faster than the default rate limits allow one user.
    outcome.map_err(|e| match format!("{e:#}") {
        text if text.contains("rate_limited") || text.contains("429") => anyhow::anyhow!(
            "{text}\nthe server's rate limits refused the load: start it with `--rate-limits false` to benchmark"
        ),
        _ => e,
    })
}

/// The parts of a server frame the fan-out bench looks at.
#[derive(serde::Deserialize)]
struct Peek {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    ops: Vec<serde::de::IgnoredAny>,
    #[serde(default)]
    committed_us: Option<i64>,
    /// The request id of `pushed` and `error`.
    #[serde(default)]
    id: Option<u64>,
    /// The code of `error`.
    #[serde(default)]
    code: Option<String>,
}

struct Fanout {
    server: String,
    users: usize,
    devices: usize,
    rate: f64,
    duration: Duration,
    payload: usize,
}

struct FanoutReport {
    connect: Duration,
    delivery: Histogram<u64>,
    push: Histogram<u64>,
    pushed_ops: u64,
    delivered_ops: u64,
    push_errors: u64,
    elapsed: Duration,
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    // Microseconds, up to 100 s, 3 significant digits.
    Ok(Histogram::new_with_bounds(1, 100_000_000, 3)?)
}

fn token(root: &biscuit_auth::KeyPair, user: &UserId) -> anyhow::Result<String> {
    let spec =
        TokenSpec { user: user.clone(), device: None, ttl: Duration::from_secs(24 * 3600), write: true, admin: false };
    Ok(auth::mint(root, &spec)?)
}

/// Fresh users for one run (`bench-RUN-N`) and a token for each.
fn bench_users(root: &biscuit_auth::KeyPair, n: usize) -> anyhow::Result<Vec<String>> {
    let run = uuid::Uuid::now_v7().simple().to_string();
    (0..n).map(|u| token(root, &UserId::new(format!("bench-{}-{u}", &run[20..]))?)).collect()
}

/// Opens a socket as `device`, says `hello` from `since` (the head when `None`)
/// and waits for `welcome`; returns the user's head.
async fn hello(server: &str, token: &str, device: &str, since: Option<Seq>) -> anyhow::Result<(WsConn, Seq)> {
    let mut conn = ws::open(server, token, TokenIn::Subprotocol).await?;
    let hello = ClientMsg::Hello { token: None, device: Some(DeviceId::new(device)?), since };
    conn.send(&hello).await?;
    match conn.recv_msg().await? {
        ServerMsg::Welcome { head, .. } => Ok((conn, head)),
        other => anyhow::bail!("expected welcome, got {other:?}"),
    }
}

/// Opens a socket as `device` of a new user and waits for `welcome`.
async fn connect(server: &str, token: &str, device: String) -> anyhow::Result<WsConn> {
    match hello(server, token, &device, None).await? {
        (conn, 0) => Ok(conn),
        (_, head) => anyhow::bail!("the bench user already has {head} ops"),
    }
}

/// Opens `slots` sockets, `parallel` at a time; `open(i)` opens the i-th.
async fn connect_all<F, Fut>(slots: usize, parallel: usize, open: F) -> anyhow::Result<Vec<WsConn>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<WsConn>>,
{
    let mut conns = Vec::with_capacity(slots);
    let all: Vec<usize> = (0..slots).collect();
    for chunk in all.chunks(parallel.max(1)) {
        for conn in futures_util::future::join_all(chunk.iter().map(|&i| open(i))).await {
            conns.push(conn?);
        }
    }
    Ok(conns)
}

/// `n` new ops of `payload` bytes each.
fn new_ops(n: usize, payload: usize) -> Vec<NewOp> {
    (0..n)
        .map(|_| NewOp {
            id: OpId::generate(),
            payload: Payload(vec![b'x'; payload]),
            entity: None,
            kind: None,
            base: None,
            ts: None,
        })
        .collect()
}

fn push_of(ops: Vec<NewOp>, device: &DeviceId) -> PushRequest {
    PushRequest { ops, device: Some(device.clone()), expected_head: None, on_stale: None }
}

async fn fanout(plan: &Fanout, root: &biscuit_auth::KeyPair) -> anyhow::Result<FanoutReport> {
    let tokens = bench_users(root, plan.users)?;

    // Connect every device, 64 at a time.
    let started = Instant::now();
    let conns = connect_all(plan.users * plan.devices, 64, |i| {
        connect(&plan.server, &tokens[i / plan.devices], format!("d{}", i % plan.devices))
    })
    .await?;
    let connect = started.elapsed();

    // Every device counts and times what it receives until told to stop.
    let delivery = Rc::new(RefCell::new(histogram()?));
    let delivered = Rc::new(RefCell::new(0u64));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let receivers: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (delivery, delivered, mut stopped) = (delivery.clone(), delivered.clone(), stopped.clone());
            actix_web::rt::spawn(async move {
                loop {
                    let received = tokio::select! {
                        received = conn.recv_bytes() => received,
                        _ = stopped.changed() => break,
                    };
                    let Ok(Some(bytes)) = received else { break };
                    // Only what the measurement needs: skipping the ops is cheaper
                    // than building them, and the load generator shares the CPUs.
                    let Ok(frame) = rmp_serde::from_slice::<Peek>(&bytes) else { continue };
                    if frame.kind == "ops" {
                        *delivered.borrow_mut() += frame.ops.len() as u64;
                        if let Some(at) = frame.committed_us {
                            let took = (now_us() - at).max(1) as u64;
                            let _ = delivery.borrow_mut().record(took);
                        }
                    }
                }
                conn.close().await;
            })
        })
        .collect();

    // Open-loop pushes over HTTP, one op each, round-robin over the users.
    let clients: Vec<Client> = tokens.iter().map(|t| Client::new(plan.server.clone(), t.clone()).msgpack()).collect();
    let push = Rc::new(RefCell::new(histogram()?));
    let push_errors = Rc::new(RefCell::new(0u64));
    let pusher = DeviceId::new("pusher")?;
    let interval = Duration::from_secs_f64(1.0 / plan.rate.max(0.001));
    let total = (plan.duration.as_secs_f64() * plan.rate).round() as u64;
    let began = Instant::now();
    let mut pushes = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = began + interval.mul_f64(i as f64);
        actix_web::rt::time::sleep_until(due.into()).await;
        let client = clients[i as usize % clients.len()].clone();
        let (push, push_errors) = (push.clone(), push_errors.clone());
        let request = push_of(new_ops(1, plan.payload), &pusher);
        pushes.push(actix_web::rt::spawn(async move {
            match client.push(&request).await {
                Ok(_) => drop(push.borrow_mut().record(due.elapsed().as_micros().max(1) as u64)),
                Err(_) => *push_errors.borrow_mut() += 1,
            }
        }));
    }
    for handle in pushes {
        let _ = handle.await;
    }
    let elapsed = began.elapsed();
    // Let the last frames arrive, then stop the receivers.
    let expected = (total - *push_errors.borrow()) * plan.devices as u64;
    let drain = Instant::now();
    while *delivered.borrow() < expected && drain.elapsed() < Duration::from_secs(10) {
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);
    for handle in receivers {
        let _ = handle.await;
    }
    let report = FanoutReport {
        connect,
        delivery: delivery.borrow().clone(),
        push: push.borrow().clone(),
        pushed_ops: total - *push_errors.borrow(),
        delivered_ops: *delivered.borrow(),
        push_errors: *push_errors.borrow(),
        elapsed,
    };
    Ok(report)
}

fn ms(us: u64) -> String {
    format!("{:.3} ms", us as f64 / 1000.0)
}

fn percentiles(h: &Histogram<u64>) -> String {
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n={})",
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.9)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
        h.len()
    )
}

/// The resident memory of a process, from /proc (Linux).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl FanoutReport {
    fn print(&self, plan: &Fanout, server_pid: Option<u32>) {
        let connections = plan.users * plan.devices;
        println!(
            "fanout: {} users x {} devices, {} pushes/s for {:?}",
            plan.users, plan.devices, plan.rate, plan.duration
        );
        println!("  connected {connections} WebSockets in {:.2?}", self.connect);
        println!(
            "  pushed {} ops in {:.2?} ({:.0}/s), {} push errors",
            self.pushed_ops,
            self.elapsed,
            self.pushed_ops as f64 / self.elapsed.as_secs_f64(),
            self.push_errors
        );
        let expected = self.pushed_ops * plan.devices as u64;
        println!(
            "  delivered {} of {} ops to devices ({:.0} frames/s)",
            self.delivered_ops,
            expected,
            self.delivered_ops as f64 / self.elapsed.as_secs_f64()
        );
        println!("  commit-to-delivery: {}", percentiles(&self.delivery));
        println!("  push-ack (open loop): {}", percentiles(&self.push));
        if let Some(kib) = server_pid.and_then(rss_kib) {
            println!("  server RSS: {:.1} MiB", kib as f64 / 1024.0);
        }
    }
}

/// How long answers may take after the last push before they count as errors.
const GRACE: Duration = Duration::from_secs(30);

/// What the pushers of `ingest` saw, shared by its tasks.
struct Tally {
    latency: Histogram<u64>,
    ops: u64,
    pushes: u64,
    errors: u64,
    first_error: Option<String>,
    last_answer: Instant,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        let last_answer = Instant::now();
        Ok(Self { latency: histogram()?, ops: 0, pushes: 0, errors: 0, first_error: None, last_answer })
    }

    /// A push of `ops` ops answered; `since` is its scheduled (open loop) or sent
    /// (closed loop) time.
    fn acked(&mut self, ops: usize, since: Instant) {
        let _ = self.latency.record(since.elapsed().as_micros().max(1) as u64);
        self.ops += ops as u64;
        self.pushes += 1;
        self.last_answer = Instant::now();
    }

    fn failed(&mut self, pushes: usize, why: impl std::fmt::Display) {
        self.errors += pushes as u64;
        self.first_error.get_or_insert_with(|| why.to_string());
    }
}

type Shared<T> = Rc<RefCell<T>>;

struct IngestReport {
    connect: Duration,
    tally: Tally,
    elapsed: Duration,
    server_rss: Option<u64>,
}

/// The schedule of one pusher: its first push and the interval (open loop), or
/// `None` for a closed loop.
#[derive(Clone, Copy)]
struct Schedule {
    first: Instant,
    every: Option<Duration>,
    end: Instant,
}

async fn ingest(plan: &Ingest, root: &biscuit_auth::KeyPair) -> anyhow::Result<IngestReport> {
    anyhow::ensure!(plan.pushers > 0 && plan.batch > 0, "--pushers and --batch must be positive");
    let users = plan.users.unwrap_or(plan.pushers).clamp(1, plan.pushers);
    let tokens = bench_users(root, users)?;
    let devices: Vec<DeviceId> = (0..plan.pushers).map(|p| DeviceId::new(format!("p{p}"))).collect::<Result<_, _>>()?;

    // Connect first: the timed part only pushes.
    let started = Instant::now();
    let (clients, mut conns) = match plan.transport {
        Transport::Http => {
            let clients: Vec<Client> = (0..plan.pushers)
                .map(|p| Client::new(plan.target.server.clone(), tokens[p % users].clone()).msgpack())
                .collect();
            (clients, Vec::new())
        }
        Transport::Ws => {
            let (tokens, devices) = (&tokens, &devices);
            let conns = connect_all(plan.pushers, 64, |p| async move {
                Ok(hello(&plan.target.server, &tokens[p % users], devices[p].as_str(), None).await?.0)
            })
            .await?;
            (Vec::new(), conns)
        }
    };
    let connect = started.elapsed();

    let tally = Rc::new(RefCell::new(Tally::new()?));
    let every = (plan.rate > 0.0).then(|| Duration::from_secs_f64(plan.pushers as f64 / plan.rate));
    let began = Instant::now();
    let end = began + plan.duration;
    let mut tasks = Vec::with_capacity(plan.pushers);
    for (p, device) in devices.into_iter().enumerate() {
        // Spread the pushers' schedules over one interval.
        let first = began + every.map_or(Duration::ZERO, |e| e.mul_f64(p as f64 / plan.pushers as f64));
        let schedule = Schedule { first, every, end };
        let (tally, batch, payload) = (tally.clone(), plan.batch, plan.payload);
        tasks.push(match plan.transport {
            Transport::Http => {
                actix_web::rt::spawn(http_pusher(clients[p].clone(), device, batch, payload, schedule, tally))
            }
            Transport::Ws => {
                let conn = conns.remove(0);
                actix_web::rt::spawn(ws_pusher(conn, batch, payload, schedule, tally))
            }
        });
    }
    for task in tasks {
        let _ = task.await;
    }
    let server_rss = plan.target.server_pid.and_then(rss_kib);
    let tally = Rc::try_unwrap(tally).map_err(|_| anyhow::anyhow!("a pusher outlived the run"))?.into_inner();
    let elapsed = tally.last_answer.saturating_duration_since(began).max(Duration::from_millis(1));
    Ok(IngestReport { connect, tally, elapsed, server_rss })
}

/// Pushes over HTTP: closed loop, or one request task per scheduled push.
async fn http_pusher(
    client: Client,
    device: DeviceId,
    batch: usize,
    payload: usize,
    schedule: Schedule,
    tally: Shared<Tally>,
) {
    let Some(every) = schedule.every else {
        while Instant::now() < schedule.end {
            let request = push_of(new_ops(batch, payload), &device);
            let sent = Instant::now();
            match client.push(&request).await {
                Ok(_) => tally.borrow_mut().acked(batch, sent),
                Err(e) => tally.borrow_mut().failed(1, e),
            }
        }
        return;
    };
    let mut inflight = Vec::new();
    let mut due = schedule.first;
    while due < schedule.end {
        actix_web::rt::time::sleep_until(due.into()).await;
        let (client, tally) = (client.clone(), tally.clone());
        let request = push_of(new_ops(batch, payload), &device);
        inflight.push(actix_web::rt::spawn(async move {
            match client.push(&request).await {
                Ok(_) => tally.borrow_mut().acked(batch, due),
                Err(e) => tally.borrow_mut().failed(1, e),
            }
        }));
        due += every;
    }
    for push in inflight {
        let _ = push.await;
    }
}

/// Pushes over one WebSocket, pipelined: sends on schedule (or, closed loop, as
/// soon as the previous push is answered) and matches `pushed` answers by id.
async fn ws_pusher(mut conn: WsConn, batch: usize, payload: usize, schedule: Schedule, tally: Shared<Tally>) {
    let mut pending: HashMap<u64, Instant> = HashMap::new();
    let mut next_id = 0u64;
    let mut due = schedule.first;
    loop {
        let now = Instant::now();
        let send_at = match schedule.every {
            Some(_) if due < schedule.end => Some(due),
            None if pending.is_empty() && now < schedule.end => Some(now),
            _ => None,
        };
        if send_at.is_none() && pending.is_empty() {
            break;
        }
        let wake = send_at.unwrap_or(schedule.end + GRACE);
        let received = tokio::select! {
            _ = actix_web::rt::time::sleep_until(wake.into()) => None,
            received = conn.recv_bytes() => Some(received),
        };
        match received {
            None if send_at.is_some() => {
                let push =
                    ClientMsg::Push { id: next_id, ops: new_ops(batch, payload), expected_head: None, on_stale: None };
                let stamp = if schedule.every.is_some() { due } else { Instant::now() };
                if let Err(e) = conn.send(&push).await {
                    tally.borrow_mut().failed(1 + pending.len(), e);
                    return;
                }
                pending.insert(next_id, stamp);
                next_id += 1;
                if let Some(every) = schedule.every {
                    due += every;
                }
            }
            None => {
                tally.borrow_mut().failed(pending.len(), format!("no answer within {GRACE:?} of the end"));
                break;
            }
            Some(Ok(Some(bytes))) => {
                let Ok(frame) = rmp_serde::from_slice::<Peek>(&bytes) else { continue };
                let Some(sent) = frame.id.and_then(|id| pending.remove(&id)) else { continue };
                match frame.kind.as_str() {
                    "pushed" => tally.borrow_mut().acked(batch, sent),
                    _ => tally.borrow_mut().failed(1, frame.code.unwrap_or(frame.kind)),
                }
            }
            Some(Ok(None)) => {
                tally.borrow_mut().failed(pending.len().max(1), "the server closed the connection");
                return;
            }
            Some(Err(e)) => {
                tally.borrow_mut().failed(pending.len().max(1), e);
                return;
            }
        }
    }
    conn.close().await;
}

impl IngestReport {
    fn print(&self, plan: &Ingest) -> anyhow::Result<()> {
        let users = plan.users.unwrap_or(plan.pushers).clamp(1, plan.pushers);
        let load = match plan.rate {
            r if r > 0.0 => format!("open loop at {r} pushes/s"),
            _ => "closed loop".to_owned(),
        };
        println!(
            "ingest: {} pushers x {}-op batches over {}, {users} users, {load}, {:?}",
            plan.pushers,
            plan.batch,
            plan.transport.name(),
            plan.duration
        );
        if plan.transport == Transport::Ws {
            println!("  connected in {:.2?}", self.connect);
        }
        let t = &self.tally;
        let secs = self.elapsed.as_secs_f64();
        println!(
            "  acked {} ops in {} pushes in {:.2?}: {:.0} ops/s ({:.0} pushes/s), {} errors",
            t.ops,
            t.pushes,
            self.elapsed,
            t.ops as f64 / secs,
            t.pushes as f64 / secs,
            t.errors
        );
        let from = if plan.rate > 0.0 { "open loop, from the scheduled time" } else { "closed loop, from sending" };
        println!("  push-ack ({from}): {}", percentiles(&t.latency));
        print_rss(self.server_rss);
        match &t.first_error {
            Some(first) => anyhow::bail!("{} pushes failed; the first: {first}", t.errors),
            None => Ok(()),
        }
    }
}

fn print_rss(kib: Option<u64>) {
    if let Some(kib) = kib {
        println!("  server RSS: {:.1} MiB", kib as f64 / 1024.0);
    }
}

/// The soft limit on open files of a process, from /proc (Linux).
fn fd_limit(pid: &str) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

struct ConnectionsReport {
    limit: u64,
    connect: Duration,
    before: Option<u64>,
    after: Option<u64>,
    dropped: usize,
}

async fn connections(plan: &Connections, root: &biscuit_auth::KeyPair) -> anyhow::Result<ConnectionsReport> {
    // Each socket takes a file descriptor here and one in the server.
    let limit = rlimit::increase_nofile_limit(u64::MAX)?;
    let needed = plan.count as u64 + 64;
    anyhow::ensure!(
        limit >= needed,
        "holding {} WebSockets needs about {needed} open files, but this process may open only {limit} \
         (its hard limit): raise it, e.g. `ulimit -Hn {needed}` as root, or lower --count",
        plan.count
    );
    if let Some(server) = plan.target.server_pid.and_then(|pid| fd_limit(&pid.to_string()))
        && server < needed
    {
        println!(
            "  warning: the server may open only {server} files; it will refuse connections past that \
             (start it under `ulimit -n {needed}`)"
        );
    }
    let users = plan.users.unwrap_or(plan.count).clamp(1, plan.count.max(1));
    let tokens = bench_users(root, users)?;
    let before = plan.target.server_pid.and_then(rss_kib);

    let started = Instant::now();
    let conns = connect_all(plan.count, plan.parallel, |i| {
        connect(&plan.target.server, &tokens[i % users], format!("d{}", i / users))
    })
    .await?;
    let connect = started.elapsed();

    // Idle clients still answer the server's pings; count the sockets that close.
    let dropped = Rc::new(RefCell::new(0usize));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let readers: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (dropped, mut stopped) = (dropped.clone(), stopped.clone());
            actix_web::rt::spawn(async move {
                loop {
                    tokio::select! {
                        received = conn.recv_bytes() => if !matches!(received, Ok(Some(_))) {
                            *dropped.borrow_mut() += 1;
                            return;
                        },
                        _ = stopped.changed() => break,
                    }
                }
                conn.close().await;
            })
        })
        .collect();
    // Let the server settle (allocator, session tasks) before reading its memory.
    actix_web::rt::time::sleep(Duration::from_secs(1)).await;
    let after = plan.target.server_pid.and_then(rss_kib);
    actix_web::rt::time::sleep(plan.hold).await;
    let dropped_count = *dropped.borrow();
    let _ = stop.send(true);
    for reader in readers {
        let _ = reader.await;
    }
    Ok(ConnectionsReport { limit, connect, before, after, dropped: dropped_count })
}

impl ConnectionsReport {
    fn print(&self, plan: &Connections) -> anyhow::Result<()> {
        println!("connections: {} idle WebSockets (hello + welcome), open-files limit {}", plan.count, self.limit);
        println!(
            "  connected in {:.2?} ({:.0} connects/s, {} at a time)",
            self.connect,
            plan.count as f64 / self.connect.as_secs_f64(),
            plan.parallel
        );
        if let (Some(before), Some(after)) = (self.before, self.after) {
            println!(
                "  server RSS {:.1} MiB before, {:.1} MiB holding them: {:.1} KiB per connection",
                before as f64 / 1024.0,
                after as f64 / 1024.0,
                after.saturating_sub(before) as f64 / plan.count.max(1) as f64
            );
        }
        println!("  held for {:?} more; {} closed by the server", plan.hold, self.dropped);
        anyhow::ensure!(self.dropped == 0, "the server closed {} idle connections", self.dropped);
        Ok(())
    }
}

/// Pushes `n` ops to the token's user in 1,000-op batches; `op(i)` makes the i-th.
async fn fill(client: &Client, n: usize, op: impl Fn(usize) -> NewOp) -> anyhow::Result<Duration> {
    let device = DeviceId::new("filler")?;
    let started = Instant::now();
    for first in (0..n).step_by(1000) {
        let ops = (first..n.min(first + 1000)).map(&op).collect();
        client.push(&push_of(ops, &device)).await?;
    }
    Ok(started.elapsed())
}

/// Pulls every op after `since` in pages of `page`: how many, and the bytes on the wire.
async fn pull_pages(client: &Client, since: Seq, page: usize) -> anyhow::Result<(usize, usize)> {
    let (mut since, mut ops, mut bytes) = (since, 0, 0);
    loop {
        let (answer, size) = client.pull_sized(since, page).await?;
        ops += answer.ops.len();
        bytes += size;
        if let Some(last) = answer.ops.last() {
            since = last.seq;
        }
        if !answer.has_more {
            return Ok((ops, bytes));
        }
    }
}

/// Connects a new device with `since` = 0 and reads `ops` frames until it has the
/// whole log: how many ops, and the bytes of the frames.
async fn pull_socket(server: &str, token: &str, device: &str) -> anyhow::Result<(usize, usize)> {
    let (mut conn, head) = hello(server, token, device, Some(0)).await?;
    let (mut ops, mut bytes) = (0usize, 0usize);
    let deadline = Instant::now() + Duration::from_secs(120);
    while (ops as Seq) < head {
        let frame = tokio::time::timeout_at(deadline.into(), conn.recv_bytes())
            .await
            .map_err(|_| anyhow::anyhow!("only {ops} of {head} ops arrived within 120 s"))??;
        let Some(frame) = frame else { anyhow::bail!("the server closed after {ops} of {head} ops") };
        bytes += frame.len();
        let peek: Peek = rmp_serde::from_slice(&frame)?;
        if peek.kind == "ops" {
            ops += peek.ops.len();
        }
    }
    conn.close().await;
    Ok((ops, bytes))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

struct CatchupReport {
    fill: Duration,
    http: Vec<Duration>,
    http_bytes: usize,
    ws: Vec<Duration>,
    ws_bytes: usize,
}

async fn catchup(plan: &Catchup, root: &biscuit_auth::KeyPair) -> anyhow::Result<CatchupReport> {
    let token = bench_users(root, 1)?.remove(0);
    let client = Client::new(plan.target.server.clone(), token.clone()).msgpack();
    let payload = plan.payload;
    let fill = fill(&client, plan.ops, |_| new_ops(1, payload).remove(0)).await?;
    let (mut http, mut http_bytes, mut ws, mut ws_bytes) = (Vec::new(), 0, Vec::new(), 0);
    for run in 0..plan.runs.max(1) {
        let started = Instant::now();
        let (ops, bytes) = pull_pages(&client, 0, plan.page).await?;
        http.push(started.elapsed());
        anyhow::ensure!(ops == plan.ops, "pulled {ops} of {} ops over HTTP", plan.ops);
        http_bytes = bytes;
        let started = Instant::now();
        let (ops, bytes) = pull_socket(&plan.target.server, &token, &format!("catchup{run}")).await?;
        ws.push(started.elapsed());
        anyhow::ensure!(ops == plan.ops, "received {ops} of {} ops over WebSocket", plan.ops);
        ws_bytes = bytes;
    }
    Ok(CatchupReport { fill, http, http_bytes, ws, ws_bytes })
}

/// `ops/s, MB/s` of moving `ops` ops and `bytes` bytes in `took`.
fn rates(ops: usize, bytes: usize, took: Duration) -> String {
    let secs = took.as_secs_f64().max(1e-9);
    format!("{took:.2?}: {:.0} ops/s, {:.1} MB/s", ops as f64 / secs, bytes as f64 / secs / 1e6)
}

impl CatchupReport {
    fn print(&self, plan: &Catchup) -> anyhow::Result<()> {
        println!(
            "catchup: one user, {} ops of {} payload bytes (filled in {:.2?}), {} runs",
            plan.ops, plan.payload, self.fill, plan.runs
        );
        let each = |v: &[Duration]| v.iter().map(|d| format!("{d:.2?}")).collect::<Vec<_>>().join(", ");
        println!(
            "  HTTP MessagePack pages of {}: median {} ({} wire bytes; runs {})",
            plan.page,
            rates(plan.ops, self.http_bytes, median(self.http.clone())),
            self.http_bytes,
            each(&self.http)
        );
        println!(
            "  WebSocket hello since=0 to head: median {} ({} frame bytes; runs {})",
            rates(plan.ops, self.ws_bytes, median(self.ws.clone())),
            self.ws_bytes,
            each(&self.ws)
        );
        Ok(())
    }
}

struct BootstrapReport {
    fill: Duration,
    snapshot_bytes: usize,
    full: Vec<Duration>,
    boot: Vec<Duration>,
}

async fn bootstrap(plan: &Bootstrap, root: &biscuit_auth::KeyPair) -> anyhow::Result<BootstrapReport> {
    anyhow::ensure!(plan.entities > 0 && plan.tail < plan.ops, "need entities > 0 and tail < ops");
    let client = Client::new(plan.target.server.clone(), bench_users(root, 1)?.remove(0)).msgpack();
    let entities = plan.entities;
    let fill = fill(&client, plan.ops, |n| NewOp {
        id: OpId::generate(),
        payload: Payload(format!("{n:064}").into_bytes()),
        entity: Some(format!("e{}", n % entities)),
        kind: None,
        base: None,
        ts: None,
    })
    .await?;
    // The client's state after the ops the snapshot covers: each entity's newest payload.
    let covered = plan.ops - plan.tail;
    let mut state = vec![Vec::new(); entities];
    for n in 0..covered {
        state[n % entities] = format!("e{}={n:064}", n % entities).into_bytes();
    }
    let snapshot = state.concat();
    let snapshot_bytes = snapshot.len();
    client.put_snapshot(covered as Seq, snapshot).await?;

    let (mut full, mut boot) = (Vec::new(), Vec::new());
    for _ in 0..plan.runs.max(1) {
        let started = Instant::now();
        let (ops, _) = pull_pages(&client, 0, plan.page).await?;
        full.push(started.elapsed());
        anyhow::ensure!(ops == plan.ops, "pulled {ops} of {} ops", plan.ops);
        let started = Instant::now();
        let (seq, bytes) = client.snapshot(None).await?;
        let (tail, _) = pull_pages(&client, seq, plan.page).await?;
        boot.push(started.elapsed());
        anyhow::ensure!(
            (seq, bytes.len(), tail) == (covered as Seq, snapshot_bytes, plan.tail),
            "the snapshot or the tail came back wrong"
        );
    }
    Ok(BootstrapReport { fill, snapshot_bytes, full, boot })
}

impl BootstrapReport {
    fn print(&self, plan: &Bootstrap) -> anyhow::Result<()> {
        println!(
            "bootstrap: a new device of a user with {} ops on {} entities (filled in {:.2?}), pages of {}",
            plan.ops, plan.entities, self.fill, plan.page
        );
        println!("  without a snapshot (every page): median {:.2?} of {}", median(self.full.clone()), plan.runs);
        println!(
            "  with a snapshot ({} bytes) + {}-op tail: median {:.2?} of {}",
            self.snapshot_bytes,
            plan.tail,
            median(self.boot.clone()),
            plan.runs
        );
        Ok(())
    }
}

/// Every scenario, briefly: proves they work end to end (CI); the figures are
/// printed, never judged.
async fn quick(target: Target, root: &biscuit_auth::KeyPair) -> anyhow::Result<()> {
    let ingest_plan = |pushers, batch, transport, rate, users| Ingest {
        target: target.clone(),
        pushers,
        batch,
        transport,
        duration: Duration::from_secs(2),
        rate,
        users,
        payload: 64,
    };
    for plan in [
        ingest_plan(4, 100, Transport::Http, 0.0, None),
        ingest_plan(16, 1, Transport::Ws, 400.0, None),
        ingest_plan(4, 1, Transport::Ws, 200.0, Some(1)),
    ] {
        ingest(&plan, root).await?.print(&plan)?;
    }
    let plan = Fanout {
        server: target.server.clone(),
        users: 1,
        devices: 20,
        rate: 100.0,
        duration: Duration::from_secs(2),
        payload: 64,
    };
    let report = fanout(&plan, root).await?;
    report.print(&plan, target.server_pid);
    anyhow::ensure!(report.push_errors == 0, "{} fan-out pushes failed", report.push_errors);
    let expected = report.pushed_ops * plan.devices as u64;
    anyhow::ensure!(report.delivered_ops >= expected, "fan-out delivered {} of {expected} ops", report.delivered_ops);
    let plan = Connections { target: target.clone(), count: 200, users: None, parallel: 64, hold: Duration::ZERO };
    connections(&plan, root).await?.print(&plan)?;
    let plan = Catchup { target: target.clone(), ops: 10_000, page: 1000, payload: 64, runs: 1 };
    catchup(&plan, root).await?.print(&plan)?;
    let plan = Bootstrap { target, ops: 10_000, entities: 1000, tail: 100, page: 1000, runs: 1 };
    bootstrap(&plan, root).await?.print(&plan)
}
