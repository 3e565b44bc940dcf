//! [`FileFlash`]: a NOR flash simulated in a file (feature `std`), for running a scanner on a
//! PC and keeping its image between runs.

use crate::error::FlashError;
use crate::store::FlashStore;
use core::fmt;
use embedded_storage_async::nor_flash::{
    ErrorType, MultiwriteNorFlash, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::vec;
use std::vec::Vec;

/// Why a [`FileFlash`] operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileFlashError {
    /// The file could not be read or written.
    Io(io::ErrorKind),
    /// Offset or length not a multiple of the write (or erase) size.
    NotAligned,
    /// Beyond the end of the flash.
    OutOfBounds,
    /// A write tried to turn a 0 bit into 1, which NOR flash cannot do without an erase.
    BitSet {
        /// Address of the first byte concerned.
        offset: u32,
    },
}

impl fmt::Display for FileFlashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileFlashError::Io(k) => write!(f, "flash image file: {k}"),
            FileFlashError::NotAligned => f.write_str("flash access not aligned"),
            FileFlashError::OutOfBounds => f.write_str("flash access out of bounds"),
            FileFlashError::BitSet { offset } => {
                write!(f, "write at {offset:#x} sets a bit that is not erased")
            }
        }
    }
}

impl std::error::Error for FileFlashError {}

impl NorFlashError for FileFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            FileFlashError::NotAligned => NorFlashErrorKind::NotAligned,
            FileFlashError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            _ => NorFlashErrorKind::Other,
        }
    }
}

/// Counters of what a [`FileFlash`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlashStats {
    /// Read calls.
    pub reads: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Write calls.
    pub writes: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Sectors erased.
    pub erases: u64,
}

/// A NOR flash in a file, with the geometry of a common SPI NOR part: 4 KiB erase sectors,
/// 256-byte program pages (a write is split at page boundaries, as a driver does), 4-byte
/// write granularity. Erasing sets bytes to `0xFF`; a write can only clear bits, and one that
/// would set a bit fails with [`FileFlashError::BitSet`] (real parts silently keep the 0).
///
/// The image is kept in RAM and every write and erase goes through to the file at once, so
/// the file always holds what the flash holds (a killed process loses nothing written).
pub struct FileFlash {
    file: File,
    data: Vec<u8>,
    stats: FlashStats,
}

impl FileFlash {
    /// Erase sector size.
    pub const SECTOR: usize = 4096;
    /// Program page size.
    pub const PAGE: usize = 256;
    /// Write granularity.
    pub const WORD: usize = 4;

    /// Opens the image at `path`, or creates it erased (all `0xFF`) with `size_bytes` bytes.
    /// `size_bytes` must be a non-zero multiple of [`Self::SECTOR`] and, for an existing
    /// image, equal to its size.
    pub fn open_or_create(path: impl AsRef<Path>, size_bytes: usize) -> io::Result<Self> {
        if size_bytes == 0
            || !size_bytes.is_multiple_of(Self::SECTOR)
            || u32::try_from(size_bytes).is_err()
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "flash size must be a non-zero multiple of 4096 bytes below 4 GiB",
            ));
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = file.metadata()?.len();
        let data = if len == 0 {
            let data = vec![0xFF; size_bytes];
            file.write_all(&data)?;
            file.sync_all()?;
            data
        } else if len == size_bytes as u64 {
            let mut data = Vec::with_capacity(size_bytes);
            file.read_to_end(&mut data)?;
            data
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                std::format!("flash image is {len} bytes, not {size_bytes}"),
            ));
        };
        Ok(FileFlash {
            file,
            data,
            stats: FlashStats::default(),
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.data.len()
    }

    /// What the flash did since it was opened.
    pub fn stats(&self) -> FlashStats {
        self.stats
    }

    /// The whole image.
    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }

    fn range(
        &self,
        offset: u32,
        len: usize,
        align: usize,
    ) -> Result<core::ops::Range<usize>, FileFlashError> {
        let start = offset as usize;
        if !start.is_multiple_of(align) || !len.is_multiple_of(align) {
            return Err(FileFlashError::NotAligned);
        }
        let end = start.checked_add(len).ok_or(FileFlashError::OutOfBounds)?;
        if end > self.data.len() {
            return Err(FileFlashError::OutOfBounds);
        }
        Ok(start..end)
    }

    fn persist(&mut self, range: core::ops::Range<usize>) -> Result<(), FileFlashError> {
        let io = |e: io::Error| FileFlashError::Io(e.kind());
        self.file
            .seek(SeekFrom::Start(range.start as u64))
            .map_err(io)?;
        self.file.write_all(&self.data[range]).map_err(io)
    }
}

impl ErrorType for FileFlash {
    type Error = FileFlashError;
}

impl ReadNorFlash for FileFlash {
    const READ_SIZE: usize = 1;

    async fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        let r = self.range(offset, bytes.len(), 1)?;
        bytes.copy_from_slice(&self.data[r]);
        self.stats.reads += 1;
        self.stats.bytes_read += bytes.len() as u64;
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.data.len()
    }
}

impl NorFlash for FileFlash {
    const WRITE_SIZE: usize = Self::WORD;
    const ERASE_SIZE: usize = Self::SECTOR;

    async fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        if to < from {
            return Err(FileFlashError::OutOfBounds);
        }
        let r = self.range(from, (to - from) as usize, Self::SECTOR)?;
        self.stats.erases += (r.len() / Self::SECTOR) as u64;
        self.data[r.clone()].fill(0xFF);
        self.persist(r)
    }

    async fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        let r = self.range(offset, bytes.len(), Self::WORD)?;
        if let Some(i) = self.data[r.clone()]
            .iter()
            .zip(bytes)
            .position(|(old, new)| new & !old != 0)
        {
            return Err(FileFlashError::BitSet {
                offset: offset + i as u32,
            });
        }
        // One program operation per 256-byte page the write touches.
        let mut at = r.start;
        while at < r.end {
            let page_end = ((at / Self::PAGE) + 1) * Self::PAGE;
            let end = page_end.min(r.end);
            for (d, s) in self.data[at..end]
                .iter_mut()
                .zip(&bytes[at - r.start..end - r.start])
            {
                *d &= *s;
            }
            self.stats.writes += 1;
            at = end;
        }
        self.stats.bytes_written += bytes.len() as u64;
        self.persist(r)
    }
}

/// Writing a word again only clears more bits, which NOR allows.
impl MultiwriteNorFlash for FileFlash {}

impl<C: crate::CacheSpec, const BUF: usize, const MAPS: usize> FlashStore<FileFlash, C, BUF, MAPS> {
    /// A store on the whole of the flash image at `path`, created erased with `size_bytes`
    /// bytes if it does not exist (see [`FileFlash::open_or_create`]).
    pub fn open_file(path: impl AsRef<Path>, size_bytes: usize, cache: C) -> io::Result<Self> {
        let flash = FileFlash::open_or_create(path, size_bytes)?;
        FlashStore::try_new(flash, 0..size_bytes as u32, cache).map_err(|e: FlashError<_>| {
            io::Error::new(io::ErrorKind::InvalidInput, std::format!("{e}"))
        })
    }
}
