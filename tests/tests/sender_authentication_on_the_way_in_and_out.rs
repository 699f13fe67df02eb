//! Sender authentication end to end, with a DNS server (dnsmasq) on loopback serving SPF,
//! DKIM and DMARC records: SPF's every result, DKIM signatures made by Tidegate verified
//! by Tidegate's own verification path and by an independent implementation (Debian's
//! dkimpy), a changed body failing them, DMARC's policy and alignment, a forged
//! `Authentication-Results:` in our name removed while others' stay, and `tidegate dkim
//! keygen` / `check` against the published record.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use tidegate_e2e::{DnsServer, Gateway, GatewayConfig, PluginEntry, SmtpClient, binary};

const OUTSIDE: &str = "127.0.0.2";

/// A key made with `tidegate dkim keygen`; returns its file and the record's text.
fn keygen(dir: &Path, algorithm: &str) -> (PathBuf, String) {
    keygen_for(dir, "good.test", &format!("s-{algorithm}"), algorithm)
}

fn keygen_for(dir: &Path, domain: &str, selector: &str, algorithm: &str) -> (PathBuf, String) {
    let out = dir.join(format!("{domain}-{selector}.pem"));
    let output = Command::new(binary())
        .args(["dkim", "keygen", "--domain", domain, "--selector", selector])
        .arg("--out")
        .arg(&out)
        .args(["--algorithm", algorithm])
        .output()
        .expect("tidegate dkim keygen runs");
    assert!(output.status.success(), "{output:?}");
    let line = String::from_utf8(output.stdout).unwrap();
    // `s-rsa._domainkey.good.test. IN TXT "..." "..."`: the strings joined are the record.
    let record: String = line
        .split('"')
        .skip(1)
        .step_by(2)
        .collect::<Vec<_>>()
        .concat();
    assert!(
        line.starts_with(&format!(
            "{selector}._domainkey.{domain}. IN TXT \"v=DKIM1; k="
        )),
        "{line}"
    );
    (out, record)
}

/// dnsmasq's `--txt-record` with the text cut into strings of at most 255 octets (its
/// commas separate the strings; none of these records has a comma of its own).
fn txt(name: &str, text: &str) -> String {
    let strings: Vec<String> = text
        .as_bytes()
        .chunks(255)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    format!("--txt-record={name},{}", strings.join(","))
}

struct Lab {
    gateway: Gateway,
    arc_record: String,
    _silent: std::net::UdpSocket,
    _dns: DnsServer,
    _keys: tempfile::TempDir,
    rsa_record: String,
    ed_record: String,
}

fn lab() -> Lab {
    lab_with(Vec::new())
}

fn lab_with(plugins: Vec<PluginEntry>) -> Lab {
    lab_sealing(plugins, false)
}

/// A lab whose gateway also seals, with ARC, what it verified (`[arc_seal]`, as the
/// forwarder.test list would).
fn lab_sealing(plugins: Vec<PluginEntry>, seal: bool) -> Lab {
    let keys = tempfile::tempdir().unwrap();
    let (rsa_key, rsa_record) = keygen(keys.path(), "rsa");
    let (ed_key, ed_record) = keygen(keys.path(), "ed25519");
    // A forwarder (a mailing list) that seals what it forwards with ARC.
    let (_, arc_record) = keygen_for(keys.path(), "forwarder.test", "arc", "rsa");
    let too_many: String = (1..=11).map(|i| format!("a:h{i}.loop.test ")).collect();
    let mut args: Vec<String> = [
        "good.test",
        "bad.test",
        "soft.test",
        "neutral.test",
        "none.test",
        "loop.test",
        "example.test",
        "quarantine.test",
        "forwarder.test",
        // DMARC's tree walk asks for _dmarc.test: answered (NXDOMAIN), not refused.
        "test",
    ]
    .iter()
    .map(|z| format!("--local=/{z}/"))
    .collect();
    args.extend([
        txt("good.test", "v=spf1 ip4:127.0.0.0/8 -all"),
        txt("bad.test", "v=spf1 ip4:192.0.2.1 -all"),
        txt("soft.test", "v=spf1 ~all"),
        txt("neutral.test", "v=spf1 ?all"),
        txt("loop.test", &format!("v=spf1 {too_many}-all")),
        txt("_dmarc.good.test", "v=DMARC1; p=reject"),
        txt("_dmarc.quarantine.test", "v=DMARC1; p=quarantine"),
        txt("s-rsa._domainkey.good.test", &rsa_record),
        txt("s-ed25519._domainkey.good.test", &ed_record),
        txt("arc._domainkey.forwarder.test", &arc_record),
    ]);
    // A server that never answers, for SPF's temperror: queries for unanswered.test are
    // forwarded to a socket nobody reads, and the gateway's resolver times out.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    args.push(format!(
        "--server=/unanswered.test/127.0.0.1#{}",
        silent.local_addr().unwrap().port()
    ));
    let dns = DnsServer::start_with_args(&args);
    let config = GatewayConfig {
        plugins,
        ..GatewayConfig::default()
    }
    .dns(dns.addr(), 500);
    let text = config.render().replace(
        "verify = []\n",
        "verify = [\"spf\", \"dkim\", \"dmarc\", \"arc\"]\n",
    ) + &format!(
        "\n[[dkim_sign]]\ndomain = \"good.test\"\nselector = \"s-rsa\"\nkey_file = {rsa_key:?}\n\
             \n[[dkim_sign]]\ndomain = \"good.test\"\nselector = \"s-ed25519\"\nkey_file = {ed_key:?}\n\
             \n[[dkim_sign]]\ndomain = \"good.test\"\nselector = \"s-old\"\nkey_file = {rsa_key:?}\nnot_after = \"2020-01-01T00:00:00Z\"\n"
    ) + &if seal {
        format!(
            "\n[arc_seal]\ndomain = \"forwarder.test\"\nselector = \"arc\"\nkey_file = {:?}\n",
            keys.path().join("forwarder.test-arc.pem")
        )
    } else {
        String::new()
    };
    let gateway = Gateway::start_with_text(&text, 1);
    Lab {
        gateway,
        arc_record,
        _silent: silent,
        _dns: dns,
        _keys: keys,
        rsa_record,
        ed_record,
    }
}

/// Sends `message` from `client_ip` with `sender`; returns the message as it will leave.
fn send(lab: &Lab, client_ip: &str, sender: &str, message: &str) -> String {
    let local: IpAddr = client_ip.parse().unwrap();
    let mut client = SmtpClient::connect_from(local, lab.gateway.addr());
    client.command("EHLO client.good.test").expect_code(250);
    let reply = client.send_mail(sender, &["user@example.test"], message);
    reply.expect(250, "2.0.0");
    let id = reply.queue_id().expect("queue id");
    String::from_utf8(lab.gateway.spool_show(&id)).unwrap()
}

/// The value of our Authentication-Results field (unfolded).
fn our_results(message: &str) -> String {
    let unfolded = message.replace("\r\n\t", " ").replace("\r\n ", " ");
    unfolded
        .lines()
        .find(|l| l.starts_with("Authentication-Results: relay.example.test"))
        .unwrap_or_else(|| panic!("no Authentication-Results of ours in:\n{message}"))
        .to_owned()
}

fn plain_message(from: &str, body: &str) -> String {
    format!(
        "From: Alice <{from}>\r\nTo: user@example.test\r\nSubject: auth\r\nDate: Tue, 1 Dec 2026 08:00:00 +0000\r\nMessage-ID: <1@good.test>\r\n\r\n{body}\r\n"
    )
}

/// Strips what the gateway put above the message it received (our `Received:` and
/// `Authentication-Results:` fields), giving the bytes as the next hop would see them.
fn without_our_fields(message: &str) -> String {
    let mut out = Vec::new();
    let mut skipping = false;
    let mut in_header = true;
    for line in message.split_inclusive("\r\n") {
        if in_header && line == "\r\n" {
            in_header = false;
        }
        if in_header && (line.starts_with(' ') || line.starts_with('\t')) {
            if !skipping {
                out.push(line);
            }
            continue;
        }
        skipping = in_header
            && (line.starts_with("Received: ") || line.starts_with("Authentication-Results: "));
        if !skipping {
            out.push(line);
        }
    }
    out.concat()
}

/// Runs a Python script with Debian's python3 (and its dkimpy, which scripts/setup
/// installs), `input` on its standard input; returns its standard output, or panics with
/// its standard error when it fails.
fn python(script: &str, args: &[&str], input: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with dkimpy (scripts/setup installs python3-dkim)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Debian's dkimpy verifies `message` with the records this test published.
fn dkimpy_verifies(lab: &Lab, message: &str) -> bool {
    let script = r#"
import sys, dkim
records = {b"s-rsa._domainkey.good.test.": sys.argv[1].encode(), b"s-ed25519._domainkey.good.test.": sys.argv[2].encode()}
def dns(name, timeout=5):
    return records.get(name if name.endswith(b".") else name + b".", b"")
message = sys.stdin.buffer.read()
d = dkim.DKIM(message)
count = message.count(b"\nDKIM-Signature:") + message.startswith(b"DKIM-Signature:")
try:
    ok = all(d.verify(idx=i, dnsfunc=dns) for i in range(count)) and count == 2
except dkim.ValidationError as e:
    ok = False
print("pass" if ok else "fail")
"#;
    let verdict = python(script, &[&lab.rsa_record, &lab.ed_record], message);
    verdict.trim() == "pass"
}

#[test]
fn spf_gives_each_of_its_results_for_mail_from() {
    let lab = lab();
    for (domain, expected) in [
        ("good.test", "spf=pass"),
        ("bad.test", "spf=fail"),
        ("soft.test", "spf=softfail"),
        ("neutral.test", "spf=neutral"),
        ("none.test", "spf=none"),
        ("loop.test", "spf=permerror"),
        // Outside every zone the server refuses to answer: a temporary error.
        ("unanswered.test", "spf=temperror"),
    ] {
        let sender = format!("alice@{domain}");
        let stored = send(&lab, OUTSIDE, &sender, &plain_message(&sender, "hello"));
        let results = our_results(&stored);
        let mail_from = results
            .split(';')
            .find(|part| part.contains("smtp.mailfrom"))
            .unwrap_or_default();
        assert!(
            mail_from.contains(expected),
            "{domain}: expected {expected} in {results}"
        );
    }
}

#[test]
fn what_tidegate_signs_passes_its_own_checks_and_dkimpys_and_a_changed_body_fails() {
    let lab = lab();
    // From a relay client: signed with both keys in their window, not with the old one.
    let signed = send(
        &lab,
        "127.0.0.1",
        "alice@good.test",
        &plain_message("alice@good.test", "signed body"),
    );
    let leaving = without_our_fields(&signed);
    assert_eq!(leaving.matches("DKIM-Signature:").count(), 2, "{leaving}");
    assert!(leaving.contains("s=s-rsa") && leaving.contains("s=s-ed25519"));
    assert!(!leaving.contains("s=s-old"), "a key past not_after signed");
    assert!(leaving.contains("c=relaxed/relaxed"), "{leaving}");
    // From is over-signed: h= names it twice.
    let h = leaving
        .replace("\r\n\t", "")
        .replace("\r\n ", "")
        .split("h=")
        .nth(1)
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert_eq!(h.matches("from").count(), 2, "h={h}");
    assert!(
        dkimpy_verifies(&lab, &leaving),
        "dkimpy refused:\n{leaving}"
    );

    // Received from outside, as the next hop would: DKIM and DMARC pass (SPF passes too,
    // since loopback is in good.test's record).
    let received = send(&lab, OUTSIDE, "alice@good.test", &leaving);
    let results = our_results(&received);
    assert!(results.contains("dkim=pass"), "{results}");
    assert!(results.contains("dmarc=pass"), "{results}");
    assert!(!received.contains("s=s-old"));
    // An MX never signs mail from outside, even with one of our domains in From.
    assert_eq!(
        without_our_fields(&received)
            .matches("DKIM-Signature:")
            .count(),
        2
    );

    // The body changed on the way: both signatures fail, with dkimpy too. With an
    // unaligned MAIL FROM nothing saves DMARC, and good.test says reject.
    let tampered = leaving.replace("signed body", "changed body");
    assert!(!dkimpy_verifies(&lab, &tampered));
    let received = send(&lab, OUTSIDE, "bounce@bad.test", &tampered);
    let results = our_results(&received);
    assert!(results.contains("dkim=fail"), "{results}");
    assert!(results.contains("dmarc=fail"), "{results}");
    assert!(results.contains("policy.dmarc=reject"), "{results}");
}

#[test]
fn a_large_message_is_signed_as_well_as_a_small_one() {
    // Above the size up to which signing runs on the session's own task (128 KiB), it
    // runs on the blocking pool: the same signatures, which dkimpy accepts.
    let lab = lab();
    let body = "a line of a long message, signed on the blocking pool\r\n".repeat(4000);
    let signed = send(
        &lab,
        "127.0.0.1",
        "alice@good.test",
        &plain_message("alice@good.test", &body),
    );
    let leaving = without_our_fields(&signed);
    assert!(leaving.len() > 200_000);
    assert_eq!(leaving.matches("DKIM-Signature:").count(), 2);
    assert!(leaving.contains("s=s-rsa") && leaving.contains("s=s-ed25519"));
    assert!(
        dkimpy_verifies(&lab, &leaving),
        "dkimpy refused the large message"
    );
}

#[test]
fn dmarc_follows_alignment_and_the_published_policy() {
    let lab = lab();
    // No signature, MAIL FROM in another domain than From: unaligned, policy quarantine.
    let stored = send(
        &lab,
        OUTSIDE,
        "alice@good.test",
        &plain_message("boss@quarantine.test", "hi"),
    );
    let results = our_results(&stored);
    assert!(results.contains("dmarc=fail"), "{results}");
    assert!(results.contains("policy.dmarc=quarantine"), "{results}");
    // Aligned SPF alone passes DMARC.
    let stored = send(
        &lab,
        OUTSIDE,
        "alice@good.test",
        &plain_message("alice@good.test", "hi"),
    );
    assert!(our_results(&stored).contains("dmarc=pass"));
    // No DMARC record: none.
    let stored = send(
        &lab,
        OUTSIDE,
        "alice@soft.test",
        &plain_message("alice@soft.test", "hi"),
    );
    assert!(our_results(&stored).contains("dmarc=none"));
}

#[test]
fn a_forged_authentication_results_in_our_name_is_removed_and_others_stay() {
    let lab = lab();
    let forged = format!(
        "Authentication-Results: relay.example.test; dkim=pass header.d=good.test\r\n\
         Authentication-Results: (upstream) other.example; spf=pass\r\n{}",
        plain_message("alice@bad.test", "forged")
    );
    let stored = send(&lab, OUTSIDE, "alice@bad.test", &forged);
    assert_eq!(
        stored
            .matches("Authentication-Results: relay.example.test")
            .count(),
        1,
        "{stored}"
    );
    assert!(!our_results(&stored).contains("dkim=pass"), "{stored}");
    assert!(stored.contains("Authentication-Results: (upstream) other.example; spf=pass"));
}

#[test]
fn dkim_check_says_whether_the_published_record_matches_the_key() {
    let lab = lab();
    let check = |selector: &str, key: Option<&Path>| {
        let mut command = Command::new(binary());
        command
            .args(["dkim", "check", "-c"])
            .arg(lab.gateway.config_path())
            .args(["--domain", "good.test", "--selector", selector]);
        if let Some(key) = key {
            command.arg("--key").arg(key);
        }
        let output = command.output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (ok, out) = check("s-rsa", None);
    assert!(ok, "{out}");
    assert!(out.contains("matches"), "{out}");
    // The Ed25519 key is not what s-rsa publishes.
    let (ok, out) = check(
        "s-rsa",
        Some(&lab._keys.path().join("good.test-s-ed25519.pem")),
    );
    assert!(!ok, "{out}");
    let (ok, out) = check(
        "s-missing",
        Some(&lab._keys.path().join("good.test-s-rsa.pem")),
    );
    assert!(!ok && out.contains("no TXT record"), "{out}");
}

#[test]
fn the_dmarc_policy_plugin_applies_what_the_domain_publishes() {
    let lab = lab_with(vec![PluginEntry::new("dmarc", "dmarc_policy.wasm")]);
    let attempt = |sender: &str, from: &str| {
        let local: IpAddr = OUTSIDE.parse().unwrap();
        let mut client = SmtpClient::connect_from(local, lab.gateway.addr());
        client.command("EHLO client.good.test").expect_code(250);
        client.send_mail(
            sender,
            &["user@example.test"],
            &plain_message(from, "policy"),
        )
    };
    // good.test publishes p=reject: an unaligned, unsigned message is refused.
    let refused = attempt("x@bad.test", "ceo@good.test");
    refused.expect(550, "5.7.1");
    assert!(refused.text().contains("DMARC policy"), "{refused:?}");
    // quarantine.test publishes p=quarantine: accepted into quarantine.
    let quarantined = attempt("x@bad.test", "boss@quarantine.test");
    let id = quarantined.queue_id().expect("accepted");
    let envelope = lab.gateway.spool_envelope(&id);
    assert!(
        envelope["quarantine"]
            .as_str()
            .is_some_and(|q| q.contains("DMARC policy of quarantine.test")),
        "{envelope}"
    );
    assert_eq!(envelope["tags"]["dmarc"], "fail");
    // Aligned SPF: DMARC passes and the message goes through, tagged.
    let passed = attempt("alice@good.test", "alice@good.test");
    let id = passed.queue_id().expect("accepted");
    let envelope = lab.gateway.spool_envelope(&id);
    assert!(envelope["quarantine"].is_null(), "{envelope}");
    assert_eq!(envelope["tags"]["dmarc"], "pass");
}

/// CPython's email test messages (Debian's `libpython3.11-testsuite`, which scripts/setup
/// installs): real-world structure, encodings and oddities.
const CORPUS: &str = "/usr/lib/python3.11/test/test_email/data";

#[test]
fn every_message_of_a_real_world_corpus_is_signed_and_then_verifies() {
    let lab = lab();
    let mut files: Vec<PathBuf> = std::fs::read_dir(CORPUS)
        .unwrap_or_else(|e| {
            panic!("{CORPUS}: {e} (scripts/setup installs libpython3.11-testsuite)")
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("msg_"))
        })
        .collect();
    files.sort();
    assert!(files.len() >= 40, "{} messages in {CORPUS}", files.len());
    let mut skipped = 0;
    for file in &files {
        let raw = String::from_utf8_lossy(&std::fs::read(file).unwrap()).replace("\r\n", "\n");
        // The message as it is, but from one of our signing domains, with CRLF line ends.
        let (header, body) = raw.split_once("\n\n").unwrap_or((raw.as_str(), ""));
        let mut lines: Vec<&str> = Vec::new();
        let mut in_from = false;
        for line in header.lines() {
            let continuation = line.starts_with([' ', '\t']);
            if !continuation {
                in_from =
                    line.to_ascii_lowercase().starts_with("from:") || line.starts_with("From ");
            }
            if !in_from {
                lines.push(line);
            }
        }
        let message = format!(
            "From: corpus@good.test\r\n{}\r\n\r\n{}",
            lines.join("\r\n"),
            body.replace('\n', "\r\n")
        );
        let message = message.replace("\r\n\r\n\r\n\r\n", "\r\n\r\n");
        let signed = send(&lab, "127.0.0.1", "corpus@good.test", &message);
        // A few corpus files have no header block at all (their first line is text): the
        // gateway takes and verifies them without harm, but what a verifier makes of such a
        // header differs between implementations, so signatures are compared only on
        // messages whose header lines are all fields.
        let well_formed = lines.iter().all(|l| {
            l.starts_with([' ', '\t'])
                || l.split_once(':')
                    .is_some_and(|(n, _)| !n.is_empty() && !n.contains(' '))
        });
        if !well_formed {
            skipped += 1;
            continue;
        }
        let leaving = without_our_fields(&signed);
        assert_eq!(
            leaving.matches("DKIM-Signature:").count(),
            2,
            "{}: not signed",
            file.display()
        );
        assert!(
            dkimpy_verifies(&lab, &leaving),
            "{}: dkimpy refused",
            file.display()
        );
        let received = send(&lab, OUTSIDE, "corpus@good.test", &leaving);
        let results = our_results(&received);
        assert_eq!(
            results.matches("dkim=pass").count(),
            2,
            "{}: {results}",
            file.display()
        );
    }
    assert!(
        skipped <= 5,
        "{skipped} corpus messages had no proper header"
    );
}

/// The forwarder's ARC seal over `message` (dkimpy's `arc_sign`), which it makes after
/// recording its own verification in an `Authentication-Results: forwarder.test` field.
fn arc_seal(lab: &Lab, message: &str) -> String {
    let key = lab._keys.path().join("forwarder.test-arc.pem");
    let script = r#"
import sys, dkim
message = sys.stdin.buffer.read()
key = open(sys.argv[1], "rb").read()
seal = dkim.arc_sign(message, b"arc", b"forwarder.test", key, b"forwarder.test")
sys.stdout.buffer.write(b"".join(seal) + message)
"#;
    python(script, &[key.to_str().expect("UTF-8 path")], message)
}

#[test]
fn an_arc_chain_sealed_by_a_trusted_forwarder_overrides_a_dmarc_failure() {
    let trusting = lab_with(vec![
        PluginEntry::new("dmarc", "dmarc_policy.wasm")
            .config(r#"trusted_arc_sealers = ["forwarder.test"]"#),
    ]);
    // Signed by good.test, then changed by the list (a footer): DKIM fails, DMARC fails.
    let signed = send(
        &trusting,
        "127.0.0.1",
        "alice@good.test",
        &plain_message("alice@good.test", "to the list"),
    );
    let forwarded =
        without_our_fields(&signed).replace("to the list", "to the list\r\n-- \r\nthe list footer");
    let forwarded = format!(
        "Authentication-Results: forwarder.test; dkim=pass header.d=good.test\r\n{forwarded}"
    );
    let sealed = arc_seal(&trusting, &forwarded);
    assert!(sealed.starts_with("ARC-Seal:"), "{sealed}");

    // The list sends it on from its own address: SPF is not good.test's either. The
    // trusting gateway lets it through, tagged with why.
    let local: IpAddr = OUTSIDE.parse().unwrap();
    let mut client = SmtpClient::connect_from(local, trusting.gateway.addr());
    client.command("EHLO list.bad.test").expect_code(250);
    let reply = client.send_mail("list@bad.test", &["user@example.test"], &sealed);
    let id = reply.queue_id().expect("accepted");
    let received = String::from_utf8(trusting.gateway.spool_show(&id)).unwrap();
    let results = our_results(&received);
    assert!(results.contains("arc=pass"), "{results}");
    assert!(results.contains("dmarc=fail"), "{results}");
    assert!(
        received.contains("ARC-Seal:"),
        "the seal is kept for the next hop"
    );
    let envelope = trusting.gateway.spool_envelope(&id);
    assert_eq!(envelope["tags"]["dmarc"], "fail");
    assert!(
        envelope["tags"]["dmarc-policy"]
            .as_str()
            .is_some_and(|t| t.contains("ARC sealed by forwarder.test")),
        "{envelope}"
    );

    // Without trust in the sealer, good.test's p=reject applies.
    let wary = lab_with(vec![PluginEntry::new("dmarc", "dmarc_policy.wasm")]);
    let mut client = SmtpClient::connect_from(local, wary.gateway.addr());
    client.command("EHLO list.bad.test").expect_code(250);
    client
        .send_mail("list@bad.test", &["user@example.test"], &sealed)
        .expect(550, "5.7.1");
}

#[test]
fn tidegate_seals_what_it_verified_and_dkimpy_validates_the_chain() {
    let lab = lab_sealing(Vec::new(), true);
    // A message arrives from outside; the gateway verifies it and seals what it found.
    let received = send(
        &lab,
        OUTSIDE,
        "alice@good.test",
        &plain_message("alice@good.test", "sealed"),
    );
    assert!(received.starts_with("ARC-Seal: i=1;"), "{received}");
    assert!(received.contains("cv=none"), "{received}");
    assert!(received.contains("ARC-Authentication-Results: i=1; relay.example.test"));
    // dkimpy validates the chain with the published key.
    let script = r#"
import sys, dkim
record = sys.argv[1].encode()
def dns(name, timeout=5):
    return record if name.rstrip(b".") == b"arc._domainkey.forwarder.test" else b""
cv, results, comment = dkim.arc_verify(sys.stdin.buffer.read(), dnsfunc=dns)
print(cv.decode(), comment)
"#;
    let verdict = python(script, &[&lab.arc_record], &received);
    assert!(verdict.starts_with("pass"), "dkimpy: {verdict}\n{received}");

    // The next hop (this same gateway again) finds the chain intact and extends it.
    let again = send(
        &lab,
        OUTSIDE,
        "alice@good.test",
        &without_our_fields(&received),
    );
    assert!(our_results(&again).contains("arc=pass"), "{again}");
    assert!(
        again.starts_with("ARC-Seal: i=2;") && again.contains("cv=pass"),
        "{again}"
    );
}

#[test]
fn a_forged_authentication_results_is_removed_even_where_nothing_is_verified() {
    // The harness's listener has `verify = []`, as a submission listener would.
    let gateway = Gateway::start_with(&GatewayConfig::default());
    let mut client = SmtpClient::ehlo(gateway.addr());
    let forged = format!(
        "Authentication-Results: Relay.Example.Test (fake); dmarc=pass\r\n{}",
        plain_message("alice@good.test", "no checks here")
    );
    let reply = client.send_mail("alice@good.test", &["user@example.test"], &forged);
    let id = reply.queue_id().expect("accepted");
    let stored = String::from_utf8(gateway.spool_show(&id)).unwrap();
    assert!(!stored.contains("dmarc=pass"), "{stored}");
    assert!(stored.contains("no checks here"));
}
