//! A Rust client of the HTTP protocol, used by the tests and the load generator.
//! It speaks JSON or MessagePack and returns the server's typed answers.

pub mod ws;

use actix_web::http::header;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::http::body::{self, Format};
use crate::ids::Seq;
use crate::protocol::{
    AccountDeleted, AckRequest, AckResponse, ErrorBody, PullResponse, PushRequest, PushResponse, SnapshotInfo,
    StatusResponse,
};

/// The largest response body the client reads.
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// What can go wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{status}: {} ({})", .body.error, .body.message)]
    Api {
        /// HTTP status.
        status: u16,
        /// The error body.
        body: Box<ErrorBody>,
    },
    /// The request did not get an answer.
    #[error("transport: {0}")]
    Transport(String),
    /// The answer could not be decoded.
    #[error("decode: {0}")]
    Decode(String),
}

impl ClientError {
    /// The error code, if the server answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { body, .. } => Some(&body.error),
            _ => None,
        }
    }
}

/// A client for one user (one token) of one server.
#[derive(Clone)]
pub struct Client {
    http: awc::Client,
    base: String,
    token: String,
    format: Format,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).field("format", &self.format).finish_non_exhaustive()
    }
}

impl Client {
    /// A JSON client of the server at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Self {
        let http = awc::Client::builder().timeout(std::time::Duration::from_secs(60)).finish();
        Self { http, base: base.into().trim_end_matches('/').to_owned(), token: token.into(), format: Format::Json }
    }

    /// A JSON client that sends its requests through `http` (e.g. one whose
    /// connector trusts a private certificate authority, for `https://` servers).
    pub fn with_http(http: awc::Client, base: impl Into<String>, token: impl Into<String>) -> Self {
        Self { http, base: base.into().trim_end_matches('/').to_owned(), token: token.into(), format: Format::Json }
    }

    /// The same client speaking MessagePack.
    pub fn msgpack(mut self) -> Self {
        self.format = Format::Msgpack;
        self
    }

    /// Pushes ops.
    pub async fn push(&self, request: &PushRequest) -> Result<PushResponse, ClientError> {
        self.send(awc::http::Method::POST, "/v1/ops", Some(request)).await
    }

    /// Pulls one page after `since`.
    pub async fn pull(&self, since: Seq, limit: Option<usize>) -> Result<PullResponse, ClientError> {
        let path = match limit {
            Some(limit) => format!("/v1/ops?since={since}&limit={limit}"),
            None => format!("/v1/ops?since={since}"),
        };
        self.send::<(), _>(awc::http::Method::GET, &path, None).await
    }

    /// Pulls one page after `since`, and the size of its body on the wire (for
    /// throughput figures).
    pub async fn pull_sized(&self, since: Seq, limit: usize) -> Result<(PullResponse, usize), ClientError> {
        let path = format!("/v1/ops?since={since}&limit={limit}");
        let bytes = self.fetch::<()>(awc::http::Method::GET, &path, None).await?;
        let page = body::decode(self.format, &bytes).map_err(|e| ClientError::Decode(e.to_string()))?;
        Ok((page, bytes.len()))
    }

    /// Long-polls: one page after `since`, held up to `wait` seconds for a commit.
    pub async fn pull_wait(&self, since: Seq, wait: u64) -> Result<PullResponse, ClientError> {
        self.send::<(), _>(awc::http::Method::GET, &format!("/v1/ops?since={since}&wait={wait}"), None).await
    }

    /// Pulls every op after `since`, page by page.
    pub async fn pull_all(&self, since: Seq) -> Result<PullResponse, ClientError> {
        let mut page = self.pull(since, None).await?;
        while page.has_more {
            let last = page.ops.last().map_or(since, |op| op.seq);
            let next = self.pull(last, None).await?;
            page.ops.extend(next.ops);
            page.head = next.head;
            page.has_more = next.has_more;
        }
        Ok(page)
    }

    /// Records a device's cursor.
    pub async fn ack(&self, request: &AckRequest) -> Result<AckResponse, ClientError> {
        self.send(awc::http::Method::POST, "/v1/ack", Some(request)).await
    }

    /// The user's head and devices.
    pub async fn status(&self) -> Result<StatusResponse, ClientError> {
        self.send::<(), _>(awc::http::Method::GET, "/v1/status", None).await
    }

    /// Uploads a snapshot of the state after applying ops up to `seq`.
    pub async fn put_snapshot(&self, seq: Seq, data: Vec<u8>) -> Result<SnapshotInfo, ClientError> {
        let response = self
            .http
            .put(format!("{}/v1/snapshot?seq={seq}", self.base))
            .insert_header((header::AUTHORIZATION, format!("Bearer {}", self.token)))
            .insert_header((header::ACCEPT, self.format.content_type()))
            .insert_header((header::CONTENT_TYPE, "application/octet-stream"))
            .send_body(data)
            .await;
        self.answer(response).await
    }

    /// Downloads the latest snapshot (or the latest at or before a seq): its seq and bytes.
    pub async fn snapshot(&self, at_or_before: Option<Seq>) -> Result<(Seq, Vec<u8>), ClientError> {
        let query = at_or_before.map(|s| format!("?at_or_before={s}")).unwrap_or_default();
        let mut response = self
            .http
            .get(format!("{}/v1/snapshot{query}", self.base))
            .insert_header((header::AUTHORIZATION, format!("Bearer {}", self.token)))
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let status = response.status();
        let bytes =
            response.body().limit(MAX_RESPONSE_BYTES).await.map_err(|e| ClientError::Transport(e.to_string()))?;
        if !status.is_success() {
            return Err(error_of(status.as_u16(), &bytes));
        }
        let seq = response
            .headers()
            .get("x-opsync-snapshot-seq")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ClientError::Decode("no X-Opsync-Snapshot-Seq header".into()))?;
        Ok((seq, bytes.to_vec()))
    }

    /// Deletes the token's user's account (everything the server holds for it).
    pub async fn delete_account(&self) -> Result<AccountDeleted, ClientError> {
        self.send::<(), _>(awc::http::Method::DELETE, "/v1/account", None).await
    }

    async fn answer<T: DeserializeOwned>(
        &self,
        sent: Result<
            awc::ClientResponse<
                impl futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>> + Unpin,
            >,
            awc::error::SendRequestError,
        >,
    ) -> Result<T, ClientError> {
        let bytes = self.body_of(sent).await?;
        body::decode(self.format, &bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// The body of a successful answer, or the error it carries.
    async fn body_of(
        &self,
        sent: Result<
            awc::ClientResponse<
                impl futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>> + Unpin,
            >,
            awc::error::SendRequestError,
        >,
    ) -> Result<bytes::Bytes, ClientError> {
        let mut response = sent.map_err(|e| ClientError::Transport(e.to_string()))?;
        let status = response.status();
        let bytes =
            response.body().limit(MAX_RESPONSE_BYTES).await.map_err(|e| ClientError::Transport(e.to_string()))?;
        if !status.is_success() {
            return Err(error_of(status.as_u16(), &bytes));
        }
        Ok(bytes)
    }

    async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: awc::http::Method,
        path: &str,
        request: Option<&B>,
    ) -> Result<T, ClientError> {
        let bytes = self.fetch(method, path, request).await?;
        body::decode(self.format, &bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Sends a request and returns the answer's body undecoded.
    async fn fetch<B: Serialize>(
        &self,
        method: awc::http::Method,
        path: &str,
        request: Option<&B>,
    ) -> Result<bytes::Bytes, ClientError> {
        let builder = self
            .http
            .request(method, format!("{}{path}", self.base))
            .insert_header((header::AUTHORIZATION, format!("Bearer {}", self.token)))
            .insert_header((header::ACCEPT, self.format.content_type()));
        let sent = match request {
            Some(request) => {
                let bytes = body::encode(self.format, request).map_err(|e| ClientError::Decode(e.to_string()))?;
                builder.insert_header((header::CONTENT_TYPE, self.format.content_type())).send_body(bytes).await
            }
            None => builder.send().await,
        };
        self.body_of(sent).await
    }
}

/// The error an unsuccessful answer carries.
fn error_of(status: u16, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => ClientError::Api { status, body: Box::new(body) },
        Err(e) => ClientError::Decode(format!("{status} with an unreadable error body: {e}")),
    }
}
