//! Token parsing and verification (`Verifier::authorize`, the one function every
//! request and WebSocket goes through, and `auth::parse`, which the revoke
//! endpoint runs on tokens in its body) on arbitrary input.
//!
//! The first byte chooses:
//! - 0: the rest as token text (as it arrives in a header, a `bearer.` subprotocol
//!   entry or a `hello`);
//! - 1: the rest as a serialized biscuit (protobuf), base64-encoded as tokens are;
//! - 2, 3: the rest as the Datalog of an attenuation block appended to a genuine
//!   token (read-write, or read-only and bound to a device): any holder can sign
//!   such a block, so its rules and checks are the attacker's.
//!
//! Invariants: no panic, no authorization outlives the authorizer's limits (a
//! slow one is a libFuzzer timeout); nothing but a token this server signed is
//! ever accepted; an attenuation block never adds a right, never changes the
//! user or the device, and a token within the size limit still parses for
//! revocation.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use biscuit_auth::builder::BlockBuilder;
use biscuit_auth::{Biscuit, KeyPair};
use libfuzzer_sys::fuzz_target;
use opsync::auth::{self, AuthError, Operation, RevocationList, TokenSpec, Verifier};
use opsync::ids::{DeviceId, UserId};

struct Fixture {
    root: KeyPair,
    verifier: Verifier,
    /// Read and write, any device.
    full: Biscuit,
    /// Read only, bound to device "phone".
    read_only: Biscuit,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = auth::generate_root();
        let verifier = Verifier::new(root.public(), RevocationList::default());
        let mint = |device: Option<&str>, write: bool| {
            let spec = TokenSpec {
                user: UserId::new("alice").unwrap_or_else(|e| panic!("{e}")),
                device: device.map(|d| DeviceId::new(d).unwrap_or_else(|e| panic!("{e}"))),
                ttl: Duration::from_secs(24 * 3600),
                write,
                admin: false,
            };
            let text = auth::mint(&root, &spec).unwrap_or_else(|e| panic!("mint: {e}"));
            auth::parse(&text, &root.public()).unwrap_or_else(|e| panic!("parse: {e}"))
        };
        let full = mint(None, true);
        let read_only = mint(Some("phone"), false);
        Fixture { root, verifier, full, read_only }
    })
}

const OPS: [Operation; 3] = [Operation::Read, Operation::Write, Operation::Admin];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let f = fixture();
    match mode % 4 {
        0 => {
            let text = String::from_utf8_lossy(rest);
            for op in OPS {
                assert_refused(f.verifier.authorize(&text, op));
            }
            assert!(auth::parse(&text, &f.root.public()).is_err());
        }
        1 => {
            let text = base64_url(rest);
            for op in OPS {
                assert_refused(f.verifier.authorize(&text, op));
            }
            assert!(Biscuit::from(rest, f.root.public()).is_err());
        }
        m => {
            let Ok(source) = std::str::from_utf8(rest) else { return };
            let Ok(block) = BlockBuilder::new().code(source) else { return };
            let (parent, device, can_write) =
                if m == 2 { (&f.full, None, true) } else { (&f.read_only, Some("phone"), false) };
            let Ok(child) = parent.append(block) else { return };
            let Ok(text) = child.to_base64() else { return };
            for op in OPS {
                match f.verifier.authorize(&text, op) {
                    Ok(principal) => {
                        assert_ne!(op, Operation::Admin, "a block granted admin");
                        assert!(can_write || op == Operation::Read, "a block granted write to a read-only token");
                        assert_eq!(principal.user.as_str(), "alice");
                        assert_eq!(principal.device.as_ref().map(DeviceId::as_str), device);
                    }
                    Err(AuthError::Invalid(_) | AuthError::Expired | AuthError::Forbidden(_)) => {}
                    Err(AuthError::Revoked) => panic!("nothing is revoked"),
                }
            }
            // The revoke endpoint reads any token this server signed, up to the size
            // limit (a holder can append a block that takes it past).
            match auth::parse(&text, &f.root.public()) {
                Ok(parsed) => assert_eq!(auth::revocation_ids(&parsed).len(), 2),
                Err(AuthError::Invalid(_)) if text.len() > auth::MAX_TOKEN_BYTES => {}
                Err(e) => panic!("a signed token of {} bytes: {e}", text.len()),
            }
        }
    }
});

/// Only a token signed by the root key is accepted, and nothing here is.
fn assert_refused(result: Result<auth::Principal, AuthError>) {
    match result {
        Err(AuthError::Invalid(_)) => {}
        other => panic!("an unsigned token got {other:?}"),
    }
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE.encode(bytes)
}
