//! The on-delivery hook sees each outcome: here a plugin counts them, and the counts show
//! in the metrics: one recipient delivered, one bounced, one deferred (and the bounce
//! itself delivered).

use std::time::{Duration, Instant};

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{Gateway, GatewayConfig, PluginEntry, SmtpClient, sample_message};

#[test]
fn delivered_bounced_and_deferred_outcomes_reach_the_plugin() {
    let sink = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default()
            .reject_rcpt("gone@example.test", 550, "5.1.1")
            .tempfail_rcpt("later@example.test"),
    );
    let senders = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let gateway = Gateway::start_with(
        &GatewayConfig {
            top: vec![("admin".into(), r#"{ address = "127.0.0.1:0" }"#.into())],
            plugins: vec![
                PluginEntry::new("watcher", "test_plugin.wasm").config(r#"mode = "pass""#),
            ],
            ..GatewayConfig::default()
        }
        .route("internal", &["example.test"], sink.addr())
        .route("back", &["example.org"], senders.addr()),
    );
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .send_mail(
            "sender@example.org",
            &["ok@example.test", "gone@example.test", "later@example.test"],
            &sample_message("outcomes", "hi"),
        )
        .expect(250, "2.0.0");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = gateway.admin_get("/metrics");
        let has = |name: &str, count: u32| {
            metrics.contains(&format!(
                r#"tidegate_plugin_counter_total{{plugin="watcher",name="{name}"}} {count}"#
            ))
        };
        // Delivered twice: the good recipient, and the bounce on its way back to the sender.
        if has("delivery_delivered", 2) && has("delivery_bounced", 1) && has("delivery_deferred", 1)
        {
            break;
        }
        assert!(Instant::now() < deadline, "outcomes missing:\n{metrics}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
