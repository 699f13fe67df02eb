//! A reload is all or nothing: when one plugin of the new configuration cannot be loaded
//! (here, one whose `init` refuses), none of the configuration's plugin changes apply,
//! the running set stays, the failure is logged and counted, and `tidegate check` says
//! which plugin and why. Once the configuration is fixed, the next reload applies it all.

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use tidegate_e2e::{Gateway, GatewayConfig, PluginEntry, SmtpClient, binary, plugin_dist};

fn victim_reply(gateway: &Gateway) -> u16 {
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<a@example.org>")
        .expect(250, "2.1.0");
    client.command("RCPT TO:<victim@example.test>").code
}

fn check(gateway: &Gateway) -> (bool, String) {
    let output = Command::new(binary())
        .args(["check", "-c"])
        .arg(gateway.config_path())
        .output()
        .expect("tidegate check runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_broken_plugin_in_a_reload_keeps_the_whole_running_set() {
    let config = GatewayConfig {
        plugins: vec![
            PluginEntry::new("policy", "recipient_policy.wasm")
                .config(r#"deny = ["victim@example.test"]"#),
        ],
        top: vec![("admin".into(), r#"{ address = "127.0.0.1:0" }"#.into())],
        ..GatewayConfig::default()
    };
    let gateway = Gateway::start_with(&config);
    assert_eq!(victim_reply(&gateway), 550);

    // One valid change (the victim is no longer denied) and one plugin that cannot start.
    let text = std::fs::read_to_string(gateway.config_path()).unwrap();
    let broken = format!(
        "{}\n[[plugin]]\nname = \"broken\"\npath = {:?}\n[plugin.config]\nmode = \"refuse-load\"\n",
        text.replace(r#"deny = ["victim@example.test"]"#, "deny = []"),
        plugin_dist().join("test_plugin.wasm")
    );
    std::fs::write(gateway.config_path(), &broken).unwrap();
    gateway.wait_for_log("plugin reload refused, keeping every running plugin");
    let log = gateway.log();
    assert!(
        log.contains("plugin `broken`")
            && log.contains("init refused: configured to refuse loading"),
        "{log}"
    );
    // The valid change did not apply either.
    assert_eq!(victim_reply(&gateway), 550);
    let metrics = gateway.admin_get("/metrics").1;
    assert!(
        metrics.contains("tidegate_plugin_reload_failures_total 1"),
        "{metrics}"
    );

    let (ok, stderr) = check(&gateway);
    assert!(!ok, "check passed a configuration the gateway refuses");
    assert!(
        stderr.contains("plugin `broken`") && stderr.contains("init refused"),
        "{stderr}"
    );

    // Fixed: the whole configuration applies.
    std::fs::write(
        gateway.config_path(),
        broken.replace("mode = \"refuse-load\"", "mode = \"\""),
    )
    .unwrap();
    let started = Instant::now();
    while victim_reply(&gateway) != 250 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the fixed configuration never applied"
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(check(&gateway).0);
}
