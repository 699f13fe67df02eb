//! TLS and SMTP AUTH end to end: STARTTLS (with swaks and with a Rust client), implicit
//! TLS, the certificate chosen by SNI, certificates reloaded without a restart, the
//! STARTTLS injection flaw closed, AUTH success and failure, AUTH refused in the clear,
//! submission requiring AUTH, and relaying allowed only once authenticated.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tidegate_e2e::{Gateway, SmtpClient, binary, sample_message};

/// Writes a self-signed certificate and key with `tidegate gen-cert`; returns the DER.
fn gen_cert(dir: &Path, stem: &str, name: &str, force: bool) -> Vec<u8> {
    let (cert, _) = tidegate_e2e::self_signed(dir, stem, name, force);
    tidegate_e2e::pem_certificate_der(&cert)
}

fn users_line(user: &str, password: &str) -> String {
    let mut child = Command::new(binary())
        .args(["hash-password", "--user", user])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run hash-password");
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

struct Setup {
    gateway: Gateway,
    certs: tempfile::TempDir,
    default_der: Vec<u8>,
    sni_der: Vec<u8>,
}

fn setup() -> Setup {
    let certs = tempfile::tempdir().unwrap();
    let default_der = gen_cert(certs.path(), "default", "relay.example.test", false);
    let sni_der = gen_cert(certs.path(), "other", "mx2.example.test", false);
    std::fs::write(
        certs.path().join("users.txt"),
        users_line("alice@example.test", "s3cret pass"),
    )
    .unwrap();
    let dir = certs.path().display();
    let text = format!(
        r#"hostname = "relay.example.test"

[[listener]]
name = "mx"
address = "127.0.0.1:0"
protocol = "smtp"
verify = []

[[listener]]
name = "submission"
address = "127.0.0.1:0"
protocol = "submission"

[[listener]]
name = "smtps"
address = "127.0.0.1:0"
protocol = "smtps"

[spool]
path = "spool"

[relay]
accept_domains = ["example.test"]
relay_networks = []

[queue]
hold = true

[admin]
address = "127.0.0.1:0"

[tls]
certificate = "{dir}/default.pem"
key = "{dir}/default.key"

[[tls.sni]]
names = ["mx2.example.test"]
certificate = "{dir}/other.pem"
key = "{dir}/other.key"

[auth]
users_file = "{dir}/users.txt"
max_failures = 3
"#
    );
    let gateway = Gateway::start_with_text(&text, 3);
    Setup {
        gateway,
        certs,
        default_der,
        sni_der,
    }
}

fn plain(user: &str, password: &str) -> String {
    use std::fmt::Write as _;
    let raw = format!("\0{user}\0{password}");
    // A tiny base64 encoder keeps the test free of extra dependencies.
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in raw.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                let _ = out.write_char(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn starttls_resets_the_session_and_auth_needs_it() {
    let s = setup();
    let mut client = SmtpClient::connect(s.gateway.addr_of("submission"));
    let ehlo = client.command("EHLO client.example.org");
    assert!(ehlo.lines.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
    assert!(
        !ehlo.lines.iter().any(|l| l.starts_with("AUTH")),
        "AUTH offered in the clear: {ehlo:?}"
    );
    client
        .command(&format!(
            "AUTH PLAIN {}",
            plain("alice@example.test", "s3cret pass")
        ))
        .expect(538, "5.7.11");
    client
        .command("MAIL FROM:<alice@example.test>")
        .expect(530, "5.7.0");

    let der = client.starttls("relay.example.test");
    assert_eq!(der, s.default_der, "the default certificate was expected");
    // RFC 3207: the session starts over; MAIL before EHLO is out of sequence.
    client
        .command("MAIL FROM:<alice@example.test>")
        .expect(503, "5.5.1");
    let ehlo = client.command("EHLO client.example.org");
    assert!(!ehlo.lines.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
    assert!(
        ehlo.lines.iter().any(|l| l == "AUTH PLAIN LOGIN"),
        "{ehlo:?}"
    );
    client
        .command("MAIL FROM:<alice@example.test>")
        .expect(530, "5.7.0");

    client
        .command(&format!(
            "AUTH PLAIN {}",
            plain("alice@example.test", "wrong")
        ))
        .expect(535, "5.7.8");
    client
        .command(&format!(
            "AUTH PLAIN {}",
            plain("alice@example.test", "s3cret pass")
        ))
        .expect(235, "2.7.0");
    // Authenticated: relaying to any domain is allowed.
    let reply = client.send_mail(
        "alice@example.test",
        &["someone@elsewhere.test"],
        &sample_message("submitted", "hello"),
    );
    reply.expect(250, "2.0.0");
    let id = reply.queue_id().unwrap();
    let stored = String::from_utf8(s.gateway.spool_message(&id)).unwrap();
    assert!(stored.contains("(using TLSv1.3 cipher TLS13_"), "{stored}");
    assert!(stored.contains("with ESMTPSA id"), "{stored}");
}

#[test]
fn auth_login_works_and_failures_are_rate_limited() {
    let s = setup();
    let mut client = SmtpClient::connect(s.gateway.addr_of("submission"));
    client.command("EHLO client.example.org");
    client.starttls("relay.example.test");
    client.command("EHLO client.example.org");
    client.command("AUTH LOGIN").expect_code(334);
    client.command("YWxpY2VAZXhhbXBsZS50ZXN0").expect_code(334); // alice@example.test
    client.command("czNjcmV0IHBhc3M=").expect(235, "2.7.0"); // s3cret pass

    let mut guesser = SmtpClient::connect(s.gateway.addr_of("submission"));
    guesser.command("EHLO guesser.example.org");
    guesser.starttls("relay.example.test");
    guesser.command("EHLO guesser.example.org");
    for _ in 0..3 {
        guesser
            .command(&format!(
                "AUTH PLAIN {}",
                plain("alice@example.test", "guess")
            ))
            .expect(535, "5.7.8");
    }
    // Blocked now, even with the right password.
    guesser
        .command(&format!(
            "AUTH PLAIN {}",
            plain("alice@example.test", "s3cret pass")
        ))
        .expect(454, "4.7.0");
    // Any AUTH is refused while blocked, before a challenge is even sent.
    guesser.command("AUTH PLAIN").expect(454, "4.7.0");

    // The metrics count both TLS sessions and every AUTH attempt by its result.
    let metrics = s.gateway.admin_get("/metrics").1;
    for line in [
        "tidegate_tls_sessions_total{direction=\"in\",version=\"TLSv1.3\"} 2",
        "tidegate_auth_attempts_total{result=\"success\"} 1",
        "tidegate_auth_attempts_total{result=\"failure\"} 3",
    ] {
        assert!(metrics.contains(line), "no {line} in\n{metrics}");
    }
}

#[test]
fn pipelined_commands_after_starttls_are_not_executed_inside_tls() {
    let s = setup();
    let mut client = SmtpClient::connect(s.gateway.addr());
    client.command("EHLO client.example.org");
    client.send(b"STARTTLS\r\nRSET\r\n");
    client.read_reply().expect(220, "2.0.0");
    client.upgrade("relay.example.test");
    // If RSET had been kept and run inside TLS, its 250 would come before NOOP's reply.
    let reply = client.command("NOOP");
    reply.expect(250, "2.0.0");
    let ehlo = client.command("EHLO client.example.org");
    assert_eq!(ehlo.code, 250);
    assert!(ehlo.lines[0].starts_with("relay.example.test"), "{ehlo:?}");
}

#[test]
fn implicit_tls_sni_and_unauthenticated_relay() {
    let s = setup();
    let mut client = SmtpClient::connect_tls(s.gateway.addr_of("smtps"), "relay.example.test");
    assert_eq!(client.greeting.code, 220);
    client.command("EHLO client.example.org");
    client
        .command("MAIL FROM:<alice@example.test>")
        .expect(530, "5.7.0");

    // SNI picks the second certificate.
    let mut sni = SmtpClient::connect(s.gateway.addr());
    sni.command("EHLO client.example.org");
    assert_eq!(sni.starttls("mx2.example.test"), s.sni_der);

    // On the MX listener, without AUTH, relaying stays denied even over TLS.
    sni.command("EHLO client.example.org");
    sni.command("MAIL FROM:<x@example.org>")
        .expect(250, "2.1.0");
    sni.command("RCPT TO:<someone@elsewhere.test>")
        .expect(554, "5.7.1");
    sni.command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
}

#[test]
fn swaks_delivers_over_starttls() {
    let s = setup();
    let output = Command::new("swaks")
        .args(["--server", &s.gateway.addr().to_string(), "--tls"])
        .args(["--from", "a@example.org", "--to", "user@example.test"])
        .args(["--header", "Subject: swaks over tls", "--body", "encrypted"])
        .output()
        .expect("run swaks (apt-get install swaks libnet-ssleay-perl)");
    let transcript = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{transcript}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        transcript.contains("<~  250 2.0.0 Ok: queued as"),
        "{transcript}"
    );
    let spooled = s.gateway.spool_list();
    assert_eq!(spooled.len(), 1);
    let stored = String::from_utf8(s.gateway.spool_message(&spooled[0].id)).unwrap();
    assert!(stored.contains("with ESMTPS id"), "{stored}");
}

#[test]
fn certificates_are_reloaded_without_a_restart() {
    let s = setup();
    let mut before = SmtpClient::connect(s.gateway.addr());
    before.command("EHLO client.example.org");
    assert_eq!(before.starttls("relay.example.test"), s.default_der);

    let renewed = gen_cert(s.certs.path(), "default", "relay.example.test", true);
    assert_ne!(renewed, s.default_der);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut client = SmtpClient::connect(s.gateway.addr());
        client.command("EHLO client.example.org");
        if client.starttls("relay.example.test") == renewed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was never served:\n{}",
            s.gateway.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A gateway allowing AUTH in the clear (loopback only), with the test plugin deciding
/// some logins and a rule that the sender must be the authenticated user.
fn plaintext_auth_gateway(mode: &str) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut users = users_line("alice@example.test", "s3cret pass");
    users.push_str(&users_line("banned@example.test", "s3cret pass"));
    std::fs::write(dir.path().join("users.txt"), users).unwrap();
    let plugin = tidegate_e2e::plugin_dist().join("test_plugin.wasm");
    let text = format!(
        r#"hostname = "relay.example.test"
[[listener]]
name = "submission"
address = "127.0.0.1:0"
protocol = "submission"
[spool]
path = "spool"
[relay]
accept_domains = ["example.test"]
[queue]
hold = true
[auth]
users_file = "{}/users.txt"
allow_plaintext = true
require_sender_match = true
[[plugin]]
name = "policy"
path = {plugin:?}
[plugin.config]
mode = "{mode}"
trigger = "probe@elsewhere.test"
"#,
        dir.path().display()
    );
    (Gateway::start_with_text(&text, 1), dir)
}

#[test]
fn on_auth_can_accept_and_refuse_and_the_identity_reaches_plugins() {
    let (gateway, _dir) = plaintext_auth_gateway("auth");
    let mut client = SmtpClient::connect(gateway.addr_of("submission"));
    client.command("EHLO client.example.org");
    // Not in the users file, accepted by the plugin.
    client
        .command(&format!(
            "AUTH PLAIN {}",
            plain("plugin-user", "from-plugin")
        ))
        .expect(235, "2.7.0");

    let mut banned = SmtpClient::connect(gateway.addr_of("submission"));
    banned.command("EHLO client.example.org");
    let reply = banned.command(&format!(
        "AUTH PLAIN {}",
        plain("banned@example.test", "s3cret pass")
    ));
    reply.expect(535, "5.7.8");
    assert!(reply.text().contains("disabled by policy"), "{reply:?}");

    // The sender must be the authenticated user.
    let mut alice = SmtpClient::connect(gateway.addr_of("submission"));
    alice.command("EHLO client.example.org");
    alice
        .command(&format!(
            "AUTH PLAIN {}",
            plain("alice@example.test", "s3cret pass")
        ))
        .expect(235, "2.7.0");
    alice
        .command("MAIL FROM:<bob@example.test>")
        .expect(553, "5.7.1");
    alice
        .command("MAIL FROM:<Alice@example.test>")
        .expect(250, "2.1.0");
}

#[test]
fn plugins_see_the_authenticated_identity() {
    let (gateway, _dir) = plaintext_auth_gateway("whoami");
    let mut alice = SmtpClient::connect(gateway.addr_of("submission"));
    alice.command("EHLO client.example.org");
    alice
        .command(&format!(
            "AUTH PLAIN {}",
            plain("alice@example.test", "s3cret pass")
        ))
        .expect(235, "2.7.0");
    alice
        .command("MAIL FROM:<alice@example.test>")
        .expect(250, "2.1.0");
    let reply = alice.command("RCPT TO:<probe@elsewhere.test>");
    reply.expect(550, "5.7.1");
    assert_eq!(reply.text(), "5.7.1 authenticated as alice@example.test");
}

#[test]
fn the_users_file_is_reloaded_and_a_broken_one_keeps_the_old_users() {
    let (gateway, dir) = plaintext_auth_gateway("pass");
    let users = dir.path().join("users.txt");
    let try_login = |user: &str, password: &str| {
        let mut client = SmtpClient::connect(gateway.addr_of("submission"));
        client.command("EHLO client.example.org");
        client
            .command(&format!("AUTH PLAIN {}", plain(user, password)))
            .code
    };
    assert_eq!(try_login("carol@example.test", "new one"), 535);

    // Add a user by write-then-rename, as an admin tool would.
    let mut text = std::fs::read_to_string(&users).unwrap();
    text.push_str(&users_line("carol@example.test", "new one"));
    let staged = dir.path().join("users.txt.new");
    std::fs::write(&staged, &text).unwrap();
    std::fs::rename(&staged, &users).unwrap();
    gateway.wait_for_log("users file reloaded");
    assert_eq!(try_login("carol@example.test", "new one"), 235);

    // A broken file is refused and the users stay.
    std::fs::write(&users, "carol@example.test:not-a-hash\n").unwrap();
    gateway.wait_for_log("users file not reloaded");
    assert_eq!(try_login("carol@example.test", "new one"), 235);
    assert_eq!(try_login("alice@example.test", "s3cret pass"), 235);
}
