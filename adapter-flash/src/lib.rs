#![doc = include_str!("../README.md")]
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
pub use layout::{FlashKey, BUCKET, MAX_HOLES, MAX_TABLE};
pub use store::{
    store_cache, CacheSpec, FlashStore, LeanCache, LeanMapCache, MapCache, NoCache, StoreCache,
    MAX_MAPS,
};

/// A [`FlashStore`] for hosts on a [`FileFlash`] image of up to 4 MiB (1,024 sectors, 64
/// sub-maps of 16): key caches of 64 keys per sub-map (every key of about 14,000 records: 4
/// records per bucket, plus up to 512 index buckets), records up to about 1 KiB. About 75 KiB:
/// keep it in a `Box`. Per the crate docs' Sizing, a 4 MiB image suits about 6,000 records of
/// the issue-7 workload.
#[cfg(feature = "std")]
pub type HostStore = FlashStore<FileFlash, StoreCache<16, 64>, 2304, 64>;
