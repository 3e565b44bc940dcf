//! # ferrysync-flash
//!
//! ferrysync's device store for scanners: a [`LocalStore`](ferrysync_core::LocalStore) on raw
//! NOR flash, built on [sequential-storage](https://docs.rs/sequential-storage)'s map.
//! `no_std`, no heap, no `unsafe`: every buffer is sized by the caller's const generics.
//!
//! ## Layout
//! One sequential-storage map over a page-aligned flash range. Keys are 5 bytes
//! ([`FlashKey`]): `[table, local id (BE u32)]` for a record, `[0xF0, seq]` for a
//! rejected-log entry, `[0xFE, ..]` for the "transaction started" marker and `[0xFF, ..]` for
//! the state item (the commit record: last committed transaction number, ranges of aborted
//! transaction numbers, rejected-log length, the [`DeviceState`](ferrysync_core::store::DeviceState)).
//!
//! ## Transactions
//! sequential-storage writes one item atomically; a transaction writes many. Each record item
//! therefore carries two versions: `new`, tagged with the number of the transaction that wrote
//! it, and `prev`, the committed version at that moment. A reader takes `new` if its tag is
//! committed (at most the state item's number and not in an aborted range) or is the open
//! transaction, else `prev`.
//!
//! - `begin` writes nothing. Before its first item, a transaction persists its number in the
//!   marker item, so that after a power cut the number is never handed out again.
//! - `commit` is one write: the state item with the new number. Before it lands, every item of
//!   the transaction reads as its `prev`; after, as its `new`.
//! - `rollback` and recovery after a power cut write nothing: the numbers between the last
//!   commit and the marker are recorded as an aborted range by the next commit. When
//!   [`MAX_HOLES`] ranges are recorded, the next `begin` rewrites the items they left behind to
//!   their committed versions and forgets them.
//!
//! Cost: a record written for the first time is one item; a record that had a committed
//! version carries it once more until the next write (a write amplification of two on
//! updates, against a redo journal's two writes plus replay).
//!
//! ## Lookups
//! Finding a key in a sequential-storage map scans the flash from the newest page back, unless
//! the key-pointer cache given to the store knows it. The store avoids reading where it can:
//! a local id above every committed one is known absent without a read, the highest server id
//! per table answers most "absent" `by_server` lookups, recent `by_server` hits are
//! remembered, and [`LocalStore::next`](ferrysync_core::LocalStore::next) fills a cursor of
//! `CUR` records per pass over the flash so a walk costs one pass per `CUR` records.
//!
//! ## Host
//! Feature `std` adds `FileFlash`, a NOR flash simulated in a file with a real part's geometry,
//! so a scanner can run on a PC and keep its image between runs.
#![no_std]
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

#[cfg(feature = "std")]
extern crate std;

mod error;
#[cfg(feature = "std")]
mod file;
mod layout;
mod store;

pub use error::FlashError;
#[cfg(feature = "std")]
pub use file::{FileFlash, FileFlashError, FlashStats};
pub use layout::{FlashKey, MAX_HOLES, MAX_TABLE};
pub use store::{store_cache, FlashStore, StoreCache};
