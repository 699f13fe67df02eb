//! MTA-STS (RFC 8461) when enabled: a domain's `enforce` policy, fetched over HTTPS from
//! `mta-sts.<domain>` after its `_mta-sts` TXT record, limits delivery to the listed MX
//! hosts over verified TLS: a listed host with a valid certificate gets the mail over TLS,
//! and a domain whose MX is not in its policy keeps the mail waiting, unless the message
//! says `TLS-Required: No` (RFC 8689 §5).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{DnsServer, Gateway, GatewayConfig, SmtpClient, sample_message};

fn gen_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    tidegate_e2e::self_signed(dir, name, name, false)
}

/// A one-file HTTPS server: answers every request with `policy`.
fn policy_server(cert: &Path, key: &Path, policy: &'static str) -> SocketAddr {
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

struct Lab {
    _certs: tempfile::TempDir,
    _dns: DnsServer,
    sink: SinkServer,
    gateway: Gateway,
}

fn lab(policy: &'static str) -> Lab {
    let certs = tempfile::tempdir().unwrap();
    let (mx_cert, mx_key) = gen_cert(certs.path(), "mx.sts.test");
    let (sts_cert, sts_key) = gen_cert(certs.path(), "mta-sts.sts.test");
    // The lab CA: both self-signed certificates.
    let ca = certs.path().join("ca.pem");
    let both =
        std::fs::read_to_string(&mx_cert).unwrap() + &std::fs::read_to_string(&sts_cert).unwrap();
    std::fs::write(&ca, both).unwrap();

    let https = policy_server(&sts_cert, &sts_key, policy);
    let dns = DnsServer::start_with_args(&[
        "--local=/sts.test/".into(),
        "--mx-host=sts.test,mx.sts.test,10".into(),
        "--host-record=mx.sts.test,127.0.0.1".into(),
        "--host-record=mta-sts.sts.test,127.0.0.1".into(),
        "--txt-record=_mta-sts.sts.test,v=STSv1; id=20261126".into(),
    ]);
    let sink = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().starttls(&mx_cert, &mx_key),
    );
    let gateway = Gateway::start_with(
        &GatewayConfig {
            accept_domains: vec!["sts.test".into()],
            ..GatewayConfig::default()
        }
        .deliver()
        .dns(dns.addr(), 2000)
        .top(
            "delivery",
            &format!(
                "{{ mx_port = {}, tls = \"none\", tls_ca = {ca:?}, mta_sts = true, mta_sts_port = {} }}",
                sink.addr().port(),
                https.port()
            ),
        ),
    );
    Lab {
        _certs: certs,
        _dns: dns,
        sink,
        gateway,
    }
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
fn an_enforced_policy_turns_tls_on_and_the_listed_mx_gets_the_mail() {
    // `tls = "none"` in [delivery]: only the policy can make this delivery use TLS.
    let lab = lab("version: STSv1\nmode: enforce\nmx: mx.sts.test\nmax_age: 86400\n");
    send(&lab.gateway);
    let received = lab.sink.wait_for(1, Duration::from_secs(30));
    assert!(received[0].tls, "MTA-STS enforce must deliver over TLS");
}

#[test]
fn an_mx_outside_the_policy_gets_nothing() {
    let lab = lab("version: STSv1\nmode: enforce\nmx: other.sts.test\nmax_age: 86400\n");
    send(&lab.gateway);
    lab.gateway.wait_for_log("matches its MTA-STS policy");
    std::thread::sleep(Duration::from_millis(300));
    assert!(lab.sink.received().is_empty());
    assert_eq!(lab.gateway.spool_list().len(), 1);
}

#[test]
fn tls_required_no_lets_a_message_past_the_policy() {
    // RFC 8689 §5: the sender prefers delivery to the policy's protection.
    let lab = lab("version: STSv1\nmode: enforce\nmx: other.sts.test\nmax_age: 86400\n");
    send(&lab.gateway);
    lab.gateway.wait_for_log("matches its MTA-STS policy");
    let mut client = SmtpClient::ehlo(lab.gateway.addr());
    client
        .send_mail(
            "sender@example.org",
            &["user@sts.test"],
            "TLS-Required: No\r\nSubject: deliver anyway\r\n\r\nhi\r\n",
        )
        .expect(250, "2.0.0");
    let received = lab.sink.wait_for(1, Duration::from_secs(30));
    assert!(received[0].text().contains("deliver anyway"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lab.sink.received().len(), 1, "the policy was not applied");
    assert_eq!(lab.gateway.spool_list().len(), 1);
}
