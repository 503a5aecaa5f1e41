//! The change feed of one feed range, page by page, resumable: the feed reader every command
//! (and, later, a long-running processor with leases) is built on. Small interface: open a
//! range at a start or a continuation, take the next page, keep its continuation.
//!
//! The SDK keeps a range's reading correct across partition splits and merges (a continuation
//! for the parent range resumes under the children), so a reader keeps the range it started
//! with. An iterator that failed is dead: the reader rebuilds it from its last continuation,
//! which loses and repeats nothing. Throttling (429) waits what the service asks, in the
//! shared [`Throttle`].

use super::account::CosmosTarget;
use super::error::SourceError;
use super::throttle::Throttle;
use azure_data_cosmos::FeedScope;
use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::feed::{ChangeFeedPageIterator, ContinuationToken, FeedRange};
use azure_data_cosmos::models::ChangeFeedItem;
use azure_data_cosmos::options::{
    ChangeFeedOptions, ChangeFeedStartFrom, MaxItemCountHint, ReadFeedRangesOptions,
};
use futures::StreamExt;
use serde_json::Value;
use std::num::NonZeroU32;
use std::pin::Pin;

/// Where a range's reading starts when it has no continuation yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "from", content = "time")]
pub enum Start {
    /// The current version of every item (latest-version mode).
    Beginning,
    /// Changes since a time (epoch seconds). The service honours it; readers also drop items
    /// whose `_ts` is older, so an emulator that ignores it gives the same answer.
    Since(i64),
}

/// One page of documents (latest version), with where to continue after it.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Value>,
    /// Items the service returned, before the `Since` filter: 0 means nothing new.
    pub returned: usize,
    pub continuation: String,
    pub request_units: f64,
    /// The partition's newest lsn when the page was read (from its session token): how far
    /// the range's items go, for progress.
    pub partition_lsn: Option<u64>,
    /// The reader was rebuilt after a failure before this page: the SDK then polls the
    /// range's partitions from the first again, so a run of empty pages starts over.
    pub after_retry: bool,
}

/// The highest global lsn in a session token (`{range}:{version}#{lsn}[#{region}={lsn}]`,
/// comma-separated segments for several partitions).
pub fn session_lsn(token: &str) -> Option<u64> {
    token
        .split(',')
        .filter_map(|segment| {
            let (_, value) = segment.split_once(':')?;
            value.split('#').nth(1)?.parse::<u64>().ok()
        })
        .max()
}

type Pages = Pin<Box<ChangeFeedPageIterator<ChangeFeedItem<Value>>>>;

pub struct RangeReader {
    container: ContainerClient,
    target: CosmosTarget,
    range: FeedRange,
    start: Start,
    page_size: NonZeroU32,
    continuation: Option<ContinuationToken>,
    pages: Option<Pages>,
}

impl RangeReader {
    pub fn new(
        container: ContainerClient,
        target: CosmosTarget,
        range: FeedRange,
        start: Start,
        page_size: u32,
        continuation: Option<String>,
    ) -> Self {
        Self {
            container,
            target,
            range,
            start,
            page_size: NonZeroU32::new(page_size.max(1)).expect("at least 1"),
            continuation: continuation.map(ContinuationToken::from_string),
            pages: None,
        }
    }

    pub fn range(&self) -> &FeedRange {
        &self.range
    }

    /// The next page (possibly empty: nothing new in the partition polled). Retries throttled
    /// and transient failures; an error means the range cannot be read now.
    pub async fn next_page(&mut self, throttle: &Throttle) -> Result<Page, SourceError> {
        let mut attempt = 0;
        loop {
            throttle.before_request().await;
            let failure = match self.poll().await {
                Ok(mut page) => {
                    throttle.charge(page.request_units);
                    page.after_retry = attempt > 0;
                    return Ok(page);
                }
                Err(e) => e,
            };
            // A failed iterator yields nothing more: rebuild it from the last continuation.
            self.pages = None;
            if !super::client::wait_to_retry(throttle, &failure, attempt).await {
                return Err(SourceError::Service {
                    what: format!("reading the change feed of feed range {}", self.range),
                    target: self.target.describe(),
                    source: failure,
                });
            }
            attempt += 1;
        }
    }

    async fn poll(&mut self) -> azure_data_cosmos::Result<Page> {
        if self.pages.is_none() {
            let mut options = ChangeFeedOptions::default()
                .with_max_item_count(MaxItemCountHint::Limit(self.page_size));
            if let Some(token) = &self.continuation {
                options = options.with_continuation_token(token.clone());
            }
            let start = match self.start {
                Start::Beginning => ChangeFeedStartFrom::Beginning,
                Start::Since(ts) => ChangeFeedStartFrom::PointInTime(
                    time::OffsetDateTime::from_unix_timestamp(ts)
                        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
                ),
            };
            let pages = Box::pin(self.container.query_change_feed::<Value>(
                FeedScope::range(self.range.clone()),
                start,
                Some(options),
            ))
            .await?;
            self.pages = Some(Box::pin(pages));
        }
        let pages = self.pages.as_mut().expect("just opened");
        let next = pages.next().await;
        let page = match next {
            // The continuation moves only past a page that arrived whole: after an error the
            // SDK's may already point past the page that failed (say, one it could not
            // decode), so the reader is rebuilt from the last good one and reads it again.
            Some(Ok(page)) => {
                if let Ok(token) = pages.to_continuation_token() {
                    self.continuation = Some(token);
                }
                page
            }
            Some(Err(e)) => return Err(e),
            None => {
                self.pages = None;
                return Ok(Page {
                    items: Vec::new(),
                    returned: 0,
                    continuation: self.continuation_string(),
                    request_units: 0.0,
                    partition_lsn: None,
                    after_retry: false,
                });
            }
        };
        let request_units = page
            .headers()
            .request_charge()
            .map(|c| c.value())
            .unwrap_or(0.0);
        let partition_lsn = page
            .headers()
            .session_token()
            .and_then(|t| session_lsn(t.as_str()));
        let since = match self.start {
            Start::Since(ts) => Some(ts),
            Start::Beginning => None,
        };
        let items = page.into_items();
        let returned = items.len();
        let items = items
            .into_iter()
            .filter_map(|item| item.current().cloned())
            .filter(|doc| since.is_none_or(|s| doc.get("_ts").and_then(Value::as_i64) >= Some(s)))
            .collect();
        Ok(Page {
            items,
            returned,
            continuation: self.continuation_string(),
            request_units,
            partition_lsn,
            after_retry: false,
        })
    }

    fn continuation_string(&self) -> String {
        self.continuation
            .as_ref()
            .map(|t| t.as_str().to_string())
            .unwrap_or_default()
    }

    /// How many physical partitions this range spans now (more after a split): a reader has
    /// caught up after that many empty pages in a row (the SDK polls them in turn).
    pub async fn partitions(&self, throttle: &Throttle) -> Result<usize, SourceError> {
        let ranges = super::client::call(throttle, "reading feed ranges", &self.target, || {
            self.container.read_feed_ranges(Some(
                ReadFeedRangesOptions::default().with_force_refresh(true),
            ))
        })
        .await?;
        Ok(ranges
            .iter()
            .filter(|r| r.overlaps(&self.range))
            .count()
            .max(1))
    }
}

/// How a range's reading ended.
#[derive(Debug)]
pub enum Drained {
    /// Every partition of the range answered "nothing new": the continuation to tail from.
    CaughtUp(String),
    /// `stop` said so, after the page in flight.
    Stopped,
}

/// Reads a range to its end, handing every page the service returned items on to `on_page`
/// (its items may all have been filtered out by `Since`). `started`: when the reading began
/// (epoch seconds): pages holding only items changed after it are the live trigger's and
/// count as quiet, so a busy container does not keep a range going forever. The one loop
/// every command that reads a whole container uses.
pub async fn drain<E: From<SourceError>>(
    reader: &mut RangeReader,
    throttle: &Throttle,
    started: i64,
    stop: &(dyn Fn() -> bool + Sync),
    mut on_page: impl AsyncFnMut(Page) -> Result<(), E>,
) -> Result<Drained, E> {
    let mut quiet_in_a_row = 0;
    let mut partitions = None;
    while !stop() {
        let page = reader.next_page(throttle).await?;
        if page.after_retry {
            // A rebuilt reader polls the range's partitions from the first again.
            quiet_in_a_row = 0;
        }
        // (A page whose items were all older than `Since` is progress, not quiet.)
        let only_new = !page.items.is_empty()
            && page.items.iter().all(|i| {
                i.get("_ts")
                    .and_then(Value::as_i64)
                    .is_some_and(|ts| ts > started)
            });
        if page.returned == 0 || only_new {
            quiet_in_a_row += 1;
        } else {
            quiet_in_a_row = 0;
        }
        if page.returned == 0 {
            // Caught up once every partition of the range answered "nothing new" in turn,
            // twice over (the SDK may poll a partition in more than one slice after a split
            // and a merge; an extra empty page costs about 1 RU).
            let k = match partitions {
                Some(k) => k,
                None => {
                    let k = 2 * reader.partitions(throttle).await?;
                    partitions = Some(k);
                    k
                }
            };
            if quiet_in_a_row >= k {
                return Ok(Drained::CaughtUp(page.continuation));
            }
            // Nothing new: do not spin on the partitions that are idle.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        }
        on_page(page).await?;
    }
    Ok(Drained::Stopped)
}

/// The container's feed ranges now, in key order (the order backfill reports them in).
pub async fn feed_ranges(
    container: &ContainerClient,
    target: &CosmosTarget,
    throttle: &Throttle,
) -> Result<Vec<FeedRange>, SourceError> {
    let mut ranges = super::client::call(throttle, "reading feed ranges", target, || {
        container.read_feed_ranges(None)
    })
    .await?;
    ranges.sort_by(|a, b| a.min_inclusive().cmp(b.min_inclusive()));
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::session_lsn;

    #[test]
    fn the_partition_lsn_is_read_from_session_tokens() {
        let cases = [
            ("0:-1#123", Some(123)),
            ("0:1#88#1=80#2=88", Some(88)),
            ("3:-1#10,4:-1#250", Some(250)),
            ("", None),
            ("garbage", None),
        ];
        for (token, want) in cases {
            assert_eq!(session_lsn(token), want, "{token}");
        }
    }
}
