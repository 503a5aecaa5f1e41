//! Request building: changes -> index actions -> request bodies within the service's limits.

use super::config::{KeyEncoding, KeySource};
use super::project::{FieldMapping, encode_key, key_material, project};
use crate::change::Change;
use crate::sinks::Rejected;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};

/// One index action and the change it came from.
#[derive(Debug, Clone)]
pub struct Action {
    /// Index into the changes handed to the sink.
    pub change: usize,
    pub key: String,
    pub is_delete: bool,
    pub body: Map<String, Value>,
    /// Serialized size, for packing requests.
    pub bytes: usize,
    /// Earlier changes to the same document in this batch, replaced by this action.
    pub superseded: Vec<usize>,
}

pub struct ActionBuilder {
    pub key_source: KeySource,
    pub key_field: String,
    pub key_encoding: KeyEncoding,
    pub mappings: Vec<FieldMapping>,
    pub types: BTreeMap<String, String>,
    /// Receives each upsert's version (see `SearchConfig::version_field`).
    pub version_field: Option<String>,
}

/// A change's version as the index's version field holds it: the lsn, else `_ts`.
pub fn version(change: &Change) -> Option<i64> {
    change.lsn.or(change.ts)
}

impl ActionBuilder {
    /// One action per document key: when a batch holds several changes to one document, only
    /// the last (newest in feed order) that could be built is sent; the service does not
    /// promise to apply actions on one key in request order. The earlier ones ride along as
    /// `superseded`, so that if the service refuses the last one they are dead-lettered with it.
    pub fn build(&self, changes: &[&Change]) -> (Vec<Action>, Vec<Rejected>) {
        let mut rejected = Vec::new();
        let mut built: Vec<Action> = Vec::with_capacity(changes.len());
        for (i, change) in changes.iter().enumerate() {
            let key = match encode_key(&key_material(change, self.key_source), self.key_encoding) {
                Ok(key) => key,
                Err(reason) => {
                    rejected.push(Rejected {
                        index: i,
                        reason: reason.to_string(),
                    });
                    continue;
                }
            };
            let mut body = Map::new();
            if change.operation.is_delete() {
                body.insert("@search.action".into(), Value::String("delete".into()));
            } else {
                let doc = change.document.as_ref().cloned().unwrap_or_default();
                match project(&doc, &self.mappings, &self.types) {
                    Ok(projected) => {
                        body.insert(
                            "@search.action".into(),
                            Value::String("mergeOrUpload".into()),
                        );
                        body.extend(projected);
                        if let (Some(field), Some(v)) = (&self.version_field, version(change)) {
                            body.insert(field.clone(), Value::from(v));
                        }
                    }
                    Err(reason) => {
                        rejected.push(Rejected {
                            index: i,
                            reason: format!("document `{}`: {reason}", change.id),
                        });
                        continue;
                    }
                }
            }
            body.insert(self.key_field.clone(), Value::String(key.clone()));
            let bytes = serde_json::to_vec(&body).map(|v| v.len()).unwrap_or(0) + 1;
            built.push(Action {
                change: i,
                key,
                is_delete: change.operation.is_delete(),
                body,
                bytes,
                superseded: Vec::new(),
            });
        }
        // Keep the last built action per key, in feed order of those survivors.
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (pos, a) in built.iter().enumerate() {
            last.insert(a.key.as_str(), pos);
        }
        let keep: Vec<bool> = built
            .iter()
            .enumerate()
            .map(|(pos, a)| last[a.key.as_str()] == pos)
            .collect();
        let mut superseded: HashMap<String, Vec<usize>> = HashMap::new();
        for (a, k) in built.iter().zip(&keep) {
            if !k {
                superseded.entry(a.key.clone()).or_default().push(a.change);
            }
        }
        let mut actions: Vec<Action> = built
            .into_iter()
            .zip(keep)
            .filter(|(_, k)| *k)
            .map(|(a, _)| a)
            .collect();
        for a in &mut actions {
            a.superseded = superseded.remove(&a.key).unwrap_or_default();
        }
        (actions, rejected)
    }
}

/// Packs actions into requests of at most `max_actions` actions and `max_bytes` bytes.
pub fn chunk(actions: Vec<Action>, max_actions: usize, max_bytes: usize) -> Vec<Vec<Action>> {
    let mut out = Vec::new();
    let mut current: Vec<Action> = Vec::new();
    let mut size = 16;
    for a in actions {
        if !current.is_empty() && (current.len() >= max_actions || size + a.bytes > max_bytes) {
            out.push(std::mem::take(&mut current));
            size = 16;
        }
        size += a.bytes;
        current.push(a);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The request body: `{"value": [actions...]}`.
pub fn body(actions: &[Action]) -> Vec<u8> {
    let value: Vec<&Map<String, Value>> = actions.iter().map(|a| &a.body).collect();
    serde_json::to_vec(&serde_json::json!({ "value": value })).expect("serializable")
}
