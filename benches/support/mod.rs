//! Shared by the benchmark programs: a throwaway Function App and percentiles.
#![allow(dead_code)] // each benchmark program uses a part of it

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

/// Starts the handler in `app` `rounds` times like the host (polling `/` every 1 ms, to measure
/// the start-up itself) and returns the start-up times, idle RSS and its anonymous part (heap,
/// stacks: what is not pages of the binary and libraries; kB, 100 ms after ready), all sorted.
pub async fn measure_startup(
    binary: &Path,
    app: &Path,
    rounds: usize,
) -> (Vec<Duration>, Vec<u64>, Vec<u64>) {
    let mut startups = Vec::new();
    let mut idle_rss = Vec::new();
    let mut idle_anon = Vec::new();
    for _ in 0..rounds {
        let mut host = fanout::hostsim::EmulatedHost::start_polling(
            binary,
            app,
            &[("FANOUT_LOG", "warn")],
            Duration::from_millis(1),
        )
        .await
        .unwrap();
        startups.push(host.startup);
        tokio::time::sleep(Duration::from_millis(100)).await;
        idle_rss.push(proc_status_kb(host.pid().unwrap(), "VmRSS:"));
        idle_anon.push(proc_status_kb(host.pid().unwrap(), "RssAnon:"));
        host.terminate();
    }
    startups.sort();
    idle_rss.sort();
    idle_anon.sort();
    (startups, idle_rss, idle_anon)
}

/// A `kB` field of /proc/<pid>/status (VmRSS:, VmHWM:), 0 when unreadable.
pub fn proc_status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}
