//! Listening sockets: accept connections, admit them, and start a session for each.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
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
            socket,
        })
    }

    /// The address actually bound (useful when the configured port is 0).
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.socket.local_addr()
    }

    /// Accepts connections until shutdown; sessions are spawned on `sessions` so the
    /// server can wait for them.
    pub async fn serve(self, ctx: Arc<InboundContext>, sessions: TaskTracker) {
        loop {
            // Biased, shutdown first: once shutdown has begun, a connection waiting in the
            // backlog must not be accepted (and greeted) by a random choice of branch.
            let accepted = tokio::select! {
                biased;
                () = ctx.shutdown.cancelled() => break,
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
            match ctx.admission.admit(peer.ip()) {
                Ok(permit) => {
                    let ctx = Arc::clone(&ctx);
                    let name = Arc::clone(&self.name);
                    let protocol = self.protocol;
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
                    tracing::info!(%peer, listener = %self.name, %refusal, "connection refused");
                    let hostname = ctx.config.hostname.to_string();
                    sessions.spawn(refuse(stream, hostname, refusal));
                }
            }
        }
        tracing::info!(listener = %self.name, "listener closed");
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
