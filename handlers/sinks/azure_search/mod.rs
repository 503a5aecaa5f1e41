//! `type = "azure_search"`: upserts become `mergeOrUpload`, deletes `delete`, in an Azure AI
//! Search index, through the REST API (there is no Rust SDK). Field projection with coercion to
//! the index's EDM types; ids encoded as legal keys; requests within 1000 actions / ~16 MB, split
//! on 413; 207 partial failures retried per document (409, 422, 503) or dead-lettered (400, 404).

mod config;
mod error;
mod index;
mod project;
mod request;
mod service;
mod state;

pub use config::{
    DEFAULT_API_VERSION, KeyEncoding, KeySource, SearchAuth, SearchConfig, ValidatedSearch,
};
pub use error::SearchError;
pub use index::{FieldDefinition, IndexDefinition, IndexDefinitionError};
pub use project::{ProjectError, coerce, decode_key, encode_key, key_material};
pub use service::{SEARCH_SCOPE, SearchClient};

use super::{BatchContext, Delivery, Rejected, Sink, SinkError};
use crate::change::Change;
use async_trait::async_trait;
use request::{ActionBuilder, chunk};
use service::Answer;
use std::collections::VecDeque;

pub const KIND: &str = "azure_search";

pub struct SearchSink {
    name: String,
    client: SearchClient,
    actions: ActionBuilder,
    max_actions: usize,
    max_bytes: usize,
    /// The key field can order results (`verify` pages through the index by key).
    key_sortable: bool,
}

impl SearchSink {
    pub fn new(name: &str, v: &ValidatedSearch) -> Result<Self, SinkError> {
        let config = &v.config;
        Ok(Self {
            name: name.to_string(),
            client: SearchClient::new(config)?,
            actions: ActionBuilder {
                key_source: config.key,
                mappings: v.mappings.clone(),
                key_field: v.key_field.clone(),
                key_encoding: config.key_encoding,
                types: v.types.clone(),
                version_field: config.version_field.clone(),
            },
            max_actions: config.max_actions,
            max_bytes: config.max_request_bytes,
            key_sortable: v
                .definition
                .as_ref()
                .and_then(|(d, _)| d.fields.iter().find(|f| f.key))
                .is_none_or(|f| f.sortable != Some(false)),
        })
    }
}

impl SearchSink {
    /// The request bodies these changes become (projection, coercion, key encoding, packing),
    /// without sending them; and how many changes were refused. For benchmarks and dry runs.
    pub fn request_bodies(&self, changes: &[&Change]) -> (Vec<Vec<u8>>, usize) {
        let (actions, rejected) = self.actions.build(changes);
        let bodies = chunk(actions, self.max_actions, self.max_bytes)
            .iter()
            .map(|b| request::body(b))
            .collect();
        (bodies, rejected.len())
    }
}

/// The service refused an action: its change, and the earlier changes it replaced in this
/// batch (never sent), go to the dead-letter store together.
fn reject_with_superseded(rejected: &mut Vec<Rejected>, action: &request::Action, reason: String) {
    for &index in &action.superseded {
        rejected.push(Rejected {
            index,
            reason: format!("superseded in this batch by a change the service refused: {reason}"),
        });
    }
    rejected.push(Rejected {
        index: action.change,
        reason,
    });
}

#[async_trait]
impl Sink for SearchSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    fn state(&self) -> Option<&dyn super::state::SinkState> {
        Some(self)
    }

    fn keeps_tombstones(&self) -> bool {
        self.actions.version_field.is_some()
    }

    async fn deliver(
        &self,
        ctx: &BatchContext,
        changes: &[&Change],
    ) -> Result<Delivery, SinkError> {
        let (mut actions, mut rejected) = self.actions.build(changes);
        let total = actions.len();
        let mut stale = 0;
        if ctx.replay
            && let Some(field) = &self.actions.version_field
        {
            // A replay never goes back in time: what the index holds newer stays.
            let mut held = std::collections::HashMap::new();
            for keys in actions.chunks(self.max_actions.clamp(1, 1000)) {
                let keys: Vec<&str> = keys.iter().map(|a| a.key.as_str()).collect();
                held.extend(
                    self.client
                        .versions(&self.actions.key_field, field, &keys)
                        .await?,
                );
            }
            actions.retain(|a| {
                let newer = match (held.get(&a.key), request::version(changes[a.change])) {
                    (Some(&there), Some(ours)) => there > ours,
                    _ => false,
                };
                stale += usize::from(newer);
                !newer
            });
        }
        let mut queue: VecDeque<Vec<request::Action>> =
            chunk(actions, self.max_actions, self.max_bytes).into();
        let (mut pending, mut requests, mut indexed) = (Vec::new(), 0usize, 0usize);
        let mut retry_after = None;
        let mut last_error = None;
        while let Some(batch) = queue.pop_front() {
            requests += 1;
            match self.client.index(request::body(&batch)).await {
                Answer::Results(results) => {
                    let by_key: std::collections::HashMap<&str, &service::ItemResult> =
                        results.iter().map(|r| (r.key.as_str(), r)).collect();
                    for a in &batch {
                        match by_key.get(a.key.as_str()) {
                            Some(r) if r.status || matches!(r.status_code, 200 | 201) => {
                                indexed += 1
                            }
                            // Deleting a document that is not there is what we wanted.
                            Some(r) if a.is_delete && r.status_code == 404 => indexed += 1,
                            Some(r) if matches!(r.status_code, 409 | 422 | 503) => {
                                pending.push(a.change)
                            }
                            Some(r) if matches!(r.status_code, 400 | 404) => {
                                let reason = format!(
                                    "search refused `{}` ({}): {}",
                                    changes[a.change].id,
                                    r.status_code,
                                    r.error_message.as_deref().unwrap_or("no message")
                                );
                                reject_with_superseded(&mut rejected, a, reason);
                            }
                            _ => pending.push(a.change),
                        }
                    }
                }
                Answer::TooLarge if batch.len() > 1 => {
                    let mut first = batch;
                    let second = first.split_off(first.len() / 2);
                    queue.push_front(second);
                    queue.push_front(first);
                }
                Answer::TooLarge => {
                    let reason = format!(
                        "document `{}` alone is larger than the service accepts (413)",
                        changes[batch[0].change].id
                    );
                    reject_with_superseded(&mut rejected, &batch[0], reason);
                }
                // A whole-request 400 is usually one bad document: halve until it stands alone,
                // so the good ones still reach the index.
                Answer::Permanent { .. } if batch.len() > 1 => {
                    let mut first = batch;
                    let second = first.split_off(first.len() / 2);
                    queue.push_front(second);
                    queue.push_front(first);
                }
                Answer::Permanent { message } => {
                    for a in &batch {
                        reject_with_superseded(&mut rejected, a, message.clone());
                    }
                }
                Answer::Transient {
                    message,
                    retry_after: ra,
                } => {
                    // The service is throttling or unavailable: stop here, retry the rest later.
                    pending.extend(batch.iter().map(|a| a.change));
                    pending.extend(queue.drain(..).flatten().map(|a| a.change));
                    retry_after = ra;
                    last_error = Some(message);
                }
            }
        }
        if let Some(message) = last_error
            && indexed == 0
            && rejected.is_empty()
        {
            return Err(SinkError::transient(message).retry_after(retry_after));
        }
        Ok(Delivery {
            detail: format!(
                "{indexed} of {total} documents indexed in {requests} requests{}{}",
                if stale > 0 {
                    format!(", {stale} skipped: the index holds a newer version")
                } else {
                    String::new()
                },
                if pending.is_empty() {
                    String::new()
                } else {
                    format!(", {} to retry", pending.len())
                }
            ),
            rejected,
            pending,
            retry_after,
            ..Delivery::default()
        })
    }
}
