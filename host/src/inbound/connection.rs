//! The byte level of a session: a bounded read buffer, a write buffer, and timeouts.
//!
//! Replies are queued, not written, and the queue is flushed only when the session is about
//! to wait for more input. A client that pipelines (RFC 2920) therefore gets every reply to
//! its batch in one write, in order, and a client that does not gets each reply at once.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::reply::Reply;

/// The read buffer's size: large enough for a pipelined transaction or a good slice of
/// message data, small enough that 1,000 idle sessions cost little.
const READ_BUFFER: usize = 16 * 1024;

/// A stream an SMTP session can run over (plain TCP now, TLS later).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// What waiting for a command line produced.
#[derive(Debug, PartialEq, Eq)]
pub enum LineEvent {
    /// A complete line, without its line ending, is in the caller's buffer.
    Line,
    /// The line was longer than allowed; it has been consumed and discarded.
    TooLong,
    /// The client closed the connection.
    Closed,
    /// No complete line arrived in time.
    TimedOut,
    /// The server is shutting down and the session was idle.
    Shutdown,
}

/// What waiting for more bytes produced.
#[derive(Debug, PartialEq, Eq)]
pub enum FillEvent {
    /// More bytes are buffered.
    Filled,
    /// The client closed the connection.
    Closed,
    /// Nothing arrived in time.
    TimedOut,
}

/// A buffered SMTP connection.
#[derive(Debug)]
pub struct Connection<S> {
    stream: S,
    rbuf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Set while the rest of an over-long line is being thrown away.
    discarding: bool,
    /// The first octets of the last over-long line, so the session can tell what it was
    /// (an over-long BDAT must end the session: its chunk cannot be skipped).
    long_head: [u8; LONG_HEAD],
    long_head_len: usize,
    wbuf: Vec<u8>,
}

/// How much of an over-long line is kept to recognise it.
const LONG_HEAD: usize = 8;

impl<S: Stream> Connection<S> {
    /// Wraps a connected stream.
    pub fn new(stream: S) -> Self {
        Connection {
            stream,
            rbuf: vec![0u8; READ_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            discarding: false,
            long_head: [0; LONG_HEAD],
            long_head_len: 0,
            wbuf: Vec::with_capacity(512),
        }
    }

    /// Queues a reply; it is sent at the next flush.
    pub fn queue(&mut self, reply: &Reply) {
        reply.write_to(&mut self.wbuf);
    }

    /// Sends every queued reply.
    pub async fn flush(&mut self, timeout: Duration) -> io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let write = async {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(result) => result?,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
        }
        self.wbuf.clear();
        Ok(())
    }

    /// Waits for the next command line (at most `max` octets with its line ending) and
    /// copies it, without the line ending, into `line`. Queued replies are flushed before
    /// waiting. While waiting, a cancelled `shutdown` token ends the wait.
    pub async fn read_line(
        &mut self,
        line: &mut Vec<u8>,
        max: usize,
        timeout: Duration,
        shutdown: Option<&CancellationToken>,
    ) -> io::Result<LineEvent> {
        // The timeout bounds the whole command, not each read: a client trickling one
        // byte at a time must not hold a session open forever.
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let pending = &self.rbuf[self.start..self.end];
            if let Some(pos) = memchr::memchr(b'\n', pending) {
                let taken = pos + 1;
                let text = &pending[..pos];
                let text = text.strip_suffix(b"\r").unwrap_or(text);
                let event = if self.discarding || taken > max {
                    if !self.discarding {
                        let n = text.len().min(LONG_HEAD);
                        self.long_head[..n].copy_from_slice(&text[..n]);
                        self.long_head_len = n;
                    }
                    self.discarding = false;
                    LineEvent::TooLong
                } else {
                    line.clear();
                    line.extend_from_slice(text);
                    LineEvent::Line
                };
                self.start += taken;
                return Ok(event);
            }
            if pending.len() >= max {
                // Keep no more of an over-long line than needed to find its end (and to
                // recognise it).
                if !self.discarding {
                    let n = pending.len().min(LONG_HEAD);
                    self.long_head[..n].copy_from_slice(&pending[..n]);
                    self.long_head_len = n;
                }
                self.discarding = true;
                self.start = self.end;
            }
            self.flush(timeout).await?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(LineEvent::TimedOut);
            }
            let filled = match shutdown {
                Some(token) => tokio::select! {
                    biased;
                    () = token.cancelled() => return Ok(LineEvent::Shutdown),
                    filled = self.fill(left) => filled?,
                },
                None => self.fill(left).await?,
            };
            match filled {
                FillEvent::Filled => {}
                FillEvent::Closed => return Ok(LineEvent::Closed),
                FillEvent::TimedOut => return Ok(LineEvent::TimedOut),
            }
        }
    }

    /// The first octets of the last line that was [`LineEvent::TooLong`].
    pub fn long_line_head(&self) -> &[u8] {
        &self.long_head[..self.long_head_len]
    }

    /// The bytes received but not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.rbuf[self.start..self.end]
    }

    /// Marks `n` buffered bytes as consumed.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    /// Flushes queued replies, then reads more bytes into the buffer.
    pub async fn fill(&mut self, timeout: Duration) -> io::Result<FillEvent> {
        self.flush(timeout).await?;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.rbuf.len() {
            self.rbuf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let read = self.stream.read(&mut self.rbuf[self.end..]);
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(0)) => Ok(FillEvent::Closed),
            Ok(Ok(n)) => {
                self.end += n;
                Ok(FillEvent::Filled)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(FillEvent::TimedOut),
        }
    }

    /// The stream, for a TLS upgrade.
    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// The stream.
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// Forgets everything received but not yet processed. After STARTTLS, anything the
    /// client sent before the handshake must not be executed inside TLS (RFC 3207 §4.2,
    /// the command-injection flaw of CVE-2011-0411).
    pub fn discard_buffered(&mut self) {
        self.start = 0;
        self.end = 0;
        self.discarding = false;
    }

    /// Sends queued replies and closes the write side.
    pub async fn close(&mut self, timeout: Duration) -> io::Result<()> {
        self.flush(timeout).await?;
        let _ = tokio::time::timeout(timeout, self.stream.shutdown()).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn pipelined_lines_come_out_one_by_one() {
        let (client, server) = tokio::io::duplex(1024);
        let mut conn = Connection::new(server);
        let mut client = client;
        client
            .write_all(b"EHLO a\r\nMAIL FROM:<>\nNOOP\r\n")
            .await
            .unwrap();
        let mut line = Vec::new();
        for expected in [&b"EHLO a"[..], b"MAIL FROM:<>", b"NOOP"] {
            assert_eq!(
                conn.read_line(&mut line, 512, T, None).await.unwrap(),
                LineEvent::Line
            );
            assert_eq!(line, expected);
        }
        drop(client);
        assert_eq!(
            conn.read_line(&mut line, 512, T, None).await.unwrap(),
            LineEvent::Closed
        );
    }

    #[tokio::test]
    async fn over_long_lines_are_discarded_whole() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut conn = Connection::new(server);
        let long = vec![b'x'; 40_000];
        client.write_all(b"NOOP ").await.unwrap();
        client.write_all(&long).await.unwrap();
        client.write_all(b"\r\nQUIT\r\n").await.unwrap();
        let mut line = Vec::new();
        assert_eq!(
            conn.read_line(&mut line, 512, T, None).await.unwrap(),
            LineEvent::TooLong
        );
        assert_eq!(
            conn.read_line(&mut line, 512, T, None).await.unwrap(),
            LineEvent::Line
        );
        assert_eq!(line, b"QUIT");
    }

    #[tokio::test]
    async fn the_head_of_an_over_long_line_is_kept() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut conn = Connection::new(server);
        let mut long = b"BDAT 10".to_vec();
        long.extend(std::iter::repeat_n(b' ', 30_000));
        long.extend_from_slice(b"LAST\r\nNOOP ");
        long.extend(std::iter::repeat_n(b'x', 600));
        long.extend_from_slice(b"\r\n");
        client.write_all(&long).await.unwrap();
        let mut line = Vec::new();
        assert_eq!(
            conn.read_line(&mut line, 512, T, None).await.unwrap(),
            LineEvent::TooLong
        );
        assert_eq!(conn.long_line_head(), b"BDAT 10 ");
        assert_eq!(
            conn.read_line(&mut line, 512, T, None).await.unwrap(),
            LineEvent::TooLong
        );
        assert_eq!(conn.long_line_head(), b"NOOP xxx");
    }

    #[tokio::test]
    async fn a_line_at_the_limit_is_accepted_and_one_over_is_not() {
        let (mut client, server) = tokio::io::duplex(4096);
        let mut conn = Connection::new(server);
        let mut exact = vec![b'a'; 510];
        exact.extend_from_slice(b"\r\n");
        let mut over = vec![b'b'; 511];
        over.extend_from_slice(b"\r\n");
        client.write_all(&exact).await.unwrap();
        client.write_all(&over).await.unwrap();
        let mut line = Vec::new();
        assert_eq!(
            conn.read_line(&mut line, 512, T, None).await.unwrap(),
            LineEvent::Line
        );
        assert_eq!(
            conn.read_line(&mut line, 512, T, None).await.unwrap(),
            LineEvent::TooLong
        );
    }
}
