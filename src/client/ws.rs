//! A Rust client of the WebSocket protocol (tests, the load generator): connect,
//! send client messages, receive server messages.

use std::time::Duration;

use actix_codec::Framed;
use awc::BoxedSocket;
use awc::ws::{Codec, Frame, Message};
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};

use super::ClientError;
use crate::realtime::messages::{BEARER_PREFIX, ClientMsg, SUBPROTOCOL, ServerMsg};

/// The largest frame the client accepts.
const MAX_FRAME: usize = 64 << 20;

/// How the token reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenIn {
    /// `Sec-WebSocket-Protocol: opsync.v1, bearer.TOKEN`.
    Subprotocol,
    /// The `hello` message.
    Hello,
}

/// What arrived.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// A server message.
    Msg(ServerMsg),
    /// The server closed the connection (code and reason, if it gave them).
    Closed(Option<u16>, Option<String>),
    /// A text frame (servers never send them; for tests).
    Text(String),
    /// A pong frame (the answer to a ping frame the client sent).
    Pong(Bytes),
}

/// One open WebSocket.
pub struct WsConn {
    io: Framed<BoxedSocket, Codec>,
}

impl std::fmt::Debug for WsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsConn").finish_non_exhaustive()
    }
}

/// Opens `GET /v1/ws` on `base` (`http://…`), offering `token` in the subprotocol
/// header when `token_in` says so. Does not send `hello`.
pub async fn open(base: &str, token: &str, token_in: TokenIn) -> Result<WsConn, ClientError> {
    open_with(base, token_in.eq(&TokenIn::Subprotocol).then_some(token), None).await
}

/// Opens `GET /v1/ws` with an optional subprotocol token and Origin header.
pub async fn open_with(base: &str, token: Option<&str>, origin: Option<&str>) -> Result<WsConn, ClientError> {
    let http = awc::Client::builder().timeout(Duration::from_secs(30)).finish();
    open_on(&http, base, token, origin).await
}

/// Like [`open_with`], through `http` (`https://` bases become `wss://`).
pub async fn open_on(
    http: &awc::Client,
    base: &str,
    token: Option<&str>,
    origin: Option<&str>,
) -> Result<WsConn, ClientError> {
    let url = format!("{}/v1/ws", base.trim_end_matches('/').replacen("http", "ws", 1));
    let mut protocols = vec![SUBPROTOCOL.to_owned()];
    if let Some(token) = token {
        protocols.push(format!("{BEARER_PREFIX}{}", token.trim_end_matches('=')));
    }
    let mut request = http.ws(url).protocols(protocols).max_frame_size(MAX_FRAME);
    if let Some(origin) = origin {
        request = request.origin(origin);
    }
    match request.connect().await {
        Ok((_, io)) => Ok(WsConn { io }),
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
            Err(ClientError::Api { status: status.as_u16(), body: Box::new(rejected(status)) })
        }
        Err(e) => Err(ClientError::Transport(e.to_string())),
    }
}

fn rejected(status: awc::http::StatusCode) -> crate::protocol::ErrorBody {
    crate::protocol::ErrorBody {
        error: "upgrade_refused".into(),
        message: format!("the server refused the upgrade with {status}"),
        head: None,
        ids: None,
        conflicts: None,
        horizon: None,
        snapshot_seq: None,
        retry_after_ms: None,
    }
}

impl WsConn {
    /// Sends a client message.
    pub async fn send(&mut self, msg: &ClientMsg) -> Result<(), ClientError> {
        let bytes = rmp_serde::to_vec_named(msg).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.send_frame(Message::Binary(Bytes::from(bytes))).await
    }

    /// Sends any frame (tests send bad ones).
    pub async fn send_frame(&mut self, frame: Message) -> Result<(), ClientError> {
        self.io.send(frame).await.map_err(|e| ClientError::Transport(e.to_string()))
    }

    /// The next message, answering pings on the way.
    pub async fn recv(&mut self) -> Result<Received, ClientError> {
        loop {
            let frame = match self.io.next().await {
                None => return Ok(Received::Closed(None, None)),
                Some(Err(e)) => return Err(ClientError::Transport(e.to_string())),
                Some(Ok(frame)) => frame,
            };
            match frame {
                Frame::Binary(bytes) => {
                    let msg = rmp_serde::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))?;
                    return Ok(Received::Msg(msg));
                }
                Frame::Text(bytes) => return Ok(Received::Text(String::from_utf8_lossy(&bytes).into_owned())),
                Frame::Ping(bytes) => self.send_frame(Message::Pong(bytes)).await?,
                Frame::Pong(bytes) => return Ok(Received::Pong(bytes)),
                Frame::Continuation(_) => {}
                Frame::Close(reason) => {
                    let code = reason.as_ref().map(|r| u16::from(r.code));
                    return Ok(Received::Closed(code, reason.and_then(|r| r.description)));
                }
            }
        }
    }

    /// The next binary frame as it came (`None` once the connection is closed),
    /// answering pings on the way: for clients that decode only what they need.
    pub async fn recv_bytes(&mut self) -> Result<Option<Bytes>, ClientError> {
        loop {
            match self.io.next().await {
                None | Some(Ok(Frame::Close(_))) => return Ok(None),
                Some(Err(e)) => return Err(ClientError::Transport(e.to_string())),
                Some(Ok(Frame::Binary(bytes))) => return Ok(Some(bytes)),
                Some(Ok(Frame::Ping(bytes))) => self.send_frame(Message::Pong(bytes)).await?,
                Some(Ok(_)) => {}
            }
        }
    }

    /// The next server message, or an error if the connection closed instead.
    pub async fn recv_msg(&mut self) -> Result<ServerMsg, ClientError> {
        match self.recv().await? {
            Received::Msg(msg) => Ok(msg),
            other => Err(ClientError::Transport(format!("expected a message, got {other:?}"))),
        }
    }

    /// Closes the connection.
    pub async fn close(mut self) {
        let _ = self.io.send(Message::Close(None)).await;
    }
}
