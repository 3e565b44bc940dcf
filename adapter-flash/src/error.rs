//! The error of [`FlashStore`](crate::FlashStore).

use core::fmt;

/// Why a [`FlashStore`](crate::FlashStore) operation failed.
///
/// Whatever the error, nothing of an open transaction became durable: the next
/// [`LocalStore::rollback`](ferrysync_core::LocalStore::rollback) (the engine and the change
/// tracking call it) leaves the last committed state, which reads keep returning.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlashError<E> {
    /// The flash driver failed (power dropping, bus error...). `E` is the driver's error.
    Flash(E),
    /// The flash partition is full: the write that hit it, and its transaction, were dropped;
    /// everything committed before is intact. Free space (sync, clear the rejected log) or give
    /// the store a bigger partition.
    Full,
    /// A record (its header, its body and the committed version kept beside it) does not fit in
    /// the store's item buffer (`BUF`) or in one flash page.
    TooLarge,
    /// The caller's buffer is too small for the body asked for.
    BufferTooSmall,
    /// The flash holds data this store cannot read and sequential-storage could not repair
    /// (not a ferrysync image, or damaged beyond the power-loss cases). Erase the partition
    /// ([`FlashStore::format`](crate::FlashStore::format)) to start over.
    Corrupted,
    /// A write outside a transaction (a misuse of the store).
    NoTransaction,
    /// `put` with no body of a record that does not exist.
    NoBody,
    /// The table id is beyond what the on-flash key can hold (`0..=`[`MAX_TABLE`](crate::MAX_TABLE)).
    BadTable,
    /// The flash range is not usable by sequential-storage (not page aligned, fewer than two
    /// pages, pages too small for the buffer).
    Config,
    /// An internal inconsistency that would otherwise have been a panic.
    Logic,
}

impl<E: fmt::Debug> fmt::Display for FlashError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlashError::Flash(e) => write!(f, "flash driver error: {e:?}"),
            FlashError::Full => f.write_str("flash storage full (nothing was lost)"),
            FlashError::TooLarge => f.write_str("record too large for the store's item buffer"),
            FlashError::BufferTooSmall => f.write_str("buffer too small"),
            FlashError::Corrupted => f.write_str("flash contents corrupted"),
            FlashError::NoTransaction => f.write_str("write outside a transaction"),
            FlashError::NoBody => f.write_str("record has no body"),
            FlashError::BadTable => f.write_str("table id out of range for the flash store"),
            FlashError::Config => f.write_str("flash range not usable"),
            FlashError::Logic => f.write_str("internal error in the flash store"),
        }
    }
}

#[cfg(feature = "std")]
impl<E: fmt::Debug> std::error::Error for FlashError<E> {}

impl<E> From<sequential_storage::Error<E>> for FlashError<E> {
    fn from(e: sequential_storage::Error<E>) -> Self {
        match e {
            sequential_storage::Error::Storage { value, .. } => FlashError::Flash(value),
            sequential_storage::Error::FullStorage => FlashError::Full,
            sequential_storage::Error::Corrupted { .. } => FlashError::Corrupted,
            sequential_storage::Error::SerializationError(_) => FlashError::Corrupted,
            sequential_storage::Error::ItemTooBig => FlashError::TooLarge,
            sequential_storage::Error::BufferTooBig
            | sequential_storage::Error::BufferTooSmall(_) => FlashError::TooLarge,
            _ => FlashError::Logic,
        }
    }
}
