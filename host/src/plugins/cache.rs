//! The on-disk cache of precompiled plugins, which must never become a way in.
//!
//! A `.cwasm` artifact is native code that wasmtime maps and runs without validating it,
//! so whoever can write the cache can run code in the gateway. Two rules close that door:
//! - the directory must belong to the gateway's user and be writable by no one else
//!   (a cache that fails this is not used: plugins are compiled afresh, and it is logged);
//! - every artifact carries an HMAC-SHA256 made with a key that lives in the directory
//!   (mode 0600, created on first use), checked over the bytes in memory before they are
//!   handed to wasmtime: an artifact written by anything but this cache, or damaged, is
//!   ignored and rebuilt. The check and the load read the same buffer, so the file cannot
//!   be swapped between them.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// The MAC's length at the start of every artifact file.
const MAC_LEN: usize = 32;
/// The key file's name inside the cache directory.
const KEY_FILE: &str = "cache.key";

/// Why the cache cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The directory or the key file is not safe.
    #[error("{path}: {why}")]
    Unsafe {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A checked cache directory and its key.
pub struct ArtifactCache {
    dir: PathBuf,
    key: hmac::Key,
}

impl std::fmt::Debug for ArtifactCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactCache")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Whether a file or directory is ours and writable by no one else.
fn check_owned(path: &Path, meta: &fs::Metadata) -> Result<(), CacheError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let unsafe_because = if meta.uid() != uid {
        Some(format!(
            "owned by uid {}, not by the gateway's uid {uid}",
            meta.uid()
        ))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "mode {:o} lets others write it (chmod go-w)",
            meta.mode() & 0o7777
        ))
    } else {
        None
    };
    match unsafe_because {
        Some(why) => Err(CacheError::Unsafe {
            path: path.to_owned(),
            why,
        }),
        None => Ok(()),
    }
}

impl ArtifactCache {
    /// Opens (creating it, mode 0700, if missing) the cache directory and its key.
    pub fn open(dir: &Path) -> Result<ArtifactCache, CacheError> {
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(io(dir))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        }
        let meta = fs::metadata(dir).map_err(io(dir))?;
        check_owned(dir, &meta)?;
        let key_path = dir.join(KEY_FILE);
        let key = match fs::read(&key_path) {
            Ok(bytes) => {
                let meta = fs::metadata(&key_path).map_err(io(&key_path))?;
                check_owned(&key_path, &meta)?;
                if meta.mode() & 0o077 != 0 || bytes.len() != 32 {
                    return Err(CacheError::Unsafe {
                        path: key_path,
                        why: "the key must be 32 bytes, mode 0600".into(),
                    });
                }
                bytes
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = vec![0u8; 32];
                SystemRandom::new()
                    .fill(&mut bytes)
                    .map_err(|_| CacheError::Unsafe {
                        path: key_path.clone(),
                        why: "no randomness for the key".into(),
                    })?;
                // A name of its own, then a link that fails if the key exists: processes
                // racing to create the key all end up using the one that won, never half
                // of one.
                let tmp = key_path.with_extension(format!("tmp.{}", std::process::id()));
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(io(&tmp))?;
                file.write_all(&bytes).map_err(io(&tmp))?;
                file.sync_all().map_err(io(&tmp))?;
                let linked = fs::hard_link(&tmp, &key_path);
                let _ = fs::remove_file(&tmp);
                match linked {
                    Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                        return Err(io(&key_path)(e));
                    }
                    _ => fs::read(&key_path).map_err(io(&key_path))?,
                }
            }
            Err(e) => return Err(io(&key_path)(e)),
        };
        Ok(ArtifactCache {
            dir: dir.to_owned(),
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
        })
    }

    /// The file of an artifact named `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The artifact's bytes, if the file exists and its MAC is right.
    pub fn read(&self, name: &str) -> Option<Vec<u8>> {
        let path = self.path(name);
        let mut bytes = fs::read(&path).ok()?;
        if bytes.len() < MAC_LEN {
            return None;
        }
        let artifact = bytes.split_off(MAC_LEN);
        match hmac::verify(&self.key, &artifact, &bytes) {
            Ok(()) => Some(artifact),
            Err(_) => {
                tracing::warn!(file = %path.display(), "plugin cache entry fails its MAC check, ignored");
                None
            }
        }
    }

    /// Writes an artifact with its MAC (to a file of its own, then renamed into place).
    pub fn write(&self, name: &str, artifact: &[u8]) -> Result<(), CacheError> {
        let path = self.path(name);
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let tag = hmac::sign(&self.key, artifact);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        file.write_all(tag.as_ref()).map_err(io(&tmp))?;
        file.write_all(artifact).map_err(io(&tmp))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(io(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_artifact_round_trips_and_a_tampered_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("cache");
        let cache = ArtifactCache::open(&cache_dir).unwrap();
        cache.write("a.cwasm", b"native code").unwrap();
        assert_eq!(cache.read("a.cwasm").as_deref(), Some(&b"native code"[..]));
        let mut bytes = fs::read(cache.path("a.cwasm")).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(cache.path("a.cwasm"), &bytes).unwrap();
        assert_eq!(cache.read("a.cwasm"), None);
        // The same key next time: what this cache wrote stays readable.
        cache.write("b.cwasm", b"more").unwrap();
        let again = ArtifactCache::open(&cache_dir).unwrap();
        assert_eq!(again.read("b.cwasm").as_deref(), Some(&b"more"[..]));
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let error = ArtifactCache::open(dir.path()).unwrap_err();
        assert!(error.to_string().contains("lets others write"), "{error}");
    }
}
