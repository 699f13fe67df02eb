//! The webhook sink's durable buffer: events wait here, on disk, until the receiver has
//! acknowledged them, so an outage of the receiver (or a restart of the gateway) loses none.
//!
//! The buffer is a directory of append-only segment files (`00000000000000000001.seg`, ...),
//! each holding events as JSON lines, and a `cursor` file naming the first event not yet
//! acknowledged (`<segment> <offset>`). Appending writes to the last segment; a segment
//! past its size is closed (fdatasynced) and a new one begun; acknowledging moves the cursor
//! and removes the segments wholly behind it.
//!
//! # What a crash costs
//! Appends are written to the kernel at once, and fdatasynced in batches (the sink does it
//! about once a second, and at every segment change and shutdown): a process crash loses no
//! event that reached the buffer, a power failure at most the last second's. A torn last
//! line is cut off when the buffer is reopened. The cursor is replaced by rename, without
//! fsync: after a power failure it may be a little behind, and those events are sent again
//! (delivery is at least once; receivers deduplicate by event `id`).
//!
//! # The bound
//! The buffer holds at most `max_bytes` of events. When an append would go over it, the
//! oldest segment is deleted, whole (a segment is an eighth of the bound), and its events
//! are counted as dropped: under a long outage the newest events are the ones kept.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The most bytes one [`Buffer::read_batch`] reads, bounding a batch's body; larger than
/// any event ([`super::MAX_EVENT_BYTES`]), so a batch always holds at least one.
pub const MAX_BATCH_BYTES: u64 = 4 << 20;

/// A position in the buffer: a segment and a byte offset in it, at a line boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    seq: u64,
    offset: u64,
}

/// One segment file's extent.
#[derive(Debug)]
struct Segment {
    seq: u64,
    bytes: u64,
    events: u64,
}

/// Events read for one POST, and where the buffer stands once they are acknowledged.
#[derive(Debug)]
pub struct Batch {
    /// The events, one JSON object each.
    pub events: Vec<Vec<u8>>,
    /// Lines consumed (events, and any unreadable line skipped).
    pub consumed: u64,
    end: Cursor,
    /// Events before `end.offset` in `end.seq`'s segment.
    end_events: u64,
}

/// The durable buffer of one webhook sink.
#[derive(Debug)]
pub struct Buffer {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    /// Oldest first; the last one is appended to. Never empty.
    segments: VecDeque<Segment>,
    active: File,
    /// The first unacknowledged byte; always in the first segment.
    cursor: Cursor,
    /// Events in the first segment before the cursor.
    cursor_events: u64,
    /// Whether appends were written since the last sync.
    dirty: bool,
}

impl Buffer {
    /// Opens the buffer in `dir` (created if need be), recovering what a previous run left.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Buffer> {
        std::fs::create_dir_all(dir)?;
        let mut seqs = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(seq) = name
                .strip_suffix(".seg")
                .and_then(|s| s.parse::<u64>().ok())
            {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let saved = read_cursor(dir);
        let mut segments = VecDeque::new();
        for seq in seqs {
            let path = segment_path(dir, seq);
            if saved.is_some_and(|c| seq < c.seq) {
                // Acknowledged, but its removal did not happen before the process ended.
                std::fs::remove_file(&path)?;
                continue;
            }
            let (bytes, events) = recover_segment(&path)?;
            segments.push_back(Segment { seq, bytes, events });
        }
        if segments.is_empty() {
            let seq = saved.map_or(1, |c| c.seq.max(1));
            File::create(segment_path(dir, seq))?;
            segments.push_back(Segment {
                seq,
                bytes: 0,
                events: 0,
            });
        }
        let first = &segments[0];
        let mut cursor = Cursor {
            seq: first.seq,
            offset: 0,
        };
        let mut cursor_events = 0;
        if let Some(saved) = saved
            && saved.seq == first.seq
            && saved.offset <= first.bytes
            && let Some(events) = lines_before(&segment_path(dir, first.seq), saved.offset)?
        {
            cursor = saved;
            cursor_events = events;
        }
        let last = segments.back().map_or(1, |s| s.seq);
        let active = OpenOptions::new()
            .append(true)
            .open(segment_path(dir, last))?;
        Ok(Buffer {
            dir: dir.to_owned(),
            max_bytes,
            segment_bytes: (max_bytes / 8).max(4096),
            segments,
            active,
            cursor,
            cursor_events,
            dirty: false,
        })
    }

    /// Events not yet acknowledged.
    pub fn backlog(&self) -> u64 {
        let total: u64 = self.segments.iter().map(|s| s.events).sum();
        total - self.cursor_events
    }

    /// Bytes not yet acknowledged.
    fn backlog_bytes(&self) -> u64 {
        let total: u64 = self.segments.iter().map(|s| s.bytes).sum();
        total - self.cursor.offset
    }

    /// Appends events (JSON without newlines); returns how many older events were dropped
    /// to make room. On an error the buffer should be reopened: its idea of the last
    /// segment's length may be wrong.
    pub fn append(&mut self, lines: &[Arc<str>]) -> io::Result<u64> {
        let mut dropped = 0;
        let mut pending = Vec::new();
        for line in lines {
            let len = line.len() as u64 + 1;
            if len > self.max_bytes {
                dropped += 1;
                continue;
            }
            let active = self.segments.back().map_or(0, |s| s.bytes);
            if active > 0 && active + len > self.segment_bytes {
                self.write_pending(&mut pending)?;
                self.roll()?;
            }
            while self.backlog_bytes() + len > self.max_bytes {
                if self.segments.len() == 1 {
                    self.write_pending(&mut pending)?;
                    self.roll()?;
                }
                dropped += self.drop_oldest()?;
            }
            pending.extend_from_slice(line.as_bytes());
            pending.push(b'\n');
            if let Some(active) = self.segments.back_mut() {
                active.bytes += len;
                active.events += 1;
            }
        }
        self.write_pending(&mut pending)?;
        Ok(dropped)
    }

    fn write_pending(&mut self, pending: &mut Vec<u8>) -> io::Result<()> {
        if !pending.is_empty() {
            self.active.write_all(pending)?;
            pending.clear();
            self.dirty = true;
        }
        Ok(())
    }

    /// Closes the last segment (synced) and begins the next.
    fn roll(&mut self) -> io::Result<()> {
        self.active.sync_data()?;
        self.dirty = false;
        let seq = self.segments.back().map_or(0, |s| s.seq) + 1;
        self.active = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(segment_path(&self.dir, seq))?;
        // The new name must survive a power failure as well as its contents.
        File::open(&self.dir)?.sync_all()?;
        self.segments.push_back(Segment {
            seq,
            bytes: 0,
            events: 0,
        });
        Ok(())
    }

    /// Deletes the oldest segment (never the last); returns the unacknowledged events lost.
    fn drop_oldest(&mut self) -> io::Result<u64> {
        if self.segments.len() < 2 {
            return Ok(0);
        }
        let Some(oldest) = self.segments.pop_front() else {
            return Ok(0);
        };
        std::fs::remove_file(segment_path(&self.dir, oldest.seq))?;
        let lost = oldest.events - self.cursor_events;
        self.cursor = Cursor {
            seq: self.segments[0].seq,
            offset: 0,
        };
        self.cursor_events = 0;
        Ok(lost)
    }

    /// A handle to fdatasync, when something was appended since the last time (the sink
    /// syncs off the runtime's workers).
    pub fn take_unsynced(&mut self) -> io::Result<Option<File>> {
        if !self.dirty {
            return Ok(None);
        }
        self.dirty = false;
        self.active.try_clone().map(Some)
    }

    /// Reads up to `max_events` events from the cursor on (at most [`MAX_BATCH_BYTES`]);
    /// `None` when there is nothing to send. A line that is not JSON (a damaged file) is
    /// skipped and logged.
    pub fn read_batch(&self, max_events: usize) -> io::Result<Option<Batch>> {
        let mut batch = Batch {
            events: Vec::new(),
            consumed: 0,
            end: self.cursor,
            end_events: self.cursor_events,
        };
        let mut budget = MAX_BATCH_BYTES;
        for segment in &self.segments {
            let (start, mut events) = if segment.seq == self.cursor.seq {
                (self.cursor.offset, self.cursor_events)
            } else {
                (0, 0)
            };
            if start >= segment.bytes {
                continue;
            }
            let want = (segment.bytes - start).min(budget);
            let mut file = File::open(segment_path(&self.dir, segment.seq))?;
            file.seek(SeekFrom::Start(start))?;
            let mut chunk = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
            file.take(want).read_to_end(&mut chunk)?;
            let mut offset = start;
            let mut rest = &chunk[..];
            while batch.events.len() < max_events {
                let Some(end) = memchr::memchr(b'\n', rest) else {
                    break;
                };
                let line = &rest[..end];
                rest = &rest[end + 1..];
                offset += end as u64 + 1;
                events += 1;
                batch.consumed += 1;
                if serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok() {
                    batch.events.push(line.to_vec());
                } else {
                    tracing::warn!(dir = %self.dir.display(), segment = segment.seq,
                        "skipping an unreadable line in the webhook buffer");
                }
            }
            if offset == start {
                // Not one whole line within the budget: a damaged segment (events are far
                // smaller). Skip what was read rather than stall on it forever.
                tracing::warn!(dir = %self.dir.display(), segment = segment.seq,
                    "skipping a damaged stretch of the webhook buffer");
                offset = start + want;
            }
            budget = budget.saturating_sub(offset - start);
            batch.end = Cursor {
                seq: segment.seq,
                offset,
            };
            batch.end_events = events;
            if batch.events.len() >= max_events || offset < segment.bytes || budget == 0 {
                break;
            }
        }
        if batch.end == self.cursor {
            return Ok(None);
        }
        Ok(Some(batch))
    }

    /// The receiver has the batch (or refused it for good): moves the cursor past it and
    /// removes the segments it finished. A batch whose events were meanwhile dropped for
    /// room changes nothing.
    pub fn ack(&mut self, batch: &Batch) -> io::Result<()> {
        if batch.end <= self.cursor {
            return Ok(());
        }
        while self.segments.len() > 1 && self.segments[0].seq < batch.end.seq {
            if let Some(done) = self.segments.pop_front() {
                std::fs::remove_file(segment_path(&self.dir, done.seq))?;
            }
        }
        self.cursor = batch.end;
        self.cursor_events = batch.end_events;
        // A finished segment that is no longer appended to goes at once.
        if self.segments.len() > 1 && self.cursor.offset >= self.segments[0].bytes {
            if let Some(done) = self.segments.pop_front() {
                std::fs::remove_file(segment_path(&self.dir, done.seq))?;
            }
            self.cursor = Cursor {
                seq: self.segments[0].seq,
                offset: 0,
            };
            self.cursor_events = 0;
        }
        write_cursor(&self.dir, self.cursor)
    }
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

/// The saved cursor; `None` when there is none or it is unreadable (then everything left
/// is sent again).
fn read_cursor(dir: &Path) -> Option<Cursor> {
    let text = std::fs::read_to_string(dir.join("cursor")).ok()?;
    let (seq, offset) = text.trim().split_once(' ')?;
    Some(Cursor {
        seq: seq.parse().ok()?,
        offset: offset.parse().ok()?,
    })
}

fn write_cursor(dir: &Path, cursor: Cursor) -> io::Result<()> {
    let tmp = dir.join("cursor.tmp");
    std::fs::write(&tmp, format!("{} {}\n", cursor.seq, cursor.offset))?;
    std::fs::rename(tmp, dir.join("cursor"))
}

/// A segment's length and events, after cutting off a torn last line.
fn recover_segment(path: &Path) -> io::Result<(u64, u64)> {
    let data = std::fs::read(path)?;
    let whole = memchr::memrchr(b'\n', &data).map_or(0, |i| i + 1);
    if whole < data.len() {
        tracing::warn!(file = %path.display(), bytes = data.len() - whole,
            "cutting off a partly written event from the webhook buffer");
        OpenOptions::new()
            .write(true)
            .open(path)?
            .set_len(whole as u64)?;
    }
    let events = memchr::memchr_iter(b'\n', &data[..whole]).count() as u64;
    Ok((whole as u64, events))
}

/// The lines before `offset`, or `None` when `offset` is not at a line boundary.
fn lines_before(path: &Path, offset: u64) -> io::Result<Option<u64>> {
    if offset == 0 {
        return Ok(Some(0));
    }
    let mut data = Vec::new();
    File::open(path)?.take(offset).read_to_end(&mut data)?;
    if data.last() != Some(&b'\n') {
        return Ok(None);
    }
    Ok(Some(memchr::memchr_iter(b'\n', &data).count() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(range: std::ops::Range<usize>) -> Vec<Arc<str>> {
        range
            .map(|i| {
                Arc::from(format!(
                    "{{\"id\":\"{i}\",\"pad\":\"{}\"}}",
                    "x".repeat(100)
                ))
            })
            .collect()
    }

    fn ids(batch: &Batch) -> Vec<usize> {
        batch
            .events
            .iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_slice(e).unwrap();
                v["id"].as_str().unwrap().parse().unwrap()
            })
            .collect()
    }

    /// Reads and acknowledges everything, `per` at a time.
    fn drain(buffer: &mut Buffer, per: usize) -> Vec<usize> {
        let mut seen = Vec::new();
        while let Some(batch) = buffer.read_batch(per).unwrap() {
            seen.extend(ids(&batch));
            buffer.ack(&batch).unwrap();
        }
        seen
    }

    #[test]
    fn events_come_out_in_order_across_segments_and_acked_segments_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut buffer = Buffer::open(dir.path(), 64 * 1024).unwrap();
        assert_eq!(buffer.append(&events(0..500)).unwrap(), 0);
        assert_eq!(buffer.backlog(), 500);
        assert_eq!(drain(&mut buffer, 33), (0..500).collect::<Vec<_>>());
        assert_eq!(buffer.backlog(), 0);
        let segments = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("seg".as_ref()))
            .count();
        assert_eq!(segments, 1, "only the segment being appended to is left");
    }

    #[test]
    fn the_buffer_survives_a_restart_and_resends_only_what_was_not_acked() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut buffer = Buffer::open(dir.path(), 64 * 1024).unwrap();
            buffer.append(&events(0..300)).unwrap();
            let batch = buffer.read_batch(120).unwrap().unwrap();
            buffer.ack(&batch).unwrap();
            // A batch read and sent but never acknowledged: the process dies.
            let _unacked = buffer.read_batch(50).unwrap().unwrap();
        }
        let mut buffer = Buffer::open(dir.path(), 64 * 1024).unwrap();
        assert_eq!(buffer.backlog(), 180);
        buffer.append(&events(300..310)).unwrap();
        assert_eq!(drain(&mut buffer, 64), (120..310).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_last_line_is_cut_off_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut buffer = Buffer::open(dir.path(), 64 * 1024).unwrap();
            buffer.append(&events(0..3)).unwrap();
        }
        let seg = segment_path(dir.path(), 1);
        let mut file = OpenOptions::new().append(true).open(&seg).unwrap();
        file.write_all(b"{\"id\":\"3\",\"pa").unwrap();
        let mut buffer = Buffer::open(dir.path(), 64 * 1024).unwrap();
        assert_eq!(buffer.backlog(), 3);
        buffer.append(&events(4..5)).unwrap();
        assert_eq!(drain(&mut buffer, 10), vec![0, 1, 2, 4]);
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_events_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let max = 64 * 1024;
        let mut buffer = Buffer::open(dir.path(), max).unwrap();
        let mut dropped = 0;
        for chunk in events(0..2000).chunks(100) {
            dropped += buffer.append(chunk).unwrap();
        }
        assert!(
            dropped > 0,
            "2000 events of ~120 octets do not fit in 64 KiB"
        );
        assert!(buffer.backlog_bytes() <= max);
        assert_eq!(
            buffer.backlog() + dropped,
            2000,
            "every event kept or counted"
        );
        let kept = drain(&mut buffer, 100);
        let first = 2000 - kept.len();
        assert_eq!(
            kept,
            (first..2000).collect::<Vec<_>>(),
            "the newest are kept"
        );
    }

    #[test]
    fn an_ack_for_events_dropped_meanwhile_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut buffer = Buffer::open(dir.path(), 64 * 1024).unwrap();
        buffer.append(&events(0..10)).unwrap();
        let stale = buffer.read_batch(10).unwrap().unwrap();
        let dropped = buffer.append(&events(10..1000)).unwrap();
        assert!(dropped >= 10);
        buffer.ack(&stale).unwrap();
        assert_eq!(buffer.backlog() + dropped, 1000);
    }
}
