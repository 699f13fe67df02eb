//! Recipient lists: the addresses a route's domains really have, from a file the operator
//! keeps (`recipients_file` on a `[[route]]`), so that an edge MX refuses unknown
//! recipients at RCPT TO without asking the next hop (as Postfix's
//! `relay_recipient_maps` does). With both a list and `verify_recipients`, the list
//! answers for the addresses it has and the probe for the rest.
//!
//! The file: one address per line (`user@example.test`), or `@example.test` for every
//! address of a domain; `#` starts a comment; blank lines are ignored. Addresses compare
//! case-insensitively, domains in either form (U-labels or `xn--`). The file is read at
//! start-up and again whenever it changes; one that does not load leaves the previous
//! list in place.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ascii_domain};

/// The most entries a list may have: a file that is not a recipients list (or one that
/// grew by mistake) must not take the gateway's memory.
const MAX_ENTRIES: usize = 5_000_000;

/// A recipients file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// It cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not an address.
    #[error("{}:{line}: {why}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        why: String,
    },
}

/// The addresses of one list.
#[derive(Debug, Default)]
pub struct RecipientList {
    addresses: HashSet<String>,
    domains: HashSet<String>,
}

/// Lower-cases the local part and puts the domain in its ASCII form.
fn normalise(local: &str, domain: &str) -> Option<String> {
    let domain = ascii_domain(domain)?;
    Some(format!("{}@{domain}", local.to_lowercase()))
}

impl RecipientList {
    /// Reads a list.
    pub fn load(path: &Path) -> Result<Self, ListError> {
        let text = std::fs::read_to_string(path).map_err(|source| ListError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, why)| ListError::Line {
            path: path.to_owned(),
            line,
            why,
        })
    }

    fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut list = RecipientList::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            if list.addresses.len() + list.domains.len() >= MAX_ENTRIES {
                return Err((n + 1, format!("more than {MAX_ENTRIES} entries")));
            }
            let Some((local, domain)) = line.rsplit_once('@') else {
                return Err((n + 1, format!("`{line}` is not an address or @domain")));
            };
            if line.contains(char::is_whitespace) || local.contains('@') || domain.is_empty() {
                return Err((n + 1, format!("`{line}` is not an address or @domain")));
            }
            if local.is_empty() {
                let domain = ascii_domain(domain)
                    .ok_or_else(|| (n + 1, format!("`{domain}` is not a domain")))?;
                list.domains.insert(domain);
            } else {
                let address = normalise(local, domain)
                    .ok_or_else(|| (n + 1, format!("`{domain}` is not a domain")))?;
                list.addresses.insert(address);
            }
        }
        Ok(list)
    }

    /// Whether the list has this address (given in canonical form, `local@domain`).
    pub fn contains(&self, address: &str) -> bool {
        let Some((local, domain)) = address.rsplit_once('@') else {
            return false;
        };
        let Some(domain) = ascii_domain(domain) else {
            return false;
        };
        self.domains.contains(&domain)
            || normalise(local, &domain).is_some_and(|a| self.addresses.contains(&a))
    }

    /// Entries in the list.
    pub fn len(&self) -> usize {
        self.addresses.len() + self.domains.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The lists of every route that has one, by route name, each reloaded when its file
/// changes.
#[derive(Debug, Default, Clone)]
pub struct RecipientLists {
    lists: HashMap<String, (PathBuf, Arc<ArcSwap<RecipientList>>)>,
}

impl RecipientLists {
    /// Reads the list of every route that names one.
    pub fn load(config: &Config) -> Result<Self, ListError> {
        let mut lists = HashMap::new();
        for route in &config.routes {
            if let Some(path) = &route.recipients_file {
                let list = RecipientList::load(path)?;
                tracing::info!(route = %route.name, file = %path.display(), entries = list.len(), "recipients list loaded");
                lists.insert(
                    route.name.clone(),
                    (path.clone(), Arc::new(ArcSwap::from_pointee(list))),
                );
            }
        }
        Ok(RecipientLists { lists })
    }

    /// The current list of a route, if it has one.
    pub fn get(&self, route: &str) -> Option<Arc<RecipientList>> {
        self.lists.get(route).map(|(_, list)| list.load_full())
    }

    /// Reloads each list when its file changes (or on SIGHUP), until shutdown.
    pub fn watch(&self, shutdown: &CancellationToken) {
        for (route, (path, list)) in &self.lists {
            tokio::spawn(watch_one(
                route.clone(),
                path.clone(),
                Arc::clone(list),
                shutdown.clone(),
            ));
        }
    }
}

async fn watch_one(
    route: String,
    path: PathBuf,
    list: Arc<ArcSwap<RecipientList>>,
    shutdown: CancellationToken,
) {
    let mut trigger = crate::watch::Trigger::new("recipients list");
    trigger.watch_files([path.as_path()]);
    while let Some(why) = trigger.next(&shutdown).await {
        let file = path.clone();
        match tokio::task::spawn_blocking(move || RecipientList::load(&file)).await {
            Ok(Ok(loaded)) => {
                tracing::info!(%route, trigger = why, entries = loaded.len(), "recipients list reloaded");
                list.store(Arc::new(loaded));
            }
            Ok(Err(e)) => {
                tracing::error!(%route, trigger = why, error = %e, "recipients list not reloaded, keeping the current one");
            }
            Err(e) => tracing::error!(error = %e, "recipients list reload task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_addresses_and_whole_domains_match_in_any_case_and_form() {
        let list = RecipientList::parse(
            "# the internal server's users\nAlice@Example.test\n\n@bücher.test  # every address\nbob@xn--mnchen-3ya.test\n",
        )
        .unwrap();
        assert_eq!(list.len(), 3);
        assert!(list.contains("alice@example.test"));
        assert!(list.contains("ALICE@example.test"));
        assert!(!list.contains("carol@example.test"));
        assert!(list.contains("anyone@xn--bcher-kva.test"));
        assert!(list.contains("anyone@bücher.test"));
        assert!(list.contains("bob@münchen.test"));
    }

    #[test]
    fn a_line_that_is_not_an_address_names_its_line() {
        for bad in ["alice@example.test\nnot an address\n", "x@\n", "a@b@c\n"] {
            let (line, why) = RecipientList::parse(bad).unwrap_err();
            assert!(line >= 1 && !why.is_empty(), "{bad:?}");
        }
        let (line, _) = RecipientList::parse("alice@example.test\nnot an address\n").unwrap_err();
        assert_eq!(line, 2);
    }
}
