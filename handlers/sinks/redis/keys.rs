//! Key templates: `order:{id}`, `customer:{customerId}:orders`, `{pk}` (the partition key),
//! nested paths (`{address/city}` or `{address.city}`). `{{` and `}}` are literal braces, for
//! Redis Cluster hash tags: `{{customer:{customerId}}}:orders` renders `{customer:c1}:orders`.

use crate::change::Change;
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    Id,
    PartitionKey,
    Field(Vec<String>),
}

/// Why a key template cannot be used, saying how to write it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyTemplateError {
    #[error("key template `{0}` has an unclosed `{{` (write `{{{{` for a literal brace)")]
    Unclosed(String),
    #[error("key template `{0}` has an empty `{{}}`")]
    EmptyPlaceholder(String),
    #[error("key template `{0}` has a lone `}}` (write `}}}}` for a literal brace)")]
    LoneBrace(String),
    #[error("key template `{0}` has no placeholder: every change would hit the same key")]
    NoPlaceholder(String),
}

/// Why a key could not be made for a change (the change is dead-lettered with it).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "key `{template}`: a hard delete carries only the id and partition key, not `{field}`; use soft deletes or key templates on id / partition key fields"
    )]
    HardDelete { template: String, field: String },
    #[error("key `{template}`: the document has no `{field}`")]
    MissingField { template: String, field: String },
    #[error("key `{template}`: `{field}` is {what}, not a string or number")]
    NotScalar {
        template: String,
        field: String,
        what: &'static str,
    },
    #[error(
        "key `{0}` has braces that are not a Redis Cluster hash tag; refresh mode cannot place its version key in the same slot"
    )]
    NoHashTag(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct KeyTemplate {
    raw: String,
    parts: Vec<Part>,
}

impl KeyTemplate {
    /// Whether the rendered key tells documents of different partition keys apart: it holds
    /// `{pk}`, or a field for every path of the partition key.
    pub fn names_the_partition(&self, partition_key: &[Vec<String>]) -> bool {
        self.parts.contains(&Part::PartitionKey)
            || partition_key.iter().all(|path| {
                self.parts
                    .iter()
                    .any(|p| matches!(p, Part::Field(f) if f == path))
            })
    }

    pub fn parse(raw: &str) -> Result<Self, KeyTemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = raw.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => {
                                return Err(KeyTemplateError::Unclosed(raw.to_string()));
                            }
                        }
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    let name = name.trim();
                    parts.push(match name {
                        "id" => Part::Id,
                        "pk" | "partitionKey" => Part::PartitionKey,
                        "" => return Err(KeyTemplateError::EmptyPlaceholder(raw.to_string())),
                        path => Part::Field(
                            path.trim_start_matches('/')
                                .split(['/', '.'])
                                .map(str::to_string)
                                .collect(),
                        ),
                    });
                }
                '}' => {
                    return Err(KeyTemplateError::LoneBrace(raw.to_string()));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if !parts.iter().any(|p| !matches!(p, Part::Literal(_))) {
            return Err(KeyTemplateError::NoPlaceholder(raw.to_string()));
        }
        Ok(Self {
            raw: raw.to_string(),
            parts,
        })
    }

    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// The (partition key, id) a rendered key was made from, read back: for templates of
    /// literals, `{pk}` and `{id}` only, when exactly one reading exists (`None` otherwise:
    /// a template with other fields, a key it did not render, an ambiguous split). The
    /// partition key comes back as rendered ([`crate::change::PartitionKey::as_key_string`]).
    pub fn parse_back(&self, key: &str) -> Option<(Option<String>, Option<String>)> {
        if self.parts.iter().any(|p| matches!(p, Part::Field(_))) {
            return None;
        }
        let mut found = Vec::new();
        read_back(&self.parts, key, (None, None), &mut found);
        match found.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        }
    }

    /// Whether [`Self::parse_back`] can give an id: `{id}` and no field placeholders.
    pub fn reads_back(&self) -> bool {
        self.parts.contains(&Part::Id) && !self.parts.iter().any(|p| matches!(p, Part::Field(_)))
    }

    /// A `SCAN MATCH` pattern every key the template renders matches: the literal parts
    /// escaped, each placeholder `*`.
    pub fn glob(&self) -> String {
        let mut glob = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => {
                    for c in text.chars() {
                        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                            glob.push('\\');
                        }
                        glob.push(c);
                    }
                }
                _ => {
                    if !glob.ends_with('*') || glob.ends_with("\\*") {
                        glob.push('*');
                    }
                }
            }
        }
        glob
    }

    /// Fields (other than id and partition key) the template reads from the document.
    pub fn fields(&self) -> impl Iterator<Item = String> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(path) => Some(path.join("/")),
            _ => None,
        })
    }

    /// Renders the key for a change. A hard delete carries no body: fields are then read from
    /// the partition key (`pk_paths`, without leading slashes) when they are partition key paths.
    pub fn render(&self, change: &Change, pk_paths: &[Vec<String>]) -> Result<String, KeyError> {
        let mut out = String::with_capacity(self.raw.len() + 32);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Id => out.push_str(&change.id),
                Part::PartitionKey => out.push_str(&change.partition_key.as_key_string()),
                Part::Field(path) => {
                    let from_doc = change.document.as_ref().and_then(|d| lookup(d, path));
                    let from_pk = || {
                        let i = pk_paths.iter().position(|p| p == path)?;
                        change.partition_key.0.get(i)?.as_ref()
                    };
                    let value = from_doc.or_else(from_pk).ok_or_else(|| {
                        let (template, field) = (self.raw.clone(), path.join("/"));
                        if change.document.is_none() {
                            KeyError::HardDelete { template, field }
                        } else {
                            KeyError::MissingField { template, field }
                        }
                    })?;
                    match value {
                        Value::String(s) => out.push_str(s),
                        Value::Number(n) => out.push_str(&n.to_string()),
                        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                        other => {
                            return Err(KeyError::NotScalar {
                                template: self.raw.clone(),
                                field: path.join("/"),
                                what: if other.is_null() {
                                    "null"
                                } else {
                                    "a structure"
                                },
                            });
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

type ReadBack = (Option<String>, Option<String>);

/// Every way `key` splits over `parts` (stops looking after two: one is wanted).
fn read_back(parts: &[Part], key: &str, got: ReadBack, found: &mut Vec<ReadBack>) {
    if found.len() > 1 {
        return;
    }
    let Some((first, rest)) = parts.split_first() else {
        if key.is_empty() {
            found.push(got);
        }
        return;
    };
    match first {
        Part::Literal(text) => {
            if let Some(after) = key.strip_prefix(text.as_str()) {
                read_back(rest, after, got, found);
            }
        }
        Part::Id | Part::PartitionKey => {
            // A placeholder renders at least one character.
            for (end, _) in key.char_indices().skip(1).chain([(key.len(), ' ')]) {
                let value = key[..end].to_string();
                let mut next = got.clone();
                let slot = if matches!(first, Part::Id) {
                    &mut next.1
                } else {
                    &mut next.0
                };
                if slot.as_ref().is_some_and(|v| *v != value) {
                    continue;
                }
                *slot = Some(value);
                read_back(rest, &key[end..], next, found);
            }
        }
        Part::Field(_) => {}
    }
}

fn lookup<'a>(doc: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(doc.get(first)?, |v, seg| v.as_object()?.get(seg))
        .filter(|v| !v.is_null())
}

/// The key that remembers the version (lsn:ts) last written to `key`, in the same cluster slot:
/// a key with a hash tag keeps its tag; any other key becomes the tag. A key with braces that
/// do not form a hash tag (e.g. `a{}b`) cannot be wrapped and is refused.
pub fn version_key(key: &str) -> Result<String, KeyError> {
    if has_hash_tag(key) {
        Ok(format!("fanout:v:{key}"))
    } else if key.contains('}') {
        Err(KeyError::NoHashTag(key.to_string()))
    } else {
        Ok(format!("fanout:v:{{{key}}}"))
    }
}

fn has_hash_tag(key: &str) -> bool {
    match key.find('{') {
        Some(open) => key[open + 1..].find('}').is_some_and(|close| close > 0),
        None => false,
    }
}

/// Redis Cluster's slot of a key (CRC16/XMODEM of the hash tag or the whole key, mod 16384).
pub fn cluster_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = key.find('{').and_then(|open| {
        let close = key[open + 1..].find('}')?;
        (close > 0).then(|| &bytes[open + 1..open + 1 + close])
    });
    crc16(tagged.unwrap_or(bytes)) % 16384
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{Operation, PartitionKey};
    use serde_json::json;

    #[test]
    fn keys_read_back_to_their_document_when_only_one_reading_exists() {
        let s = |v: &str| Some(v.to_string());
        // (template, key, (pk, id))
        let cases = [
            ("order:{pk}:{id}", "order:c1:o1", Some((s("c1"), s("o1")))),
            ("order:{id}", "order:o:1", Some((None, s("o:1")))),
            ("{{c:{pk}}}:{id}", "{c:c1}:o1", Some((s("c1"), s("o1")))),
            // `a:b:c` splits two ways over `{pk}:{id}`.
            ("{pk}:{id}", "a:b:c", None),
            ("order:{pk}:{id}", "other:c1:o1", None),
            ("order:{customerId}:{id}", "order:c1:o1", None),
        ];
        for (template, key, want) in cases {
            assert_eq!(
                KeyTemplate::parse(template).unwrap().parse_back(key),
                want,
                "{template} {key}"
            );
        }
    }

    #[test]
    fn every_rendered_key_matches_the_templates_glob() {
        let cases = [
            ("order:{id}", "order:*"),
            ("{{customer:{customerId}}}:orders", "{customer:*}:orders"),
            ("c:{pk}:{id}", "c:*:*"),
            ("{pk}{id}", "*"),
            ("a*b[1]:{id}", "a\\*b\\[1\\]:*"),
        ];
        for (template, glob) in cases {
            assert_eq!(
                KeyTemplate::parse(template).unwrap().glob(),
                glob,
                "{template}"
            );
        }
    }

    fn change(doc: Option<Value>) -> Change {
        Change {
            operation: if doc.is_some() {
                Operation::Upsert
            } else {
                Operation::Delete
            },
            delete_kind: None,
            id: "o1".into(),
            partition_key: PartitionKey(vec![Some(json!("c1"))]),
            lsn: Some(1),
            ts: Some(1),
            etag: None,
            document: doc.map(|d| d.as_object().unwrap().clone()),
        }
    }

    #[test]
    fn renders_fields_nested_paths_and_hash_tags() {
        let c = change(Some(
            json!({"id": "o1", "customerId": "c1", "shop": {"region": "eu"}, "n": 7}),
        ));
        let pk = vec![vec!["customerId".to_string()]];
        let t = |s: &str| KeyTemplate::parse(s).unwrap().render(&c, &pk).unwrap();
        assert_eq!(t("order:{id}"), "order:o1");
        assert_eq!(t("customer:{customerId}:orders"), "customer:c1:orders");
        assert_eq!(t("region:{shop/region}:{shop.region}"), "region:eu:eu");
        assert_eq!(t("pk:{pk}:{n}"), "pk:c1:7");
        assert_eq!(
            t("{{customer:{customerId}}}:orders"),
            "{customer:c1}:orders"
        );
    }

    #[test]
    fn hard_deletes_render_from_the_partition_key_or_explain() {
        let c = change(None);
        let pk = vec![vec!["customerId".to_string()]];
        assert_eq!(
            KeyTemplate::parse("customer:{customerId}")
                .unwrap()
                .render(&c, &pk)
                .unwrap(),
            "customer:c1"
        );
        let e = KeyTemplate::parse("sku:{sku}")
            .unwrap()
            .render(&c, &pk)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("hard delete carries only the id and partition key"),
            "{e}"
        );
    }

    #[test]
    fn bad_templates_are_refused() {
        assert!(KeyTemplate::parse("order:{id").is_err());
        assert!(KeyTemplate::parse("order:}").is_err());
        assert!(
            KeyTemplate::parse("constant")
                .unwrap_err()
                .to_string()
                .contains("no placeholder")
        );
        assert!(KeyTemplate::parse("a:{}").is_err());
    }

    #[test]
    fn version_keys_share_the_data_keys_slot() {
        // Known slots from the Redis Cluster spec.
        assert_eq!(cluster_slot("123456789"), 0x31c3);
        assert_eq!(
            cluster_slot("{user1000}.following"),
            cluster_slot("{user1000}.followers")
        );
        for key in ["order:o1", "{customer:c1}:orders", "x{y}z", "open{only"] {
            let v = version_key(key).unwrap();
            assert_eq!(cluster_slot(key), cluster_slot(&v), "{key} -> {v}");
        }
        assert!(version_key("a{}b").is_err());
    }
}
