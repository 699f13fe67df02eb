//! Group commit: one task renames finished messages into `msg/` in batches and makes each
//! batch durable with a single directory fsync.
//!
//! Every session that finishes DATA while a batch is being synced joins the next batch, so
//! under load the cost of the directory fsync is shared, and no session ever gets its 250
//! before its own rename is on disk.

use std::fs::File;
use std::path::PathBuf;

use tokio::sync::{mpsc, oneshot};

use super::{SpoolError, io_error};

/// Requests waiting beyond this are not taken into the current batch, which bounds the
/// latency a single batch adds.
const MAX_BATCH: usize = 512;

struct Request {
    tmp: PathBuf,
    target: PathBuf,
    done: oneshot::Sender<Result<(), SpoolError>>,
}

/// The handle sessions use to commit; the task stops when every handle is gone.
#[derive(Debug)]
pub(super) struct Committer {
    requests: mpsc::UnboundedSender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").field("tmp", &self.tmp).finish()
    }
}

impl Committer {
    /// Starts the commit task for the directory `msg_dir`.
    pub(super) fn start(msg_dir: PathBuf) -> Self {
        let (requests, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(msg_dir, receiver));
        Committer { requests }
    }

    /// Renames `tmp` to `target` durably; returns when the directory entry is on disk.
    pub(super) async fn commit(&self, tmp: PathBuf, target: PathBuf) -> Result<(), SpoolError> {
        let (done, wait) = oneshot::channel();
        self.requests
            .send(Request { tmp, target, done })
            .map_err(|_| SpoolError::Closed)?;
        wait.await.map_err(|_| SpoolError::Closed)?
    }
}

async fn run(msg_dir: PathBuf, mut receiver: mpsc::UnboundedReceiver<Request>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let dir = msg_dir.clone();
        let work = std::mem::take(&mut batch);
        let finished = tokio::task::spawn_blocking(move || commit_batch(&dir, work)).await;
        if let Err(e) = finished {
            // The blocking task panicked: its requests' senders were dropped with it, so
            // their sessions see `Closed` and answer 451; nothing was acknowledged.
            tracing::error!(error = %e, "spool commit task failed");
        }
    }
}

/// Renames each file, fsyncs the directory once, then answers every request.
fn commit_batch(msg_dir: &std::path::Path, batch: Vec<Request>) {
    let mut renamed = Vec::with_capacity(batch.len());
    for request in batch {
        match std::fs::rename(&request.tmp, &request.target) {
            Ok(()) => renamed.push(request),
            Err(e) => {
                let error = io_error("cannot rename", &request.tmp)(e);
                let _ = request.done.send(Err(error));
            }
        }
    }
    if renamed.is_empty() {
        return;
    }
    let synced = File::open(msg_dir).and_then(|dir| dir.sync_all());
    match synced {
        Ok(()) => {
            for request in renamed {
                let _ = request.done.send(Ok(()));
            }
        }
        Err(e) => {
            // The renames may or may not be durable. The clients will be told to retry,
            // so take the files back out: a message must not be both refused and delivered.
            tracing::error!(error = %e, dir = %msg_dir.display(), "spool directory fsync failed");
            for request in renamed {
                let _ = std::fs::remove_file(&request.target);
                let error =
                    io_error("cannot sync", msg_dir)(std::io::Error::new(e.kind(), e.to_string()));
                let _ = request.done.send(Err(error));
            }
        }
    }
}
