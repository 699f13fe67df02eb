//! The end-to-end test harness: starts the real `tidegate` binary on loopback ports it
//! picks itself, and speaks SMTP to it over TCP.
//!
//! Nothing here is mocked: [`Gateway`] runs the binary built from `host/` with a
//! configuration written into a temporary directory, learns the bound ports from its log,
//! and reads the spool through `tidegate spool list`. [`SmtpClient`] is a deliberately
//! plain, blocking SMTP client that sends exactly the bytes a test gives it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod redis;
pub mod signed_zone;
pub mod sink;

/// How long the harness waits for the gateway to do anything before failing the test.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The path of the `tidegate` binary under test.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TIDEGATE_BIN") {
        return PathBuf::from(path);
    }
    // target/<profile>/deps/<test-binary> → target/<profile>/tidegate
    let exe = std::env::current_exe().expect("current test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let path = profile_dir.join("tidegate");
    assert!(
        path.exists(),
        "{} not found: build it first (`cargo build -p tidegate`, which scripts/test does) or set TIDEGATE_BIN",
        path.display()
    );
    path
}

/// A configuration for a test gateway; [`Default`] is the documented edge-relay shape with
/// one listener on an ephemeral loopback port.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// `hostname`
    pub hostname: String,
    /// `(name, address)` of each listener.
    pub listeners: Vec<(String, String)>,
    /// `[relay] accept_domains`
    pub accept_domains: Vec<String>,
    /// `[relay] relay_networks`
    pub relay_networks: Vec<String>,
    /// Extra `key = value` lines for `[limits]`.
    pub limits: Vec<(String, String)>,
    /// Extra `key = value` lines for `[smtp]`.
    pub smtp: Vec<(String, String)>,
    /// Extra top-level `key = value` lines.
    pub top: Vec<(String, String)>,
    /// `[[plugin]]` tables: (name, component file name in `plugins/dist`, extra TOML lines
    /// such as `on_error = "continue"` and `[plugin.config]` contents).
    pub plugins: Vec<PluginEntry>,
    /// `[[route]]` entries as inline tables.
    pub routes: Vec<String>,
    /// `[queue]` keys. By default the queue is on hold (`hold = true`), so tests of the
    /// inbound side find their messages in the spool; adding a route releases it.
    pub queue: Vec<(String, String)>,
}

/// One `[[plugin]]` of a test configuration.
#[derive(Debug, Clone)]
pub struct PluginEntry {
    /// The plugin's name.
    pub name: String,
    /// The component: a file name in `plugins/dist/`, or an absolute path.
    pub file: String,
    /// Extra `key = value` lines of the `[[plugin]]` table.
    pub settings: Vec<String>,
    /// `key = value` lines of its `[plugin.config]` table.
    pub config: Vec<String>,
}

impl PluginEntry {
    /// The shipped content filter, named `content`, set to quarantine (rule
    /// `suspicious`, score 6.0) every message whose subject contains `text` and to let
    /// everything else through.
    pub fn quarantine_on_subject(text: &str) -> PluginEntry {
        PluginEntry::new("content", "content_filter.wasm")
            .config("reject_threshold = 100.0")
            .config("quarantine_threshold = 5.0")
            .config("[[plugin.config.rules]]")
            .config(r#"name = "suspicious""#)
            .config(r#"header = "subject""#)
            .config(&format!("contains = {text:?}"))
            .config("score = 6.0")
    }

    /// A plugin entry with no extra settings.
    pub fn new(name: &str, file: &str) -> PluginEntry {
        PluginEntry {
            name: name.into(),
            file: file.into(),
            settings: Vec::new(),
            config: Vec::new(),
        }
    }

    /// Adds a `key = value` line to the `[[plugin]]` table.
    pub fn setting(mut self, line: &str) -> PluginEntry {
        self.settings.push(line.into());
        self
    }

    /// Adds a `key = value` line to `[plugin.config]`.
    pub fn config(mut self, line: &str) -> PluginEntry {
        self.config.push(line.into());
        self
    }
}

/// Collects a child's standard error, line by line, into a shared string (echoed with a
/// `[name]` prefix when `TIDEGATE_TEST_LOG` is set), so tests can wait for log lines.
fn capture_stderr(child: &mut Child, name: &'static str) -> Arc<Mutex<String>> {
    let stderr = child.stderr.take().expect("piped stderr");
    let log = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if std::env::var_os("TIDEGATE_TEST_LOG").is_some() {
                eprintln!("[{name}] {line}");
            }
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    log
}

/// Writes a self-signed certificate for `name` with `tidegate gen-cert` into
/// `dir/<stem>.pem` and `dir/<stem>.key` (overwriting with `force`); returns both paths.
pub fn self_signed(dir: &Path, stem: &str, name: &str, force: bool) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}.key"));
    let mut command = Command::new(binary());
    command
        .args(["gen-cert", "--name", name, "--cert"])
        .arg(&cert)
        .arg("--key")
        .arg(&key);
    if force {
        command.arg("--force");
    }
    let output = command.output().expect("run tidegate gen-cert");
    assert!(
        output.status.success(),
        "gen-cert failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (cert, key)
}

/// The DER of the first certificate in a PEM file.
pub fn pem_certificate_der(path: &Path) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_file(path)
        .expect("a PEM certificate")
        .to_vec()
}

/// The directory holding built plugin components (`scripts/build-plugins` fills it).
pub fn plugin_dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist")
}

/// The precompiled-plugin cache shared by every test, so each component is compiled once
/// per test run rather than once per gateway.
pub fn shared_plugin_cache() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-plugin-cache")
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            hostname: "relay.example.test".into(),
            listeners: vec![("mx".into(), "127.0.0.1:0".into())],
            accept_domains: vec!["example.test".into()],
            relay_networks: vec!["127.0.0.1/32".into()],
            limits: Vec::new(),
            smtp: Vec::new(),
            top: Vec::new(),
            plugins: Vec::new(),
            routes: Vec::new(),
            queue: vec![("hold".into(), "true".into())],
        }
    }
}

impl GatewayConfig {
    /// Sets a `[limits]` key.
    pub fn limit(mut self, key: &str, value: impl ToString) -> Self {
        self.limits.push((key.into(), value.to_string()));
        self
    }

    /// Sets an `[smtp]` key (the value is written as TOML, so quote strings).
    pub fn smtp(mut self, key: &str, value: &str) -> Self {
        self.smtp.push((key.into(), value.into()));
        self
    }

    /// Sets a top-level key (the value is written as TOML, so quote strings).
    pub fn top(mut self, key: &str, value: &str) -> Self {
        self.top.push((key.into(), value.into()));
        self
    }

    /// The TOML text.
    pub fn render(&self) -> String {
        let quote_list = |items: &[String]| {
            items
                .iter()
                .map(|i| format!("{i:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut text = format!("hostname = {:?}\n", self.hostname);
        for (key, value) in &self.top {
            text.push_str(&format!("{key} = {value}\n"));
        }
        if !self.routes.is_empty() {
            text.push_str(&format!("route = [{}]\n", self.routes.join(", ")));
        }
        let queue: Vec<String> = self
            .queue
            .iter()
            .map(|(k, v)| format!("{k} = {v}"))
            .collect();
        text.push_str(&format!("queue = {{ {} }}\n", queue.join(", ")));
        for (name, address) in &self.listeners {
            text.push_str(&format!(
                "\n[[listener]]\nname = {name:?}\naddress = {address:?}\nprotocol = \"smtp\"\nverify = []\n"
            ));
        }
        text.push_str("\n[spool]\npath = \"spool\"\n");
        text.push_str(&format!(
            "\n[relay]\naccept_domains = [{}]\nrelay_networks = [{}]\n",
            quote_list(&self.accept_domains),
            quote_list(&self.relay_networks)
        ));
        text.push_str("\n[limits]\n");
        for (key, value) in &self.limits {
            text.push_str(&format!("{key} = {value}\n"));
        }
        // Clients' reverse DNS names would be asked of the system's resolver: tests that
        // want them serve them (dnsmasq) and turn this on.
        text.push_str("\n[smtp]\n");
        if !self.smtp.iter().any(|(key, _)| key == "reverse_dns") {
            text.push_str("reverse_dns = false\n");
        }
        for (key, value) in &self.smtp {
            text.push_str(&format!("{key} = {value}\n"));
        }
        text.push_str(&format!(
            "\n[plugins]\ncache_dir = {:?}\n",
            shared_plugin_cache()
        ));
        for plugin in &self.plugins {
            let path = if Path::new(&plugin.file).is_absolute() {
                PathBuf::from(&plugin.file)
            } else {
                let path = plugin_dist().join(&plugin.file);
                assert!(
                    path.exists(),
                    "{} missing: run scripts/build-plugins",
                    path.display()
                );
                path
            };
            text.push_str(&format!(
                "\n[[plugin]]\nname = {:?}\npath = {:?}\n",
                plugin.name, path
            ));
            for line in &plugin.settings {
                text.push_str(&format!("{line}\n"));
            }
            text.push_str("[plugin.config]\n");
            for line in &plugin.config {
                text.push_str(&format!("{line}\n"));
            }
        }
        text
    }
}

/// A running `tidegate serve`.
pub struct Gateway {
    child: Option<Child>,
    dir: tempfile::TempDir,
    log: Arc<Mutex<String>>,
    addresses: HashMap<String, SocketAddr>,
}

impl Gateway {
    /// Starts a gateway with the default configuration.
    pub fn start() -> Gateway {
        Gateway::start_with(&GatewayConfig::default())
    }

    /// Starts a gateway with `config` in a fresh directory.
    pub fn start_with(config: &GatewayConfig) -> Gateway {
        Gateway::start_with_text(&config.render(), config.listeners.len())
    }

    /// Starts a gateway from configuration text with `listeners` listeners.
    pub fn start_with_text(text: &str, listeners: usize) -> Gateway {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::write(dir.path().join("tidegate.toml"), text).expect("write config");
        let mut gateway = Gateway {
            child: None,
            dir,
            log: Arc::new(Mutex::new(String::new())),
            addresses: HashMap::new(),
        };
        gateway.launch(listeners);
        gateway
    }

    fn launch(&mut self, listeners: usize) {
        let mut child = Command::new(binary())
            .arg("serve")
            .arg("-c")
            .arg(self.config_path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tidegate");
        self.log = capture_stderr(&mut child, "tidegate");
        self.child = Some(child);
        self.addresses.clear();
        let deadline = Instant::now() + PATIENCE;
        while self.addresses.len() < listeners {
            assert!(
                Instant::now() < deadline,
                "tidegate did not start listening:\n{}",
                self.log()
            );
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("tidegate exited with {status}:\n{}", self.log());
            }
            for line in self.log_now().lines() {
                if let Some((name, address)) = parse_listening(line) {
                    self.addresses.insert(name, address);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The listeners come up before the spool's messages are read back (in the
        // background); tests look at a queue that has them all.
        self.wait_for_log("spool recovered");
    }

    /// The directory holding the configuration and the spool.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("tidegate.toml")
    }

    /// The spool directory.
    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// The address of the first listener.
    pub fn addr(&self) -> SocketAddr {
        self.addr_of("mx")
    }

    /// The address of the named listener.
    pub fn addr_of(&self, name: &str) -> SocketAddr {
        *self
            .addresses
            .get(name)
            .unwrap_or_else(|| panic!("no listener {name}: {:?}", self.addresses))
    }

    /// The admin listener's address (when `[admin] address` is configured), from the log.
    pub fn admin_addr(&self) -> SocketAddr {
        self.wait_for_log("admin listening");
        self.log()
            .lines()
            .filter(|l| l.contains("admin listening"))
            .find_map(|l| {
                if l.starts_with('{') {
                    let value: serde_json::Value = serde_json::from_str(l).ok()?;
                    return value["address"].as_str()?.parse().ok();
                }
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("address="))
                    .and_then(|a| a.parse().ok())
            })
            .expect("admin address in the log")
    }

    /// GETs a path from the admin listener; returns (status line, body).
    pub fn admin_get(&self, path: &str) -> (String, String) {
        let mut stream =
            TcpStream::connect_timeout(&self.admin_addr(), PATIENCE).expect("connect admin");
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        )
        .expect("send request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read response");
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        (
            head.lines().next().unwrap_or_default().to_owned(),
            body.to_owned(),
        )
    }

    /// Runs a `tidegate` command that talks to this gateway's admin API: `args` (e.g.
    /// `["queue", "summary", "--json"]`) with `-c` and `--admin` added.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let admin = self.admin_addr().to_string();
        let config = self.config_path();
        Command::new(binary())
            .args(args)
            .arg("-c")
            .arg(&config)
            .arg("--admin")
            .arg(&admin)
            .output()
            .expect("run tidegate")
    }

    /// [`cli`](Self::cli) that must succeed; its standard output.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(
            output.status.success(),
            "tidegate {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// [`cli_ok`](Self::cli_ok) of a `--json` command, parsed.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut with_json = args.to_vec();
        with_json.push("--json");
        let out = self.cli_ok(&with_json);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    /// Everything the gateway has logged so far. The gateway writes its log from a buffer
    /// (every 20 ms when it is busy), so this first waits that long: a line logged before
    /// the call is in what it returns.
    pub fn log(&self) -> String {
        std::thread::sleep(Duration::from_millis(30));
        self.log_now()
    }

    /// What has reached the log's pipe so far, without waiting.
    fn log_now(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.log_now().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "log never said {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal to the gateway.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// `kill -9`: the gateway gets no chance to clean up.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit();
    }

    /// Waits for the process to end and returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + PATIENCE * 2;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("tidegate did not exit:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the gateway again on the same directory (after [`kill9`](Self::kill9) or an
    /// exit). Listener ports are new unless the configuration fixed them.
    pub fn restart(&mut self, listeners: usize) {
        assert!(self.child.is_none(), "still running");
        self.launch(listeners);
    }

    /// The messages in the spool, as `tidegate spool list` reports them.
    pub fn spool_list(&self) -> Vec<SpoolEntry> {
        let output = Command::new(binary())
            .args(["spool", "list", "-c"])
            .arg(self.config_path())
            .output()
            .expect("run tidegate spool list");
        assert!(
            output.status.success(),
            "spool list failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| {
                let mut fields = line.splitn(4, ' ');
                let mut next = || fields.next().unwrap_or_default().to_owned();
                let (id, size, sender, recipients) = (next(), next(), next(), next());
                SpoolEntry {
                    id,
                    size: size.parse().unwrap_or(0),
                    sender: sender.trim_matches(['<', '>']).to_owned(),
                    recipients: recipients
                        .split(',')
                        .filter(|r| !r.is_empty())
                        .map(str::to_owned)
                        .collect(),
                }
            })
            .collect()
    }

    /// The stored message octets of a spooled message (the file without its envelope
    /// record, whose length `spool list` reports).
    pub fn spool_message(&self, id: &str) -> Vec<u8> {
        let entry = self
            .spool_list()
            .into_iter()
            .find(|e| e.id == id)
            .unwrap_or_else(|| panic!("{id} is not in the spool"));
        let bytes = std::fs::read(self.spool_dir().join("msg").join(id)).expect("read spool file");
        bytes[..entry.size as usize].to_vec()
    }

    /// A spooled message as it will be delivered (`tidegate spool show`: plugin header
    /// edits applied).
    pub fn spool_show(&self, id: &str) -> Vec<u8> {
        let output = Command::new(binary())
            .args(["spool", "show", "-c"])
            .arg(self.config_path())
            .arg(id)
            .output()
            .expect("run tidegate spool show");
        assert!(
            output.status.success(),
            "spool show failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    /// The envelope record of a spooled message as JSON (`tags`, `quarantine`, `recipients`,
    /// ...): the record between the message octets and the 16-octet footer (record length
    /// as u64 little-endian, then `TGSPOOL1`), as documented in `host/src/spool/mod.rs`.
    pub fn spool_envelope(&self, id: &str) -> serde_json::Value {
        let path = self.spool_dir().join("msg").join(id);
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{id} is not in the spool ({}): {e}", path.display()));
        assert!(
            bytes.len() >= 16 && bytes.ends_with(b"TGSPOOL1"),
            "{id} has no TGSPOOL1 footer"
        );
        let footer = bytes.len() - 16;
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[footer..footer + 8]);
        let len = usize::try_from(u64::from_le_bytes(len)).expect("record length");
        assert!(len <= footer, "{id}: record length {len} beyond the file");
        serde_json::from_slice(&bytes[footer - len..footer])
            .unwrap_or_else(|e| panic!("{id}: envelope record is not JSON: {e}"))
    }

    /// Names of the files in `spool/tmp`.
    pub fn spool_partials(&self) -> Vec<String> {
        std::fs::read_dir(self.spool_dir().join("tmp"))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn parse_listening(line: &str) -> Option<(String, SocketAddr)> {
    if line.starts_with('{') {
        // `[log] format = "json"`.
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        if value["message"] != "listening" {
            return None;
        }
        let name = value["listener"].as_str()?.to_owned();
        let address = value["address"].as_str()?.parse().ok()?;
        return Some((name, address));
    }
    if !line.contains(" listening ") {
        return None;
    }
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(key))
            .map(str::to_owned)
    };
    let name = field("listener=")?;
    let address = field("address=")?.parse().ok()?;
    Some((name, address))
}

/// One line of `tidegate spool list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolEntry {
    /// The queue ID.
    pub id: String,
    /// The size of the stored message octets.
    pub size: u64,
    /// The sender, empty for `<>`.
    pub sender: String,
    /// The recipients.
    pub recipients: Vec<String>,
}

/// A reply as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The basic code.
    pub code: u16,
    /// The text of each line, after the code and separator.
    pub lines: Vec<String>,
}

impl Reply {
    /// The whole text, lines joined with `\n`.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// The enhanced status code at the start of the first line, if any.
    pub fn enhanced(&self) -> Option<&str> {
        let first = self.lines.first()?.split(' ').next()?;
        let parts: Vec<&str> = first.split('.').collect();
        (parts.len() == 3 && parts.iter().all(|p| p.parse::<u16>().is_ok())).then_some(first)
    }

    /// Asserts the code and enhanced code, e.g. `reply.expect(250, "2.0.0")`.
    #[track_caller]
    pub fn expect(&self, code: u16, enhanced: &str) -> &Self {
        assert_eq!(
            (self.code, self.enhanced()),
            (code, Some(enhanced)),
            "unexpected reply {self:?}"
        );
        self
    }

    /// Asserts the basic code only (for replies without an enhanced code, like 334).
    #[track_caller]
    pub fn expect_code(&self, code: u16) -> &Self {
        assert_eq!(self.code, code, "unexpected reply {self:?}");
        self
    }

    /// The queue ID of a `250 ... queued as ID` reply.
    pub fn queue_id(&self) -> Option<String> {
        self.text()
            .split("queued as ")
            .nth(1)
            .map(|id| id.trim().to_owned())
    }
}

/// The client's stream: plain TCP, or TLS over it (after STARTTLS, or from the start).
enum ClientStream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl ClientStream {
    fn tcp(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(tcp) => tcp,
            ClientStream::Tls(tls) => &tls.sock,
        }
    }
}

impl Read for ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            ClientStream::Plain(s) => s.read(buf),
            ClientStream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for ClientStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            ClientStream::Plain(s) => s.write(buf),
            ClientStream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            ClientStream::Plain(s) => s.flush(),
            ClientStream::Tls(s) => s.flush(),
        }
    }
}

/// A TLS client configuration that accepts any server certificate (the tests' servers use
/// self-signed ones) and records the certificate it was shown, so tests can check which
/// one the server chose (SNI, reload).
pub fn tls_client_config(seen: Arc<Mutex<Vec<u8>>>) -> Arc<rustls::ClientConfig> {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    #[derive(Debug)]
    struct Recorder {
        seen: Arc<Mutex<Vec<u8>>>,
        provider: Arc<rustls::crypto::CryptoProvider>,
    }
    impl ServerCertVerifier for Recorder {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            *self.seen.lock().unwrap() = end_entity.to_vec();
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Recorder { seen, provider }))
        .with_no_client_auth();
    Arc::new(config)
}

fn tls_handshake(tcp: TcpStream, server_name: &str, seen: Arc<Mutex<Vec<u8>>>) -> ClientStream {
    let name =
        rustls::pki_types::ServerName::try_from(server_name.to_owned()).expect("server name");
    let connection =
        rustls::ClientConnection::new(tls_client_config(seen), name).expect("TLS client");
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).expect("TLS handshake");
    }
    ClientStream::Tls(Box::new(tls))
}

/// A plain blocking SMTP client.
pub struct SmtpClient {
    stream: ClientStream,
    buf: Vec<u8>,
    /// The greeting the server sent.
    pub greeting: Reply,
}

impl SmtpClient {
    /// Connects and reads the greeting.
    pub fn connect(addr: SocketAddr) -> SmtpClient {
        let stream = TcpStream::connect_timeout(&addr, PATIENCE).expect("connect");
        SmtpClient::wrap(stream)
    }

    /// Connects from a chosen local address (e.g. 127.0.0.2, outside the relay networks).
    pub fn connect_from(local: IpAddr, addr: SocketAddr) -> SmtpClient {
        let socket = match local {
            IpAddr::V4(_) => {
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            }
            IpAddr::V6(_) => {
                socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)
            }
        }
        .expect("socket");
        socket
            .bind(&SocketAddr::new(local, 0).into())
            .expect("bind local address");
        socket
            .connect_timeout(&addr.into(), PATIENCE)
            .expect("connect");
        SmtpClient::wrap(socket.into())
    }

    /// Connects with implicit TLS (an `smtps` listener), sending `server_name` as SNI, and
    /// reads the greeting inside TLS.
    pub fn connect_tls(addr: SocketAddr, server_name: &str) -> SmtpClient {
        let tcp = TcpStream::connect_timeout(&addr, PATIENCE).expect("connect");
        tcp.set_read_timeout(Some(PATIENCE)).expect("timeout");
        let stream = tls_handshake(tcp, server_name, Arc::new(Mutex::new(Vec::new())));
        SmtpClient::wrap_stream(stream)
    }

    /// Sends STARTTLS, expects 220, and does the handshake (SNI `server_name`); returns the
    /// DER of the certificate the server presented. Bytes the server sent after its 220
    /// (it must send none) would be left unread in the plain stream and fail the test.
    pub fn starttls(&mut self, server_name: &str) -> Vec<u8> {
        let reply = self.command("STARTTLS");
        reply.expect(220, "2.0.0");
        assert!(
            self.buf.is_empty(),
            "data after the 220 to STARTTLS: {:?}",
            self.buf
        );
        self.upgrade(server_name)
    }

    /// Does a TLS handshake on the current connection (after a 220 to STARTTLS was read).
    pub fn upgrade(&mut self, server_name: &str) -> Vec<u8> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let placeholder = ClientStream::Plain(self.stream.tcp().try_clone().expect("clone socket"));
        let ClientStream::Plain(tcp) = std::mem::replace(&mut self.stream, placeholder) else {
            panic!("already using TLS");
        };
        self.stream = tls_handshake(tcp, server_name, Arc::clone(&seen));
        std::mem::take(&mut *seen.lock().unwrap())
    }

    /// Wraps a connected stream and reads the greeting.
    pub fn wrap(stream: TcpStream) -> SmtpClient {
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        SmtpClient::wrap_stream(ClientStream::Plain(stream))
    }

    /// Wraps a connected stream and reads the greeting, or `None` if the server closes
    /// before greeting (for tests in which the server may vanish at any moment).
    pub fn try_wrap(stream: TcpStream) -> Option<SmtpClient> {
        stream.set_read_timeout(Some(PATIENCE)).ok()?;
        let mut client = SmtpClient {
            stream: ClientStream::Plain(stream),
            buf: Vec::new(),
            greeting: Reply {
                code: 0,
                lines: Vec::new(),
            },
        };
        client.greeting = client.try_read_reply()?;
        Some(client)
    }

    fn wrap_stream(stream: ClientStream) -> SmtpClient {
        let mut client = SmtpClient {
            stream,
            buf: Vec::new(),
            greeting: Reply {
                code: 0,
                lines: Vec::new(),
            },
        };
        client.greeting = client.read_reply();
        client
    }

    /// Connects and says EHLO, asserting both succeed.
    pub fn ehlo(addr: SocketAddr) -> SmtpClient {
        let mut client = SmtpClient::connect(addr);
        assert_eq!(client.greeting.code, 220, "{:?}", client.greeting);
        let reply = client.command("EHLO client.example.org");
        assert_eq!(reply.code, 250, "{reply:?}");
        client
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Sends raw bytes, returning the error instead of panicking: for tests in which the
    /// server may vanish at any moment (`kill -9` under load, shutdown).
    pub fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends a command line and reads its reply, or `None` if the connection broke (a
    /// failed write, a reset or EOF) instead of panicking.
    pub fn try_command(&mut self, line: &str) -> Option<Reply> {
        self.try_send(format!("{line}\r\n").as_bytes()).ok()?;
        self.try_read_reply()
    }

    /// Sends a command line (CRLF appended) and reads its reply.
    pub fn command(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes());
        self.read_reply()
    }

    /// Reads one (possibly multi-line) reply; panics if the server closes first.
    pub fn read_reply(&mut self) -> Reply {
        self.try_read_reply()
            .unwrap_or_else(|| panic!("connection closed while waiting for a reply"))
    }

    /// Reads one reply, or `None` if the connection closed cleanly first.
    pub fn try_read_reply(&mut self) -> Option<Reply> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line()?;
            assert!(line.len() >= 3, "short reply line {line:?}");
            let code: u16 = line[..3]
                .parse()
                .unwrap_or_else(|_| panic!("bad reply {line:?}"));
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line.get(4..).unwrap_or_default().to_owned());
            if !more {
                return Some(Reply { code, lines });
            }
        }
    }

    fn read_line(&mut self) -> Option<String> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..pos + 2).collect();
                return Some(String::from_utf8_lossy(&line[..pos]).into_owned());
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// Whether the server has closed the connection (reads until EOF, ignoring data).
    pub fn is_closed(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    /// Runs a whole transaction one command at a time; returns the reply to the data.
    pub fn send_mail(&mut self, from: &str, to: &[&str], message: &str) -> Reply {
        self.command(&format!("MAIL FROM:<{from}>"))
            .expect(250, "2.1.0");
        for rcpt in to {
            self.command(&format!("RCPT TO:<{rcpt}>"))
                .expect(250, "2.1.5");
        }
        self.command("DATA");
        self.send(&dot_stuff(message.as_bytes()));
        self.send(b".\r\n");
        self.read_reply()
    }

    /// The underlying TCP stream, for tests that need socket options.
    pub fn stream(&self) -> &TcpStream {
        self.stream.tcp()
    }

    /// Reads one (possibly multi-line) reply and returns it exactly as it came over the
    /// wire, every line with its CRLF, for tests about the reply format itself.
    pub fn read_raw_reply(&mut self) -> String {
        let mut raw = String::new();
        loop {
            let line = self
                .read_line()
                .unwrap_or_else(|| panic!("connection closed inside a reply: {raw:?}"));
            raw.push_str(&line);
            raw.push_str("\r\n");
            if line.as_bytes().get(3) != Some(&b'-') {
                return raw;
            }
        }
    }
}

/// Dot-stuffs a message for DATA (RFC 5321 §4.5.2) and makes sure it ends with CRLF.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    let mut at_line_start = true;
    for &b in message {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The stored message without the `Received:` trace header the gateway put at its top
/// (the header's first line and its folded continuation lines), i.e. the octets the
/// client sent after unstuffing. Panics if the message does not start with that header.
pub fn without_trace_header(stored: &[u8]) -> &[u8] {
    assert!(
        stored.starts_with(b"Received: "),
        "no trace header: {:?}",
        String::from_utf8_lossy(stored)
    );
    let mut pos = 0;
    loop {
        let end = stored[pos..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|i| pos + i + 2)
            .unwrap_or_else(|| panic!("unterminated trace header"));
        pos = end;
        if !matches!(stored.get(pos), Some(b' ' | b'\t')) {
            return &stored[pos..];
        }
    }
}

/// A small RFC 5322 message.
pub fn sample_message(subject: &str, body: &str) -> String {
    format!(
        "From: sender@example.org\r\nTo: user@example.test\r\nSubject: {subject}\r\nMessage-ID: <{subject}@example.org>\r\n\r\n{body}\r\n"
    )
}

/// The `dnsmasq` binary [`DnsServer`] runs: `$TIDEGATE_DNSMASQ`, else `/usr/sbin/dnsmasq`
/// (Debian's `dnsmasq-base`), else `dnsmasq` from `PATH`.
pub fn dnsmasq() -> PathBuf {
    if let Some(path) = std::env::var_os("TIDEGATE_DNSMASQ") {
        return PathBuf::from(path);
    }
    let debian = Path::new("/usr/sbin/dnsmasq");
    if debian.exists() {
        debian.to_path_buf()
    } else {
        PathBuf::from("dnsmasq")
    }
}

/// A DNS server for a test: `dnsmasq` on a free loopback port (UDP and TCP), answering
/// only from the records it is given and never asking anyone else. It is killed when
/// dropped. Point a gateway at it with [`GatewayConfig::dns`].
///
/// ```ignore
/// let dns = DnsServer::start(&["bl.example.test"], &[("2.0.0.127.bl.example.test", "127.0.0.2")]);
/// let config = GatewayConfig::default().dns(dns.addr(), 2000);
/// ```
pub struct DnsServer {
    child: Option<Child>,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl DnsServer {
    /// Starts a server authoritative for `zones` (a name inside one of them without a
    /// record is NXDOMAIN; a name outside all of them is REFUSED, which resolvers report
    /// as a temporary failure) with the A records `(name, IPv4 address)`.
    pub fn start(zones: &[&str], a_records: &[(&str, &str)]) -> DnsServer {
        let mut args: Vec<String> = zones.iter().map(|z| format!("--local=/{z}/")).collect();
        args.extend(
            a_records
                .iter()
                .map(|(name, address)| format!("--host-record={name},{address}")),
        );
        DnsServer::start_with_args(&args)
    }

    /// Starts a server with extra `dnsmasq` options (records such as `--txt-record=...`,
    /// `--local=/zone/`, `--address=/zone/` for NXDOMAIN). The listening address, the
    /// port and the isolation from the system's configuration are set here.
    pub fn start_with_args(args: &[String]) -> DnsServer {
        let mut last_log = String::new();
        for _ in 0..20 {
            let port = free_udp_and_tcp_port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let mut child = Command::new(dnsmasq())
                .args([
                    "--no-daemon",
                    "--keep-in-foreground",
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--no-poll",
                    "--pid-file=",
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    "--log-queries",
                    "--log-facility=-",
                ])
                .arg(format!("--port={port}"))
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run {} ({e}): install dnsmasq (Debian: apt-get install dnsmasq-base) or set TIDEGATE_DNSMASQ",
                        dnsmasq().display()
                    )
                });
            let log = capture_stderr(&mut child, "dnsmasq");
            let mut server = DnsServer {
                child: Some(child),
                addr,
                log,
            };
            let deadline = Instant::now() + PATIENCE;
            while Instant::now() < deadline {
                if let Some(status) = server
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    // Most likely someone took the port in the meantime: try another.
                    std::thread::sleep(Duration::from_millis(50));
                    last_log = format!("dnsmasq exited with {status}:\n{}", server.log());
                    server.child = None;
                    break;
                }
                if server.query(".", 1, Duration::from_millis(200)).is_ok() {
                    return server;
                }
            }
            if server.child.is_some() {
                panic!("dnsmasq did not answer on {addr}:\n{}", server.log());
            }
        }
        panic!("could not start dnsmasq: {last_log}");
    }

    /// The address to send queries to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What dnsmasq has logged so far (every query it answered, and how).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Asks the server for the A records of `name` over UDP, as a check of the fixture
    /// itself: the addresses, or the DNS response code (3 is NXDOMAIN, 5 REFUSED).
    pub fn resolve_a(&self, name: &str) -> Result<Vec<std::net::Ipv4Addr>, u8> {
        let answers = self
            .query(name, 1, PATIENCE)
            .unwrap_or_else(|e| panic!("no DNS answer for {name}: {e}"))?;
        Ok(answers
            .into_iter()
            .filter_map(|rdata| <[u8; 4]>::try_from(rdata).ok())
            .map(std::net::Ipv4Addr::from)
            .collect())
    }

    /// One UDP query; `Ok(Err(rcode))` when the server answered with an error, otherwise
    /// the RDATA of each answer of type `qtype`.
    fn query(&self, name: &str, qtype: u16, timeout: Duration) -> std::io::Result<DnsReply> {
        let id: u16 = 0x7467;
        let mut packet = Vec::with_capacity(512);
        packet.extend_from_slice(&id.to_be_bytes());
        packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.').filter(|l| !l.is_empty()) {
            packet.push(u8::try_from(label.len()).expect("label length"));
            packet.extend_from_slice(label.as_bytes());
        }
        packet.push(0);
        packet.extend_from_slice(&qtype.to_be_bytes());
        packet.extend_from_slice(&1u16.to_be_bytes());
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        socket.set_read_timeout(Some(timeout))?;
        socket.send_to(&packet, self.addr)?;
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf)?;
        let reply = &buf[..n];
        let bad = || std::io::Error::other("malformed DNS reply");
        if reply.len() < 12 || reply[..2] != id.to_be_bytes() {
            return Err(bad());
        }
        let rcode = reply[3] & 0x0f;
        if rcode != 0 {
            return Ok(Err(rcode));
        }
        let count = |at: usize| usize::from(u16::from_be_bytes([reply[at], reply[at + 1]]));
        let (questions, answers) = (count(4), count(6));
        let skip_name = |mut pos: usize| -> Option<usize> {
            loop {
                let len = *reply.get(pos)?;
                if len & 0xc0 == 0xc0 {
                    return Some(pos + 2);
                }
                pos += 1 + usize::from(len);
                if len == 0 {
                    return Some(pos);
                }
            }
        };
        let mut pos = 12;
        for _ in 0..questions {
            pos = skip_name(pos).ok_or_else(bad)? + 4;
        }
        let mut out = Vec::new();
        for _ in 0..answers {
            pos = skip_name(pos).ok_or_else(bad)?;
            let header = reply.get(pos..pos + 10).ok_or_else(bad)?;
            let rtype = u16::from_be_bytes([header[0], header[1]]);
            let len = usize::from(u16::from_be_bytes([header[8], header[9]]));
            let rdata = reply.get(pos + 10..pos + 10 + len).ok_or_else(bad)?;
            if rtype == qtype {
                out.push(rdata.to_vec());
            }
            pos += 10 + len;
        }
        Ok(Ok(out))
    }
}

/// The RDATA of each answer, or the response code of an error reply.
type DnsReply = Result<Vec<Vec<u8>>, u8>;

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback port that is free for both UDP and TCP right now.
fn free_udp_and_tcp_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
        let port = udp.local_addr().expect("local address").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl GatewayConfig {
    /// Sets a `[queue]` key (the value is TOML).
    pub fn queue(mut self, key: &str, value: &str) -> Self {
        self.queue.retain(|(k, _)| k != key);
        self.queue.push((key.into(), value.into()));
        self
    }

    /// Releases the queue (the default configuration holds it), so mail is delivered.
    pub fn deliver(self) -> Self {
        self.queue("hold", "false")
    }

    /// Adds a smarthost `[[route]]` for `domains` and releases the queue.
    pub fn route(mut self, name: &str, domains: &[&str], smarthost: SocketAddr) -> Self {
        self = self.deliver();
        self.routes.push(format!(
            "{{ name = {name:?}, domains = [{}], smarthost = \"{smarthost}\" }}",
            domains
                .iter()
                .map(|d| format!("{d:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        self
    }

    /// Adds a maildir `[[route]]` for `domains` and releases the queue.
    pub fn maildir_route(mut self, name: &str, domains: &[&str], root: &Path) -> Self {
        self = self.deliver();
        self.routes.push(format!(
            "{{ name = {name:?}, domains = [{}], maildir = {:?} }}",
            domains
                .iter()
                .map(|d| format!("{d:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            root
        ));
        self
    }

    /// Points the gateway's resolver (`[dns]`, used by plugins' `resolve`) at one name
    /// server, e.g. a [`DnsServer`], with a per-query timeout in milliseconds.
    pub fn dns(mut self, nameserver: SocketAddr, timeout_ms: u64) -> Self {
        self.top.push((
            "dns".into(),
            format!("{{ nameservers = [\"{nameserver}\"], timeout_ms = {timeout_ms} }}"),
        ));
        self
    }
}

/// A tmpfs of `size` mounted for a test (disk-full tests), unmounted when dropped.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts one; `None` (after saying why) where mounting is not allowed.
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        match status {
            Ok(status) if status.success() => Some(Tmpfs { dir }),
            other => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs at {} ({other:?}); this test needs root",
                    dir.path().display()
                );
                None
            }
        }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}
