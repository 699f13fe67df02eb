//! The AUTH failure limit holds across parallel sessions: a client that opens many
//! sessions and sends one wrong password on each at the same moment gets no more guesses
//! checked than `max_failures`, since an attempt holds its place under the limit while it
//! is being verified; the others are refused with 454 4.7.0 before any check, and the
//! client stays blocked, even with the right password.

use std::io::Write;
use std::process::{Command, Stdio};

use tidegate_e2e::{Gateway, SmtpClient, binary};

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

/// `AUTH PLAIN` initial response: base64 of NUL user NUL password.
fn plain(user: &str, password: &str) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let raw = format!("\0{user}\0{password}");
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
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn parallel_wrong_passwords_get_no_more_checks_than_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("users.txt"),
        users_line("alice@example.test", "right password"),
    )
    .unwrap();
    let text = format!(
        r#"hostname = "relay.example.test"
[[listener]]
name = "mx"
address = "127.0.0.1:0"
protocol = "smtp"
[spool]
path = "spool"
[relay]
accept_domains = ["example.test"]
[queue]
hold = true
[auth]
users_file = "{}/users.txt"
allow_plaintext = true
max_failures = 3
failure_window = "5m"
"#,
        dir.path().display()
    );
    let gateway = Gateway::start_with_text(&text, 1);
    let mut sessions: Vec<SmtpClient> = (0..12)
        .map(|_| {
            let mut client = SmtpClient::connect(gateway.addr());
            client.command("EHLO guesser.example.org").expect_code(250);
            client
        })
        .collect();
    // Every guess goes out before any reply is read: all of them arrive while the first
    // ones are still being verified (argon2 takes milliseconds).
    for (n, client) in sessions.iter_mut().enumerate() {
        client.send(
            format!(
                "AUTH PLAIN {}\r\n",
                plain("alice@example.test", &format!("guess {n}"))
            )
            .as_bytes(),
        );
    }
    let codes: Vec<u16> = sessions.iter_mut().map(|c| c.read_reply().code).collect();
    let checked = codes.iter().filter(|&&c| c == 535).count();
    let refused = codes.iter().filter(|&&c| c == 454).count();
    assert_eq!(checked + refused, codes.len(), "{codes:?}");
    assert!(
        checked <= 3,
        "{checked} guesses checked with max_failures = 3: {codes:?}"
    );
    assert!(checked >= 1, "{codes:?}");

    // Blocked now: even the right password is refused before it is checked.
    let mut client = SmtpClient::connect(gateway.addr());
    client.command("EHLO guesser.example.org").expect_code(250);
    client
        .command(&format!(
            "AUTH PLAIN {}",
            plain("alice@example.test", "right password")
        ))
        .expect(454, "4.7.0");
}
