//! The spool write path: a 5 KB message written and committed (fdatasync, rename into
//! `msg/`, directory fsync) one at a time; 20 committed at once, where the group commit
//! shares directory fsyncs between them; and streaming a 100 KB message into a writer
//! that is then dropped without committing (buffering and the write to `tmp/`, no sync).
//!
//! The spool lives in a temporary directory, so the numbers are those of the disk behind
//! `TMPDIR`. Committed messages are removed (durably, through the spool) after each batch
//! of iterations, outside the timed part, so `msg/` stays small.
//!
//! `cargo bench -p tidegate --bench spool`; fsync-bound, so it takes about a minute.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use tidegate::spool::envelope::{BodyType, ClientInfo, ENVELOPE_VERSION, Recipient};
use tidegate::spool::{Envelope, MessageWriter, QueueId, Spool};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

/// The DATA path feeds the writer in pieces of at most this many octets (one socket read).
const CHUNK: usize = 16 * 1024;

/// A message of about `size` octets: a few header fields and CRLF-terminated text lines.
fn message(size: usize) -> Vec<u8> {
    let mut message =
        b"From: a@example.org\r\nTo: user@example.test\r\nSubject: bench\r\n\r\n".to_vec();
    while message.len() < size {
        message.extend_from_slice(
            b"The quick brown fox jumps over the lazy dog, again and again.\r\n",
        );
    }
    message.truncate(size);
    message
}

/// The envelope the session would write for a one-recipient message.
fn envelope(writer: &MessageWriter) -> Envelope {
    Envelope {
        version: ENVELOPE_VERSION,
        id: writer.id().to_string(),
        received_at: 1_700_000_000,
        sender: Some("a@example.org".into()),
        mail_params: Vec::new(),
        recipients: vec![Recipient {
            address: "user@example.test".into(),
            params: Vec::new(),
        }],
        body: BodyType::SevenBit,
        smtputf8: false,
        client: ClientInfo {
            address: "192.0.2.1:40000".parse().expect("literal socket address"),
            helo: "client.example.org".into(),
            listener: "mx".into(),
            protocol: "ESMTP".into(),
            tls: None,
            authenticated: None,
        },
        size: writer.size(),
        header_edits: Vec::new(),
        tags: Default::default(),
        quarantine: None,
    }
}

/// Streams `body` into a new message the way the DATA path does: appends to the buffer a
/// chunk at a time, letting the writer flush to `tmp/` whenever its buffer fills.
async fn write(spool: &Spool, body: &[u8]) -> MessageWriter {
    let mut writer = spool.new_message();
    for chunk in body.chunks(CHUNK) {
        writer.buffer().extend_from_slice(chunk);
        writer
            .flush_if_full()
            .await
            .expect("writing the message to the spool's tmp/ directory");
    }
    writer
}

/// Writes and commits one message; returns when it is durable.
async fn write_and_commit(spool: &Spool, body: &[u8]) -> QueueId {
    let writer = write(spool, body).await;
    let envelope = envelope(&writer);
    writer
        .commit(&envelope)
        .await
        .expect("committing the message (fdatasync, rename, directory fsync)")
}

/// Removes committed messages, all at once so their removals share directory fsyncs.
async fn remove_all(spool: &Spool, ids: Vec<QueueId>) {
    let mut removals = JoinSet::new();
    for id in ids {
        let spool = spool.clone();
        removals.spawn(async move { spool.remove(id).await });
    }
    while let Some(removed) = removals.join_next().await {
        removed
            .expect("removal task panicked")
            .expect("removing a committed message from the spool");
    }
}

fn benches(c: &mut Criterion) {
    let rt = Runtime::new().expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temporary directory for the spool");
    // `Spool::open` starts the commit task, so it needs the runtime.
    let (spool, _) = rt
        .block_on(async { Spool::open(dir.path()) })
        .expect("opening the spool in the temporary directory");

    let small = Arc::new(message(5 * 1024));
    let large = message(100 * 1024);

    let mut group = c.benchmark_group("spool");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));

    group.throughput(Throughput::Elements(1));
    group.bench_function("write_commit_5kb", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut ids = Vec::with_capacity(iters as usize);
                let start = Instant::now();
                for _ in 0..iters {
                    ids.push(write_and_commit(&spool, &small).await);
                }
                let elapsed = start.elapsed();
                remove_all(&spool, ids).await;
                elapsed
            })
        });
    });

    // Twenty sessions finishing DATA at the same moment, each on its own task as in the
    // server; the time is per batch of twenty.
    group.throughput(Throughput::Elements(20));
    group.bench_function("write_commit_5kb_x20_concurrent", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut ids = Vec::with_capacity(iters as usize * 20);
                let start = Instant::now();
                for _ in 0..iters {
                    let mut sessions = JoinSet::new();
                    for _ in 0..20 {
                        let spool = spool.clone();
                        let body = Arc::clone(&small);
                        sessions.spawn(async move { write_and_commit(&spool, &body).await });
                    }
                    while let Some(id) = sessions.join_next().await {
                        ids.push(id.expect("session task panicked"));
                    }
                }
                let elapsed = start.elapsed();
                remove_all(&spool, ids).await;
                elapsed
            })
        });
    });

    // 100 KB is past the writer's 64 KB buffer, so one flush creates the file in `tmp/`;
    // dropping the writer unlinks it (inside the timed part: a refused message pays that).
    group.throughput(Throughput::Bytes(large.len() as u64));
    group.bench_function("write_only_100kb", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    drop(std::hint::black_box(write(&spool, &large).await));
                }
                start.elapsed()
            })
        });
    });
    group.finish();

    // Nothing may be left behind: committed messages were removed, dropped writers
    // unlinked their partial files.
    for sub in ["msg", "tmp"] {
        let path = dir.path().join(sub);
        let left = std::fs::read_dir(&path)
            .expect("listing the spool directory")
            .count();
        assert_eq!(left, 0, "{} is not empty after the bench", path.display());
    }
}

criterion_group!(spool_benches, benches);
criterion_main!(spool_benches);
