//! `tidegate gen-cert` writes a PEM certificate for the names given and its private key
//! (mode 0600), refuses to overwrite either file without `--force`, and explains itself
//! with `--help`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use tidegate_e2e::binary;

fn gen_cert(dir: &Path, extra: &[&str]) -> Output {
    Command::new(binary())
        .current_dir(dir)
        .args([
            "gen-cert",
            "--name",
            "relay.example.test",
            "--name",
            "mx.example.test",
            "--cert",
            "cert.pem",
            "--key",
            "private/key.pem",
        ])
        .args(extra)
        .output()
        .expect("run tidegate gen-cert")
}

/// The DER bytes of the one PEM block of `label` in `text`, checking its armour.
fn pem_block(text: &str, label: &str) -> Vec<u8> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&begin.as_str()), "{text}");
    assert_eq!(lines.last(), Some(&end.as_str()), "{text}");
    let body: String = lines[1..lines.len() - 1].concat();
    decode_base64(&body).unwrap_or_else(|| panic!("not base64: {body}"))
}

/// A strict standard base64 decoder, so the test needs no extra dependency.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let bytes = text.trim_end_matches('=').as_bytes();
    if !text.len().is_multiple_of(4) || text.len() - bytes.len() > 2 {
        return None;
    }
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in bytes {
        acc = (acc << 6) | u32::from(value(c)?);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[test]
fn gen_cert_writes_a_certificate_and_a_private_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("private")).unwrap();
    let output = gen_cert(dir.path(), &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("relay.example.test, mx.example.test")
            && stdout.contains("cert.pem")
            && stdout.contains("private/key.pem"),
        "{stdout}"
    );

    let cert_text = std::fs::read_to_string(dir.path().join("cert.pem")).unwrap();
    let der = pem_block(&cert_text, "CERTIFICATE");
    // A DER SEQUENCE with both names in its subjectAltName (IA5Strings, stored verbatim).
    assert_eq!(der[0], 0x30);
    let contains = |needle: &[u8]| der.windows(needle.len()).any(|w| w == needle);
    assert!(contains(b"relay.example.test") && contains(b"mx.example.test"));

    let key_path = dir.path().join("private/key.pem");
    let key_der = pem_block(&std::fs::read_to_string(&key_path).unwrap(), "PRIVATE KEY");
    assert_eq!(key_der[0], 0x30);
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key is readable by its owner only");
}

#[test]
fn gen_cert_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("private")).unwrap();
    assert!(gen_cert(dir.path(), &[]).status.success());
    let cert = std::fs::read(dir.path().join("cert.pem")).unwrap();
    let key = std::fs::read(dir.path().join("private/key.pem")).unwrap();

    let again = gen_cert(dir.path(), &[]);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("cert.pem exists") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(dir.path().join("cert.pem")).unwrap(), cert);
    assert_eq!(
        std::fs::read(dir.path().join("private/key.pem")).unwrap(),
        key
    );

    // Only the key left over still blocks both, so no mismatched pair is ever written.
    std::fs::remove_file(dir.path().join("cert.pem")).unwrap();
    let again = gen_cert(dir.path(), &[]);
    assert!(!again.status.success());
    assert!(!dir.path().join("cert.pem").exists());

    let forced = gen_cert(dir.path(), &["--force"]);
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    assert_ne!(
        std::fs::read(dir.path().join("private/key.pem")).unwrap(),
        key
    );
}

#[test]
fn gen_cert_explains_itself_and_checks_its_arguments() {
    let help = Command::new(binary())
        .args(["gen-cert", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for option in ["--name", "--cert", "--key", "--force"] {
        assert!(text.contains(option), "{text}");
    }

    let dir = tempfile::tempdir().unwrap();
    // A name is required, and must be a name.
    for args in [
        &["gen-cert", "--cert", "c.pem", "--key", "k.pem"][..],
        &[
            "gen-cert",
            "--name",
            "not a name",
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
        ][..],
    ] {
        let output = Command::new(binary())
            .current_dir(dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?}");
        assert!(!output.stderr.is_empty());
    }
    assert!(!dir.path().join("c.pem").exists() && !dir.path().join("k.pem").exists());
}
