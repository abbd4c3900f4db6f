//! The demo app and the browser client, served from the binary: `/` is the demo page,
//! `/opsync.js` the client bundle, each with its type and an ETag; and a first start
//! prints a demo link whose token (in the fragment, never sent) opens the user's log.
//! The browser itself is tested in clients/js/e2e.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use actix_web::http::StatusCode;
use common::{Backend, TestServer};

async fn get(url: &str, headers: &[(&str, &str)]) -> (StatusCode, awc::http::header::HeaderMap, Vec<u8>) {
    let mut req = awc::Client::default().get(url);
    for (name, value) in headers {
        req = req.insert_header((*name, *value));
    }
    let mut res = req.send().await.unwrap();
    let body = res.body().limit(4 * 1024 * 1024).await.unwrap().to_vec();
    (res.status(), res.headers().clone(), body)
}

fn header<'a>(headers: &'a awc::http::header::HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

#[actix_web::test]
async fn the_demo_and_the_client_are_served_with_their_types() {
    let Some(s) = TestServer::start(Backend::Sqlite).await else { return };
    let cases = [
        ("/", "text/html; charset=utf-8", "<script type=\"module\" src=\"/demo.js\">"),
        ("/opsync.js", "text/javascript; charset=utf-8", "export {"),
        ("/demo.js", "text/javascript; charset=utf-8", "from \"/opsync.js\""),
        ("/demo.css", "text/css; charset=utf-8", "#tasks"),
    ];
    for (path, content_type, excerpt) in cases {
        let (status, headers, body) = get(&s.url(path), &[]).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(header(&headers, "content-type"), content_type, "{path}");
        assert_eq!(header(&headers, "cache-control"), "no-cache", "{path}");
        assert_eq!(header(&headers, "x-content-type-options"), "nosniff", "{path}");
        let text = String::from_utf8(body).unwrap();
        assert!(text.contains(excerpt), "{path} does not contain {excerpt:?}");

        // Revalidation: the same ETag gets 304 without a body; HEAD answers the headers.
        let etag = header(&headers, "etag").to_owned();
        assert!(etag.len() == 34 && etag.starts_with('"') && etag.ends_with('"'), "{path}: ETag {etag:?}");
        let (status, again, body) = get(&s.url(path), &[("If-None-Match", &etag)]).await;
        assert_eq!(
            (status, header(&again, "etag"), body.len()),
            (StatusCode::NOT_MODIFIED, etag.as_str(), 0),
            "{path}"
        );
        let (status, _, body) = get(&s.url(path), &[("If-None-Match", "\"something-else\"")]).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(!body.is_empty());
        let res = awc::Client::default().head(s.url(path)).send().await.unwrap();
        assert_eq!((res.status(), header(res.headers(), "etag")), (StatusCode::OK, etag.as_str()), "HEAD {path}");
    }

    // The page holding a token loads only this server's code.
    let (_, headers, _) = get(&s.url("/"), &[]).await;
    let csp = header(&headers, "content-security-policy");
    assert!(csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"), "{csp}");
    assert_eq!(header(&headers, "referrer-policy"), "no-referrer");

    // The client bundle is a self-contained ES module: nothing left to resolve.
    let (_, _, bundle) = get(&s.url("/opsync.js"), &[]).await;
    let bundle = String::from_utf8(bundle).unwrap();
    assert!(bundle.contains("Opsync"), "the bundle exports the client");
    assert!(!bundle.contains("from \"@msgpack") && !bundle.contains("require("), "the bundle imports nothing");

    // Other methods and unknown files keep their JSON errors.
    let res = awc::Client::default().post(s.url("/opsync.js")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    let (status, headers, _) = get(&s.url("/nope.js"), &[]).await;
    assert_eq!((status, header(&headers, "content-type")), (StatusCode::NOT_FOUND, "application/json"));
}

/// `opsync serve`, killed on drop.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `opsync serve` on a free port in `dir`; returns it and its stdout lines.
fn serve(dir: &std::path::Path) -> (Serve, mpsc::Receiver<String>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_opsync"));
    for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("OPSYNC_")) {
        cmd.env_remove(name);
    }
    cmd.args(["--data-dir", dir.to_str().unwrap(), "--listen", "127.0.0.1:0", "serve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = Serve(cmd.spawn().unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let (send, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    (child, lines)
}

fn wait_for(lines: &mpsc::Receiver<String>, what: &str, wanted: impl Fn(&str) -> bool) -> String {
    loop {
        match lines.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if wanted(&line) => return line,
            Ok(_) => {}
            Err(e) => panic!("the server did not print {what}: {e}"),
        }
    }
}

#[actix_web::test]
async fn a_first_start_prints_a_demo_link_that_keeps_the_token_out_of_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (server, lines) = serve(dir.path());
    let listening = wait_for(&lines, "the listening line", |l| l.starts_with("opsync is listening on "));
    let url = listening.trim_start_matches("opsync is listening on ").trim().to_owned();
    let link = wait_for(&lines, "the demo link", |l| l.contains("/#token="));
    let link = link.trim();
    let (page, token) = link.split_once('#').unwrap();
    assert_eq!(page, format!("{url}/"), "the link opens the demo page of this server");
    let token = token.strip_prefix("token=").unwrap();

    // The browser requests the page without the fragment; the token then works.
    let (status, headers, _) = get(page, &[]).await;
    assert_eq!((status, header(&headers, "content-type")), (StatusCode::OK, "text/html; charset=utf-8"));
    let res = awc::Client::default()
        .get(format!("{url}/v1/status"))
        .insert_header(("Authorization", format!("Bearer {token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "the demo link's token is a working token");
    let client = opsync::client::Client::new(url.clone(), token.to_owned());
    client.push(&common::push_of(vec![common::op(b"first")])).await.unwrap();
    drop(server);

    // Later starts (the database holds a user) point to the demo and the token command.
    let (_server, lines) = serve(dir.path());
    let listening = wait_for(&lines, "the listening line", |l| l.starts_with("opsync is listening on "));
    let url = listening.trim_start_matches("opsync is listening on ").trim().to_owned();
    let next = lines.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(next, format!("The demo app is at {url}/ (it asks for a token: opsync token issue --user demo)."));
}
