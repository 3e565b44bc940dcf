//! What the store writes to flash: keys, versioned items and the state item.
//!
//! Every record and every rejected-log entry is one sequential-storage map item whose value
//! keeps two versions, so a transaction can be dropped without writing anything:
//!
//! ```text
//! flags: u8        bit 0: `new` is present (else it is a tombstone)
//!                  bit 1: `prev` is present (else the key was absent)
//! tag: u32 LE      number of the transaction that wrote `new`
//! new_len: u16 LE  length of `new` (0 for a tombstone)
//! new: [u8]        payload written by transaction `tag`
//! prev: [u8]       (the rest) the committed payload when `tag` wrote the item
//! ```
//!
//! A payload is `[header_len: u8][postcard header][body]`. Readers take `new` when `tag` is
//! committed (see [`View`]) and `prev` otherwise.

use ferrysync_core::id::{LocalId, TableId};
use heapless::Vec;
use serde::{Deserialize, Serialize};

/// The key of every item in the map: `[kind or table, id as big-endian u32]`.
pub type FlashKey = [u8; 5];

/// Highest table id the flash layout can store (key bytes above it name other kinds).
pub const MAX_TABLE: u8 = 0x3F;

/// First byte of a server-id index key: `[SERVER_INDEX + table, low 32 bits of the id]`.
pub(crate) const SERVER_INDEX: u8 = 0x40;
/// Length of an index payload: `[local: u32 LE][server id: u64 LE]`.
pub(crate) const INDEX_LEN: usize = 12;

/// The key of the rejected-log entry with that sequence number.
pub(crate) const REJECTED: u8 = 0xF0;
/// The key of the "highest transaction started" marker.
pub(crate) const MARKER_KEY: FlashKey = [0xFE, 0, 0, 0, 0];
/// The key of the state item (the commit record).
pub(crate) const STATE_KEY: FlashKey = [0xFF, 0, 0, 0, 0];

/// Version of the on-flash layout, stored in the state item.
pub(crate) const LAYOUT_VERSION: u8 = 1;

/// Most ranges of aborted transactions the state item remembers before the store heals them.
pub const MAX_HOLES: usize = 6;

pub(crate) const ITEM_HEAD: usize = 7;

pub(crate) fn record_key(table: TableId, local: LocalId) -> FlashKey {
    let l = local.0.to_be_bytes();
    [table.0, l[0], l[1], l[2], l[3]]
}

pub(crate) fn server_key(table: TableId, server: u64) -> FlashKey {
    let s = (server as u32).to_be_bytes();
    [SERVER_INDEX + table.0, s[0], s[1], s[2], s[3]]
}

pub(crate) fn rejected_key(seq: u32) -> FlashKey {
    let s = seq.to_be_bytes();
    [REJECTED, s[0], s[1], s[2], s[3]]
}

/// `(table, local)` of a record key, `None` for other kinds.
pub(crate) fn parse_record_key(key: &FlashKey) -> Option<(TableId, LocalId)> {
    if key[0] > MAX_TABLE {
        return None;
    }
    Some((
        TableId(key[0]),
        LocalId(u32::from_be_bytes([key[1], key[2], key[3], key[4]])),
    ))
}

/// The commit record: written last by every commit, in one atomic item write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StateItem {
    pub version: u8,
    /// Number of the last committed transaction.
    pub committed: u32,
    /// Inclusive ranges of transaction numbers at or below `committed` that never committed;
    /// items they wrote are not valid.
    pub holes: Vec<(u32, u32), MAX_HOLES>,
    /// Length of the rejected log (its entries are numbered `1..=rejected`).
    pub rejected: u32,
    /// Every local id at or above this one was never committed (so its record is absent
    /// without reading flash).
    pub floor: u32,
    /// The device state handed to the commit.
    pub device: ferrysync_core::store::DeviceState,
}

impl Default for StateItem {
    fn default() -> Self {
        StateItem {
            version: LAYOUT_VERSION,
            committed: 0,
            holes: Vec::new(),
            rejected: 0,
            floor: 0,
            device: Default::default(),
        }
    }
}

/// Which transaction numbers are readable.
#[derive(Clone, Debug)]
pub(crate) struct View {
    pub committed: u32,
    pub holes: Vec<(u32, u32), MAX_HOLES>,
    /// The open transaction, whose own writes are visible.
    pub open: Option<u32>,
}

impl View {
    /// Whether items written by transaction `tag` are committed.
    pub fn is_committed(&self, tag: u32) -> bool {
        tag <= self.committed && !self.holes.iter().any(|&(lo, hi)| lo <= tag && tag <= hi)
    }

    /// Whether items written by `tag` are visible to the reader.
    pub fn is_visible(&self, tag: u32) -> bool {
        self.open == Some(tag) || self.is_committed(tag)
    }
}

/// A decoded versioned item.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Item<'a> {
    pub tag: u32,
    /// `None`: a tombstone.
    pub new: Option<&'a [u8]>,
    /// `None`: absent before `tag`.
    pub prev: Option<&'a [u8]>,
}

impl<'a> Item<'a> {
    pub fn parse(v: &'a [u8]) -> Option<Item<'a>> {
        let flags = *v.first()?;
        let tag = u32::from_le_bytes(v.get(1..5)?.try_into().ok()?);
        let len = u16::from_le_bytes(v.get(5..7)?.try_into().ok()?) as usize;
        let new = v.get(ITEM_HEAD..ITEM_HEAD + len)?;
        let rest = v.get(ITEM_HEAD + len..)?;
        Some(Item {
            tag,
            new: (flags & 1 != 0).then_some(new),
            prev: (flags & 2 != 0).then_some(rest),
        })
    }

    /// The payload a reader with `view` sees (`None`: absent or deleted).
    pub fn visible(&self, view: &View) -> Option<&'a [u8]> {
        if view.is_visible(self.tag) {
            self.new
        } else {
            self.prev
        }
    }

    /// The payload a new write of transaction `open` must keep as its `prev`: the committed one.
    pub fn committed_for(&self, view: &View, open: u32) -> Option<&'a [u8]> {
        if self.tag != open && view.is_committed(self.tag) {
            self.new
        } else {
            self.prev
        }
    }
}

/// Writes the fixed head of an item; the payloads follow at [`ITEM_HEAD`].
pub(crate) fn write_head(
    out: &mut [u8],
    tag: u32,
    new_len: Option<usize>,
    has_prev: bool,
) -> Option<()> {
    let len = new_len.unwrap_or(0);
    let len16 = u16::try_from(len).ok()?;
    let flags = u8::from(new_len.is_some()) | (u8::from(has_prev) << 1);
    let head = out.get_mut(..ITEM_HEAD)?;
    head[0] = flags;
    head[1..5].copy_from_slice(&tag.to_le_bytes());
    head[5..7].copy_from_slice(&len16.to_le_bytes());
    Some(())
}

/// Splits a payload into its postcard header and its body.
pub(crate) fn split_payload(p: &[u8]) -> Option<(&[u8], &[u8])> {
    let hl = *p.first()? as usize;
    Some((p.get(1..1 + hl)?, p.get(1 + hl..)?))
}

/// Writes `[header_len][header][body]` into `out`; returns its length.
pub(crate) fn write_payload<T: Serialize>(
    out: &mut [u8],
    header: &T,
    body: &[u8],
) -> Option<usize> {
    let (first, rest) = out.split_first_mut()?;
    let hl = postcard::to_slice(header, rest).ok()?.len();
    *first = u8::try_from(hl).ok()?;
    let end = 1 + hl + body.len();
    out.get_mut(1 + hl..end)?.copy_from_slice(body);
    Some(end)
}
