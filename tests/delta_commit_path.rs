//! The Delta sink's steady-state commit path against a real Azure Blob endpoint (Azurite,
//! counting the requests it serves): a commit is its data file PUT and one PUT of the commit
//! file — no listing of `_delta_log/`, nothing read back — and the table reads back whole.

use fanout::change::Change;
use fanout::sinks::delta::{ChangelogTable, DeltaConfig, open, read_changelog};
use fanout_test_kit as common;

#[tokio::test]
async fn a_steady_commit_is_two_puts_and_lists_nothing() {
    let azurite = common::Azurite::start_counting();
    azurite.create_container("lake").await;
    // object_store reads the emulator's address from the environment only; this test binary
    // has no other test reading it.
    // SAFETY: set before any table is opened, while no other thread reads the environment.
    unsafe { std::env::set_var("AZURITE_BLOB_STORAGE_URL", azurite.blob_url()) };
    let mut config = DeltaConfig::at("t");
    config.storage_options = [
        ("azure_storage_use_emulator", "true"),
        ("azure_storage_account_name", common::AZURITE_ACCOUNT),
        ("azure_storage_account_key", common::AZURITE_KEY),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    // Background work (compaction, checkpoints) reads the log by design: off here.
    config.compaction.enabled = false;
    config.checkpoint_interval = 1_000;
    let url = url::Url::parse("az://lake/orders").unwrap();
    let table = ChangelogTable::new(url.clone(), &config);
    let ctx = fanout::testing::batch_context("orders");
    let all = common::order_changes(1_000, 21, 20, 200);
    let first: Vec<&Change> = all[0].iter().collect();
    table.append(&ctx, "changelog", &first).await.unwrap();

    let (requests, lists) = (azurite.requests(), azurite.list_requests());
    let mut versions = vec![];
    for batch in &all[1..] {
        let refs: Vec<&Change> = batch.iter().collect();
        let outcome = table.append(&ctx, "changelog", &refs).await.unwrap();
        assert_eq!(outcome.rows_written, refs.len());
        versions.push(outcome.table_version.unwrap());
    }
    let (requests, lists) = (
        azurite.requests() - requests,
        azurite.list_requests() - lists,
    );
    assert!(
        versions.windows(2).all(|w| w[1] == w[0] + 1),
        "one commit per append: {versions:?}"
    );
    assert_eq!(lists, 0, "no listing in the steady state");
    // One partition per batch (the sample's _ts span a few hours): one data file PUT and the
    // commit file PUT.
    assert_eq!(requests, 2 * versions.len() as u64, "{requests} requests");

    // Readers see every row, and a restarted writer recognises the batches.
    let opened = open(url.clone(), table.storage_options().clone())
        .await
        .unwrap();
    assert_eq!(opened.version(), versions.last().copied());
    let snapshot = read_changelog(url.clone(), table.storage_options().clone())
        .await
        .unwrap();
    assert_eq!(snapshot.rows.len(), 21 * 20);
    let again = ChangelogTable::new(url, &config);
    let refs: Vec<&Change> = all[7].iter().collect();
    let outcome = again.append(&ctx, "changelog", &refs).await.unwrap();
    assert_eq!(
        (outcome.rows_written, outcome.rows_already_present),
        (0, 20)
    );
}
