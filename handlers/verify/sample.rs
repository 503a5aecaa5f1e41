//! Which documents get their fields compared: all (`--full`), or a sample of N chosen by the
//! smallest hashes of their keys (a bottom-k sample: uniform, the same documents whichever
//! order the feed returns them in, and held in memory N at a time while the container is
//! read).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    Full,
    Count(usize),
}

/// What offering a document did.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer<K> {
    /// In the sample (perhaps pushing another out, whose fields can go).
    Kept(Option<K>),
    NotKept,
}

/// A bottom-k sample of keys (or every key, for [`Sample::Full`]).
pub struct Sampler<K: Hash + Eq + Clone + Ord> {
    sample: Sample,
    /// (hash, key) of the kept keys; the largest hash leaves first.
    kept: BTreeSet<(u64, K)>,
    hashes: HashMap<K, u64>,
}

pub fn hash_of<K: Hash>(key: &K) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

impl<K: Hash + Eq + Clone + Ord> Sampler<K> {
    pub fn new(sample: Sample) -> Self {
        Self {
            sample,
            kept: BTreeSet::new(),
            hashes: HashMap::new(),
        }
    }

    pub fn offer(&mut self, key: &K) -> Offer<K> {
        let limit = match self.sample {
            Sample::Full => return Offer::Kept(None),
            Sample::Count(n) => n,
        };
        if limit == 0 {
            return Offer::NotKept;
        }
        if self.hashes.contains_key(key) {
            return Offer::Kept(None);
        }
        let h = hash_of(key);
        if self.kept.len() < limit {
            self.kept.insert((h, key.clone()));
            self.hashes.insert(key.clone(), h);
            return Offer::Kept(None);
        }
        let largest = self.kept.last().expect("full").clone();
        if (h, key.clone()) >= largest {
            return Offer::NotKept;
        }
        self.kept.remove(&largest);
        self.hashes.remove(&largest.1);
        self.kept.insert((h, key.clone()));
        self.hashes.insert(key.clone(), h);
        Offer::Kept(Some(largest.1))
    }

    pub fn contains(&self, key: &K) -> bool {
        matches!(self.sample, Sample::Full) || self.hashes.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_is_the_same_whatever_the_order_and_holds_n() {
        let keys: Vec<String> = (0..500).map(|i| format!("doc-{i}")).collect();
        let pick = |order: &[String]| {
            let mut s = Sampler::new(Sample::Count(20));
            for k in order {
                s.offer(k);
            }
            let mut kept: Vec<String> = keys.iter().filter(|k| s.contains(k)).cloned().collect();
            kept.sort();
            kept
        };
        let forward = pick(&keys);
        let mut reversed = keys.clone();
        reversed.reverse();
        assert_eq!(forward.len(), 20);
        assert_eq!(forward, pick(&reversed));
    }

    #[test]
    fn an_evicted_key_is_named_and_full_keeps_everything() {
        let mut s = Sampler::new(Sample::Count(1));
        let (a, b) = ("a".to_string(), "b".to_string());
        let (low, high) = if hash_of(&a) < hash_of(&b) {
            (a, b)
        } else {
            (b, a)
        };
        assert_eq!(s.offer(&high), Offer::Kept(None));
        assert_eq!(s.offer(&low), Offer::Kept(Some(high.clone())));
        assert_eq!(s.offer(&high), Offer::NotKept);
        let mut full = Sampler::new(Sample::Full);
        assert_eq!(full.offer(&low), Offer::Kept(None));
        assert!(full.contains(&high));
        let mut none = Sampler::new(Sample::Count(0));
        assert_eq!(none.offer(&low), Offer::NotKept);
    }
}
