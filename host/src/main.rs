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
    /// Look at the spool.
    Spool {
        #[command(subcommand)]
        command: SpoolCommand,
    },
}

#[derive(Debug, Subcommand)]
enum SpoolCommand {
    /// List the messages in the spool: ID, size, sender, recipients (safe while serving).
    List {
        /// The configuration file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
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
        Command::Check { config } => {
            Config::load(&config)?;
            println!("{}: ok", config.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { config: path } => {
            let config = Config::load(&path)?;
            init_logging(&config.log.level);
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

fn init_logging(level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}
