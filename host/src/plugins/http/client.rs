//! One HTTP/1.1 exchange on one connection to an address already vetted: connect, TLS
//! when the scheme says so (the Mozilla roots, the URL's name checked), the request built
//! from the parsed target, the answer's head and body read within their bounds. What the
//! server sends is hostile input: header fields that are not printable are dropped, and
//! the body is cut off at its bound with `too-large`. Redirects are answers like any
//! other; nothing here follows them.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tidegate_plugin_sdk::http::{self as sdk, is_field_value, limits};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::super::bindings::tidegate::plugin::types::{HttpError, HttpResponse};
use super::target::{Host, Target};

/// The largest response head (status line and header fields) read.
const MAX_HEAD: usize = 64 * 1024;

/// Addresses tried in turn when a connection fails.
const MAX_ADDRESSES: usize = 3;

/// Sends `request` to the first of `addresses` that takes a connection and reads the
/// answer (the caller bounds the time).
pub async fn exchange(
    addresses: &[SocketAddr],
    target: &Target,
    request: sdk::HttpRequest,
    tls: Option<Arc<rustls::ClientConfig>>,
    max_body: usize,
) -> Result<HttpResponse, HttpError> {
    let mut tcp = Err(HttpError::Failed("no address".into()));
    for address in addresses.iter().take(MAX_ADDRESSES) {
        tcp = TcpStream::connect(address)
            .await
            .map_err(|e| HttpError::Failed(format!("connect to {address}: {e}")));
        if tcp.is_ok() {
            break;
        }
    }
    let tcp = tcp?;
    let _ = tcp.set_nodelay(true);
    match tls {
        None => over(tcp, target, request, max_body).await,
        Some(config) => {
            let name = match &target.host {
                Host::Name(name) => rustls_pki_types::ServerName::try_from(name.clone())
                    .map_err(|e| HttpError::Invalid(format!("TLS name {name}: {e}")))?,
                Host::Ip(ip) => rustls_pki_types::ServerName::IpAddress((*ip).into()),
            };
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| HttpError::Failed(format!("TLS with {}: {e}", target.origin())))?;
            over(stream, target, request, max_body).await
        }
    }
}

async fn over<S>(
    stream: S,
    target: &Target,
    request: sdk::HttpRequest,
    max_body: usize,
) -> Result<HttpResponse, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        HttpError::Failed(format!("{what} {}: {e}", target.origin()))
    };
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_headers(limits::MAX_HEADERS)
        .max_header_size(MAX_HEAD)
        .handshake::<_, Full<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| failed("HTTP with", &e))?;
    let mut builder = hyper::Request::builder()
        .method(request.method.as_str())
        .uri(target.path.as_str())
        .header(hyper::header::HOST, target.authority())
        // One exchange per connection: the server may close it after the answer.
        .header(hyper::header::CONNECTION, "close");
    if !request
        .headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("user-agent"))
    {
        builder = builder.header(hyper::header::USER_AGENT, "tidegate-plugin");
    }
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let wire = builder
        .body(Full::new(Bytes::from(request.body)))
        .map_err(|e| HttpError::Invalid(format!("request: {e}")))?;
    let answer = async {
        let response = sender
            .send_request(wire)
            .await
            .map_err(|e| failed("no answer from", &e))?;
        let status = response.status().as_u16();
        let announced = response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > max_body as u64) {
            // Not one byte more than allowed is read when the server says in advance.
            return Err(too_large(max_body));
        }
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .filter_map(|(name, value)| {
                let value = value.to_str().ok()?.trim();
                (value.len() <= limits::MAX_HEADER_VALUE && is_field_value(value))
                    .then(|| (name.as_str().to_owned(), value.to_owned()))
            })
            .collect();
        let body = Limited::new(response.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    too_large(max_body)
                } else {
                    failed("reading the answer of", &e)
                }
            })?
            .to_bytes()
            .to_vec();
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    };
    // The connection is driven here, not in a task of its own: when the answer is read
    // (or the caller's deadline drops this future) the connection goes with it.
    let mut connection = std::pin::pin!(connection);
    let mut answer = std::pin::pin!(answer);
    tokio::select! {
        biased;
        result = &mut answer => result,
        _ = &mut connection => answer.await,
    }
}

fn too_large(max_body: usize) -> HttpError {
    HttpError::TooLarge(format!(
        "the response body is over http_max_response_bytes ({max_body})"
    ))
}
