//! The `tidegate` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use tidegate::config::Config;
use tidegate::spool::Spool;

/// Tidegate: a WebAssembly-pluggable, programmable mail gateway.
#[derive(Debug, Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway until SIGTERM or SIGINT.
    Serve {
        /// The configuration file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration file and exit (0 when it is valid).
    Check {
        /// The configuration file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// DKIM keys: make one, check its DNS record.
    Dkim {
        #[command(subcommand)]
        command: DkimCommand,
    },
    /// Write a new plugin crate; check a built component as the gateway would load it.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Look at the spool.
    Spool {
        #[command(subcommand)]
        command: SpoolCommand,
    },
    /// Write a self-signed certificate and its private key (PEM; the key file mode 0600).
    ///
    /// For opportunistic TLS, tests and labs. Existing files are left alone unless
    /// `--force` is given.
    GenCert {
        /// A name the certificate is for (a DNS name, `*.domain` or an IP address); repeat
        /// for several. The first is also the subject's common name.
        #[arg(long = "name", value_name = "NAME", required = true)]
        names: Vec<String>,
        /// Where to write the certificate.
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// Where to write the private key.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Steer the queue of a running gateway (through its admin API).
    Queue {
        #[command(subcommand)]
        command: tidegate::cli::admin::QueueCommand,
    },
    /// A plugin's key/value namespace in a running gateway.
    Kv {
        #[command(subcommand)]
        command: tidegate::cli::kv::KvCommand,
    },
    /// The `suppression` plugin's list of addresses in a running gateway.
    Suppression {
        #[command(subcommand)]
        command: tidegate::cli::kv::SuppressionCommand,
    },
    /// The quarantine of a running gateway.
    Quarantine {
        #[command(subcommand)]
        command: tidegate::cli::admin::QuarantineCommand,
    },
    /// Each plugin of a running gateway: version hash, load time, place, calls, failures,
    /// mode (a canary's state); `shadow NAME` shows a shadow's disagreements, `promote
    /// NAME` makes a canary take every new session.
    Plugins {
        #[command(flatten)]
        client: tidegate::cli::admin::ClientArgs,
        /// `shadow` or `promote`.
        #[arg(value_enum)]
        action: Option<tidegate::cli::admin::PluginsAction>,
        /// The shadow or canary plugin.
        name: Option<String>,
    },
    /// Reload a running gateway (as SIGHUP does) and say what changed, what failed and
    /// what needs a restart.
    Reload {
        #[command(flatten)]
        client: tidegate::cli::admin::ClientArgs,
    },
    /// Change a running gateway's log level (a `tracing` filter such as `debug`).
    LogLevel {
        #[command(flatten)]
        client: tidegate::cli::admin::ClientArgs,
        /// The new level.
        level: String,
    },
    /// Replay recorded sessions (a listener's `record`) against a plugin version and print
    /// the calls whose verdict or edits differ; exits 0 when none does, 1 otherwise.
    Replay {
        /// The plugin component to run.
        #[arg(long, value_name = "FILE")]
        plugin: PathBuf,
        /// Its `[plugin.config]` as a JSON file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// A records file, or a listener's records directory.
        #[arg(long, value_name = "PATH")]
        records: PathBuf,
        /// The plugin's name in the recording (default: the file's stem).
        #[arg(long = "as", value_name = "NAME")]
        name: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Hash a password read from standard input (one line) for the SMTP AUTH users file.
    ///
    /// Prints the argon2id PHC string, or the whole `NAME:hash` users-file line with
    /// `--user`.
    HashPassword {
        /// Print a users-file line for this user name.
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum DkimCommand {
    /// Write a new private key (PEM, mode 0600) and print the DNS TXT record to publish.
    Keygen {
        /// The signing domain (`d=`).
        #[arg(long)]
        domain: String,
        /// The selector (`s=`).
        #[arg(long)]
        selector: String,
        /// Where to write the private key (an existing file is never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// `rsa` (RSA-SHA256) or `ed25519` (Ed25519-SHA256).
        #[arg(long, default_value = "rsa")]
        algorithm: KeyAlgorithm,
        /// RSA key size.
        #[arg(long, default_value_t = 2048)]
        bits: usize,
    },
    /// Look the key record up and say whether it matches the key.
    Check {
        /// The configuration file (its `[dns]`, and its `[[dkim_sign]]` key unless --key).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// The signing domain.
        #[arg(long)]
        domain: String,
        /// The selector.
        #[arg(long)]
        selector: String,
        /// The private key to compare with, instead of the configured one.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Write a new plugin crate (the template's source and tests) that builds and tests on
    /// its own: `cargo test`, then `cargo build --release --target wasm32-wasip2`.
    New {
        /// The crate's name (e.g. `my-filter`); the library, the `Plugin` type and the
        /// component's file are named after it.
        name: String,
        /// Where to write it (must not exist or be empty); default: ./NAME.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// The SDK (a `plugin-sdk/` directory) to depend on by path; default: the one this
        /// binary was built from, when it is still there.
        #[arg(long, value_name = "PATH", conflicts_with = "sdk_git")]
        sdk: Option<PathBuf>,
        /// A git repository holding the SDK to depend on instead.
        #[arg(long, value_name = "URL")]
        sdk_git: Option<String>,
    },
    /// Load a component as the gateway would (compile, link, `init`) and print its
    /// contract version, hooks, size, load times and memory; non-zero when the gateway
    /// would refuse it.
    Check {
        /// The component (`.wasm`).
        file: PathBuf,
        /// The plugin's configuration as JSON (what `[plugin.config]` holds).
        #[arg(long, value_name = "CONFIG.json")]
        config: Option<PathBuf>,
        /// Take the limits (and the configuration, unless --config) from a `[[plugin]]` of
        /// this gateway configuration; by default the defaults of a `[[plugin]]`.
        #[arg(short = 'c', long = "gateway-config", value_name = "FILE")]
        gateway_config: Option<PathBuf>,
        /// Which `[[plugin]]` of that file (needed when it has several).
        #[arg(long, value_name = "NAME", requires = "gateway_config")]
        name: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum KeyAlgorithm {
    Rsa,
    Ed25519,
}

#[derive(Debug, Subcommand)]
enum SpoolCommand {
    /// List the messages in the spool: ID, size, sender, recipients (safe while serving).
    List {
        /// The configuration file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Take the spool of a stopped gateway (e.g. a dead node's, copied here) into the
    /// running one: each message once, with its delivery history.
    Import {
        #[command(flatten)]
        client: tidegate::cli::admin::ClientArgs,
        /// The stopped gateway's spool directory.
        source: PathBuf,
    },
    /// Print one message as it will be delivered (plugin header edits applied).
    Show {
        /// The configuration file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// The queue ID.
        id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("tidegate: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::HashPassword { user } => {
            if let Some(user) = &user {
                tidegate::auth::check_username(user)
                    .map_err(|problem| anyhow::anyhow!("the user name {problem}"))?;
            }
            let password = read_password_line()?;
            let hash = tidegate::auth::hash_password(&password)?;
            match user {
                Some(user) => println!("{user}:{hash}"),
                None => println!("{hash}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::GenCert {
            names,
            cert,
            key,
            force,
        } => {
            tidegate::tls::write_self_signed(&names, &cert, &key, force)?;
            println!(
                "wrote a self-signed certificate for {} to {} and its private key to {} (mode 0600)",
                names.join(", "),
                cert.display(),
                key.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Dkim {
            command:
                DkimCommand::Keygen {
                    domain,
                    selector,
                    out,
                    algorithm,
                    bits,
                },
        } => {
            let algorithm = match algorithm {
                KeyAlgorithm::Rsa => tidegate::sender_auth::keys::Algorithm::Rsa,
                KeyAlgorithm::Ed25519 => tidegate::sender_auth::keys::Algorithm::Ed25519,
            };
            let line = tidegate::cli::dkim::keygen(&domain, &selector, &out, algorithm, bits)?;
            println!("{line}");
            eprintln!("wrote the private key to {} (mode 0600)", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Dkim {
            command:
                DkimCommand::Check {
                    config,
                    domain,
                    selector,
                    key,
                },
        } => {
            let config = Config::load(&config)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            use tidegate::cli::dkim::Check;
            match runtime.block_on(tidegate::cli::dkim::check(
                &config,
                &domain,
                &selector,
                key.as_deref(),
            ))? {
                Check::Matches => {
                    println!(
                        "{selector}._domainkey.{domain}: the published record matches the key"
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Check::Differs(why) | Check::Missing(why) => {
                    println!("{why}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Check { config: path } => {
            let config = Config::load(&path)?;
            // The signing and sealing keys load as the gateway would load them.
            tidegate::sender_auth::SenderAuth::new(&config, &Default::default())
                .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
            tidegate::queue::recipients::RecipientLists::load(&config)
                .map_err(|e| anyhow::anyhow!("{}: recipients list {e}", path.display()))?;
            if let Some(tokens) = &config.admin.token_file {
                tidegate::admin::tokens::Tokens::load(tokens)
                    .map_err(|e| anyhow::anyhow!("{}: admin.token_file {e}", path.display()))?;
            }
            tidegate::events::Events::check(&config.events)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            if let Some(anchor) = &config.dns.dnssec_trust_anchor {
                tidegate::dns::trust_anchors(anchor).map_err(|e| {
                    anyhow::anyhow!("{}: dns.dnssec_trust_anchor {e}", path.display())
                })?;
            }
            for route in &config.routes {
                if let (Some(certificate), Some(key)) =
                    (&route.client_certificate, &route.client_key)
                {
                    let identity = tidegate::tls::ClientIdentity { certificate, key };
                    tidegate::tls::client_config_with_identity(
                        &tidegate::tls::VerifyMode::AcceptAny,
                        Some(identity),
                    )
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "{}: route `{}` client_certificate: {e}",
                            path.display(),
                            route.name
                        )
                    })?;
                }
            }
            if !config.plugin_list.is_empty() {
                // Every plugin is loaded as the gateway would load it (compiled, linked,
                // initialised with its configuration), so a configuration that `check`
                // passes is one a reload would apply.
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("starting the async runtime")?;
                runtime
                    .block_on(tidegate::plugins::PluginHost::start(
                        &config,
                        Default::default(),
                        Default::default(),
                    ))
                    .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
            }
            println!("{}: ok", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin {
            command:
                PluginCommand::New {
                    name,
                    dir,
                    sdk,
                    sdk_git,
                },
        } => {
            use tidegate::cli::plugin::Sdk;
            let sdk = match (sdk, sdk_git) {
                (Some(path), _) => Sdk::at(&path)?,
                (None, Some(url)) => Sdk::Git(url),
                (None, None) => Sdk::built_in().context(
                    "this binary cannot tell where the plugin SDK is (it is not where it was \
                     built): give --sdk PATH (a copy of plugin-sdk/) or --sdk-git URL",
                )?,
            };
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let names = tidegate::cli::plugin::new(&name, &dir, &sdk)?;
            let shown = dir.display();
            println!(
                "wrote the plugin crate {} to {shown}

  cd {shown}
  cargo test
  \
                 cargo build --release --target wasm32-wasip2
  \
                 tidegate plugin check target/wasm32-wasip2/release/{}.wasm",
                names.package, names.lib
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin {
            command:
                PluginCommand::Check {
                    file,
                    config,
                    gateway_config,
                    name,
                    json,
                },
        } => {
            let settings = tidegate::cli::plugin::CheckSettings {
                config_json: config,
                gateway: gateway_config,
                name,
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let report = runtime.block_on(tidegate::cli::plugin::check(&file, &settings))?;
            if json {
                println!("{}", report.json());
            } else {
                print!("{}", report.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay {
            plugin,
            config,
            records,
            name,
            json,
        } => {
            let settings = tidegate::cli::replay::ReplaySettings {
                plugin,
                config_json: config,
                records,
                name,
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let report = runtime.block_on(tidegate::cli::replay::replay(&settings))?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(if report.is_identical() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Queue { command } => {
            tidegate::cli::admin::queue(command)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Kv { command } => {
            tidegate::cli::kv::kv(command)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Suppression { command } => {
            tidegate::cli::kv::suppression(command)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Quarantine { command } => {
            tidegate::cli::admin::quarantine(command)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugins {
            client,
            action,
            name,
        } => {
            tidegate::cli::admin::plugins(client, action, name)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload { client } => {
            tidegate::cli::admin::reload(client)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::LogLevel { client, level } => {
            tidegate::cli::admin::log_level(client, level)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { config: path } => {
            let config = Config::load(&path)?;
            let _log = tidegate::logging::init(&config.log.level, config.log.format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(tidegate::server::serve(config, path))?;
            // Sessions cut off at the end of the grace period must not hold up the exit.
            runtime.shutdown_background();
            Ok(ExitCode::SUCCESS)
        }
        Command::Spool {
            command: SpoolCommand::Import { client, source },
        } => {
            tidegate::cli::admin::spool_import(client, source)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Spool {
            command: SpoolCommand::Show { config, id },
        } => {
            let config = Config::load(&config)?;
            let id: tidegate::spool::QueueId = id.parse().context("the queue ID")?;
            let path = config.spool.path.join("msg").join(id.to_string());
            let stored = tidegate::spool::read_stored(&path)?;
            let raw = tidegate::spool::read_message(&path, stored.message_len)?;
            let rendered =
                tidegate::spool::envelope::apply_header_edits(&raw, &stored.envelope.header_edits);
            use std::io::Write;
            std::io::stdout()
                .write_all(&rendered)
                .context("writing the message")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Spool {
            command: SpoolCommand::List { config },
        } => {
            let config = Config::load(&config)?;
            let mut problems = false;
            for entry in Spool::list(&config.spool.path)? {
                match entry {
                    Ok(message) => {
                        let envelope = &message.envelope;
                        let recipients: Vec<&str> = envelope
                            .recipients
                            .iter()
                            .map(|r| r.address.as_str())
                            .collect();
                        println!(
                            "{} {} <{}> {}",
                            message.id,
                            message.message_len,
                            envelope.sender.as_deref().unwrap_or(""),
                            recipients.join(",")
                        );
                    }
                    Err(error) => {
                        problems = true;
                        eprintln!("tidegate: {error}");
                    }
                }
            }
            Ok(if problems {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// Reads one line from standard input, without its line ending; refuses an empty one.
fn read_password_line() -> anyhow::Result<zeroize::Zeroizing<Vec<u8>>> {
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("tidegate: type the password (it is echoed) and press Enter");
    }
    let mut line = zeroize::Zeroizing::new(Vec::new());
    stdin
        .lock()
        .read_until(b'\n', &mut line)
        .context("reading the password from standard input")?;
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    anyhow::ensure!(!line.is_empty(), "the password is empty");
    Ok(line)
}
