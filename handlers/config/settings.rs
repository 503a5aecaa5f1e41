//! App settings as the handler sees them: environment variables (what the Functions host,
//! and `func start` from local.settings.json, set), and for a command run by hand in the app
//! folder, the `Values` of its local.settings.json when present (so `fanout backfill` finds
//! the same connection the trigger uses). The environment wins.

use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone, Default)]
pub struct AppSettings {
    local: HashMap<String, String>,
}

impl AppSettings {
    /// Reads `{app_root}/local.settings.json` when there is one; a file that does not parse
    /// is ignored (the host would refuse it; the environment still counts).
    pub fn load(app_root: &Path) -> Self {
        #[derive(serde::Deserialize)]
        struct LocalSettings {
            #[serde(rename = "Values", default)]
            values: HashMap<String, serde_json::Value>,
        }
        let local = std::fs::read_to_string(app_root.join("local.settings.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<LocalSettings>(&text).ok())
            .map(|s| {
                s.values
                    .into_iter()
                    .filter_map(|(k, v)| match v {
                        serde_json::Value::String(s) => Some((k, s)),
                        serde_json::Value::Null => None,
                        other => Some((k, other.to_string())),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self { local }
    }

    pub fn get(&self, name: &str) -> Option<String> {
        std::env::var(name)
            .ok()
            .or_else(|| self.local.get(name).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_settings_fill_in_what_the_environment_lacks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("local.settings.json"),
            r#"{"IsEncrypted": false, "Values": {"FANOUT_TEST_ONLY_LOCAL": "local", "PATH": "not this", "N": 3}}"#,
        )
        .unwrap();
        let s = AppSettings::load(dir.path());
        assert_eq!(s.get("FANOUT_TEST_ONLY_LOCAL").as_deref(), Some("local"));
        assert_ne!(
            s.get("PATH").as_deref(),
            Some("not this"),
            "the environment wins"
        );
        assert_eq!(s.get("N").as_deref(), Some("3"));
        assert_eq!(s.get("FANOUT_TEST_ONLY_UNSET"), None);
        assert_eq!(
            AppSettings::load(&dir.path().join("none")).get("FANOUT_TEST_ONLY_LOCAL"),
            None
        );
    }
}
