#![doc = include_str!("../README.md")]
#![no_std]
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

#[cfg(any(feature = "std", feature = "_test", test))]
extern crate std;

pub mod body;
pub mod engine;
pub mod frame;
pub mod hlc;
pub mod id;
#[cfg(any(test, feature = "_test"))]
pub mod mem;
pub mod meta;
pub mod pack;
pub mod schema;
pub mod store;
pub mod stream;
pub mod track;
pub mod transport;
pub mod wire;
#[cfg(any(test, feature = "_test"))]
pub mod workload;

pub use hlc::{Clock, Hlc};
pub use id::{LocalId, RecordRef, ServerId, TableId};
pub use meta::SyncMeta;
pub use schema::Schema;
pub use store::LocalStore;
pub use transport::Transport;
