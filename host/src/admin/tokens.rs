//! The admin API's bearer tokens, from `[admin] token_file`: one per line, either
//! `TOKEN` (named `admin` in the log) or `NAME TOKEN`; `#` starts a comment. A request
//! is allowed when its `Authorization: Bearer ...` matches one, compared in constant time
//! so that the comparison tells an attacker nothing about how close a guess was.

use std::path::Path;

/// The shortest token accepted: a short one could be guessed.
const MIN_TOKEN_LEN: usize = 16;

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// It cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not a usable token.
    #[error("{}:{line}: {why}", path.display())]
    Line {
        /// The file.
        path: std::path::PathBuf,
        /// Its line number, from 1.
        line: usize,
        /// What is wrong.
        why: String,
    },
}

/// The tokens, by name.
#[derive(Default)]
pub struct Tokens {
    tokens: Vec<(String, zeroize::Zeroizing<Vec<u8>>)>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.tokens.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Tokens").field("names", &names).finish()
    }
}

impl Tokens {
    /// Reads a token file.
    pub fn load(path: &Path) -> Result<Tokens, TokenError> {
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
            TokenError::Read {
                path: path.to_owned(),
                source,
            }
        })?);
        let mut tokens = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let bad = |why: &str| TokenError::Line {
                path: path.to_owned(),
                line: n + 1,
                why: why.to_owned(),
            };
            let mut words = line.split_whitespace();
            let (name, token) = match (words.next(), words.next(), words.next()) {
                (Some(token), None, None) => ("admin", token),
                (Some(name), Some(token), None) => (name, token),
                _ => return Err(bad("expected `TOKEN` or `NAME TOKEN`")),
            };
            if token.len() < MIN_TOKEN_LEN {
                return Err(bad(&format!(
                    "a token needs at least {MIN_TOKEN_LEN} characters"
                )));
            }
            tokens.push((
                name.to_owned(),
                zeroize::Zeroizing::new(token.as_bytes().to_vec()),
            ));
        }
        if tokens.is_empty() {
            return Err(TokenError::Line {
                path: path.to_owned(),
                line: 0,
                why: "no token in the file".into(),
            });
        }
        Ok(Tokens { tokens })
    }

    /// The name of the token `presented` matches, if any.
    pub fn check(&self, presented: &[u8]) -> Option<&str> {
        let mut found = None;
        // Every token is compared, whatever matched, so the time taken does not say which.
        for (name, token) in &self.tokens {
            if constant_time_eq(token, presented) {
                found = Some(name.as_str());
            }
        }
        found
    }

    /// The first token (the CLI's, when it reads the same file).
    pub fn first(&self) -> Option<&[u8]> {
        self.tokens.first().map(|(_, t)| t.as_slice())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_and_unnamed_tokens_are_recognised_and_short_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(
            &path,
            "# operators\n0123456789abcdef0123\nci  fedcba9876543210fedc\n",
        )
        .unwrap();
        let tokens = Tokens::load(&path).unwrap();
        assert_eq!(tokens.check(b"0123456789abcdef0123"), Some("admin"));
        assert_eq!(tokens.check(b"fedcba9876543210fedc"), Some("ci"));
        assert_eq!(tokens.check(b"fedcba9876543210fedd"), None);
        assert_eq!(tokens.check(b""), None);
        std::fs::write(&path, "short\n").unwrap();
        assert!(Tokens::load(&path).unwrap_err().to_string().contains(":1:"));
        std::fs::write(&path, "\n").unwrap();
        assert!(Tokens::load(&path).is_err());
    }
}
