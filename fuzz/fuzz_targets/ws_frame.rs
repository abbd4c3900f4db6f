//! The WebSocket session's frame handler (`opsync::fuzzing::ws_frame`, the pure
//! part of its loop): a frame becomes a client message, an `error` answer, a pong,
//! nothing, or a close; then, for a push, the checks the session runs before it
//! queues it.
//!
//! The first byte chooses the frame: 0-4 binary, the rest as it is (bit 4 also
//! nests it 16 to 128 levels deep); 5-9 binary, the rest read as JSON and sent as
//! MessagePack (byte mutations of a MessagePack map rarely keep its lengths
//! consistent; of JSON text they do, so this reaches what follows the decoding),
//! or with bit 4 the rest, as text, in one string field of a message (bits 5-7
//! pick which: the text the server itself handles); 10 text, 11 ping, 12 pong,
//! 13 close, 14 an oversized frame, 15 bad framing, else the end of the stream.
//!
//! Invariants: no panic and no stack overflow (on a quarter of a worker's
//! stack); a binary frame is a message or a `malformed_frame` / `unknown_message`
//! refusal whose `error` frame encodes and reads back with that code; a message
//! encodes and decodes to itself; control frames get their documented action
//! and close code.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use opsync::error::{ApiError, ErrorCode};
use opsync::fuzzing::{WsAction, WsFrame, error_frame, ws_frame};
use opsync::http::body::Format;
use opsync::log::{Limits, LogError, validate_head, validate_push};
use opsync::realtime::messages::{ClientMsg, ServerMsg};
use opsync_fuzz::{json_as_msgpack, nest, on_small_stack};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else { return };
    let bytes = Bytes::copy_from_slice(rest);
    let frame = match kind & 0x0f {
        0..=4 if kind & 0x10 != 0 => {
            WsFrame::Binary(nest(Format::Msgpack, 16 * (1 + (kind >> 5) as usize), rest).into())
        }
        0..=4 => WsFrame::Binary(bytes),
        5..=9 if kind & 0x10 != 0 => WsFrame::Binary(string_field(kind >> 5, &String::from_utf8_lossy(rest)).into()),
        5..=9 => match json_as_msgpack(rest) {
            Some(bytes) => WsFrame::Binary(bytes.into()),
            None => return,
        },
        10 => WsFrame::Text(String::from_utf8_lossy(rest).into_owned()),
        11 => WsFrame::Ping(bytes),
        12 => WsFrame::Pong(bytes),
        13 => WsFrame::Close,
        14 => WsFrame::Overflow,
        15 => WsFrame::BadFraming,
        _ => WsFrame::End,
    };
    on_small_stack(move || check(frame));
});

/// A message with `text` in one of its string fields.
fn string_field(which: u8, text: &str) -> Vec<u8> {
    let op = |key: &str| {
        let mut op = serde_json::json!({"id": "01936f3e-8b7a-7cc1-9c1e-1a2b3c4d5e6f", "payload": ""});
        op[key] = text.into();
        serde_json::json!({"type": "push", "id": 1, "ops": [op]})
    };
    let value = match which {
        0 => serde_json::json!({"type": text}),
        1 => serde_json::json!({"type": "hello", "device": text}),
        2 => serde_json::json!({"type": "hello", "token": text}),
        3 => op("kind"),
        4 => op("entity"),
        5 => op("payload"),
        6 => op("id"),
        _ => serde_json::json!({"type": "push", "id": 1, "ops": [], "on_stale": text}),
    };
    rmp_serde::to_vec_named(&value).unwrap_or_else(|e| panic!("{e}"))
}

fn check(frame: WsFrame) {
    let action = ws_frame(frame.clone());
    match (&frame, action) {
        (WsFrame::Binary(_), WsAction::Message(msg)) => {
            // The message is the same after a trip through the wire format.
            let bytes = rmp_serde::to_vec_named(&msg).unwrap_or_else(|e| panic!("{msg:?} does not encode: {e}"));
            assert_eq!(ws_frame(WsFrame::Binary(bytes.into())), WsAction::Message(msg.clone()));
            if let ClientMsg::Push { ops, expected_head, on_stale, .. } = &msg {
                let valid = validate_head(*expected_head, on_stale.unwrap_or_default())
                    .and_then(|()| validate_push(ops, &Limits::default(), opsync::log::now_ms()));
                if let Err(invalid) = valid {
                    let e = ApiError::from(LogError::Invalid(invalid));
                    assert_answer(
                        &e,
                        &[
                            ErrorCode::EmptyPush,
                            ErrorCode::TooManyOps,
                            ErrorCode::OpTooLarge,
                            ErrorCode::DuplicateOpInBatch,
                            ErrorCode::InvalidOp,
                            ErrorCode::InvalidField,
                        ],
                    );
                }
            }
        }
        (WsFrame::Binary(_), WsAction::Refuse(e)) => {
            assert_answer(&e, &[ErrorCode::MalformedFrame, ErrorCode::UnknownMessage]);
        }
        (WsFrame::Text(_), WsAction::Refuse(e)) => assert_answer(&e, &[ErrorCode::MalformedFrame]),
        (WsFrame::Ping(sent), WsAction::Pong(echoed)) => assert_eq!(sent, &echoed),
        (WsFrame::Pong(_), WsAction::Nothing) | (WsFrame::End, WsAction::Gone) => {}
        (WsFrame::Close, WsAction::Close { code: 1000, reason: "closing" })
        | (WsFrame::Overflow, WsAction::Close { code: 1009, reason: "frame_too_large" })
        | (WsFrame::BadFraming, WsAction::Close { code: 1002, reason: "protocol_error" }) => {}
        (frame, action) => panic!("{frame:?} became {action:?}"),
    }
}

/// The session answers `e` with an `error` frame: it must encode (else the
/// session closes with 1011) and carry the code.
fn assert_answer(e: &ApiError, codes: &[ErrorCode]) {
    assert!(codes.contains(&e.code()), "unexpected code {:?}: {}", e.code(), e.body().message);
    let frame = error_frame(e).unwrap_or_else(|err| panic!("the error frame does not encode: {err}"));
    match rmp_serde::from_slice::<ServerMsg>(&frame) {
        Ok(ServerMsg::Error { code, id: None, .. }) => assert_eq!(code, e.code().as_str()),
        other => panic!("the error frame reads back as {other:?}"),
    }
}
