//! rspamd (Debian's `rspamd`, its proxy worker in milter mode, run by the test on loopback
//! with its own configuration) as a `[[milter]]` in a listener's chain: the GTUBE test
//! message is rejected at the end of DATA with rspamd's 5xx, a clean message is delivered
//! to the next hop with the header fields rspamd asked to add (its queue id from the `i`
//! macro) and without the ones it asked to delete, and when rspamd is down the
//! milter's `on_error` applies at once: 451 with `"tempfail"`, delivery with `"continue"`.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient, sample_message};

const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

/// rspamd, stopped when dropped.
struct Rspamd(Child);

impl Drop for Rspamd {
    fn drop(&mut self) {
        stop(&mut self.0);
    }
}

fn stop(child: &mut Child) {
    // The main process takes its workers down with it on SIGTERM.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rspamd_binary() -> &'static str {
    for path in ["/usr/bin/rspamd", "/usr/sbin/rspamd"] {
        if Path::new(path).exists() {
            return path;
        }
    }
    panic!("rspamd is not installed: run ./scripts/setup");
}

/// Starts rspamd's proxy worker as a milter on `port`, scanning itself. Its DNS points at
/// a loopback port where nothing answers (never the system's resolver), hyperscan is off
/// and the TLD list is four names, so it starts in about a second; only `milter_headers`
/// of the Lua plugins is loaded.
fn start_rspamd(dir: &Path, port: u16) -> Rspamd {
    let tld = dir.join("tld.dat");
    std::fs::write(&tld, "com\norg\ntest\nexample\n").unwrap();
    let d = dir.display();
    let config = format!(
        r#"options {{
  pidfile = "{d}/rspamd.pid";
  dns {{ nameserver = ["127.0.0.1:{dns}"]; timeout = 0.2s; retransmits = 1; }}
  disable_hyperscan = true;
  hs_cache_dir = "{d}";
  url_tld = "{tld}";
  filters = "";
  local_addrs = [];
}}
logging {{ type = "file"; filename = "{d}/rspamd.log"; level = "info"; }}
actions {{ reject = 15; add_header = 6; greylist = 4; }}
modules {{ path = "/usr/share/rspamd/plugins/milter_headers.lua"; }}
milter_headers {{ use = ["x-spamd-result", "x-rspamd-server", "x-rspamd-queue-id"]; skip_local = false; skip_authenticated = false; }}
worker "rspamd_proxy" {{
  bind_socket = "127.0.0.1:{port}";
  milter = yes;
  timeout = 10s;
  count = 1;
  upstream "local" {{ default = yes; self_scan = yes; }}
}}
"#,
        dns = free_port(),
        tld = tld.display(),
    );
    let path = dir.join("rspamd.conf");
    std::fs::write(&path, config).unwrap();
    let mut command = Command::new(rspamd_binary());
    command.arg("-f").arg("-c").arg(&path);
    for var in ["DBDIR", "RUNDIR", "LOGDIR"] {
        command.arg("--var").arg(format!("{var}={d}"));
    }
    // As the current user; root must say so (and name itself, or rspamd drops to nobody).
    if unsafe { libc::geteuid() } == 0 {
        command.args(["-i", "-u", "root", "-g", "root"]);
    }
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rspamd");
    let rspamd = Rspamd(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "rspamd did not listen on {port}: {}",
            std::fs::read_to_string(dir.join("rspamd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    rspamd
}

/// The gateway: listener `mx` runs the milter with `on_error = "tempfail"`, listener
/// `soft` the same rspamd with `on_error = "continue"`; mail for example.test goes to the
/// sink.
fn gateway(milter_port: u16, sink: &SinkServer) -> Gateway {
    let config = GatewayConfig {
        listeners: vec![
            ("mx".into(), "127.0.0.1:0".into()),
            ("soft".into(), "127.0.0.1:0".into()),
        ],
        ..GatewayConfig::default()
    }
    .route("internal", &["example.test"], sink.addr());
    let text = config
        .render()
        .replacen(
            "name = \"mx\"\naddress = \"127.0.0.1:0\"\nprotocol = \"smtp\"\n",
            "name = \"mx\"\naddress = \"127.0.0.1:0\"\nprotocol = \"smtp\"\nplugins = [\"rspamd\"]\n",
            1,
        )
        .replacen(
            "name = \"soft\"\naddress = \"127.0.0.1:0\"\nprotocol = \"smtp\"\n",
            "name = \"soft\"\naddress = \"127.0.0.1:0\"\nprotocol = \"smtp\"\nplugins = [\"rspamd-soft\"]\n",
            1,
        )
        + &format!(
            "\n[[milter]]\nname = \"rspamd\"\naddress = \"127.0.0.1:{milter_port}\"\ntimeout_ms = 5000\non_error = \"tempfail\"\n\
             \n[[milter]]\nname = \"rspamd-soft\"\naddress = \"127.0.0.1:{milter_port}\"\ntimeout_ms = 5000\non_error = \"continue\"\n"
        );
    Gateway::start_with_text(&text, 2)
}

#[test]
fn rspamd_rejects_gtube_adds_its_headers_to_clean_mail_and_its_absence_is_the_failure_policy() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut rspamd = start_rspamd(dir.path(), port);
    let sink = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let gateway = gateway(port, &sink);

    // GTUBE: refused after the message, with rspamd's own 5xx.
    let mut client = SmtpClient::ehlo(gateway.addr());
    let reply = client.command("MAIL FROM:<sender@example.org>");
    assert_eq!(reply.code, 250, "{reply:?}\n{}", gateway.log());
    client.command("RSET").expect_code(250);
    let reply = client.send_mail(
        "sender@example.org",
        &["user@example.test"],
        &sample_message("spam", GTUBE),
    );
    assert_eq!(reply.code / 100, 5, "{reply:?}\n{}", gateway.log());
    assert!(gateway.spool_list().is_empty());

    // A clean message in the same session (the milter was told ABORT in between):
    // delivered, with rspamd's header fields.
    let reply = client.send_mail(
        "sender@example.org",
        &["user@example.test"],
        // Spam flags from elsewhere, which rspamd deletes (change header, empty value).
        &format!(
            "X-Spam: yes\r\nX-Spam: certainly\r\n{}",
            sample_message("hello", "Nothing to see here, just a friendly note.")
        ),
    );
    reply.expect(250, "2.0.0");
    let queue_id = reply.queue_id().unwrap();
    client.command("QUIT");
    let received = sink.wait_for(1, Duration::from_secs(20));
    let text = received[0].text();
    // rspamd names the message by the `i` macro Tidegate sent.
    assert!(
        text.contains(&format!("X-Rspamd-Queue-Id: {queue_id}")),
        "{text}"
    );
    assert!(text.contains("X-Spamd-Result: default: False"), "{text}");
    assert!(text.contains("X-Rspamd-Server:"), "{text}");
    assert!(text.contains("Nothing to see here"), "{text}");
    assert!(!text.contains("X-Spam:"), "{text}");
    let rspamd_log = std::fs::read_to_string(dir.path().join("rspamd.log")).unwrap_or_default();
    assert!(rspamd_log.contains("GTUBE"), "{rspamd_log}");

    // rspamd down: "tempfail" answers 451 at once, "continue" lets mail through.
    stop(&mut rspamd.0);
    let started = Instant::now();
    let mut client = SmtpClient::ehlo(gateway.addr());
    let reply = client.command("MAIL FROM:<sender@example.org>");
    assert_eq!(reply.code, 451, "{reply:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    client.command("QUIT");
    let mut client = SmtpClient::ehlo(gateway.addr_of("soft"));
    client
        .send_mail(
            "sender@example.org",
            &["user@example.test"],
            &sample_message("unscanned", "rspamd is away"),
        )
        .expect(250, "2.0.0");
    let received = sink.wait_for(2, Duration::from_secs(20));
    assert!(!received[1].text().contains("X-Spamd-Result"));
    let log = gateway.log();
    assert!(log.contains("filter failed"), "{log}");
}
