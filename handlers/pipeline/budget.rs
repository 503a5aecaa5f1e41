//! Time: every invocation answers before host.json's `functionTimeout`. Past it the host
//! cancels the invocation and restarts the handler, and every concurrent invocation is lost
//! with it, last attempts included. The arithmetic lives here only:
//!
//! ```text
//! started ── write-ahead ──┬── sinks (retry budget) ──┬── dead-letter writes ──┬── margin ── timeout
//!                          └ at most 1/10 of the time ┘   (primary, fallback)  answer
//! ```
//!
//! - `answer` = start + timeout - margin, with margin = min(timeout / 10, 5 s): the host
//!   must receive the answer, not just see it leave.
//! - the write-ahead record of a last attempt gets at most a tenth of that, 10 s at most;
//! - the sinks get the route's retry budget from when they start, but never past
//!   `answer - reserve`, with reserve = min(timeout / 4, 30 s) left for the dead-letter writes;
//! - tombstones of deletes (kept only while older changes wait for replay) get half of what
//!   is left until `answer` when the sinks are done, the dead-letter writes everything left.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    pub started: Instant,
    /// The write-ahead record must be written by then (or the attempt goes on without it).
    pub write_ahead: Instant,
    /// The last moment a sink may still be retried.
    pub sinks: Instant,
    /// Every store write must be done by then; the answer leaves at the latest then.
    pub answer: Instant,
}

impl Deadlines {
    pub fn new(started: Instant, function_timeout: Duration) -> Self {
        let margin = (function_timeout / 10).min(Duration::from_secs(5));
        let usable = function_timeout.saturating_sub(margin);
        let answer = started + usable;
        let reserve = (function_timeout / 4).min(Duration::from_secs(30));
        Self {
            started,
            write_ahead: started + (usable / 10).min(Duration::from_secs(10)),
            sinks: answer.checked_sub(reserve).unwrap_or(started).max(started),
            answer,
        }
    }

    /// The retry budget a sink gets when it starts at `now`: the route's budget, cut short so
    /// the dead-letter writes keep their reserve.
    pub fn sink_budget(&self, now: Instant, route_budget: Duration) -> Duration {
        route_budget
            .min(self.sinks.saturating_duration_since(now))
            .max(Duration::from_millis(1))
    }

    /// When the tombstones of a batch's deletes must be kept by, asked at `now` (after the
    /// sinks): half of the time left, so the dead-letter writes keep the other half.
    pub fn tombstones(&self, now: Instant) -> Instant {
        now + self.answer.saturating_duration_since(now) / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_answer_always_leaves_before_the_timeout() {
        let t0 = Instant::now();
        // (timeout, answer after, write-ahead by, sinks by)
        let cases = [
            (secs(600), secs(595), secs(10), secs(565)),
            (secs(300), secs(295), secs(10), secs(265)),
            (
                secs(30),
                secs(27),
                Duration::from_millis(2700),
                Duration::from_millis(19_500),
            ),
            (
                secs(10),
                secs(9),
                Duration::from_millis(900),
                Duration::from_millis(6500),
            ),
            (secs(0), secs(0), secs(0), secs(0)),
        ];
        for (timeout, answer, write_ahead, sinks) in cases {
            let d = Deadlines::new(t0, timeout);
            assert_eq!(d.answer - t0, answer, "answer, timeout {timeout:?}");
            assert_eq!(
                d.write_ahead - t0,
                write_ahead,
                "write-ahead, timeout {timeout:?}"
            );
            assert_eq!(d.sinks - t0, sinks, "sinks, timeout {timeout:?}");
            assert!(d.write_ahead <= d.sinks && d.sinks <= d.answer);
            assert!(d.answer - t0 <= timeout);
        }
    }

    #[test]
    fn a_sink_budget_never_eats_the_dead_letter_reserve() {
        let t0 = Instant::now();
        let d = Deadlines::new(t0, secs(300));
        // The route's budget when there is room.
        assert_eq!(d.sink_budget(t0, secs(60)), secs(60));
        // Started late (a slow write-ahead): cut to what is left before the reserve.
        assert_eq!(d.sink_budget(t0 + secs(230), secs(60)), secs(35));
        // Tombstones take half of what is left, never past the answer.
        assert_eq!(d.tombstones(t0 + secs(275)) - t0, secs(285));
        assert_eq!(d.tombstones(t0 + secs(299)), t0 + secs(299));
        // Past it: a token budget (one attempt that times out at once), never a panic.
        assert_eq!(
            d.sink_budget(t0 + secs(290), secs(60)),
            Duration::from_millis(1)
        );
    }
}
