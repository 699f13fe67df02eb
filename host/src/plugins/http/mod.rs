//! Outgoing HTTP for plugins (`http-call` in the contract), granted per plugin.
//!
//! A call goes: the request checked ([`tidegate_plugin_sdk::http::check_request`], the same
//! rules as the SDK's harness), its URL parsed ([`target`]) and granted by an entry of the
//! plugin's `http_allow`, the host resolved through the gateway's resolver, every address
//! vetted ([`vet`]: internal ones and the gateway's own need an entry that names them),
//! then one connection to the vetted address ([`client`]), no redirects followed, the
//! answer read up to its bound. All of it within `http_timeout_ms`, capped by what is left
//! of the hook's deadline. Whatever goes wrong is an `http-error` the plugin sees.

pub mod client;
pub mod target;
pub mod vet;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tidegate_plugin_sdk::http as sdk;

use super::bindings::tidegate::plugin::types::{HttpError, HttpMethod, HttpRequest, HttpResponse};
use crate::config::{HttpOrigin, OriginHost, PluginConfig};
use crate::dns::Dns;
use crate::outbound::loops::OwnAddresses;
use target::{Host, Target};

/// What one plugin may do over HTTP, from its `[[plugin]]` table.
#[derive(Debug, Clone)]
pub struct HttpGrant {
    /// The origins it may reach; empty: none.
    pub allow: Vec<HttpOrigin>,
    /// The deadline of one call.
    pub timeout: Duration,
    /// The largest request body.
    pub max_request: usize,
    /// The largest response body.
    pub max_response: usize,
    /// Calls per hook call.
    pub calls_per_hook: u32,
}

impl HttpGrant {
    /// The grant a plugin's configuration gives.
    pub fn new(config: &PluginConfig) -> HttpGrant {
        HttpGrant {
            allow: config.http_allow.clone(),
            timeout: Duration::from_millis(config.http_timeout_ms),
            max_request: usize::try_from(config.http_max_request_bytes).unwrap_or(usize::MAX),
            max_response: usize::try_from(config.http_max_response_bytes).unwrap_or(usize::MAX),
            calls_per_hook: config.http_max_calls_per_hook,
        }
    }
}

/// What every plugin's HTTP calls share: the gateway's own addresses (never reached unless
/// named literally) and the TLS client configuration (the Mozilla roots).
#[derive(Debug, Default)]
pub struct HttpServices {
    own: OwnAddresses,
    tls: OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
}

impl HttpServices {
    /// Services that refuse connections to `own` (the listeners and the admin API).
    pub fn new(own: Vec<SocketAddr>) -> HttpServices {
        HttpServices {
            own: OwnAddresses::new(own),
            tls: OnceLock::new(),
        }
    }

    fn tls(&self) -> Result<Arc<rustls::ClientConfig>, HttpError> {
        self.tls
            .get_or_init(|| {
                crate::tls::client_config(&crate::tls::VerifyMode::WebPki)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(|e| HttpError::Failed(format!("TLS client: {e}")))
    }
}

/// The metric label of a call's outcome.
pub fn outcome(result: &Result<HttpResponse, HttpError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(HttpError::NotAllowed(_)) => "not_allowed",
        Err(HttpError::Invalid(_)) => "invalid",
        Err(HttpError::Timeout) => "timeout",
        Err(HttpError::TooLarge(_)) => "too_large",
        Err(HttpError::Budget(_)) => "budget",
        Err(HttpError::Failed(_)) => "failed",
    }
}

/// Makes one call for a plugin under `grant`, to be answered before `deadline` (the
/// hook's). A tenth of the time left is kept back, so the plugin has time to act on a
/// `timeout` before its own deadline.
pub async fn call(
    grant: &HttpGrant,
    services: &HttpServices,
    dns: &Dns,
    request: HttpRequest,
    deadline: Instant,
) -> Result<HttpResponse, HttpError> {
    let request = sdk_request(request);
    sdk::check_request(&request).map_err(from_sdk)?;
    if request.body.len() > grant.max_request {
        return Err(HttpError::TooLarge(format!(
            "the request body is {} bytes, http_max_request_bytes is {}",
            request.body.len(),
            grant.max_request
        )));
    }
    let target = Target::parse(&request.url).map_err(HttpError::Invalid)?;
    let Some(origin) = target::granted(&grant.allow, &target) else {
        return Err(HttpError::NotAllowed(format!(
            "{} is not in this plugin's http_allow",
            target.origin()
        )));
    };
    let left = deadline.saturating_duration_since(Instant::now());
    let limit = grant.timeout.min(left - left / 10);
    if limit.is_zero() {
        return Err(HttpError::Timeout);
    }
    let exchange = async {
        let addresses = vetted_addresses(origin, &target, services, dns).await?;
        let tls = if target.https {
            Some(services.tls()?)
        } else {
            None
        };
        client::exchange(&addresses, &target, request, tls, grant.max_response).await
    };
    match tokio::time::timeout(limit, exchange).await {
        Ok(result) => result,
        Err(_) => Err(HttpError::Timeout),
    }
}

/// The addresses to connect to, in order: the literal one an entry names, or those the
/// name resolves to that are neither internal nor the gateway's own.
async fn vetted_addresses(
    origin: &HttpOrigin,
    target: &Target,
    services: &HttpServices,
    dns: &Dns,
) -> Result<Vec<SocketAddr>, HttpError> {
    let name = match (&origin.host, &target.host) {
        // Named literally: that address, whatever kind it is, is what was granted.
        (OriginHost::Ip(_), Host::Ip(ip)) => return Ok(vec![SocketAddr::new(*ip, target.port)]),
        (_, Host::Name(name)) => name,
        (_, Host::Ip(_)) => {
            return Err(HttpError::NotAllowed(
                "an address is granted only by an entry naming it".into(),
            ));
        }
    };
    let addresses = resolve(dns, name).await?;
    vet_resolved(name, &addresses, target.port, &services.own)
}

/// Of the addresses a granted name resolved to, those a plugin may reach; `not-allowed`,
/// naming each address and why, when there is none.
fn vet_resolved(
    name: &str,
    addresses: &[IpAddr],
    port: u16,
    own: &OwnAddresses,
) -> Result<Vec<SocketAddr>, HttpError> {
    let mut fit = Vec::new();
    let mut refused = Vec::new();
    for ip in addresses {
        let address = SocketAddr::new(*ip, port);
        let why = vet::internal(*ip)
            .or_else(|| own.contains(address).then_some("the gateway's own address"));
        match why {
            None => fit.push(address),
            Some(why) => refused.push(format!("{ip} ({why})")),
        }
    }
    if fit.is_empty() {
        return Err(HttpError::NotAllowed(format!(
            "{name} resolves only to addresses a name in http_allow does not grant: {}",
            refused.join(", ")
        )));
    }
    Ok(fit)
}

/// The addresses of `name`, through the gateway's resolver (never the system's search
/// list: the name is absolute), at most a few.
async fn resolve(dns: &Dns, name: &str) -> Result<Vec<IpAddr>, HttpError> {
    let Some(resolver) = dns.resolver() else {
        return Err(HttpError::Failed("no DNS resolver configured".into()));
    };
    let fqdn = crate::outbound::lookup::absolute(name);
    match resolver.lookup_ip(fqdn.as_str()).await {
        Ok(lookup) => {
            let addresses: Vec<IpAddr> = lookup.iter().take(16).collect();
            if addresses.is_empty() {
                Err(HttpError::Failed(format!("{name} has no address")))
            } else {
                Ok(addresses)
            }
        }
        Err(e) => Err(HttpError::Failed(format!("{name}: {e}"))),
    }
}

fn sdk_request(request: HttpRequest) -> sdk::HttpRequest {
    sdk::HttpRequest {
        method: match request.method {
            HttpMethod::Get => sdk::Method::Get,
            HttpMethod::Head => sdk::Method::Head,
            HttpMethod::Post => sdk::Method::Post,
            HttpMethod::Put => sdk::Method::Put,
            HttpMethod::Delete => sdk::Method::Delete,
            HttpMethod::Patch => sdk::Method::Patch,
        },
        url: request.url,
        headers: request.headers,
        body: request.body,
    }
}

fn from_sdk(error: sdk::HttpError) -> HttpError {
    match error {
        sdk::HttpError::NotAllowed(why) => HttpError::NotAllowed(why),
        sdk::HttpError::Invalid(why) => HttpError::Invalid(why),
        sdk::HttpError::Timeout => HttpError::Timeout,
        sdk::HttpError::TooLarge(why) => HttpError::TooLarge(why),
        sdk::HttpError::Budget(why) => HttpError::Budget(why),
        sdk::HttpError::Failed(why) => HttpError::Failed(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(allow: &[&str]) -> HttpGrant {
        HttpGrant {
            allow: allow
                .iter()
                .map(|o| HttpOrigin::try_from((*o).to_owned()).unwrap())
                .collect(),
            timeout: Duration::from_secs(2),
            max_request: 16,
            max_response: 64,
            calls_per_hook: 4,
        }
    }

    fn get(url: &str) -> HttpRequest {
        HttpRequest {
            method: HttpMethod::Get,
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    async fn run(grant: &HttpGrant, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let deadline = Instant::now() + Duration::from_secs(3);
        call(
            grant,
            &HttpServices::default(),
            &Dns::default(),
            request,
            deadline,
        )
        .await
    }

    /// A one-shot HTTP server on loopback answering `answer` to the first request.
    async fn server(answer: &'static [u8]) -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let _ = stream.write_all(answer).await;
        });
        addr
    }

    #[tokio::test]
    async fn a_literally_listed_address_is_reached_and_its_answer_read() {
        let addr = server(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-bad: caf\xc3\xa9\r\nx-ok: yes\r\n\r\nhi",
        )
        .await;
        let grant = grant(&[&format!("http://{addr}")]);
        let answer = run(&grant, get(&format!("http://{addr}/x"))).await.unwrap();
        assert_eq!(
            (answer.status, answer.body.as_slice()),
            (200, b"hi".as_slice())
        );
        // A header value that is not printable is dropped; the others pass, lowercase.
        assert!(
            answer
                .headers
                .iter()
                .any(|(n, v)| n == "x-ok" && v == "yes")
        );
        assert!(!answer.headers.iter().any(|(n, _)| n == "x-bad"));
    }

    #[tokio::test]
    async fn what_the_grant_does_not_cover_is_refused_before_anything_is_sent() {
        let grant = grant(&["http://127.0.0.1:8080"]);
        let outside = run(&grant, get("http://127.0.0.1:8081/")).await;
        assert!(
            matches!(outside, Err(HttpError::NotAllowed(_))),
            "{outside:?}"
        );
        let mut big = get("http://127.0.0.1:8080/");
        big.method = HttpMethod::Post;
        big.body = vec![0; 17];
        assert!(matches!(
            run(&grant, big).await,
            Err(HttpError::TooLarge(_))
        ));
        let mut smuggled = get("http://127.0.0.1:8080/");
        smuggled
            .headers
            .push(("x-a".into(), "b\r\nhost: evil".into()));
        assert!(matches!(
            run(&grant, smuggled).await,
            Err(HttpError::Invalid(_))
        ));
        let bad = run(&grant, get("gopher://127.0.0.1:8080/")).await;
        assert!(matches!(bad, Err(HttpError::Invalid(_))), "{bad:?}");
    }

    #[tokio::test]
    async fn an_answer_over_its_bound_is_too_large() {
        let addr = server(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n0123456789012345678901234567890123456789012345678901234567890123456789").await;
        let grant = grant(&[&format!("http://{addr}")]);
        let answer = run(&grant, get(&format!("http://{addr}/"))).await;
        assert!(matches!(answer, Err(HttpError::TooLarge(_))), "{answer:?}");
    }

    #[tokio::test]
    async fn the_hook_deadline_caps_the_call() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepts and never answers.
        tokio::spawn(async move {
            let _held = listener.accept().await;
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let grant = grant(&[&format!("http://{addr}")]);
        let started = Instant::now();
        let deadline = started + Duration::from_millis(300);
        let answer = call(
            &grant,
            &HttpServices::default(),
            &Dns::default(),
            get(&format!("http://{addr}/")),
            deadline,
        )
        .await;
        assert!(matches!(answer, Err(HttpError::Timeout)), "{answer:?}");
        // Answered before the hook's deadline, with time to spare for the plugin.
        assert!(Instant::now() < deadline, "{:?}", started.elapsed());
    }

    #[test]
    fn a_granted_name_reaches_only_public_addresses_that_are_not_the_gateway() {
        let own = OwnAddresses::new(vec!["192.0.2.25:443".parse().unwrap()]);
        let ip = |t: &str| -> IpAddr { t.parse().unwrap() };
        let fit = vet_resolved("a.example", &[ip("10.0.0.1"), ip("192.0.2.7")], 443, &own);
        assert_eq!(
            fit.unwrap(),
            vec!["192.0.2.7:443".parse::<SocketAddr>().unwrap()]
        );
        let Err(HttpError::NotAllowed(why)) =
            vet_resolved("a.example", &[ip("127.0.0.1"), ip("192.0.2.25")], 443, &own)
        else {
            panic!("granted")
        };
        assert!(why.contains("127.0.0.1 (loopback)"), "{why}");
        assert!(
            why.contains("192.0.2.25 (the gateway's own address)"),
            "{why}"
        );
        // The same address on another port is not the gateway's listener.
        assert!(vet_resolved("a.example", &[ip("192.0.2.25")], 8443, &own).is_ok());
    }
}
