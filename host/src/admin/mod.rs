//! The admin API: HTTP and JSON on `[admin] address`, for operators and the CLI
//! (`tidegate queue ...`, which is a client of it). `/metrics` (Prometheus), `/healthz`
//! (alive) and `/readyz` (ready for traffic: started, spool recovered, not draining) are
//! open, for scrapers and load balancers; everything under `/v1/` needs a bearer token
//! from `[admin] token_file`, and a request without a valid one gets 401 and is counted.
//! Every change is logged with the name of the token that asked for it.
//!
//! HTTP is hyper's (HTTP/1.1), routing axum's. Requests are bounded: headers must arrive
//! within 10 s, a body is at most 64 KiB, and a connection lives at most a minute.

pub mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::plugins::PluginHost;
use crate::queue::Queue;
use crate::queue::control::{ControlError, ListQuery, Selector};
use tokens::Tokens;

/// The largest request body (a selector or a level is a few octets).
const MAX_BODY: usize = 64 * 1024;
/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection may last.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Binds the admin socket.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Whether the gateway should get traffic.
#[derive(Debug, Default)]
pub struct Readiness {
    started: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    /// The listeners are up.
    pub fn set_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    /// Shutting down: the load balancer must stop sending before the listeners close.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}

/// What the API serves.
#[derive(Debug)]
pub struct AdminState {
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The queue.
    pub queue: Queue,
    /// The plugins.
    pub plugins: Arc<PluginHost>,
    /// The tokens; `None`: only the open endpoints are served.
    pub tokens: Option<Tokens>,
    /// Readiness.
    pub readiness: Arc<Readiness>,
    /// Reloads.
    pub reconfigurer: Arc<crate::reconfigure::Reconfigurer>,
}

/// Who asked (the token's name), for the log.
#[derive(Debug, Clone)]
struct Caller(String);

/// Serves the API until `stop` (which the server cancels only once sessions have
/// drained, so `/readyz` says "draining" meanwhile).
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, stop: CancellationToken) {
    let app = router(state);
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_BODY)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
        });
    }
}

fn router(state: Arc<AdminState>) -> Router {
    let api = Router::new()
        .route("/v1/queue/summary", get(queue_summary))
        .route("/v1/queue", get(queue_list))
        .route("/v1/queue/{id}", get(queue_show))
        .route("/v1/queue/retry", post(queue_retry))
        .route("/v1/queue/hold", post(queue_hold))
        .route("/v1/queue/release", post(queue_release))
        .route("/v1/queue/delete", post(queue_delete))
        .route("/v1/quarantine", get(quarantine_list))
        .route(
            "/v1/quarantine/{id}",
            get(queue_show).delete(quarantine_delete),
        )
        .route("/v1/quarantine/{id}/release", post(quarantine_release))
        .route("/v1/spool/import", post(spool_import))
        .route("/v1/plugins", get(plugins))
        .route(
            "/v1/kv/{plugin}",
            get(kv_list).put(kv_put).delete(kv_delete),
        )
        .route("/v1/plugins/{name}/shadow", get(plugin_shadow))
        .route("/v1/plugins/{name}/promote", post(plugin_promote))
        .route("/v1/reload", post(reload))
        .route("/v1/log-level", put(log_level))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            authorize,
        ));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/health", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(api)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Lets a request through with a valid bearer token; 401 (counted) otherwise.
async fn authorize(
    State(state): State<Arc<AdminState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .map(<[u8]>::to_vec);
    let caller = match (&state.tokens, presented) {
        (Some(tokens), Some(presented)) => tokens.check(&presented).map(str::to_owned),
        _ => None,
    };
    let Some(caller) = caller else {
        state.metrics.admin_unauthorized.inc();
        let why = if state.tokens.is_none() {
            "the admin API needs [admin] token_file"
        } else {
            "a valid bearer token is needed"
        };
        return error(StatusCode::UNAUTHORIZED, why);
    };
    request.extensions_mut().insert(Caller(caller));
    next.run(request).await
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

fn error(status: StatusCode, why: &str) -> Response {
    (status, Json(ErrorBody { error: why })).into_response()
}

fn control_error(e: &ControlError) -> Response {
    let status = match e {
        ControlError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ControlError::NotFound(_) => StatusCode::NOT_FOUND,
        ControlError::Busy(_) => StatusCode::CONFLICT,
        ControlError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, &e.to_string())
}

fn respond<T: Serialize>(result: Result<T, ControlError>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(e) => control_error(&e),
    }
}

/// Logs a change with who asked for it.
fn audited<T: Serialize>(
    caller: &Caller,
    what: &str,
    target: &impl std::fmt::Debug,
    result: Result<T, ControlError>,
) -> Response {
    match &result {
        Ok(_) => tracing::info!(by = %caller.0, action = what, target = ?target, "admin change"),
        Err(e) => {
            tracing::info!(by = %caller.0, action = what, target = ?target, error = %e, "admin change refused")
        }
    }
    respond(result)
}

/// Destinations named in `tidegate_queue_destination_messages`; the rest are `other`.
const TOP_DESTINATIONS: usize = 20;

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    let metrics = &state.metrics;
    metrics
        .log_lines_dropped
        .set(i64::try_from(crate::logging::dropped_lines()).unwrap_or(i64::MAX));
    // The queue's gauges are read from the index when scraped, not kept on every change.
    let summary = state.queue.summary();
    let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    use crate::metrics::{DestinationLabels, StateLabels};
    for (name, count) in [
        ("active", summary.messages.active),
        ("deferred", summary.messages.deferred),
        ("held", summary.messages.held),
        ("quarantined", summary.quarantined),
    ] {
        metrics
            .queue_by_state
            .get_or_create(&StateLabels { state: name })
            .set(gauge(count));
    }
    metrics.shaping_closed.clear();
    for shaped in summary.shaped.iter().filter(|s| s.closed.is_some()) {
        metrics
            .shaping_closed
            .get_or_create(&crate::metrics::PolicyLabels {
                policy: shaped.policy.clone(),
            })
            .inc();
    }
    metrics.queue_by_destination.clear();
    let mut other = 0u64;
    for (n, d) in summary.destinations.iter().enumerate() {
        let count = d.messages.active + d.messages.deferred + d.messages.held;
        if n < TOP_DESTINATIONS && d.domain != "other" {
            metrics
                .queue_by_destination
                .get_or_create(&DestinationLabels {
                    destination: d.domain.clone(),
                })
                .set(gauge(count));
        } else {
            other += count;
        }
    }
    if other > 0 {
        metrics
            .queue_by_destination
            .get_or_create(&DestinationLabels {
                destination: "other".into(),
            })
            .set(gauge(other));
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    let readiness = &state.readiness;
    let why = if readiness.draining.load(Ordering::Acquire) {
        Some("draining")
    } else if !readiness.started.load(Ordering::Acquire) {
        Some("starting")
    } else if !state.queue.is_recovered() {
        Some("recovering the spool")
    } else {
        None
    };
    // A shared KV store that is down is said, not made a reason to be unready: every node
    // of the fleet shares that one Redis, so it would take them all out of the balancer
    // at once, while the plugins' on_error already says what mail gets meanwhile.
    let kv = &state.plugins.services().kv;
    let kv_line = match kv {
        crate::plugins::kv::Kv::Memory(_) => String::new(),
        _ if kv.reachable().await => format!("kv {}: reachable\n", kv.backend_name()),
        _ => format!("kv {}: unreachable\n", kv.backend_name()),
    };
    match why {
        None => (StatusCode::OK, format!("ready\n{kv_line}")).into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn queue_summary(State(state): State<Arc<AdminState>>) -> Response {
    Json(state.queue.summary()).into_response()
}

async fn queue_list(
    State(state): State<Arc<AdminState>>,
    Query(query): Query<ListQuery>,
) -> Response {
    respond(state.queue.list(&query).await)
}

async fn queue_show(State(state): State<Arc<AdminState>>, Path(id): Path<String>) -> Response {
    respond(state.queue.show(&id).await)
}

async fn queue_retry(
    State(state): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    Json(selector): Json<Selector>,
) -> Response {
    audited(&caller, "retry", &selector, state.queue.retry(&selector))
}

async fn queue_hold(
    State(state): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    Json(selector): Json<Selector>,
) -> Response {
    audited(&caller, "hold", &selector, state.queue.hold(&selector))
}

async fn queue_release(
    State(state): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    Json(selector): Json<Selector>,
) -> Response {
    let result = state.queue.release(&selector, &caller.0);
    audited(&caller, "release", &selector, result)
}

async fn queue_delete(
    State(state): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    Json(selector): Json<Selector>,
) -> Response {
    let result = state.queue.delete(&selector, &caller.0).await;
    audited(&caller, "delete", &selector, result)
}

#[derive(Debug, Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn quarantine_list(
    State(state): State<Arc<AdminState>>,
    Query(limit): Query<Limit>,
) -> Response {
    respond(
        state
            .queue
            .quarantine_list(limit.limit.unwrap_or(100))
            .await,
    )
}

async fn quarantine_release(
    State(state): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let result = state.queue.quarantine_release(&id, &caller.0).await;
    audited(&caller, "quarantine release", &id, result)
}

async fn quarantine_delete(
    State(state): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    audited(
        &caller,
        "quarantine delete",
        &id,
        state.queue.quarantine_delete(&id, &caller.0),
    )
}

/// One key of a plugin's KV namespace, as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    /// The key.
    pub key: String,
    /// The value (UTF-8; other bytes shown as U+FFFD).
    pub value: String,
    /// Seconds left before it expires; `None`: it does not.
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct KvQuery {
    prefix: Option<String>,
    limit: Option<usize>,
    key: Option<String>,
}

/// The most keys one listing returns.
const MAX_KV_LIST: usize = 1000;

fn kv_refused(status: StatusCode, why: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": why.into() }))).into_response()
}

/// The quota of plugin `name`, if it is loaded: writes through the API keep to it, as the
/// plugin's own do.
fn kv_quota(state: &AdminState, name: &str) -> Option<crate::plugins::kv::Quota> {
    let snapshot = state.plugins.snapshot();
    let plugin = snapshot.plugins.get(name)?;
    Some(crate::plugins::kv::Quota {
        max_bytes: plugin.limits.kv_max_bytes,
        max_keys: plugin.limits.kv_max_keys,
    })
}

async fn kv_list(
    State(state): State<Arc<AdminState>>,
    Path(plugin): Path<String>,
    Query(query): Query<KvQuery>,
) -> Response {
    if kv_quota(&state, &plugin).is_none() {
        return kv_refused(StatusCode::NOT_FOUND, format!("no plugin {plugin}"));
    }
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_KV_LIST);
    let prefix = query.prefix.unwrap_or_default();
    match state
        .plugins
        .services()
        .kv
        .list(&plugin, &prefix, limit)
        .await
    {
        Ok(found) => Json(
            found
                .into_iter()
                .map(|(key, value, left)| KvEntry {
                    key,
                    value: String::from_utf8_lossy(&value).into_owned(),
                    ttl_secs: left.map(|d| d.as_secs()),
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => kv_refused(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
struct KvWrite {
    key: String,
    value: String,
    ttl_secs: Option<u64>,
}

async fn kv_put(
    State(state): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    Path(plugin): Path<String>,
    Json(write): Json<KvWrite>,
) -> Response {
    let Some(quota) = kv_quota(&state, &plugin) else {
        return kv_refused(StatusCode::NOT_FOUND, format!("no plugin {plugin}"));
    };
    let ttl = write
        .ttl_secs
        .map(|s| Duration::from_secs(s.min(10 * 365 * 86_400)));
    let written = state
        .plugins
        .services()
        .kv
        .set(&plugin, &write.key, write.value.as_bytes(), ttl, quota)
        .await;
    let target = format!("{plugin}:{}", write.key);
    match written {
        Ok(_) => {
            tracing::info!(by = %caller.0, action = "kv set", target = %target, "admin change");
            Json(serde_json::json!({ "key": write.key })).into_response()
        }
        Err(e) => {
            tracing::info!(by = %caller.0, action = "kv set", target = %target, error = %e, "admin change refused");
            kv_refused(StatusCode::BAD_REQUEST, e.to_string())
        }
    }
}

async fn kv_delete(
    State(state): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    Path(plugin): Path<String>,
    Query(query): Query<KvQuery>,
) -> Response {
    if kv_quota(&state, &plugin).is_none() {
        return kv_refused(StatusCode::NOT_FOUND, format!("no plugin {plugin}"));
    }
    let Some(key) = query.key else {
        return kv_refused(StatusCode::BAD_REQUEST, "which key? (?key=...)");
    };
    let target = format!("{plugin}:{key}");
    match state.plugins.services().kv.delete(&plugin, &key).await {
        Ok(()) => {
            tracing::info!(by = %caller.0, action = "kv delete", target = %target, "admin change");
            Json(serde_json::json!({ "key": key })).into_response()
        }
        Err(e) => kv_refused(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// A batch of `tidegate spool import`.
#[derive(Debug, Deserialize)]
struct ImportRequest {
    /// The stopped gateway's spool directory, absolute, on this machine.
    path: std::path::PathBuf,
    /// Messages in this batch at most (the CLI asks again until none remain).
    max: Option<usize>,
}

/// The most messages one import request takes in, so that a request stays short.
const IMPORT_BATCH: usize = 500;

async fn spool_import(
    State(state): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    Json(request): Json<ImportRequest>,
) -> Response {
    let max = request.max.unwrap_or(IMPORT_BATCH).clamp(1, IMPORT_BATCH);
    let result = state.queue.import(&request.path, max, &caller.0).await;
    audited(&caller, "spool import", &request.path, result)
}

/// One plugin, for `tidegate plugins`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginStatus {
    /// Its configured name.
    pub name: String,
    /// Its place in the configuration (the queue's chain order), from 1.
    pub position: usize,
    /// SHA-256 of the component.
    pub hash: String,
    /// When this version was loaded (seconds since the epoch).
    pub loaded_at: u64,
    /// The contract version it was built against.
    pub contract: String,
    /// Calls made, over every hook.
    pub calls: u64,
    /// Failures, by kind.
    pub failures: std::collections::BTreeMap<String, u64>,
    /// Fuel burnt, over every hook.
    pub fuel: u64,
    /// The most memory one of its instances has had, in octets.
    pub memory_bytes: u64,
    /// `plugin`, `milter` or `policy_service`.
    #[serde(default = "plugin_kind")]
    pub kind: String,
    /// Where a milter or policy service listens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// `enforce`, `shadow` or `canary`.
    #[serde(default = "enforce")]
    pub mode: String,
    /// A shadow's primary (absent: the chain's decision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_of: Option<String>,
    /// A canary's state and counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<crate::plugins::canary::CanaryStatus>,
}

fn enforce() -> String {
    "enforce".to_owned()
}

async fn plugin_shadow(State(state): State<Arc<AdminState>>, Path(name): Path<String>) -> Response {
    match state.plugins.shadow_report(&name) {
        Some(report) => Json(report).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            &format!("no shadow plugin is named `{name}`"),
        ),
    }
}

async fn plugin_promote(
    State(state): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    match state.plugins.promote(&name) {
        Ok(status) => {
            tracing::info!(by = %caller.0, action = "promote canary", target = %name, "admin change");
            Json(status).into_response()
        }
        Err(why) => {
            tracing::info!(by = %caller.0, action = "promote canary", target = %name, error = %why, "admin change refused");
            error(StatusCode::NOT_FOUND, &why)
        }
    }
}

fn plugin_kind() -> String {
    "plugin".to_owned()
}

async fn plugins(State(state): State<Arc<AdminState>>) -> Response {
    let snapshot = state.plugins.snapshot();
    let rendered = state.metrics.render();
    let statuses: Vec<PluginStatus> = snapshot
        .order
        .iter()
        .enumerate()
        .filter_map(|(n, name)| {
            let plugin = snapshot.plugins.get(name)?;
            let sum = |metric: &str| sum_metric(&rendered, metric, name, None);
            let mut failures = std::collections::BTreeMap::new();
            for kind in failure_kinds(&rendered, name) {
                let count = sum_metric(
                    &rendered,
                    "tidegate_plugin_failures_total",
                    name,
                    Some(&kind),
                );
                failures.insert(kind, count);
            }
            Some(PluginStatus {
                name: name.clone(),
                position: n + 1,
                hash: plugin.hash.clone(),
                loaded_at: plugin
                    .loaded_at
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                contract: plugin.contract.to_owned(),
                calls: sum("tidegate_plugin_calls_total"),
                failures,
                fuel: sum("tidegate_plugin_fuel_total"),
                memory_bytes: sum("tidegate_plugin_memory_high_water_bytes"),
                kind: plugin_kind(),
                address: None,
                mode: plugin.config.mode.as_str().to_owned(),
                shadow_of: plugin.config.shadow_of.clone(),
                canary: snapshot.canaries.get(name).map(|c| c.status()),
            })
        })
        .collect();
    // Milters and policy services after the plugins, by name (they are in listener
    // chains only, not in the queue's).
    let mut filters: Vec<_> = snapshot.filters.values().collect();
    filters.sort_by(|a, b| a.name().cmp(b.name()));
    let mut statuses = statuses;
    for filter in filters {
        let name = filter.name().to_string();
        let mut failures = std::collections::BTreeMap::new();
        for kind in failure_kinds(&rendered, &name) {
            let count = sum_metric(
                &rendered,
                "tidegate_plugin_failures_total",
                &name,
                Some(&kind),
            );
            failures.insert(kind, count);
        }
        statuses.push(PluginStatus {
            position: statuses.len() + 1,
            hash: String::new(),
            loaded_at: 0,
            contract: String::new(),
            calls: sum_metric(&rendered, "tidegate_plugin_calls_total", &name, None),
            failures,
            fuel: 0,
            memory_bytes: 0,
            kind: filter.kind().to_owned(),
            address: Some(filter.address().to_string()),
            name,
            mode: enforce(),
            shadow_of: None,
            canary: None,
        });
    }
    Json(statuses).into_response()
}

/// The value of a label in one line of the Prometheus text format.
fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("{name}=\""))? + name.len() + 2;
    let end = line[start..].find('"')? + start;
    Some(&line[start..end])
}

/// The sum of a metric's samples for one plugin (and one failure kind).
fn sum_metric(rendered: &str, metric: &str, plugin: &str, kind: Option<&str>) -> u64 {
    rendered
        .lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with('{'))
        .filter(|l| label(l, "plugin") == Some(plugin))
        .filter(|l| kind.is_none_or(|k| label(l, "kind") == Some(k)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

fn failure_kinds(rendered: &str, plugin: &str) -> Vec<String> {
    let mut kinds: Vec<String> = rendered
        .lines()
        .filter(|l| l.starts_with("tidegate_plugin_failures_total{"))
        .filter(|l| label(l, "plugin") == Some(plugin))
        .filter_map(|l| label(l, "kind").map(str::to_owned))
        .collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

async fn reload(
    State(state): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let report = state.reconfigurer.reload("admin API").await;
    tracing::info!(by = %caller.0, failed = ?report.failed, "reload asked for by the admin API");
    Json(report).into_response()
}

#[derive(Debug, Serialize, Deserialize)]
struct Level {
    level: String,
}

async fn log_level(Extension(caller): Extension<Caller>, Json(level): Json<Level>) -> Response {
    match crate::logging::set_level(&level.level) {
        Ok(()) => {
            tracing::warn!(by = %caller.0, level = %level.level, "log level changed");
            Json(level).into_response()
        }
        Err(why) => error(StatusCode::BAD_REQUEST, &why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_figures_are_summed_from_the_metrics_text() {
        let text = "tidegate_plugin_calls_total{plugin=\"a\",hook=\"connect\"} 3\n\
                    tidegate_plugin_calls_total{plugin=\"a\",hook=\"data\"} 4\n\
                    tidegate_plugin_calls_total{plugin=\"ab\",hook=\"data\"} 100\n\
                    tidegate_plugin_failures_total{plugin=\"a\",kind=\"time\"} 2\n";
        assert_eq!(
            sum_metric(text, "tidegate_plugin_calls_total", "a", None),
            7
        );
        assert_eq!(failure_kinds(text, "a"), vec!["time".to_owned()]);
        assert_eq!(
            sum_metric(text, "tidegate_plugin_failures_total", "a", Some("time")),
            2
        );
    }
}
