//! Sample change feed items for the quickstart, tests and load runs: orders of a few customers,
//! in both change feed shapes, with updates and deletes.

use serde_json::{Value, json};

/// The three request bodies captured from the real host (`captured/` beside this file; their
/// sources are in tests/fixtures/SOURCES.md). Their binding is `documents`.
pub const CAPTURED_BODIES: [(&str, &str); 3] = [
    (
        "cosmos-trigger-request-1.json",
        include_str!("captured/cosmos-trigger-request-1.json"),
    ),
    (
        "cosmos-trigger-request-1-multi.json",
        include_str!("captured/cosmos-trigger-request-1-multi.json"),
    ),
    (
        "cosmos-trigger-request-2.json",
        include_str!("captured/cosmos-trigger-request-2.json"),
    ),
];

/// A latest-version order document as the change feed delivers it.
pub fn order(id: &str, customer: &str, lsn: i64, ts: i64, total: f64, deleted: bool) -> Value {
    let mut doc = json!({
        "id": id,
        "customerId": customer,
        "status": if deleted { "cancelled" } else { "placed" },
        "total": total,
        "lines": [{"sku": format!("sku-{}", lsn % 97), "qty": 1 + lsn % 3}],
        "note": "x".repeat(700),
        "_rid": "lV8dAK7u9cCUAAAAAAAAAA==",
        "_self": format!("dbs/lV8dAA==/colls/lV8dAK7u9cA=/docs/{id}/"),
        "_etag": format!("\"{lsn:08x}-0000-0800-0000-67f5fb920000\""),
        "_attachments": "attachments/",
        "_ts": ts,
        "_lsn": lsn,
    });
    if deleted {
        doc["deleted"] = json!(true);
        doc["ttl"] = json!(3600);
    }
    doc
}

/// Generated batches of latest-version orders: `batches` x `size` changes over `customers`
/// customers, lsns from `lsn_base`; every tenth change soft-deletes the order it updates.
pub fn order_batches(
    lsn_base: i64,
    batches: usize,
    size: usize,
    customers: usize,
) -> Vec<Vec<Value>> {
    let ts0 = 1_744_170_000;
    (0..batches)
        .map(|b| {
            (0..size)
                .map(|i| {
                    let n = (b * size + i) as i64;
                    let lsn = lsn_base + n;
                    let order_no = n % (size as i64 * 3).max(1);
                    let customer = format!("customer-{}", order_no % customers.max(1) as i64);
                    order(
                        &format!("order-{order_no}"),
                        &customer,
                        lsn,
                        ts0 + n,
                        10.0 + (n % 50) as f64,
                        n % 10 == 9,
                    )
                })
                .collect()
        })
        .collect()
}

/// An all-versions-and-deletes batch: create, replace, then hard delete of one order, and a
/// TTL expiry of another.
pub fn all_versions_batch(lsn_base: i64, ts: i64) -> Vec<Value> {
    let current = |lsn: i64, total: f64| {
        let mut d = order("order-avad", "customer-avad", lsn, ts, total, false);
        d.as_object_mut().expect("object").remove("_lsn");
        d
    };
    vec![
        json!({"current": current(lsn_base, 5.0), "metadata": {"operationType": "create", "lsn": lsn_base, "crts": ts}}),
        json!({"current": current(lsn_base + 1, 6.0), "metadata": {"operationType": "replace", "lsn": lsn_base + 1, "crts": ts + 1, "previousImageLSN": lsn_base}}),
        json!({"metadata": {"operationType": "delete", "lsn": lsn_base + 2, "crts": ts + 2, "previousImageLSN": lsn_base + 1, "id": "order-avad", "partitionKey": {"customerId": "customer-avad"}}}),
        json!({"metadata": {"operationType": "delete", "lsn": lsn_base + 3, "crts": ts + 3, "id": "order-expired", "partitionKey": {"customerId": "customer-avad"}, "timeToLiveExpired": true}}),
    ]
}
