//! Fault hooks for the fault-injection run (`tests/fault_injection.rs`): a sink that panics on
//! every Nth delivery, named by `FANOUT_FAILPOINT_PANIC=sink:N` (e.g. `search:53`).
//!
//! Compiled into debug builds and the `failpoints` feature only; the shipped binary (the
//! `dist` profile, no feature) has none - `tests/check_package.sh` checks that the variable's
//! name is not in it.

#[cfg(any(debug_assertions, feature = "failpoints"))]
mod active {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Panic {
        sink: String,
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
                    sink: sink.to_string(),
                    every: every.parse().ok().filter(|&n| n > 0)?,
                    calls: AtomicU64::new(0),
                })
            })
            .as_ref()
    }

    pub fn before_deliver(sink: &str) {
        if let Some(p) = configured()
            && p.sink == sink
            && (p.calls.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(p.every)
        {
            // resume_unwind: a panic that skips the panic hook, so a run with many of them
            // does not print a message (and a backtrace) for each.
            std::panic::resume_unwind(Box::new(format!(
                "failpoint: sink `{sink}` panics on every {}th delivery",
                p.every
            )));
        }
    }
}

/// Called by the retry loop inside its `catch_unwind`, before each delivery to `sink`.
#[inline]
pub fn before_deliver(_sink: &str) {
    #[cfg(any(debug_assertions, feature = "failpoints"))]
    active::before_deliver(_sink);
}
