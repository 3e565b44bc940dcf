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

use ferrysync_core::id::LocalId;
use heapless::Vec;
use serde::{Deserialize, Serialize};

/// The key of every item in the map: `[kind, id as big-endian u32]`.
pub type FlashKey = [u8; 5];

/// Highest table id the store accepts (the layout keeps the table in a byte; ids above are
/// refused so that the format keeps room).
pub const MAX_TABLE: u8 = 0x3F;

/// Records whose local ids share `local / BUCKET` live in one item (a *bucket*). A change to
/// one record rewrites its bucket: at 4 records a 1 % delta of 11,000 realistic records writes
/// 549 B per changed record (8 wrote 961 B), for twice the record keys in the key caches.
pub const BUCKET: u32 = 4;

/// First byte of a record bucket key: `[RECORDS, local / BUCKET]`.
pub(crate) const RECORDS: u8 = 0x00;
/// First byte of a spilled record's key: `[SPILLED, local]` (a record too large for its bucket).
pub(crate) const SPILLED: u8 = 0x01;
/// First byte of a server-id index bucket key: `[INDEX, bucket]`.
pub(crate) const INDEX: u8 = 0x02;

/// The key of the rejected-log entry with that sequence number.
pub(crate) const REJECTED: u8 = 0xF0;
/// The key of the "highest transaction started" marker.
pub(crate) const MARKER_KEY: FlashKey = [0xFE, 0, 0, 0, 0];
/// The key of the state item (the commit record).
pub(crate) const STATE_KEY: FlashKey = [0xFF, 0, 0, 0, 0];

/// Version of the on-flash layout, stored in the state item.
pub(crate) const LAYOUT_VERSION: u8 = 6;

/// Most ranges of aborted transactions the state item remembers before the store heals them.
pub const MAX_HOLES: usize = 6;

pub(crate) const ITEM_HEAD: usize = 7;

fn key(kind: u8, id: u32) -> FlashKey {
    let b = id.to_be_bytes();
    [kind, b[0], b[1], b[2], b[3]]
}

pub(crate) fn bucket_key(local: LocalId) -> FlashKey {
    key(RECORDS, local.0 / BUCKET)
}

pub(crate) fn spilled_key(local: LocalId) -> FlashKey {
    key(SPILLED, local.0)
}

pub(crate) fn index_key(bucket: u32) -> FlashKey {
    key(INDEX, bucket)
}

pub(crate) fn rejected_key(seq: u32) -> FlashKey {
    key(REJECTED, seq)
}

/// The id in a key (bucket number, local id or sequence number).
pub(crate) fn key_id(key: &FlashKey) -> u32 {
    u32::from_be_bytes([key[1], key[2], key[3], key[4]])
}

/// Index bucket of a server id among `buckets`: runs of 16 consecutive ids share a bucket (a
/// sync delivers ids in runs), and runs are spread by a multiplicative hash.
pub(crate) fn index_bucket(server: u64, buckets: u32) -> u32 {
    let h = (server >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    (h % u64::from(buckets.max(1))) as u32
}

/// Bytes before an entry's data: `[table u8][id u64 LE][mark u16 LE]`.
pub(crate) const ENTRY_HEAD: usize = 11;
/// Entry mark of a removal (overlay only).
pub(crate) const GONE: u16 = 0;
/// Entry mark of a record that lives in its own [`SPILLED`] item (its one data byte: whether the
/// record is pending).
pub(crate) const STUB: u16 = u16::MAX;

/// One entry of a bucket: a record (`id` = local id, `data` = payload) or an index entry
/// (`id` = server id, `data` = local id as u32 LE). `mark` is the data length, or [`GONE`] (no
/// data) or [`STUB`] (one byte).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry<'a> {
    pub table: u8,
    pub id: u64,
    pub mark: u16,
    pub data: &'a [u8],
}

impl Entry<'_> {
    pub fn key(&self) -> (u64, u8) {
        (self.id, self.table)
    }

    pub fn size(&self) -> usize {
        ENTRY_HEAD + self.data.len()
    }

    /// Writes the entry at the start of `out`; returns its size.
    pub fn write(&self, out: &mut [u8]) -> Option<usize> {
        let n = self.size();
        let o = out.get_mut(..n)?;
        o[0] = self.table;
        o[1..9].copy_from_slice(&self.id.to_le_bytes());
        o[9..11].copy_from_slice(&self.mark.to_le_bytes());
        o[11..].copy_from_slice(self.data);
        Some(n)
    }
}

/// The entries of a bucket section, in order; `Some(None)` marks a damaged section.
pub(crate) struct Entries<'a>(pub &'a [u8]);

impl<'a> Iterator for Entries<'a> {
    type Item = Option<Entry<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let parse = |b: &'a [u8]| -> Option<(Entry<'a>, &'a [u8])> {
            let head = b.get(..ENTRY_HEAD)?;
            let mark = u16::from_le_bytes([head[9], head[10]]);
            let len = match mark {
                GONE => 0,
                STUB => 1,
                n => n as usize,
            };
            let data = b.get(ENTRY_HEAD..ENTRY_HEAD + len)?;
            let e = Entry {
                table: head[0],
                id: u64::from_le_bytes(head[1..9].try_into().ok()?),
                mark,
                data,
            };
            Some((e, b.get(ENTRY_HEAD + len..)?))
        };
        match parse(self.0) {
            Some((e, rest)) => {
                self.0 = rest;
                Some(Some(e))
            }
            None => {
                self.0 = &[];
                Some(None)
            }
        }
    }
}

/// The entry `(table, id)` of a sorted section. `Err(())`: the section is damaged.
pub(crate) fn find(section: &[u8], table: u8, id: u64) -> Result<Option<Entry<'_>>, ()> {
    for e in Entries(section) {
        let e = e.ok_or(())?;
        if e.key() == (id, table) {
            return Ok(Some(e));
        }
        if e.key() > (id, table) {
            break;
        }
    }
    Ok(None)
}

/// The entry `(table, id)` of a bucket item as a reader with `view` sees it (`None`: absent).
/// A bucket item is a versioned item whose `new` is an *overlay* (the entries transaction
/// `tag` changed, [`GONE`] for removals) and whose `prev` is the *base* (the entries as
/// committed before `tag`).
pub(crate) fn bucket_find<'a>(
    item: &Item<'a>,
    overlay_applies: bool,
    table: u8,
    id: u64,
) -> Result<Option<Entry<'a>>, ()> {
    if overlay_applies {
        if let Some(e) = find(item.new.unwrap_or(&[]), table, id)? {
            return Ok((e.mark != GONE).then_some(e));
        }
    }
    Ok(find(item.prev.unwrap_or(&[]), table, id)?.filter(|e| e.mark != GONE))
}

/// Whether a visible entry of a bucket (its `overlay` applied over its `base`) passes `pred`;
/// `None`: a damaged section.
pub(crate) fn bucket_any(
    overlay: &[u8],
    base: &[u8],
    pred: impl Fn(&Entry<'_>) -> bool,
) -> Option<bool> {
    for e in Entries(overlay) {
        let e = e?;
        if e.mark != GONE && pred(&e) {
            return Some(true);
        }
    }
    for e in Entries(base) {
        let e = e?;
        if e.mark == GONE || find(overlay, e.table, e.id).ok()?.is_some() {
            continue;
        }
        if pred(&e) {
            return Some(true);
        }
    }
    Some(false)
}

/// Most record buckets the state item lists as holding pending records; beyond, walks of
/// pending records read every bucket until the list is rebuilt.
pub(crate) const PENDING_MAX: usize = 128;

/// The record buckets that may hold a pending record (exact unless `all`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PendingSet {
    /// Sorted bucket numbers.
    pub buckets: Vec<u32, PENDING_MAX>,
    /// More buckets than the list holds may hold pending records: every bucket may.
    pub all: bool,
}

impl PendingSet {
    /// Notes whether `bucket` holds a pending record. Past [`PENDING_MAX`] buckets the list is
    /// dropped for `all`, so that the state item, which every commit writes, stays small (a
    /// full list made it about 130 bytes longer for each local edit), until the store rebuilds
    /// it.
    pub fn set(&mut self, bucket: u32, pending: bool) {
        if self.all {
            return;
        }
        match (self.buckets.binary_search(&bucket), pending) {
            (Ok(i), false) => {
                self.buckets.remove(i);
            }
            (Err(i), true) if self.buckets.insert(i, bucket).is_err() => {
                self.all = true;
                self.buckets.clear();
            }
            _ => {}
        }
    }
}

/// Writes a bucket item into `out` (at most `cap` bytes): transaction `tag`'s overlay is
/// `keep` with `new` put in (replacing its key), the base is `base` with `fold` (a committed
/// overlay) applied and removals dropped. Returns the item's length; `None` if it exceeds `cap`
/// or a section is damaged.
pub(crate) fn write_bucket(
    out: &mut [u8],
    cap: usize,
    tag: u32,
    keep: &[u8],
    fold: &[u8],
    base: &[u8],
    new: &Entry<'_>,
) -> Option<usize> {
    let out = out.get_mut(..cap)?;
    let mut pos = ITEM_HEAD;
    let put = |out: &mut [u8], pos: &mut usize, e: &Entry<'_>| -> Option<()> {
        *pos += e.write(out.get_mut(*pos..)?)?;
        Some(())
    };
    let mut placed = false;
    for e in Entries(keep) {
        let e = e?;
        if !placed && new.key() <= e.key() {
            put(out, &mut pos, new)?;
            placed = true;
            if new.key() == e.key() {
                continue;
            }
        }
        put(out, &mut pos, &e)?;
    }
    if !placed {
        put(out, &mut pos, new)?;
    }
    let overlay_len = u16::try_from(pos - ITEM_HEAD).ok()?;
    // Base: merge of `base` and `fold`, `fold` winning, removals dropped.
    let mut a = Entries(base).peekable();
    let mut b = Entries(fold).peekable();
    loop {
        let next = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(None), _) | (_, Some(None)) => return None,
            (Some(Some(x)), Some(Some(y))) => {
                if x.key() < y.key() {
                    a.next()
                } else {
                    if x.key() == y.key() {
                        a.next();
                    }
                    b.next()
                }
            }
            (Some(_), None) => a.next(),
            (None, Some(_)) => b.next(),
        };
        let e = next.flatten()?;
        if e.mark != GONE {
            put(out, &mut pos, &e)?;
        }
    }
    out[0] = 3;
    out[1..5].copy_from_slice(&tag.to_le_bytes());
    out[5..7].copy_from_slice(&overlay_len.to_le_bytes());
    Some(pos)
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
    /// The record buckets holding pending records.
    pub pending: PendingSet,
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
            pending: PendingSet::default(),
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
