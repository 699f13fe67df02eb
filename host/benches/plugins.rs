//! Plugin runtime costs: a warm hook call, a session's first call (on a reused instance,
//! and with a fresh instantiation), on-data over a 100 KB message, and loading a plugin
//! version (what a reload costs).
//!
//! Needs the components: run `scripts/build-plugins` first. `cargo bench -p tidegate`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tidegate::config::Config;
use tidegate::plugins::PluginHost;
use tidegate::plugins::bindings::tidegate::plugin::types as w;
use tidegate::plugins::chain::StageInput;
use tidegate_plugin_sdk::inspect::ParsedMessage;
use tokio::runtime::Runtime;

fn dist(file: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/dist")
        .join(file);
    assert!(
        path.exists(),
        "{} missing: run scripts/build-plugins",
        path.display()
    );
    path
}

/// A host running the test plugin in `mode`; `idle` finished sessions' instances are kept
/// for reuse (0: every session instantiates).
fn config(mode: &str, cache: &std::path::Path, idle: u32) -> Config {
    let text = format!(
        r#"
hostname = "bench.test"
[[listener]]
name = "mx"
address = "127.0.0.1:0"
[spool]
path = "/tmp/unused"
[plugins]
cache_dir = {cache:?}
idle_instances = {idle}
[[plugin]]
name = "bench"
path = {path:?}
[plugin.config]
mode = {mode:?}
label = "B"
"#,
        path = dist("test_plugin.wasm"),
    );
    Config::parse(&text, std::path::Path::new("bench.toml")).expect("bench config")
}

fn rcpt() -> StageInput {
    StageInput::RcptTo(w::RcptToInfo {
        recipient: "user@example.test".into(),
        params: Vec::new(),
    })
}

fn hundred_kb_message() -> Vec<u8> {
    let mut message =
        b"From: a@example.org\r\nTo: user@example.test\r\nSubject: bench\r\n\r\n".to_vec();
    while message.len() < 100 * 1024 {
        message.extend_from_slice(
            b"The quick brown fox jumps over the lazy dog, again and again.\r\n",
        );
    }
    message
}

fn benches(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let cache = tempfile::tempdir().expect("cache dir");
    let host = rt
        .block_on(PluginHost::start(
            &config("pass", cache.path(), 32),
            Default::default(),
            Default::default(),
        ))
        .expect("plugin host");

    c.bench_function("hook/warm_call_rcpt_to", |b| {
        let mut session = host.session("mx");
        let mut tags = BTreeMap::new();
        rt.block_on(session.run(rcpt(), &mut tags));
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    std::hint::black_box(session.run(rcpt(), &mut tags).await);
                }
                start.elapsed()
            })
        });
    });

    // A new session reuses the previous session's instance: `init` and the call.
    c.bench_function("hook/session_reused_instance_and_first_call", |b| {
        let mut tags = BTreeMap::new();
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut session = host.session("mx");
                    std::hint::black_box(session.run(rcpt(), &mut tags).await);
                }
                start.elapsed()
            })
        });
    });

    // No instance kept: every session instantiates from the pool (and drops it at the end).
    let fresh_host = rt
        .block_on(PluginHost::start(
            &config("pass", cache.path(), 0),
            Default::default(),
            Default::default(),
        ))
        .expect("plugin host");
    c.bench_function("hook/session_instantiation_and_first_call", |b| {
        let mut tags = BTreeMap::new();
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut session = fresh_host.session("mx");
                    std::hint::black_box(session.run(rcpt(), &mut tags).await);
                }
                start.elapsed()
            })
        });
    });

    let header_host = rt
        .block_on(PluginHost::start(
            &config("header", cache.path(), 32),
            Default::default(),
            Default::default(),
        ))
        .expect("plugin host");
    let message = Arc::new(ParsedMessage::parse(hundred_kb_message()));
    c.bench_function("hook/on_data_100kb_warm", |b| {
        let mut session = header_host.session("mx");
        let mut tags = BTreeMap::new();
        let data = || {
            StageInput::Data(
                w::Envelope {
                    sender: Some("a@example.org".into()),
                    recipients: vec!["user@example.test".into()],
                },
                Arc::clone(&message),
            )
        };
        rt.block_on(session.run(data(), &mut tags));
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    std::hint::black_box(session.run(data(), &mut tags).await);
                }
                start.elapsed()
            })
        });
    });

    c.bench_function("message/parse_100kb", |b| {
        let raw = hundred_kb_message();
        b.iter(|| ParsedMessage::parse(std::hint::black_box(raw.clone())));
    });

    let mut group = c.benchmark_group("reload");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("load_new_version_cached_artifact", |b| {
        // A reload to a version already compiled once (the cache holds it): read, hash,
        // deserialize, link, instantiate and init.
        let config = config("tag", cache.path(), 32);
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    std::hint::black_box(
                        PluginHost::start(&config, Default::default(), Default::default())
                            .await
                            .expect("load"),
                    );
                }
                start.elapsed()
            })
        });
    });
    group.finish();
}

criterion_group!(plugin_benches, benches);
criterion_main!(plugin_benches);
