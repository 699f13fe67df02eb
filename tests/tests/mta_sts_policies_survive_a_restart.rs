//! MTA-STS policies are kept across restarts (RFC 8461 §5): a policy fetched once is
//! written to `<spool>/mta-sts.json`, so after a restart with the policy server gone
//! (an attacker blocking the fetch, or an outage) the `enforce` policy still applies and
//! the mail still goes over verified TLS, not in the clear.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{DnsServer, Gateway, GatewayConfig, SmtpClient, sample_message};

/// An HTTPS server answering every request with `policy` until `down` is set; then it
/// drops every connection at once.
fn policy_server(
    cert: &Path,
    key: &Path,
    policy: &'static str,
    down: Arc<AtomicBool>,
) -> SocketAddr {
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
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(tcp) = stream else { continue };
            if down.load(Ordering::SeqCst) {
                drop(tcp);
                continue;
            }
            let config = Arc::clone(&config);
            std::thread::spawn(move || {
                let connection = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(connection, tcp);
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{policy}",
                    policy.len()
                );
                let _ = tls.write_all(response.as_bytes());
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    addr
}

fn send(gateway: &Gateway) {
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .send_mail(
            "sender@example.org",
            &["user@sts.test"],
            &sample_message("sts", "hi"),
        )
        .expect(250, "2.0.0");
}

#[test]
fn an_enforce_policy_still_applies_after_a_restart_without_its_server() {
    let certs = tempfile::tempdir().unwrap();
    let (mx_cert, mx_key) = tidegate_e2e::self_signed(certs.path(), "mx", "mx.sts.test", false);
    let (sts_cert, sts_key) =
        tidegate_e2e::self_signed(certs.path(), "sts", "mta-sts.sts.test", false);
    let ca = certs.path().join("ca.pem");
    let both =
        std::fs::read_to_string(&mx_cert).unwrap() + &std::fs::read_to_string(&sts_cert).unwrap();
    std::fs::write(&ca, both).unwrap();
    let down = Arc::new(AtomicBool::new(false));
    let https = policy_server(
        &sts_cert,
        &sts_key,
        "version: STSv1\nmode: enforce\nmx: mx.sts.test\nmax_age: 86400\n",
        Arc::clone(&down),
    );
    let _dns = DnsServer::start_with_args(&[
        "--local=/sts.test/".into(),
        "--mx-host=sts.test,mx.sts.test,10".into(),
        "--host-record=mx.sts.test,127.0.0.1".into(),
        "--host-record=mta-sts.sts.test,127.0.0.1".into(),
        "--txt-record=_mta-sts.sts.test,v=STSv1; id=20261201".into(),
    ]);
    let sink = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().starttls(&mx_cert, &mx_key),
    );
    let mut gateway = Gateway::start_with(
        &GatewayConfig {
            accept_domains: vec!["sts.test".into()],
            ..GatewayConfig::default()
        }
        .deliver()
        .dns(_dns.addr(), 2000)
        // Plain text unless the policy says otherwise.
        .top(
            "delivery",
            &format!(
                "{{ mx_port = {}, tls = \"none\", tls_ca = {ca:?}, mta_sts = true, mta_sts_port = {} }}",
                sink.addr().port(),
                https.port()
            ),
        ),
    );
    send(&gateway);
    let received = sink.wait_for(1, Duration::from_secs(30));
    assert!(received[0].tls, "the fetched policy turns TLS on");
    let store = gateway.spool_dir().join("mta-sts.json");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !store.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let stored = std::fs::read_to_string(&store).expect("the policy is written to the spool");
    assert!(
        stored.contains("\"enforce\"") && stored.contains("mx.sts.test"),
        "{stored}"
    );

    // The policy server goes away, and the gateway restarts.
    down.store(true, Ordering::SeqCst);
    gateway.signal(libc::SIGTERM);
    assert!(gateway.wait_exit().success());
    gateway.restart(1);
    gateway.wait_for_log("MTA-STS policies read back");

    send(&gateway);
    let received = sink.wait_for(2, Duration::from_secs(30));
    assert!(
        received[1].tls,
        "after the restart the stored enforce policy must still require TLS"
    );
}
