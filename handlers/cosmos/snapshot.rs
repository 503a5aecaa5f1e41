//! Every item's current version, read from the latest-version change feed from the
//! beginning, feed ranges in parallel, each to its end ([`super::feed::drain`]); items
//! without `_lsn` get theirs by a read by id. For commands that look at a whole container
//! without checkpointing (verify); a backfill reads the same way, range by range, with
//! checkpoints.

use super::account::CosmosTarget;
use super::error::SourceError;
use super::feed::{RangeReader, Start, drain, feed_ranges};
use super::throttle::Throttle;
use crate::change::PartitionKeyPaths;
use azure_data_cosmos::clients::ContainerClient;
use futures::StreamExt;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a read cost and found.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReadStats {
    pub ranges: usize,
    pub pages: u64,
    pub items: u64,
    pub lsn_read_back: u64,
}

/// Reads the whole container: `on_items` gets each page's items, from several ranges at once;
/// with `versions`, each with its `_lsn`. `started`: when the read began (epoch seconds), see
/// [`drain`].
#[allow(clippy::too_many_arguments)]
pub async fn read_all<E: From<SourceError> + Send>(
    container: &ContainerClient,
    target: &CosmosTarget,
    throttle: &Throttle,
    partition_key: &PartitionKeyPaths,
    parallel: usize,
    page_size: u32,
    started: i64,
    versions: bool,
    on_items: &(dyn Fn(Vec<Value>) -> Result<(), E> + Sync),
) -> Result<ReadStats, E> {
    let ranges = feed_ranges(container, target, throttle).await?;
    let pages = AtomicU64::new(0);
    let items = AtomicU64::new(0);
    let read_back = AtomicU64::new(0);
    let never = || false;
    let results: Vec<Result<(), E>> = futures::stream::iter(ranges.iter().cloned())
        .map(|range| {
            let (pages, items, read_back) = (&pages, &items, &read_back);
            async move {
                let mut reader = RangeReader::new(
                    container.clone(),
                    target.clone(),
                    range,
                    Start::Beginning,
                    page_size,
                    None,
                );
                drain(
                    &mut reader,
                    throttle,
                    started,
                    &never,
                    async |page: super::feed::Page| -> Result<(), E> {
                        let (page_items, n) = if versions {
                            super::items::with_lsns(
                                container,
                                target,
                                throttle,
                                partition_key,
                                page.items,
                            )
                            .await?
                        } else {
                            (page.items, 0)
                        };
                        pages.fetch_add(1, Ordering::Relaxed);
                        items.fetch_add(page_items.len() as u64, Ordering::Relaxed);
                        read_back.fetch_add(n, Ordering::Relaxed);
                        on_items(page_items)
                    },
                )
                .await
                .map(|_| ())
            }
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(ReadStats {
        ranges: ranges.len(),
        pages: pages.load(Ordering::Relaxed),
        items: items.load(Ordering::Relaxed),
        lsn_read_back: read_back.load(Ordering::Relaxed),
    })
}
