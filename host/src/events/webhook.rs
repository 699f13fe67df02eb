//! The webhook sink: delivery events POSTed in batches to an HTTP endpoint, from a durable
//! on-disk [`Buffer`], so that an outage of the receiver loses no event and never slows
//! mail.
//!
//! Each event is written to the buffer as it arrives; one batch at a time (so events reach
//! the receiver in order) is read from it and POSTed as a JSON array, with
//! `Content-Type: application/json` and `X-Tidegate-Signature: sha256=<hex>`, the
//! HMAC-SHA256 of the exact body under the secret. What the answer means:
//! - 2xx: acknowledged, the buffer moves past the batch;
//! - 4xx other than 408 and 429: the receiver refuses this batch for good (it will not get
//!   better by resending it): it is logged, counted (`webhook_failures{kind="rejected"}`,
//!   `events_dropped{reason="rejected"}`) and dropped, and sending goes on;
//! - anything else, a timeout or a connection error: retried after a backoff that doubles
//!   from `retry_min` to `retry_max`, with jitter (half to all of it).
//!
//! A batch whose acknowledgement is lost (a timeout after the receiver took it, a restart)
//! is sent again: delivery is at least once, and each event's `id` lets the receiver drop
//! the duplicates.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::buffer::{Batch, Buffer};
use super::{EventsError, count_dropped};
use crate::config::EventSinkConfig;
use crate::metrics::{EventSinkLabels, Metrics, WebhookFailureLabels};

/// Events taken from the channel and appended in one go.
const APPEND_BATCH: usize = 1024;

/// The most of a response body read (only to log what a refusing receiver said).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// How long appended events may wait for their fdatasync.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// `sha256=<lowercase hex HMAC-SHA256 of body under secret>`, the signature header's value.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut text = String::with_capacity(7 + 64);
    text.push_str("sha256=");
    for byte in digest {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// Checks that a secret file can be used (for `tidegate check`).
pub(super) fn check_secret(name: &str, path: &Path) -> Result<(), EventsError> {
    read_secret(name, path).map(|_| ())
}

/// Reads a secret file: its contents without the trailing newline(s).
fn read_secret(name: &str, path: &Path) -> Result<Vec<u8>, EventsError> {
    let problem = |problem: String| EventsError::Secret {
        sink: name.to_owned(),
        path: path.to_owned(),
        problem,
    };
    let mut secret = std::fs::read(path).map_err(|e| problem(format!("cannot read: {e}")))?;
    while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        secret.pop();
    }
    if secret.is_empty() {
        return Err(problem("the secret is empty".into()));
    }
    Ok(secret)
}

/// What one POST came to.
#[derive(Debug)]
enum Outcome {
    /// 2xx.
    Acked,
    /// Try again later; the failure's kind (a metric label) and what happened.
    Retry(&'static str, String),
    /// The receiver refused the batch for good.
    Rejected(String),
}

/// The POST's parts that every attempt shares.
struct Poster {
    client: Client<HttpConnector, Full<Bytes>>,
    url: http::Uri,
    secret: Vec<u8>,
    timeout: Duration,
}

impl Poster {
    async fn post(&self, body: Bytes) -> Outcome {
        let request = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("x-tidegate-signature", signature(&self.secret, &body))
            .header(
                http::header::USER_AGENT,
                concat!("tidegate/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body));
        let request = match request {
            Ok(request) => request,
            Err(e) => return Outcome::Retry("request", e.to_string()),
        };
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            // Read (a bounded part of) the body, so the connection can be reused and a
            // refusal's reason logged.
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            Ok::<_, hyper_util::client::legacy::Error>((status, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Outcome::Retry("timeout", format!("no answer within {:?}", self.timeout)),
            Ok(Err(e)) if e.is_connect() => Outcome::Retry("connect", error_chain(&e)),
            Ok(Err(e)) => Outcome::Retry("connection", error_chain(&e)),
            Ok(Ok((status, _))) if status.is_success() => Outcome::Acked,
            Ok(Ok((status, body)))
                if status.is_client_error()
                    && status != http::StatusCode::REQUEST_TIMEOUT
                    && status != http::StatusCode::TOO_MANY_REQUESTS =>
            {
                Outcome::Rejected(format!("{status}: {}", body.trim()))
            }
            Ok(Ok((status, body))) => {
                Outcome::Retry("status", format!("{status}: {}", body.trim()))
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The body of a batch: its events as one JSON array.
fn batch_body(batch: &Batch) -> Bytes {
    let len: usize = batch.events.iter().map(|e| e.len() + 1).sum();
    let mut body = Vec::with_capacity(len + 2);
    body.push(b'[');
    for (i, event) in batch.events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(event);
    }
    body.push(b']');
    Bytes::from(body)
}

/// A webhook sink, opened and ready to run.
pub struct WebhookSink {
    name: String,
    dir: PathBuf,
    max_buffer: u64,
    buffer: Option<Buffer>,
    poster: Arc<Poster>,
    batch_size: usize,
    batch_wait: Duration,
    retry: (Duration, Duration),
    metrics: Arc<Metrics>,
}

impl WebhookSink {
    /// Reads the secret and opens (recovers) the buffer in `dir`.
    pub fn open(
        name: &str,
        config: &EventSinkConfig,
        dir: &Path,
        metrics: Arc<Metrics>,
    ) -> Result<WebhookSink, EventsError> {
        let missing = |problem: &str| EventsError::Config {
            sink: name.to_owned(),
            problem: problem.to_owned(),
        };
        let url: http::Uri = config
            .url
            .as_deref()
            .ok_or_else(|| missing("a webhook sink needs a `url`"))?
            .parse()
            .map_err(|e| missing(&format!("url: {e}")))?;
        let secret_file = config
            .secret_file
            .as_deref()
            .ok_or_else(|| missing("a webhook sink needs a `secret_file`"))?;
        let secret = read_secret(name, secret_file)?;
        let max_buffer = config.webhook_max_buffer();
        let buffer = Buffer::open(dir, max_buffer).map_err(|source| EventsError::Buffer {
            sink: name.to_owned(),
            path: dir.to_owned(),
            source,
        })?;
        let timeout = config.webhook_timeout();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .build(connector);
        if buffer.backlog() > 0 {
            tracing::info!(sink = %name, events = buffer.backlog(),
                "webhook events left from the last run will be sent");
        }
        Ok(WebhookSink {
            name: name.to_owned(),
            dir: dir.to_owned(),
            max_buffer,
            buffer: Some(buffer),
            poster: Arc::new(Poster {
                client,
                url,
                secret,
                timeout,
            }),
            batch_size: config.webhook_batch_size(),
            batch_wait: config.webhook_batch_wait(),
            retry: config.webhook_retry(),
            metrics,
        })
    }

    /// Buffers every event received and posts them, until shutdown; then buffers what is
    /// still queued and syncs. A POST in progress at shutdown is abandoned: its events are
    /// still in the buffer, and are sent after the restart.
    pub async fn run(mut self, mut queue: mpsc::Receiver<Arc<str>>, shutdown: CancellationToken) {
        type InFlight = Pin<Box<dyn Future<Output = (Batch, Outcome)> + Send>>;
        let mut incoming = Vec::with_capacity(APPEND_BATCH);
        let mut in_flight: Option<InFlight> = None;
        let mut failures: u32 = 0;
        let mut retry_at: Option<Instant> = None;
        let mut pending_since: Option<Instant> = None;
        let mut sync_at: Option<Instant> = None;
        let mut closing = false;
        let mut jitter = Jitter::new();
        self.publish_backlog();
        if self.backlog() > 0 {
            pending_since = Some(Instant::now());
        }
        loop {
            let now = Instant::now();
            let backlog = self.backlog();
            let waited = pending_since.is_some_and(|t| now >= t + self.batch_wait);
            if in_flight.is_none()
                && !closing
                && retry_at.is_none_or(|t| now >= t)
                && backlog > 0
                && (backlog >= self.batch_size as u64 || waited || failures > 0)
            {
                retry_at = None;
                match self.buffer.as_ref().map(|b| b.read_batch(self.batch_size)) {
                    Some(Ok(Some(batch))) => {
                        let poster = self.poster.clone();
                        in_flight = Some(Box::pin(async move {
                            let outcome = poster.post(batch_body(&batch)).await;
                            (batch, outcome)
                        }));
                    }
                    Some(Ok(None)) => {
                        // A backlog with nothing to read: the bookkeeping is off. Look at
                        // the files again, a little later rather than in a busy loop.
                        tracing::warn!(sink = %self.name, backlog, "webhook buffer out of step; reopening it");
                        retry_at = Some(now + self.retry.0);
                        self.reopen_buffer();
                    }
                    None => retry_at = Some(now + self.retry.0),
                    Some(Err(e)) => {
                        tracing::error!(sink = %self.name, error = %e,
                            "cannot read the webhook buffer");
                        retry_at = Some(now + self.retry.1);
                        self.reopen_buffer();
                    }
                }
            }
            // The next moment something is due: a retry, a partial batch's wait, a sync.
            let batch_due = (in_flight.is_none() && backlog > 0)
                .then(|| retry_at.or(pending_since.map(|t| t + self.batch_wait)))
                .flatten();
            let wake = [batch_due, sync_at].into_iter().flatten().min();
            tokio::select! {
                biased;
                () = shutdown.cancelled(), if !closing => {
                    closing = true;
                    queue.close();
                }
                n = queue.recv_many(&mut incoming, APPEND_BATCH) => {
                    if n == 0 {
                        break;
                    }
                    self.append(&incoming);
                    incoming.clear();
                    let arrived = Instant::now();
                    pending_since.get_or_insert(arrived);
                    sync_at.get_or_insert(arrived + SYNC_INTERVAL);
                }
                (batch, outcome) = async {
                    match in_flight.as_mut() {
                        Some(post) => post.await,
                        None => std::future::pending().await,
                    }
                }, if in_flight.is_some() =>
                {
                    in_flight = None;
                    match outcome {
                        Outcome::Acked => {
                            failures = 0;
                            self.ack(&batch);
                            self.metrics
                                .webhook_deliveries
                                .get_or_create(&EventSinkLabels { sink: self.name.clone() })
                                .inc();
                        }
                        Outcome::Rejected(detail) => {
                            failures = 0;
                            tracing::error!(sink = %self.name, events = batch.consumed,
                                answer = %detail, "the webhook refused a batch: dropped");
                            self.failed("rejected");
                            count_dropped(&self.metrics, &self.name, "rejected", batch.consumed);
                            self.ack(&batch);
                        }
                        Outcome::Retry(kind, detail) => {
                            failures = failures.saturating_add(1);
                            let wait = jitter.backoff(self.retry, failures);
                            tracing::warn!(sink = %self.name, error = %detail, retry_in = ?wait,
                                backlog = self.backlog(), "webhook post failed");
                            self.failed(kind);
                            retry_at = Some(Instant::now() + wait);
                        }
                    }
                    if self.backlog() == 0 {
                        pending_since = None;
                    }
                }
                () = sleep_until(wake), if wake.is_some() => {
                    if sync_at.is_some_and(|t| Instant::now() >= t) {
                        sync_at = None;
                        self.sync_in_background();
                    }
                }
            }
        }
        // The last events reach the disk before the process goes.
        if let Some(file) = self.take_unsynced() {
            let name = self.name.clone();
            let synced = tokio::task::spawn_blocking(move || file.sync_data()).await;
            if let Ok(Err(e)) = synced {
                tracing::error!(sink = %name, error = %e, "cannot sync the webhook buffer");
            }
        }
    }

    fn backlog(&self) -> u64 {
        self.buffer.as_ref().map_or(0, Buffer::backlog)
    }

    fn publish_backlog(&self) {
        self.metrics
            .webhook_backlog
            .get_or_create(&EventSinkLabels {
                sink: self.name.clone(),
            })
            .set(i64::try_from(self.backlog()).unwrap_or(i64::MAX));
    }

    fn failed(&self, kind: &'static str) {
        self.metrics
            .webhook_failures
            .get_or_create(&WebhookFailureLabels {
                sink: self.name.clone(),
                kind,
            })
            .inc();
    }

    fn append(&mut self, events: &[Arc<str>]) {
        if self.buffer.is_none() {
            self.reopen_buffer();
        }
        let result = match &mut self.buffer {
            Some(buffer) => buffer.append(events),
            None => Err(std::io::Error::other("the buffer is not open")),
        };
        match result {
            Ok(0) => {}
            Ok(dropped) => {
                tracing::warn!(sink = %self.name, dropped, max_buffer = self.max_buffer,
                    "webhook buffer full: the oldest events were dropped");
                count_dropped(&self.metrics, &self.name, "buffer_full", dropped);
            }
            Err(e) => {
                // Some of these may have reached the file; they are counted as lost.
                tracing::error!(sink = %self.name, error = %e, events = events.len(),
                    "cannot write to the webhook buffer: events lost");
                count_dropped(
                    &self.metrics,
                    &self.name,
                    "write_error",
                    events.len() as u64,
                );
                self.reopen_buffer();
            }
        }
        self.publish_backlog();
    }

    fn ack(&mut self, batch: &Batch) {
        if let Some(buffer) = &mut self.buffer
            && let Err(e) = buffer.ack(batch)
        {
            // The cursor stays behind: these events may be sent again (at least once).
            tracing::error!(sink = %self.name, error = %e, "cannot record a webhook ack");
            self.reopen_buffer();
        }
        self.publish_backlog();
    }

    /// Reopens the buffer from disk after an error, so its bookkeeping matches the files.
    fn reopen_buffer(&mut self) {
        self.buffer = None;
        match Buffer::open(&self.dir, self.max_buffer) {
            Ok(buffer) => self.buffer = Some(buffer),
            Err(e) => tracing::error!(sink = %self.name, error = %e,
                "cannot reopen the webhook buffer; retrying with the next events"),
        }
    }

    fn take_unsynced(&mut self) -> Option<std::fs::File> {
        match self.buffer.as_mut().map(Buffer::take_unsynced) {
            Some(Ok(file)) => file,
            Some(Err(e)) => {
                tracing::error!(sink = %self.name, error = %e, "cannot sync the webhook buffer");
                None
            }
            None => None,
        }
    }

    fn sync_in_background(&mut self) {
        if let Some(file) = self.take_unsynced() {
            let name = self.name.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = file.sync_data() {
                    tracing::error!(sink = %name, error = %e, "cannot sync the webhook buffer");
                }
            });
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Backoff with jitter, from a small xorshift generator (seeded at random): retries of
/// many gateways after one outage spread out instead of arriving together.
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Jitter(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// The wait after the `failures`-th failure in a row: `min · 2^(failures-1)`, at most
    /// `max`, then a random point between its half and all of it.
    fn backoff(&mut self, (min, max): (Duration, Duration), failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(32);
        let full = min.saturating_mul(1u32 << doublings.min(31)).min(max);
        let millis = u64::try_from(full.as_millis()).unwrap_or(u64::MAX).max(1);
        let half = millis / 2;
        Duration::from_millis(half + self.next() % (millis - half + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_matches_the_rfc_4231_vector() {
        // RFC 4231, test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_secret_file_loses_its_trailing_newline_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("webhook.secret");
        std::fs::write(&path, "s3cret value\n").unwrap();
        assert_eq!(read_secret("t", &path).unwrap(), b"s3cret value");
        std::fs::write(&path, "\n").unwrap();
        assert!(
            read_secret("t", &path).is_err(),
            "an empty secret is refused"
        );
    }

    #[test]
    fn backoff_doubles_within_its_bounds_with_jitter() {
        let mut jitter = Jitter::new();
        let bounds = (Duration::from_millis(100), Duration::from_secs(2));
        for failures in 1..40 {
            let full = (100u64 << (failures - 1).min(20)).min(2000);
            let wait = jitter.backoff(bounds, failures).as_millis() as u64;
            assert!(
                wait >= full / 2 && wait <= full,
                "{failures}: {wait} of {full}"
            );
        }
    }
}
