//! The operator's commands that talk to a running gateway: `tidegate queue ...`,
//! `quarantine ...`, `plugins`, `reload`, `log-level`. Each is a client of the admin
//! API, reading its address and token from the configuration file (`-c`); it prints a
//! readable table, or the API's JSON with `--json`, and exits non-zero with a clear
//! message when the gateway is not running or refuses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;

use crate::admin::PluginStatus;
use crate::queue::control::{
    Done, ListQuery, MessageDetail, MessageLine, MessageState, QuarantinedLine, Selector, Summary,
};
use crate::reconfigure::ReloadReport;
use crate::spool::import::ImportReport;

/// The most a reply may hold (a list of 10,000 messages fits).
const MAX_REPLY: usize = 32 * 1024 * 1024;
/// How long a command waits for the gateway.
const TIMEOUT: Duration = Duration::from_secs(30);

/// What every admin command takes.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The gateway's configuration file (its `[admin]` address and token file).
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
    /// The admin address, instead of the configuration's (e.g. when it says port 0).
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Which messages an operation applies to.
#[derive(Debug, Args)]
pub struct Target {
    /// One message.
    pub id: Option<String>,
    /// Every message with recipients at this domain (and, for hold/release, the
    /// destination itself).
    #[arg(long)]
    pub domain: Option<String>,
    /// Everything.
    #[arg(long)]
    pub all: bool,
}

impl Target {
    fn selector(&self, bounce: bool) -> Selector {
        Selector {
            id: self.id.clone(),
            domain: self.domain.clone(),
            all: self.all,
            bounce,
        }
    }
}

/// `tidegate queue ...`
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Messages and recipients by destination and state, oldest age, last error.
    Summary {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The messages, oldest first.
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// Only this state: active, deferred or held.
        #[arg(long, value_parser = |s: &str| s.parse::<MessageState>())]
        state: Option<MessageState>,
        /// Only messages with recipients at this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Only messages from this sender (`<>` for bounces).
        #[arg(long)]
        sender: Option<String>,
        /// Only messages older than this (e.g. 30m, 1h, 2d).
        #[arg(long, value_name = "AGE")]
        older_than: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One message: envelope, each recipient's state, attempts, last reply, next attempt.
    Show {
        #[command(flatten)]
        client: ClientArgs,
        /// The queue ID.
        id: String,
    },
    /// Make messages due now.
    Retry {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a message, or a destination's recipients, silently or with a DSN.
    Delete {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        target: Target,
        /// Send the sender a DSN for what is deleted.
        #[arg(long)]
        bounce: bool,
    },
    /// Hold a message, a destination or the whole queue (kept across restarts).
    Hold {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        target: Target,
    },
    /// Release what `hold` held.
    Release {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        target: Target,
    },
}

/// `tidegate quarantine ...`
#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// The quarantined messages.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One quarantined message.
    Show {
        #[command(flatten)]
        client: ClientArgs,
        /// The queue ID.
        id: String,
    },
    /// Deliver a quarantined message as it would have been delivered.
    Release {
        #[command(flatten)]
        client: ClientArgs,
        /// The queue ID.
        id: String,
    },
    /// Delete a quarantined message for good.
    Delete {
        #[command(flatten)]
        client: ClientArgs,
        /// The queue ID.
        id: String,
    },
}

/// A connection's worth of the admin API.
pub(super) struct Client {
    address: SocketAddr,
    token: Option<String>,
}

impl Client {
    pub(super) fn new(args: &ClientArgs) -> anyhow::Result<Client> {
        // Only the `[admin]` table is read, not the whole file checked: `tidegate reload`
        // must be able to tell the gateway about a file that has errors elsewhere.
        let path = &args.config;
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let table: toml::Table = text
            .parse()
            .with_context(|| format!("{}: not TOML", path.display()))?;
        let admin = table.get("admin").and_then(|a| a.as_table());
        let configured = admin
            .and_then(|a| a.get("address"))
            .and_then(|a| a.as_str())
            .map(|a| {
                a.parse::<SocketAddr>()
                    .with_context(|| format!("{}: admin.address `{a}`", path.display()))
            })
            .transpose()?;
        let address = args.admin.or(configured).with_context(|| {
            format!(
                "{} has no [admin] address: the admin API is off",
                path.display()
            )
        })?;
        let token = match admin
            .and_then(|a| a.get("token_file"))
            .and_then(|f| f.as_str())
        {
            Some(file) => {
                let file = PathBuf::from(file);
                let file = if file.is_relative() {
                    path.parent()
                        .unwrap_or(std::path::Path::new("."))
                        .join(file)
                } else {
                    file
                };
                let tokens = crate::admin::tokens::Tokens::load(&file)?;
                tokens
                    .first()
                    .map(|t| String::from_utf8_lossy(t).into_owned())
            }
            None => None,
        };
        Ok(Client { address, token })
    }

    /// One request; the reply's body when it is 2xx, an error with the API's message
    /// otherwise.
    async fn call(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<Bytes> {
        let stream = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(self.address))
            .await
            .map_err(|_| anyhow::anyhow!("the gateway did not answer on {} in time", self.address))?
            .with_context(|| {
                format!(
                    "the gateway is not running (nothing answers on {})",
                    self.address
                )
            })?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .context("talking to the admin API")?;
        tokio::spawn(connection);
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.address.to_string())
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(token) = &self.token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(bytes)))
            .context("building the request")?;
        let response = tokio::time::timeout(TIMEOUT, sender.send_request(request))
            .await
            .map_err(|_| anyhow::anyhow!("the gateway did not answer in time"))?
            .context("talking to the admin API")?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_REPLY)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the reply: {e}"))?
            .to_bytes();
        if !status.is_success() {
            let why = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
            if status == hyper::StatusCode::UNAUTHORIZED {
                bail!("refused (401): {why} (is [admin] token_file the gateway's?)");
            }
            bail!("{why} ({status})");
        }
        Ok(body)
    }

    pub(super) async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> anyhow::Result<(T, Bytes)> {
        let body = self.call(hyper::Method::GET, path, None).await?;
        let value = serde_json::from_slice(&body).context("reading the reply")?;
        Ok((value, body))
    }

    pub(super) async fn send<T: serde::de::DeserializeOwned>(
        &self,
        method: hyper::Method,
        path: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<(T, Bytes)> {
        let reply = self.call(method, path, Some(body)).await?;
        let value = serde_json::from_slice(&reply).context("reading the reply")?;
        Ok((value, reply))
    }
}

/// Runs a command on a runtime of its own.
pub(super) fn block_on<T>(
    future: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(future)
}

pub(super) fn print_json(body: &Bytes) {
    println!("{}", String::from_utf8_lossy(body).trim_end());
}

/// Prints rows under a header, each column as wide as its widest cell.
pub(super) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

pub(super) fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn print_done(json: bool, (done, body): (Done, Bytes)) {
    if json {
        print_json(&body);
    } else {
        println!("{}", done.detail);
    }
}

/// Runs `tidegate queue ...`.
pub fn queue(command: QueueCommand) -> anyhow::Result<()> {
    block_on(async move {
        match command {
            QueueCommand::Summary { client: args } => {
                let client = Client::new(&args)?;
                let (summary, body): (Summary, _) = client.get("/v1/queue/summary").await?;
                if args.json {
                    print_json(&body);
                    return Ok(());
                }
                let m = &summary.messages;
                println!(
                    "{} active, {} deferred, {} held, {} quarantined{}{}",
                    m.active,
                    m.deferred,
                    m.held,
                    summary.quarantined,
                    if summary.holds.all {
                        "; the whole queue is HELD"
                    } else {
                        ""
                    },
                    if summary.recovering {
                        "; still reading the spool back"
                    } else {
                        ""
                    },
                );
                let rows: Vec<Vec<String>> = summary
                    .destinations
                    .iter()
                    .map(|d| {
                        vec![
                            d.domain.clone(),
                            d.messages.active.to_string(),
                            d.messages.deferred.to_string(),
                            d.messages.held.to_string(),
                            d.recipients.to_string(),
                            age(d.oldest_secs),
                            if d.held { "held".into() } else { String::new() },
                            d.last_error.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "DESTINATION",
                        "ACTIVE",
                        "DEFERRED",
                        "HELD",
                        "RCPTS",
                        "OLDEST",
                        "",
                        "LAST ERROR",
                    ],
                    &rows,
                );
                if !summary.shaped.is_empty() {
                    println!();
                    let rows: Vec<Vec<String>> = summary
                        .shaped
                        .iter()
                        .map(|s| {
                            vec![
                                s.key.clone(),
                                s.policy.clone(),
                                s.running.to_string(),
                                s.parked.to_string(),
                                format!("{}%", s.rate_percent),
                                s.closed.clone().unwrap_or_else(|| "open".into()),
                            ]
                        })
                        .collect();
                    table(
                        &["SHAPED", "POLICY", "RUNNING", "PARKED", "RATE", "STATE"],
                        &rows,
                    );
                }
                Ok(())
            }
            QueueCommand::List {
                client: args,
                state,
                domain,
                sender,
                older_than,
                limit,
            } => {
                let client = Client::new(&args)?;
                let older_than_secs = older_than
                    .map(|text| {
                        crate::config::Duration::try_from(text)
                            .map(|d| d.0.as_secs())
                            .map_err(|e| anyhow::anyhow!("--older-than: {e}"))
                    })
                    .transpose()?;
                let query = ListQuery {
                    state,
                    domain,
                    sender,
                    older_than_secs,
                    limit: Some(limit),
                };
                let mut path = format!("/v1/queue?limit={limit}");
                if let Some(s) = query.state {
                    let s = serde_json::to_value(s)?;
                    path.push_str(&format!("&state={}", s.as_str().unwrap_or_default()));
                }
                if let Some(d) = &query.domain {
                    path.push_str(&format!("&domain={}", url_encode(d)));
                }
                if let Some(s) = &query.sender {
                    path.push_str(&format!("&sender={}", url_encode(s)));
                }
                if let Some(a) = query.older_than_secs {
                    path.push_str(&format!("&older_than_secs={a}"));
                }
                let (lines, body): (Vec<MessageLine>, _) = client.get(&path).await?;
                if args.json {
                    print_json(&body);
                    return Ok(());
                }
                let rows: Vec<Vec<String>> = lines
                    .iter()
                    .map(|l| {
                        vec![
                            l.id.clone(),
                            format!("{:?}", l.state).to_lowercase(),
                            age(l.age_secs),
                            l.recipients.to_string(),
                            l.attempts.to_string(),
                            l.domains.join(","),
                        ]
                    })
                    .collect();
                table(
                    &["ID", "STATE", "AGE", "RCPTS", "ATTEMPTS", "DESTINATIONS"],
                    &rows,
                );
                Ok(())
            }
            QueueCommand::Show { client: args, id } => {
                show(&args, &format!("/v1/queue/{}", url_encode(&id))).await
            }
            QueueCommand::Retry {
                client: args,
                target,
            } => operate(&args, "/v1/queue/retry", target.selector(false)).await,
            QueueCommand::Delete {
                client: args,
                target,
                bounce,
            } => operate(&args, "/v1/queue/delete", target.selector(bounce)).await,
            QueueCommand::Hold {
                client: args,
                target,
            } => operate(&args, "/v1/queue/hold", target.selector(false)).await,
            QueueCommand::Release {
                client: args,
                target,
            } => operate(&args, "/v1/queue/release", target.selector(false)).await,
        }
    })
}

/// One operation on the queue (retry, delete, hold, release) and its report.
async fn operate(args: &ClientArgs, path: &str, selector: Selector) -> anyhow::Result<()> {
    let client = Client::new(args)?;
    let selector = serde_json::to_value(selector)?;
    print_done(
        args.json,
        client.send(hyper::Method::POST, path, selector).await?,
    );
    Ok(())
}

/// One message in detail (from the queue or the quarantine).
async fn show(args: &ClientArgs, path: &str) -> anyhow::Result<()> {
    let client = Client::new(args)?;
    let (detail, body): (MessageDetail, _) = client.get(path).await?;
    if args.json {
        print_json(&body);
    } else {
        print_detail(&detail);
    }
    Ok(())
}

fn print_detail(detail: &MessageDetail) {
    println!("id:        {}", detail.id);
    println!("state:     {}", detail.state);
    println!(
        "sender:    <{}>",
        detail.sender.as_deref().unwrap_or_default()
    );
    println!("received:  {} (size {})", detail.received_at, detail.size);
    println!("client:    {}", detail.client);
    if let Some(reason) = &detail.quarantine {
        println!("quarantine: {reason}");
    }
    for (k, v) in &detail.tags {
        println!("tag:       {k}={v}");
    }
    let rows: Vec<Vec<String>> = detail
        .recipients
        .iter()
        .map(|r| {
            vec![
                r.address.clone(),
                r.state.clone(),
                r.attempts.to_string(),
                r.next_attempt.map(|n| n.to_string()).unwrap_or_default(),
                r.last_reply.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &["RECIPIENT", "STATE", "ATTEMPTS", "NEXT", "LAST REPLY"],
        &rows,
    );
}

/// Runs `tidegate quarantine ...`.
pub fn quarantine(command: QuarantineCommand) -> anyhow::Result<()> {
    block_on(async move {
        match command {
            QuarantineCommand::List { client: args } => {
                let client = Client::new(&args)?;
                let (lines, body): (Vec<QuarantinedLine>, _) = client.get("/v1/quarantine").await?;
                if args.json {
                    print_json(&body);
                    return Ok(());
                }
                let rows: Vec<Vec<String>> = lines
                    .iter()
                    .map(|l| {
                        vec![
                            l.id.clone(),
                            format!("<{}>", l.sender.as_deref().unwrap_or_default()),
                            l.recipients.join(","),
                            l.reason.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                table(&["ID", "SENDER", "RECIPIENTS", "REASON"], &rows);
                Ok(())
            }
            QuarantineCommand::Show { client: args, id } => {
                show(&args, &format!("/v1/quarantine/{}", url_encode(&id))).await
            }
            QuarantineCommand::Release { client: args, id } => {
                let client = Client::new(&args)?;
                let path = format!("/v1/quarantine/{}/release", url_encode(&id));
                print_done(
                    args.json,
                    client
                        .send(hyper::Method::POST, &path, serde_json::json!({}))
                        .await?,
                );
                Ok(())
            }
            QuarantineCommand::Delete { client: args, id } => {
                let client = Client::new(&args)?;
                let path = format!("/v1/quarantine/{}", url_encode(&id));
                let reply = client.call(hyper::Method::DELETE, &path, None).await?;
                let done: Done = serde_json::from_slice(&reply).context("reading the reply")?;
                print_done(args.json, (done, reply));
                Ok(())
            }
        }
    })
}

/// What `tidegate plugins` does besides listing.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PluginsAction {
    /// A shadow's agreements, disagreements and the latest disagreeing transactions.
    Shadow,
    /// Make a canary take every new session (until a reload changes it).
    Promote,
}

/// Runs `tidegate plugins [shadow NAME | promote NAME]`.
pub fn plugins(
    args: ClientArgs,
    action: Option<PluginsAction>,
    name: Option<String>,
) -> anyhow::Result<()> {
    if let Some(action) = action {
        let Some(name) = name else {
            bail!("name the plugin: tidegate plugins {action:?} NAME");
        };
        return match action {
            PluginsAction::Shadow => plugin_shadow(args, name),
            PluginsAction::Promote => plugin_promote(args, name),
        };
    }
    block_on(async move {
        let client = Client::new(&args)?;
        let (statuses, body): (Vec<PluginStatus>, _) = client.get("/v1/plugins").await?;
        if args.json {
            print_json(&body);
            return Ok(());
        }
        let rows: Vec<Vec<String>> = statuses
            .iter()
            .map(|p| {
                let failures: Vec<String> =
                    p.failures.iter().map(|(k, v)| format!("{k}={v}")).collect();
                // A milter or policy service shows its kind and address instead of a
                // component's hash and contract.
                let (hash, contract) = match &p.address {
                    Some(address) => (address.clone(), p.kind.clone()),
                    None => (p.hash.chars().take(12).collect(), p.contract.clone()),
                };
                vec![
                    p.position.to_string(),
                    p.name.clone(),
                    hash,
                    contract,
                    p.loaded_at.to_string(),
                    p.calls.to_string(),
                    p.fuel.to_string(),
                    p.memory_bytes.to_string(),
                    if failures.is_empty() {
                        "-".to_owned()
                    } else {
                        failures.join(",")
                    },
                    mode(p),
                ]
            })
            .collect();
        table(
            &[
                "#", "PLUGIN", "HASH", "CONTRACT", "LOADED", "CALLS", "FUEL", "MEMORY", "FAILURES",
                "MODE",
            ],
            &rows,
        );
        Ok(())
    })
}

/// A plugin's mode, with a canary's state and counts.
fn mode(p: &PluginStatus) -> String {
    if let Some(c) = &p.canary {
        let counts = format!(
            "{} sessions, {} faults, {} refusals; primary {} sessions, {} faults, {} refusals",
            c.canary.sessions,
            c.canary.faults,
            c.canary.refusals,
            c.primary.sessions,
            c.primary.faults,
            c.primary.refusals
        );
        let share = c.fraction * 100.0;
        // A reload's canary stands in for the running version of the same plugin.
        if c.canary_of == p.name {
            return match (c.state.as_str(), &c.why) {
                ("canary", _) => format!("enforce; its reload as canary {share}% ({counts})"),
                (state, Some(why)) => format!("enforce; its reload {state} ({why}) ({counts})"),
                (state, None) => format!("enforce; its reload {state} ({counts})"),
            };
        }
        return match (c.state.as_str(), &c.why) {
            ("canary", _) => format!("canary {share}% of {} ({counts})", c.canary_of),
            (state, Some(why)) => format!("{state} ({why}) from {} ({counts})", c.canary_of),
            (state, None) => format!("{state} from {} ({counts})", c.canary_of),
        };
    }
    match (p.mode.as_str(), &p.shadow_of) {
        ("shadow", Some(of)) => format!("shadow of {of}"),
        ("shadow", None) => "shadow of the chain".to_owned(),
        (mode, _) => mode.to_owned(),
    }
}

/// Runs `tidegate plugins shadow NAME`.
fn plugin_shadow(args: ClientArgs, name: String) -> anyhow::Result<()> {
    block_on(async move {
        let client = Client::new(&args)?;
        let path = format!("/v1/plugins/{}/shadow", url_encode(&name));
        let (report, body): (crate::plugins::shadow::ShadowReport, _) = client.get(&path).await?;
        if args.json {
            print_json(&body);
            return Ok(());
        }
        println!(
            "shadow {} of {}: {} agreements, {} disagreements, {} skipped, {} failures",
            report.plugin,
            report.shadow_of.as_deref().unwrap_or("the chain"),
            report.agreements,
            report.disagreements.iter().map(|d| d.count).sum::<u64>(),
            report.skipped,
            report.failures
        );
        let rows: Vec<Vec<String>> = report
            .disagreements
            .iter()
            .map(|d| {
                vec![
                    d.hook.clone(),
                    d.enforced.clone(),
                    d.shadow.clone(),
                    d.count.to_string(),
                ]
            })
            .collect();
        table(&["HOOK", "ENFORCED", "SHADOW", "COUNT"], &rows);
        if !report.samples.is_empty() {
            println!();
            let rows: Vec<Vec<String>> = report
                .samples
                .iter()
                .map(|s| {
                    let edits = |e: &[String]| {
                        if e.is_empty() {
                            String::new()
                        } else {
                            format!(" [{}]", e.join("; "))
                        }
                    };
                    vec![
                        s.at.to_string(),
                        s.queue_id.clone().unwrap_or_else(|| "-".into()),
                        s.hook.clone(),
                        format!("{}{}", s.enforced, edits(&s.enforced_edits)),
                        format!("{}{}", s.shadow, edits(&s.shadow_edits)),
                        s.input.clone(),
                    ]
                })
                .collect();
            table(
                &["AT", "QUEUE ID", "HOOK", "ENFORCED", "SHADOW", "INPUT"],
                &rows,
            );
        }
        Ok(())
    })
}

/// Runs `tidegate plugins promote NAME`.
fn plugin_promote(args: ClientArgs, name: String) -> anyhow::Result<()> {
    block_on(async move {
        let client = Client::new(&args)?;
        let path = format!("/v1/plugins/{}/promote", url_encode(&name));
        let (status, body): (crate::plugins::canary::CanaryStatus, _) = client
            .send(hyper::Method::POST, &path, serde_json::json!({}))
            .await?;
        if args.json {
            print_json(&body);
        } else {
            println!(
                "{name}: {} ({}), in place of {} for every new session until a reload changes it",
                status.state,
                status.why.as_deref().unwrap_or_default(),
                status.canary_of
            );
        }
        Ok(())
    })
}

/// Runs `tidegate reload`; fails when the reload was refused.
pub fn reload(args: ClientArgs) -> anyhow::Result<()> {
    block_on(async move {
        let client = Client::new(&args)?;
        let (report, body): (ReloadReport, _) = client
            .send(hyper::Method::POST, "/v1/reload", serde_json::json!({}))
            .await?;
        if args.json {
            print_json(&body);
        } else {
            if report.changed.is_empty() {
                println!("plugins: unchanged");
            } else {
                println!("plugins reloaded: {}", report.changed.join(", "));
            }
            if !report.applied.is_empty() {
                println!("applied: {}", report.applied.join(", "));
            }
            if !report.needs_restart.is_empty() {
                println!(
                    "changed, applied at the next restart: {}",
                    report.needs_restart.join(", ")
                );
            }
        }
        if let Some(why) = report.failed {
            bail!("reload refused, nothing changed: {why}");
        }
        Ok(())
    })
}

/// Runs `tidegate spool import SOURCE`: asks the gateway for batches until the stopped
/// gateway's spool at `source` is empty (or only unreadable files are left); fails when
/// any message could not be imported.
pub fn spool_import(args: ClientArgs, source: PathBuf) -> anyhow::Result<()> {
    let source = std::fs::canonicalize(&source)
        .with_context(|| format!("the spool {}", source.display()))?;
    block_on(async move {
        let client = Client::new(&args)?;
        let mut total = ImportReport::default();
        loop {
            let (batch, _): (ImportReport, _) = client
                .send(
                    hyper::Method::POST,
                    "/v1/spool/import",
                    serde_json::json!({ "path": source }),
                )
                .await?;
            let progressed =
                !batch.imported.is_empty() || batch.quarantined > 0 || batch.already_imported > 0;
            total.imported.extend(batch.imported);
            total.quarantined += batch.quarantined;
            total.already_imported += batch.already_imported;
            total.failed.extend(batch.failed);
            total.remaining = batch.remaining;
            if batch.remaining == 0 || !progressed {
                break;
            }
            if !args.json {
                eprintln!(
                    "imported {} so far, {} to go",
                    total.imported.len(),
                    batch.remaining
                );
            }
        }
        // A failed file is left in place and met again by every batch: count it once.
        total.failed.sort();
        total.failed.dedup();
        if args.json {
            println!(
                "{}",
                serde_json::to_string(&total).context("printing the report")?
            );
        } else {
            println!(
                "imported {} queued and {} quarantined messages from {}; {} were imported before",
                total.imported.len(),
                total.quarantined,
                source.display(),
                total.already_imported
            );
            for failed in &total.failed {
                println!("not imported: {failed}");
            }
        }
        if !total.failed.is_empty() {
            bail!(
                "{} messages could not be read and are left in {}",
                total.failed.len(),
                source.display()
            );
        }
        Ok(())
    })
}

/// Runs `tidegate log-level LEVEL`.
pub fn log_level(args: ClientArgs, level: String) -> anyhow::Result<()> {
    block_on(async move {
        let client = Client::new(&args)?;
        let (_, body): (serde_json::Value, _) = client
            .send(
                hyper::Method::PUT,
                "/v1/log-level",
                serde_json::json!({ "level": level }),
            )
            .await?;
        if args.json {
            print_json(&body);
        } else {
            println!("log level: {level}");
        }
        Ok(())
    })
}
