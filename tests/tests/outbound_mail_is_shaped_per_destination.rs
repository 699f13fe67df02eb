//! Traffic shaping and egress addresses, measured where they show: at the next hop. A
//! rate paces messages at the sink (within a tolerance), a connection carries at most its
//! share of transactions, recipients beyond a transaction's size make more transactions,
//! a provider's "slow down" reply suspends that destination only (visible in the queue
//! summary and metrics), a delivery window holds mail until it opens (a reload opens it),
//! mail leaves from the egress pool's addresses with the HELO name of each, and every
//! domain a provider hosts (by MX suffix) shares its rate.

use std::time::{Duration, Instant};

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{Gateway, GatewayConfig, PluginEntry, SmtpClient, sample_message};

fn sink() -> SinkServer {
    SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default())
}

fn send(gateway: &Gateway, to: &[&str], subject: &str) {
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .send_mail("sender@example.org", to, &sample_message(subject, "x"))
        .expect(250, "2.0.0");
}

fn with_admin(config: GatewayConfig, dir: &std::path::Path) -> GatewayConfig {
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, "ops 0123456789abcdef0123456789abcdef\n").unwrap();
    let mut config = config;
    config.top.push((
        "admin".into(),
        format!(r#"{{ address = "127.0.0.1:0", token_file = {tokens:?} }}"#),
    ));
    config
}

#[test]
fn a_rate_paces_messages_and_connections_and_transactions_have_their_sizes() {
    let (paced, split) = (sink(), sink());
    let config = GatewayConfig {
        accept_domains: vec!["paced.test".into(), "split.test".into()],
        top: vec![(
            "shaping".into(),
            r#"[
  { name = "paced", routes = ["paced"], connections = 1, messages_per_minute = 240, burst = 1, messages_per_connection = 3 },
  { name = "split", routes = ["split"], recipients_per_message = 2 },
]"#
            .into(),
        )],
        ..GatewayConfig::default()
    }
    .route("paced", &["paced.test"], paced.addr())
    .route("split", &["split.test"], split.addr());
    let gateway = Gateway::start_with(&config);
    for i in 0..9 {
        send(&gateway, &["someone@paced.test"], &format!("paced {i}"));
    }
    let started = Instant::now();
    let mut arrivals = Vec::new();
    for n in 1..=9 {
        paced.wait_for(n, Duration::from_secs(30));
        arrivals.push(started.elapsed());
    }
    // 240 a minute is one every 250 ms: eight intervals after the first message.
    let span = arrivals[8].saturating_sub(arrivals[0]);
    assert!(
        span >= Duration::from_millis(1600) && span <= Duration::from_millis(6000),
        "nine messages at 240/min took {span:?}: {arrivals:?}"
    );
    assert_eq!(paced.connections(), 3, "three transactions per connection");

    send(
        &gateway,
        &[
            "a@split.test",
            "b@split.test",
            "c@split.test",
            "d@split.test",
            "e@split.test",
        ],
        "split",
    );
    let received = split.wait_for(3, Duration::from_secs(30));
    let mut sizes: Vec<usize> = received.iter().map(|m| m.rcpt_to.len()).collect();
    sizes.sort();
    assert_eq!(sizes, vec![1, 2, 2], "five recipients, two per transaction");
}

#[test]
fn a_slow_down_reply_suspends_that_destination_only() {
    let dir = tempfile::tempdir().unwrap();
    let slow = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().reject_rcpt("someone@slow.test", 421, "4.7.0"),
    );
    let fast = sink();
    let config = with_admin(
        GatewayConfig {
            accept_domains: vec!["slow.test".into(), "fast.test".into()],
            top: vec![(
                "shaping".into(),
                r#"[{ name = "slow", routes = ["slow"], react = [{ reply = '4\.7\.0', suspend = "1h" }] }]"#
                    .into(),
            )],
            ..GatewayConfig::default()
        },
        dir.path(),
    )
    .queue("retry_intervals", r#"["1s"]"#)
    .route("slow", &["slow.test"], slow.addr())
    .route("fast", &["fast.test"], fast.addr());
    let gateway = Gateway::start_with(&config);
    send(&gateway, &["someone@slow.test"], "first to slow");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gateway
        .log()
        .contains("destination slowed down by its reply")
    {
        assert!(Instant::now() < deadline, "{}", gateway.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 0..3 {
        send(&gateway, &["someone@slow.test"], &format!("slow {i}"));
        send(&gateway, &["someone@fast.test"], &format!("fast {i}"));
    }
    fast.wait_for(3, Duration::from_secs(30));
    // Retries every second, and three more messages: none reaches the suspended host.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(slow.connections(), 1, "only the attempt that got the reply");
    let summary = gateway.cli_json(&["queue", "summary"]);
    let shaped = summary["shaped"].as_array().expect("shaped destinations");
    let suspended = shaped
        .iter()
        .find(|s| s["policy"] == "slow")
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(
        suspended["closed"]
            .as_str()
            .unwrap_or("")
            .starts_with("suspended until"),
        "{suspended}"
    );
    assert_eq!(suspended["parked"], 4, "{suspended}");
    let out = gateway.cli_ok(&["queue", "summary"]);
    assert!(
        out.contains("SHAPED") && out.contains("suspended until"),
        "{out}"
    );
    let (_, metrics) = gateway.admin_get("/metrics");
    assert!(
        metrics.contains("tidegate_shaping_reactions_total{policy=\"slow\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tidegate_shaping_closed_destinations{policy=\"slow\"} 1"));
}

/// A window of `hours` starting `from_now` hours from now, as `HH:MM-HH:MM` (UTC).
fn window(from_now: u64, hours: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let at = |secs: u64| {
        let minutes = (secs % 86_400) / 60;
        format!("{:02}:{:02}", minutes / 60, minutes % 60)
    };
    let start = now + from_now * 3600;
    format!("{}-{}", at(start), at(start + hours * 3600))
}

#[test]
fn a_curfew_holds_mail_until_its_window_opens() {
    let dir = tempfile::tempdir().unwrap();
    let next_hop = sink();
    let shaping = |window: &str| {
        format!(r#"[{{ name = "office", routes = ["office"], window = "{window}" }}]"#)
    };
    let mut config = with_admin(
        GatewayConfig {
            accept_domains: vec!["office.test".into()],
            top: vec![("shaping".into(), shaping(&window(2, 2)))],
            ..GatewayConfig::default()
        },
        dir.path(),
    )
    .route("office", &["office.test"], next_hop.addr());
    let gateway = Gateway::start_with(&config);
    send(&gateway, &["someone@office.test"], "after hours");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        next_hop.received().is_empty(),
        "delivered outside its window"
    );
    let summary = gateway.cli_json(&["queue", "summary"]);
    assert!(summary.to_string().contains("curfew until"), "{summary}");

    // The window opens (the operator moves it): the mail goes.
    config.top.retain(|(key, _)| key != "shaping");
    config.top.push(("shaping".into(), shaping(&window(0, 2))));
    let text = config.render();
    std::fs::write(gateway.config_path(), text).unwrap();
    gateway.cli_ok(&["reload"]);
    next_hop.wait_for(1, Duration::from_secs(30));
}

#[test]
fn mail_leaves_from_the_egress_addresses_with_their_helo_names() {
    let next_hop = sink();
    let config = GatewayConfig {
        accept_domains: vec!["egress.test".into()],
        top: vec![
            ("delivery".into(), "{ pool_max_idle = 0 }".into()),
            (
                "egress".into(),
                r#"[{ name = "out", addresses = [
  { address = "127.0.0.2", helo = "out2.example.net" },
  { address = "127.0.0.3", helo = "out3.example.net" },
] }]"#
                    .into(),
            ),
        ],
        ..GatewayConfig::default()
    }
    .route("egress", &["egress.test"], next_hop.addr());
    let text = config
        .render()
        .replace("smarthost = ", "egress = \"out\", smarthost = ");
    let gateway = Gateway::start_with_text(&text, 1);
    for i in 0..4 {
        send(&gateway, &["someone@egress.test"], &format!("egress {i}"));
        next_hop.wait_for(i + 1, Duration::from_secs(30));
    }
    let mut seen: Vec<(String, String)> = next_hop
        .received()
        .iter()
        .map(|m| {
            let peer = m.peer.expect("peer address").ip().to_string();
            (peer, m.helo.clone())
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("127.0.0.2".to_owned(), "out2.example.net".to_owned()),
            ("127.0.0.2".to_owned(), "out2.example.net".to_owned()),
            ("127.0.0.3".to_owned(), "out3.example.net".to_owned()),
            ("127.0.0.3".to_owned(), "out3.example.net".to_owned()),
        ]
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn every_domain_a_provider_hosts_shares_its_rate() {
    let port = free_port();
    let next_hop = SinkServer::start(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Behaviour::default(),
    );
    let dns = tidegate_e2e::DnsServer::start_with_args(&[
        "--local=/a.test/".into(),
        "--local=/b.test/".into(),
        "--local=/provider.test/".into(),
        "--mx-host=a.test,mx1.provider.test,10".into(),
        "--mx-host=b.test,mx2.provider.test,10".into(),
        "--host-record=mx1.provider.test,127.0.0.1".into(),
        "--host-record=mx2.provider.test,127.0.0.1".into(),
    ]);
    let config = GatewayConfig {
        accept_domains: vec!["a.test".into(), "b.test".into()],
        top: vec![
            (
                "delivery".into(),
                format!("{{ mx_port = {port}, connect_timeout = \"2s\" }}"),
            ),
            (
                "shaping".into(),
                r#"[{ name = "provider", mx_suffixes = [".provider.test"], messages_per_minute = 240, burst = 1 }]"#.into(),
            ),
        ],
        ..GatewayConfig::default()
    }
    .dns(dns.addr(), 2000)
    .deliver();
    let gateway = Gateway::start_with(&config);
    for i in 0..6 {
        let to = if i % 2 == 0 { "x@a.test" } else { "y@b.test" };
        send(&gateway, &[to], &format!("provider {i}"));
    }
    let started = Instant::now();
    next_hop.wait_for(1, Duration::from_secs(30));
    let first = started.elapsed();
    next_hop.wait_for(6, Duration::from_secs(30));
    let span = started.elapsed().saturating_sub(first);
    // One rate for both domains: five intervals of 250 ms, not two domains' worth at once.
    assert!(
        span >= Duration::from_millis(1000),
        "six messages to one provider's two domains took {span:?}"
    );
}

#[test]
fn a_plugin_chooses_the_egress_pool_in_on_route() {
    let next_hop = sink();
    let config = GatewayConfig {
        accept_domains: vec!["bulk.test".into(), "plain.test".into()],
        top: vec![(
            "egress".into(),
            r#"[
  { name = "bulk", addresses = [{ address = "127.0.0.4", helo = "bulk.example.net" }] },
]"#
            .into(),
        )],
        plugins: vec![
            PluginEntry::new("router", "domain_router.wasm")
                .config("[plugin.config.routes]")
                .config("\"bulk.test\" = \"out\"")
                .config("\"plain.test\" = \"out\"")
                .config("[plugin.config.egress]")
                .config("\"bulk.test\" = \"bulk\""),
        ],
        ..GatewayConfig::default()
    }
    .route("out", &[], next_hop.addr());
    let gateway = Gateway::start_with(&config);
    send(&gateway, &["someone@bulk.test"], "bulk");
    next_hop.wait_for(1, Duration::from_secs(30));
    send(&gateway, &["someone@plain.test"], "plain");
    let received = next_hop.wait_for(2, Duration::from_secs(30));
    let by_subject = |subject: &str| {
        received
            .iter()
            .find(|m| m.text().contains(&format!("Subject: {subject}")))
            .unwrap_or_else(|| panic!("{subject}"))
            .clone()
    };
    let bulk = by_subject("bulk");
    assert_eq!(bulk.peer.unwrap().ip().to_string(), "127.0.0.4");
    assert_eq!(bulk.helo, "bulk.example.net");
    let plain = by_subject("plain");
    assert_ne!(plain.peer.unwrap().ip().to_string(), "127.0.0.4");
}

#[test]
fn a_plugin_suspends_a_destination_from_on_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let slow = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().reply_rcpt(
            "someone@slow.test",
            421,
            "4.7.0",
            "Try again later, you are sending too fast",
        ),
    );
    let config = with_admin(
        GatewayConfig {
            accept_domains: vec!["slow.test".into()],
            plugins: vec![
                PluginEntry::new("watcher", "test_plugin.wasm")
                    .config("mode = \"pass\"")
                    .config("suspend_on_class = \"rate-limit\"")
                    .config("suspend_secs = 3600"),
            ],
            ..GatewayConfig::default()
        },
        dir.path(),
    )
    .queue("retry_intervals", r#"["1s"]"#)
    .route("slow", &["slow.test"], slow.addr());
    let gateway = Gateway::start_with(&config);
    send(&gateway, &["someone@slow.test"], "first");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gateway.log().contains("destination suspended by a plugin") {
        assert!(Instant::now() < deadline, "{}", gateway.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        gateway.log().contains("class=\"rate-limit\""),
        "{}",
        gateway.log()
    );
    send(&gateway, &["someone@slow.test"], "second");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        slow.connections(),
        1,
        "suspended by the plugin: no more attempts"
    );
    let summary = gateway.cli_json(&["queue", "summary"]);
    assert!(summary.to_string().contains("rate-limit seen"), "{summary}");
}
