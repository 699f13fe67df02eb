//! The event sinks end to end: events emitted through [`Events`] while the webhook's
//! receiver is down, across a restart of the gateway, reach it once it is up, signed and
//! in order, and the file sink has every one of them.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use super::webhook::signature;
use super::*;
use crate::config::EventSinkConfig;
use crate::inbound::reply::{EnhancedCode, Reply};

const SECRET: &str = "correct horse battery staple";

/// What the receiver saw.
#[derive(Default)]
struct Received {
    /// Event ids, in the order they arrived (duplicates included).
    ids: Vec<String>,
    /// Posts whose signature or content type was wrong.
    bad: usize,
    /// Posts answered so far.
    posts: usize,
}

/// A webhook receiver on `address`: it answers 503, then 429, then 200 to everything.
async fn receiver(address: SocketAddr, seen: Arc<Mutex<Received>>) {
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let seen = seen.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let seen = seen.clone();
                async move {
                    let headers = request.headers().clone();
                    let body = request.into_body().collect().await?.to_bytes();
                    let mut seen = seen.lock().unwrap();
                    seen.posts += 1;
                    let status = match seen.posts {
                        1 => 503,
                        2 => 429,
                        _ => 200,
                    };
                    let signed = headers.get("x-tidegate-signature").is_some_and(|v| {
                        v.as_bytes() == signature(SECRET.as_bytes(), &body).as_bytes()
                    });
                    let json = headers
                        .get("content-type")
                        .is_some_and(|v| v == "application/json");
                    if !signed || !json {
                        seen.bad += 1;
                    }
                    if status == 200 {
                        let events: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
                        for event in events {
                            for field in ["type", "time", "queue_id"] {
                                assert!(event.get(field).is_some(), "{field} in {event}");
                            }
                            seen.ids.push(event["id"].as_str().unwrap().to_owned());
                        }
                    }
                    Ok::<_, hyper::Error>(
                        hyper::Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::from_static(b"ok")))
                            .unwrap(),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn sinks(dir: &Path, port: u16) -> Vec<EventSinkConfig> {
    let text = format!(
        r#"
        [[events]]
        kind = "file"
        path = "{file}"
        max_size = "4096"
        keep = 100

        [[events]]
        kind = "webhook"
        name = "hook"
        url = "http://127.0.0.1:{port}/tidegate-events"
        secret_file = "{secret}"
        batch_size = 7
        batch_wait = "20ms"
        timeout = "2s"
        retry_min = "50ms"
        retry_max = "200ms"
        "#,
        file = dir.join("events.jsonl").display(),
        secret = dir.join("webhook.secret").display(),
    );
    #[derive(serde::Deserialize)]
    struct Sinks {
        events: Vec<EventSinkConfig>,
    }
    toml::from_str::<Sinks>(&text).unwrap().events
}

/// One event of each kind in turn, `n` of them.
fn event(n: usize) -> Event {
    let id = format!("Q{n:04}");
    let client = IpAddr::from(Ipv4Addr::new(192, 0, 2, 7));
    let delivery = || {
        Delivery::new("bob@example.test", 1, Duration::from_millis(12))
            .host("mx.example.test")
            .reply("250 2.0.0 ok", Some("2.0.0".into()))
    };
    match n % 9 {
        0 => Event::received(
            &id,
            super::Received {
                client_ip: client,
                helo: Some("client.example".into()),
                sender: "alice@example.test".into(),
                recipients: vec!["bob@example.test".into()],
                size: 1234,
                message_id: Some("<m@example.test>".into()),
                tags: vec!["newsletter".into()],
                listener: "mx".into(),
                tls: true,
                auth: None,
            },
        ),
        1 => Event::refused(
            Stage::Rcpt,
            &Reply::new(550, EnhancedCode::new(5, 1, 1), "no such user"),
            client,
            Some("alice@example.test"),
            Some("nobody@example.test"),
        ),
        2 => Event::delivered(&id, delivery()),
        3 => Event::deferred(&id, delivery()),
        4 => Event::bounced(&id, delivery()),
        5 => Event::expired(&id, vec!["carol@example.test".into()]),
        6 => Event::quarantined(&id, "virus"),
        7 => Event::released(&id, "admin"),
        _ => Event::deleted(&id, "admin"),
    }
}

#[tokio::test]
async fn events_survive_an_outage_and_a_restart_and_arrive_signed_in_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("webhook.secret"), format!("{SECRET}\n")).unwrap();
    let state = dir.path().join("spool/events");
    // A free port, with nothing listening on it yet: the receiver is down.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = sinks(dir.path(), port);
    let mut emitted = Vec::new();

    // The first run: the receiver is down; the events wait in the buffer.
    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    let events = Events::start(&config, &state, metrics.clone(), shutdown.clone()).unwrap();
    for n in 0..20 {
        let event = event(n);
        emitted.push(event.id.clone());
        events.emit(event);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    events.stopped().await;
    assert!(
        metrics
            .render()
            .contains("tidegate_webhook_failures_total{sink=\"hook\",kind=\"connect\"}"),
        "{}",
        metrics.render()
    );

    // The second run: more events, then the receiver comes up.
    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    let events = Events::start(&config, &state, metrics.clone(), shutdown.clone()).unwrap();
    for n in 20..50 {
        let event = event(n);
        emitted.push(event.id.clone());
        events.emit(event);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = Arc::new(Mutex::new(Received::default()));
    let server = tokio::spawn(receiver(
        SocketAddr::from(([127, 0, 0, 1], port)),
        seen.clone(),
    ));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let unique: std::collections::HashSet<String> =
            seen.lock().unwrap().ids.iter().cloned().collect();
        if unique.len() == emitted.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} events arrived",
            unique.len(),
            emitted.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.bad, 0, "every post signed, as JSON");
        assert!(seen.posts >= 3, "the 503 and the 429 were retried");
        // At least once, in order: the first arrival of each id follows emission order.
        let mut first = Vec::new();
        for id in &seen.ids {
            if !first.contains(id) {
                first.push(id.clone());
            }
        }
        assert_eq!(first, emitted);
    }
    // The acknowledgements drain the backlog.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !metrics
        .render()
        .contains("tidegate_webhook_backlog_events{sink=\"hook\"} 0")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            metrics.render()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    events.stopped().await;
    server.abort();

    // The file sink, rotated many times over, has every event once, in order.
    let mut lines = Vec::new();
    for n in (1..=100).rev() {
        if let Ok(text) = std::fs::read_to_string(dir.path().join(format!("events.jsonl.{n}"))) {
            lines.extend(text.lines().map(str::to_owned));
        }
    }
    let text = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    lines.extend(text.lines().map(str::to_owned));
    let ids: Vec<String> = lines
        .iter()
        .map(|line| serde_json::from_str::<Event>(line).unwrap().id)
        .collect();
    assert_eq!(ids, emitted);
    assert!(dir.path().join("events.jsonl.1").exists(), "it rotated");
}

#[test]
fn an_event_is_one_flat_json_object_with_its_type() {
    let event = event(2);
    let json: serde_json::Value = serde_json::to_value(&event).unwrap();
    assert_eq!(json["type"], "delivered");
    assert_eq!(json["queue_id"], "Q0002");
    assert_eq!(json["recipient"], "bob@example.test");
    assert_eq!(json["enhanced"], "2.0.0");
    assert_eq!(json["duration_ms"], 12);
    let time = json["time"].as_str().unwrap();
    assert!(time.ends_with('Z') && time.contains('T'), "{time}");
    let refused: serde_json::Value = serde_json::to_value(event_refused()).unwrap();
    assert_eq!(refused["type"], "refused");
    assert_eq!(refused["stage"], "rcpt");
    assert_eq!(refused["code"], 550);
    assert_eq!(refused["enhanced"], "5.1.1");
    assert_eq!(refused["queue_id"], serde_json::Value::Null);
    for n in 0..9 {
        let event = super::tests::event(n);
        let back: Event = serde_json::from_str(&serde_json::to_string(&event).unwrap()).unwrap();
        assert_eq!(back.kind, event.kind, "kind {n} round-trips");
    }
}

fn event_refused() -> Event {
    event(1)
}

#[test]
fn event_ids_are_unique() {
    let ids: std::collections::HashSet<String> = (0..10_000).map(|n| event(n).id).collect();
    assert_eq!(ids.len(), 10_000);
}

#[tokio::test]
async fn a_full_sink_queue_drops_and_counts_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("webhook.secret"), SECRET).unwrap();
    let mut config = sinks(dir.path(), 9);
    config.truncate(1);
    config[0].queue_size = 1;
    let metrics = Arc::new(Metrics::new());
    let events = Events::start(
        &config,
        dir.path(),
        metrics.clone(),
        CancellationToken::new(),
    )
    .unwrap();
    // A current-thread runtime: the sink cannot run until this test yields.
    for n in 0..10 {
        events.emit(event(n));
    }
    let text = metrics.render();
    assert!(
        text.contains("tidegate_events_dropped_total{sink=\"0\",reason=\"queue_full\"} 9"),
        "{text}"
    );
    assert!(
        text.contains("tidegate_events_emitted_total{kind=\"received\"} 2"),
        "{text}"
    );
    Events::disabled().emit(event(0));
}
