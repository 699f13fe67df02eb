//! Writing one message into the spool while it streams in.

use std::fs::File;
use std::io::Write;

use super::{QueueId, Spool, SpoolError, encode_trailer, envelope::Envelope, io_error};

/// Bytes buffered in memory before they are written out. Messages below this size are
/// written with a single system call at commit time; larger ones stream through, so a
/// session's memory stays bounded whatever the message size.
const FLUSH_THRESHOLD: usize = 64 * 1024;

/// A message being received. Append its bytes to [`buffer`](Self::buffer), call
/// [`flush_if_full`](Self::flush_if_full) now and then, and finally
/// [`commit`](Self::commit). Dropping it without committing removes the partial file.
#[derive(Debug)]
pub struct MessageWriter {
    spool: Spool,
    id: QueueId,
    buf: Vec<u8>,
    /// Created on the first flush, in `tmp/`.
    file: Option<File>,
    written: u64,
    committed: bool,
}

impl MessageWriter {
    pub(super) fn new(spool: Spool, id: QueueId) -> Self {
        MessageWriter {
            spool,
            id,
            buf: Vec::with_capacity(8 * 1024),
            file: None,
            written: 0,
            committed: false,
        }
    }

    /// The queue ID this message will have.
    pub fn id(&self) -> QueueId {
        self.id
    }

    /// The in-memory buffer to append message bytes to.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Octets of message so far, written and buffered.
    pub fn size(&self) -> u64 {
        self.written + self.buf.len() as u64
    }

    /// Writes the buffer out if it has grown past the threshold.
    pub async fn flush_if_full(&mut self) -> Result<(), SpoolError> {
        if self.buf.len() < FLUSH_THRESHOLD {
            return Ok(());
        }
        let path = self.spool.tmp_path(self.id);
        let file = self.file.take();
        let buf = std::mem::take(&mut self.buf);
        let len = buf.len() as u64;
        let (file, buf) = run_blocking(move || {
            let mut file = match file {
                Some(file) => file,
                None => create_new(&path)?,
            };
            file.write_all(&buf)
                .map_err(io_error("cannot write", &path))?;
            Ok((file, buf))
        })
        .await?;
        self.written += len;
        self.file = Some(file);
        self.buf = buf;
        self.buf.clear();
        Ok(())
    }

    /// The whole message so far, for plugins that inspect it. Small messages are still in
    /// memory; larger ones are read back from the partial file.
    pub async fn contents(&mut self) -> Result<Vec<u8>, SpoolError> {
        let Some(file) = self.file.as_ref() else {
            return Ok(self.buf.clone());
        };
        let path = self.spool.tmp_path(self.id);
        let mut file = file.try_clone().map_err(io_error("cannot reopen", &path))?;
        let tail = self.buf.clone();
        run_blocking(move || {
            use std::io::{Read, Seek, SeekFrom};
            let mut all = Vec::new();
            file.seek(SeekFrom::Start(0))
                .and_then(|_| file.read_to_end(&mut all))
                .map_err(io_error("cannot read", &path))?;
            // The shared file offset is back at the end, where the next write belongs.
            file.seek(SeekFrom::End(0))
                .map_err(io_error("cannot seek", &path))?;
            all.extend_from_slice(&tail);
            Ok(all)
        })
        .await
    }

    /// The first `max` octets of the message so far (its header, for a delivery event),
    /// without reading the rest back.
    pub async fn head(&mut self, max: usize) -> Result<Vec<u8>, SpoolError> {
        let Some(file) = self.file.as_ref() else {
            return Ok(self.buf[..self.buf.len().min(max)].to_vec());
        };
        let path = self.spool.tmp_path(self.id);
        let file = file.try_clone().map_err(io_error("cannot reopen", &path))?;
        run_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut head = vec![0u8; max];
            let mut filled = 0;
            while filled < max {
                match file.read_at(&mut head[filled..], filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) => return Err(io_error("cannot read", &path)(e)),
                }
            }
            head.truncate(filled);
            Ok(head)
        })
        .await
    }

    /// Appends the envelope record, makes the file durable, and renames it into `msg/`
    /// through the group commit. When this returns `Ok`, the message survives a crash and
    /// the 250 may be sent.
    pub async fn commit(mut self, envelope: &Envelope) -> Result<QueueId, SpoolError> {
        let tmp = self.spool.tmp_path(self.id);
        let file = self.file.take();
        let mut buf = std::mem::take(&mut self.buf);
        buf.extend_from_slice(&encode_trailer(envelope));
        let sync_path = tmp.clone();
        run_blocking(move || {
            let mut file = match file {
                Some(file) => file,
                None => create_new(&sync_path)?,
            };
            file.write_all(&buf)
                .map_err(io_error("cannot write", &sync_path))?;
            file.sync_data()
                .map_err(io_error("cannot sync", &sync_path))?;
            Ok(())
        })
        .await?;
        let target = self.spool.msg_path(self.id);
        let result = self.spool.inner.committer.commit(tmp, target).await;
        if result.is_ok() {
            self.committed = true;
        }
        result.map(|()| self.id)
    }
}

impl Drop for MessageWriter {
    fn drop(&mut self) {
        if !self.committed {
            // A refused or abandoned message: its partial file is garbage. The unlink is a
            // single cheap metadata operation, done inline so no partial file outlives its
            // session; start-up removes any that a crash leaves behind.
            let path = self.spool.tmp_path(self.id);
            if self.file.is_some() || path.exists() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

fn create_new(path: &std::path::Path) -> Result<File, SpoolError> {
    // Readable too: `contents` reads the flushed part back for on-data.
    File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_error("cannot create", path))
}

/// Runs file work on tokio's blocking pool so it never stalls a session worker.
async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, SpoolError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| SpoolError::Closed)?
}
