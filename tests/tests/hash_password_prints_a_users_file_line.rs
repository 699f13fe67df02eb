//! `tidegate hash-password` reads a password on standard input and prints an argon2id PHC
//! string (or, with `--user`, the whole users-file line) that verifies that password.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use tidegate_e2e::binary;

/// Runs `tidegate hash-password ARGS` with `input` on standard input.
fn hash_password(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(binary())
        .arg("hash-password")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tidegate");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input)
        .expect("write the password");
    child.wait_with_output().expect("wait for tidegate")
}

fn verifies(hash: &str, password: &[u8]) -> bool {
    let parsed = PasswordHash::new(hash).expect("a PHC string");
    Argon2::default().verify_password(password, &parsed).is_ok()
}

fn stdout_line(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}, stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout.clone()).expect("UTF-8 output");
    let line = stdout
        .strip_suffix('\n')
        .expect("one line ending in a newline");
    assert!(!line.contains('\n'), "exactly one line: {stdout:?}");
    line.to_owned()
}

#[test]
fn with_user_it_prints_name_colon_hash() {
    let output = hash_password(&["--user", "alice@example.org"], b"correct horse\n");
    let line = stdout_line(&output);
    let hash = line
        .strip_prefix("alice@example.org:")
        .unwrap_or_else(|| panic!("no `NAME:` prefix: {line}"));
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    assert!(verifies(hash, b"correct horse"), "{hash}");
    assert!(!verifies(hash, b"correct horse\n"));
    assert!(!verifies(hash, b"wrong"));
}

#[test]
fn without_user_it_prints_the_hash_alone() {
    // A CRLF line ending is stripped too; inner spaces are kept.
    let output = hash_password(&[], b" spaced out \r\n");
    let hash = stdout_line(&output);
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(verifies(&hash, b" spaced out "), "{hash}");
    // A password without a final newline is taken as it is, and each hash is salted anew.
    let again = stdout_line(&hash_password(&[], b" spaced out "));
    assert_ne!(hash, again);
    assert!(verifies(&again, b" spaced out "));
}

#[test]
fn an_empty_password_or_a_bad_user_name_is_refused() {
    for (args, input) in [
        (&[][..], &b"\n"[..]),
        (&[][..], b""),
        (&["--user", "bob"][..], b"\r\n"),
        (&["--user", "a:b"][..], b"password\n"),
    ] {
        let output = hash_password(args, input);
        assert_eq!(output.status.code(), Some(1), "{args:?} {input:?}");
        assert!(output.stdout.is_empty(), "{args:?} {input:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.starts_with("tidegate: "), "{stderr}");
    }
}

#[test]
fn help_describes_the_command() {
    let output = Command::new(binary())
        .args(["hash-password", "--help"])
        .output()
        .expect("run tidegate");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("--user <NAME>"), "{help}");
    assert!(help.contains("standard input"), "{help}");
}
