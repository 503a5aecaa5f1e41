//! Single documents: read one with the lsn the service keeps for it.

use super::account::CosmosTarget;
use super::client::call;
use super::error::SourceError;
use super::throttle::Throttle;
use crate::change::PartitionKey;
use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::models::PartitionKeyValue;
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
