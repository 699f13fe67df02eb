//! The byte stream under a session: plain TCP, or TLS (implicit on `smtps` listeners, or
//! after STARTTLS). One type for both, so the session's code does not care which.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A session's stream.
#[derive(Debug)]
pub enum SessionStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
    /// Between a plain stream and its TLS successor (only during the handshake), or after
    /// a failed handshake: every operation fails.
    Gone,
}

impl SessionStream {
    /// Whether the stream is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, SessionStream::Tls(_))
    }

    /// Runs the server side of a TLS handshake over the plain stream. On failure the
    /// stream is gone and the session must end.
    pub async fn upgrade(&mut self, acceptor: &TlsAcceptor) -> io::Result<()> {
        let SessionStream::Plain(tcp) = std::mem::replace(self, SessionStream::Gone) else {
            return Err(io::Error::other("the stream is not plain TCP"));
        };
        let tls = acceptor.accept(tcp).await?;
        *self = SessionStream::Tls(Box::new(tls));
        Ok(())
    }

    /// The TLS version, cipher and server name, for plugins.
    pub fn tls_facts(&self) -> Option<(String, String, Option<String>)> {
        match self {
            SessionStream::Tls(tls) => {
                let conn = tls.get_ref().1;
                let (version, cipher) = crate::tls::handshake_facts(conn)?;
                Some((
                    version,
                    cipher,
                    crate::tls::sni_name(conn).map(str::to_owned),
                ))
            }
            _ => None,
        }
    }

    /// The TLS version and cipher, for the `Received:` header and logs.
    pub fn tls_summary(&self) -> Option<String> {
        match self {
            SessionStream::Tls(tls) => crate::tls::handshake_summary(tls.get_ref().1),
            _ => None,
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the session stream is gone")
}

impl AsyncRead for SessionStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SessionStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            SessionStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            SessionStream::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for SessionStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SessionStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            SessionStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            SessionStream::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SessionStream::Plain(s) => Pin::new(s).poll_flush(cx),
            SessionStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            SessionStream::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SessionStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            SessionStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            SessionStream::Gone => Poll::Ready(Ok(())),
        }
    }
}
