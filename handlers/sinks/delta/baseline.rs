//! When a changelog holds a complete baseline of a container: every document's version as of
//! a time (a backfill from the beginning completed then). Kept beside the table's data, at
//! `_fanout/baseline.json` under its root, which Delta readers and vacuum ignore (a folder
//! starting with `_`), through the table's own object store (local or Azure). Restore
//! refuses times before it: the changelog cannot know a document it never saw.

use chrono::{DateTime, Utc};
use deltalake::{DeltaTableBuilder, DeltaTableError, ObjectStore, Path};
use object_store::ObjectStoreExt;
use object_store::PutPayload;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use url::Url;

const FILE: &str = "_fanout/baseline.json";

/// Per monitored container (`/cosmosdb/{database}/{container}`), when its baseline completed.
pub type Baselines = BTreeMap<String, DateTime<Utc>>;

fn store(
    url: Url,
    options: HashMap<String, String>,
) -> Result<Arc<dyn ObjectStore>, DeltaTableError> {
    Ok(DeltaTableBuilder::from_url(url)?
        .with_storage_options(options)
        .build()?
        .object_store())
}

/// Every baseline the table records (none when it records none).
pub async fn read(
    url: Url,
    options: HashMap<String, String>,
) -> Result<Baselines, DeltaTableError> {
    let store = store(url, options)?;
    match store.get(&Path::from(FILE)).await {
        Ok(got) => {
            let bytes = got.bytes().await?;
            serde_json::from_slice(&bytes)
                .map_err(|e| DeltaTableError::Generic(format!("{FILE}: {e}")))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(Baselines::new()),
        Err(e) => Err(e.into()),
    }
}

/// Records that the table holds every document of `scope` as of `at`. The earliest complete
/// baseline is kept (a later backfill does not move it).
pub async fn record(
    url: Url,
    options: HashMap<String, String>,
    scope: &str,
    at: DateTime<Utc>,
) -> Result<(), DeltaTableError> {
    let mut all = read(url.clone(), options.clone()).await?;
    if all.get(scope).is_some_and(|earlier| *earlier <= at) {
        return Ok(());
    }
    all.insert(scope.to_string(), at);
    let json = serde_json::to_vec_pretty(&all).expect("baselines serialize");
    store(url, options)?
        .put(&Path::from(FILE), PutPayload::from(json))
        .await?;
    Ok(())
}
