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
pub use layout::{FlashKey, MAX_HOLES, MAX_TABLE};
pub use store::{store_cache, FlashStore, StoreCache};

/// A [`FlashStore`] for hosts on a [`FileFlash`] image of up to 4 MiB (1,024 sectors): a key
/// cache of 32,768 keys (every key of about 16,000 synced records: a record and its server-id
/// index entry), bodies up to about 1 KiB, a walk cursor of 1,024 records. About 470 KiB:
/// keep it in a `Box`.
#[cfg(feature = "std")]
pub type HostStore = FlashStore<FileFlash, StoreCache<1024, 32768>, 2304, 1024>;
