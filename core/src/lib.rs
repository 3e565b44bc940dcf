#![doc = include_str!("../README.md")]
#![no_std]
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

#[cfg(any(feature = "std", test))]
extern crate std;

pub mod body;
pub mod frame;
pub mod hlc;
pub mod id;
pub mod meta;
pub mod schema;
pub mod stream;
pub mod wire;

pub use hlc::{Clock, Hlc};
pub use id::{LocalId, RecordRef, ServerId, TableId};
pub use meta::SyncMeta;
pub use schema::Schema;
