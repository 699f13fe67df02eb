//! postgrey (Debian's `postgrey`, run by the test on loopback with its own database and
//! empty whitelists) as a `[[policy_service]]` asked at RCPT, configured exactly as the
//! README shows: the first attempt of a (client, sender, recipient) triplet is greylisted
//! with 450 4.7.1, a retry after the delay is accepted and the message carries
//! postgrey's `X-Greylist:` field (its PREPEND); both requests go over one kept-open
//! connection. The service arrives by a reload (a session already open keeps the chain it
//! started with), `tidegate plugins` lists it, and with postgrey gone `on_error =
//! "continue"` lets mail through.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient, sample_message};

/// The greylisting delay, in seconds.
const DELAY: u64 = 2;

/// postgrey, stopped when dropped.
struct Postgrey(Child);

impl Drop for Postgrey {
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

fn postgrey_binary() -> &'static str {
    for path in ["/usr/sbin/postgrey", "/usr/bin/postgrey"] {
        if Path::new(path).exists() {
            return path;
        }
    }
    panic!("postgrey is not installed: run ./scripts/setup");
}

fn id(flag: &str) -> String {
    let out = Command::new("id").arg(flag).output().expect("run id");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Starts postgrey on `port` as the current user, with its database in `dir` and empty
/// whitelists (its default ones would pass some clients unasked).
fn start_postgrey(dir: &Path, port: u16) -> Postgrey {
    let clients = dir.join("whitelist_clients");
    let recipients = dir.join("whitelist_recipients");
    std::fs::write(&clients, "").unwrap();
    std::fs::write(&recipients, "").unwrap();
    let log = std::fs::File::create(dir.join("postgrey.log")).unwrap();
    let child = Command::new(postgrey_binary())
        .arg(format!("--inet=127.0.0.1:{port}"))
        .arg(format!("--dbdir={}", dir.display()))
        .arg(format!("--pidfile={}", dir.join("postgrey.pid").display()))
        .arg(format!("--delay={DELAY}"))
        .arg(format!("--user={}", id("-un")))
        .arg(format!("--group={}", id("-gn")))
        .arg(format!("--whitelist-clients={}", clients.display()))
        .arg(format!("--whitelist-recipients={}", recipients.display()))
        .arg("--hostname=greylist.test")
        .arg("--verbose")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("start postgrey");
    let postgrey = Postgrey(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "postgrey did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    postgrey
}

fn postgrey_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("postgrey.log")).unwrap_or_default()
}

#[test]
fn the_first_attempt_is_greylisted_and_the_retry_after_the_delay_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut postgrey = start_postgrey(dir.path(), port);
    let sink = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let token_file = dir.path().join("admin.token");
    std::fs::write(
        &token_file,
        "a-long-enough-admin-token-for-the-test-0123456789\n",
    )
    .unwrap();
    let base = GatewayConfig::default()
        .top(
            "admin",
            &format!(r#"{{ address = "127.0.0.1:0", token_file = {token_file:?} }}"#),
        )
        .route("internal", &["example.test"], sink.addr())
        .render();
    let with_greylist = base.clone()
        + &format!(
            "\n[[policy_service]]\nname = \"greylist\"\naddress = \"127.0.0.1:{port}\"      # Postfix policy delegation protocol over TCP\nstages = [\"rcpt\"]\ntimeout_ms = 2000\non_error = \"continue\"\n"
        );
    // Started without the service; a reload puts it into the listener's chain. A session
    // that began before the reload keeps the chain it started with.
    let gateway = Gateway::start_with_text(&base, 1);
    let mut before = SmtpClient::ehlo(gateway.addr());
    before
        .command("MAIL FROM:<early@example.org>")
        .expect(250, "2.1.0");
    std::fs::write(gateway.config_path(), &with_greylist).unwrap();
    gateway.wait_for_log("configuration reloaded");
    before
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
    before.command("QUIT");
    assert!(!postgrey_log(dir.path()).contains("early@example.org"));

    let first = Instant::now();
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    let reply = client.command("RCPT TO:<user@example.test>");
    reply.expect(450, "4.7.1");
    assert!(reply.text().contains("Greylisted"), "{reply:?}");
    client.command("QUIT");
    assert!(postgrey_log(dir.path()).contains("action=greylist, reason=new"));

    // Too early: still greylisted.
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    if first.elapsed() < Duration::from_secs(DELAY) {
        client
            .command("RCPT TO:<user@example.test>")
            .expect(450, "4.7.1");
    }
    client.command("RSET").expect_code(250);

    // After the delay the same triplet passes, and postgrey's PREPEND reaches the message.
    std::thread::sleep(
        Duration::from_secs(DELAY).saturating_sub(first.elapsed()) + Duration::from_millis(300),
    );
    client
        .send_mail(
            "sender@example.org",
            &["user@example.test"],
            &sample_message("retry", "Second time lucky."),
        )
        .expect(250, "2.0.0");
    client.command("QUIT");
    let received = sink.wait_for(1, Duration::from_secs(20));
    let text = received[0].text();
    assert!(
        text.contains("X-Greylist: delayed ") && text.contains("by postgrey-"),
        "{text}"
    );
    let log = postgrey_log(dir.path());
    assert!(log.contains("action=pass, reason=triplet found"), "{log}");
    // One connection is the readiness probe's; the gateway's three requests took one more.
    assert_eq!(
        log.matches("CONNECT TCP").count(),
        2,
        "requests did not share a connection: {log}"
    );

    // `tidegate plugins` lists the service with its calls.
    let plugins = gateway.cli_json(&["plugins"]);
    let greylist = plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "greylist")
        .unwrap_or_else(|| panic!("{plugins}"));
    assert_eq!(greylist["kind"], "policy_service");
    assert_eq!(greylist["address"], format!("127.0.0.1:{port}"));
    assert!(greylist["calls"].as_u64().unwrap() >= 3, "{greylist}");

    // postgrey gone: on_error = "continue" lets the recipient through.
    let _ = postgrey.0.kill();
    let _ = postgrey.0.wait();
    let started = Instant::now();
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<other@example.org>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
    assert!(started.elapsed() < Duration::from_secs(3));
    client.command("QUIT");
    assert!(gateway.log().contains("filter failed"));
}
