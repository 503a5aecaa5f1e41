//! The index definition (the service's REST JSON), read once at start-up: the EDM type of
//! every field and the key field.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Why an index definition file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IndexDefinitionError {
    #[error("cannot read index definition {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("index definition {path} is not JSON: {source}")]
    NotJson {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("index definition {path}: {source}")]
    Shape {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("index definition {0} must have exactly one field with `\"key\": true`")]
    Key(String),
}

#[derive(Debug, Clone, Deserialize)]
pub struct IndexDefinition {
    pub name: String,
    pub fields: Vec<FieldDefinition>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FieldDefinition {
    pub name: String,
    #[serde(rename = "type")]
    pub edm_type: String,
    #[serde(default)]
    pub key: bool,
    /// Unset: the service's default (simple fields are sortable).
    #[serde(default)]
    pub sortable: Option<bool>,
    #[serde(default)]
    pub fields: Vec<FieldDefinition>,
}

impl IndexDefinition {
    pub fn load(path: &Path) -> Result<(Self, serde_json::Value), IndexDefinitionError> {
        use IndexDefinitionError as E;
        let at = || path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|source| E::Read { path: at(), source })?;
        let raw: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| E::NotJson { path: at(), source })?;
        let def: IndexDefinition = serde_json::from_value(raw.clone())
            .map_err(|source| E::Shape { path: at(), source })?;
        if def.fields.iter().filter(|f| f.key).count() != 1 {
            return Err(E::Key(at()));
        }
        Ok((def, raw))
    }

    pub fn key_field(&self) -> &str {
        self.fields
            .iter()
            .find(|f| f.key)
            .map(|f| f.name.as_str())
            .unwrap_or("id")
    }

    /// Top-level field name -> EDM type.
    pub fn types(&self) -> BTreeMap<String, String> {
        self.fields
            .iter()
            .map(|f| (f.name.clone(), f.edm_type.clone()))
            .collect()
    }
}
