//! Group commit: one task applies changes to `msg/` in batches, renaming newly accepted
//! messages in and removing delivered ones, and makes each batch durable with a single
//! directory fsync.
//!
//! Every session that finishes DATA while a batch is being synced joins the next batch, so
//! under load the cost of the directory fsync is shared, and no session ever gets its 250
//! before its own rename is on disk. The queue's removals ride in the same batches: a
//! delivered message's unlink, once synced, is its record of completion.

use std::fs::File;
use std::path::PathBuf;

use tokio::sync::{mpsc, oneshot};

use super::{SpoolError, io_error};

/// Requests waiting beyond this are not taken into the current batch, which bounds the
/// latency a single batch adds.
const MAX_BATCH: usize = 512;

/// One change to the `msg/` directory.
enum Change {
    /// A message accepted: its finished file moves in.
    Rename { tmp: PathBuf, target: PathBuf },
    /// A message finished: it leaves (already gone counts as done).
    Remove { path: PathBuf },
}

struct Request {
    change: Change,
    done: oneshot::Sender<Result<(), SpoolError>>,
}

/// The handle sessions use to commit; the task stops when every handle is gone.
#[derive(Debug)]
pub(super) struct Committer {
    requests: mpsc::UnboundedSender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = match &self.change {
            Change::Rename { tmp, .. } => tmp,
            Change::Remove { path } => path,
        };
        f.debug_struct("Request").field("path", path).finish()
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
        self.apply(Change::Rename { tmp, target }).await
    }

    /// Removes `path` durably; returns when the removal is on disk.
    pub(super) async fn remove(&self, path: PathBuf) -> Result<(), SpoolError> {
        self.apply(Change::Remove { path }).await
    }

    async fn apply(&self, change: Change) -> Result<(), SpoolError> {
        let (done, wait) = oneshot::channel();
        self.requests
            .send(Request { change, done })
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

/// Applies each change, fsyncs the directory once, then answers every request.
fn commit_batch(msg_dir: &std::path::Path, batch: Vec<Request>) {
    let mut applied = Vec::with_capacity(batch.len());
    for request in batch {
        let result = match &request.change {
            Change::Rename { tmp, target } => {
                std::fs::rename(tmp, target).map_err(io_error("cannot rename", tmp))
            }
            Change::Remove { path } => match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(io_error("cannot remove", path)(e))
                }
                _ => Ok(()),
            },
        };
        match result {
            Ok(()) => applied.push(request),
            Err(error) => {
                let _ = request.done.send(Err(error));
            }
        }
    }
    if applied.is_empty() {
        return;
    }
    let synced = File::open(msg_dir).and_then(|dir| dir.sync_all());
    match synced {
        Ok(()) => {
            for request in applied {
                let _ = request.done.send(Ok(()));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, dir = %msg_dir.display(), "spool directory fsync failed");
            for request in applied {
                // A rename may or may not be durable. The client will be told to retry,
                // so take the file back out: a message must not be both refused and
                // delivered. A removal stays done; its caller falls back to another record.
                if let Change::Rename { target, .. } = &request.change {
                    let _ = std::fs::remove_file(target);
                }
                let error =
                    io_error("cannot sync", msg_dir)(std::io::Error::new(e.kind(), e.to_string()));
                let _ = request.done.send(Err(error));
            }
        }
    }
}
