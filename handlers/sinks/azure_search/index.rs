//! The index definition (the service's REST JSON), read once at start-up: the EDM type of
//! every field and the key field.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

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
    #[serde(default)]
    pub fields: Vec<FieldDefinition>,
}

impl IndexDefinition {
    pub fn load(path: &Path) -> Result<(Self, serde_json::Value), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read index definition {}: {e}", path.display()))?;
        let raw: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("index definition {} is not JSON: {e}", path.display()))?;
        let def: IndexDefinition = serde_json::from_value(raw.clone())
            .map_err(|e| format!("index definition {}: {e}", path.display()))?;
        if def.fields.iter().filter(|f| f.key).count() != 1 {
            return Err(format!(
                "index definition {} must have exactly one field with `\"key\": true`",
                path.display()
            ));
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
