//! Pure entry points into what the server does with a client's bytes, for the
//! fuzz targets in `fuzz/` and their regression tests. Each one runs the very
//! function a handler or a WebSocket session runs, without a socket or a database.

use bytes::Bytes;

use crate::error::{ApiError, ErrorCode};
use crate::http::body::{self, Format};
use crate::http::ws::{self, End, Incoming};
use crate::realtime::messages::{ClientMsg, ServerMsg};

/// Decodes a request body as a handler does (see `http::decode_body`): refused past
/// `limit` bytes as sent, inflated within `limit` if `gzip`, then decoded strictly.
/// Every failure is an [`ApiError`] with the code the client would get.
pub fn request_body<T: serde::de::DeserializeOwned>(
    format: Format,
    gzip: bool,
    bytes: &[u8],
    limit: usize,
) -> Result<T, ApiError> {
    if bytes.len() > limit {
        return Err(ApiError::new(ErrorCode::BodyTooLarge, format!("the body is larger than {limit} bytes")));
    }
    if gzip {
        let inflated = body::inflate(bytes, limit)?;
        return body::decode(format, &inflated);
    }
    body::decode(format, bytes)
}

/// A WebSocket frame as the session's stream yields it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsFrame {
    /// A text frame.
    Text(String),
    /// A binary frame (one MessagePack message, if the client is well behaved).
    Binary(Bytes),
    /// A ping frame.
    Ping(Bytes),
    /// A pong frame.
    Pong(Bytes),
    /// The client's close frame.
    Close,
    /// A frame (or reassembled message) over `realtime.max_frame_bytes`.
    Overflow,
    /// Invalid WebSocket framing.
    BadFraming,
    /// The stream ended (the client went away).
    End,
}

/// What the session does with a frame.
#[derive(Debug, Clone, PartialEq)]
pub enum WsAction {
    /// Handle this client message.
    Message(ClientMsg),
    /// Answer with an `error` message carrying this error's code and go on.
    Refuse(ApiError),
    /// Answer with a pong frame carrying these bytes.
    Pong(Bytes),
    /// Nothing to do.
    Nothing,
    /// Close the connection with this code and reason.
    Close {
        /// The close code.
        code: u16,
        /// The close reason (an error code's name).
        reason: &'static str,
    },
    /// The client is gone: end without a close frame.
    Gone,
}

/// Turns one frame into the session's action, through the function its loop
/// calls ([`ws::read`]).
pub fn ws_frame(frame: WsFrame) -> WsAction {
    use actix_ws::{AggregatedMessage, ProtocolError};
    let item = match frame {
        WsFrame::Text(text) => Some(Ok(AggregatedMessage::Text(text.into()))),
        WsFrame::Binary(bytes) => Some(Ok(AggregatedMessage::Binary(bytes))),
        WsFrame::Ping(bytes) => Some(Ok(AggregatedMessage::Ping(bytes))),
        WsFrame::Pong(bytes) => Some(Ok(AggregatedMessage::Pong(bytes))),
        WsFrame::Close => Some(Ok(AggregatedMessage::Close(None))),
        WsFrame::Overflow => Some(Err(ProtocolError::Overflow)),
        WsFrame::BadFraming => Some(Err(ProtocolError::UnmaskedFrame)),
        WsFrame::End => None,
    };
    match ws::read(item) {
        Ok(Incoming::Message(msg)) => WsAction::Message(msg),
        Ok(Incoming::Bad(e)) => WsAction::Refuse(e),
        Ok(Incoming::Ping(bytes)) => WsAction::Pong(bytes),
        Ok(Incoming::Control) => WsAction::Nothing,
        Err(End::Close(order)) => WsAction::Close { code: order.code, reason: order.reason },
        Err(End::Gone) => WsAction::Gone,
    }
}

/// The frame the session sends for a refusal (it closes the connection with 1011
/// if this fails).
pub fn error_frame(e: &ApiError) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    ServerMsg::error(None, e.body().clone()).encode()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::PushRequest;

    #[test]
    fn bodies_decode_through_the_handlers_path() {
        let json = br#"{"ops":[{"id":"01936f3e-8b7a-7cc1-9c1e-1a2b3c4d5e6f","payload":"aGk="}]}"#;
        let push: PushRequest = request_body(Format::Json, false, json, 1024).unwrap();
        assert_eq!(push.ops[0].payload.0, b"hi");
        let too_big = request_body::<PushRequest>(Format::Json, false, json, 10).unwrap_err();
        assert_eq!(too_big.code(), ErrorCode::BodyTooLarge);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &vec![b' '; 1 << 20]).unwrap();
        let bomb = gz.finish().unwrap();
        let refused = request_body::<PushRequest>(Format::Json, true, &bomb, 4096).unwrap_err();
        assert_eq!(refused.code(), ErrorCode::BodyTooLarge);
    }

    #[test]
    fn frames_become_actions() {
        assert_eq!(ws_frame(WsFrame::Overflow), WsAction::Close { code: 1009, reason: "frame_too_large" });
        assert_eq!(ws_frame(WsFrame::End), WsAction::Gone);
        let ping = rmp_serde::to_vec_named(&ClientMsg::Ping { id: Some(1) }).unwrap();
        assert_eq!(ws_frame(WsFrame::Binary(ping.into())), WsAction::Message(ClientMsg::Ping { id: Some(1) }));
        let WsAction::Refuse(e) = ws_frame(WsFrame::Text("{}".into())) else { panic!("a text frame") };
        assert_eq!(e.code(), ErrorCode::MalformedFrame);
        assert!(error_frame(&e).is_ok());
    }
}
