//! Delivery errors are classified by what they say about the future: a temporary DNS
//! failure of the A query, with an empty AAAA answer, defers the mail (it is not "no such
//! host", 5.1.2), and a 5xx reply to STARTTLS under required TLS is about that host, so
//! the next MX host is tried instead of bouncing the mail.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{DnsServer, Gateway, GatewayConfig, SmtpClient, sample_message};

/// A DNS server on loopback that answers every A query with SERVFAIL and every other
/// query with an empty NOERROR answer (no records): a name whose A lookup fails for now
/// and that has no AAAA or MX records.
struct FlakyDns {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<u16>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FlakyDns {
    fn start() -> FlakyDns {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind DNS port");
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let addr = socket.local_addr().expect("address");
        let asked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (asked, stop) = (Arc::clone(&asked), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::SeqCst) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    if let Some((qtype, reply)) = answer(&buf[..n]) {
                        asked.lock().unwrap().push(qtype);
                        let _ = socket.send_to(&reply, from);
                    }
                }
            })
        };
        FlakyDns {
            addr,
            asked,
            stop,
            thread: Some(thread),
        }
    }

    fn asked(&self) -> Vec<u16> {
        self.asked.lock().unwrap().clone()
    }
}

impl Drop for FlakyDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The reply to one query: the question echoed, no records, SERVFAIL for type A
/// (1) and NOERROR for anything else. `None` for a packet that is not a query.
fn answer(query: &[u8]) -> Option<(u16, Vec<u8>)> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut pos = 12;
    while *query.get(pos)? != 0 {
        pos += 1 + usize::from(query[pos]);
    }
    let end = pos + 5;
    let qtype = u16::from_be_bytes([*query.get(pos + 1)?, *query.get(pos + 2)?]);
    let question = query.get(12..end)?;
    let rcode: u8 = if qtype == 1 { 2 } else { 0 };
    let mut reply = Vec::with_capacity(end);
    reply.extend_from_slice(&query[..2]);
    reply.push(0x80 | (query[2] & 0x01)); // QR, with the client's RD bit
    reply.push(0x80 | rcode); // RA and the response code
    reply.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    reply.extend_from_slice(question);
    Some((qtype, reply))
}

#[test]
fn a_temporary_a_failure_with_an_empty_aaaa_answer_defers_instead_of_bouncing() {
    let dns = FlakyDns::start();
    let senders = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let gateway = Gateway::start_with(&GatewayConfig::default().dns(dns.addr, 500).route(
        "back",
        &["example.org"],
        senders.addr(),
    ));
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .send_mail(
            "sender@example.org",
            &["user@flaky.example"],
            &sample_message("flaky-dns", "hi"),
        )
        .expect(250, "2.0.0");
    gateway.wait_for_log("delivery attempt");
    let log = gateway.log();
    let attempt = log
        .lines()
        .find(|l| l.contains("delivery attempt"))
        .unwrap_or_default();
    assert!(attempt.contains("outcome=Deferred"), "{attempt}");
    // Both address queries were asked: A (1) failed, AAAA (28) was empty.
    let asked = dns.asked();
    assert!(asked.contains(&1) && asked.contains(&28), "{asked:?}");
    // No bounce, and the message waits for its retry.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        senders.received().is_empty(),
        "bounced: {:?}",
        senders.received()
    );
    assert_eq!(gateway.spool_list().len(), 1, "{log}");
}

fn free_port_on(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_starttls_refusal_under_required_tls_tries_the_next_mx() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = tidegate_e2e::self_signed(certs.path(), "mx2", "mx2.mx.test", false);
    // Both MX hosts on one port (the gateway's `mx_port`), at different addresses.
    let port = free_port_on("127.0.0.1");
    let broken = SinkServer::start(
        format!("127.0.0.2:{port}").parse().unwrap(),
        Behaviour::default().refuse_starttls("554 5.7.3 TLS not available"),
    );
    let good = SinkServer::start(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Behaviour::default().starttls(&cert, &key),
    );
    let senders = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let dns = DnsServer::start_with_args(&[
        "--local=/mx.test/".into(),
        "--mx-host=mx.test,mx1.mx.test,10".into(),
        "--mx-host=mx.test,mx2.mx.test,20".into(),
        "--host-record=mx1.mx.test,127.0.0.2".into(),
        "--host-record=mx2.mx.test,127.0.0.1".into(),
    ]);
    let gateway = Gateway::start_with(
        &GatewayConfig {
            accept_domains: vec!["mx.test".into()],
            ..GatewayConfig::default()
        }
        .dns(dns.addr(), 2000)
        .top(
            "delivery",
            &format!("{{ mx_port = {port}, tls = \"required\", tls_ca = {cert:?} }}"),
        )
        .route("back", &["example.org"], senders.addr()),
    );
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .send_mail(
            "sender@example.org",
            &["user@mx.test"],
            &sample_message("next-mx", "hi"),
        )
        .expect(250, "2.0.0");
    let received = good.wait_for(1, Duration::from_secs(30));
    assert!(received[0].tls, "delivered without TLS");
    assert!(
        broken.transcript().iter().any(|l| l == "STARTTLS"),
        "the preferred MX was not tried first: {:?}",
        broken.transcript()
    );
    assert!(broken.received().is_empty());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gateway.spool_list().is_empty() {
        assert!(Instant::now() < deadline, "{}", gateway.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        senders.received().is_empty(),
        "bounced: {:?}",
        senders.received()
    );
}
