//! Chaos: a steady stream of mail comes in while the gateway is `kill -9`ed at random
//! moments ten times and restarted each time, and it delivers all along, each message to
//! two destinations. In the end every message that got a 250 has reached both
//! destinations, and repeats are bounded by what was in flight at each kill: a kill
//! repeats at most the one SMTP transaction it interrupted per delivery in progress.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tidegate_e2e::sink::{Behaviour, ReceivedMessage, SinkServer};
use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient, dot_stuff, sample_message};

const KILLS: usize = 10;
const CONCURRENT_DELIVERIES: usize = 4;

/// A pseudo-random number from the clock: enough to scatter the kills.
fn jitter(max_ms: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    u64::from(nanos.wrapping_mul(2_654_435_761)) % max_ms
}

/// Sends one message; returns whether it got its 250 (any failure, such as the gateway
/// being killed mid-session, is `false`, and the message counts as never accepted).
fn try_send(addr: SocketAddr, subject: &str) -> bool {
    let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let Some(mut client) = SmtpClient::try_wrap(stream) else {
        return false;
    };
    if client.greeting.code != 220 {
        return false;
    }
    let message = sample_message(subject, "chaos");
    let steps = [
        "EHLO chaos.example.org".to_owned(),
        "MAIL FROM:<sender@example.org>".to_owned(),
        "RCPT TO:<a@a.example.test>".to_owned(),
        "RCPT TO:<b@b.example.test>".to_owned(),
    ];
    for step in steps {
        match client.try_command(&step) {
            Some(reply) if reply.code == 250 => {}
            _ => return false,
        }
    }
    if !matches!(client.try_command("DATA"), Some(r) if r.code == 354) {
        return false;
    }
    let mut data = dot_stuff(message.as_bytes());
    data.extend_from_slice(b".\r\n");
    if client.try_send(&data).is_err() {
        return false;
    }
    matches!(client.try_read_reply(), Some(r) if r.code == 250)
}

fn subjects(messages: &[ReceivedMessage]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for message in messages {
        if let Some(subject) = message
            .text()
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
        {
            *seen.entry(subject.to_owned()).or_insert(0) += 1;
        }
    }
    seen
}

#[test]
fn nothing_acknowledged_is_lost_through_ten_kills() {
    let a = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    // The second destination is a little slow, so kills often fall between the two
    // deliveries of one message.
    let b = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().delay_data_reply(Duration::from_millis(30)),
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut gateway = Gateway::start_with(
        &GatewayConfig {
            listeners: vec![("mx".into(), addr.to_string())],
            accept_domains: vec!["a.example.test".into(), "b.example.test".into()],
            ..GatewayConfig::default()
        }
        .queue("retry_intervals", r#"["500ms"]"#)
        .queue(
            "max_concurrent_deliveries",
            &CONCURRENT_DELIVERIES.to_string(),
        )
        .route("a", &["a.example.test"], a.addr())
        .route("b", &["b.example.test"], b.addr()),
    );

    // Two clients send without pause; each message has a subject of its own, and only
    // those that got a 250 are expected.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..2)
        .map(|c| {
            let (stop, acknowledged) = (Arc::clone(&stop), Arc::clone(&acknowledged));
            std::thread::spawn(move || {
                let mut n = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let subject = format!("chaos-{c}-{n:05}");
                    n += 1;
                    if try_send(addr, &subject) {
                        acknowledged.lock().unwrap().push(subject);
                    } else {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })
        })
        .collect();

    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(150 + jitter(350)));
        gateway.kill9();
        gateway.restart(1);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().expect("client thread");
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() >= 20,
        "too little mail went through: {}",
        acknowledged.len()
    );

    // Everything acknowledged arrives at both destinations.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (seen_a, seen_b) = (subjects(&a.received()), subjects(&b.received()));
        let missing: Vec<&String> = acknowledged
            .iter()
            .filter(|s| !seen_a.contains_key(*s) || !seen_b.contains_key(*s))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} acknowledged messages never arrived, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Repeats: at most one per delivery in progress at each kill, at each destination.
    for (name, sink) in [("a", &a), ("b", &b)] {
        let repeats: usize = subjects(&sink.received())
            .values()
            .map(|&count| count - 1)
            .sum();
        assert!(
            repeats <= KILLS * CONCURRENT_DELIVERIES,
            "{repeats} repeats at {name} after {KILLS} kills with {CONCURRENT_DELIVERIES} deliveries in flight"
        );
        eprintln!(
            "destination {name}: {} messages, {repeats} repeats, {} acknowledged",
            sink.received().len(),
            acknowledged.len()
        );
    }
}
