//! The server: opens the spool, binds the listeners, runs until a signal, and shuts down
//! gracefully.
//!
//! Shutdown (SIGTERM or SIGINT): listeners stop accepting at once; idle sessions are told
//! 421 and closed; sessions inside a transaction may finish it, for up to the configured
//! grace period. A message is acknowledged only after its spool commit, so cutting a
//! session off at the end of the grace period loses nothing that got a 250.

use std::path::PathBuf;

use arc_swap::ArcSwap;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::auth::UsersFile;
use crate::config::Config;
use crate::dns::Dns;
use crate::inbound::listener;
use crate::inbound::{InboundContext, InboundParts};
use crate::metrics::Metrics;
use crate::plugins::PluginHost;
use crate::queue::Queue;
use crate::spool::Spool;
use crate::tls::ServerTls;

/// Runs the gateway with `config` until SIGTERM or SIGINT.
pub async fn serve(config: Config, config_path: PathBuf) -> anyhow::Result<()> {
    let config = Arc::new(config);
    raise_open_file_limit();
    let spool_path = &config.spool.path;
    let (spool, recovery) = open_spool(spool_path)
        .await
        .with_context(|| format!("opening the spool {}", spool_path.display()))?;
    tracing::info!(
        spool = %spool_path.display(),
        messages = recovery.messages.len(),
        partial_files_removed = recovery.removed_partials,
        "spool opened; recovering its messages in the background"
    );

    let metrics = Arc::new(Metrics::new());
    let dns = match Dns::new(&config.dns) {
        Ok(dns) => Arc::new(dns),
        // Configured name servers that cannot be used are a configuration error; a host
        // without a usable /etc/resolv.conf can still accept mail and use smarthosts.
        Err(e) if config.dns.nameservers.is_empty() && config.dns.dnssec_trust_anchor.is_none() => {
            tracing::warn!(error = %e, "no DNS resolver: MX delivery and plugin lookups will fail temporarily");
            Arc::new(Dns::default())
        }
        Err(e) => return Err(anyhow::anyhow!(e)),
    };
    let sender_auth = Arc::new(
        crate::sender_auth::SenderAuth::new(&config, &dns).context("loading DKIM signing keys")?,
    );
    let plugins = PluginHost::start(&config, Arc::clone(&dns), Arc::clone(&metrics))
        .await
        .context("loading plugins")?;
    let admin = match config.admin.address {
        Some(address) => {
            let socket = admin::bind(address)
                .await
                .with_context(|| format!("binding the admin listener to {address}"))?;
            let bound = socket.local_addr().context("reading the admin address")?;
            tracing::info!(address = %bound, "admin listening");
            Some(socket)
        }
        None => None,
    };

    let tls = match &config.tls {
        Some(tls_config) => Some(Arc::new(
            ServerTls::load(tls_config).context("loading the TLS certificates")?,
        )),
        None => None,
    };
    let users = match config.auth.as_ref().and_then(|a| a.users_file.as_ref()) {
        Some(path) => Some(Arc::new(ArcSwap::from_pointee(
            UsersFile::load(path).context("loading the AUTH users file")?,
        ))),
        None => None,
    };

    // Bound before the queue starts (it must know them to refuse delivering to itself),
    // served once the sessions' context exists.
    let mut listeners = Vec::with_capacity(config.listeners.len());
    let mut bound_addresses = Vec::with_capacity(config.listeners.len());
    for listener in &config.listeners {
        let bound = listener::bind_one(listener)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        bound_addresses.push(bound.local_addr().context("reading a bound address")?);
        listeners.push((listener.clone(), bound));
    }

    let shutdown = CancellationToken::new();
    // The event sinks outlive the sessions and deliveries, to write out their last events.
    let events_stop = CancellationToken::new();
    let events = crate::events::Events::start(
        &config.events,
        &config.spool.path.join("events"),
        Arc::clone(&metrics),
        events_stop.clone(),
    )
    .context("starting the event sinks")?;
    let recipient_lists = crate::queue::recipients::RecipientLists::load(&config)
        .context("loading a recipients list")?;
    recipient_lists.watch(&shutdown);
    let queue = Queue::start(
        Arc::clone(&config),
        bound_addresses,
        spool.clone(),
        recovery,
        recipient_lists,
        events.clone(),
        Arc::clone(&dns),
        Arc::clone(&plugins),
        Arc::clone(&metrics),
        shutdown.clone(),
    )
    .context("setting up outbound TLS")?;
    let ctx = Arc::new(InboundContext::new(
        Arc::clone(&config),
        InboundParts {
            spool,
            plugins: Arc::clone(&plugins),
            metrics: Arc::clone(&metrics),
            queue,
            tls: tls.clone(),
            users,
            sender_auth,
            dns: Arc::clone(&dns),
            events: events.clone(),
        },
        shutdown.clone(),
    ));
    if let (Some(users), Some(path)) = (
        ctx.users.clone(),
        config.auth.as_ref().and_then(|a| a.users_file.clone()),
    ) {
        tokio::spawn(watch_users(users, path, shutdown.clone()));
    }
    if let (Some(tls), Some(tls_config)) = (tls, config.tls.clone()) {
        tokio::spawn(tls.watch(tls_config, shutdown.clone()));
    }
    let sessions = TaskTracker::new();
    let accepting = TaskTracker::new();
    let running = Arc::new(listener::Listeners::new(
        Arc::clone(&ctx),
        sessions.clone(),
        accepting.clone(),
    ));
    let reconfigurer = Arc::new(crate::reconfigure::Reconfigurer::new(
        config_path.clone(),
        Arc::clone(&plugins),
        ctx.queue.clone(),
        Arc::clone(&ctx),
        Arc::clone(&running),
        Arc::clone(&dns),
    ));
    let readiness = Arc::new(admin::Readiness::default());
    // The admin API outlives the listeners: `/readyz` says "draining" until the end.
    let admin_stop = CancellationToken::new();
    if let Some(socket) = admin {
        let tokens = match &config.admin.token_file {
            Some(path) => {
                Some(admin::tokens::Tokens::load(path).context("loading the admin tokens")?)
            }
            None => None,
        };
        let state = Arc::new(admin::AdminState {
            metrics: Arc::clone(&metrics),
            queue: ctx.queue.clone(),
            plugins: Arc::clone(&plugins),
            tokens,
            readiness: Arc::clone(&readiness),
            reconfigurer: Arc::clone(&reconfigurer),
        });
        tokio::spawn(admin::serve(socket, state, admin_stop.clone()));
    }
    tokio::spawn(Arc::clone(&reconfigurer).watch(shutdown.clone()));
    for (config, bound) in listeners {
        running.start(&config, bound);
    }
    accepting.close();
    readiness.set_started();

    wait_for_signal().await?;
    readiness.set_draining();
    if !config.drain_delay.0.is_zero() {
        tracing::info!(
            secs = config.drain_delay.0.as_secs_f64(),
            "draining: not ready, still accepting"
        );
        tokio::time::sleep(config.drain_delay.0).await;
    }
    let grace = config.shutdown_grace.0;
    tracing::info!(
        grace_secs = grace.as_secs_f64(),
        sessions = ctx.admission.running(),
        "shutting down"
    );
    shutdown.cancel();
    accepting.wait().await;
    sessions.close();
    if tokio::time::timeout(grace, sessions.wait()).await.is_err() {
        tracing::warn!(
            sessions = ctx.admission.running(),
            "grace period over, closing the remaining sessions"
        );
    }
    admin_stop.cancel();
    events_stop.cancel();
    if tokio::time::timeout(std::time::Duration::from_secs(5), events.stopped())
        .await
        .is_err()
    {
        tracing::warn!("event sinks did not finish writing in 5 s");
    }
    tracing::info!("stopped");
    Ok(())
}

/// How long start-up waits for another process's spool lock.
const SPOOL_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens the spool, waiting a few seconds if another process holds its lock: a restart
/// right after `kill -9` (or a supervisor's quick restart) may find the dying process
/// still holding it for a moment, and that must not make the gateway fail to start. A
/// lock still held after the wait is a second gateway on the same spool: an error.
async fn open_spool(
    path: &std::path::Path,
) -> Result<(Spool, crate::spool::Recovery), crate::spool::SpoolError> {
    let deadline = tokio::time::Instant::now() + SPOOL_LOCK_WAIT;
    let mut logged = false;
    loop {
        match Spool::open(path) {
            Err(crate::spool::SpoolError::Locked(_)) if tokio::time::Instant::now() < deadline => {
                if !logged {
                    tracing::warn!(spool = %path.display(), wait_secs = SPOOL_LOCK_WAIT.as_secs(), "spool locked by another process, waiting for the spool lock");
                    logged = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// Reloads the AUTH users file when it changes (or on SIGHUP); a file that does not load
/// leaves the previous users in place.
async fn watch_users(users: Arc<ArcSwap<UsersFile>>, path: PathBuf, shutdown: CancellationToken) {
    let mut trigger = crate::watch::Trigger::new("users file");
    trigger.watch_files([path.as_path()]);
    while let Some(why) = trigger.next(&shutdown).await {
        let file = path.clone();
        match tokio::task::spawn_blocking(move || UsersFile::load(&file)).await {
            Ok(Ok(loaded)) => {
                tracing::info!(trigger = why, users = loaded.len(), "users file reloaded");
                users.store(Arc::new(loaded));
            }
            Ok(Err(e)) => {
                tracing::error!(trigger = why, error = %e, "users file not reloaded, keeping the current one");
            }
            Err(e) => tracing::error!(error = %e, "users file reload task failed"),
        }
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard limit. Every session, pooled outbound
/// connection, spool file and plugin file takes a descriptor, and the usual soft limit of
/// 1024 is reached long before `max_connections` sessions; the hard limit is what the
/// operator (or systemd's `LimitNOFILE`) allows. What was got is logged either way.
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(current), hard) = (limit.current, limit.maximum) else {
        tracing::info!("open files: no limit");
        return;
    };
    let wanted = hard.unwrap_or(current);
    if wanted <= current {
        tracing::info!(
            limit = current,
            "open files limit (already at the hard limit)"
        );
        return;
    }
    let raised = rustix::process::Rlimit {
        current: Some(wanted),
        maximum: hard,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!(
            from = current,
            to = wanted,
            "open files limit raised to the hard limit"
        ),
        Err(e) => {
            tracing::warn!(limit = current, hard = wanted, error = %e, "cannot raise the open files limit")
        }
    }
}
