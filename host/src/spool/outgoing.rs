//! A spooled message on its way out: the octets that leave, without holding a large
//! message in memory. The header block, with the plugins' header edits applied, is in
//! memory (with the rest of the message when it is small, which most mail is); the body
//! of a large message is read from the spool file as it is sent, a block at a time, so two
//! hundred deliveries of 50 MB messages cost two hundred buffers, not 10 GB.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};

use super::envelope::{HeaderEdit, apply_header_edits, find_header_end};

/// Messages up to this size are read whole: one read instead of a file kept open.
const INLINE: u64 = 256 * 1024;

/// The octets of a message as they leave: `head`, then (for a large message) `tail`.
#[derive(Debug, Clone)]
pub struct MessageOctets {
    head: Vec<u8>,
    tail: Option<Tail>,
}

/// The part of a large message still in the spool file.
#[derive(Debug, Clone)]
struct Tail {
    path: PathBuf,
    offset: u64,
    len: u64,
}

impl MessageOctets {
    /// A message held in memory (a test, or one the queue wrote itself).
    pub fn in_memory(octets: Vec<u8>) -> Self {
        MessageOctets {
            head: octets,
            tail: None,
        }
    }

    /// Opens the message stored in the first `message_len` octets of `path`, with
    /// `edits` applied to its header block. Blocking.
    pub fn open(path: &Path, message_len: u64, edits: &[HeaderEdit]) -> io::Result<Self> {
        let mut file = std::fs::File::open(path)?;
        let prefix_len = message_len.min(INLINE);
        let mut prefix = Vec::with_capacity(prefix_len as usize);
        (&mut file).take(prefix_len).read_to_end(&mut prefix)?;
        if (prefix.len() as u64) < prefix_len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the spool file is shorter than its message",
            ));
        }
        let header_end = find_header_end(&prefix);
        let whole = prefix_len == message_len;
        if whole || header_end < prefix.len() {
            let head = apply_header_edits(&prefix, edits);
            let tail = (!whole).then(|| Tail {
                path: path.to_owned(),
                offset: prefix_len,
                len: message_len - prefix_len,
            });
            return Ok(MessageOctets { head, tail });
        }
        // A header block larger than the prefix (nothing legitimate has one): the
        // message is read whole so that the edits see all of it.
        file.seek(SeekFrom::Start(prefix_len))?;
        file.take(message_len - prefix_len)
            .read_to_end(&mut prefix)?;
        if (prefix.len() as u64) < message_len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the spool file is shorter than its message",
            ));
        }
        Ok(MessageOctets::in_memory(apply_header_edits(&prefix, edits)))
    }

    /// The length in octets of what leaves.
    pub fn len(&self) -> u64 {
        self.head.len() as u64 + self.tail.as_ref().map_or(0, |t| t.len)
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The start of the message, at least its whole header block (what a DSN returns).
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// A reader of every octet, in order (the spool file is opened again for each).
    pub async fn reader(&self) -> io::Result<Box<dyn AsyncRead + Unpin + Send + '_>> {
        let head = &self.head[..];
        match &self.tail {
            None => Ok(Box::new(head)),
            Some(tail) => {
                let mut file = tokio::fs::File::open(&tail.path).await?;
                file.seek(SeekFrom::Start(tail.offset)).await?;
                Ok(Box::new(AsyncReadExt::chain(
                    head,
                    AsyncReadExt::take(file, tail.len),
                )))
            }
        }
    }

    /// A blocking reader of every octet, in order (for local transports).
    pub fn blocking_reader(&self) -> io::Result<Box<dyn Read + Send + '_>> {
        let head = &self.head[..];
        match &self.tail {
            None => Ok(Box::new(head)),
            Some(tail) => {
                let mut file = std::fs::File::open(&tail.path)?;
                file.seek(SeekFrom::Start(tail.offset))?;
                Ok(Box::new(Read::chain(head, Read::take(file, tail.len))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all_async(outgoing: &MessageOctets) -> Vec<u8> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let mut out = Vec::new();
                outgoing
                    .reader()
                    .await
                    .unwrap()
                    .read_to_end(&mut out)
                    .await
                    .unwrap();
                out
            })
    }

    fn read_all_blocking(outgoing: &MessageOctets) -> Vec<u8> {
        let mut out = Vec::new();
        outgoing
            .blocking_reader()
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn a_large_message_leaves_with_its_edits_and_its_body_read_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("msg");
        let body: Vec<u8> = (0..3 * INLINE as usize)
            .map(|i| b"abcdefghij\r\n"[i % 12])
            .collect();
        let mut message = b"Subject: big\r\nX-Drop: me\r\n\r\n".to_vec();
        message.extend_from_slice(&body);
        let mut file = message.clone();
        file.extend_from_slice(b"ENVELOPE AND FOOTER");
        std::fs::write(&path, &file).unwrap();
        let edits = [
            HeaderEdit::Remove {
                name: "x-drop".into(),
            },
            HeaderEdit::Add {
                name: "X-Score".into(),
                value: "1".into(),
            },
        ];
        let outgoing = MessageOctets::open(&path, message.len() as u64, &edits).unwrap();
        let mut expected = b"X-Score: 1\r\nSubject: big\r\n\r\n".to_vec();
        expected.extend_from_slice(&body);
        assert!(
            outgoing.head().len() as u64 <= INLINE + 64,
            "not read whole"
        );
        assert_eq!(outgoing.len(), expected.len() as u64);
        assert_eq!(read_all_async(&outgoing), expected);
        assert_eq!(read_all_blocking(&outgoing), expected);
    }

    #[test]
    fn small_messages_and_huge_headers_are_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("msg");
        let small = b"Subject: small\r\n\r\nhello\r\n".to_vec();
        std::fs::write(&path, &small).unwrap();
        let outgoing = MessageOctets::open(&path, small.len() as u64, &[]).unwrap();
        assert_eq!(outgoing.head(), &small[..]);
        assert_eq!(read_all_async(&outgoing), small);

        let mut huge = Vec::new();
        while huge.len() < 2 * INLINE as usize {
            huge.extend_from_slice(b"X-Long: 0123456789012345678901234567890123456789\r\n");
        }
        huge.extend_from_slice(b"\r\nbody\r\n");
        std::fs::write(&path, &huge).unwrap();
        let edits = [HeaderEdit::Remove {
            name: "x-long".into(),
        }];
        let outgoing = MessageOctets::open(&path, huge.len() as u64, &edits).unwrap();
        assert_eq!(read_all_blocking(&outgoing), b"\r\nbody\r\n");

        assert_eq!(
            MessageOctets::open(&path, huge.len() as u64 + 1, &[])
                .unwrap_err()
                .kind(),
            io::ErrorKind::UnexpectedEof
        );
    }
}
