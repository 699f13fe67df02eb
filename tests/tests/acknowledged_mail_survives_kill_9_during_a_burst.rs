//! Durability: a message that got its 250 is on disk. Eight clients send as fast as they
//! can, each over its own connection; the gateway is killed with SIGKILL in the middle of
//! the burst and restarted on the same spool. Every acknowledged message must be there,
//! complete and with its recipients; half-received ones must be gone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tidegate_e2e::{
    Gateway, PATIENCE, SmtpClient, dot_stuff, sample_message, without_trace_header,
};

const THREADS: usize = 8;
/// Acknowledged messages to wait for before the kill.
const ACKS_BEFORE_KILL: usize = 800;

/// One message a client sent or tried to send.
#[derive(Debug, Clone)]
struct Sent {
    recipients: Vec<String>,
    message: String,
}

#[derive(Debug, Default)]
struct ThreadOutcome {
    /// Queue ID → message, for every 250.
    acked: Vec<(String, Sent)>,
    /// Every message whose data was started, by its first recipient (unique).
    attempted: HashMap<String, Sent>,
    /// Whether the loop ended because the connection broke (rather than the deadline).
    cut_off: bool,
}

fn message_for(thread: usize, n: usize) -> Sent {
    let mut recipients = vec![format!("t{thread}-m{n}@example.test")];
    if n.is_multiple_of(3) {
        recipients.push(format!("copy-t{thread}-m{n}@other.test"));
    }
    let mut body = format!("Thread {thread}, message {n}.\r\n");
    if n % 8 == 5 {
        // Large enough to be streamed to spool/tmp before the commit.
        for line in 0..1400 {
            body.push_str(&format!(
                "t{thread} m{n} line {line:05} ..................................................\r\n"
            ));
        }
    }
    body.push_str(&format!("End of thread {thread} message {n}."));
    Sent {
        recipients,
        message: sample_message(&format!("burst-t{thread}-m{n}"), &body),
    }
}

/// Sends messages until the connection breaks; panics on any reply but the expected one.
fn client_loop(addr: std::net::SocketAddr, thread: usize, acks: &AtomicUsize) -> ThreadOutcome {
    let mut outcome = ThreadOutcome::default();
    let mut client = SmtpClient::ehlo(addr);
    let deadline = Instant::now() + PATIENCE;
    let mut n = 0;
    while Instant::now() < deadline {
        let sent = message_for(thread, n);
        n += 1;
        let Some(reply) = client.try_command("MAIL FROM:<burst@example.org>") else {
            outcome.cut_off = true;
            return outcome;
        };
        reply.expect(250, "2.1.0");
        for rcpt in &sent.recipients {
            let Some(reply) = client.try_command(&format!("RCPT TO:<{rcpt}>")) else {
                outcome.cut_off = true;
                return outcome;
            };
            reply.expect(250, "2.1.5");
        }
        let Some(reply) = client.try_command("DATA") else {
            outcome.cut_off = true;
            return outcome;
        };
        assert_eq!(reply.code, 354, "{reply:?}");
        outcome
            .attempted
            .insert(sent.recipients[0].clone(), sent.clone());
        let mut data = dot_stuff(sent.message.as_bytes());
        data.extend_from_slice(b".\r\n");
        if client.try_send(&data).is_err() {
            outcome.cut_off = true;
            return outcome;
        }
        let Some(reply) = client.try_read_reply() else {
            outcome.cut_off = true;
            return outcome;
        };
        reply.expect(250, "2.0.0");
        let id = reply.queue_id().expect("queue id");
        outcome.acked.push((id, sent));
        acks.fetch_add(1, Ordering::SeqCst);
    }
    outcome
}

#[test]
fn every_acknowledged_message_survives_kill_9() {
    let mut gateway = Gateway::start();
    let addr = gateway.addr();
    let acks = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..THREADS)
        .map(|thread| {
            let acks = Arc::clone(&acks);
            std::thread::spawn(move || client_loop(addr, thread, &acks))
        })
        .collect();

    let deadline = Instant::now() + PATIENCE;
    while acks.load(Ordering::SeqCst) < ACKS_BEFORE_KILL {
        assert!(
            Instant::now() < deadline,
            "only {} messages acknowledged",
            acks.load(Ordering::SeqCst)
        );
        assert!(
            !workers.iter().any(|w| w.is_finished()),
            "a client stopped early"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let acked_at_kill = acks.load(Ordering::SeqCst);
    gateway.kill9();

    let outcomes: Vec<ThreadOutcome> = workers
        .into_iter()
        .map(|w| w.join().expect("client thread panicked"))
        .collect();
    assert!(
        outcomes.iter().all(|o| o.cut_off),
        "the burst was over before the kill landed"
    );
    let partials_after_kill = gateway.spool_partials();

    gateway.restart(1);
    assert_eq!(
        gateway.spool_partials(),
        Vec::<String>::new(),
        "spool/tmp not cleaned at start-up"
    );

    let spooled: HashMap<String, tidegate_e2e::SpoolEntry> = gateway
        .spool_list()
        .into_iter()
        .map(|e| (e.id.clone(), e))
        .collect();
    let stored = |entry: &tidegate_e2e::SpoolEntry| {
        let bytes = std::fs::read(gateway.spool_dir().join("msg").join(&entry.id))
            .expect("read spool file");
        bytes[..entry.size as usize].to_vec()
    };

    let mut acked_ids = HashSet::new();
    for (id, sent) in outcomes.iter().flat_map(|o| &o.acked) {
        assert!(acked_ids.insert(id.clone()), "queue ID {id} given twice");
        let entry = spooled
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged message {id} is not in the spool"));
        assert_eq!(entry.recipients, sent.recipients, "{id}");
        assert_eq!(entry.sender, "burst@example.org", "{id}");
        assert_eq!(
            String::from_utf8_lossy(without_trace_header(&stored(entry))),
            sent.message,
            "{id} is not the message that was sent"
        );
    }

    // Messages committed whose 250 the kill cut off: at most one per client, and each
    // must still be whole and be one the clients really sent.
    let attempted: HashMap<&String, &Sent> =
        outcomes.iter().flat_map(|o| o.attempted.iter()).collect();
    let mut unacknowledged = Vec::new();
    for (id, entry) in &spooled {
        if acked_ids.contains(id) {
            continue;
        }
        let sent = entry
            .recipients
            .first()
            .and_then(|r| attempted.get(r))
            .unwrap_or_else(|| panic!("{id} in the spool was never sent: {entry:?}"));
        assert_eq!(entry.recipients, sent.recipients, "{id}");
        assert_eq!(
            String::from_utf8_lossy(without_trace_header(&stored(entry))),
            sent.message,
            "{id} is incomplete"
        );
        unacknowledged.push(id.clone());
    }
    assert!(
        unacknowledged.len() <= THREADS,
        "more unacknowledged messages than clients: {unacknowledged:?}"
    );
    println!(
        "acknowledged before the kill: {acked_at_kill}; acknowledged in all: {}; spooled: {}; \
         partial files left by the kill: {}; committed without a 250: {unacknowledged:?}",
        acked_ids.len(),
        spooled.len(),
        partials_after_kill.len(),
    );

    // The restarted gateway takes new mail, with an ID that is new.
    let mut client = SmtpClient::ehlo(gateway.addr());
    let reply = client.send_mail(
        "after@example.org",
        &["user@example.test"],
        &sample_message("after-restart", "Still here."),
    );
    reply.expect(250, "2.0.0");
    let id = reply.queue_id().expect("queue id");
    assert!(!spooled.contains_key(&id), "queue ID {id} reused");
    let entry = gateway
        .spool_list()
        .into_iter()
        .find(|e| e.id == id)
        .expect("new message spooled");
    assert_eq!(entry.recipients, vec!["user@example.test".to_owned()]);
}
