//! `[[route]] client_certificate` / `client_key`: a smarthost that authenticates clients by
//! certificate (it requires one in the TLS handshake) gets the route's certificate in
//! STARTTLS, under `tls = "required"` and `opportunistic`; a route without one cannot
//! complete the handshake there, and its mail waits.

use std::time::Duration;

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient, sample_message};

fn send(gateway: &Gateway, to: &str) {
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .send_mail("sender@example.org", &[to], &sample_message("cert", "hi"))
        .expect(250, "2.0.0");
}

#[test]
fn the_smarthost_sees_the_routes_certificate_and_a_route_without_one_waits() {
    let certs = tempfile::tempdir().unwrap();
    // The routes name the smarthost by address: its certificate is for that address.
    let (server_cert, server_key) =
        tidegate_e2e::self_signed(certs.path(), "smarthost", "127.0.0.1", false);
    let (client_cert, client_key) =
        tidegate_e2e::self_signed(certs.path(), "client", "relay.client.test", false);
    let sink = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().starttls_requiring_client_certificate(&server_cert, &server_key),
    );
    let mut config = GatewayConfig {
        accept_domains: vec![
            "required.test".into(),
            "opportunistic.test".into(),
            "anonymous.test".into(),
        ],
        ..GatewayConfig::default()
    }
    .deliver()
    .top("delivery", &format!("{{ tls_ca = {server_cert:?} }}"));
    let port = sink.addr().port();
    config.routes.push(format!(
        "{{ name = \"required\", domains = [\"required.test\"], smarthost = \"127.0.0.1:{port}\", tls = \"required\", client_certificate = {client_cert:?}, client_key = {client_key:?} }}"
    ));
    config.routes.push(format!(
        "{{ name = \"opportunistic\", domains = [\"opportunistic.test\"], smarthost = \"127.0.0.1:{port}\", tls = \"opportunistic\", client_certificate = {client_cert:?}, client_key = {client_key:?} }}"
    ));
    config.routes.push(format!(
        "{{ name = \"anonymous\", domains = [\"anonymous.test\"], smarthost = \"127.0.0.1:{port}\", tls = \"required\" }}"
    ));
    let gateway = Gateway::start_with(&config);
    let presented = tidegate_e2e::pem_certificate_der(&client_cert);

    send(&gateway, "user@opportunistic.test");
    send(&gateway, "user@required.test");
    let received = sink.wait_for(2, Duration::from_secs(30));
    for message in &received {
        assert!(message.tls);
        assert_eq!(
            message.client_certificate.as_deref(),
            Some(presented.as_slice()),
            "the route's client certificate is presented to {:?}",
            message.rcpt_to
        );
    }

    send(&gateway, "user@anonymous.test");
    gateway.wait_for_log("next hop failed");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.received().len(), 2, "no certificate, no delivery");
    assert_eq!(
        gateway.spool_list().len(),
        1,
        "the anonymous route's mail waits"
    );
}
