//! Every HTTP request body the server decodes (push, ack, revoke), in JSON and
//! MessagePack, plain or gzip-compressed, through the handlers' own path
//! (`opsync::fuzzing::request_body`: size limit, bounded inflation, strict decode),
//! then the push and ack checks a handler runs before the database.
//!
//! The first byte chooses: bits 0-1 the message (push, ack, revoke, push), bit 2
//! MessagePack (else JSON), bits 3-4 the encoding (plain, plain, gzip of the
//! input, the input taken as a gzip stream), bit 5 nesting the input 8 to 2048
//! levels deep (the second byte says how deep), bit 6 with bit 2: the input read
//! as JSON and sent as MessagePack (mutations keep JSON valid far more often).
//!
//! Invariants: no panic and no stack overflow (the decoder runs on a quarter of a
//! worker's stack); a refusal is `400 malformed_body` or `413 body_too_large`
//! (only past the limit, before or after inflation); a decoded message
//! round-trips through both formats; the op checks refuse with their documented
//! codes only.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opsync::error::{ApiError, ErrorCode};
use opsync::fuzzing::request_body;
use opsync::http::RevokeRequest;
use opsync::http::body::Format;
use opsync::log::{Limits, LogError, validate_head, validate_push};
use opsync::protocol::{AckRequest, PushRequest};
use opsync_fuzz::{assert_round_trips, json_as_msgpack, nest, on_small_stack};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Small, so that bodies and bombs cross it.
const LIMIT: usize = 64 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Plain,
    /// The input, gzip-compressed here: the decoder sees it whole.
    Gzipped,
    /// The input as a gzip stream, valid or not.
    RawGzip,
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let format = if mode & 4 != 0 { Format::Msgpack } else { Format::Json };
    let encoding = match (mode >> 3) & 3 {
        0 | 1 => Encoding::Plain,
        2 => Encoding::Gzipped,
        _ => Encoding::RawGzip,
    };
    let input = match rest.split_first() {
        Some((&depth, inner)) if mode & 32 != 0 => nest(format, 8 * (depth as usize + 1), inner),
        _ if mode & 64 != 0 && format == Format::Msgpack => match json_as_msgpack(rest) {
            Some(bytes) => bytes,
            None => return,
        },
        _ => rest.to_vec(),
    };
    let body = match encoding {
        Encoding::Gzipped => gzip(&input),
        Encoding::Plain | Encoding::RawGzip => input,
    };
    let gzip = encoding != Encoding::Plain;
    on_small_stack(move || match mode & 3 {
        1 => {
            check::<AckRequest>(format, gzip, &body);
        }
        2 => {
            check::<RevokeRequest>(format, gzip, &body);
        }
        _ => {
            if let Some(push) = check::<PushRequest>(format, gzip, &body) {
                validate(&push);
            }
        }
    });
});

/// Decodes `body` as a handler would and checks the outcome.
fn check<T>(format: Format, gzip: bool, body: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    match request_body::<T>(format, gzip, body, LIMIT) {
        Ok(value) => {
            assert_round_trips(&value);
            Some(value)
        }
        Err(e) => {
            assert_refusal(&e, &[ErrorCode::MalformedBody, ErrorCode::BodyTooLarge]);
            if e.code() == ErrorCode::BodyTooLarge {
                assert!(gzip || body.len() > LIMIT, "body_too_large for {} plain bytes", body.len());
            }
            None
        }
    }
}

/// The checks a push passes before it is queued (`Log::start_push`).
fn validate(push: &PushRequest) {
    let limits = Limits { max_ops_per_push: 16, max_op_bytes: 1024, ..Limits::default() };
    let on_stale = push.on_stale.unwrap_or_default();
    let valid = validate_head(push.expected_head, on_stale)
        .and_then(|()| validate_push(&push.ops, &limits, opsync::log::now_ms()));
    if let Err(invalid) = valid {
        let e = ApiError::from(LogError::Invalid(invalid));
        let codes = [
            ErrorCode::EmptyPush,
            ErrorCode::TooManyOps,
            ErrorCode::OpTooLarge,
            ErrorCode::DuplicateOpInBatch,
            ErrorCode::InvalidOp,
            ErrorCode::InvalidField,
        ];
        assert_refusal(&e, &codes);
    }
}

/// A refusal carries one of `codes`, its wire name, and a JSON error body.
fn assert_refusal(e: &ApiError, codes: &[ErrorCode]) {
    assert!(codes.contains(&e.code()), "unexpected code {:?}: {}", e.code(), e.body().message);
    assert_eq!(e.body().error, e.code().as_str());
    assert!(e.code().status().is_client_error());
    let json = serde_json::to_vec(e.body()).unwrap_or_else(|err| panic!("error body does not encode: {err}"));
    assert!(!json.is_empty());
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap_or_else(|e| panic!("gzip: {e}"));
    gz.finish().unwrap_or_else(|e| panic!("gzip: {e}"))
}
