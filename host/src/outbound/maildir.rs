//! The local transport: one file per message per mailbox, in maildir layout
//! (`<root>/<mailbox>/{tmp,new,cur}`), written to `tmp/`, fsynced, then renamed into
//! `new/`, so a reader never sees half a message.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A unique file name per delivery: time, process, counter, host (maildir convention).
fn unique_name(hostname: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}.M{}P{}Q{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        hostname.replace(['/', ':'], "_")
    )
}

/// The mailbox directory of a recipient: its address, made safe as one path component.
pub fn mailbox_dir(root: &Path, recipient: &str) -> PathBuf {
    let safe: String = recipient
        .to_ascii_lowercase()
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '@' | '.' | '-' | '_' | '+' => c,
            _ => '_',
        })
        .collect();
    // Never "." or ".." (or empty): those would leave the root.
    let safe = if safe.trim_matches('.').is_empty() {
        format!("_{safe}_")
    } else {
        safe
    };
    root.join(safe)
}

/// Delivers `message` to `recipient`'s mailbox under `root`, with a `Delivered-To:` and a
/// `Return-Path:` header in front. Blocking: run it off the async runtime.
pub fn deliver(
    root: &Path,
    hostname: &str,
    recipient: &str,
    sender: Option<&str>,
    message: &mut dyn std::io::Read,
) -> std::io::Result<PathBuf> {
    let mailbox = mailbox_dir(root, recipient);
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(mailbox.join(sub))?;
    }
    let name = unique_name(hostname);
    let tmp = mailbox.join("tmp").join(&name);
    let new = mailbox.join("new").join(&name);
    let clean = |s: &str| s.replace(['\r', '\n'], "");
    {
        let mut file = std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        write!(
            file,
            "Return-Path: <{}>\r\nDelivered-To: {}\r\n",
            clean(sender.unwrap_or("")),
            clean(recipient)
        )?;
        std::io::copy(message, &mut file)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, &new)?;
    std::fs::File::open(mailbox.join("new"))?.sync_all()?;
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_atomically_into_new() {
        let root = tempfile::tempdir().unwrap();
        let path = deliver(
            root.path(),
            "relay.test",
            "User@Example.test",
            Some("a@b.test"),
            &mut &b"Subject: x\r\n\r\nhi\r\n"[..],
        )
        .unwrap();
        assert!(path.starts_with(root.path().join("user@example.test").join("new")));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "Return-Path: <a@b.test>\r\nDelivered-To: User@Example.test\r\nSubject: x\r\n\r\nhi\r\n"
        );
        assert_eq!(
            std::fs::read_dir(root.path().join("user@example.test/tmp"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn mailbox_names_cannot_escape_the_root() {
        let root = Path::new("/srv/mail");
        assert_eq!(mailbox_dir(root, "../../etc@x"), root.join(".._.._etc@x"));
        assert_eq!(mailbox_dir(root, ".."), root.join("_.._"));
        assert_eq!(mailbox_dir(root, "a/b@c"), root.join("a_b@c"));
    }
}
