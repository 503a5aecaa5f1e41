//! One RU budget and one set of counters for every reader and writer of a command: requests
//! wait while the budget is spent (a token bucket that may go into debt, since a request's
//! charge is known only after it), 429s wait as long as the service asks, and the totals
//! (request units, requests, throttles) feed the progress line and the report.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// The wait before a 429 without a `retry-after`, doubled per attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Throttle {
    /// Request units per second; `None`: no budget of ours (the service's 429s still count).
    budget: Option<f64>,
    bucket: Mutex<Bucket>,
    /// Hundredths of a request unit.
    charged: AtomicU64,
    requests: AtomicU64,
    throttled: AtomicU64,
    started: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What a command spent, for its report.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Spent {
    pub request_units: f64,
    pub requests: u64,
    pub throttled: u64,
    pub seconds: f64,
}

impl Spent {
    pub fn ru_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.request_units / self.seconds
        } else {
            0.0
        }
    }
}

impl Throttle {
    pub fn new(max_ru_per_second: Option<f64>) -> Self {
        let now = Instant::now();
        Self {
            budget: max_ru_per_second.filter(|b| *b > 0.0),
            // Starts empty: a run's average stays at the budget from its first second.
            bucket: Mutex::new(Bucket {
                tokens: 0.0,
                at: now,
            }),
            charged: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            started: now,
        }
    }

    /// Waits until the budget allows another request.
    pub async fn before_request(&self) {
        let Some(rate) = self.budget else {
            return;
        };
        loop {
            let wait = {
                let mut b = self.bucket.lock().expect("bucket lock");
                let now = Instant::now();
                *b = refill(*b, now, rate);
                wait_for(b.tokens, rate)
            };
            if wait.is_zero() {
                return;
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Records a request and what it cost.
    pub fn charge(&self, request_units: f64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let ru = request_units.max(0.0);
        self.charged
            .fetch_add((ru * 100.0).round() as u64, Ordering::Relaxed);
        if let Some(rate) = self.budget {
            let mut b = self.bucket.lock().expect("bucket lock");
            *b = refill(*b, Instant::now(), rate);
            b.tokens -= ru;
        }
    }

    /// A 429: waits what the service asked (or a growing backoff when it did not say).
    pub async fn throttled(&self, retry_after: Option<Duration>, attempt: u32) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(backoff(retry_after, attempt)).await;
    }

    pub fn spent(&self) -> Spent {
        Spent {
            request_units: self.charged.load(Ordering::Relaxed) as f64 / 100.0,
            requests: self.requests.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            seconds: self.started.elapsed().as_secs_f64(),
        }
    }
}

/// Tokens accrue at `rate` per second, up to one second's worth.
fn refill(b: Bucket, now: Instant, rate: f64) -> Bucket {
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    Bucket {
        tokens: (b.tokens + elapsed * rate).min(rate),
        at: now,
    }
}

/// How long until the bucket is out of debt (a request may go when it holds 0 or more).
fn wait_for(tokens: f64, rate: f64) -> Duration {
    if tokens >= 0.0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(-tokens / rate)
    }
}

/// The wait after a 429: the service's `retry-after` when it gave one, else exponential.
pub fn backoff(retry_after: Option<Duration>, attempt: u32) -> Duration {
    retry_after.unwrap_or_else(|| {
        FIRST_BACKOFF
            .saturating_mul(2u32.saturating_pow(attempt.min(16)))
            .min(MAX_BACKOFF)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_refills_to_one_second_and_debt_is_waited_off() {
        let t0 = Instant::now();
        let b = Bucket {
            tokens: -50.0,
            at: t0,
        };
        // (seconds later, rate, tokens after refill, wait)
        let cases = [
            (0.0, 100.0, -50.0, 0.5),
            (0.25, 100.0, -25.0, 0.25),
            (0.5, 100.0, 0.0, 0.0),
            (10.0, 100.0, 100.0, 0.0),
        ];
        for (later, rate, tokens, wait) in cases {
            let r = refill(b, t0 + Duration::from_secs_f64(later), rate);
            assert!((r.tokens - tokens).abs() < 1e-6, "{later}: {}", r.tokens);
            assert!((wait_for(r.tokens, rate).as_secs_f64() - wait).abs() < 1e-6);
        }
    }

    #[test]
    fn a_429_waits_what_the_service_asked_or_backs_off() {
        let cases = [
            (Some(Duration::from_millis(700)), 0, 700),
            (Some(Duration::from_millis(30)), 5, 30),
            (None, 0, 100),
            (None, 3, 800),
            (None, 30, 5000),
        ];
        for (asked, attempt, ms) in cases {
            assert_eq!(backoff(asked, attempt), Duration::from_millis(ms));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_wait_while_the_budget_is_spent() {
        let t = Throttle::new(Some(100.0));
        let start = tokio::time::Instant::now();
        t.before_request().await;
        t.charge(50.0);
        t.before_request().await;
        assert!(
            start.elapsed() >= Duration::from_millis(490),
            "{:?}",
            start.elapsed()
        );
        let spent = t.spent();
        assert_eq!((spent.request_units, spent.requests), (50.0, 1));
    }
}
