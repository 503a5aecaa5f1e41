use serde::Deserialize;
use std::collections::BTreeMap;

/// `type = "delta"`: an append-only changelog table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaConfig {
    /// Local path (relative to the app root) or `az://container/path`,
    /// `abfss://container@account.dfs.core.windows.net/path`, `file:///abs/path`.
    pub table: String,
    /// object_store options, e.g. `azure_storage_account_name`, `azure_storage_use_emulator`.
    /// Azure credentials otherwise come from the environment (`AZURE_*`, managed identity).
    #[serde(default)]
    pub storage_options: BTreeMap<String, String>,
}

impl DeltaConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.table.trim().is_empty() {
            problems.push("`table` is empty; set a folder such as `.fanout/tables/orders` or an `abfss://` URL".into());
        } else if let Some((scheme, _)) = self.table.split_once("://")
            && !["file", "az", "azure", "abfs", "abfss", "adl"].contains(&scheme)
        {
            problems.push(format!(
                "`table` uses the unsupported scheme `{scheme}://`; use a local path, `file://`, `az://` or `abfss://`"
            ));
        }
        problems
    }
}
