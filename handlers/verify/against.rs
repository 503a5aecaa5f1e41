//! `verify --against`: two containers compared, the migration cutover check. Both are read
//! whole (every item's current version); the report gives the documents per partition key on
//! each side, every id present on one side only, and for a sample (or all) the documents
//! compared field by field with Cosmos' system properties (`_rid _self _etag _attachments
//! _ts _lsn`) left out. The partition key is read with the source's paths on both sides (a
//! migration that changes the key compares where each document's values put it).

use super::compare::{self, DocKey, Drift, Rules};
use super::sample::{Offer, Sample, Sampler};
use crate::change::PartitionKeyPaths;
use crate::change::projection::without_system_properties;
use crate::cosmos::{CosmosTarget, SourceError, Spent, Throttle};
use crate::sinks::state::Held;
use azure_data_cosmos::clients::ContainerClient;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

pub struct Side<'a> {
    pub container: &'a ContainerClient,
    pub target: &'a CosmosTarget,
}

/// The function's container and the one to compare it with, opened.
pub struct Against<'a> {
    pub source: crate::source::FunctionSource<'a>,
    pub other: CosmosTarget,
    pub other_container: ContainerClient,
}

impl<'a> Against<'a> {
    /// Opens both containers (`spec` and `connection`: see [`crate::cosmos::resolve_other`]);
    /// `builder` and `other_builder` are `CosmosClientBuilder::new()` outside tests.
    #[allow(clippy::too_many_arguments)]
    pub async fn prepare(
        config: &'a crate::config::AppConfig,
        pipeline: &'a crate::pipeline::Pipeline,
        function: &str,
        spec: &str,
        connection: Option<&str>,
        setting: &dyn Fn(&str) -> Option<String>,
        builder: azure_data_cosmos::CosmosClientBuilder,
        other_builder: azure_data_cosmos::CosmosClientBuilder,
    ) -> Result<Self, super::VerifyError> {
        let (route, partition_key) =
            crate::source::FunctionSource::route(config, pipeline, function)?;
        let source =
            crate::source::FunctionSource::open(route, partition_key, setting, builder).await?;
        let other = crate::cosmos::resolve_other(&source.target, spec, connection, setting)
            .map_err(SourceError::from)?;
        let other_container = crate::cosmos::open_container(&other, other_builder).await?;
        Ok(Self {
            source,
            other,
            other_container,
        })
    }

    pub async fn run(
        &self,
        throttle: &Throttle,
        sample: Sample,
        parallel: usize,
        page_size: u32,
    ) -> Result<AgainstReport, SourceError> {
        run(
            Side {
                container: &self.source.container,
                target: &self.source.target,
            },
            Side {
                container: &self.other_container,
                target: &self.other,
            },
            self.source.partition_key,
            throttle,
            sample,
            parallel,
            page_size,
        )
        .await
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DocRef {
    pub partition_key: String,
    pub id: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionCount {
    pub partition_key: String,
    pub source: u64,
    pub target: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DifferentDoc {
    pub partition_key: String,
    pub id: String,
    pub fields: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AgainstReport {
    pub source: String,
    pub target: String,
    pub source_documents: u64,
    pub target_documents: u64,
    pub partition_keys: usize,
    /// Partition keys whose document counts differ.
    pub partition_keys_differing: Vec<PartitionCount>,
    /// On the source only.
    pub missing: Vec<DocRef>,
    /// On the target only.
    pub extra: Vec<DocRef>,
    /// Documents compared field by field.
    pub compared: usize,
    pub different: Vec<DifferentDoc>,
    pub spent: Spent,
    pub clean: bool,
}

/// One side's documents: key -> fields (for the sampled ones), and counts per partition key.
#[derive(Default)]
struct Read {
    docs: BTreeMap<DocKey, Held>,
    per_partition: BTreeMap<String, u64>,
    items: u64,
}

async fn read_side(
    side: &Side<'_>,
    partition_key: &PartitionKeyPaths,
    throttle: &Throttle,
    parallel: usize,
    page_size: u32,
    keep_fields: &(dyn Fn(&DocKey) -> bool + Sync),
    sampler: Option<&Mutex<Sampler<DocKey>>>,
) -> Result<Read, SourceError> {
    let read = Mutex::new(Read::default());
    let on_items = |items: Vec<Value>| -> Result<(), SourceError> {
        let mut r = read.lock().expect("read");
        for item in items {
            let Some(map) = item.as_object() else {
                continue;
            };
            let Some(id) = map.get("id").and_then(Value::as_str) else {
                continue;
            };
            let key: DocKey = (partition_key.extract(map).to_wire(), id.to_string());
            let mut kept = keep_fields(&key);
            if let Some(sampler) = sampler {
                match sampler.lock().expect("sampler").offer(&key) {
                    Offer::Kept(evicted) => {
                        if let Some(e) = evicted
                            && let Some(h) = r.docs.get_mut(&e)
                        {
                            h.fields = None;
                        }
                        kept = true;
                    }
                    Offer::NotKept => {}
                }
            }
            let fields = kept.then(|| without_system_properties(map));
            let pk = key.0.clone();
            let held = Held {
                version: (0, 0),
                fields,
            };
            // A document updated while the read ran comes twice: counted once.
            if r.docs.insert(key, held).is_none() {
                r.items += 1;
                *r.per_partition.entry(pk).or_default() += 1;
            }
        }
        Ok(())
    };
    crate::cosmos::snapshot::read_all(
        side.container,
        side.target,
        throttle,
        partition_key,
        parallel,
        page_size,
        chrono::Utc::now().timestamp(),
        false,
        &on_items,
    )
    .await?;
    Ok(read.into_inner().expect("read"))
}

pub async fn run(
    source: Side<'_>,
    target: Side<'_>,
    partition_key: &PartitionKeyPaths,
    throttle: &Throttle,
    sample: Sample,
    parallel: usize,
    page_size: u32,
) -> Result<AgainstReport, SourceError> {
    let sampler = Mutex::new(Sampler::new(sample));
    let a = read_side(
        &source,
        partition_key,
        throttle,
        parallel,
        page_size,
        &|_| false,
        Some(&sampler),
    )
    .await?;
    let sampler = sampler.into_inner().expect("sampler");
    let b = read_side(
        &target,
        partition_key,
        throttle,
        parallel,
        page_size,
        &|k| sampler.contains(k),
        None,
    )
    .await?;
    let rules = Rules {
        missing_is_drift: true,
        read_started: i64::MAX,
    };
    let mut missing = Vec::new();
    let mut extra = Vec::new();
    let mut different = Vec::new();
    let doc_ref = |k: &DocKey| DocRef {
        partition_key: k.0.clone(),
        id: k.1.clone(),
    };
    for (key, drift) in compare::compare(&a.docs, &b.docs, rules) {
        match drift {
            Drift::Missing => missing.push(doc_ref(&key)),
            Drift::Extra => extra.push(doc_ref(&key)),
            Drift::Different { fields } => different.push(DifferentDoc {
                partition_key: key.0,
                id: key.1,
                fields,
            }),
            Drift::Stale { .. } => {}
        }
    }
    let mut counts: HashMap<&String, (u64, u64)> = HashMap::new();
    for (pk, n) in &a.per_partition {
        counts.entry(pk).or_default().0 = *n;
    }
    for (pk, n) in &b.per_partition {
        counts.entry(pk).or_default().1 = *n;
    }
    let partition_keys = counts.len();
    let mut partition_keys_differing: Vec<PartitionCount> = counts
        .into_iter()
        .filter(|(_, (x, y))| x != y)
        .map(|(pk, (x, y))| PartitionCount {
            partition_key: pk.clone(),
            source: x,
            target: y,
        })
        .collect();
    partition_keys_differing.sort_by(|x, y| x.partition_key.cmp(&y.partition_key));
    let compared = a
        .docs
        .iter()
        .filter(|(k, h)| h.fields.is_some() && b.docs.get(*k).is_some_and(|t| t.fields.is_some()))
        .count();
    let clean = missing.is_empty()
        && extra.is_empty()
        && different.is_empty()
        && partition_keys_differing.is_empty();
    Ok(AgainstReport {
        source: source.target.describe(),
        target: target.target.describe(),
        source_documents: a.items,
        target_documents: b.items,
        partition_keys,
        partition_keys_differing,
        missing,
        extra,
        compared,
        different,
        spent: throttle.spent(),
        clean,
    })
}
