//! Shared by the benchmark programs: a throwaway Function App and percentiles.

use std::path::Path;
use std::time::Duration;

/// A Function App in `dir`: the repo's host.json and orders/function.json, and a fanout.toml
/// routing `orders` to one Delta sink at `tables/orders` (plus `delta_extra` settings).
pub fn write_app(dir: &Path, delta_extra: &str) {
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/host.json"),
        dir.join("host.json"),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("orders")).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/orders/function.json"),
        dir.join("orders/function.json"),
    )
    .unwrap();
    std::fs::write(
        dir.join("fanout.toml"),
        format!("[functions.orders]\npartition_key = \"/customerId\"\nsoft_delete = {{ field = \"/deleted\" }}\n[functions.orders.sinks.changelog]\ntype = \"delta\"\ntable = \"tables/orders\"\n{delta_extra}\n"),
    )
    .unwrap();
}

/// The p-th percentile (0..=1) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}
