//! `GET /v1/ws`: the WebSocket transport. One task per connection runs a
//! [`Session`]: it authenticates (`hello`), joins the user's hub, catches up from the
//! database, then relays live frames from its outbox while it answers the client's
//! pushes, acks and pings.
//!
//! ## Exactly once, in order
//! The session keeps `delivered`, the last seq the client has been given, either
//! in an `ops` frame or as a `stored` result of its own `pushed` answer. It joins the
//! hub *before* it reads the database, so every commit is either visible to its
//! first read or queued in its outbox (or both: frames at or below `delivered` are
//! dropped). A live frame is sent only if it starts right after `delivered`;
//! anything else (a gap, a frame the hub could not read, a dropped outbox) sends the
//! session back to catch-up, which reads pages from `delivered` up to the head.
//!
//! Its own pushes: the writer answers a push before it hands the commit to the hub,
//! and the session looks at answers before frames, so a `pushed` answer is handled
//! before the frame of the same commit, which is then dropped. An answer whose ops
//! do not follow `delivered` waits (`held`) until the ops before it have been sent;
//! catch-up reads stop short of a held answer and never run while a push is in
//! flight, so they never see an op the session has not been answered for.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, ProtocolError};
use bytes::Bytes;
use futures_util::stream::{FuturesOrdered, StreamExt as _};

use crate::app::AppState;
use crate::auth::{AuthError, Operation, Principal};
use crate::error::{ApiError, ErrorCode};
use crate::http::body::{self, Format};
use crate::ids::{DeviceId, Seq, UserId};
use crate::limits::SessionSlot;
use crate::log::{LogError, Push};
use crate::protocol::{OpStatus, PushResponse};
use crate::realtime::messages::{BEARER_PREFIX, ClientMsg, Envelope, ResyncReason, SUBPROTOCOL, ServerMsg, VERSION};
use crate::realtime::{CloseOrder, Event, Frame, Membership, Outbox};

/// Pushes a session may have in flight; beyond, it stops reading the socket.
const MAX_IN_FLIGHT: usize = 16;
/// Ops per catch-up page.
const CATCH_UP_PAGE: usize = 1000;
/// A session that falls behind this often within [`LAG_WINDOW`] is closed.
const MAX_LAGS: usize = 3;
const LAG_WINDOW: Duration = Duration::from_secs(60);
/// A session whose pushes a rate limit refuses this many times in a row (the
/// client ignores `retry_after_ms`) is closed with 4029.
pub const MAX_REFUSED_PUSHES: u32 = 100;

/// Close codes (see docs/protocol.md).
mod close {
    use super::CloseOrder;
    pub const NORMAL: CloseOrder = CloseOrder { code: 1000, reason: "closing" };
    pub const PROTOCOL: CloseOrder = CloseOrder { code: 4000, reason: "unexpected_message" };
    pub const INVALID_TOKEN: CloseOrder = CloseOrder { code: 4001, reason: "invalid_token" };
    pub const TOKEN_EXPIRED: CloseOrder = CloseOrder { code: 4002, reason: "token_expired" };
    pub const TOKEN_REVOKED: CloseOrder = CloseOrder { code: 4003, reason: "token_revoked" };
    pub const FORBIDDEN: CloseOrder = CloseOrder { code: 4004, reason: "forbidden" };
    pub const HELLO_TIMEOUT: CloseOrder = CloseOrder { code: 4008, reason: "hello_timeout" };
    pub const TOO_SLOW: CloseOrder = CloseOrder { code: 4009, reason: "too_slow" };
    pub const IDLE: CloseOrder = CloseOrder { code: 4011, reason: "idle_timeout" };
    pub const RESYNC_REQUIRED: CloseOrder = CloseOrder { code: 4012, reason: "resync_required" };
    pub const SINCE_BEYOND_HEAD: CloseOrder = CloseOrder { code: 4013, reason: "since_beyond_head" };
    pub const RATE_LIMITED: CloseOrder = CloseOrder { code: 4029, reason: "rate_limited" };
    pub const TOO_BIG: CloseOrder = CloseOrder { code: 1009, reason: "frame_too_large" };
    pub const BAD_FRAMING: CloseOrder = CloseOrder { code: 1002, reason: "protocol_error" };
    pub const UNAVAILABLE: CloseOrder = CloseOrder { code: 1013, reason: "unavailable" };
    pub const INTERNAL: CloseOrder = CloseOrder { code: 1011, reason: "internal" };
}

/// How a session ends: with a close frame, or because the client is gone.
#[derive(Debug)]
pub(crate) enum End {
    Close(CloseOrder),
    Gone,
}

type Flow = Result<(), End>;

/// `GET /v1/ws`: checks the Origin and any token offered in the subprotocol header
/// (so a bad one gets a plain HTTP error), then upgrades. With an offered token the
/// rate limits answer here too (`429`): the user's session cap, and a connect rate
/// already spent. Without one, an address over its budget of failed
/// authentications is refused before the upgrade.
#[utoipa::path(
    get, path = "/v1/ws", tag = "realtime",
    description = "Opens a WebSocket (subprotocol `opsync.v1`; the token as `bearer.TOKEN` in \
        `Sec-WebSocket-Protocol` or in the first `hello` message). The messages are MessagePack maps \
        described in docs/protocol.md. A request without an upgrade gets 426 `upgrade_required`.",
    responses(
        (status = 101, description = "Switching to the WebSocket protocol."),
        (status = "default", description = super::openapi::ERROR, body = crate::protocol::ErrorBody),
    ),
)]
pub async fn connect(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let config = state.realtime.config();
    check_origin(&req, &config.allowed_origins)?;
    let ip = super::auth::client_ip(&req, &state);
    let offered = offered_token(&req).map_err(|e| super::auth::charge_failure(&req, &state, e))?;
    let slot = match &offered {
        Some(token) => {
            let principal = state
                .verifier
                .authorize(token, Operation::Read)
                .map_err(|e| super::auth::charge_failure(&req, &state, e.into()))?;
            state.limits.connect_limited(&principal.user, principal.device.as_ref())?;
            Some(state.limits.open_session(&principal.user)?)
        }
        None => {
            state.limits.unauthenticated_limited(ip)?;
            None
        }
    };
    let (response, ws, stream) = actix_ws::handle_with_protocols(&req, payload, &[SUBPROTOCOL])
        .map_err(|e| ApiError::new(ErrorCode::UpgradeRequired, format!("a WebSocket upgrade is required: {e}")))?;
    let max = config.max_frame_bytes;
    let stream = stream.max_frame_size(max).aggregate_continuations().max_continuation_size(max);
    let id = state.realtime.next_id();
    let peer = Peer { ip, slot };
    actix_web::rt::spawn(Session::run(state, ws, stream, offered, id, peer));
    Ok(response)
}

/// Who is connecting, as far as the rate limits care.
struct Peer {
    /// The client's address.
    ip: Option<std::net::IpAddr>,
    /// A session slot taken before the upgrade (an offered token named the user).
    slot: Option<SessionSlot>,
}

/// Pages from other origins may not open sockets with the user's token unless the
/// operator allows them; clients that send no Origin (native apps) may.
fn check_origin(req: &HttpRequest, allowed: &[String]) -> Result<(), ApiError> {
    let Some(origin) = req.headers().get(header::ORIGIN) else { return Ok(()) };
    let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    let same_origin = origin.split_once("://").is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host));
    let listed = allowed.iter().any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin));
    if same_origin || listed {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::OriginNotAllowed,
        format!("origin {origin:?} may not open WebSockets here (see realtime.allowed_origins)"),
    ))
}

/// A token offered as `bearer.TOKEN` in `Sec-WebSocket-Protocol` (browsers cannot
/// set headers on a WebSocket). Base64 padding may be left off.
fn offered_token(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    for value in req.headers().get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let value =
            value.to_str().map_err(|_| ApiError::new(ErrorCode::InvalidToken, "malformed Sec-WebSocket-Protocol"))?;
        if let Some(token) = value.split(',').map(str::trim).find_map(|p| p.strip_prefix(BEARER_PREFIX)) {
            let mut token = token.to_owned();
            while token.len() % 4 != 0 {
                token.push('=');
            }
            return Ok(Some(token));
        }
    }
    Ok(None)
}

/// What the client sent next.
pub(crate) enum Incoming {
    Message(ClientMsg),
    /// A frame the session answers with an `error` and otherwise ignores.
    Bad(ApiError),
    /// A WebSocket ping, to answer with a pong.
    Ping(Bytes),
    /// A control frame needing nothing.
    Control,
}

/// What a push came to: its commit (or failure), or a refusal before it was queued.
enum Answer {
    Committed(Result<PushResponse, LogError>),
    Refused(ApiError),
}

type PushResult = (u64, Answer);

/// A push's answer waiting for the ops before it (`range`) and for the answers
/// before it to be sent.
struct Held {
    /// The seqs the push stored, if any.
    range: Option<(Seq, Seq)>,
    bytes: Bytes,
}

/// One WebSocket connection.
struct Session {
    state: web::Data<AppState>,
    ws: actix_ws::Session,
    id: u64,
    send_timeout: Duration,
    last_heard: Instant,
    // Set by `hello`.
    token: String,
    user: UserId,
    device: Option<DeviceId>,
    // Delivery.
    delivered: Seq,
    held: VecDeque<Held>,
    in_flight: FuturesOrdered<Pin<Box<dyn Future<Output = PushResult>>>>,
    lags: VecDeque<Instant>,
    /// Pushes a rate limit refused since the last one it let through.
    refused: u32,
}

impl Session {
    async fn run(
        state: web::Data<AppState>,
        mut ws: actix_ws::Session,
        mut stream: AggregatedMessageStream,
        offered: Option<String>,
        id: u64,
        peer: Peer,
    ) {
        let config = state.realtime.config().clone();
        let hello = tokio::time::timeout(
            Duration::from_millis(config.hello_timeout_ms),
            hello(&state, &mut ws, &mut stream, offered, peer.ip),
        )
        .await;
        let admitted = match hello {
            Err(_) => {
                // A connection that never authenticates counts as a failure of its address.
                let _ = state.limits.auth_failed(peer.ip);
                Err(End::Close(close::HELLO_TIMEOUT))
            }
            Ok(Err(end)) => Err(end),
            Ok(Ok((token, principal, device, since))) => admit(&state, &mut ws, peer.slot, &principal, device.as_ref())
                .await
                .map(|slot| (token, principal, device, since, slot)),
        };
        let end = match admitted {
            Err(end) => end,
            // The slot is held until the session ends.
            Ok((token, principal, device, since, _slot)) => {
                let mut session = Session {
                    state: state.clone(),
                    ws: ws.clone(),
                    id,
                    send_timeout: Duration::from_millis(config.send_timeout_ms),
                    last_heard: Instant::now(),
                    token,
                    user: principal.user,
                    device,
                    delivered: since,
                    held: VecDeque::new(),
                    in_flight: FuturesOrdered::new(),
                    lags: VecDeque::new(),
                    refused: 0,
                };
                match session.serve(&mut stream).await {
                    Ok(()) => End::Gone,
                    Err(end) => end,
                }
            }
        };
        if let End::Close(order) = end {
            tracing::debug!(session = id, code = order.code, reason = order.reason, "closing WebSocket");
            let reason = CloseReason { code: CloseCode::from(order.code), description: Some(order.reason.into()) };
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(reason))).await;
        }
    }

    /// Joins the hub, greets, catches up, then relays until the connection ends.
    async fn serve(&mut self, stream: &mut AggregatedMessageStream) -> Flow {
        let config = self.state.realtime.config().clone();
        let outbox = Arc::new(Outbox::new(config.outbox_frames, config.outbox_bytes));
        let _membership: Membership =
            self.state.realtime.join(&self.user, self.id, outbox.clone()).await.map_err(|_| End::Close(SHUTDOWN))?;
        let head = self.state.log.head(self.user.clone()).await.map_err(|e| self.log_failure(e))?;
        if self.delivered > head {
            self.send_msg(&ServerMsg::Error {
                id: None,
                code: ErrorCode::SinceBeyondHead.as_str().into(),
                message: format!("since {} is beyond the head {head}", self.delivered),
                head: Some(head),
                ids: None,
                conflicts: None,
                retry_after_ms: None,
            })
            .await?;
            return Err(End::Close(close::SINCE_BEYOND_HEAD));
        }
        self.send_msg(&ServerMsg::Welcome {
            v: VERSION,
            user: self.user.to_string(),
            device: self.device.as_ref().map(|d| d.to_string()),
            head,
            session: self.id,
            heartbeat_ms: config.heartbeat_ms,
        })
        .await?;
        if self.delivered < head {
            self.catch_up().await?;
        }

        let mut heartbeat = tokio::time::interval(Duration::from_millis(config.heartbeat_ms.max(1)));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        let mut token_check = tokio::time::interval(Duration::from_millis(config.token_check_ms.max(1)));
        token_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        token_check.reset();
        let idle = Duration::from_millis(config.idle_timeout_ms);
        loop {
            tokio::select! {
                biased;
                Some(result) = self.in_flight.next(), if !self.in_flight.is_empty() => self.on_pushed(result).await?,
                event = outbox.next() => match event {
                    Event::Frame(frame) => self.on_frame(&frame).await?,
                    Event::Lagging => self.on_lagging().await?,
                    Event::Close(order) => return Err(End::Close(order)),
                },
                incoming = stream.next(), if self.in_flight.len() < MAX_IN_FLIGHT => {
                    self.last_heard = Instant::now();
                    match read(incoming)? {
                        Incoming::Message(msg) => self.on_message(msg).await?,
                        Incoming::Bad(e) => self.send_msg(&ServerMsg::error(None, e.body().clone())).await?,
                        Incoming::Ping(bytes) => {
                            let ponged = tokio::time::timeout(self.send_timeout, self.ws.pong(&bytes)).await;
                            self.sent(ponged)?;
                        }
                        Incoming::Control => {}
                    }
                }
                _ = heartbeat.tick() => {
                    if self.last_heard.elapsed() >= idle {
                        return Err(End::Close(close::IDLE));
                    }
                    let pinged = tokio::time::timeout(self.send_timeout, self.ws.ping(b"")).await;
                    self.sent(pinged)?;
                }
                _ = token_check.tick() => {
                    self.authorize(Operation::Read).map_err(|e| End::Close(auth_close(&e)))?;
                }
            }
        }
    }

    /// A client message after `hello`.
    async fn on_message(&mut self, msg: ClientMsg) -> Flow {
        match msg {
            ClientMsg::Hello { .. } => {
                let e = ApiError::new(ErrorCode::UnexpectedMessage, "hello was already received");
                self.send_msg(&ServerMsg::error(None, e.body().clone())).await
            }
            ClientMsg::Ping { id } => self.send_msg(&ServerMsg::Pong { id }).await,
            ClientMsg::Ack { seq } => {
                let acked = match (self.authorize(Operation::Write), &self.device) {
                    (Err(e), _) => Err(ApiError::from(e)),
                    (Ok(_), None) => {
                        Err(ApiError::new(ErrorCode::InvalidField, "ack needs a device (in hello or the token)"))
                    }
                    (Ok(_), Some(device)) => {
                        self.state.log.ack(self.user.clone(), device.clone(), seq).await.map(drop).map_err(Into::into)
                    }
                };
                match acked {
                    Ok(()) => Ok(()),
                    Err(e) => self.send_msg(&ServerMsg::error(None, e.body().clone())).await,
                }
            }
            ClientMsg::Push { id, ops, expected_head, on_stale } => {
                if let Err(e) = self.authorize(Operation::Write) {
                    return self.answer_now(id, ApiError::from(e)).await;
                }
                let bytes = ops.iter().map(|op| op.payload.0.len()).sum();
                if let Err(limited) = self.state.limits.check_push(&self.user, self.device.as_ref(), ops.len(), bytes) {
                    self.refused += 1;
                    if self.refused >= MAX_REFUSED_PUSHES {
                        tracing::info!(session = self.id, "the client keeps pushing over its rate limit; closing");
                        return Err(End::Close(close::RATE_LIMITED));
                    }
                    return self.answer_now(id, ApiError::from(limited)).await;
                }
                self.refused = 0;
                let push = Push {
                    user: self.user.clone(),
                    device: self.device.clone(),
                    ops,
                    expected_head,
                    on_stale: on_stale.unwrap_or_default(),
                    origin: Some(self.id),
                };
                // Queued now, in the order the client sent its pushes; answered in
                // that order too.
                match self.state.log.start_push(push).await {
                    Ok(commit) => {
                        self.in_flight.push_back(Box::pin(async move { (id, Answer::Committed(commit.wait().await)) }));
                        Ok(())
                    }
                    Err(e) => self.answer_now(id, ApiError::from(e)).await,
                }
            }
        }
    }

    /// Answers a push refused before it was queued, after the answers to the pushes
    /// before it: answers keep the order of the requests.
    async fn answer_now(&mut self, id: u64, e: ApiError) -> Flow {
        self.in_flight.push_back(Box::pin(std::future::ready((id, Answer::Refused(e)))));
        Ok(())
    }

    /// A push committed (or failed): answer it, in order with the ops around it.
    async fn on_pushed(&mut self, (id, result): PushResult) -> Flow {
        let (range, bytes) = match result {
            Answer::Committed(Ok(response)) => {
                let stored = response.results.iter().filter(|r| r.status == OpStatus::Stored).map(|r| r.seq);
                let range = stored.clone().min().zip(stored.max());
                (
                    range,
                    encode(&ServerMsg::Pushed {
                        id,
                        results: response.results,
                        head: response.head,
                        snapshot_seq: response.snapshot_seq,
                        snapshot_due: response.snapshot_due,
                    })?,
                )
            }
            Answer::Committed(Err(e)) => (None, encode(&ServerMsg::error(Some(id), ApiError::from(e).body().clone()))?),
            Answer::Refused(e) => (None, encode(&ServerMsg::error(Some(id), e.body().clone()))?),
        };
        self.held.push_back(Held { range, bytes });
        self.flush_held().await
    }

    /// Sends the held answers, in order, as far as the ops before them have been
    /// delivered.
    async fn flush_held(&mut self) -> Flow {
        while let Some(held) = self.held.front() {
            let last = match held.range {
                Some((first, _)) if first > self.delivered + 1 => break,
                Some((_, last)) => last,
                None => self.delivered,
            };
            let bytes = held.bytes.clone();
            self.held.pop_front();
            self.send(bytes).await?;
            self.delivered = self.delivered.max(last);
        }
        Ok(())
    }

    /// A live frame from the hub.
    async fn on_frame(&mut self, frame: &Frame) -> Flow {
        if frame.to <= self.delivered {
            return Ok(());
        }
        let next = frame.from == self.delivered + 1;
        let own = frame.origin == Some(self.id);
        let blocked = self.held.front().is_some_and(|held| held.range.is_none_or(|(first, _)| first <= frame.to));
        match &frame.bytes {
            Some(bytes) if next && !own && !blocked => {
                self.send(bytes.clone()).await?;
                if let Some(at) = frame.committed_us {
                    let took = crate::log::now_us().saturating_sub(at).max(0) as u64;
                    self.state.realtime.stats().fanout_latency.record_us(took);
                }
                self.delivered = frame.to;
                self.flush_held().await
            }
            // A gap, a frame without ops, or our own commit ahead of what the client
            // has: read what is missing from the database.
            _ => self.catch_up().await,
        }
    }

    /// The outbox overflowed: tell the client, then catch up from the database.
    async fn on_lagging(&mut self) -> Flow {
        let now = Instant::now();
        self.lags.retain(|at| now.duration_since(*at) < LAG_WINDOW);
        self.lags.push_back(now);
        if self.lags.len() > MAX_LAGS {
            return Err(End::Close(close::TOO_SLOW));
        }
        tracing::debug!(session = self.id, delivered = self.delivered, "session lagging; catching up");
        self.send_msg(&ServerMsg::Resync { from: self.delivered, reason: ResyncReason::Lagging, snapshot_seq: None })
            .await?;
        self.catch_up().await
    }

    /// Sends every op after `delivered` from the database, in pages, up to the head.
    async fn catch_up(&mut self) -> Flow {
        loop {
            // Never read while a push is in flight: the page could hold its ops
            // before the session has its answer.
            while let Some(result) = self.in_flight.next().await {
                self.on_pushed(result).await?;
            }
            self.flush_held().await?;
            // Stop short of the first held answer's ops.
            let bound = self.held.front().and_then(|held| held.range).map(|(first, _)| first - 1);
            let room = bound.map_or(CATCH_UP_PAGE as i64, |b| (b - self.delivered).min(CATCH_UP_PAGE as i64));
            let limit = usize::try_from(room).unwrap_or(0);
            if limit == 0 {
                if self.held.is_empty() {
                    return Ok(());
                }
                continue;
            }
            let page = match self.state.log.pull(self.user.clone(), self.delivered, limit).await {
                Ok(page) => page,
                Err(LogError::ResyncRequired { snapshot_seq, .. }) => {
                    // Ops after `delivered` were pruned: the client bootstraps from
                    // the snapshot and comes back with `since` = its seq.
                    let from = self.delivered;
                    self.send_msg(&ServerMsg::Resync { from, reason: ResyncReason::Horizon, snapshot_seq }).await?;
                    return Err(End::Close(close::RESYNC_REQUIRED));
                }
                Err(e) => return Err(self.log_failure(e)),
            };
            let Some(last) = page.ops.last().map(|op| op.seq) else {
                // Nothing more (the held answers' ops are then missing: deliver them anyway).
                let held: Vec<Held> = self.held.drain(..).collect();
                for h in held {
                    self.send(h.bytes).await?;
                    self.delivered = self.delivered.max(h.range.map_or(0, |(_, last)| last));
                }
                return Ok(());
            };
            let has_more = page.has_more;
            let bytes = encode(&ServerMsg::Ops { ops: page.ops, head: page.head, committed_us: None })?;
            self.send(bytes).await?;
            self.delivered = last;
            self.flush_held().await?;
            if !has_more && self.held.is_empty() {
                // The client was busy reading, not silent.
                self.last_heard = Instant::now();
                return Ok(());
            }
        }
    }

    /// Ends the session on a failed read of the log.
    fn log_failure(&self, e: LogError) -> End {
        match e {
            LogError::Unavailable(cause) => {
                tracing::warn!(session = self.id, %cause, "database unavailable; closing WebSocket");
                End::Close(close::UNAVAILABLE)
            }
            LogError::SinceBeyondHead { .. } => End::Close(close::SINCE_BEYOND_HEAD),
            other => {
                tracing::error!(session = self.id, error = %other, "cannot read the log for a WebSocket");
                End::Close(close::INTERNAL)
            }
        }
    }

    fn authorize(&self, op: Operation) -> Result<Principal, AuthError> {
        self.state.verifier.authorize(&self.token, op)
    }

    async fn send_msg(&mut self, msg: &ServerMsg) -> Flow {
        let bytes = encode(msg)?;
        self.send(bytes).await
    }

    /// Sends one frame; a client that does not take it within the send timeout is
    /// too slow and is dropped.
    async fn send(&mut self, bytes: Bytes) -> Flow {
        let sent = tokio::time::timeout(self.send_timeout, self.ws.binary(bytes)).await;
        self.sent(sent)
    }

    fn sent(&self, outcome: Result<Result<(), actix_ws::Closed>, tokio::time::error::Elapsed>) -> Flow {
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => {
                tracing::info!(session = self.id, "the client does not read; closing");
                Err(End::Close(close::TOO_SLOW))
            }
        }
    }
}

/// The session ends when the server stops.
const SHUTDOWN: CloseOrder = CloseOrder { code: 1001, reason: "server_shutting_down" };

fn encode(msg: &ServerMsg) -> Result<Bytes, End> {
    msg.encode().map(Bytes::from).map_err(|e| {
        tracing::error!(error = %e, "cannot encode a WebSocket message");
        End::Close(close::INTERNAL)
    })
}

fn auth_close(e: &AuthError) -> CloseOrder {
    match e {
        AuthError::Invalid(_) => close::INVALID_TOKEN,
        AuthError::Expired => close::TOKEN_EXPIRED,
        AuthError::Revoked => close::TOKEN_REVOKED,
        AuthError::Forbidden(_) => close::FORBIDDEN,
    }
}

/// Decodes what the stream produced: the pure part of the session's loop
/// (`crate::fuzzing` drives it with arbitrary frames).
pub(crate) fn read(item: Option<Result<AggregatedMessage, ProtocolError>>) -> Result<Incoming, End> {
    match item {
        None => Err(End::Gone),
        // Echo the close handshake.
        Some(Ok(AggregatedMessage::Close(_))) => Err(End::Close(close::NORMAL)),
        Some(Err(ProtocolError::Overflow)) => Err(End::Close(close::TOO_BIG)),
        Some(Err(e)) => {
            tracing::debug!(error = %e, "bad WebSocket framing");
            Err(End::Close(close::BAD_FRAMING))
        }
        Some(Ok(AggregatedMessage::Ping(bytes))) => Ok(Incoming::Ping(bytes)),
        Some(Ok(AggregatedMessage::Pong(_))) => Ok(Incoming::Control),
        Some(Ok(AggregatedMessage::Text(_))) => {
            Ok(Incoming::Bad(ApiError::new(ErrorCode::MalformedFrame, "frames must be binary MessagePack, not text")))
        }
        Some(Ok(AggregatedMessage::Binary(bytes))) => Ok(decode(&bytes)),
    }
}

/// One client message from a binary frame.
fn decode(bytes: &[u8]) -> Incoming {
    let envelope: Envelope = match body::decode(Format::Msgpack, bytes) {
        Ok(envelope) => envelope,
        Err(e) => {
            let message = e.body().message.replacen("invalid body", "invalid frame", 1);
            return Incoming::Bad(ApiError::new(ErrorCode::MalformedFrame, message));
        }
    };
    match ClientMsg::try_from(envelope) {
        Ok(msg) => Incoming::Message(msg),
        Err(e @ crate::realtime::messages::BadMessage::UnknownType(_)) => {
            Incoming::Bad(ApiError::new(ErrorCode::UnknownMessage, e.to_string()))
        }
        Err(e) => Incoming::Bad(ApiError::new(ErrorCode::MalformedFrame, e.to_string())),
    }
}

/// Waits for `hello` (answering pings, refusing anything else) and authorizes it.
async fn hello(
    state: &web::Data<AppState>,
    ws: &mut actix_ws::Session,
    stream: &mut AggregatedMessageStream,
    offered: Option<String>,
    ip: Option<std::net::IpAddr>,
) -> Result<(String, Principal, Option<DeviceId>, Seq), End> {
    loop {
        let msg = match read(stream.next().await)? {
            Incoming::Control => continue,
            Incoming::Ping(bytes) => {
                if ws.pong(&bytes).await.is_err() {
                    return Err(End::Gone);
                }
                continue;
            }
            Incoming::Bad(e) => {
                send_error(ws, &e).await?;
                continue;
            }
            Incoming::Message(msg) => msg,
        };
        let ClientMsg::Hello { token, device, since } = msg else {
            let e = ApiError::new(ErrorCode::UnexpectedMessage, "the first message must be hello");
            send_error(ws, &e).await?;
            return Err(End::Close(close::PROTOCOL));
        };
        let Some(token) = token.or_else(|| offered.clone()) else {
            let e = ApiError::new(ErrorCode::InvalidToken, "no token: offer bearer.TOKEN or put it in hello");
            return Err(refuse_hello(state, ws, ip, e, close::INVALID_TOKEN).await);
        };
        let principal = match state.verifier.authorize(&token, Operation::Read) {
            Ok(principal) => principal,
            Err(e) => {
                let order = auth_close(&e);
                return Err(refuse_hello(state, ws, ip, ApiError::from(e), order).await);
            }
        };
        let device = match (&principal.device, device) {
            (Some(bound), Some(asked)) if *bound != asked => {
                let e = ApiError::new(
                    ErrorCode::DeviceMismatch,
                    format!("the token is bound to device \"{bound}\", not \"{asked}\""),
                );
                send_error(ws, &e).await?;
                return Err(End::Close(close::FORBIDDEN));
            }
            (Some(bound), _) => Some(bound.clone()),
            (None, asked) => asked,
        };
        let since = since.unwrap_or(0);
        if since < 0 {
            let e = ApiError::new(ErrorCode::InvalidField, format!("since must be >= 0, got {since}"));
            send_error(ws, &e).await?;
            return Err(End::Close(close::PROTOCOL));
        }
        return Ok((token, principal, device, since));
    }
}

/// A `hello` whose token failed: charged to the client's address; past its budget
/// the answer is `rate_limited` and close 4029 instead.
async fn refuse_hello(
    state: &AppState,
    ws: &mut actix_ws::Session,
    ip: Option<std::net::IpAddr>,
    e: ApiError,
    order: CloseOrder,
) -> End {
    let (e, order) = match state.limits.auth_failed(ip) {
        Ok(()) => (e, order),
        Err(limited) => (ApiError::from(limited), close::RATE_LIMITED),
    };
    match send_error(ws, &e).await {
        Ok(()) => End::Close(order),
        Err(end) => end,
    }
}

/// The rate limits' say on an authenticated `hello`: a session slot of the user
/// (the one taken before the upgrade, if it is this user's) and a connect charged
/// to the device and the user. A refusal is an `error` and close 4029.
async fn admit(
    state: &AppState,
    ws: &mut actix_ws::Session,
    slot: Option<SessionSlot>,
    principal: &Principal,
    device: Option<&DeviceId>,
) -> Result<SessionSlot, End> {
    let user = &principal.user;
    let admitted = match slot {
        Some(slot) if slot.user() == user => Ok(slot),
        _ => state.limits.open_session(user),
    }
    .and_then(|slot| state.limits.check_connect(user, device).map(|()| slot));
    match admitted {
        Ok(slot) => Ok(slot),
        Err(limited) => {
            send_error(ws, &ApiError::from(limited)).await?;
            Err(End::Close(close::RATE_LIMITED))
        }
    }
}

async fn send_error(ws: &mut actix_ws::Session, e: &ApiError) -> Result<(), End> {
    let bytes = encode(&ServerMsg::error(None, e.body().clone()))?;
    match tokio::time::timeout(Duration::from_secs(5), ws.binary(bytes)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(End::Gone),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn origins_same_listed_or_absent_are_allowed() {
        let req = |origin: Option<&str>| {
            let mut r = TestRequest::get().insert_header((header::HOST, "sync.example:8080"));
            if let Some(o) = origin {
                r = r.insert_header((header::ORIGIN, o));
            }
            r.to_http_request()
        };
        assert!(check_origin(&req(None), &[]).is_ok());
        assert!(check_origin(&req(Some("https://sync.example:8080")), &[]).is_ok());
        assert!(check_origin(&req(Some("https://evil.example")), &[]).is_err());
        assert!(check_origin(&req(Some("https://app.example")), &["https://app.example/".into()]).is_ok());
        assert!(check_origin(&req(Some("https://any.example")), &["*".into()]).is_ok());
    }

    #[test]
    fn bearer_subprotocol_tokens_are_found_and_repadded() {
        let req = TestRequest::get()
            .insert_header((header::SEC_WEBSOCKET_PROTOCOL, "opsync.v1, bearer.abcde"))
            .to_http_request();
        assert_eq!(offered_token(&req).unwrap().as_deref(), Some("abcde==="));
        let none = TestRequest::get().insert_header((header::SEC_WEBSOCKET_PROTOCOL, "opsync.v1")).to_http_request();
        assert_eq!(offered_token(&none).unwrap(), None);
    }

    #[test]
    fn frames_decode_to_messages_or_precise_errors() {
        assert!(matches!(decode(b"\xc1"), Incoming::Bad(e) if e.code() == ErrorCode::MalformedFrame));
        let unknown = rmp_serde::to_vec_named(&serde_json::json!({"type": "shout"})).unwrap();
        assert!(matches!(decode(&unknown), Incoming::Bad(e) if e.code() == ErrorCode::UnknownMessage));
        let ping = rmp_serde::to_vec_named(&serde_json::json!({"type": "ping", "id": 3})).unwrap();
        assert!(matches!(decode(&ping), Incoming::Message(ClientMsg::Ping { id: Some(3) })));
    }
}
