//! The example unit `examples/systemd/tidegate.service` passes `systemd-analyze verify`,
//! pointed at the binary under test (verify checks that the executable exists), and a
//! broken copy of it does not: `systemd-analyze` only warns about an unknown directive
//! or a bad value (and still exits 0), so every line it prints about the unit counts as
//! a failure. Skipped, saying so, where systemd-analyze is not installed.

use std::path::{Path, PathBuf};
use std::process::Command;

const INSTALLED_BINARY: &str = "/usr/local/bin/tidegate";

fn unit_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/systemd/tidegate.service");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What `systemd-analyze verify` says about the unit file `text`: whether it exited 0,
/// and the lines of its output that are about this unit.
fn verify(dir: &Path, name: &str, text: &str) -> (bool, Vec<String>) {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).expect("unit directory");
    let unit = dir.join("tidegate.service");
    std::fs::write(&unit, text).expect("write the unit");
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("run systemd-analyze");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let about_unit = said
        .lines()
        .filter(|l| l.contains("tidegate.service"))
        .map(str::to_owned)
        .collect();
    (output.status.success(), about_unit)
}

fn systemd_analyze_installed() -> bool {
    Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_example_unit_verifies_and_a_broken_one_does_not() {
    let text = unit_text();
    // What the unit promises, whatever systemd-analyze thinks of it.
    assert!(
        !text
            .lines()
            .any(|l| l.trim_start().starts_with("MemoryDenyWriteExecute")),
        "wasmtime's JIT needs writable-then-executable memory"
    );
    // Tidegate does not speak sd_notify (yet).
    assert!(text.lines().any(|l| l == "Type=simple"), "Type=simple");
    let stop_timeout: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim().parse().ok())
        .expect("TimeoutStopSec= in seconds");
    // The default shutdown_grace (30 s) and the event sinks' last 5 s must fit.
    assert!(stop_timeout > 35, "TimeoutStopSec={stop_timeout}");

    if !systemd_analyze_installed() {
        eprintln!(
            "skipping the systemd-analyze checks: systemd-analyze is not installed (Debian package `systemd`)"
        );
        return;
    }
    let binary: PathBuf = tidegate_e2e::binary();
    let binary = binary.to_str().expect("a UTF-8 binary path");
    assert!(
        !binary.contains(char::is_whitespace),
        "{binary}: systemd would split it"
    );
    let exec_start = format!("ExecStart={INSTALLED_BINARY} serve");
    assert!(
        text.contains(&exec_start),
        "the unit runs {INSTALLED_BINARY} serve"
    );
    let testable = text.replace(&exec_start, &format!("ExecStart={binary} serve"));
    let dir = tempfile::tempdir().expect("temporary directory");

    let (ok, problems) = verify(dir.path(), "good", &testable);
    assert!(
        ok && problems.is_empty(),
        "systemd-analyze verify: exit ok={ok}, {problems:#?}"
    );

    // An unknown directive (a typo) is only warned about: it must still fail the test.
    let typo = testable.replace("[Service]\n", "[Service]\nProtectSystemm=strict\n");
    assert_ne!(typo, testable);
    let (_, problems) = verify(dir.path(), "typo", &typo);
    assert!(
        problems.iter().any(|l| l.contains("ProtectSystemm")),
        "an unknown key went unnoticed: {problems:#?}"
    );
    // So is a value that does not parse.
    let bad_value = testable.replace("Type=simple", "Type=simpel");
    assert_ne!(bad_value, testable);
    let (_, problems) = verify(dir.path(), "bad-value", &bad_value);
    assert!(
        problems.iter().any(|l| l.contains("simpel")),
        "a bad value went unnoticed: {problems:#?}"
    );
    // A binary that is not there is an error.
    let missing = text.replace(
        &exec_start,
        &format!("ExecStart={}/nowhere/tidegate serve", dir.path().display()),
    );
    let (ok, problems) = verify(dir.path(), "missing", &missing);
    assert!(
        !ok && !problems.is_empty(),
        "a missing executable went unnoticed: ok={ok}, {problems:#?}"
    );
}
