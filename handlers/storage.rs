//! One storage location type for everything fanout keeps - the dead-letter store, the Delta
//! tables, and what the commands read and write: a local folder (relative to the app root) or
//! an Azure Blob / ADLS URL, with its object_store options. Parsed once, when the config is
//! read; a scheme it does not know is a config problem, not a runtime surprise.

use object_store::ObjectStore;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use url::Url;

/// URL schemes of Azure Blob Storage / ADLS Gen2, as delta-rs and object_store spell them.
pub const AZURE_SCHEMES: [&str; 5] = ["az", "azure", "abfs", "abfss", "adl"];

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LocationError {
    #[error(
        "is empty; use a folder (relative to the app root) or an `az://container/prefix` / `abfss://container@account.dfs.core.windows.net/prefix` URL"
    )]
    Empty,
    #[error(
        "unsupported scheme `{0}://`; use a folder, `file://`, `az://container/prefix` or `abfss://container@account.dfs.core.windows.net/prefix`"
    )]
    Scheme(String),
    #[error("`{location}`: {message}")]
    Invalid { location: String, message: String },
}

/// A place to keep objects, parsed.
#[derive(Clone, PartialEq, Eq)]
pub struct Location {
    /// As written in the config (for messages; never holds credentials: those are options).
    written: String,
    url: Url,
    options: BTreeMap<String, String>,
}

impl fmt::Debug for Location {
    /// Without the options: they may hold account keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Location({})", self.url)
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

impl Location {
    /// `written`: a folder (relative to `app_root`), `file:///abs/path`, `az://container/path`
    /// or `abfss://container@account.dfs.core.windows.net/path`.
    pub fn parse(
        written: &str,
        options: BTreeMap<String, String>,
        app_root: &Path,
    ) -> Result<Self, LocationError> {
        let invalid = |message: String| LocationError::Invalid {
            location: written.to_string(),
            message,
        };
        if written.trim().is_empty() {
            return Err(LocationError::Empty);
        }
        let folder = |path: &str| {
            // `file://dl` and `dl` are folders under the app root, `file:///data/dl` and
            // `/data/dl` absolute ones; the folder name is taken as written (no %-decoding).
            let path = std::path::absolute(app_root.join(path))
                .map_err(|e| invalid(format!("cannot resolve it: {e}")))?;
            Url::from_directory_path(&path)
                .map_err(|()| invalid(format!("{} is not an absolute path", path.display())))
        };
        let url = match written.split_once("://") {
            None => folder(written)?,
            Some(("file", path)) => folder(path)?,
            Some((scheme, _)) if AZURE_SCHEMES.contains(&scheme) => {
                Url::parse(written).map_err(|e| invalid(format!("not a valid URL: {e}")))?
            }
            Some((scheme, _)) => return Err(LocationError::Scheme(scheme.to_string())),
        };
        Ok(Self {
            written: written.to_string(),
            url,
            options,
        })
    }

    /// The location as a URL (a local folder as `file:///...`, with a trailing slash).
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The object_store / delta-rs options (`azure_storage_account_name`, ...).
    pub fn options(&self) -> &BTreeMap<String, String> {
        &self.options
    }

    /// The folder, for a local location.
    pub fn local_path(&self) -> Option<PathBuf> {
        (self.url.scheme() == "file")
            .then(|| self.url.to_file_path().ok())
            .flatten()
    }

    /// An object store rooted at the location, and the path of the location within it. A
    /// local folder is created if missing; Azure credentials come from the options and the
    /// environment (`AZURE_*`, managed identity).
    pub fn object_store(&self) -> Result<(Arc<dyn ObjectStore>, StorePath), LocationError> {
        let invalid = |message: String| LocationError::Invalid {
            location: self.written.clone(),
            message,
        };
        if let Some(path) = self.local_path() {
            std::fs::create_dir_all(&path)
                .map_err(|e| invalid(format!("cannot create {}: {e}", path.display())))?;
            let store =
                LocalFileSystem::new_with_prefix(&path).map_err(|e| invalid(e.to_string()))?;
            return Ok((Arc::new(store), StorePath::default()));
        }
        let mut builder = MicrosoftAzureBuilder::from_env().with_url(self.url.as_str());
        for (key, value) in &self.options {
            let key = key.parse().map_err(|e: object_store::Error| {
                invalid(format!("storage option `{key}`: {e}"))
            })?;
            builder = builder.with_config(key, value);
        }
        let store = builder.build().map_err(|e| invalid(e.to_string()))?;
        // az://container/prefix and abfss://container@host/prefix: the prefix is the path.
        let root = StorePath::from(self.url.path().trim_start_matches('/'));
        Ok((Arc::new(store), root))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_once_and_say_how_to_fix_them() {
        let root = Path::new("/app");
        // (written, URL or error)
        let cases: [(&str, Result<&str, LocationError>); 7] = [
            (
                ".fanout/dead-letter",
                Ok("file:///app/.fanout/dead-letter/"),
            ),
            ("file:///data/t", Ok("file:///data/t/")),
            ("file://dl", Ok("file:///app/dl/")),
            ("az://c/dl", Ok("az://c/dl")),
            (
                "abfss://c@acct.dfs.core.windows.net/t",
                Ok("abfss://c@acct.dfs.core.windows.net/t"),
            ),
            ("s3://bucket/t", Err(LocationError::Scheme("s3".into()))),
            (" ", Err(LocationError::Empty)),
        ];
        for (written, want) in cases {
            let got = Location::parse(written, BTreeMap::new(), root);
            match want {
                Ok(url) => assert_eq!(got.unwrap().url().as_str(), url, "{written}"),
                Err(e) => assert_eq!(got.unwrap_err(), e, "{written}"),
            }
        }
        let local = Location::parse("t", BTreeMap::new(), root).unwrap();
        assert_eq!(local.local_path(), Some(PathBuf::from("/app/t")));
        let keyed = Location::parse(
            "az://c/t",
            BTreeMap::from([("azure_storage_account_key".into(), "SECRET".into())]),
            root,
        )
        .unwrap();
        assert!(!format!("{keyed:?} {keyed}").contains("SECRET"));
    }
}
