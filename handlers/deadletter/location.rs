//! One place records can be kept (a [`crate::storage::Location`]: a local folder or an Azure
//! Blob / ADLS container and prefix), with the area / key operations the store needs. The tiered [`super::DeadLetterStore`] holds one or two of these.

use super::DeadLetterError;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::sync::Arc;

#[derive(Clone)]
pub(super) struct Location {
    store: Arc<dyn ObjectStore>,
    root: StorePath,
    pub(super) url: String,
}

/// An object under an area (`pending/`, `in-flight/`, ...), with its age.
pub(super) struct Listed {
    pub key: String,
    pub last_modified: DateTime<Utc>,
}

impl Location {
    /// Opens the store at `location` (a local folder is created if missing).
    pub(super) fn open(location: &crate::storage::Location) -> Result<Self, DeadLetterError> {
        let (store, root) = location
            .object_store()
            .map_err(|e| DeadLetterError::Config {
                location: location.to_string(),
                message: match e {
                    crate::storage::LocationError::Invalid { message, .. } => message,
                    other => other.to_string(),
                },
            })?;
        Ok(Self {
            store,
            root,
            url: location.to_string(),
        })
    }

    pub(super) fn path(&self, area: &str, key: &str) -> StorePath {
        let mut p = self.root.clone();
        for part in area
            .split('/')
            .chain(key.split('/'))
            .filter(|p| !p.is_empty())
        {
            p = p.clone().join(part);
        }
        p
    }

    pub(super) async fn put(
        &self,
        area: &str,
        key: &str,
        body: Vec<u8>,
    ) -> Result<(), DeadLetterError> {
        self.store
            .put(&self.path(area, key), PutPayload::from(body))
            .await?;
        Ok(())
    }

    pub(super) async fn get(&self, area: &str, key: &str) -> Result<bytes::Bytes, DeadLetterError> {
        Ok(self.store.get(&self.path(area, key)).await?.bytes().await?)
    }

    pub(super) async fn list(&self, area: &str) -> Result<Vec<Listed>, DeadLetterError> {
        let prefix = self.path(area, "");
        let prefix_str = format!("{}/", prefix.as_ref().trim_end_matches('/'));
        let listed = self
            .store
            .list(Some(&prefix))
            .map_ok(|meta| Listed {
                key: meta
                    .location
                    .as_ref()
                    .strip_prefix(&prefix_str)
                    .unwrap_or(meta.location.as_ref())
                    .to_string(),
                last_modified: meta.last_modified,
            })
            .try_collect()
            .await?;
        Ok(listed)
    }

    /// Whether anything is stored under `{area}/{prefix}/` (reads one listing page at most).
    pub(super) async fn any_under(
        &self,
        area: &str,
        prefix: &str,
    ) -> Result<bool, DeadLetterError> {
        use futures::StreamExt;
        let prefix = self.path(area, prefix);
        match self.store.list(Some(&prefix)).next().await {
            None => Ok(false),
            Some(Ok(_)) => Ok(true),
            Some(Err(object_store::Error::NotFound { .. })) => Ok(false),
            Some(Err(e)) => Err(e.into()),
        }
    }

    /// Moves an object from one area to another (copy, then delete the original).
    pub(super) async fn rename(
        &self,
        key: &str,
        from: &str,
        to: &str,
    ) -> Result<(), DeadLetterError> {
        let source = self.path(from, key);
        self.store.copy(&source, &self.path(to, key)).await?;
        self.delete(from, key).await
    }

    /// Deletes an object; one already gone is fine (two processes settling the same record).
    pub(super) async fn delete(&self, area: &str, key: &str) -> Result<(), DeadLetterError> {
        match self.store.delete(&self.path(area, key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Streams a request body into `{area}/{key}` without holding it in memory; returns its size.
    pub(super) async fn put_stream<S>(
        &self,
        area: &str,
        key: &str,
        head: Vec<bytes::Bytes>,
        mut rest: S,
    ) -> Result<u64, DeadLetterError>
    where
        S: futures::Stream<Item = std::io::Result<bytes::Bytes>> + Unpin,
    {
        use futures::StreamExt;
        let upload = self.store.put_multipart(&self.path(area, key)).await?;
        let mut writer = object_store::WriteMultipart::new(upload);
        let mut size = 0u64;
        for chunk in head {
            size += chunk.len() as u64;
            writer.put(chunk);
        }
        while let Some(chunk) = rest.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(DeadLetterError::BodyBrokeOff {
                        location: self.url.clone(),
                        source: e,
                    });
                }
            };
            size += chunk.len() as u64;
            writer.wait_for_capacity(4).await?;
            writer.put(chunk);
        }
        writer.finish().await?;
        Ok(size)
    }
}
