//! `tidegate check -c FILE` accepts the documented example as is and refuses every broken
//! configuration with one message naming the file, the line and the key; `tidegate serve`
//! refuses the same files with the same message before it opens the spool or binds a port.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};

use tidegate_e2e::binary;

/// The example from the documentation, verbatim.
const EXAMPLE: &str = r#"hostname = "relay.example.test"

[[listener]]
name = "mx"
address = "127.0.0.1:2525"
protocol = "smtp"            # later also "submission" and "smtps"

[spool]
path = "var/spool"

[relay]
accept_domains = ["example.test"]     # recipients accepted from any client
relay_networks = ["127.0.0.1/32"]     # clients allowed to relay to any domain

[limits]
max_message_size = 10485760
max_recipients = 100
max_connections = 1000
max_connections_per_ip = 50
command_timeout_secs = 300
"#;

struct ConfigFile {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl ConfigFile {
    fn new(text: &str) -> ConfigFile {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tidegate.toml");
        std::fs::write(&path, text).unwrap();
        ConfigFile { dir, path }
    }

    fn run(&self, command: &str) -> Output {
        Command::new(binary())
            .args([command, "-c"])
            .arg(&self.path)
            .output()
            .expect("run tidegate")
    }
}

/// The example with `from` (which must occur once) replaced by `to`.
fn example_with(from: &str, to: &str) -> String {
    assert_eq!(EXAMPLE.matches(from).count(), 1, "{from}");
    EXAMPLE.replace(from, to)
}

/// The 1-based number of the last line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .iter()
        .rposition(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle} not in the text"))
        + 1
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `check` on `text` and asserts it fails with `FILE:LINE: KEY:` where LINE is the
/// line holding `at`; returns stderr.
#[track_caller]
fn assert_refused(text: &str, key: &str, at: &str) -> String {
    let file = ConfigFile::new(text);
    let output = file.run("check");
    let err = stderr(&output);
    assert!(!output.status.success(), "accepted:\n{text}");
    let expected = format!("{}:{}: {key}: ", file.path.display(), line_of(text, at));
    assert!(
        err.contains(&expected),
        "stderr {err:?} does not contain {expected:?}"
    );
    assert_eq!(err.lines().count(), 1, "one message expected: {err:?}");
    err
}

#[test]
fn the_documented_example_is_valid() {
    let file = ConfigFile::new(EXAMPLE);
    let output = file.run("check");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("{}: ok", file.path.display())
    );
    // Checking touches nothing: the spool is not created.
    assert!(!file.dir.path().join("var").exists());
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let text = example_with("max_recipients = 100", "max_recipient = 100");
    let err = assert_refused(&text, "limits.max_recipient", "max_recipient =");
    assert!(err.contains("unknown field `max_recipient`"), "{err}");

    let text = example_with("[relay]\n", "[relay]\nacept_domains = [\"example.test\"]\n");
    assert_refused(&text, "relay.acept_domains", "acept_domains");

    let text = example_with("protocol = \"smtp\"", "protocol = \"smtp\"\nport = 25");
    assert_refused(&text, "listener[0].port", "port = 25");

    let text = format!("{EXAMPLE}\n[limitz]\nmax_errors = 3\n");
    assert_refused(&text, "limitz", "[limitz]");
}

#[test]
fn a_bad_value_is_named_with_its_key_and_line() {
    let text = example_with("127.0.0.1:2525", "127.0.0.1:99999");
    assert_refused(&text, "listener[0].address", "99999");

    let text = example_with("\"127.0.0.1/32\"", "\"10.0.0.0/33\"");
    assert_refused(&text, "relay.relay_networks[0]", "10.0.0.0/33");

    let text = example_with(
        "command_timeout_secs = 300",
        "command_timeout_secs = \"soon\"",
    );
    let err = assert_refused(&text, "limits.command_timeout_secs", "\"soon\"");
    assert!(err.contains("soon"), "{err}");

    let text = example_with("command_timeout_secs = 300", "command_timeout_secs = 0");
    assert_refused(&text, "limits.command_timeout_secs", "command_timeout_secs");

    let text = example_with("\"example.test\"]", "\"example_test\"]");
    assert_refused(&text, "relay.accept_domains[0]", "example_test");

    let text = example_with("\"smtp\"", "\"smtq\"");
    assert_refused(&text, "listener[0].protocol", "smtq");

    // The second listener's line, not the first's.
    let text = format!("{EXAMPLE}\n[[listener]]\nname = \"mx2\"\naddress = \"127.0.0.1:2525\"\n");
    let err = assert_refused(&text, "listener[1].address", "address = \"127.0.0.1:2525\"");
    assert!(err.contains("used by two listeners"), "{err}");
}

#[test]
fn a_syntax_error_is_located() {
    let text = example_with("[spool]", "[spool");
    assert_refused(&text, "(syntax)", "[spool");

    let text = example_with("name = \"mx\"", "name = \"mx");
    assert_refused(&text, "(syntax)", "name = \"mx");
}

#[test]
fn a_missing_file_is_reported_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nowhere.toml");
    let output = Command::new(binary())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("cannot read"), "{err}");
    assert!(err.contains("No such file"), "{err}");
}

/// `serve` must validate before doing anything: the listener's port is held by this test,
/// so a server that bound first would fail with "address in use" instead, and a server
/// that opened the spool first would leave the spool directory behind.
#[test]
fn serve_refuses_a_bad_configuration_before_binding_anything() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = held.local_addr().unwrap().to_string();
    let cases = [
        example_with("max_recipients = 100", "max_recipient = 100"),
        example_with("\"127.0.0.1/32\"", "\"10.0.0.0/33\""),
        example_with(
            "command_timeout_secs = 300",
            "command_timeout_secs = \"soon\"",
        ),
    ];
    for text in cases {
        let text = text.replace("127.0.0.1:2525", &address);
        let file = ConfigFile::new(&text);
        let checked = file.run("check");
        let served = file.run("serve");
        assert!(!checked.status.success());
        assert!(!served.status.success(), "serve started:\n{text}");
        assert_eq!(
            stderr(&served),
            stderr(&checked),
            "serve and check disagree"
        );
        assert!(!stderr(&served).contains("listening"));
        assert!(
            !file.dir.path().join("var").exists(),
            "serve opened the spool of an invalid configuration"
        );
    }
    drop(held);
}

/// What the file points at is checked too: an admin token file that is missing or holds
/// a token too short to be safe, a webhook secret that is missing, and a recipients list
/// with a line that is not an address are each refused by `check`, naming the file.
#[test]
fn files_the_configuration_names_are_checked_too() {
    let cases = [
        (
            "\n[admin]\naddress = \"127.0.0.1:9025\"\ntoken_file = \"admin.token\"\n",
            "admin.token",
            None,
        ),
        (
            "\n[admin]\naddress = \"127.0.0.1:9025\"\ntoken_file = \"admin.token\"\n",
            "admin.token:1",
            Some(("admin.token", "short\n")),
        ),
        (
            "\n[[events]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:8099/e\"\nsecret_file = \"webhook.secret\"\n",
            "webhook.secret",
            None,
        ),
        (
            "\n[[route]]\nname = \"in\"\ndomains = [\"example.test\"]\nsmarthost = \"127.0.0.1:2526\"\nrecipients_file = \"recipients.txt\"\n",
            "recipients.txt:2",
            Some(("recipients.txt", "alice@example.test\nnot an address\n")),
        ),
        (
            "\n[dns]\ndnssec_trust_anchor = \"anchor.key\"\n",
            "anchor.key",
            Some(("anchor.key", "not a DNSKEY record\n")),
        ),
        (
            "\n[[route]]\nname = \"in\"\ndomains = [\"example.test\"]\nsmarthost = \"127.0.0.1:2526\"\nclient_certificate = \"client.pem\"\nclient_key = \"client.key\"\n",
            "client.pem",
            None,
        ),
    ];
    for (extra, named, file) in cases {
        let config = ConfigFile::new(&format!("{EXAMPLE}{extra}"));
        if let Some((name, text)) = file {
            std::fs::write(config.dir.path().join(name), text).unwrap();
        }
        let output = config.run("check");
        assert!(!output.status.success(), "accepted:\n{extra}");
        assert!(
            stderr(&output).contains(named),
            "{named}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn shaping_and_egress_mistakes_are_named() {
    let shaping = |body: &str| {
        format!(
            "{EXAMPLE}\n[[shaping]]\nname = \"a\"\ndomains = [\"gmail.com\"]\n\n[[shaping]]\n{body}\n"
        )
    };
    let text = shaping("name = \"b\"\ndomains = [\"GMail.com\"]");
    let err = assert_refused(&text, "shaping[1].domains", "GMail.com");
    assert!(err.contains("shaping `a` too"), "{err}");

    let text = shaping("name = \"c\"\nreact = [{ reply = \"(unclosed\", suspend = \"1m\" }]");
    let err = assert_refused(&text, "shaping[1].react[0].reply", "(unclosed");
    assert!(err.contains("regular expression"), "{err}");

    let text = shaping("name = \"d\"\nwindow = \"9-17\"");
    assert_refused(&text, "shaping[1].window", "9-17");

    let text = shaping("name = \"e\"\negress = \"nowhere\"");
    let err = assert_refused(&text, "shaping[1].egress", "egress = \"nowhere\"");
    assert!(err.contains("no [[egress]] is named `nowhere`"), "{err}");

    let text = format!(
        "{EXAMPLE}\n[[egress]]\nname = \"out\"\naddresses = [{{ address = \"0.0.0.0\" }}]\n"
    );
    assert_refused(&text, "egress[0].addresses[0].address", "addresses = [");
}

#[test]
fn transport_security_settings_are_checked_together() {
    assert_refused(
        &format!("{EXAMPLE}\n[delivery]\ndane = true\n"),
        "delivery.dane",
        "dane = true",
    );
    assert_refused(
        &format!(
            "{EXAMPLE}\n[[route]]\nname = \"in\"\ndomains = [\"example.test\"]\nsmarthost = \"127.0.0.1:2526\"\nclient_certificate = \"c.pem\"\n"
        ),
        "route[0].client_certificate",
        "client_certificate",
    );
    assert_refused(
        &format!("{EXAMPLE}\n[tls_report]\nperiod = \"0s\"\n"),
        "tls_report.period",
        "period",
    );
}
