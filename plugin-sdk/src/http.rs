//! Outgoing HTTP for plugins: reputation services, ticketing, webhooks.
//!
//! A plugin may reach only the origins (scheme, host, port) its `[[plugin]]` table lists in
//! `http_allow`; nothing is granted by default. Every call is bounded (time, sizes, calls
//! per hook), redirects are never followed, and a failure is an [`HttpError`] the plugin
//! handles like any other answer: it keeps running.
//!
//! ```ignore
//! use tidegate_plugin_sdk::{http, prelude::*};
//!
//! let verdict = match http::get(host, "https://rep.example.net/v1/ip/192.0.2.1") {
//!     Ok(response) if response.status == 200 && response.text() == "bad" => "reject",
//!     Ok(_) => "pass",
//!     Err(e) => { host.log(Level::Warn, "reputation service", &[("error", &e.to_string())]); "pass" }
//! };
//! ```
//!
//! [`check_request`] holds a request to the gateway's rules; the gateway and the native
//! harness ([`crate::testing`]) both apply it, so a request refused in one is refused in
//! the other.

use crate::Host;

/// The HTTP methods a plugin may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
    /// PATCH
    Patch,
}

impl Method {
    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
        }
    }
}

/// An outgoing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// The method.
    pub method: Method,
    /// An absolute `http://` or `https://` URL.
    pub url: String,
    /// Header fields (the gateway sets `host`, `content-length`, `connection` itself).
    pub headers: Vec<(String, String)>,
    /// The body; empty for none.
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// A request without headers or body.
    pub fn new(method: Method, url: &str) -> HttpRequest {
        HttpRequest {
            method,
            url: url.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header field.
    pub fn header(mut self, name: &str, value: &str) -> HttpRequest {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> HttpRequest {
        self.body = body.into();
        self
    }

    /// Sends it through the host.
    pub fn send(&self, host: &dyn Host) -> Result<HttpResponse, HttpError> {
        host.http(self)
    }
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Header fields, names in lowercase.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A response with this status and body and no headers (for tests).
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> HttpResponse {
        HttpResponse {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// The value of the first header field with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced), trimmed of surrounding white space.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_owned()
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Why a call failed; the plugin keeps running in every case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The origin is not granted, or its address may not be reached; nothing was sent.
    NotAllowed(String),
    /// The request is malformed.
    Invalid(String),
    /// No complete answer in time.
    Timeout,
    /// The request or the response is over its size limit.
    TooLarge(String),
    /// Over the calls allowed per hook; nothing was sent.
    Budget(String),
    /// Resolution, connection, TLS or protocol failure.
    Failed(String),
}

impl HttpError {
    /// A short name of the kind: `not-allowed`, `invalid`, `timeout`, `too-large`,
    /// `budget`, `failed`.
    pub fn kind(&self) -> &'static str {
        match self {
            HttpError::NotAllowed(_) => "not-allowed",
            HttpError::Invalid(_) => "invalid",
            HttpError::Timeout => "timeout",
            HttpError::TooLarge(_) => "too-large",
            HttpError::Budget(_) => "budget",
            HttpError::Failed(_) => "failed",
        }
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Timeout => f.write_str("timeout"),
            HttpError::NotAllowed(why)
            | HttpError::Invalid(why)
            | HttpError::TooLarge(why)
            | HttpError::Budget(why)
            | HttpError::Failed(why) => write!(f, "{}: {why}", self.kind()),
        }
    }
}

impl std::error::Error for HttpError {}

/// `GET url`.
pub fn get(host: &dyn Host, url: &str) -> Result<HttpResponse, HttpError> {
    HttpRequest::new(Method::Get, url).send(host)
}

/// `POST url` with a body of type `content_type`.
pub fn post(
    host: &dyn Host,
    url: &str,
    content_type: &str,
    body: impl Into<Vec<u8>>,
) -> Result<HttpResponse, HttpError> {
    HttpRequest::new(Method::Post, url)
        .header("content-type", content_type)
        .body(body)
        .send(host)
}

/// Any request.
pub fn request(host: &dyn Host, request: &HttpRequest) -> Result<HttpResponse, HttpError> {
    host.http(request)
}

/// What one request may carry (the body's bound is the plugin's `http_max_request_bytes`).
pub mod limits {
    /// Header fields in a request or a response.
    pub const MAX_HEADERS: usize = 64;
    /// The longest header field name.
    pub const MAX_HEADER_NAME: usize = 128;
    /// The longest header field value.
    pub const MAX_HEADER_VALUE: usize = 4096;
    /// The longest URL.
    pub const MAX_URL: usize = 4096;
}

/// Header fields the gateway sets itself: a plugin that sets one would be smuggling a
/// second message framing or another target into the request.
const RESERVED: [&str; 8] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
];

/// Whether `name` is an HTTP token (RFC 9110 §5.6.2).
pub fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `value` may be a header field value: visible ASCII, spaces and tabs (no CR, LF
/// or NUL, so nothing can end the field early), no surrounding white space.
pub fn is_field_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        && value.trim() == value
}

/// Checks a request's URL length and header fields (names, values, count, the reserved
/// ones); the URL's syntax and origin are checked by the gateway against the grant.
pub fn check_request(request: &HttpRequest) -> Result<(), HttpError> {
    use limits::*;
    let quoted = crate::check::quoted;
    if request.url.len() > MAX_URL {
        return Err(HttpError::Invalid(format!(
            "the URL is over {MAX_URL} bytes"
        )));
    }
    if request.headers.len() > MAX_HEADERS {
        return Err(HttpError::Invalid(format!(
            "{} header fields, at most {MAX_HEADERS}",
            request.headers.len()
        )));
    }
    for (name, value) in &request.headers {
        if name.len() > MAX_HEADER_NAME || !is_token(name) {
            return Err(HttpError::Invalid(format!(
                "header name `{}` is not an HTTP token of at most {MAX_HEADER_NAME} bytes",
                quoted(name)
            )));
        }
        if RESERVED.iter().any(|r| name.eq_ignore_ascii_case(r)) {
            return Err(HttpError::Invalid(format!(
                "header `{name}` is set by the gateway"
            )));
        }
        if value.len() > MAX_HEADER_VALUE || !is_field_value(value) {
            return Err(HttpError::Invalid(format!(
                "header `{name}`: the value `{}` is not printable ASCII of at most {MAX_HEADER_VALUE} bytes",
                quoted(value)
            )));
        }
    }
    if matches!(request.method, Method::Get | Method::Head) && !request.body.is_empty() {
        return Err(HttpError::Invalid(format!(
            "{} with a body",
            request.method.as_str()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_that_could_split_the_request_are_refused() {
        let ok = HttpRequest::new(Method::Get, "https://a.example").header("accept", "text/plain");
        assert_eq!(check_request(&ok), Ok(()));
        for (name, value) in [
            ("x-a", "one\r\nHost: evil.example"),
            ("x-a\r\nx-b", "v"),
            ("bad name", "v"),
            ("", "v"),
            ("Host", "evil.example"),
            ("Transfer-Encoding", "chunked"),
            ("x-a", "nul\0"),
        ] {
            let request = HttpRequest::new(Method::Get, "https://a.example").header(name, value);
            assert!(
                matches!(check_request(&request), Err(HttpError::Invalid(_))),
                "{name:?}: {value:?}"
            );
        }
        let body = HttpRequest::new(Method::Get, "https://a.example").body("x");
        assert!(check_request(&body).is_err());
    }

    #[test]
    fn the_test_host_answers_what_the_test_set_and_refuses_the_rest() {
        use crate::testing::TestHost;
        let host = TestHost::new().with_http(
            Method::Get,
            "https://rep.example.test/ip/192.0.2.1",
            Ok(HttpResponse::new(200, "listed")),
        );
        let host: &dyn Host = &host;
        let answer = get(host, "https://rep.example.test/ip/192.0.2.1").unwrap();
        assert_eq!((answer.status, answer.text().as_str()), (200, "listed"));
        assert!(matches!(
            get(host, "https://elsewhere.example.test/"),
            Err(HttpError::NotAllowed(_))
        ));
        assert!(matches!(
            post(
                host,
                "https://rep.example.test/ip/192.0.2.1",
                "text/plain",
                "x"
            ),
            Err(HttpError::NotAllowed(_))
        ));
    }
}
