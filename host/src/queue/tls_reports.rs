//! Sends the TLS reports (RFC 8460) at the end of each `[tls_report] period`: for every
//! recipient domain delivered to, its `_smtp._tls` TXT record says where (`rua`): an
//! `https:` address gets the JSON by POST (`application/tlsrpt+json`, §5.4), a `mailto:`
//! address a message through the queue with the report attached (§5.3). A domain without
//! a record gets nothing; a failed POST is logged and not retried (the next period's
//! report follows).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_resolver::proto::rr::{RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::outbound::tlsrpt::{self, DomainReport, Rua};

/// How long one POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(60);
/// The part of the server's answer read (its status line is all that matters).
const MAX_RESPONSE: usize = 16 * 1024;

/// Runs until `shutdown`, reporting once per period.
pub(super) async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let period = match &shared.config().tls_report {
            Some(report) => report.period.0,
            None => return,
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        let Some(collector) = &shared.tls_reports else {
            return;
        };
        let (start, end, reports) = collector.take();
        for report in reports {
            send(&shared, start, end, &report).await;
        }
    }
}

async fn send(shared: &Arc<Shared>, start: SystemTime, end: SystemTime, report: &DomainReport) {
    let domain = &report.domain;
    let addresses = rua(shared, domain).await;
    if addresses.is_empty() {
        return;
    }
    let config = shared.config();
    let hostname = config.hostname.to_string();
    let settings = config.tls_report.clone().unwrap_or_default();
    let organization = settings.organization.unwrap_or_else(|| hostname.clone());
    let contact = settings
        .contact
        .unwrap_or_else(|| format!("postmaster@{hostname}"));
    let stamp = end.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let report_id = format!("{stamp}.{domain}@{hostname}");
    let json = tlsrpt::report_json(&organization, &contact, &report_id, start, end, report);
    let body = json.to_string();
    for address in addresses {
        match address {
            Rua::Https(url) => {
                match tokio::time::timeout(POST_TIMEOUT, post(shared, &url, &body)).await {
                    Ok(Ok(status)) => {
                        tracing::info!(%domain, %url, status, "TLS report posted")
                    }
                    Ok(Err(why)) => tracing::warn!(%domain, %url, %why, "TLS report not posted"),
                    Err(_) => tracing::warn!(%domain, %url, "TLS report not posted: timed out"),
                }
            }
            Rua::Mailto(to) => {
                let message = mail(&hostname, &contact, domain, &report_id, &to, &body);
                let envelope = crate::spool::Envelope {
                    version: crate::spool::envelope::ENVELOPE_VERSION,
                    id: String::new(),
                    received_at: stamp,
                    // Reports are not answered: a failure to deliver one is not bounced.
                    sender: None,
                    mail_params: Vec::new(),
                    recipients: vec![crate::spool::envelope::Recipient {
                        address: to.clone(),
                        params: Vec::new(),
                    }],
                    body: crate::spool::envelope::BodyType::SevenBit,
                    smtputf8: false,
                    // Made here, not received: the local end of nowhere.
                    client: crate::spool::envelope::ClientInfo {
                        address: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                        helo: hostname.clone(),
                        listener: "tls-report".into(),
                        protocol: "LOCAL".into(),
                        tls: None,
                        authenticated: None,
                    },
                    size: message.len() as u64,
                    header_edits: Vec::new(),
                    tags: Default::default(),
                    quarantine: None,
                };
                match shared.inject(envelope, message.as_bytes()).await {
                    Ok(id) => tracing::info!(%domain, %to, queue_id = %id, "TLS report queued"),
                    Err(e) => tracing::warn!(%domain, %to, error = %e, "TLS report not queued"),
                }
            }
        }
    }
}

/// The reporting addresses of `domain`'s `_smtp._tls` record (RFC 8460 §3: exactly one
/// TLSRPTv1 record, else none).
async fn rua(shared: &Shared, domain: &str) -> Vec<Rua> {
    let Some(resolver) = shared.dns.resolver() else {
        return Vec::new();
    };
    let name = format!("_smtp._tls.{}.", domain.trim_end_matches('.'));
    let Ok(lookup) = resolver.lookup(name.as_str(), RecordType::TXT).await else {
        return Vec::new();
    };
    let records: Vec<String> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .map(|part| String::from_utf8_lossy(part).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .filter(|text| text.starts_with("v=TLSRPTv1"))
        .collect();
    match records.as_slice() {
        [record] => tlsrpt::parse_record(record),
        _ => Vec::new(),
    }
}

/// The report message (RFC 8460 §5.3): `multipart/report; report-type="tlsrpt"`, a
/// human-readable part and the JSON as `application/tlsrpt+json` in base64.
fn mail(
    hostname: &str,
    contact: &str,
    domain: &str,
    report_id: &str,
    to: &str,
    json: &str,
) -> String {
    use base64::Engine;
    let boundary = format!("tlsrpt-{}", report_id.replace(['@', '.'], "-"));
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    let encoded = base64::engine::general_purpose::STANDARD.encode(json.as_bytes());
    let mut wrapped = String::with_capacity(encoded.len() + encoded.len() / 76 * 2 + 2);
    for chunk in encoded.as_bytes().chunks(76) {
        wrapped.push_str(&String::from_utf8_lossy(chunk));
        wrapped.push_str("\r\n");
    }
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "From: {contact}\r\n\
         To: {to}\r\n\
         Date: {date}\r\n\
         Subject: Report Domain: {domain} Submitter: {hostname} Report-ID: <{report_id}>\r\n\
         Message-ID: <tlsrpt.{stamp}.{domain}@{hostname}>\r\n\
         TLS-Report-Domain: {domain}\r\n\
         TLS-Report-Submitter: {hostname}\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=\"tlsrpt\"; boundary=\"{boundary}\"\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         This is an aggregate TLS report from {hostname} for {domain} (RFC 8460).\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: application/tlsrpt+json\r\n\
         Content-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"{hostname}!{domain}!{stamp}.json\"\r\n\
         \r\n\
         {wrapped}\r\n\
         --{boundary}--\r\n"
    )
}

/// POSTs `body` to the `https://` URL, verifying the server as `[delivery] tls_ca` (or
/// the web PKI) says; the HTTP status, `Err` unless 2xx.
async fn post(shared: &Shared, url: &str, body: &str) -> Result<u16, String> {
    let rest = url.strip_prefix("https://").ok_or("not https")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match crate::outbound::lookup::parse_host_port(authority) {
        Some((host, port)) => (host, port),
        None => (authority.trim_matches(['[', ']']).to_owned(), 443),
    };
    let addrs = crate::outbound::lookup::resolve_host(&shared.dns, &host, port)
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?;
    let tcp = tokio::net::TcpStream::connect(addrs.as_slice())
        .await
        .map_err(|e| format!("connect {host}: {e}"))?;
    let name = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
        Err(_) => rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("{host}: {e}"))?,
    };
    let mut tls = shared
        .tls_verified
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {host}: {e}"))?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: Tidegate\r\nContent-Type: application/tlsrpt+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    while !response.windows(2).any(|w| w == b"\r\n") && response.len() < MAX_RESPONSE {
        match tls.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    let line = response
        .split(|&b| b == b'\n')
        .next()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no HTTP status in `{}`", line.trim()))?;
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(format!("HTTP status {status}"))
    }
}
