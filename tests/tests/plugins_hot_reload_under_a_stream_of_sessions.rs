//! Hot reload while mail keeps flowing: a plugin file swapped by write-then-rename, a
//! broken file written in place, and a configuration change are each picked up (or, for
//! the broken file, refused with the old version kept running) within about a second,
//! and not one session of a continuous stream fails.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tidegate_e2e::{Gateway, GatewayConfig, PluginEntry, SmtpClient, plugin_dist};

/// What the stream of sessions has seen.
#[derive(Default)]
struct Seen {
    accepted: AtomicU64,
    rejected: AtomicU64,
    failures: Mutex<Vec<String>>,
    last: Mutex<u16>,
}

fn stream(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    seen: Arc<Seen>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let mut client = SmtpClient::connect(addr);
            if client.greeting.code != 220 {
                seen.failures
                    .lock()
                    .unwrap()
                    .push(format!("greeting {:?}", client.greeting));
                continue;
            }
            client.command("EHLO stream.example.org");
            client.command("MAIL FROM:<a@example.org>");
            let reply = client.command("RCPT TO:<victim@example.test>");
            match reply.code {
                250 => seen.accepted.fetch_add(1, Ordering::Relaxed),
                550 => seen.rejected.fetch_add(1, Ordering::Relaxed),
                _ => {
                    seen.failures.lock().unwrap().push(format!("{reply:?}"));
                    0
                }
            };
            *seen.last.lock().unwrap() = reply.code;
            client.command("QUIT");
        }
    })
}

/// Waits until the stream's latest replies are `code`; returns how long it took.
fn wait_for(seen: &Seen, code: u16, counter: &AtomicU64) -> Duration {
    let start = Instant::now();
    let before = counter.load(Ordering::Relaxed);
    loop {
        if *seen.last.lock().unwrap() == code && counter.load(Ordering::Relaxed) > before + 3 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "reply {code} never came"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn swaps_are_picked_up_broken_files_are_refused_and_no_session_fails() {
    let dist = plugin_dist();
    let slot_dir = tempfile::tempdir().unwrap();
    let slot = slot_dir.path().join("policy.wasm");
    std::fs::copy(dist.join("test_plugin.wasm"), &slot).unwrap();
    let config = GatewayConfig {
        plugins: vec![
            PluginEntry::new("policy", slot.to_str().unwrap())
                .config(r#"deny = ["victim@example.test"]"#),
        ],
        ..GatewayConfig::default()
    };
    let gateway = Gateway::start_with(&config);

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let workers: Vec<_> = (0..2)
        .map(|_| stream(gateway.addr(), Arc::clone(&stop), Arc::clone(&seen)))
        .collect();

    // The test plugin ignores `deny`: the victim is accepted.
    wait_for(&seen, 250, &seen.accepted);

    // Swap in recipient-policy by write-then-rename: now `deny` applies.
    let staged = slot_dir.path().join("policy.wasm.new");
    std::fs::copy(dist.join("recipient_policy.wasm"), &staged).unwrap();
    std::fs::rename(&staged, &slot).unwrap();
    let took = wait_for(&seen, 550, &seen.rejected);
    println!("file swap visible after {took:?}");

    // A broken file written in place: refused, the running version stays.
    std::fs::write(&slot, b"this is not a WebAssembly component").unwrap();
    gateway.wait_for_log("plugin reload refused, keeping every running plugin");
    let rejected = seen.rejected.load(Ordering::Relaxed);
    thread::sleep(Duration::from_millis(300));
    assert!(
        seen.rejected.load(Ordering::Relaxed) > rejected,
        "stream stalled"
    );
    assert_eq!(*seen.last.lock().unwrap(), 550);

    // Restore a valid file and change the configuration: `deny` is emptied, the victim
    // is accepted again.
    std::fs::copy(dist.join("recipient_policy.wasm"), &staged).unwrap();
    std::fs::rename(&staged, &slot).unwrap();
    let text = std::fs::read_to_string(gateway.config_path()).unwrap();
    std::fs::write(
        gateway.config_path(),
        text.replace(r#"deny = ["victim@example.test"]"#, "deny = []"),
    )
    .unwrap();
    let took = wait_for(&seen, 250, &seen.accepted);
    println!("config change visible after {took:?}");

    // SIGHUP asks for a reload; it must not stop the gateway.
    gateway.signal(libc::SIGHUP);
    let accepted = seen.accepted.load(Ordering::Relaxed);
    thread::sleep(Duration::from_millis(500));
    assert!(
        seen.accepted.load(Ordering::Relaxed) > accepted,
        "gateway stopped serving after SIGHUP"
    );

    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().unwrap();
    }
    let failures = seen.failures.lock().unwrap();
    assert!(failures.is_empty(), "failed sessions: {failures:?}");
    println!(
        "sessions: {} accepted, {} rejected, 0 failed",
        seen.accepted.load(Ordering::Relaxed),
        seen.rejected.load(Ordering::Relaxed)
    );
}
