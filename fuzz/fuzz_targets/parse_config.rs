//! The routing file (fanout.toml), any text: a config or problems that say how to fix them,
//! never a panic. App settings all resolve to a fixed value.
#![no_main]

use fanout::config::AppConfig;
use libfuzzer_sys::fuzz_target;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn app_root() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        std::fs::copy(repo.join("host.json"), dir.join("host.json")).expect("host.json");
        std::fs::create_dir_all(dir.join("orders")).expect("orders/");
        std::fs::copy(
            repo.join("orders/function.json"),
            dir.join("orders/function.json"),
        )
        .expect("function.json");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let root = app_root();
    let _ = AppConfig::from_toml(root, &root.join("fanout.toml"), text, &|_| Some("x".into()));
});
