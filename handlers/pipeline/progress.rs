//! Remembers, per batch, which sinks already have it, so that the host's re-delivery of a
//! failed batch re-drives only the sinks that failed. In memory like the host's own retry
//! state; bounded in size and age. Losing it is safe (sinks are idempotent), only slower.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAX_ENTRIES: usize = 4096;
const MAX_AGE: Duration = Duration::from_secs(6 * 3600);

/// (function, batch fingerprint) -> (when, sinks that hold the batch).
type Entries = HashMap<(String, String), (Instant, HashSet<String>)>;

#[derive(Default)]
pub struct ProgressBook {
    entries: Mutex<Entries>,
}

impl ProgressBook {
    /// Sinks that already hold batch `fingerprint` of `function`.
    pub fn done(&self, function: &str, fingerprint: &str) -> HashSet<String> {
        let entries = self.entries.lock().expect("progress lock");
        entries
            .get(&(function.to_string(), fingerprint.to_string()))
            .filter(|(at, _)| at.elapsed() < MAX_AGE)
            .map(|(_, sinks)| sinks.clone())
            .unwrap_or_default()
    }

    pub fn remember(&self, function: &str, fingerprint: &str, sinks: HashSet<String>) {
        let mut entries = self.entries.lock().expect("progress lock");
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (at, _)| at.elapsed() < MAX_AGE);
            if entries.len() >= MAX_ENTRIES
                && let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(k, _)| k.clone())
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(
            (function.to_string(), fingerprint.to_string()),
            (Instant::now(), sinks),
        );
    }

    pub fn forget(&self, function: &str, fingerprint: &str) {
        self.entries
            .lock()
            .expect("progress lock")
            .remove(&(function.to_string(), fingerprint.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_forgets_and_stays_bounded() {
        let book = ProgressBook::default();
        book.remember("f", "a", HashSet::from(["delta".to_string()]));
        assert!(book.done("f", "a").contains("delta"));
        assert!(book.done("g", "a").is_empty());
        book.forget("f", "a");
        assert!(book.done("f", "a").is_empty());
        for i in 0..MAX_ENTRIES + 10 {
            book.remember("f", &i.to_string(), HashSet::new());
        }
        assert!(book.entries.lock().unwrap().len() <= MAX_ENTRIES);
    }
}
