//! The PROXY protocol behind a real HAProxy (Debian's `haproxy`, `send-proxy` and
//! `send-proxy-v2`): the real client's address, not the balancer's, reaches relay control
//! and the `Received:` field; STARTTLS and implicit TLS work through it; a connection
//! from an address that is not a trusted proxy, one with a malformed header, and one
//! without a header are closed before any greeting. With two nodes behind one balancer,
//! each node sees each client as itself.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient, sample_message, self_signed};

/// HAProxy, stopped when dropped.
struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn haproxy() -> String {
    for path in ["/usr/sbin/haproxy", "/usr/bin/haproxy"] {
        if std::path::Path::new(path).exists() {
            return path.to_owned();
        }
    }
    panic!("haproxy is not installed: run ./scripts/setup");
}

/// Starts HAProxy with one frontend per (port, gateway address, `send-proxy` option).
fn start_haproxy(dir: &std::path::Path, routes: &[(u16, SocketAddr, &str)]) -> Haproxy {
    let backends: Vec<(u16, Vec<SocketAddr>, &str)> = routes
        .iter()
        .map(|(port, gateway, option)| (*port, vec![*gateway], *option))
        .collect();
    start_balancer(dir, &backends)
}

/// Starts HAProxy with one frontend per (port, gateways, `send-proxy` option), each
/// balancing round-robin over its gateways.
fn start_balancer(dir: &std::path::Path, routes: &[(u16, Vec<SocketAddr>, &str)]) -> Haproxy {
    let mut config = String::from(
        "global\n  maxconn 100\ndefaults\n  mode tcp\n  balance roundrobin\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n",
    );
    for (n, (port, gateways, option)) in routes.iter().enumerate() {
        config.push_str(&format!(
            "frontend f{n}\n  bind 127.0.0.1:{port}\n  default_backend b{n}\nbackend b{n}\n"
        ));
        for (i, gateway) in gateways.iter().enumerate() {
            config.push_str(&format!("  server gw{i} {gateway} {option}\n"));
        }
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(haproxy())
        .args(["-db", "-f"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    let proxy = Haproxy(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    for (port, _, _) in routes {
        while TcpStream::connect(("127.0.0.1", *port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "haproxy did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    proxy
}

/// Whether the server closes the connection without a greeting.
fn closed_without_greeting(mut stream: TcpStream, send: &[u8]) -> bool {
    use std::io::Write;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _ = stream.write_all(send);
    let mut buf = [0u8; 64];
    matches!(stream.read(&mut buf), Ok(0) | Err(_))
}

#[test]
fn the_real_client_reaches_relay_control_and_the_trace_through_haproxy() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "relay", "relay.example.test", false);
    std::fs::write(dir.path().join("users.txt"), "").unwrap();
    let config = GatewayConfig {
        listeners: vec![
            ("mx".into(), "127.0.0.1:0".into()),
            ("smtps".into(), "127.0.0.1:0".into()),
        ],
        accept_domains: vec!["example.test".into()],
        // Only the client at 127.0.0.5 may relay; HAProxy itself (127.0.0.1) may not.
        relay_networks: vec!["127.0.0.5/32".into()],
        ..GatewayConfig::default()
    };
    let proxied = "verify = []\nproxy_protocol = true\nproxy_trusted = [\"127.0.0.1/32\"]\n";
    let text = config.render().replace("verify = []\n", proxied).replace(
        "name = \"smtps\"\naddress = \"127.0.0.1:0\"\nprotocol = \"smtp\"",
        "name = \"smtps\"\naddress = \"127.0.0.1:0\"\nprotocol = \"smtps\"",
    ) + &format!(
        "\n[tls]\ncertificate = {cert:?}\nkey = {key:?}\n\n[auth]\nusers_file = {:?}\n",
        dir.path().join("users.txt")
    );
    let gateway = Gateway::start_with_text(&text, 2);
    let (v1, v2, tls) = (free_port(), free_port(), free_port());
    let _proxy = start_haproxy(
        dir.path(),
        &[
            (v1, gateway.addr(), "send-proxy"),
            (v2, gateway.addr(), "send-proxy-v2"),
            (tls, gateway.addr_of("smtps"), "send-proxy-v2"),
        ],
    );
    let local = |last: u8| IpAddr::from([127, 0, 0, last]);
    let haproxy_at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));

    // v1, from the relay client: relaying is allowed, and the trace names 127.0.0.5.
    let mut client = SmtpClient::connect_from(local(5), haproxy_at(v1));
    client.command("EHLO client.example.org").expect_code(250);
    let reply = client.send_mail(
        "a@example.org",
        &["someone@elsewhere.test"],
        &sample_message("relayed", "x"),
    );
    reply.expect(250, "2.0.0");
    let stored = String::from_utf8(gateway.spool_message(&reply.queue_id().unwrap())).unwrap();
    assert!(stored.contains("[127.0.0.5]"), "{stored}");
    assert_eq!(
        gateway.spool_envelope(&reply.queue_id().unwrap())["client"]["address"]
            .as_str()
            .unwrap()
            .split(':')
            .next(),
        Some("127.0.0.5")
    );

    // v2, from another client, with STARTTLS: no relaying for it; local mail is fine.
    let mut client = SmtpClient::connect_from(local(6), haproxy_at(v2));
    client.command("EHLO other.example.org").expect_code(250);
    client.starttls("relay.example.test");
    client.command("EHLO other.example.org").expect_code(250);
    client
        .command("MAIL FROM:<b@example.org>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<someone@elsewhere.test>")
        .expect_code(554);
    client
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
    client.command("DATA").expect_code(354);
    client.send(sample_message("over tls", "x").as_bytes());
    client.send(b".\r\n");
    let reply = client.read_reply();
    reply.expect(250, "2.0.0");
    let stored = String::from_utf8(gateway.spool_message(&reply.queue_id().unwrap())).unwrap();
    assert!(
        stored.contains("[127.0.0.6]") && stored.contains("TLS"),
        "{stored}"
    );

    // Implicit TLS behind the balancer: the ClientHello follows the PROXY header.
    let mut client = SmtpClient::connect_tls(haproxy_at(tls), "relay.example.test");
    client.command("EHLO tls.example.org").expect_code(250);
    client.command("QUIT");

    // Not from a trusted proxy, a malformed header, no header: closed, no greeting.
    let untrusted = {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&SocketAddr::new(local(7), 0).into()).unwrap();
        socket.connect(&gateway.addr().into()).unwrap();
        TcpStream::from(socket)
    };
    assert!(closed_without_greeting(untrusted, b""));
    let malformed = TcpStream::connect(gateway.addr()).unwrap();
    assert!(closed_without_greeting(
        malformed,
        b"EHLO direct.example.org\r\n"
    ));
    let start = Instant::now();
    let silent = TcpStream::connect(gateway.addr()).unwrap();
    assert!(closed_without_greeting(silent, b""));
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "the header timeout holds"
    );
    let log = gateway.log();
    assert!(log.contains("is not a trusted proxy"), "{log}");
    assert!(log.contains("not a PROXY protocol header"), "{log}");
}

#[test]
fn two_nodes_behind_one_balancer_each_see_the_real_client() {
    let dir = tempfile::tempdir().unwrap();
    let node = || {
        let config = GatewayConfig {
            accept_domains: vec!["example.test".into()],
            relay_networks: vec!["127.0.0.5/32".into()],
            ..GatewayConfig::default()
        };
        let proxied = "verify = []\nproxy_protocol = true\nproxy_trusted = [\"127.0.0.1/32\"]\n";
        Gateway::start_with_text(&config.render().replace("verify = []\n", proxied), 1)
    };
    let (a, b) = (node(), node());
    let port = free_port();
    let _proxy = start_balancer(
        dir.path(),
        &[(port, vec![a.addr(), b.addr()], "send-proxy-v2")],
    );
    let balancer = SocketAddr::from(([127, 0, 0, 1], port));

    // Round robin: six sessions over the two nodes; the relay client (127.0.0.5) relays
    // through either, the other (127.0.0.6) through neither.
    for round in 0..6 {
        let relay = round % 2 == 0;
        let from = IpAddr::from([127, 0, 0, if relay { 5 } else { 6 }]);
        let mut client = SmtpClient::connect_from(from, balancer);
        client.command("EHLO client.example.org").expect_code(250);
        client
            .command("MAIL FROM:<a@example.org>")
            .expect(250, "2.1.0");
        let reply = client.command("RCPT TO:<someone@elsewhere.test>");
        if relay {
            reply.expect(250, "2.1.5");
        } else {
            reply.expect_code(554);
            client
                .command("RCPT TO:<user@example.test>")
                .expect(250, "2.1.5");
        }
        client.command("DATA").expect_code(354);
        client.send(sample_message(&format!("round {round}"), "x").as_bytes());
        client.send(b".\r\n");
        client.read_reply().expect(250, "2.0.0");
        client.command("QUIT");
    }
    let mut seen = Vec::new();
    for gateway in [&a, &b] {
        let entries = gateway.spool_list();
        // Round robin spreads the sessions over both nodes (not strictly alternately:
        // HAProxy's threads each take their turn).
        assert!(!entries.is_empty(), "the balancer gave a node no session");
        for entry in entries {
            let stored = String::from_utf8(gateway.spool_message(&entry.id)).unwrap();
            let client = if stored.contains("[127.0.0.5]") {
                assert_eq!(entry.recipients, vec!["someone@elsewhere.test".to_owned()]);
                5
            } else {
                assert!(stored.contains("[127.0.0.6]"), "{stored}");
                assert_eq!(entry.recipients, vec!["user@example.test".to_owned()]);
                6
            };
            assert!(
                !stored.contains("[127.0.0.1]"),
                "the balancer's address in the trace: {stored}"
            );
            seen.push(client);
        }
    }
    seen.sort();
    assert_eq!(seen, vec![5, 5, 5, 6, 6, 6]);

    // A PROXY v2 header from an address that is not the balancer: closed, no greeting.
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[
        0x21, 0x11, 0x00, 0x0c, 127, 0, 0, 5, 127, 0, 0, 1, 0x30, 0x39, 0x00, 0x19,
    ]);
    let untrusted = {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::new(IpAddr::from([127, 0, 0, 7]), 0).into())
            .unwrap();
        socket.connect(&b.addr().into()).unwrap();
        TcpStream::from(socket)
    };
    assert!(closed_without_greeting(untrusted, &header));
    assert!(b.log().contains("is not a trusted proxy"));
}
