//! A plugin's outgoing HTTP (`http-call`) reaches only what its `http_allow` grants. The
//! test runs HTTP servers on loopback and the test plugin fetches a URL at RCPT TO whose
//! answer decides the recipient: an allowed endpoint's `accept` or `reject` decides; a
//! URL outside the list, a plugin with no grant, and a name that resolves to loopback
//! without the address being listed are refused before anything is sent (the servers see
//! no request); a slow server is a `timeout` within `http_timeout_ms` and the plugin goes
//! on serving the session; an oversized answer is `too-large`; a redirect is handed back,
//! not followed; a call over `http_max_calls_per_hook` is refused; `https` is TLS with the
//! certificate verified (a self-signed server is `failed`). The calls are counted by
//! outcome, and `tidegate check` refuses a bad allow-list entry by file, line and key. A
//! component built against 0.2.0 before `http-call` existed loads and works beside them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidegate_e2e::{
    DnsServer, Gateway, GatewayConfig, PluginEntry, SmtpClient, binary, self_signed,
};

/// An HTTP/1.1 server on loopback that answers by path and remembers every request line
/// (with its `Host`) it was sent; `/redirect` points at `location`.
struct HttpServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl HttpServer {
    fn start(location: &str) -> HttpServer {
        let location: Arc<str> = location.into();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let log = Arc::clone(&log);
                let location = Arc::clone(&location);
                std::thread::spawn(move || serve(stream, &log, &location));
            }
        });
        HttpServer { addr, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, log: &Mutex<Vec<String>>, location: &str) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut host = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("host:") {
            host = value.trim().to_owned();
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    log.lock()
        .unwrap()
        .push(format!("{} host={host}", request_line.trim_end()));
    let mut stream = stream;
    let reply = |stream: &mut TcpStream, status: &str, extra: &str, body: &[u8]| {
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(body);
    };
    match path.as_str() {
        "/accept" | "/byname" | "/outside" | "/nogrant" | "/budget" => {
            reply(&mut stream, "200 OK", "", b"accept")
        }
        "/reject" => reply(&mut stream, "200 OK", "", b"reject\n"),
        "/slow" => {
            std::thread::sleep(Duration::from_secs(5));
            reply(&mut stream, "200 OK", "", b"accept");
        }
        // Announced: refused from the head.
        "/big" => reply(&mut stream, "200 OK", "", &vec![b'x'; 1024 * 1024]),
        // Not announced: the body ends when the connection does; reading stops at the bound.
        "/flood" => {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");
            for _ in 0..256 {
                if stream.write_all(&[b'y'; 4096]).is_err() {
                    break;
                }
            }
        }
        "/redirect" => reply(
            &mut stream,
            "302 Found",
            &format!("location: {location}\r\n"),
            b"",
        ),
        _ => reply(&mut stream, "404 Not Found", "", b"nothing here"),
    }
    let _ = stream.flush();
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
}

/// A TLS server on loopback with a self-signed certificate: it counts handshakes that
/// completed (none should, as no public root vouches for it).
fn start_tls_server(dir: &std::path::Path) -> (SocketAddr, Arc<Mutex<u32>>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = self_signed(dir, "https", "rep.example.test", false);
    let chain = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let completed = Arc::new(Mutex::new(0));
    let count = Arc::clone(&completed);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let Ok(mut connection) = rustls::ServerConnection::new(Arc::clone(&config)) else {
                continue;
            };
            while connection.is_handshaking() {
                if connection.complete_io(&mut stream).is_err() {
                    break;
                }
            }
            if !connection.is_handshaking() {
                *count.lock().unwrap() += 1;
            }
        }
    });
    (addr, completed)
}

fn rcpt(client: &mut SmtpClient, local: &str) -> (u16, String) {
    let reply = client.command(&format!("RCPT TO:<{local}@example.test>"));
    (reply.code, reply.text())
}

#[test]
fn a_plugin_reaches_only_the_http_endpoints_it_is_granted() {
    let outside = HttpServer::start("");
    let granted = HttpServer::start(&format!("http://{}/accept", outside.addr));
    let port = granted.addr.port();
    let certs = tempfile::tempdir().unwrap();
    let (https, handshakes) = start_tls_server(certs.path());
    let dns = DnsServer::start(&["example.test"], &[("rep.example.test", "127.0.0.1")]);
    let origin = format!("http://127.0.0.1:{port}");
    // Each triggered plugin speaks for one recipient (the others pass it on); `granted`
    // decides the rest.
    let triggered = |name: &str, url: String, allow: Option<String>| {
        let mut entry = PluginEntry::new(name, "test_plugin.wasm")
            .config(r#"mode = "http""#)
            .config(&format!("trigger = \"{name}@example.test\""))
            .config(&format!("http_url = {url:?}"));
        if let Some(allow) = allow {
            entry = entry.setting(&format!("http_allow = [{allow:?}]"));
        }
        entry
    };
    let config = GatewayConfig {
        top: vec![("admin".into(), r#"{ address = "127.0.0.1:0" }"#.into())],
        plugins: vec![
            triggered(
                "outside",
                format!("http://127.0.0.1:{}/outside", outside.addr.port()),
                Some(origin.clone()),
            ),
            triggered("nogrant", format!("{origin}/nogrant"), None),
            triggered(
                "byname",
                format!("http://rep.example.test:{port}/byname"),
                Some(format!("http://rep.example.test:{port}")),
            ),
            triggered(
                "tls",
                format!("https://{https}/accept"),
                Some(format!("https://{https}")),
            ),
            triggered("budget", format!("{origin}/budget"), Some(origin.clone()))
                .setting("http_max_calls_per_hook = 2")
                .config("http_repeat = 3"),
            // Built before `http-call` was added to the contract (committed as built).
            PluginEntry::new(
                "old",
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/fixtures/contract-0.2.0-before-http/test_plugin.wasm"
                ),
            )
            .config(r#"mode = "reject""#)
            .config(r#"label = "old""#)
            .config(r#"trigger = "old@example.test""#),
            PluginEntry::new("granted", "test_plugin.wasm")
                .setting(&format!(
                    "http_allow = [{origin:?}, \"https://*.example.net\"]"
                ))
                .setting("http_timeout_ms = 500")
                .setting("http_max_response_bytes = 4096")
                .config(r#"mode = "http""#)
                .config(&format!("http_url = \"{origin}/{{rcpt}}\"")),
        ],
        ..GatewayConfig::default()
    }
    .dns(dns.addr(), 2000);
    let gateway = Gateway::start_with(&config);
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<sender@example.test>")
        .expect_code(250);

    // The allowed endpoint's answer decides, and the request went where it was granted.
    assert_eq!(rcpt(&mut client, "accept").0, 250);
    let (code, text) = rcpt(&mut client, "reject");
    assert_eq!(code, 550, "{text}");
    assert!(text.contains("Rejected by the HTTP service"), "{text}");
    let seen = granted.seen();
    assert!(
        seen.iter()
            .any(|r| r == &format!("GET /accept HTTP/1.1 host=127.0.0.1:{port}")),
        "{seen:?}"
    );

    // The plugin built before http-call is in the chain and decides as it did.
    let (code, text) = rcpt(&mut client, "old");
    assert_eq!((code, text.as_str()), (550, "5.7.1 Rejected by old"));

    // Outside the list, without a grant, and a name resolving to loopback that is not
    // listed by address: refused, and nothing reaches any server.
    for (local, why) in [
        ("outside", "is not in this plugin's http_allow"),
        ("nogrant", "has no http_allow"),
        ("byname", "127.0.0.1 (loopback)"),
    ] {
        let (code, text) = rcpt(&mut client, local);
        assert_eq!(code, 451, "{local}: {text}");
        assert!(text.contains("http error not-allowed"), "{local}: {text}");
        assert!(text.contains(why), "{local}: {text}");
    }
    assert!(outside.seen().is_empty(), "{:?}", outside.seen());
    let seen = granted.seen();
    assert!(
        !seen
            .iter()
            .any(|r| r.contains("/byname") || r.contains("/nogrant")),
        "{seen:?}"
    );

    // Two calls per hook: the third is refused unsent.
    let (code, text) = rcpt(&mut client, "budget");
    assert_eq!(code, 451, "{text}");
    assert!(text.contains("http error budget"), "{text}");
    let budget = granted
        .seen()
        .iter()
        .filter(|r| r.contains("/budget"))
        .count();
    assert_eq!(budget, 2);

    // https is TLS, verified against the public roots: a self-signed server fails.
    let (code, text) = rcpt(&mut client, "tls");
    assert_eq!(code, 451, "{text}");
    assert!(
        text.contains("http error failed") && text.contains("TLS"),
        "{text}"
    );
    assert_eq!(*handshakes.lock().unwrap(), 0);

    // A slow server: `timeout` within http_timeout_ms (500 ms, far below the server's
    // five seconds and the hook's three), and the plugin serves the next recipient.
    let started = Instant::now();
    let (code, text) = rcpt(&mut client, "slow");
    let took = started.elapsed();
    assert_eq!(code, 451, "{text}");
    assert!(text.contains("http error timeout"), "{text}");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    assert_eq!(rcpt(&mut client, "accept").0, 250);

    // Oversized answers, announced or not: `too-large`.
    for local in ["big", "flood"] {
        let (code, text) = rcpt(&mut client, local);
        assert_eq!(code, 451, "{local}: {text}");
        assert!(text.contains("http error too-large"), "{local}: {text}");
    }

    // A redirect comes back as it is; the server it points at is never asked.
    let (code, text) = rcpt(&mut client, "redirect");
    assert_eq!(code, 451, "{text}");
    assert!(text.contains("http status 302"), "{text}");
    assert!(outside.seen().is_empty(), "{:?}", outside.seen());
    client.command("QUIT");

    let (_, metrics) = gateway.admin_get("/metrics");
    for (plugin, result) in [
        ("granted", "ok"),
        ("granted", "timeout"),
        ("granted", "too_large"),
        ("outside", "not_allowed"),
        ("nogrant", "not_allowed"),
        ("byname", "not_allowed"),
        ("budget", "ok"),
        ("budget", "budget"),
        ("tls", "failed"),
    ] {
        let needle = format!("plugin_http_calls_total{{plugin=\"{plugin}\",result=\"{result}\"}}");
        assert!(metrics.contains(&needle), "{needle} missing:\n{metrics}");
    }

    // `tidegate check` names a bad entry by file, line and key.
    let text = std::fs::read_to_string(gateway.config_path()).unwrap();
    let broken = text.replacen(
        &format!("http_allow = [{origin:?},"),
        "http_allow = [\"ftp://127.0.0.1\",",
        1,
    );
    assert_ne!(broken, text);
    let path = gateway.dir().join("broken.toml");
    std::fs::write(&path, &broken).unwrap();
    let line = broken
        .lines()
        .position(|l| l.contains("ftp://"))
        .map(|n| n + 1)
        .unwrap();
    let output = std::process::Command::new(binary())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("broken.toml:{line}"))
            && stderr.contains("http_allow")
            && stderr.contains("the scheme is http or https"),
        "{stderr}"
    );
}
