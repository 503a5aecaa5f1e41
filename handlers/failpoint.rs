//! Fault hooks for the fault-injection tests: a panic on every Nth hit of a point, named by
//! `FANOUT_FAILPOINT_PANIC=point:N`. The points: a sink's name (before each delivery to it,
//! inside the retry loop's `catch_unwind`: `search:97`), and [`INVOCATION`] (in the
//! invocation task, once the body is read: the server's panic path).
//!
//! Compiled into debug builds and the `failpoints` feature only; the shipped binary (the
//! `dist` profile, no feature) has none - `tests/check_package.sh` checks that the variable's
//! name is not in it.

#[cfg(any(debug_assertions, feature = "failpoints"))]
mod active {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Panic {
        point: String,
        every: u64,
        calls: AtomicU64,
    }

    fn configured() -> Option<&'static Panic> {
        static PANIC: OnceLock<Option<Panic>> = OnceLock::new();
        PANIC
            .get_or_init(|| {
                let spec = std::env::var("FANOUT_FAILPOINT_PANIC").ok()?;
                let (sink, every) = spec.split_once(':')?;
                Some(Panic {
                    point: sink.to_string(),
                    every: every.parse().ok().filter(|&n| n > 0)?,
                    calls: AtomicU64::new(0),
                })
            })
            .as_ref()
    }

    pub fn hit(point: &str) {
        if let Some(p) = configured()
            && p.point == point
            && (p.calls.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(p.every)
        {
            // resume_unwind: a panic that skips the panic hook, so a run with many of them
            // does not print a message (and a backtrace) for each.
            std::panic::resume_unwind(Box::new(format!(
                "failpoint: `{point}` panics on every {}th hit",
                p.every
            )));
        }
    }
}

/// The point in the invocation task, after the body is read (no sink can be named so: names
/// starting with `_` are reserved).
pub const INVOCATION: &str = "_invocation";

/// Panics here when `FANOUT_FAILPOINT_PANIC` names `point` and this is its Nth hit.
#[inline]
pub fn hit(_point: &str) {
    #[cfg(any(debug_assertions, feature = "failpoints"))]
    active::hit(_point);
}
