//! DANE (RFC 7672) in MX delivery, against a DNSSEC-signed zone served by BIND on loopback
//! with its own key as the gateway's trust anchor: an MX host whose signed TLSA record
//! matches its certificate gets the mail over TLS (even with `[delivery] tls = "none"`);
//! a TLSA record that does not match keeps the mail waiting, and nothing crosses in the
//! clear; a TLSA record whose signature is broken (bogus) keeps the mail waiting without a
//! connection, and so do bogus MX records; a host without TLSA records, and a domain in an
//! unsigned zone (whatever its TLSA records say), get the usual policy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tidegate_e2e::signed_zone::SignedZone;
use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient, sample_message};

/// The hex SHA-256 of a certificate's SubjectPublicKeyInfo: the data of `TLSA 3 1 1`.
fn spki_sha256(cert: &Path) -> String {
    let der = rustls::pki_types::CertificateDer::from(tidegate_e2e::pem_certificate_der(cert));
    let parsed = webpki::EndEntityCert::try_from(&der).unwrap();
    Sha256::digest(parsed.subject_public_key_info().as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

struct Lab {
    _certs: tempfile::TempDir,
    zone: SignedZone,
    sink: SinkServer,
    gateway: Gateway,
}

/// A sink with STARTTLS (certificate for `mx-pass.dane.test`), the signed zone
/// `dane.test` with one MX domain per case, and a gateway that trusts the zone's key.
fn lab() -> Lab {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key): (PathBuf, PathBuf) =
        tidegate_e2e::self_signed(certs.path(), "mx", "mx-pass.dane.test", false);
    let sink = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().starttls(&cert, &key),
    );
    let port = sink.addr().port();
    let right = spki_sha256(&cert);
    let wrong = "00".repeat(32);
    let records = format!(
        "pass IN MX 10 mx-pass\n\
         mx-pass IN A 127.0.0.1\n\
         _{port}._tcp.mx-pass IN TLSA 3 1 1 {right}\n\
         fail IN MX 10 mx-fail\n\
         mx-fail IN A 127.0.0.1\n\
         _{port}._tcp.mx-fail IN TLSA 3 1 1 {wrong}\n\
         bogus IN MX 10 mx-bogus\n\
         mx-bogus IN A 127.0.0.1\n\
         _{port}._tcp.mx-bogus IN TLSA 3 1 1 {right}\n\
         plain IN MX 10 mx-plain\n\
         mx-plain IN A 127.0.0.1\n\
         bogusmx IN MX 10 mx-pass\n"
    );
    let bogus = format!("_{port}._tcp.mx-bogus");
    // An unsigned zone beside the signed one, outside the trust anchor.
    let unsigned = format!(
        "@ IN MX 10 mx\n\
         mx IN A 127.0.0.1\n\
         _{port}._tcp.mx IN TLSA 3 1 1 {wrong}\n"
    );
    let zone = SignedZone::start_with_unsigned(
        "dane.test",
        &records,
        &[&bogus, "bogusmx"],
        &[("unsigned.test", &unsigned)],
    );
    let gateway = Gateway::start_with(
        &GatewayConfig {
            accept_domains: vec!["dane.test".into(), "unsigned.test".into()],
            ..GatewayConfig::default()
        }
        .deliver()
        .top(
            "dns",
            &format!(
                "{{ nameservers = [\"{}\"], timeout_ms = 2000, dnssec_trust_anchor = {:?} }}",
                zone.addr(),
                zone.trust_anchor()
            ),
        )
        // Plain text unless DANE says otherwise: only the TLSA records can turn TLS on.
        .top(
            "delivery",
            &format!("{{ mx_port = {port}, tls = \"none\", dane = true }}"),
        ),
    );
    Lab {
        _certs: certs,
        zone,
        sink,
        gateway,
    }
}

fn send(gateway: &Gateway, to: &str) {
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .send_mail("sender@example.org", &[to], &sample_message("dane", "hi"))
        .expect(250, "2.0.0");
}

#[test]
fn a_matching_tlsa_record_makes_the_delivery_use_tls() {
    let lab = lab();
    send(&lab.gateway, "user@pass.dane.test");
    let received = lab.sink.wait_for(1, Duration::from_secs(30));
    assert!(received[0].tls, "DANE must deliver over TLS");
    assert_eq!(received[0].rcpt_to, vec!["user@pass.dane.test".to_owned()]);
    lab.gateway
        .wait_for_log("DANE: TLS authenticated by TLSA records");
}

#[test]
fn a_tlsa_record_that_does_not_match_keeps_the_mail_waiting() {
    let lab = lab();
    send(&lab.gateway, "user@fail.dane.test");
    lab.gateway
        .wait_for_log("no TLSA record matches the certificate");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        lab.sink.received().is_empty(),
        "nothing may be delivered past a failed DANE check, not even in the clear"
    );
    assert_eq!(lab.gateway.spool_list().len(), 1, "the message waits");
    assert!(lab.gateway.log().contains("not delivering in the clear"));
}

#[test]
fn a_bogus_tlsa_answer_keeps_the_mail_waiting_without_a_connection() {
    let lab = lab();
    send(&lab.gateway, "user@bogus.dane.test");
    lab.gateway.wait_for_log("DANE: host unusable for now");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        lab.sink.connections(),
        0,
        "a bogus answer must not be acted on"
    );
    assert_eq!(lab.gateway.spool_list().len(), 1, "the message waits");
    assert!(
        lab.zone.log().contains("running"),
        "the zone was served: {}",
        lab.zone.log()
    );
}

#[test]
fn a_host_without_tlsa_records_gets_the_usual_policy() {
    let lab = lab();
    send(&lab.gateway, "user@plain.dane.test");
    let received = lab.sink.wait_for(1, Duration::from_secs(30));
    assert!(
        !received[0].tls,
        "no TLSA records: `tls = \"none\"` applies"
    );
}

#[test]
fn bogus_mx_records_keep_the_mail_waiting() {
    let lab = lab();
    send(&lab.gateway, "user@bogusmx.dane.test");
    lab.gateway.wait_for_log("MX records are DNSSEC-bogus");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lab.sink.connections(), 0);
    assert_eq!(lab.gateway.spool_list().len(), 1, "the message waits");
}

#[test]
fn an_unsigned_domain_is_delivered_without_dane_whatever_its_tlsa_records_say() {
    // Its TLSA record does not match, but nothing proves it: it must be ignored.
    let lab = lab();
    send(&lab.gateway, "user@unsigned.test");
    let received = lab.sink.wait_for(1, Duration::from_secs(30));
    assert!(!received[0].tls, "no DANE: `tls = \"none\"` applies");
}
