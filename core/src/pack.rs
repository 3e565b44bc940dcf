//! Packing records into batch frames: as many records of one table (and op) per frame as fit
//! in `N` bytes, so ids, clocks and framing cost a few bytes per record.
//!
//! ```text
//! loop over records:
//!     while let Some(frame) = packer.change(&c)? { send(frame) }   // a full batch went out
//! if let Some(frame) = packer.flush()? { send(frame) }             // before End / Done
//! ```
//!
//! A [`Packer`] holds two `N`-byte buffers (the open batch's items and the frame), whatever the
//! number of records.

use crate::frame::{encode, EncodeError, DEFAULT_MAX_FRAME};
use crate::id::TableId;
use crate::wire::{
    Chain, Change, ChangeBatch, Mapping, MappingBatch, Op, Remove, RemoveBatch, Reply, Request,
    Upsert, UpsertBatch,
};
use core::fmt;
use serde::Serialize;

/// Whether a message of `msg` bytes makes a frame of at most `n` bytes: 4 bytes of CRC, COBS
/// adds at most one byte per 254 plus one, and the delimiter.
pub const fn fits(msg: usize, n: usize) -> bool {
    let payload = msg + 4;
    payload + 2 + payload / 254 <= n
}

/// Bytes of a postcard varint holding `v`.
const fn varint_len(mut v: usize) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// The kind of the open batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Head {
    Changes(TableId, Op, bool),
    Mappings(TableId),
    Upserts(TableId),
    Removes(TableId),
}

impl Head {
    /// Bytes of the batch message before its items: variant, table, op and key kind, items
    /// length.
    const fn overhead(self, items: usize) -> usize {
        let op_and_key_kind = match self {
            Head::Changes(..) => 2,
            _ => 0,
        };
        1 + 1 + op_and_key_kind + varint_len(items)
    }
}

/// Fills batch frames of at most `N` bytes with records, in the order given.
pub struct Packer<const N: usize = DEFAULT_MAX_FRAME> {
    items: [u8; N],
    len: usize,
    count: u32,
    head: Option<Head>,
    chain: Chain,
    frame: [u8; N],
}

impl<const N: usize> Default for Packer<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// Why [`Packer::reply`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmitError<E> {
    /// A message does not fit in a frame.
    Encode(EncodeError),
    /// The frame sink failed.
    Emit(E),
}

impl<E: fmt::Display> fmt::Display for EmitError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmitError::Encode(e) => e.fmt(f),
            EmitError::Emit(e) => e.fmt(f),
        }
    }
}

enum Step {
    Added,
    Flush,
    TooLarge,
}

impl<const N: usize> Packer<N> {
    /// An empty packer.
    pub const fn new() -> Self {
        Packer {
            items: [0; N],
            len: 0,
            count: 0,
            head: None,
            chain: Chain::new(),
            frame: [0; N],
        }
    }

    /// Records in the open batch (not yet returned in a frame).
    pub fn pending(&self) -> u32 {
        self.count
    }

    /// Adds a request change. `Ok(None)`: added to the open batch. `Ok(Some(frame))`: the open
    /// batch was closed first (full, or of another table, op or key kind); send `frame` and call again
    /// with the same change. `Err`: the change does not fit in a frame even alone.
    pub fn change(&mut self, c: &Change<'_>) -> Result<Option<&[u8]>, EncodeError> {
        let local = matches!(c.key, crate::id::RecordRef::Local(_));
        let head = Head::Changes(c.table, c.op, local);
        self.push(head, |chain| chain.change_item(c))
    }

    /// Adds a reply mapping; returns as [`change`](Self::change) does.
    pub fn mapping(&mut self, m: &Mapping) -> Result<Option<&[u8]>, EncodeError> {
        self.push(Head::Mappings(m.table), |chain| chain.mapping_item(m))
    }

    /// Adds a reply upsert; returns as [`change`](Self::change) does.
    pub fn upsert(&mut self, u: &Upsert<'_>) -> Result<Option<&[u8]>, EncodeError> {
        self.push(Head::Upserts(u.table), |chain| chain.upsert_item(u))
    }

    /// Adds a reply remove; returns as [`change`](Self::change) does.
    pub fn remove(&mut self, r: &Remove) -> Result<Option<&[u8]>, EncodeError> {
        self.push(Head::Removes(r.table), |chain| chain.remove_item(r))
    }

    /// Frames a reply message through `emit`: a record (mapping, upsert, remove) joins the
    /// open batch, whose frame `emit` gets when it is full; any other message closes the open
    /// batch and gets a frame of its own. Call [`flush`](Self::flush) after the last message
    /// (a reply ends with `Done`, which flushes).
    pub fn reply<E>(
        &mut self,
        msg: &Reply<'_>,
        emit: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), EmitError<E>> {
        loop {
            let full = match msg {
                Reply::Mapping(m) => self.mapping(m),
                Reply::Upsert(u) => self.upsert(u),
                Reply::Remove(r) => self.remove(r),
                _ => break,
            }
            .map_err(EmitError::Encode)?;
            match full {
                Some(frame) => emit(frame).map_err(EmitError::Emit)?,
                None => return Ok(()),
            }
        }
        if let Some(frame) = self.flush().map_err(EmitError::Encode)? {
            emit(frame).map_err(EmitError::Emit)?;
        }
        let frame = encode(msg, &mut self.frame).map_err(EmitError::Encode)?;
        emit(frame).map_err(EmitError::Emit)
    }

    /// Closes the open batch: its frame, or `None` if it is empty. Call before a frame that is
    /// not a batch (`End`, `Rejected`, `Reset`, `Done`) and at the end.
    pub fn flush(&mut self) -> Result<Option<&[u8]>, EncodeError> {
        let Some(head) = self.head.take() else {
            return Ok(None);
        };
        let items = &self.items[..self.len];
        let frame = match head {
            Head::Changes(table, op, local) => encode(
                &Request::Changes(ChangeBatch {
                    table,
                    op,
                    local,
                    items,
                }),
                &mut self.frame,
            ),
            Head::Mappings(table) => encode(
                &Reply::Mappings(MappingBatch { table, items }),
                &mut self.frame,
            ),
            Head::Upserts(table) => encode(
                &Reply::Upserts(UpsertBatch { table, items }),
                &mut self.frame,
            ),
            Head::Removes(table) => encode(
                &Reply::Removes(RemoveBatch { table, items }),
                &mut self.frame,
            ),
        };
        self.len = 0;
        self.count = 0;
        self.chain = Chain::new();
        frame.map(|f| Some(&*f))
    }

    fn push<I: Serialize>(
        &mut self,
        head: Head,
        item: impl FnOnce(&mut Chain) -> I,
    ) -> Result<Option<&[u8]>, EncodeError> {
        let step = if self.head.is_some_and(|h| h != head) {
            Step::Flush
        } else {
            let mut chain = self.chain;
            let it = item(&mut chain);
            let room = &mut self.items[self.len..];
            match postcard::to_slice(&it, room) {
                Ok(bytes) => {
                    let len = self.len + bytes.len();
                    if fits(head.overhead(len) + len, N) {
                        self.len = len;
                        self.count += 1;
                        self.chain = chain;
                        self.head = Some(head);
                        Step::Added
                    } else if self.head.is_some() {
                        Step::Flush
                    } else {
                        Step::TooLarge
                    }
                }
                Err(_) if self.head.is_some() => Step::Flush,
                Err(_) => Step::TooLarge,
            }
        };
        match step {
            Step::Added => Ok(None),
            Step::Flush => self.flush(),
            Step::TooLarge => Err(EncodeError::TooLarge),
        }
    }
}
