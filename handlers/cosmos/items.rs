//! Single documents: read one with the lsn the service keeps for it.

use super::account::CosmosTarget;
use super::client::call;
use super::error::SourceError;
use super::throttle::Throttle;
use crate::change::{PartitionKey, PartitionKeyPaths};
use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::models::PartitionKeyValue;
use futures::StreamExt;
use serde_json::Value;

/// Our partition key as the SDK's (`None` components are "undefined": a missing field).
/// `None` when a component cannot be a key (a structure, a non-finite number).
pub fn sdk_partition_key(pk: &PartitionKey) -> Option<azure_data_cosmos::PartitionKey> {
    let values: Option<Vec<PartitionKeyValue>> =
        pk.0.iter()
            .map(|c| match c {
                None => Some(PartitionKeyValue::UNDEFINED),
                Some(Value::Null) => Some(PartitionKeyValue::NULL),
                Some(Value::String(s)) => Some(PartitionKeyValue::from(s.clone())),
                Some(Value::Bool(b)) => Some(PartitionKeyValue::from(*b)),
                Some(Value::Number(n)) => match n.as_i64() {
                    Some(i) => Some(PartitionKeyValue::from(i)),
                    None => PartitionKeyValue::try_from(n.as_f64()?).ok(),
                },
                Some(_) => None,
            })
            .collect();
    azure_data_cosmos::PartitionKey::try_from(values?).ok()
}

/// The document as the container holds it now, with `_lsn` set from the lsn the service
/// returns for it (`x-ms-item-lsn`); `None` when it no longer exists.
pub async fn read_with_lsn(
    container: &ContainerClient,
    target: &CosmosTarget,
    throttle: &Throttle,
    pk: &PartitionKey,
    id: &str,
) -> Result<Option<Value>, SourceError> {
    let Some(key) = sdk_partition_key(pk) else {
        return Ok(None);
    };
    let read = call(throttle, "reading a document", target, || {
        container.read_item(key.clone(), id, None)
    })
    .await;
    let response = match read {
        Ok(r) => r,
        Err(SourceError::Service { source, .. }) if source.status().is_not_found() => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let lsn = response.headers().item_lsn();
    let mut doc: Value = response
        .into_model()
        .map_err(|source| SourceError::Service {
            what: format!("reading document `{id}`"),
            target: target.describe(),
            source,
        })?;
    if let (Some(lsn), Some(map)) = (lsn, doc.as_object_mut()) {
        map.insert("_lsn".into(), Value::from(lsn));
    }
    Ok(Some(doc))
}

/// Feed items with `_lsn` where they came without one (the SDK's in-memory emulator leaves it
/// out): each such item read again by id, 16 at a time, order kept; a document deleted before
/// its read is left out. Returns the items and how many were read back.
pub async fn with_lsns(
    container: &ContainerClient,
    target: &CosmosTarget,
    throttle: &Throttle,
    partition_key: &PartitionKeyPaths,
    items: Vec<Value>,
) -> Result<(Vec<Value>, u64), SourceError> {
    if items.iter().all(|i| i.get("_lsn").is_some()) {
        return Ok((items, 0));
    }
    let read: Vec<Result<(Option<Value>, bool), SourceError>> = futures::stream::iter(items)
        .map(|item| async move {
            let (Some(map), true) = (item.as_object(), item.get("_lsn").is_none()) else {
                return Ok((Some(item), false));
            };
            let Some(id) = map.get("id").and_then(Value::as_str) else {
                // Not a document the pipeline can read: it dead-letters it with the reason.
                return Ok((Some(item), false));
            };
            let pk = partition_key.extract(map);
            if sdk_partition_key(&pk).is_none() {
                // Not a key the SDK can address: delivered as read (no version).
                return Ok((Some(item), false));
            }
            let fresh = read_with_lsn(container, target, throttle, &pk, id).await?;
            Ok((fresh, true))
        })
        .buffered(16)
        .collect()
        .await;
    let mut out = Vec::with_capacity(read.len());
    let mut read_back = 0;
    for r in read {
        let (item, was_read) = r?;
        read_back += u64::from(was_read);
        out.extend(item);
    }
    Ok((out, read_back))
}

/// Writes the document (its `id` and partition key as given), retried through throttling.
pub async fn upsert(
    container: &ContainerClient,
    target: &CosmosTarget,
    throttle: &Throttle,
    pk: &PartitionKey,
    id: &str,
    document: &Value,
) -> Result<(), SourceError> {
    let Some(key) = sdk_partition_key(pk) else {
        return Err(SourceError::Unaddressable {
            id: id.to_string(),
            partition_key: pk.to_wire(),
        });
    };
    call(throttle, "writing a document", target, || {
        container.upsert_item(key.clone(), id, document, None)
    })
    .await?;
    Ok(())
}

/// Deletes the document; `false` when it was not there.
pub async fn delete(
    container: &ContainerClient,
    target: &CosmosTarget,
    throttle: &Throttle,
    pk: &PartitionKey,
    id: &str,
) -> Result<bool, SourceError> {
    let Some(key) = sdk_partition_key(pk) else {
        return Ok(false);
    };
    match call(throttle, "deleting a document", target, || {
        container.delete_item(key.clone(), id, None)
    })
    .await
    {
        Ok(_) => Ok(true),
        Err(SourceError::Service { source, .. }) if source.status().is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

/// A cross-partition query's items (at most `limit`), through the one retry loop
/// ([`call`]). The charge is counted as 1 RU: the SDK's query stream does not surface it.
async fn query(
    container: &ContainerClient,
    target: &CosmosTarget,
    throttle: &Throttle,
    what: &str,
    sql: &str,
    limit: usize,
) -> Result<Vec<Value>, SourceError> {
    struct Items(Vec<Value>);
    impl super::client::Charged for Items {
        fn request_units(&self) -> f64 {
            1.0
        }
    }
    let found = call(throttle, what, target, || async {
        let mut pages = Box::pin(container.query_items::<Value>(
            sql,
            azure_data_cosmos::FeedScope::full_container(),
            None,
        ))
        .await?;
        let mut out = Vec::new();
        while out.len() < limit {
            match pages.next().await {
                Some(item) => out.push(item?),
                None => break,
            }
        }
        Ok(Items(out))
    })
    .await?;
    Ok(found.0)
}

/// Whether the container holds no document (the first item of a query).
pub async fn is_empty(
    container: &ContainerClient,
    target: &CosmosTarget,
    throttle: &Throttle,
) -> Result<bool, SourceError> {
    let first = query(
        container,
        target,
        throttle,
        "looking for documents",
        "SELECT c.id FROM c",
        1,
    )
    .await?;
    Ok(first.is_empty())
}

/// The documents with this id, in any partition key (a cross-partition query).
pub async fn find_by_id(
    container: &ContainerClient,
    target: &CosmosTarget,
    throttle: &Throttle,
    id: &str,
) -> Result<Vec<Value>, SourceError> {
    // A JSON string is a Cosmos SQL string literal (the same escapes).
    let sql = format!(
        "SELECT * FROM c WHERE c.id = {}",
        Value::String(id.to_string())
    );
    query(
        container,
        target,
        throttle,
        &format!("looking for id `{id}`"),
        &sql,
        usize::MAX,
    )
    .await
}
