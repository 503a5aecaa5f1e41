//! Request building: changes -> index actions -> request bodies within the service's limits.

use super::config::KeyEncoding;
use super::project::{FieldMapping, encode_key, project};
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
}

pub struct ActionBuilder {
    pub key_field: String,
    pub key_encoding: KeyEncoding,
    pub mappings: Vec<FieldMapping>,
    pub types: BTreeMap<String, String>,
}

impl ActionBuilder {
    /// One action per document key: when a batch holds several changes to one document, only
    /// the last (newest in feed order) is sent; the service does not promise to apply actions on
    /// one key in request order.
    pub fn build(&self, changes: &[&Change]) -> (Vec<Action>, Vec<Rejected>) {
        let mut rejected = Vec::new();
        let mut last: HashMap<String, usize> = HashMap::new();
        let mut keyed = Vec::with_capacity(changes.len());
        for (i, c) in changes.iter().enumerate() {
            match encode_key(&c.id, self.key_encoding) {
                Ok(key) => {
                    last.insert(key.clone(), i);
                    keyed.push((i, key));
                }
                Err(reason) => rejected.push(Rejected { index: i, reason }),
            }
        }
        let mut actions = Vec::with_capacity(last.len());
        for (i, key) in keyed {
            if last.get(&key) != Some(&i) {
                continue; // superseded by a later change to the same document
            }
            let change = changes[i];
            let mut body = Map::new();
            if change.operation.is_delete() {
                body.insert("@search.action".into(), Value::String("delete".into()));
                body.insert(self.key_field.clone(), Value::String(key.clone()));
            } else {
                let doc = change.document.as_ref().cloned().unwrap_or_default();
                match project(&doc, &self.mappings, &self.types) {
                    Ok(projected) => {
                        body.insert(
                            "@search.action".into(),
                            Value::String("mergeOrUpload".into()),
                        );
                        body.extend(projected);
                        body.insert(self.key_field.clone(), Value::String(key.clone()));
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
            let bytes = serde_json::to_vec(&body).map(|v| v.len()).unwrap_or(0) + 1;
            actions.push(Action {
                change: i,
                key,
                is_delete: change.operation.is_delete(),
                body,
                bytes,
            });
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
