//! One change feed item (any JSON value, both feed shapes): a change or an "unreadable" with
//! the reason, never a panic; with hierarchical keys and a soft-delete marker configured.
#![no_main]

use fanout::change::{Normalizer, PartitionKeyPaths, SoftDelete};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(item) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let normalizer = Normalizer::new(
        PartitionKeyPaths::parse(&["/tenant", "/customer/id"]).expect("valid paths"),
        Some(SoftDelete {
            path: vec!["deleted".into()],
            equals: serde_json::Value::Bool(true),
        }),
    );
    let _ = normalizer.normalize(0, item);
});
