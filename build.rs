//! Links the `fanout` executable position-dependent (`-no-pie`) unless `FANOUT_PIE=1`.
//!
//! A position-independent executable of this size carries ~146k relative relocations: the
//! dynamic loader reads a 3.5 MB table and rewrites 2.9 MB of pointers (vtables, panic
//! locations) at every start, and those pages stay private to the process. Linked at a fixed
//! address, none of that happens: idle RSS 21.4 -> 15.4 MB, the process's private memory
//! 4.0 -> 1.1 MB. The trade-off is that the executable's own code loads at a fixed address
//! (libraries, heap, stack and mappings stay randomized), as Go links on Linux by default;
//! docs/performance.md ("Idle memory") has the figures and how to opt back in.

fn main() {
    println!("cargo:rerun-if-env-changed=FANOUT_PIE");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if linux && std::env::var("FANOUT_PIE").as_deref() != Ok("1") {
        println!("cargo:rustc-link-arg-bin=fanout=-no-pie");
    }
}
