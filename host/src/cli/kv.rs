//! `tidegate kv` and `tidegate suppression`: an operator's view of a plugin's key/value
//! namespace through the admin API (list, set, delete), and the same for the `suppression`
//! plugin's list in its own words (addresses, reasons).

use clap::Subcommand;

use super::admin::{Client, ClientArgs, block_on, print_json, table, url_encode};
use crate::admin::KvEntry;

/// The key prefix the `suppression` plugin keeps addresses under.
const SUPPRESSED: &str = "s:";

/// `tidegate kv ...`
#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// The keys of a plugin's namespace (with a prefix), their values and lifetimes.
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// The plugin.
        #[arg(long)]
        plugin: String,
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many (up to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Sets a key (within the plugin's quota).
    Set {
        #[command(flatten)]
        client: ClientArgs,
        /// The plugin.
        #[arg(long)]
        plugin: String,
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Seconds it lives; for ever when absent.
        #[arg(long)]
        ttl_secs: Option<u64>,
    },
    /// Deletes a key.
    Delete {
        #[command(flatten)]
        client: ClientArgs,
        /// The plugin.
        #[arg(long)]
        plugin: String,
        /// The key.
        key: String,
    },
}

/// `tidegate suppression ...`
#[derive(Debug, Subcommand)]
pub enum SuppressionCommand {
    /// The suppressed addresses and why.
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// The suppression plugin's name.
        #[arg(long, default_value = "suppression")]
        plugin: String,
        /// At most this many (up to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Suppresses an address: mail to it from the plugin's listeners is refused.
    Add {
        #[command(flatten)]
        client: ClientArgs,
        /// The suppression plugin's name.
        #[arg(long, default_value = "suppression")]
        plugin: String,
        /// The address.
        address: String,
        /// Why (kept with it).
        #[arg(long, default_value = "added by the operator")]
        reason: String,
        /// Days it stays suppressed; for ever when absent.
        #[arg(long)]
        days: Option<u64>,
    },
    /// Lets mail to an address through again.
    Remove {
        #[command(flatten)]
        client: ClientArgs,
        /// The suppression plugin's name.
        #[arg(long, default_value = "suppression")]
        plugin: String,
        /// The address.
        address: String,
    },
}

async fn list(
    client: &Client,
    plugin: &str,
    prefix: &str,
    limit: usize,
) -> anyhow::Result<(Vec<KvEntry>, hyper::body::Bytes)> {
    client
        .get(&format!(
            "/v1/kv/{}?prefix={}&limit={limit}",
            url_encode(plugin),
            url_encode(prefix)
        ))
        .await
}

async fn set(
    client: &Client,
    plugin: &str,
    key: &str,
    value: &str,
    ttl_secs: Option<u64>,
) -> anyhow::Result<()> {
    let _: (serde_json::Value, _) = client
        .send(
            hyper::Method::PUT,
            &format!("/v1/kv/{}", url_encode(plugin)),
            serde_json::json!({ "key": key, "value": value, "ttl_secs": ttl_secs }),
        )
        .await?;
    Ok(())
}

async fn delete(client: &Client, plugin: &str, key: &str) -> anyhow::Result<()> {
    let _: (serde_json::Value, _) = client
        .send(
            hyper::Method::DELETE,
            &format!("/v1/kv/{}?key={}", url_encode(plugin), url_encode(key)),
            serde_json::json!({}),
        )
        .await?;
    Ok(())
}

fn lifetime(entry: &KvEntry) -> String {
    entry
        .ttl_secs
        .map_or_else(|| "-".to_owned(), |s| format!("{}d", s.div_ceil(86_400)))
}

/// Runs `tidegate kv ...`.
pub fn kv(command: KvCommand) -> anyhow::Result<()> {
    block_on(async move {
        match command {
            KvCommand::List {
                client: args,
                plugin,
                prefix,
                limit,
            } => {
                let client = Client::new(&args)?;
                let (entries, body) = list(&client, &plugin, &prefix, limit).await?;
                if args.json {
                    print_json(&body);
                } else {
                    let rows: Vec<Vec<String>> = entries
                        .iter()
                        .map(|e| vec![e.key.clone(), lifetime(e), e.value.clone()])
                        .collect();
                    table(&["KEY", "EXPIRES IN", "VALUE"], &rows);
                }
            }
            KvCommand::Set {
                client: args,
                plugin,
                key,
                value,
                ttl_secs,
            } => {
                set(&Client::new(&args)?, &plugin, &key, &value, ttl_secs).await?;
                println!("{plugin}: {key} set");
            }
            KvCommand::Delete {
                client: args,
                plugin,
                key,
            } => {
                delete(&Client::new(&args)?, &plugin, &key).await?;
                println!("{plugin}: {key} deleted");
            }
        }
        Ok(())
    })
}

/// The key of a suppressed address (as the plugin keeps it: lowercase).
fn suppressed_key(address: &str) -> anyhow::Result<String> {
    let address = address.trim().to_lowercase();
    if !address.contains('@') || address.len() > 320 || address.chars().any(char::is_whitespace) {
        anyhow::bail!("`{address}` is not an email address");
    }
    Ok(format!("{SUPPRESSED}{address}"))
}

/// Runs `tidegate suppression ...`.
pub fn suppression(command: SuppressionCommand) -> anyhow::Result<()> {
    block_on(async move {
        match command {
            SuppressionCommand::List {
                client: args,
                plugin,
                limit,
            } => {
                let client = Client::new(&args)?;
                let (entries, body) = list(&client, &plugin, SUPPRESSED, limit).await?;
                if args.json {
                    print_json(&body);
                } else {
                    let rows: Vec<Vec<String>> = entries
                        .iter()
                        .map(|e| {
                            vec![
                                e.key.trim_start_matches(SUPPRESSED).to_owned(),
                                lifetime(e),
                                e.value.clone(),
                            ]
                        })
                        .collect();
                    table(&["ADDRESS", "EXPIRES IN", "REASON"], &rows);
                }
            }
            SuppressionCommand::Add {
                client: args,
                plugin,
                address,
                reason,
                days,
            } => {
                let key = suppressed_key(&address)?;
                let ttl = days.map(|d| d.saturating_mul(86_400));
                set(&Client::new(&args)?, &plugin, &key, &reason, ttl).await?;
                println!("{address} suppressed");
            }
            SuppressionCommand::Remove {
                client: args,
                plugin,
                address,
            } => {
                let key = suppressed_key(&address)?;
                delete(&Client::new(&args)?, &plugin, &key).await?;
                println!("{address} no longer suppressed");
            }
        }
        Ok(())
    })
}
