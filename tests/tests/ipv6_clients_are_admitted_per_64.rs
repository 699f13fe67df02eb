//! IPv6 admission counts per /64: a host usually owns a whole /64 and can take a fresh
//! address for every connection, so `max_connections_per_ip` holds for the /64, while a
//! client in another /64 is counted apart. Loopback has one IPv6 address, so the gateway
//! and its clients run in a private network namespace (`unshare --net`, as root) whose
//! `lo` gets three addresses: two in one /64, one in another.

use std::process::Command;

use tidegate_e2e::binary;

const CLIENTS: &str = r#"
import socket, sys, time
gateway = ("fd00::1", 2525)
def greet(source):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.settimeout(10)
    s.bind((source, 0))
    s.connect(gateway)
    return s, s.recv(512).decode(errors="replace").split(" ")[0]
for _ in range(100):
    try:
        socket.create_connection(gateway, timeout=1).close()
        break
    except OSError:
        time.sleep(0.05)
time.sleep(0.2)
first, a = greet("fd00::1")
second, b = greet("fd00::2")
other, c = greet("fd00:0:0:1::3")
print(a, b, c)
"#;

#[test]
fn a_second_address_in_the_same_64_counts_as_the_same_client() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: a network namespace needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tidegate.toml");
    std::fs::write(
        &config,
        r#"hostname = "relay.example.test"

[[listener]]
name = "mx"
address = "[fd00::1]:2525"
protocol = "smtp"
verify = []

[spool]
path = "spool"

[relay]
accept_domains = ["example.test"]
relay_networks = []

[smtp]
reverse_dns = false

[limits]
max_connections_per_ip = 1

[queue]
hold = true
"#,
    )
    .unwrap();
    let script = dir.path().join("clients.py");
    std::fs::write(&script, CLIENTS).unwrap();
    let shell = format!(
        "set -e; ip link set lo up; \
         ip -6 addr add fd00::1/64 dev lo nodad; ip -6 addr add fd00::2/64 dev lo nodad; \
         ip -6 addr add fd00:0:0:1::3/64 dev lo nodad; \
         {bin} serve -c {config} 2>{log} & gw=$!; \
         python3 {script}; kill $gw; wait $gw || true",
        bin = binary().display(),
        config = config.display(),
        log = dir.path().join("gateway.log").display(),
        script = script.display(),
    );
    let output = Command::new("unshare")
        .args(["--net", "sh", "-c", &shell])
        .output()
        .expect("run unshare");
    let log = std::fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default();
    assert!(
        output.status.success(),
        "{}\n{}\n{log}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // The first client is greeted; a second address of its /64 is turned away as the
    // same client; a client of another /64 is greeted.
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "220 421 220",
        "{log}"
    );
}
