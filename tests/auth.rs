//! Tokens at the HTTP edge, on SQLite and Postgres: DESIGN.md invariant 6 (no token
//! reads or writes outside its own user's partition), rights, attenuation, expiry,
//! revocation, device binding.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use opsync::auth::{self, TokenSpec};
use opsync::client::Client;
use opsync::ids::{DeviceId, UserId};
use opsync::protocol::AckRequest;

both_backends!(
    requests_without_a_valid_token_are_refused,
    a_token_reaches_only_its_own_user,
    read_only_tokens_cannot_write,
    attenuated_tokens_are_honoured,
    expired_tokens_are_refused,
    revocation_through_the_admin_endpoint_is_immediate,
    revocation_in_the_database_reaches_a_running_server,
    device_bound_tokens_act_as_their_device,
);

fn spec(user: &str) -> TokenSpec {
    TokenSpec {
        user: UserId::new(user).unwrap(),
        device: None,
        ttl: Duration::from_secs(3600),
        write: true,
        admin: false,
    }
}

async fn status_with(s: &TestServer, authorization: Option<&str>) -> (u16, serde_json::Value) {
    let mut req = awc::Client::default().get(s.url("/v1/status"));
    if let Some(value) = authorization {
        req = req.insert_header(("Authorization", value.to_owned()));
    }
    let mut res = req.send().await.unwrap();
    let body = res.body().await.unwrap();
    (res.status().as_u16(), serde_json::from_slice(&body).unwrap())
}

async fn requests_without_a_valid_token_are_refused(s: TestServer) {
    let foreign = auth::mint(&auth::generate_root(), &spec("alice")).unwrap();
    let token = s.token("alice");
    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "missing"),
        (Some("Bearer".into()), "no token"),
        (Some("Bearer not-a-token".into()), "garbage"),
        (Some(format!("Basic {token}")), "wrong scheme"),
        (Some(format!("Bearer {foreign}")), "signed by another key"),
        (Some(format!("Bearer {}", "A".repeat(20_000))), "oversized"),
        (Some(format!("Bearer {}x", &token[..token.len() - 4])), "tampered"),
    ];
    for (header, what) in cases {
        let (status, body) = status_with(&s, header.as_deref()).await;
        assert_eq!((status, body["error"].as_str()), (401, Some("invalid_token")), "{what}");
    }
    let (status, _) = status_with(&s, Some(&format!("Bearer {token}"))).await;
    assert_eq!(status, 200);
    // Nothing was written by the refused requests.
    let res = awc::Client::default()
        .post(s.url("/v1/ops"))
        .insert_header(("Content-Type", "application/json"))
        .send_body(serde_json::to_vec(&push_of(vec![op(b"x")])).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers().get("www-authenticate").unwrap(), "Bearer");
    assert_eq!(s.total_ops().await, 0);
}

async fn a_token_reaches_only_its_own_user(s: TestServer) {
    let alice = s.client("alice");
    let bob = s.client("bob");
    let secret = op(b"alice's secret");
    alice.push(&push_from("laptop", vec![secret.clone(), op(b"more")])).await.unwrap();
    // Bob sees an empty log, no devices, and cannot ack into Alice's head.
    let page = bob.pull(0, None).await.unwrap();
    assert!(page.ops.is_empty());
    assert_eq!(page.head, 0);
    let status = bob.status().await.unwrap();
    assert_eq!((status.user.as_str(), status.head, status.devices.len()), ("bob", 0, 0));
    let ack = AckRequest { device: Some(DeviceId::new("laptop").unwrap()), seq: 2 };
    assert_eq!(bob.ack(&ack).await.unwrap_err().code(), Some("seq_beyond_head"));
    // Bob pushing Alice's op id stores a separate op in Bob's log; Alice's is untouched.
    let mut imitation = secret.clone();
    imitation.payload.0 = b"bob's".to_vec();
    assert_eq!(bob.push(&push_of(vec![imitation])).await.unwrap().results[0].seq, 1);
    let alice_log = alice.pull(0, None).await.unwrap();
    assert_eq!(alice_log.ops[0].payload, secret.payload);
    assert_eq!(alice_log.head, 2);
    assert_eq!(s.stored_ops("alice").await, 2);
    assert_eq!(s.stored_ops("bob").await, 1);
}

async fn read_only_tokens_cannot_write(s: TestServer) {
    s.client("alice").push(&push_of(vec![op(b"1")])).await.unwrap();
    let reader = Client::new(s.base.clone(), s.token_with(TokenSpec { write: false, ..spec("alice") }));
    assert_eq!(reader.pull(0, None).await.unwrap().ops.len(), 1);
    assert_eq!(reader.push(&push_of(vec![op(b"2")])).await.unwrap_err().code(), Some("forbidden"));
    let ack = AckRequest { device: Some(DeviceId::new("d").unwrap()), seq: 1 };
    assert_eq!(reader.ack(&ack).await.unwrap_err().code(), Some("forbidden"));
    assert_eq!(s.stored_ops("alice").await, 1);
}

async fn attenuated_tokens_are_honoured(s: TestServer) {
    let full = auth::parse(&s.token("alice"), &s.root.public()).unwrap();
    let read_only = Client::new(s.base.clone(), auth::attenuate(&full, true, None).unwrap());
    assert!(read_only.status().await.is_ok());
    assert_eq!(read_only.push(&push_of(vec![op(b"x")])).await.unwrap_err().code(), Some("forbidden"));
    let short = Client::new(s.base.clone(), auth::attenuate(&full, false, Some(Duration::from_secs(60))).unwrap());
    assert_eq!(short.push(&push_of(vec![op(b"x")])).await.unwrap().head, 1);
    let expired = Client::new(s.base.clone(), auth::attenuate(&full, false, Some(Duration::ZERO)).unwrap());
    assert_eq!(expired.status().await.unwrap_err().code(), Some("token_expired"));
    // An attenuated admin token cannot widen its rights: a block's facts are not trusted.
    let widened = full.append(biscuit_auth::macros::block!(r#"right("admin"); user("bob");"#)).unwrap();
    let widened = Client::new(s.base.clone(), widened.to_base64().unwrap());
    assert_eq!(widened.status().await.unwrap().user, "alice");
    assert_eq!(s.stored_ops("alice").await, 1);
}

async fn expired_tokens_are_refused(s: TestServer) {
    let expired = Client::new(s.base.clone(), s.token_with(TokenSpec { ttl: Duration::ZERO, ..spec("alice") }));
    assert_eq!(expired.push(&push_of(vec![op(b"x")])).await.unwrap_err().code(), Some("token_expired"));
    assert_eq!(expired.pull(0, None).await.unwrap_err().code(), Some("token_expired"));
    assert_eq!(s.total_ops().await, 0);
}

async fn revocation_through_the_admin_endpoint_is_immediate(s: TestServer) {
    let token = s.token("alice");
    let child = auth::attenuate(&auth::parse(&token, &s.root.public()).unwrap(), true, None).unwrap();
    let admin = s.token_with(TokenSpec { admin: true, ..spec("ops") });
    let url = s.url("/v1/admin/revoke");
    let revoke = |bearer: String| {
        let body = serde_json::json!({ "tokens": [token.clone()] }).to_string();
        let url = url.clone();
        async move {
            awc::Client::default()
                .post(url)
                .insert_header(("Authorization", format!("Bearer {bearer}")))
                .insert_header(("Content-Type", "application/json"))
                .send_body(body)
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(revoke(s.token("mallory")).await, 403, "revoking needs the admin right");
    assert!(Client::new(s.base.clone(), token.clone()).status().await.is_ok());
    assert_eq!(revoke(admin).await, 200);
    for t in [token, child] {
        assert_eq!(Client::new(s.base.clone(), t).status().await.unwrap_err().code(), Some("token_revoked"));
    }
}

async fn revocation_in_the_database_reaches_a_running_server(s: TestServer) {
    // What `opsync token revoke` does from another process: write the id, nothing else.
    let token = s.token("alice");
    let c = Client::new(s.base.clone(), token.clone());
    assert!(c.status().await.is_ok());
    let ids = auth::revocation_ids(&auth::parse(&token, &s.root.public()).unwrap());
    let mut conn = opsync::db::connect(&opsync::db::DbUrl::parse(&s.storage.db).unwrap()).unwrap();
    auth::revoke(&mut conn, &ids[..1]).unwrap();
    let deadline = std::time::Instant::now() + auth::REFRESH_INTERVAL * 5;
    loop {
        match c.status().await {
            Err(e) if e.code() == Some("token_revoked") => break,
            Ok(_) if std::time::Instant::now() < deadline => {
                actix_web::rt::time::sleep(Duration::from_millis(100)).await
            }
            other => panic!("the revocation did not take effect in time: {other:?}"),
        }
    }
}

async fn device_bound_tokens_act_as_their_device(s: TestServer) {
    let phone = Client::new(
        s.base.clone(),
        s.token_with(TokenSpec { device: Some(DeviceId::new("phone").unwrap()), ..spec("alice") }),
    );
    phone.push(&push_of(vec![op(b"1")])).await.unwrap();
    assert_eq!(phone.pull(0, None).await.unwrap().ops[0].device.as_deref(), Some("phone"));
    let err = phone.push(&push_from("laptop", vec![op(b"2")])).await.unwrap_err();
    assert_eq!(err.code(), Some("device_mismatch"));
    assert_eq!(phone.ack(&AckRequest { device: None, seq: 1 }).await.unwrap().device.as_str(), "phone");
    let other = AckRequest { device: Some(DeviceId::new("laptop").unwrap()), seq: 1 };
    assert_eq!(phone.ack(&other).await.unwrap_err().code(), Some("device_mismatch"));
    assert_eq!(s.stored_ops("alice").await, 1);
}
