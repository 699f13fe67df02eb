//! The CPU budget is counted in instructions, not wall-clock time: a healthy plugin that
//! uses a fair share of its budget is never cut off, even while every core is saturated by
//! other work, and a runaway one is still stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Instant;

use tidegate_e2e::{Gateway, GatewayConfig, PluginEntry, SmtpClient};

#[test]
fn a_busy_plugin_keeps_working_while_the_machine_is_saturated() {
    let gateway = Gateway::start_with(&GatewayConfig {
        plugins: vec![
            PluginEntry::new("busy", "test_plugin.wasm")
                .setting("cpu_limit_ms = 100")
                .config(r#"mode = "work""#)
                // About 30 ms of CPU on an idle machine: under this test's load some calls take
                // well over 100 ms of wall-clock time, which a wall-clock deadline would
                // cut off, and uses under half of its instruction budget.
                .config("work = 15000000"),
            PluginEntry::new("runaway", "test_plugin.wasm")
                .setting("cpu_limit_ms = 50")
                .config(r#"mode = "loop""#)
                .config(r#"trigger = "runaway@example.test""#),
        ],
        ..GatewayConfig::default()
    });

    // The time one busy call takes on the idle machine.
    let rcpt_time = |n: usize| {
        let mut client = SmtpClient::ehlo(gateway.addr());
        client
            .command("MAIL FROM:<a@example.org>")
            .expect(250, "2.1.0");
        let started = Instant::now();
        let reply = client.command(&format!("RCPT TO:<user{n}@example.test>"));
        let took = started.elapsed();
        client.command("QUIT");
        (reply, took)
    };
    let idle = (0..3).map(|n| rcpt_time(n).1).min().unwrap();

    // Saturate every core (and then some) with work outside the gateway.
    let stop = Arc::new(AtomicBool::new(false));
    let cores = thread::available_parallelism().map_or(2, |n| n.get());
    let hogs: Vec<_> = (0..cores * 2)
        .map(|_| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            })
        })
        .collect();

    let mut refused = Vec::new();
    let mut slowest = std::time::Duration::ZERO;
    for n in 0..20 {
        let (reply, took) = rcpt_time(n);
        slowest = slowest.max(took);
        if reply.code != 250 {
            refused.push(reply);
        }
    }

    // The runaway plugin is still stopped under the same load.
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<a@example.org>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<runaway@example.test>")
        .expect(451, "4.3.0");

    stop.store(true, Ordering::Relaxed);
    for hog in hogs {
        hog.join().unwrap();
    }
    println!("busy call: {idle:?} on the idle machine, up to {slowest:?} under load");
    assert!(
        refused.is_empty(),
        "healthy calls refused under load: {refused:?}"
    );
    assert!(
        slowest > idle,
        "the load did not slow anything down: the test proves nothing"
    );
}
