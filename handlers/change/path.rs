//! `/`-paths into a document (`/customerId`, `/address/city`): parsed once, while the
//! routing file is read, so a bad path stops start-up with the setting named and no sink ever
//! splits a string again.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::fmt;

/// A path from the document root, one segment per object member.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DocPath {
    text: String,
    segments: Vec<String>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DocPathError {
    #[error("`{0}` is not a `/`-path: paths start at the document root, e.g. `/{0}`")]
    MissingSlash(String),
    #[error("`{0}` has an empty segment: write paths such as `/address/city`")]
    EmptySegment(String),
}

impl DocPath {
    pub fn parse(text: &str) -> Result<Self, DocPathError> {
        let rest = text
            .strip_prefix('/')
            .ok_or_else(|| DocPathError::MissingSlash(text.to_string()))?;
        let segments: Vec<String> = rest.split('/').map(str::to_string).collect();
        if segments.iter().any(String::is_empty) {
            return Err(DocPathError::EmptySegment(text.to_string()));
        }
        Ok(Self {
            text: text.to_string(),
            segments,
        })
    }

    /// Like [`DocPath::parse`], and a name without the leading `/` means the top-level path
    /// (`id` is `/id`): the Redis sink's `fields` have been written so since its first release.
    pub fn parse_lenient(text: &str) -> Result<Self, DocPathError> {
        if text.starts_with('/') {
            Self::parse(text)
        } else {
            Self::parse(&format!("/{text}"))
        }
    }

    /// `/address/city` -> `["address", "city"]`.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value at the path (object members only), if the document has one.
    pub fn lookup<'a>(&self, doc: &'a Map<String, Value>) -> Option<&'a Value> {
        super::projection::lookup(doc, &self.segments)
    }
}

impl fmt::Display for DocPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for DocPath {
    type Err = DocPathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for DocPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for DocPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_once_and_say_how_to_fix_them() {
        // (text, segments or error)
        let cases: [(&str, Result<&[&str], DocPathError>); 5] = [
            ("/id", Ok(&["id"])),
            ("/address/city", Ok(&["address", "city"])),
            ("id", Err(DocPathError::MissingSlash("id".into()))),
            ("/a//b", Err(DocPathError::EmptySegment("/a//b".into()))),
            ("/", Err(DocPathError::EmptySegment("/".into()))),
        ];
        for (text, want) in cases {
            let got = DocPath::parse(text);
            match want {
                Ok(segments) => assert_eq!(got.unwrap().segments(), segments, "{text}"),
                Err(e) => assert_eq!(got.unwrap_err(), e, "{text}"),
            }
        }
        assert_eq!(DocPath::parse_lenient("id").unwrap().as_str(), "/id");
        assert_eq!(
            DocPath::parse("id").unwrap_err().to_string(),
            "`id` is not a `/`-path: paths start at the document root, e.g. `/id`"
        );
    }

    #[test]
    fn a_bad_path_in_a_config_is_a_deserialization_error() {
        #[derive(Deserialize)]
        struct C {
            #[allow(dead_code)]
            p: DocPath,
        }
        let e = toml::from_str::<C>("p = \"total\"")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("`total` is not a `/`-path"), "{e}");
        let ok: C = toml::from_str("p = \"/lines/sku\"").unwrap();
        assert_eq!(ok.p.segments(), ["lines", "sku"]);
    }
}
