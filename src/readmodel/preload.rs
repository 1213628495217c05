//! Current periods' answers loaded into memory in bulk, before their first read: one statement
//! reads many customers, each over its own window.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::UsageReader;
use super::cache::AnswerKey;
use super::report::{ResolvedSubscription, UsageError, meters_read, priced_meters};
use crate::catalog::{Catalog, TenantCatalog};
use crate::domain::{Aggregation, Subscription};
use crate::store::StoreError;

/// Loads into memory the answers of [`UsageReader::of_meters`] of these customers of
/// `tenant`, each over its own window, for those that have none, in one statement: their first
/// read is then answered from memory too. Each customer at most once. A customer with no usage
/// gets an empty answer. Nothing is loaded past the cache's room, or when hours of the windows
/// are marked for repair. Returns how many answers were kept (an answer whose customer changed
/// while it was read is not).
pub async fn load(
    reader: &UsageReader,
    tenant: &str,
    asked: &[(&str, (i64, i64))],
    meters: &[(&str, Aggregation)],
) -> Result<usize, StoreError> {
    let cache = reader.cache();
    if cache.capacity() == 0 {
        return Ok(0);
    }
    let keys = asked
        .iter()
        .map(|&(c, bounds)| (c, AnswerKey::new(bounds, meters)));
    let tickets = cache.reserve(tenant, keys);
    if tickets.is_empty() {
        return Ok(0);
    }
    let wanted: Vec<(&str, (i64, i64))> = tickets
        .iter()
        .map(|(customer, key, _)| (*customer, (key.from_ms, key.to_ms)))
        .collect();
    let Some(mut usage) = reader.of_customers(tenant, &wanted, meters).await? else {
        return Ok(0);
    };
    let mut kept = 0;
    for (customer, key, ticket) in tickets {
        let answer = Arc::new(usage.remove(customer).unwrap_or_default());
        kept += usize::from(cache.store(ticket, tenant, customer, key, answer));
    }
    cache.loaded.fetch_add(kept as u64, Relaxed);
    Ok(kept)
}

/// The meters one read of a plan's usage asks for (`report::meters_read`).
type Meters<'c> = Vec<(&'c str, Aggregation)>;

/// One read of a plan's usage.
struct PeriodRead<'c> {
    /// The window, epoch ms.
    bounds: (i64, i64),
    meters: Meters<'c>,
}

/// A customer and its window in epoch ms.
type CustomerWindow<'c> = (&'c str, (i64, i64));
/// How many customers one statement of [`load_current_periods`] reads at most...
const LOAD_CUSTOMERS: usize = 500;
/// ...and how many bytes of their ids: the statement names each customer seven times, and
/// ClickHouse parses at most 256 KiB of a statement (`max_query_size`).
const LOAD_ID_BYTES: usize = 16 * 1024;

/// `asked` cut into the customers of one load statement each ([`LOAD_CUSTOMERS`],
/// [`LOAD_ID_BYTES`]; a single customer over the byte bound goes alone).
fn load_chunks<'a, 'c>(asked: &'a [CustomerWindow<'c>]) -> Vec<&'a [CustomerWindow<'c>]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (customer, _)) in asked.iter().enumerate() {
        let full = i - start == LOAD_CUSTOMERS || bytes + customer.len() > LOAD_ID_BYTES;
        if full && i > start {
            chunks.push(&asked[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += customer.len();
    }
    if start < asked.len() {
        chunks.push(&asked[start..]);
    }
    chunks
}

/// Loads into memory (`cache`) the usage of the billing period at `now` of every
/// subscription of `tenant` that has one, as [`super::report::report`] reads it for the current period, so
/// that its first read is answered from memory as well. Subscriptions whose answer is already
/// held are skipped; the others are read in one statement per set of meters (each customer
/// over its own window) for up to `LOAD_CUSTOMERS` customers. A subscription whose catalog
/// entries are inconsistent is skipped (its own reads report why). Returns how many answers
/// were loaded.
pub async fn load_current_periods(
    reader: &UsageReader,
    tenant: &str,
    catalog: &TenantCatalog,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    // Per set of meters, each customer's window.
    let mut by_meters: HashMap<Meters<'_>, Vec<CustomerWindow<'_>>> = HashMap::new();
    for subscription in catalog.subscriptions.values() {
        let Ok(asked) = current_reads(tenant, catalog, subscription, now) else {
            continue;
        };
        for read in asked {
            let customer = subscription.customer.as_str();
            by_meters
                .entry(read.meters)
                .or_default()
                .push((customer, read.bounds));
        }
    }
    let mut loaded = 0;
    for (meters, mut asked) in by_meters {
        asked.sort_unstable();
        asked.dedup();
        // A statement answers per customer, so it reads each customer once: a customer with
        // several windows (subscriptions) has them read by successive statements.
        while !asked.is_empty() {
            let mut seen = HashSet::new();
            let (once, again): (Vec<_>, Vec<_>) =
                asked.into_iter().partition(|&(c, _)| seen.insert(c));
            for chunk in load_chunks(&once) {
                loaded += load(reader, tenant, chunk, &meters).await?;
            }
            asked = again;
        }
    }
    Ok(loaded)
}

/// The reads of the subscription's report for its period at
/// `now`: one per phase of the period. None when it has no period then.
fn current_reads<'c>(
    tenant: &'c str,
    catalog: &'c TenantCatalog,
    subscription: &'c Subscription,
    now: DateTime<Utc>,
) -> Result<Vec<PeriodRead<'c>>, UsageError> {
    let resolved = ResolvedSubscription::new(tenant, catalog, subscription)?;
    let Some(current) = resolved.timeline.period_at(now)? else {
        return Ok(vec![]);
    };
    let window = current.window;
    let mut asked = Vec::new();
    for period in resolved
        .timeline
        .periods_overlapping(window.from, window.to)?
    {
        let Some(inside) = period.window.intersect(&window) else {
            continue;
        };
        let plan = resolved.plan(&period)?;
        let meters = meters_read(catalog, &priced_meters(catalog, plan)?);
        if !meters.is_empty() {
            let bounds = (inside.from.timestamp_millis(), inside.to.timestamp_millis());
            asked.push(PeriodRead { bounds, meters });
        }
    }
    Ok(asked)
}

/// Loads the current periods of every tenant's subscriptions into memory at once, then every
/// `every`: new subscriptions, new periods, and customers whose answers another writer's
/// events dropped are read back in bulk rather than on their next read.
pub fn spawn_load_current_periods(
    reader: UsageReader,
    catalog: Catalog,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let started = Instant::now();
            let mut loaded = 0;
            for (tenant, snapshot) in catalog.tenants() {
                match load_current_periods(&reader, &tenant, &snapshot, Utc::now()).await {
                    Ok(n) => loaded += n,
                    Err(e) => {
                        tracing::warn!(tenant = %tenant, error = %e, "loading current periods' usage failed");
                    }
                }
            }
            if loaded > 0 {
                tracing::info!(
                    loaded,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "current periods' usage loaded into memory"
                );
            }
            tokio::time::sleep(every).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_statements_are_bounded_by_customers_and_by_id_bytes() {
        let short: Vec<String> = (0..1_201).map(|i| format!("c{i:04}")).collect();
        let asked: Vec<CustomerWindow<'_>> = short.iter().map(|c| (c.as_str(), (0, 1))).collect();
        let sizes: Vec<usize> = load_chunks(&asked).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [500, 500, 201]);
        // 1,000-byte ids: 16 fit in 16 KiB; one longer than the bound goes alone.
        let long: Vec<String> = (0..40).map(|i| format!("{i:0>1000}")).collect();
        let huge = "x".repeat(20_000);
        let mut asked: Vec<CustomerWindow<'_>> =
            long.iter().map(|c| (c.as_str(), (0, 1))).collect();
        asked.insert(20, (huge.as_str(), (0, 1)));
        let chunks = load_chunks(&asked);
        let sizes: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [16, 4, 1, 16, 4]);
        assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), asked.len());
        assert!(load_chunks(&[]).is_empty());
    }
}
