//! The Delta changelog and the dead-letter store on Azure Blob, against a real Azurite
//! (installed by tests/setup.sh), through the real binary. Read back by `fanout changelog`
//! and by the independent Python `deltalake` reader.

use fanout_test_kit as common;

use common::{Azurite, TestApp};
use fanout::hostsim::{cosmos_trigger_body, samples};

const TOML: &str = r#"
[dead_letter]
url = "az://deadletter/fanout"

[retry]
initial_backoff_ms = 20
max_backoff_ms = 50
budget_ms = 500

[functions.orders]
partition_key = "/customerId"
soft_delete = { field = "/deleted" }

[functions.orders.sinks.changelog]
type = "delta"
table = "az://lake/orders_changelog"

[functions.orders.sinks.mirror]
type = "delta"
table = "${MIRROR_TABLE}"
"#;

#[tokio::test]
async fn changelog_and_dead_letters_on_azure_blob() {
    let azurite = Azurite::start();
    for container in ["lake", "deadletter"] {
        azurite.create_container(container).await;
    }
    let app = TestApp::new();
    app.function("orders", "documents", Some(1)).config(TOML);
    let env_owned = azurite.env();
    let mut env: Vec<(&str, &str)> = env_owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // The mirror points at a container that does not exist: it fails, and is dead-lettered to Azure.
    env.push(("MIRROR_TABLE", "az://missing-container/mirror"));
    let host = app.start_with(&env).await;

    let batches = samples::order_batches(100, 2, 40, 6);
    for docs in &batches {
        let body = cosmos_trigger_body("documents", "orders", docs, None);
        let calls = host
            .invoke_with_retries("orders", &body, 1, 5)
            .await
            .unwrap();
        assert_eq!(
            calls.iter().map(|c| c.status).collect::<Vec<_>>(),
            vec![500, 200],
            "{:?}",
            calls.last().unwrap().logs()
        );
        let logs = calls.last().unwrap().logs();
        assert!(logs.iter().any(|l| l.starts_with("dead-lettered 40 changes from `mirror` to az://deadletter/fanout/pending/orders/mirror/")), "{logs:?}");
    }
    // Re-delivery: no duplicates in the Azure table either.
    host.invoke(
        "orders",
        &cosmos_trigger_body("documents", "orders", &batches[0], None),
    )
    .await
    .unwrap();

    let out = app.run(&["changelog", "az://lake/orders_changelog"], &env);
    let text = common::stdout(&out);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(text.contains("80 rows: delete 8, upsert 72"), "{text}");
    assert!(text.contains("duplicate (id, lsn) rows: 0"), "{text}");

    let py = common::python(
        r#"
import deltalake, os
dt = deltalake.DeltaTable("az://lake/orders_changelog", storage_options={"azure_storage_use_emulator": "true"})
rows = dt.to_pyarrow_table().to_pylist()
print(len(rows), len({(r["id"], r["lsn"]) for r in rows}), dt.metadata().partition_columns[0])
"#,
        &env,
    );
    assert_eq!(py.trim(), "80 80 change_date");

    // The dead-letter records are in Azure; after the sink is fixed, replay delivers them.
    let dry = app.run(&["replay", "--dry-run"], &env);
    assert!(
        common::stdout(&dry).contains("2 records pending in az://deadletter/fanout"),
        "{}",
        common::stdout(&dry)
    );
    azurite.create_container("missing-container").await;
    // The config's 500 ms keeps the failing phase short; a table's first commit on a loaded
    // CI machine can take longer, and a replay is not bound by the host's timeout.
    let out = app.run(&["replay", "--budget-ms", "30000"], &env);
    assert!(
        out.status.success(),
        "{}{}",
        common::stdout(&out),
        common::stderr(&out)
    );
    assert!(
        common::stdout(&out).contains("replayed 2 records (80 changes)"),
        "{}",
        common::stdout(&out)
    );
    let mirror = app.run(&["changelog", "az://missing-container/mirror"], &env);
    assert!(
        common::stdout(&mirror).contains("80 rows"),
        "{}",
        common::stdout(&mirror)
    );
}
