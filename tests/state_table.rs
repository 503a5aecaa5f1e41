//! The latest-state table (`mode = "state"`) through the real binary: two handler processes
//! take batches from the host-emulating harness (updates, soft deletes, an all-versions hard
//! delete and TTL expiry, an out-of-order replay), the state table refreshes in the
//! background and on demand (`fanout materialize`), and an independent reader (Python
//! `deltalake`) sees exactly the live documents at their newest version.

use common::TestApp;
use fanout::hostsim::cosmos_trigger_body;
use fanout_test_kit as common;
use serde_json::{Value, json};
use std::collections::BTreeMap;

const T0: i64 = 1_767_225_600;

fn app() -> TestApp {
    let app = TestApp::new();
    app.function("orders", "documents", Some(2)).config(
        r#"
[functions.orders]
partition_key = "/customerId"
soft_delete = { field = "/deleted" }

[functions.orders.sinks.changelog]
type = "delta"
table = "tables/orders"

[functions.orders.sinks.state]
type = "delta"
mode = "state"
table = "tables/orders_state"
changelog = "tables/orders"
buckets = 8
refresh_seconds = 3600
columns = [{ name = "status", path = "/status", type = "string" }]
"#,
    );
    app
}

fn doc(id: &str, pk: &str, status: &str, lsn: i64) -> Value {
    json!({"id": id, "customerId": pk, "status": status, "_lsn": lsn, "_ts": T0 + lsn, "_etag": format!("\"e{lsn}\"")})
}

/// The state table as Python `deltalake` reads it: id -> (partition key, lsn, status).
fn read_state(app: &TestApp) -> BTreeMap<String, (String, i64, String)> {
    let path = app.table("tables/orders_state");
    let out = common::python(
        r#"
import json, os
from deltalake import DeltaTable
t = DeltaTable(os.environ["TABLE"])
rows = t.to_pyarrow_table().to_pylist()
print(json.dumps([{"id": r["id"], "pk": r["partition_key"], "lsn": r["lsn"], "bucket": r["bucket"], "status": r["status"], "doc": json.loads(r["document"])} for r in rows]))
"#,
        &[("TABLE", path.to_str().unwrap())],
    );
    let rows: Vec<Value> = serde_json::from_str(out.trim()).unwrap();
    let mut state = BTreeMap::new();
    for r in rows {
        let id = r["id"].as_str().unwrap().to_string();
        let previous = state.insert(
            id.clone(),
            (
                r["pk"].as_str().unwrap().to_string(),
                r["lsn"].as_i64().unwrap(),
                r["doc"]["status"].as_str().unwrap().to_string(),
            ),
        );
        assert!(previous.is_none(), "{id} is in the state table twice");
        assert_eq!(r["doc"]["id"], json!(id));
        // The typed column, projected from the document as in the changelog.
        assert_eq!(r["status"], r["doc"]["status"], "{id}");
    }
    state
}

fn materialize(app: &TestApp) -> String {
    let out = app.run(&["materialize", "--function", "orders"], &[]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    common::stdout(&out)
}

fn entry(pk: &str, lsn: i64, status: &str) -> (String, i64, String) {
    (format!("[\"{pk}\"]"), lsn, status.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_table_holds_exactly_the_live_documents_at_their_newest_version() {
    let app = app();
    // Two handler processes on the same tables, as two instances of the Function App.
    let (first, second) = (app.start().await, app.start().await);
    let post = async |host: &fanout::hostsim::EmulatedHost, docs: Vec<Value>| {
        let call = host
            .invoke(
                "orders",
                &cosmos_trigger_body("documents", "orders", &docs, None),
            )
            .await
            .unwrap();
        assert!(call.is_success(), "{:?}", call.logs());
    };
    // Many documents over many keys, from both processes at once.
    let many: Vec<Value> = (0..400)
        .map(|i| doc(&format!("m{i}"), &format!("k{}", i % 40), "placed", 100 + i))
        .collect();
    let (a, b) = many.split_at(200);
    let (a, b) = (a.to_vec(), b.to_vec());
    tokio::join!(
        async {
            for chunk in a.chunks(50) {
                post(&first, chunk.to_vec()).await;
            }
        },
        async {
            for chunk in b.chunks(50) {
                post(&second, chunk.to_vec()).await;
            }
        }
    );
    post(
        &first,
        vec![
            doc("o1", "c1", "placed", 1),
            doc("o2", "c1", "placed", 2),
            doc("o3", "c2", "placed", 3),
            doc("o4", "c2", "placed", 4),
        ],
    )
    .await;
    let first_refresh = materialize(&app);
    assert!(
        first_refresh.contains("materialize `orders`.`state`"),
        "{first_refresh}"
    );
    let state = read_state(&app);
    assert_eq!(state.len(), 404);
    assert_eq!(state["o1"], entry("c1", 1, "placed"));

    // An update, a soft delete, then (all versions and deletes) a hard delete and a TTL
    // expiry, from the other process.
    post(
        &second,
        vec![doc("o1", "c1", "paid", 5), {
            let mut d = doc("o2", "c1", "placed", 6);
            d["deleted"] = json!(true);
            d
        }],
    )
    .await;
    post(
        &second,
        vec![
            json!({"metadata": {"operationType": "delete", "lsn": 7, "crts": T0 + 7, "id": "o3", "partitionKey": {"customerId": "c2"}}}),
            json!({"metadata": {"operationType": "delete", "lsn": 8, "crts": T0 + 8, "id": "o4", "partitionKey": {"customerId": "c2"}, "timeToLiveExpired": true}}),
        ],
    )
    .await;
    // An out-of-order replay of an older version of o1: written to the changelog (a change
    // it never had), but the state keeps the newer one.
    post(
        &first,
        vec![doc("o1", "c1", "stale", 3), doc("o5", "c3", "new", 9)],
    )
    .await;
    let report = materialize(&app);
    // Only the touched keys' buckets were rewritten (8 buckets in all).
    assert!(!report.contains("(rebuilt)"), "{report}");
    let state = read_state(&app);
    assert_eq!(state.len(), 402, "o2, o3, o4 gone; o5 new");
    assert_eq!(state["o1"], entry("c1", 5, "paid"));
    assert_eq!(state["o5"], entry("c3", 9, "new"));
    for gone in ["o2", "o3", "o4"] {
        assert!(!state.contains_key(gone), "{gone} is deleted");
    }
    for i in 0..400 {
        assert_eq!(
            state[&format!("m{i}")],
            entry(&format!("k{}", i % 40), 100 + i, "placed")
        );
    }
    // A refresh with nothing new changes nothing.
    let again = materialize(&app);
    assert!(again.contains(": 0 changes"), "{again}");
    assert_eq!(read_state(&app), state);
}

#[test]
fn a_state_sink_without_its_changelog_is_refused_at_start_up() {
    let app = TestApp::new();
    app.function("orders", "documents", Some(2)).config(
        r#"
[functions.orders]
partition_key = "/customerId"

[functions.orders.sinks.state]
type = "delta"
mode = "state"
table = "tables/orders_state"
"#,
    );
    let out = app.run(&["check-config"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        common::stderr(&out).contains("needs `changelog`")
            || common::stdout(&out).contains("needs `changelog`"),
        "{}",
        common::stderr(&out)
    );
}
