//! The fleet-wide limit on deliveries to one destination (`[queue]
//! fleet_max_per_destination`), on top of this node's own `max_per_destination`: places
//! held in the shared Redis of `[kv] backend = "redis"`, so N gateways together open at
//! most that many connections to a destination that asks for few.
//!
//! A place is a member of a ZSET per destination, scored by when it lapses: a delivery
//! takes one before it connects (waiting, with its local slot held, while the fleet is at
//! the limit), renews it while it runs, and gives it back when it ends; a node that dies
//! holding places loses them when they lapse ([`LEASE`]). A node that cannot reach Redis
//! falls back to its local limit and says so, once per outage.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::plugins::services::HostServices;

/// How long a place is held without renewal: a dead node's places free up after it.
pub(crate) const LEASE: Duration = Duration::from_secs(30);
/// How often a held place is renewed.
const RENEW_EVERY: Duration = Duration::from_secs(10);
/// The longest wait between two tries for a place.
const RETRY_MAX_MS: u64 = 400;

/// Whether Redis answered the last time: the fallback is logged once per outage.
static REACHABLE: AtomicBool = AtomicBool::new(true);
/// Distinguishes this process's places from other nodes'.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A place held in the fleet's limit: renewed while held, given back when dropped.
pub(crate) struct FleetSlot {
    renewal: tokio::task::JoinHandle<()>,
    services: Arc<HostServices>,
    name: String,
    member: String,
}

impl Drop for FleetSlot {
    fn drop(&mut self) {
        self.renewal.abort();
        let services = Arc::clone(&self.services);
        let (name, member) = (
            std::mem::take(&mut self.name),
            std::mem::take(&mut self.member),
        );
        // Outside a runtime (the process is ending) the place simply lapses after LEASE.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            if let Some(fleet) = services.kv.fleet() {
                // A place not given back lapses after LEASE: nothing else to do.
                let _ = fleet.release(&name, &member).await;
            }
        });
    }
}

fn member() -> String {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}-{started}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn reachable(up: bool, why: Option<&str>) {
    if REACHABLE.swap(up, Ordering::Relaxed) != up {
        if up {
            tracing::info!("fleet delivery limits in redis again");
        } else {
            tracing::warn!(
                error = why.unwrap_or_default(),
                "fleet delivery limits unavailable (redis unreachable): each node keeps to its own max_per_destination until it is back"
            );
        }
    }
}

/// Takes a place for one delivery to `destination` within `limit` over the fleet;
/// waits while the fleet is at the limit. `None`: no fleet limit applies (none is
/// configured, or Redis cannot be reached: the local limit alone holds).
pub(crate) async fn acquire(
    services: &Arc<HostServices>,
    destination: &str,
    limit: Option<usize>,
) -> Option<FleetSlot> {
    let limit = u32::try_from(limit?).unwrap_or(u32::MAX);
    let fleet = services.kv.fleet()?;
    let name = format!("destination:{destination}");
    let member = member();
    let mut wait_ms = 50;
    loop {
        match fleet.lease(&name, limit, LEASE, &member).await {
            Ok(true) => break,
            Ok(false) => {
                reachable(true, None);
                tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                wait_ms = (wait_ms * 2).min(RETRY_MAX_MS);
            }
            Err(e) => {
                reachable(false, Some(&e.to_string()));
                return None;
            }
        }
    }
    reachable(true, None);
    let renewal = {
        let services = Arc::clone(services);
        let (name, member) = (name.clone(), member.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                if let Some(fleet) = services.kv.fleet()
                    && let Err(e) = fleet.renew(&name, LEASE, &member).await
                {
                    reachable(false, Some(&e.to_string()));
                }
            }
        })
    };
    Some(FleetSlot {
        renewal,
        services: Arc::clone(services),
        name,
        member,
    })
}
