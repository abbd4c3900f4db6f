//! `opsync bench`: a load generator that drives a running server over real HTTP and
//! WebSocket connections and reports latency percentiles (HdrHistogram). It mints
//! its tokens with the server's root key (same settings as `opsync serve`), so run
//! it on the server's machine or give it the key.
//!
//! Load is open-loop: pushes are scheduled at a fixed rate and each latency is
//! measured from its scheduled time, so a slow answer cannot hide by delaying the
//! next request.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use hdrhistogram::Histogram;

use crate::auth::{self, TokenSpec};
use crate::client::Client;
use crate::client::ws::{self, TokenIn, WsConn};
use crate::ids::{DeviceId, OpId, UserId};
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
}

/// Runs a scenario.
pub fn run(config: &crate::config::Config, args: BenchArgs) -> anyhow::Result<()> {
    let key = crate::cli::root_key(config, false)?;
    actix_web::rt::System::new().block_on(async move {
        match args.scenario {
            Scenario::Fanout { server, users, devices, rate, duration, payload, server_pid } => {
                let plan = Fanout { server, users, devices, rate, duration, payload };
                let report = fanout(&plan, key.pair()).await?;
                report.print(&plan, server_pid);
                Ok(())
            }
        }
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

/// Opens a socket as `device` from the user's head and waits for `welcome`.
async fn connect(server: &str, token: &str, device: String) -> anyhow::Result<WsConn> {
    let mut conn = ws::open(server, token, TokenIn::Subprotocol).await?;
    let hello = ClientMsg::Hello { token: None, device: Some(DeviceId::new(device)?), since: None };
    conn.send(&hello).await?;
    match conn.recv_msg().await? {
        ServerMsg::Welcome { head: 0, .. } => Ok(conn),
        ServerMsg::Welcome { head, .. } => anyhow::bail!("the bench user already has {head} ops"),
        other => anyhow::bail!("expected welcome, got {other:?}"),
    }
}

async fn fanout(plan: &Fanout, root: &biscuit_auth::KeyPair) -> anyhow::Result<FanoutReport> {
    let run = uuid::Uuid::now_v7().simple().to_string();
    let users: Vec<UserId> =
        (0..plan.users).map(|u| UserId::new(format!("bench-{}-{u}", &run[20..]))).collect::<Result<_, _>>()?;
    let tokens: Vec<String> = users.iter().map(|u| token(root, u)).collect::<anyhow::Result<_>>()?;

    // Connect every device, 64 at a time.
    let started = Instant::now();
    let mut conns = Vec::with_capacity(plan.users * plan.devices);
    let slots: Vec<(usize, usize)> = (0..plan.users).flat_map(|u| (0..plan.devices).map(move |d| (u, d))).collect();
    for chunk in slots.chunks(64) {
        let opened = futures_util::future::join_all(
            chunk.iter().map(|&(u, d)| connect(&plan.server, &tokens[u], format!("d{d}"))),
        )
        .await;
        for conn in opened {
            conns.push(conn?);
        }
    }
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
    let interval = Duration::from_secs_f64(1.0 / plan.rate.max(0.001));
    let total = (plan.duration.as_secs_f64() * plan.rate).round() as u64;
    let began = Instant::now();
    let mut pushes = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = began + interval.mul_f64(i as f64);
        actix_web::rt::time::sleep_until(due.into()).await;
        let client = clients[i as usize % clients.len()].clone();
        let (push, push_errors) = (push.clone(), push_errors.clone());
        let request = PushRequest {
            ops: vec![NewOp {
                id: OpId::generate(),
                payload: Payload(vec![b'x'; plan.payload]),
                entity: None,
                kind: None,
                base: None,
                ts: None,
            }],
            device: Some(DeviceId::new("pusher")?),
            expected_head: None,
            on_stale: None,
        };
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
