//! A DNSSEC-signed zone for a test: the zone text is signed with a fresh key by BIND's
//! `dnssec-signzone` and served by `named` on a free loopback port (UDP and TCP),
//! authoritative only, never recursing. The zone's DNSKEY is its own trust anchor (the
//! file [`SignedZone::trust_anchor`] names, for `[dns] dnssec_trust_anchor`). Signatures
//! of chosen records can be broken after signing, to make their answers bogus.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::PATIENCE;

fn bind_tool(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    PathBuf::from(name)
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|e| {
        panic!("cannot run {command:?} ({e}): install bind9 and bind9-utils (scripts/setup)")
    });
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A running `named` serving one signed zone; killed when dropped.
pub struct SignedZone {
    dir: tempfile::TempDir,
    child: Option<Child>,
    addr: std::net::SocketAddr,
    log: Arc<Mutex<String>>,
}

impl SignedZone {
    /// Signs `records` (zone-file lines relative to `origin`, without SOA and NS, which
    /// are added) and serves them. Every RRSIG covering a record whose owner name starts
    /// with one of `break_signatures` (relative names, e.g. `_25._tcp.mx-bogus`) is made
    /// invalid after signing.
    pub fn start(origin: &str, records: &str, break_signatures: &[&str]) -> SignedZone {
        SignedZone::start_with_unsigned(origin, records, break_signatures, &[])
    }

    /// [`start`](SignedZone::start), also serving the unsigned zones `(origin, records)`.
    pub fn start_with_unsigned(
        origin: &str,
        records: &str,
        break_signatures: &[&str],
        unsigned: &[(&str, &str)],
    ) -> SignedZone {
        let origin = origin.trim_end_matches('.');
        let mut dir = tempfile::tempdir().unwrap();
        let keygen = run(Command::new(bind_tool("dnssec-keygen"))
            .current_dir(dir.path())
            .args([
                "-q",
                "-a",
                "ECDSAP256SHA256",
                "-f",
                "KSK",
                "-n",
                "ZONE",
                origin,
            ]));
        let key_name = keygen.trim().to_owned();
        let zone = format!(
            "$TTL 300\n$ORIGIN {origin}.\n@ IN SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 300\n@ IN NS ns.{origin}.\nns IN A 127.0.0.1\n{records}\n$INCLUDE {key_name}.key\n"
        );
        std::fs::write(dir.path().join("zone"), zone).unwrap();
        // One key signs everything (-z): a combined signing key keeps the fixture small.
        run(Command::new(bind_tool("dnssec-signzone"))
            .current_dir(dir.path())
            .args(["-z", "-O", "full", "-o", origin, "-f", "signed", "zone"]));
        let signed = std::fs::read_to_string(dir.path().join("signed")).unwrap();
        let broken: Vec<String> = break_signatures
            .iter()
            .map(|name| format!("{name}.{origin}."))
            .collect();
        let mut tampered = 0;
        let signed: String = signed
            .lines()
            .map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let is_rrsig = fields.get(3) == Some(&"RRSIG");
                if is_rrsig
                    && broken.iter().any(|b| fields[0] == b)
                    && let Some(signature) = fields.last()
                {
                    // Flip the first character of the signature: still base64, no
                    // longer the signature of the data.
                    let mut chars: Vec<char> = signature.chars().collect();
                    chars[0] = if chars[0] == 'A' { 'B' } else { 'A' };
                    tampered += 1;
                    let head = &line[..line.len() - signature.len()];
                    return format!("{head}{}\n", chars.into_iter().collect::<String>());
                }
                format!("{line}\n")
            })
            .collect();
        assert!(
            tampered >= break_signatures.len(),
            "no RRSIG to break for {break_signatures:?}"
        );
        std::fs::write(dir.path().join("signed"), signed).unwrap();
        // The trust anchor: the zone's DNSKEY record (comment lines dropped).
        let key = std::fs::read_to_string(dir.path().join(format!("{key_name}.key"))).unwrap();
        let anchor: String = key
            .lines()
            .filter(|line| !line.starts_with(';') && line.contains("DNSKEY"))
            .map(|line| format!("{line}\n"))
            .collect();
        std::fs::write(dir.path().join("trust-anchor"), anchor).unwrap();
        let mut unsigned_zones = String::new();
        for (i, (zone, records)) in unsigned.iter().enumerate() {
            let zone = zone.trim_end_matches('.');
            let text = format!(
                "$TTL 300\n$ORIGIN {zone}.\n@ IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 300\n@ IN NS ns.{zone}.\nns IN A 127.0.0.1\n{records}\n"
            );
            let file = dir.path().join(format!("unsigned-{i}"));
            std::fs::write(&file, text).unwrap();
            unsigned_zones.push_str(&format!(
                "zone \"{zone}\" {{ type primary; file \"{}\"; }};\n",
                file.display()
            ));
        }

        let mut last_log = String::new();
        for _ in 0..10 {
            let port = crate::free_udp_and_tcp_port();
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let d = dir.path().display();
            let conf = format!(
                "options {{\n  directory \"{d}\";\n  pid-file \"{d}/named.pid\";\n  session-keyfile \"{d}/session.key\";\n  managed-keys-directory \"{d}\";\n  listen-on port {port} {{ 127.0.0.1; }};\n  listen-on-v6 {{ none; }};\n  recursion no;\n  dnssec-validation no;\n  allow-query {{ any; }};\n  notify no;\n}};\ncontrols {{ }};\nzone \"{origin}\" {{ type primary; file \"{d}/signed\"; }};\n{unsigned_zones}"
            );
            std::fs::write(dir.path().join("named.conf"), conf).unwrap();
            let mut child = Command::new(bind_tool("named"))
                .args(["-g", "-4", "-c"])
                .arg(dir.path().join("named.conf"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run named ({e}): install bind9 (scripts/setup)")
                });
            let log = crate::capture_stderr(&mut child, "named");
            let mut server = SignedZone {
                dir,
                child: Some(child),
                addr,
                log,
            };
            let deadline = Instant::now() + PATIENCE;
            while Instant::now() < deadline {
                if let Some(status) = server
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    last_log = format!("named exited with {status}:\n{}", server.log());
                    server.child = None;
                    break;
                }
                if server.log().contains("running") {
                    return server;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if server.child.is_some() {
                panic!("named did not start on {addr}:\n{}", server.log());
            }
            dir = server.take_dir();
        }
        panic!("could not start named: {last_log}");
    }

    fn take_dir(mut self) -> tempfile::TempDir {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let placeholder = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, placeholder)
    }

    /// The address to send queries to.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// The file of the zone's DNSKEY, to trust.
    pub fn trust_anchor(&self) -> PathBuf {
        self.dir.path().join("trust-anchor")
    }

    /// What named logged.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for SignedZone {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
