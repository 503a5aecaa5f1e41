//! Choosing what of a document a sink passes on: named fields (`/`-paths, structure kept), or
//! the whole document without Cosmos' system properties. Shared by every sink that writes a
//! document's content (Redis refresh, CloudEvents data).

use serde_json::{Map, Value};

/// Properties Cosmos DB adds to every document.
pub const SYSTEM_PROPERTIES: [&str; 6] = ["_rid", "_self", "_etag", "_attachments", "_ts", "_lsn"];

/// The value at a parsed path (object members only), if the document has one.
pub fn lookup<'a>(doc: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(doc.get(first)?, |v, seg| v.as_object()?.get(seg))
}

/// The document minus Cosmos system properties.
pub fn without_system_properties(doc: &Map<String, Value>) -> Map<String, Value> {
    doc.iter()
        .filter(|(k, _)| !SYSTEM_PROPERTIES.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A set of fields to keep; empty keeps the document without system properties.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelection {
    paths: Vec<Vec<String>>,
}

impl FieldSelection {
    pub fn new(paths: &[super::DocPath]) -> Self {
        Self {
            paths: paths.iter().map(|p| p.segments().to_vec()).collect(),
        }
    }

    /// The selected fields, nested as in the document (`/a/b` -> `{"a": {"b": ...}}`); a
    /// field the document lacks is left out.
    pub fn project(&self, doc: &Map<String, Value>) -> Map<String, Value> {
        if self.paths.is_empty() {
            return without_system_properties(doc);
        }
        let mut out = Map::new();
        for path in &self.paths {
            let Some((first, rest)) = path.split_first() else {
                continue;
            };
            let value = rest
                .iter()
                .try_fold(doc.get(first), |v, seg| Some(v?.as_object()?.get(seg)))
                .flatten();
            if let Some(v) = value {
                insert_path(&mut out, path, v.clone());
            }
        }
        out
    }
}

fn insert_path(map: &mut Map<String, Value>, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            map.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = map
                .entry(first.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selects_nested_fields_or_drops_system_properties() {
        let doc = json!({"id": "a", "address": {"city": "Graz", "zip": "8010"}, "total": 1, "_rid": "x", "_ts": 5});
        let doc = doc.as_object().unwrap();
        let paths: Vec<crate::change::DocPath> = ["/id", "/address/city", "/missing"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        let some = FieldSelection::new(&paths);
        assert_eq!(
            Value::Object(some.project(doc)),
            json!({"id": "a", "address": {"city": "Graz"}})
        );
        let all = FieldSelection::default().project(doc);
        assert_eq!(
            Value::Object(all),
            json!({"id": "a", "address": {"city": "Graz", "zip": "8010"}, "total": 1})
        );
    }
}
