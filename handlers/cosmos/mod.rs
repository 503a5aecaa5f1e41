//! The commands' side of Cosmos DB (backfill, verify; restore builds on it): which
//! container a function reads and how to reach it ([`account`]), one client setup
//! ([`client`]), the change feed per feed range ([`feed`]), single documents ([`items`]), a whole container read once ([`snapshot`]), and
//! one RU budget with its counters ([`throttle`]). The SDK is Microsoft's `azure_data_cosmos`;
//! tests give [`open_container`] a client builder whose runtime is the SDK's in-memory
//! emulator, so the same code runs against it.

pub mod account;
pub mod client;
pub mod error;
pub mod feed;
pub mod items;
pub mod snapshot;
pub mod throttle;

pub use account::{CosmosAuth, CosmosTarget, TargetError, resolve_other, resolve_target};
pub use client::{check_partition_key, open_container};
pub use error::SourceError;
pub use feed::{Page, RangeReader, Start, feed_ranges};
pub use throttle::{Spent, Throttle};
