//! A plugin author's whole journey, outside this repository: `tidegate plugin new` writes a
//! crate into a temporary directory, its tests pass with `cargo test` there, it builds into
//! a component, `tidegate plugin check` says it loads (and refuses a configuration its
//! `init` refuses), a gateway runs it, and a changed, rebuilt component copied over the
//! configured file is what the next SMTP session sees.
//!
//! Cargo runs `--offline` (the SDK by path, serde from the local registry cache), with a
//! target directory shared between runs so only the new crate itself is compiled again.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tidegate_e2e::{Gateway, GatewayConfig, PluginEntry, SmtpClient, binary};

fn cargo(dir: &Path, target: &Path, args: &[&str]) -> Output {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(args)
        .arg("--offline")
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .output()
        .expect("run cargo");
    assert!(
        output.status.success(),
        "cargo {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn tidegate(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .output()
        .expect("run tidegate")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn scaffold_test_build_check_serve_change_and_reload() {
    let temp = tempfile::tempdir().unwrap();
    let crate_dir = temp.path().join("e2e-filter");
    let target: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugin-new-e2e");

    // 1. The crate, with the SDK this binary was built from.
    let made = tidegate(&[
        "plugin",
        "new",
        "e2e-filter",
        "--dir",
        crate_dir.to_str().unwrap(),
    ]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    assert!(text(&made.stdout).contains("cargo build --release --target wasm32-wasip2"));
    let again = tidegate(&[
        "plugin",
        "new",
        "e2e-filter",
        "--dir",
        crate_dir.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("not empty"),
        "{}",
        text(&again.stderr)
    );

    // 2. Its tests, natively.
    let tested = cargo(&crate_dir, &target, &["test"]);
    let tested = text(&tested.stdout);
    assert!(tested.contains("test result: ok. 5 passed"), "{tested}");

    // 3. The component.
    let build = ["build", "--release", "--target", "wasm32-wasip2"];
    cargo(&crate_dir, &target, &build);
    let built = target.join("wasm32-wasip2/release/e2e_filter.wasm");
    assert!(built.exists(), "{} missing", built.display());

    // 4. plugin check: what it declares and costs; what the gateway would refuse.
    let config_json = temp.path().join("config.json");
    std::fs::write(&config_json, r#"{"refuse_local_parts": ["noreply"]}"#).unwrap();
    let built_arg = built.to_str().unwrap();
    let checked = tidegate(&[
        "plugin",
        "check",
        built_arg,
        "--config",
        config_json.to_str().unwrap(),
    ]);
    let report = text(&checked.stdout);
    assert!(
        checked.status.success(),
        "{report}{}",
        text(&checked.stderr)
    );
    for line in [
        "contract     tidegate:plugin@0.2.0",
        "hooks        on-rcpt-to, on-data",
        "compile      ",
        "instantiate  ",
        "memory       ",
    ] {
        assert!(report.contains(line), "no {line:?} in:\n{report}");
    }
    std::fs::write(&config_json, r#"{"refuse": []}"#).unwrap();
    let refused = tidegate(&[
        "plugin",
        "check",
        built_arg,
        "--config",
        config_json.to_str().unwrap(),
    ]);
    let why = text(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        why.contains("the gateway would refuse it") && why.contains("init refused"),
        "{why}"
    );
    let not_a_component = tidegate(&[
        "plugin",
        "check",
        crate_dir.join("Cargo.toml").to_str().unwrap(),
    ]);
    assert!(!not_a_component.status.success());
    assert!(
        text(&not_a_component.stderr).contains("the gateway would refuse it"),
        "{}",
        text(&not_a_component.stderr)
    );

    // 5. A gateway runs it.
    let slot = temp.path().join("filter.wasm");
    std::fs::copy(&built, &slot).unwrap();
    let gateway = Gateway::start_with(&GatewayConfig {
        plugins: vec![
            PluginEntry::new("filter", slot.to_str().unwrap())
                .config(r#"refuse_local_parts = ["noreply"]"#),
        ],
        ..GatewayConfig::default()
    });
    let refusal = |gateway: &Gateway| {
        let mut client = SmtpClient::ehlo(gateway.addr());
        client
            .command("MAIL FROM:<a@example.org>")
            .expect(250, "2.1.0");
        let reply = client.command("RCPT TO:<noreply@example.test>");
        client.command("QUIT");
        reply
    };
    let reply = refusal(&gateway);
    reply.expect(550, "5.1.1");
    assert!(
        reply.text().contains("This address does not take mail"),
        "{reply:?}"
    );
    let mut client = SmtpClient::ehlo(gateway.addr());
    let queued = client.send_mail(
        "a@example.org",
        &["alice@example.test"],
        "Subject: hi\r\n\r\nhello\r\n",
    );
    queued.expect(250, "2.0.0");
    let shown = text(&gateway.spool_show(&queued.queue_id().unwrap()));
    assert!(
        shown.starts_with("X-E2e-Filter: recipients-seen=1 size="),
        "{shown}"
    );

    // 6. Change the code, rebuild, copy the file over: the next sessions see it.
    let lib = crate_dir.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    assert!(source.contains("This address does not take mail"));
    std::fs::write(
        &lib,
        source.replace(
            "This address does not take mail",
            "Refused by the rebuilt plugin",
        ),
    )
    .unwrap();
    cargo(&crate_dir, &target, &build);
    std::fs::copy(&built, &slot).unwrap();
    let copied = Instant::now();
    loop {
        let reply = refusal(&gateway);
        reply.expect(550, "5.1.1");
        if reply.text().contains("Refused by the rebuilt plugin") {
            break;
        }
        assert!(
            copied.elapsed() < Duration::from_secs(10),
            "the rebuilt plugin was not picked up:\n{}",
            gateway.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "the rebuilt plugin answered {:?} after the copy",
        copied.elapsed()
    );
}
