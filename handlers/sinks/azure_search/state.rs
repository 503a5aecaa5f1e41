//! The index's documents, for `verify`: every key with its version field and, for the
//! documents whose fields are compared, the projected fields. Paged by key (`$orderby` on the
//! key with `key gt 'last'`: no limit on the index size); an index whose key is not sortable
//! is paged with `$skip`, which the service caps at 100,000 documents.

use super::SearchSink;
use super::project::{encode_key, key_material, project};
use super::request::version;
use super::service::Answer;
use crate::change::Change;
use crate::sinks::SinkError;
use crate::sinks::state::{Expected, FieldsOf, Held, Listing, Origin, SinkState};
use async_trait::async_trait;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// Documents per page (the service's maximum `$top`).
const PAGE: usize = 1000;
/// The service's largest `$skip`.
const MAX_SKIP: usize = 100_000;

impl SearchSink {
    fn held_of(&self, doc: &Map<String, Value>, fields_of: FieldsOf<'_>) -> Option<(String, Held)> {
        let key = doc.get(&self.actions.key_field)?.as_str()?.to_string();
        let version = (
            self.actions
                .version_field
                .as_ref()
                .and_then(|f| doc.get(f))
                .and_then(Value::as_i64)
                .unwrap_or(-1),
            -1,
        );
        let fields = fields_of(&key).then(|| {
            doc.iter()
                .filter(|(name, _)| self.compared(name))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect()
        });
        Some((key, Held { version, fields }))
    }

    /// The fields compared: the projected ones (not the key, the version, `@search.*`).
    fn compared(&self, name: &str) -> bool {
        name != self.actions.key_field
            && Some(name) != self.actions.version_field.as_deref()
            && !name.starts_with('@')
    }
}

#[async_trait]
impl SinkState for SearchSink {
    fn expect(&self, change: &Change) -> Result<Expected, String> {
        let key = encode_key(
            &key_material(change, self.actions.key_source),
            self.actions.key_encoding,
        )
        .map_err(|e| e.to_string())?;
        let doc = change.document.clone().unwrap_or_default();
        let fields = project(&doc, &self.actions.mappings, &self.actions.types)
            .map_err(|e| format!("document `{}`: {e}", change.id))?
            .into_iter()
            .filter(|(name, _)| self.compared(name))
            .collect();
        let version = match &self.actions.version_field {
            Some(_) => (version(change).unwrap_or(-1), -1),
            None => (-1, -1),
        };
        Ok(Expected {
            key,
            version,
            fields,
        })
    }

    async fn list(
        &self,
        _expected: &[&str],
        fields_of: FieldsOf<'_>,
    ) -> Result<Listing, SinkError> {
        let key_field = &self.actions.key_field;
        let mut held = BTreeMap::new();
        let mut last: Option<String> = None;
        let mut skip = 0;
        loop {
            let mut body = json!({ "search": "*", "top": PAGE });
            if self.key_sortable {
                body["orderby"] = json!(format!("{key_field} asc"));
                if let Some(last) = &last {
                    // Encoded keys hold no quote; a raw id's quotes are doubled (OData).
                    body["filter"] =
                        json!(format!("{key_field} gt '{}'", last.replace('\'', "''")));
                }
            } else {
                if skip >= MAX_SKIP {
                    return Err(SinkError::permanent(format!(
                        "the index holds more than {MAX_SKIP} documents and its key `{key_field}` is not sortable: the service pages no further; make the key sortable (`\"sortable\": true`) to verify it"
                    )));
                }
                body["skip"] = json!(skip);
            }
            let page = self
                .client
                .search(&body, "listing documents")
                .await
                .map_err(SinkError::from)?;
            let docs = page["value"].as_array().cloned().unwrap_or_default();
            let n = docs.len();
            for doc in docs {
                if let Some((key, h)) = doc.as_object().and_then(|d| self.held_of(d, fields_of)) {
                    last = Some(key.clone());
                    held.insert(key, h);
                }
            }
            skip += n;
            if n < PAGE {
                break;
            }
        }
        Ok(Listing {
            held,
            extras_unchecked: None,
        })
    }

    fn traces_keys(&self) -> bool {
        true
    }

    fn document_of(&self, key: &str) -> Option<Origin> {
        let material = super::project::decode_key(key, self.actions.key_encoding)?;
        match self.actions.key_source {
            super::config::KeySource::Id => Some(Origin::Id(material)),
            super::config::KeySource::PartitionKeyAndId => {
                // `[pk components..., id]`, `{}` for an undefined component.
                let mut parts: Vec<Value> = serde_json::from_str(&material).ok()?;
                let id = parts.pop()?.as_str()?.to_string();
                Some(Origin::Document(Value::Array(parts).to_string(), id))
            }
        }
    }

    async fn remove(
        &self,
        _function: &str,
        key: &str,
        held: (i64, i64),
    ) -> Result<bool, SinkError> {
        // The service has no conditional delete: read the version the index holds now and
        // delete only if it is still the one verify saw (a live write since then wins; the
        // window between the read and the delete is one round trip).
        if let Some(field) = &self.actions.version_field {
            let now = self
                .client
                .versions(&self.actions.key_field, field, &[key])
                .await
                .map_err(SinkError::from)?;
            match now.get(key) {
                None => return Ok(false),
                Some(v) if *v != held.0 => return Ok(false),
                Some(_) => {}
            }
        }
        let mut action = Map::new();
        action.insert("@search.action".into(), json!("delete"));
        action.insert(self.actions.key_field.clone(), json!(key));
        let body = serde_json::to_vec(&json!({ "value": [action] })).expect("json");
        match self.client.index(body).await {
            // A key the index does not hold is deleted already.
            Answer::Results(results) => {
                match results.iter().find(|r| !r.status && r.status_code != 404) {
                    None => Ok(true),
                    Some(r) => Err(SinkError::transient(format!(
                        "deleting `{key}`: HTTP {}: {}",
                        r.status_code,
                        r.error_message.as_deref().unwrap_or("")
                    ))),
                }
            }
            Answer::TooLarge => Err(SinkError::permanent(format!("deleting `{key}`: HTTP 413"))),
            Answer::Transient {
                message,
                retry_after,
            } => Err(SinkError::transient(message).retry_after(retry_after)),
            Answer::Permanent { message } => Err(SinkError::permanent(message)),
        }
    }
}
