//! Listening sockets: accept connections, admit them, and start a session for each.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::InboundContext;
use super::admission::Refusal;
use super::reply::{Reply, codes};
use super::session::Session;
use super::stream::SessionStream;
use crate::config::ListenerConfig;
use crate::metrics::ListenerLabels;

/// Connections the kernel may queue before they are accepted.
const LISTEN_BACKLOG: u32 = 4096;

/// A bound listening socket.
#[derive(Debug)]
pub struct Listener {
    name: Arc<str>,
    protocol: crate::config::Protocol,
    /// The trusted proxies, when connections start with a PROXY header.
    proxy: Option<Arc<Vec<ipnet::IpNet>>>,
    socket: TcpListener,
}

impl Listener {
    /// Binds the socket of one `[[listener]]`.
    pub async fn bind(config: &ListenerConfig) -> io::Result<Listener> {
        let socket = if config.address.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(config.address)?;
        // The usual backlog of 128 overflows when hundreds of clients connect at once (a
        // burst after an outage, a busy MX), and the kernel then drops their SYNs; the
        // kernel still caps this at net.core.somaxconn.
        let socket = socket.listen(LISTEN_BACKLOG)?;
        Ok(Listener {
            name: Arc::from(config.name.as_str()),
            protocol: config.protocol,
            proxy: config
                .proxy_protocol
                .then(|| Arc::new(config.proxy_trusted.clone())),
            socket,
        })
    }

    /// The address actually bound (useful when the configured port is 0).
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.socket.local_addr()
    }

    /// Accepts connections until shutdown or `stop` (a reload removed the listener);
    /// sessions are spawned on `sessions` so the server can wait for them, and they
    /// finish whatever stops the listener.
    pub async fn serve(
        self,
        ctx: Arc<InboundContext>,
        sessions: TaskTracker,
        stop: CancellationToken,
    ) {
        loop {
            // Biased, shutdown first: once shutdown has begun, a connection waiting in the
            // backlog must not be accepted (and greeted) by a random choice of branch.
            let accepted = tokio::select! {
                biased;
                () = ctx.shutdown.cancelled() => break,
                () = stop.cancelled() => break,
                accepted = self.socket.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = %self.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let Some(proxy) = &self.proxy else {
                admit(&ctx, &sessions, &self.name, self.protocol, stream, peer);
                continue;
            };
            // The header is read on a task of its own: a slow proxy must not hold up the
            // accept loop.
            let (ctx, sessions) = (Arc::clone(&ctx), sessions.clone());
            let (name, protocol, trusted) =
                (Arc::clone(&self.name), self.protocol, Arc::clone(proxy));
            sessions.clone().spawn(async move {
                let mut stream = stream;
                let real = if super::proxy::trusted(peer.ip(), &trusted) {
                    match tokio::time::timeout(
                        super::proxy::HEADER_TIMEOUT,
                        super::proxy::read_header(&mut stream, peer),
                    )
                    .await
                    {
                        Ok(result) => result,
                        Err(_) => Err(super::proxy::ProxyError::Missing("timed out".into())),
                    }
                } else {
                    Err(super::proxy::ProxyError::Untrusted(peer.ip()))
                };
                match real {
                    Ok(client) => admit(&ctx, &sessions, &name, protocol, stream, client),
                    Err(e) => {
                        ctx.metrics.connections_refused.inc();
                        tracing::info!(%peer, listener = %name, error = %e, "connection closed before its session");
                    }
                }
            });
        }
        tracing::info!(listener = %self.name, "listener closed");
    }
}

/// Admits a connection from `peer` (the real client) and starts its session, or tells it
/// it was not admitted.
fn admit(
    ctx: &Arc<InboundContext>,
    sessions: &TaskTracker,
    name: &Arc<str>,
    protocol: crate::config::Protocol,
    stream: TcpStream,
    peer: std::net::SocketAddr,
) {
    match ctx.admission.admit(peer.ip()) {
        Ok(permit) => {
            let ctx = Arc::clone(ctx);
            let name = Arc::clone(name);
            ctx.metrics
                .sessions
                .get_or_create(&ListenerLabels {
                    listener: name.to_string(),
                })
                .inc();
            sessions.spawn(async move {
                let _permit = permit;
                let metrics = Arc::clone(&ctx.metrics);
                metrics.sessions_active.inc();
                tracing::debug!(%peer, listener = %name, "session start");
                Session::new(SessionStream::Plain(stream), peer, name, protocol, ctx)
                    .run()
                    .await;
                metrics.sessions_active.dec();
            });
        }
        Err(refusal) => {
            ctx.metrics.connections_refused.inc();
            tracing::info!(%peer, listener = %name, %refusal, "connection refused");
            let hostname = ctx.config.hostname.to_string();
            sessions.spawn(refuse(stream, hostname, refusal));
        }
    }
}

/// Tells a client it was not admitted (RFC 5321 §3.1 allows 421 in place of the greeting).
async fn refuse(mut stream: TcpStream, hostname: String, refusal: Refusal) {
    let reply = Reply::new(
        421,
        codes::SECURITY_TEMPORARY,
        format!("{hostname} {refusal}, try again later"),
    );
    let mut wire = Vec::new();
    reply.write_to(&mut wire);
    let send = async {
        stream.write_all(&wire).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), send).await;
}

/// The listeners running now, which a reload may add to or take from.
#[derive(Debug)]
pub struct Listeners {
    ctx: Arc<InboundContext>,
    sessions: TaskTracker,
    accepting: TaskTracker,
    running: std::sync::Mutex<Vec<Running>>,
}

#[derive(Debug)]
struct Running {
    name: String,
    configured: std::net::SocketAddr,
    protocol: crate::config::Protocol,
    /// `proxy_protocol` and `proxy_trusted`, as bound.
    proxy: (bool, Vec<ipnet::IpNet>),
    bound: std::net::SocketAddr,
    stop: CancellationToken,
}

/// Listeners a reload has bound, ready to start with [`Listeners::apply`]; dropped, they
/// close and nothing has changed.
#[derive(Debug, Default)]
pub struct Plan {
    bound: Vec<(ListenerConfig, Listener)>,
    keep: Vec<String>,
    /// Listeners whose protocol changed on the same address: only a restart can rebind.
    pub needs_restart: Vec<String>,
}

/// Binds one listener, saying which in the error.
pub async fn bind_one(config: &ListenerConfig) -> Result<Listener, String> {
    Listener::bind(config).await.map_err(|e| {
        format!(
            "binding listener `{}` to {}: {e}",
            config.name, config.address
        )
    })
}

impl Listeners {
    /// No listeners yet; sessions go on `sessions`, accept loops on `accepting`.
    pub fn new(ctx: Arc<InboundContext>, sessions: TaskTracker, accepting: TaskTracker) -> Self {
        Listeners {
            ctx,
            sessions,
            accepting,
            running: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Vec<Running>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts serving a bound listener.
    pub fn start(&self, config: &ListenerConfig, listener: Listener) {
        let bound = listener.local_addr().unwrap_or(config.address);
        tracing::info!(listener = %config.name, address = %bound, "listening");
        let stop = self.ctx.shutdown.child_token();
        self.running().push(Running {
            name: config.name.clone(),
            configured: config.address,
            protocol: config.protocol,
            proxy: (config.proxy_protocol, config.proxy_trusted.clone()),
            bound,
            stop: stop.clone(),
        });
        self.accepting
            .spawn(listener.serve(Arc::clone(&self.ctx), self.sessions.clone(), stop));
    }

    /// The addresses bound now.
    pub fn addresses(&self) -> Vec<std::net::SocketAddr> {
        self.running().iter().map(|r| r.bound).collect()
    }

    /// Binds what `wanted` adds or moves; nothing runs yet, and a failure changes nothing.
    pub async fn prepare(&self, wanted: &[ListenerConfig]) -> Result<Plan, String> {
        let mut plan = Plan::default();
        /// A running listener as a reload compares it: name, address, protocol, PROXY.
        type Bound = (
            String,
            std::net::SocketAddr,
            crate::config::Protocol,
            (bool, Vec<ipnet::IpNet>),
        );
        let current: Vec<Bound> = self
            .running()
            .iter()
            .map(|r| (r.name.clone(), r.configured, r.protocol, r.proxy.clone()))
            .collect();
        for config in wanted {
            let same = current.iter().find(|(name, ..)| *name == config.name);
            let proxy = (config.proxy_protocol, config.proxy_trusted.clone());
            match same {
                Some((_, address, protocol, bound_proxy))
                    if *address == config.address
                        && *protocol == config.protocol
                        && *bound_proxy == proxy =>
                {
                    plan.keep.push(config.name.clone());
                }
                Some((_, address, ..)) if *address == config.address => {
                    plan.keep.push(config.name.clone());
                    plan.needs_restart.push(format!(
                        "listener `{}` protocol or PROXY settings",
                        config.name
                    ));
                }
                _ => plan.bound.push((config.clone(), bind_one(config).await?)),
            }
        }
        Ok(plan)
    }

    /// Stops the listeners `plan` does not keep (their sessions finish) and starts the
    /// ones it bound; returns the names added and removed.
    pub fn apply(&self, plan: Plan) -> (Vec<String>, Vec<String>) {
        let mut removed = Vec::new();
        self.running().retain(|r| {
            let kept = plan.keep.contains(&r.name);
            if !kept {
                r.stop.cancel();
                removed.push(r.name.clone());
            }
            kept
        });
        let mut added = Vec::new();
        for (config, listener) in plan.bound {
            added.push(config.name.clone());
            self.start(&config, listener);
        }
        (added, removed)
    }
}
