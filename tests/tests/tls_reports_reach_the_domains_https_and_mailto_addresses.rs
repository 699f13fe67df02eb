//! SMTP TLS Reporting (RFC 8460) with a short `[tls_report] period`: MX deliveries are
//! counted per recipient domain, and at the end of the period each domain that publishes
//! `_smtp._tls` (`v=TLSRPTv1; rua=...`) gets its aggregate JSON report: POSTed to its
//! `https:` address (the test's endpoint) and mailed to its `mailto:` address through the
//! queue. A successful TLS session and a certificate that does not match the MX host's
//! name are both in the reports.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{DnsServer, Gateway, GatewayConfig, SmtpClient, sample_message};

/// The `(content type, body)` of each POST the endpoint received.
type Posts = Arc<Mutex<Vec<(String, String)>>>;

/// An HTTPS endpoint that answers 200 to every POST and keeps what it was sent.
fn report_endpoint(cert: &Path, key: &Path) -> (SocketAddr, Posts) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let posts = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&posts);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(tcp) = stream else { continue };
            let config = Arc::clone(&config);
            let kept = Arc::clone(&kept);
            std::thread::spawn(move || {
                let connection = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(connection, tcp);
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match tls.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&request[..head_end]).to_string();
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                        })
                        .unwrap_or_default()
                };
                let length: usize = header("content-length").parse().unwrap_or(0);
                while request.len() < head_end + length {
                    match tls.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let body = String::from_utf8_lossy(&request[head_end..]).to_string();
                kept.lock().unwrap().push((header("content-type"), body));
                let _ = tls.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    (addr, posts)
}

fn send(gateway: &Gateway, to: &str) {
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .send_mail("sender@example.org", &[to], &sample_message("tlsrpt", "hi"))
        .expect(250, "2.0.0");
}

#[test]
fn the_reports_of_a_period_are_posted_and_mailed() {
    let certs = tempfile::tempdir().unwrap();
    let (mx_cert, mx_key) =
        tidegate_e2e::self_signed(certs.path(), "mx", "mx-good.rpt.test", false);
    let (web_cert, web_key) = tidegate_e2e::self_signed(certs.path(), "web", "127.0.0.1", false);
    let ca = certs.path().join("ca.pem");
    let both =
        std::fs::read_to_string(&mx_cert).unwrap() + &std::fs::read_to_string(&web_cert).unwrap();
    std::fs::write(&ca, both).unwrap();
    let (endpoint, posts) = report_endpoint(&web_cert, &web_key);
    let url = format!("https://127.0.0.1:{}/tlsrpt", endpoint.port());
    let dns = DnsServer::start_with_args(&[
        "--local=/rpt.test/".into(),
        "--mx-host=good.rpt.test,mx-good.rpt.test,10".into(),
        "--host-record=mx-good.rpt.test,127.0.0.1".into(),
        // The same host under another name: its certificate does not match that name.
        "--mx-host=bad.rpt.test,mx-bad.rpt.test,10".into(),
        "--host-record=mx-bad.rpt.test,127.0.0.1".into(),
        // (dnsmasq splits record text at commas: one address per domain here.)
        format!("--txt-record=_smtp._tls.good.rpt.test,v=TLSRPTv1; rua={url}"),
        format!("--txt-record=_smtp._tls.bad.rpt.test,v=TLSRPTv1; rua={url}"),
        "--mx-host=mail.rpt.test,mx-good.rpt.test,10".into(),
        "--txt-record=_smtp._tls.mail.rpt.test,v=TLSRPTv1; rua=mailto:tlsrpt@reports.test".into(),
    ]);
    let sink = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().starttls(&mx_cert, &mx_key),
    );
    let port = sink.addr().port();
    let mut config = GatewayConfig {
        accept_domains: vec![
            "good.rpt.test".into(),
            "bad.rpt.test".into(),
            "mail.rpt.test".into(),
        ],
        ..GatewayConfig::default()
    }
    .deliver()
    .dns(dns.addr(), 2000)
    .top(
        "delivery",
        &format!("{{ mx_port = {port}, tls = \"required\", tls_ca = {ca:?} }}"),
    )
    .top(
        "tls_report",
        "{ period = \"2s\", organization = \"Tidegate test\" }",
    );
    // The reports mailbox's domain goes to the sink directly.
    config.routes.push(format!(
        "{{ name = \"reports\", domains = [\"reports.test\"], smarthost = \"127.0.0.1:{port}\", tls = \"none\" }}"
    ));
    let gateway = Gateway::start_with(&config);

    send(&gateway, "user@good.rpt.test");
    send(&gateway, "user@bad.rpt.test");
    send(&gateway, "user@mail.rpt.test");
    sink.wait_for(2, Duration::from_secs(30));
    gateway.wait_for_log("next hop failed");

    let deadline = Instant::now() + Duration::from_secs(20);
    let reports = loop {
        let got = posts.lock().unwrap().clone();
        if got.len() >= 2 || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        reports.len(),
        2,
        "one POST per domain: {reports:?}\n{}",
        gateway.log()
    );
    let mut by_domain = std::collections::HashMap::new();
    for (content_type, body) in &reports {
        assert_eq!(content_type, "application/tlsrpt+json");
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["organization-name"], "Tidegate test");
        assert!(json["report-id"].as_str().is_some_and(|id| !id.is_empty()));
        assert!(json["date-range"]["start-datetime"].as_str().is_some());
        let policy = &json["policies"][0];
        let domain = policy["policy"]["policy-domain"]
            .as_str()
            .unwrap()
            .to_owned();
        by_domain.insert(domain, policy.clone());
    }
    let good = &by_domain["good.rpt.test"];
    assert_eq!(good["policy"]["policy-type"], "no-policy-found");
    assert_eq!(good["summary"]["total-successful-session-count"], 1);
    assert_eq!(good["summary"]["total-failure-session-count"], 0);
    let bad = &by_domain["bad.rpt.test"];
    assert_eq!(bad["summary"]["total-successful-session-count"], 0);
    assert_eq!(bad["summary"]["total-failure-session-count"], 1);
    let detail = &bad["failure-details"][0];
    assert_eq!(detail["result-type"], "certificate-host-mismatch");
    assert_eq!(detail["receiving-mx-hostname"], "mx-bad.rpt.test");
    assert_eq!(detail["receiving-ip"], "127.0.0.1");

    // The mailto: address gets its report as mail through the queue.
    let received = sink.wait_for(3, Duration::from_secs(20));
    let mailed = received
        .iter()
        .find(|m| m.rcpt_to == vec!["tlsrpt@reports.test".to_owned()])
        .expect("the report mailed to the mailto: address");
    let text = mailed.text();
    assert!(text.contains("TLS-Report-Domain: mail.rpt.test"), "{text}");
    assert!(
        text.contains("multipart/report; report-type=\"tlsrpt\""),
        "{text}"
    );
    assert!(
        text.contains("Content-Type: application/tlsrpt+json"),
        "{text}"
    );
    assert_eq!(mailed.mail_from, "", "reports go out from the null sender");
}
