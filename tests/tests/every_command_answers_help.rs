//! `--help` works on every command and subcommand: exit status 0 and a usage line naming
//! the command, with no configuration file needed.

use std::process::Command;

use tidegate_e2e::binary;

#[test]
fn help_works_on_every_command() {
    for (args, usage, mentions) in [
        (
            &["--help"][..],
            "Usage: tidegate <COMMAND>",
            &["serve", "check", "spool"][..],
        ),
        (&["serve", "--help"], "Usage: tidegate serve", &["--config"]),
        (&["check", "--help"], "Usage: tidegate check", &["--config"]),
        (&["spool", "--help"], "Usage: tidegate spool", &["list"]),
        (
            &["spool", "list", "--help"],
            "Usage: tidegate spool list",
            &["--config"],
        ),
        (&["help", "check"], "Usage: tidegate check", &["--config"]),
        (
            &["plugin", "--help"],
            "Usage: tidegate plugin",
            &["new", "check"],
        ),
        (
            &["plugin", "new", "--help"],
            "Usage: tidegate plugin new",
            &["--dir", "--sdk", "--sdk-git"],
        ),
        (
            &["plugin", "check", "--help"],
            "Usage: tidegate plugin check",
            &["--config", "--json"],
        ),
    ] {
        let output = Command::new(binary())
            .args(args)
            .output()
            .expect("run tidegate");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{args:?}: {} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains(usage), "{args:?}: {stdout}");
        for word in mentions {
            assert!(
                stdout.contains(word),
                "{args:?} does not mention {word}: {stdout}"
            );
        }
    }
}

#[test]
fn a_command_without_its_configuration_is_a_usage_error() {
    let output = Command::new(binary()).arg("serve").output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--config"), "{stderr}");
    assert!(stderr.contains("Usage:"), "{stderr}");
}
