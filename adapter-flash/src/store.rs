//! [`FlashStore`]: a [`LocalStore`] on a sequential-storage map.

use crate::error::FlashError;
use crate::layout::{
    bucket_any, bucket_find, bucket_key, index_bucket, index_key, key_id, rejected_key,
    spilled_key, split_payload, write_bucket, write_head, write_payload, Entry, FlashKey, Item,
    PendingSet, StateItem, View, BUCKET, ENTRY_HEAD, GONE, INDEX, ITEM_HEAD, LAYOUT_VERSION,
    MARKER_KEY, MAX_HOLES, MAX_TABLE, PENDING_MAX, RECORDS, REJECTED, STATE_KEY, STUB,
};
use core::ops::Range;
use embedded_storage_async::nor_flash::NorFlash;
use ferrysync_core::id::{LocalId, ServerId, TableId};
use ferrysync_core::store::{DeviceState, Filter, LocalStore, Record, RejectedEntry};
use heapless::Vec;
use sequential_storage::cache::CacheImpl;
use sequential_storage::map::{MapConfig, MapStorage};

/// Runs `$body` on sub-map `$i` as `$m` (a `MapStorage` borrowing the flash and owning the
/// sub-map's cache for the call); evaluates to the body's result. The body must not return
/// early (no `?`), so that the cache always goes back.
macro_rules! on_map {
    ($s:ident, $i:expr, $m:ident => $body:expr) => {{
        let i: usize = $i;
        let first = $s.start + $s.map_bytes * i as u32;
        let range = first..first + $s.map_bytes;
        // A cache lost to a cancelled call is replaced by a fresh one (always valid, cold).
        let cache = $s
            .caches
            .get_mut(i)
            .and_then(Option::take)
            .unwrap_or_else(C::make);
        match MapConfig::<&mut F>::try_new(range) {
            Err(_) => {
                if let Some(c) = $s.caches.get_mut(i) {
                    *c = Some(cache);
                }
                Err(FlashError::Config)
            }
            Ok(config) => {
                let mut $m =
                    MapStorage::<FlashKey, &mut F, C::Cache>::new(&mut $s.flash, config, cache);
                let r = $body;
                let cache = $m.destroy().1;
                if let Some(c) = $s.caches.get_mut(i) {
                    *c = Some(cache);
                }
                r.map_err(FlashError::from)
            }
        }
    }};
}

/// A byte buffer aligned for flash drivers that DMA from RAM (and for the mock flash, which
/// checks it).
#[repr(C, align(4))]
struct Aligned<const N: usize>([u8; N]);

/// Keys healed per pass over the flash when the store forgets aborted transactions.
const HEAL_BATCH: usize = 32;
/// Record buckets whose presence on flash the store tracks in RAM (local ids below
/// `RECORD_BITS * BUCKET`; buckets above are looked up in the map, which scans the flash for
/// a bucket that does not exist).
const RECORD_BITS: usize = 32_768;
/// Most server-id index buckets (the partition's page count / 2, at most this).
const INDEX_BITS: usize = 4_096;

/// Which bucket keys exist on flash: asking sequential-storage for a key it does not hold
/// scans the whole partition, so the store never asks.
struct KeySet {
    bits: [u32; (RECORD_BITS + INDEX_BITS) / 32],
    /// Highest record bucket on flash.
    max_bucket: Option<u32>,
}

impl KeySet {
    const fn new() -> Self {
        KeySet {
            bits: [0; (RECORD_BITS + INDEX_BITS) / 32],
            max_bucket: None,
        }
    }

    fn bit(key: &FlashKey) -> Option<usize> {
        let id = key_id(key) as usize;
        match key[0] {
            RECORDS if id < RECORD_BITS => Some(id),
            INDEX if id < INDEX_BITS => Some(RECORD_BITS + id),
            _ => None,
        }
    }

    /// Whether `key` may be on flash (always for keys it does not track).
    fn may_exist(&self, key: &FlashKey) -> bool {
        if key[0] == RECORDS && self.max_bucket.is_none_or(|m| key_id(key) > m) {
            return false;
        }
        Self::bit(key).is_none_or(|i| self.bits[i / 32] >> (i % 32) & 1 != 0)
    }

    fn insert(&mut self, key: &FlashKey) {
        if key[0] == RECORDS {
            let b = key_id(key);
            self.max_bucket = Some(self.max_bucket.map_or(b, |m| m.max(b)));
        }
        if let Some(i) = Self::bit(key) {
            self.bits[i / 32] |= 1 << (i % 32);
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Txn {
    tag: u32,
    /// The "started" marker is on flash (this transaction may have written items).
    marked: bool,
    /// Length of the rejected log as this transaction sees it.
    rejected: u32,
    /// Highest local id at or above the committed floor written by this transaction.
    fresh_hi: Option<u32>,
    /// Highest local id written by this transaction.
    max_local: Option<u32>,
    /// No record bucket was on flash when this transaction began (so no record, committed or
    /// not: a spilled record keeps a stub in its bucket): every record it sees is one it put.
    fresh: bool,
    /// The sweep marks of the records this transaction put.
    marks: Marks,
    /// Pending records this transaction confirmed or removed.
    cleared: u32,
}

/// Pending records a transaction must confirm or remove, while the list of buckets holding
/// pending records is dropped, for its commit to list them again (a sync that confirmed what
/// it sent; one read of every bucket).
const REBUILD_AFTER: u32 = (PENDING_MAX / 4) as u32;

/// The sweep marks ([`Record::mark`]) the records of a transaction were put with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Marks {
    /// No record put yet.
    None,
    /// Every record put carried this mark.
    All(u32),
    /// Records with different marks.
    Mixed,
}

/// A bucket item of the open transaction assembled in RAM and not written yet: the writes of
/// one transaction to one bucket reach flash as one item.
struct Staged<const BUF: usize> {
    key: Option<FlashKey>,
    len: usize,
    buf: Aligned<BUF>,
}

impl<const BUF: usize> Staged<BUF> {
    const fn new() -> Self {
        Staged {
            key: None,
            len: 0,
            buf: Aligned([0; BUF]),
        }
    }
}

/// The staging slot of record buckets.
const REC_SLOT: usize = 0;
/// The staging slot of index buckets.
const IDX_SLOT: usize = 1;

/// The data of an entry to stage.
enum Data {
    None,
    /// A payload in `wbuf`.
    Wbuf(Range<usize>),
    /// A local id (index entries).
    Local(u32),
    /// One byte (a stub's pending flag).
    Byte(u8),
}

/// A record as read: its visible payload is in `rbuf`.
enum Found {
    Absent,
    /// Payload range in `rbuf` (from the bucket or the record's spilled item).
    At(Range<usize>),
}

/// What a write needs to know of the record it replaces.
struct Old {
    rec: Option<Record>,
    /// The visible record lives in its spilled item.
    stub: bool,
    /// The committed record lives in its spilled item.
    committed_stub: bool,
}

/// A [`LocalStore`] on NOR flash: records, a server-id index, the rejected log and the
/// device state as items of one sequential-storage map, with transactions that survive a
/// power cut at any byte.
///
/// - `F`: the flash (the async `NorFlash` of embedded-storage-async).
/// - `C`: sequential-storage's cache for the map's keys ([`FlashKey`]); see [`StoreCache`].
///   Give it room for every key: about `records / 4` record buckets plus `pages / 2` index
///   buckets (a lookup of a key not in it scans the flash).
/// - `BUF`: size of each of the four item buffers (RAM: `4 * BUF`). It bounds a bucket item:
///   records whose payload (header, about 25 bytes, and body) is larger than
///   `(min(BUF - 16, page - 64) - 7) / 8 - 11` bytes get an item of their own, which must fit
///   twice in `min(BUF - 16, page - 64) - 7`.
///
/// See the crate docs for the layout and the transaction scheme.
pub struct FlashStore<F: NorFlash, C: CacheSpec, const BUF: usize, const MAPS: usize = 64> {
    flash: F,
    /// One sequential-storage cache per sub-map.
    caches: [Option<C::Cache>; MAPS],
    /// Start of the partition.
    start: u32,
    /// Sub-maps in use, and the bytes of each.
    maps: usize,
    map_bytes: u32,
    rbuf: Aligned<BUF>,
    wbuf: Aligned<BUF>,
    staged: [Staged<BUF>; 2],
    /// The key whose flash item `rbuf` holds, and where, until the next map call.
    held: Option<(FlashKey, Range<usize>)>,
    keys: KeySet,
    /// Highest rejected-log key on flash.
    rejected_hi: u32,
    index_buckets: u32,
    /// Largest item value (bounded by `BUF` and the page).
    value_max: usize,
    /// Largest payload kept in a bucket.
    inline_max: usize,
    mounted: bool,
    /// The committed state item.
    state: StateItem,
    /// The record buckets holding pending records, as the open transaction sees them.
    pending: PendingSet,
    /// Highest transaction number that may have written items.
    started: u32,
    txn: Option<Txn>,
}

/// Whether a bucket item holds a pending record (with its overlay applied or not); a damaged
/// item counts as pending, so that walks read it.
fn bucket_pending(item: &[u8], overlay_applies: bool) -> bool {
    let Some(item) = Item::parse(item) else {
        return true;
    };
    let pred = |e: &Entry<'_>| {
        if e.mark == STUB {
            e.data.first().is_none_or(|&f| f != 0)
        } else {
            split_payload(e.data)
                .and_then(|(h, _)| postcard::from_bytes::<Record>(h).ok())
                .is_none_or(|r| r.meta.is_pending())
        }
    };
    let overlay = if overlay_applies {
        item.new.unwrap_or(&[])
    } else {
        &[]
    };
    bucket_any(overlay, item.prev.unwrap_or(&[]), pred).unwrap_or(true)
}

/// The sequential-storage cache of one sub-map: page states and page pointers for `PAGES`
/// flash pages, and pointers to `KEYS` keys (12 bytes each).
pub type MapCache<const PAGES: usize, const KEYS: usize> = sequential_storage::cache::Cache<
    sequential_storage::cache::page_states::ArrayPageStates<PAGES>,
    sequential_storage::cache::page_pointers::ArrayPagePointers<PAGES>,
    sequential_storage::cache::key_pointers::ArrayKeyPointers<FlashKey, KEYS>,
    FlashKey,
>;

/// How a [`FlashStore`] builds the sequential-storage cache of each of its sub-maps.
pub trait CacheSpec {
    /// The cache of one sub-map.
    type Cache: CacheImpl<FlashKey>;
    /// Flash pages the cache can track (at least the pages of one sub-map).
    const PAGES: usize;
    /// A fresh cache.
    fn make() -> Self::Cache;
}

/// The usual [`CacheSpec`]: per sub-map, a [`MapCache`] for `PAGES` pages and `KEYS` keys.
#[derive(Clone, Copy, Debug, Default)]
pub struct StoreCache<const PAGES: usize, const KEYS: usize>;

impl<const PAGES: usize, const KEYS: usize> CacheSpec for StoreCache<PAGES, KEYS> {
    type Cache = MapCache<PAGES, KEYS>;
    const PAGES: usize = PAGES;

    fn make() -> Self::Cache {
        sequential_storage::cache::Cache::new(
            sequential_storage::cache::page_states::ArrayPageStates::new(),
            sequential_storage::cache::page_pointers::ArrayPagePointers::new(),
            sequential_storage::cache::key_pointers::ArrayKeyPointers::new(),
        )
    }
}

/// The sequential-storage cache of one sub-map without page pointers: page states for `PAGES`
/// pages and pointers to `KEYS` keys, 8 bytes a page less than a [`MapCache`].
pub type LeanMapCache<const PAGES: usize, const KEYS: usize> = sequential_storage::cache::Cache<
    sequential_storage::cache::page_states::ArrayPageStates<PAGES>,
    sequential_storage::cache::Uncached,
    sequential_storage::cache::key_pointers::ArrayKeyPointers<FlashKey, KEYS>,
    FlashKey,
>;

/// A [`CacheSpec`] for scanners short of RAM: per sub-map, a [`LeanMapCache`]. Every write
/// finds the free space of its page by reading the page's items (a local edit of the issue-7
/// workload read 1.7 KiB instead of 0.6), lookups cost the same; 16 KiB less on 8 MiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct LeanCache<const PAGES: usize, const KEYS: usize>;

impl<const PAGES: usize, const KEYS: usize> CacheSpec for LeanCache<PAGES, KEYS> {
    type Cache = LeanMapCache<PAGES, KEYS>;
    const PAGES: usize = PAGES;

    fn make() -> Self::Cache {
        sequential_storage::cache::Cache::new(
            sequential_storage::cache::page_states::ArrayPageStates::new(),
            sequential_storage::cache::Uncached,
            sequential_storage::cache::key_pointers::ArrayKeyPointers::new(),
        )
    }
}

/// A [`CacheSpec`] without caches: every lookup scans its sub-map (for tests and tiny parts).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoCache;

impl CacheSpec for NoCache {
    type Cache = sequential_storage::cache::Cache<
        sequential_storage::cache::Uncached,
        sequential_storage::cache::Uncached,
        sequential_storage::cache::Uncached,
        FlashKey,
    >;
    const PAGES: usize = usize::MAX;

    fn make() -> Self::Cache {
        sequential_storage::cache::Cache::new_uncached()
    }
}

/// A [`StoreCache`] (names the cache sizes where a value is expected).
pub fn store_cache<const PAGES: usize, const KEYS: usize>() -> StoreCache<PAGES, KEYS> {
    StoreCache
}

/// Pages per sub-map the layout aims at: a lookup that misses the key cache scans one sub-map.
/// 16 halves the reads of a delta sync after a reboot against 32 (8 MiB part, 11,000 records:
/// 6.1 MiB read instead of 15.6 MiB) for the same cache RAM; 8 pages leave too little slack
/// per map and migrate more (a delta wrote 1.5x the bytes).
const MAP_PAGES: usize = 16;
/// Most sub-maps of a partition.
pub const MAX_MAPS: usize = 128;

/// Sub-map of a key.
fn map_of(key: &FlashKey, maps: usize) -> usize {
    let x = u64::from_be_bytes([0, 0, 0, key[0], key[1], key[2], key[3], key[4]]);
    ((x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % maps.max(1) as u64) as usize
}

type Res<T, F> = Result<T, FlashError<<F as embedded_storage_async::nor_flash::ErrorType>::Error>>;

fn decode_record<E>(payload: &[u8]) -> Result<(Record, &[u8]), FlashError<E>> {
    let (hdr, body) = split_payload(payload).ok_or(FlashError::Corrupted)?;
    let rec = postcard::from_bytes::<Record>(hdr).map_err(|_| FlashError::Corrupted)?;
    Ok((rec, body))
}

fn decode_rejected<E>(payload: &[u8]) -> Result<(RejectedEntry, &[u8]), FlashError<E>> {
    let (hdr, body) = split_payload(payload).ok_or(FlashError::Corrupted)?;
    let e = postcard::from_bytes::<RejectedEntry>(hdr).map_err(|_| FlashError::Corrupted)?;
    Ok((e, body))
}

impl<F: NorFlash, C: CacheSpec, const BUF: usize, const MAPS: usize> FlashStore<F, C, BUF, MAPS> {
    /// A store on `range` of `flash` (page aligned, at least two pages; give it room: about
    /// six times what a full refresh of the data set writes into an empty store, see the crate
    /// docs' Sizing, or sequential-storage migrates pages constantly).
    /// `cache` names the cache sizes ([`store_cache`]).
    /// Reads nothing yet: the store mounts on first use (or [`mount`](Self::mount)).
    ///
    /// The partition is cut into `pages / 16` sub-maps (at most [`MAX_MAPS`], at least one),
    /// each a sequential-storage map of its own; `MAPS` must be at least that many and
    /// `C::PAGES` at least the pages of one (`Config` otherwise).
    pub fn try_new(flash: F, range: Range<u32>, cache: C) -> Res<Self, F> {
        let _ = cache;
        let erase = F::ERASE_SIZE.max(1);
        if !(range.start as usize).is_multiple_of(erase) {
            return Err(FlashError::Config);
        }
        let pages = (range.end.saturating_sub(range.start) as usize) / erase;
        let maps = (pages / MAP_PAGES).clamp(1, MAX_MAPS);
        let map_pages = pages / maps;
        if maps > MAPS || map_pages > C::PAGES || map_pages < 2 {
            return Err(FlashError::Config);
        }
        let map_bytes = u32::try_from(map_pages * erase).map_err(|_| FlashError::Config)?;
        for i in 0..maps {
            let s = range.start + map_bytes * i as u32;
            MapConfig::<F>::try_new(s..s + map_bytes).map_err(|_| FlashError::Config)?;
        }
        let value_max = BUF.saturating_sub(16).min(F::ERASE_SIZE.saturating_sub(64));
        if value_max < 128 {
            return Err(FlashError::Config);
        }
        let cap = value_max - ITEM_HEAD;
        Ok(FlashStore {
            flash,
            caches: core::array::from_fn(|i| (i < maps).then(C::make)),
            start: range.start,
            maps,
            map_bytes,
            rbuf: Aligned([0; BUF]),
            wbuf: Aligned([0; BUF]),
            staged: [Staged::new(), Staged::new()],
            held: None,
            keys: KeySet::new(),
            rejected_hi: 0,
            index_buckets: (pages / 2).clamp(1, INDEX_BITS) as u32,
            value_max,
            inline_max: (cap / (2 * BUCKET as usize)).saturating_sub(ENTRY_HEAD),
            mounted: false,
            state: StateItem::default(),
            pending: PendingSet::default(),
            started: 0,
            txn: None,
        })
    }

    /// Reads the committed state and notes which buckets exist (one pass over the
    /// partition). Done on first use; call it to learn early whether the flash holds a
    /// readable store. Writes nothing.
    pub async fn mount(&mut self) -> Res<(), F> {
        self.held = None;
        for s in &mut self.staged {
            s.key = None;
        }
        let state = match on_map!(self, map_of(&STATE_KEY, self.maps), m => m
            .fetch_item::<&[u8]>(&mut self.rbuf.0, &STATE_KEY)
            .await)?
        {
            Some(bytes) => {
                let s: StateItem =
                    postcard::from_bytes(bytes).map_err(|_| FlashError::Corrupted)?;
                if s.version != LAYOUT_VERSION {
                    return Err(FlashError::Corrupted);
                }
                s
            }
            None => StateItem::default(),
        };
        let marker = on_map!(self, map_of(&MARKER_KEY, self.maps), m => m
            .fetch_item::<u32>(&mut self.rbuf.0, &MARKER_KEY)
            .await)?
        .unwrap_or(0);
        self.keys = KeySet::new();
        self.rejected_hi = 0;
        for i in 0..self.maps {
            on_map!(self, i, m => 'pass: {
                let mut it = match m.fetch_all_items(&mut self.rbuf.0).await {
                    Ok(it) => it,
                    Err(e) => break 'pass Err(e),
                };
                loop {
                    match it.next::<&[u8]>(&mut self.rbuf.0).await {
                        Ok(Some((key, _))) => {
                            self.keys.insert(&key);
                            if key[0] == REJECTED {
                                self.rejected_hi = self.rejected_hi.max(key_id(&key));
                            }
                        }
                        Ok(None) => break 'pass Ok(()),
                        Err(e) => break 'pass Err(e),
                    }
                }
            })?;
        }
        self.started = marker.max(state.committed);
        self.pending = state.pending.clone();
        self.state = state;
        self.txn = None;
        self.mounted = true;
        Ok(())
    }

    /// Erases the whole partition: an empty store.
    pub async fn format(&mut self) -> Res<(), F> {
        let end = self.start + self.map_bytes * self.maps as u32;
        self.flash
            .erase(self.start, end)
            .await
            .map_err(FlashError::Flash)?;
        for (i, c) in self.caches.iter_mut().enumerate() {
            *c = (i < self.maps).then(C::make);
        }
        self.mounted = false;
        self.mount().await
    }

    /// The flash (for tests and tools; writing to it behind the store's back is at your risk).
    pub fn flash_mut(&mut self) -> &mut F {
        self.held = None;
        &mut self.flash
    }

    /// Gives the flash back.
    pub fn into_flash(self) -> F {
        self.flash
    }

    /// Sub-maps the partition is cut into. For sizing and tests.
    pub fn sub_maps(&self) -> usize {
        self.maps
    }

    /// Ranges of aborted transactions the committed state remembers (at most [`MAX_HOLES`]
    /// before the store heals them). For diagnostics and tests.
    pub fn aborted_ranges(&self) -> usize {
        self.state.holes.len()
    }

    /// Largest record payload (postcard header, about 25 bytes, and body) kept inside a
    /// bucket; larger records get an item of their own. For sizing and tests.
    pub fn inline_max(&self) -> usize {
        self.inline_max
    }

    async fn ensure_mounted(&mut self) -> Res<(), F> {
        if !self.mounted {
            self.mount().await?;
        }
        Ok(())
    }

    fn view(&self) -> View {
        View {
            committed: self.state.committed,
            holes: self.state.holes.clone(),
            open: self.txn.map(|t| t.tag),
        }
    }

    fn open(&self) -> Res<Txn, F> {
        self.txn.ok_or(FlashError::NoTransaction)
    }

    /// Whether record `local` is known absent without reading flash: an id never committed and
    /// not (yet) written by the open transaction. Ids are given in increasing order.
    fn known_absent(&self, local: LocalId) -> bool {
        local.0 >= self.state_floor()
            && self
                .txn
                .is_none_or(|t| t.fresh_hi.is_none_or(|h| local.0 > h))
    }

    fn state_floor(&self) -> u32 {
        self.state.floor.max(self.state.device.next_local)
    }

    /// Persists "transaction `tag` started" before its first item, so that after a power cut
    /// its number is never given again (its items stay invalid for good).
    async fn mark(&mut self) -> Res<Txn, F> {
        let mut txn = self.open()?;
        if !txn.marked {
            // Never hand this number out again in this session, whatever happens below.
            self.started = self.started.max(txn.tag);
            self.held = None;
            // Only a marker that is on flash lets items of this transaction be written: a
            // failed marker write is retried by the next write.
            on_map!(self, map_of(&MARKER_KEY, self.maps), m => m
                .store_item(&mut self.rbuf.0, &MARKER_KEY, &txn.tag)
                .await)?;
            txn.marked = true;
            self.txn = Some(txn);
        }
        Ok(txn)
    }

    /// Reads the flash item of `key` into `rbuf`; returns the range of its value there.
    async fn fetch_flash(&mut self, key: &FlashKey) -> Res<Option<Range<usize>>, F> {
        if let Some((k, r)) = &self.held {
            if k == key {
                return Ok(Some(r.clone()));
            }
        }
        self.held = None;
        let base = self.rbuf.0.as_ptr() as usize;
        match on_map!(self, map_of(key, self.maps), m => m
            .fetch_item::<&[u8]>(&mut self.rbuf.0, key)
            .await)?
        {
            None => Ok(None),
            Some(v) => {
                let start = (v.as_ptr() as usize).wrapping_sub(base);
                let r = start..start + v.len();
                self.held = Some((*key, r.clone()));
                Ok(Some(r))
            }
        }
    }

    /// The current item of `key` (staged or on flash) in `rbuf`. Reads flash only for keys
    /// that exist there.
    async fn fetch(&mut self, key: &FlashKey) -> Res<Option<Range<usize>>, F> {
        for s in &self.staged {
            if s.key == Some(*key) {
                let n = s.len;
                self.held = None;
                self.rbuf.0[..n].copy_from_slice(&s.buf.0[..n]);
                return Ok(Some(0..n));
            }
        }
        if !self.keys.may_exist(key) {
            return Ok(None);
        }
        self.fetch_flash(key).await
    }

    fn item(&self, at: Range<usize>) -> Res<Item<'_>, F> {
        Item::parse(self.rbuf.0.get(at).ok_or(FlashError::Logic)?).ok_or(FlashError::Corrupted)
    }

    /// The visible payload of a versioned (single) item, as a range of `rbuf`.
    async fn visible(&mut self, key: &FlashKey) -> Res<Option<Range<usize>>, F> {
        let Some(len) = self.fetch(key).await? else {
            return Ok(None);
        };
        let view = self.view();
        let item = self.item(len)?;
        Ok(item.visible(&view).map(|p| self.range_of(p)))
    }

    fn range_of(&self, p: &[u8]) -> Range<usize> {
        let base = self.rbuf.0.as_ptr() as usize;
        let start = (p.as_ptr() as usize).wrapping_sub(base);
        start..start + p.len()
    }

    /// The visible record `(table, local)`: its payload in `rbuf`.
    async fn find_record(&mut self, table: TableId, local: LocalId) -> Res<Found, F> {
        let Some(r) = self.fetch(&bucket_key(local)).await? else {
            return Ok(Found::Absent);
        };
        let view = self.view();
        let item = self.item(r)?;
        let e = bucket_find(
            &item,
            view.is_visible(item.tag),
            table.0,
            u64::from(local.0),
        )
        .map_err(|()| FlashError::Corrupted)?;
        match e {
            None => Ok(Found::Absent),
            Some(e) if e.mark == STUB => {
                let r = self
                    .visible(&spilled_key(local))
                    .await?
                    .ok_or(FlashError::Corrupted)?;
                Ok(Found::At(r))
            }
            Some(e) => Ok(Found::At(self.range_of(e.data))),
        }
    }

    /// What a write of `(table, local)` replaces.
    async fn old(&mut self, table: TableId, local: LocalId) -> Res<Old, F> {
        let none = Old {
            rec: None,
            stub: false,
            committed_stub: false,
        };
        if self.known_absent(local) {
            return Ok(none);
        }
        let Some(r) = self.fetch(&bucket_key(local)).await? else {
            return Ok(none);
        };
        let view = self.view();
        let open = self.txn.map(|t| t.tag);
        let item = self.item(r)?;
        let id = u64::from(local.0);
        let corrupt = |()| FlashError::Corrupted;
        let committed = Some(item.tag) != open && view.is_committed(item.tag);
        let committed_stub = bucket_find(&item, committed, table.0, id)
            .map_err(corrupt)?
            .is_some_and(|e| e.mark == STUB);
        let (rec, stub) =
            match bucket_find(&item, view.is_visible(item.tag), table.0, id).map_err(corrupt)? {
                None => (None, false),
                Some(e) if e.mark == STUB => (None, true),
                Some(e) => (Some(decode_record(e.data)?.0), false),
            };
        let rec = if stub {
            let r = self
                .visible(&spilled_key(local))
                .await?
                .ok_or(FlashError::Corrupted)?;
            Some(decode_record(&self.rbuf.0[r])?.0)
        } else {
            rec
        };
        Ok(Old {
            rec,
            stub,
            committed_stub,
        })
    }

    /// Puts `(table, id)` into the open transaction's overlay of bucket `key`, in staging slot
    /// `slot` (writing out what the slot held for another bucket first). `too_big`: the error
    /// when the bucket outgrows an item.
    #[allow(clippy::too_many_arguments)]
    async fn stage(
        &mut self,
        slot: usize,
        key: FlashKey,
        table: u8,
        id: u64,
        mark: u16,
        data: Data,
        too_big: FlashError<F::Error>,
    ) -> Res<(), F> {
        let txn = self.open()?;
        if self.staged[slot].key.is_some_and(|k| k != key) {
            self.flush(slot).await?;
        }
        let was_staged = self.staged[slot].key.is_some();
        let old = self.fetch(&key).await?;
        let view = self.view();
        let local_bytes;
        let data: &[u8] = match &data {
            Data::None => &[],
            Data::Wbuf(r) => self.wbuf.0.get(r.clone()).ok_or(FlashError::Logic)?,
            Data::Local(l) => {
                local_bytes = l.to_le_bytes();
                &local_bytes
            }
            Data::Byte(b) => {
                local_bytes = [*b, 0, 0, 0];
                &local_bytes[..1]
            }
        };
        let new = Entry {
            table,
            id,
            mark,
            data,
        };
        let empty: &[u8] = &[];
        let (keep, fold, base) = match &old {
            None => (empty, empty, empty),
            Some(r) => {
                let v = self.rbuf.0.get(r.clone()).ok_or(FlashError::Logic)?;
                let item = Item::parse(v).ok_or(FlashError::Corrupted)?;
                let ov = item.new.unwrap_or(empty);
                let base = item.prev.unwrap_or(empty);
                if item.tag == txn.tag {
                    (ov, empty, base)
                } else if view.is_committed(item.tag) {
                    (empty, ov, base)
                } else {
                    (empty, empty, base)
                }
            }
        };
        let dst = &mut self.staged[slot];
        match write_bucket(
            &mut dst.buf.0,
            self.value_max,
            txn.tag,
            keep,
            fold,
            base,
            &new,
        ) {
            Some(n) => {
                dst.len = n;
                dst.key = Some(key);
                if slot == REC_SLOT {
                    let pending = bucket_pending(&dst.buf.0[..n], true);
                    self.pending.set(key_id(&key), pending);
                }
                Ok(())
            }
            None => {
                if was_staged {
                    // Put back what was staged (its copy is in `rbuf`).
                    if let Some(r) = old {
                        let n = r.len();
                        dst.buf.0[..n].copy_from_slice(&self.rbuf.0[r]);
                        dst.len = n;
                    }
                }
                Err(too_big)
            }
        }
    }

    /// Writes staging slot `slot` to flash.
    async fn flush(&mut self, slot: usize) -> Res<(), F> {
        let Some(key) = self.staged[slot].key else {
            return Ok(());
        };
        self.mark().await?;
        self.held = None;
        let n = self.staged[slot].len;
        let value: &[u8] = &self.staged[slot].buf.0[..n];
        on_map!(self, map_of(&key, self.maps), m => m
            .store_item(&mut self.rbuf.0, &key, &value)
            .await)?;
        self.keys.insert(&key);
        self.staged[slot].key = None;
        Ok(())
    }

    async fn flush_all(&mut self) -> Res<(), F> {
        self.flush(REC_SLOT).await?;
        self.flush(IDX_SLOT).await
    }

    /// Adds (or with `local: None` removes) the index entry of `(table, server)`.
    async fn stage_index(
        &mut self,
        table: TableId,
        server: ServerId,
        local: Option<LocalId>,
    ) -> Res<(), F> {
        let key = index_key(index_bucket(server.0, self.index_buckets));
        let (mark, data) = match local {
            Some(l) => (4, Data::Local(l.0)),
            None => (GONE, Data::None),
        };
        // An index bucket that outgrows an item: the partition holds more records than its
        // index was sized for.
        self.stage(
            IDX_SLOT,
            key,
            table.0,
            server.0,
            mark,
            data,
            FlashError::Full,
        )
        .await
    }

    /// Writes a new version of single item `key` in the open transaction: `new` is `[payload
    /// in wbuf at ITEM_HEAD..ITEM_HEAD + new_len]` or a tombstone. `absent`: the key is known
    /// to have no committed version (skips reading it).
    async fn write_versioned(
        &mut self,
        key: &FlashKey,
        new_len: Option<usize>,
        absent: bool,
    ) -> Res<(), F> {
        let txn = self.mark().await?;
        let payload_end = ITEM_HEAD + new_len.unwrap_or(0);
        let mut end = payload_end;
        let mut has_prev = false;
        if !absent {
            if let Some(len) = self.fetch(key).await? {
                let view = self.view();
                let item = self.item(len)?;
                if let Some(prev) = item.committed_for(&view, txn.tag) {
                    let r = self.range_of(prev);
                    end = payload_end + r.len();
                    let dst = self
                        .wbuf
                        .0
                        .get_mut(payload_end..end)
                        .ok_or(FlashError::TooLarge)?;
                    dst.copy_from_slice(&self.rbuf.0[r]);
                    has_prev = true;
                }
            }
        }
        if end > self.value_max {
            return Err(FlashError::TooLarge);
        }
        write_head(&mut self.wbuf.0, txn.tag, new_len, has_prev).ok_or(FlashError::TooLarge)?;
        self.held = None;
        let value: &[u8] = &self.wbuf.0[..end];
        on_map!(self, map_of(key, self.maps), m => m
            .store_item(&mut self.rbuf.0, key, &value)
            .await)?;
        if key[0] == REJECTED {
            self.rejected_hi = self.rejected_hi.max(key_id(key));
        }
        Ok(())
    }

    /// After a write of the open transaction found the flash full: whether healing the
    /// items aborted transactions left (they may hold much of the flash after a sync that did
    /// not fit) can free room. If so, heals them and the caller retries once.
    async fn heal_for_room(&mut self) -> Res<bool, F> {
        let Some(txn) = self.txn else {
            return Ok(false);
        };
        let upto = txn.tag - 1;
        if upto <= self.state.committed && self.state.holes.is_empty() {
            return Ok(false);
        }
        self.heal(upto).await?;
        Ok(true)
    }

    fn note_local(&mut self, local: LocalId) {
        let floor = self.state_floor();
        if let Some(t) = self.txn.as_mut() {
            t.max_local = Some(t.max_local.map_or(local.0, |m| m.max(local.0)));
            if local.0 >= floor {
                t.fresh_hi = Some(t.fresh_hi.map_or(local.0, |m| m.max(local.0)));
            }
        }
    }

    /// Forgets the aborted transactions up to number `upto`: rewrites every item one of them
    /// wrote last to its committed version, then writes a state item with `upto` committed and
    /// no holes. Items of an open transaction (numbered above `upto`, on flash or staged) are
    /// left alone.
    async fn heal(&mut self, upto: u32) -> Res<(), F> {
        let view = View {
            committed: self.state.committed,
            holes: self.state.holes.clone(),
            open: None,
        };
        let dirty_tag = |tag: u32| !view.is_committed(tag) && tag <= upto;
        // Each pass lists, exactly, the dirty keys in `[lo, bound)` (the smallest ones, as many
        // as fit), heals them, and the next pass starts at `bound`.
        let mut lo: Option<FlashKey> = None;
        loop {
            let mut dirty: Vec<FlashKey, HEAL_BATCH> = Vec::new();
            let mut bound: Option<FlashKey> = None;
            self.held = None;
            let mut damaged = false;
            for i in 0..self.maps {
                on_map!(self, i, m => 'pass: {
                    let mut it = match m.fetch_all_items(&mut self.rbuf.0).await {
                        Ok(it) => it,
                        Err(e) => break 'pass Err(e),
                    };
                    loop {
                        let (key, v) = match it.next::<&[u8]>(&mut self.rbuf.0).await {
                            Ok(Some(x)) => x,
                            Ok(None) => break 'pass Ok(()),
                            Err(e) => break 'pass Err(e),
                        };
                        if key == STATE_KEY
                            || key == MARKER_KEY
                            || lo.is_some_and(|l| key < l)
                            || bound.is_some_and(|b| key >= b)
                        {
                            continue;
                        }
                        let Some(tag) = Item::parse(v).map(|item| item.tag) else {
                            damaged = true;
                            continue;
                        };
                        let pos = dirty.binary_search(&key);
                        match (dirty_tag(tag), pos) {
                            (false, Ok(p)) => {
                                dirty.remove(p);
                            }
                            (true, Err(p)) => {
                                if dirty.is_full() {
                                    match dirty.last() {
                                        Some(last) if *last > key => {
                                            bound = Some(*last);
                                            dirty.pop();
                                        }
                                        _ => {
                                            bound = Some(key);
                                            continue;
                                        }
                                    }
                                }
                                if dirty.insert(p.min(dirty.len()), key).is_err() {
                                    bound = Some(key);
                                }
                            }
                            _ => {}
                        }
                    }
                })?;
            }
            if damaged {
                return Err(FlashError::Corrupted);
            }
            for key in &dirty {
                let Some(len) = self.fetch_flash(key).await? else {
                    continue;
                };
                let item = self.item(len)?;
                if !dirty_tag(item.tag) {
                    continue;
                }
                let bucket = key[0] == RECORDS || key[0] == INDEX;
                // A bucket keeps its base (and an empty overlay); a single item its `prev`.
                let keep = item.prev.map(|p| self.range_of(p));
                let new_len = match (&keep, bucket) {
                    (_, true) => Some(keep.as_ref().map_or(0, |r| r.len())),
                    (Some(r), false) => Some(r.len()),
                    (None, false) => None,
                };
                let n = new_len.unwrap_or(0);
                if let Some(r) = keep {
                    self.wbuf
                        .0
                        .get_mut(ITEM_HEAD..ITEM_HEAD + n)
                        .ok_or(FlashError::Logic)?
                        .copy_from_slice(&self.rbuf.0[r]);
                }
                let value_len = if bucket {
                    // Overlay empty, base = the committed entries.
                    write_head(&mut self.wbuf.0, 0, Some(0), true).ok_or(FlashError::Logic)?;
                    ITEM_HEAD + n
                } else {
                    write_head(&mut self.wbuf.0, 0, new_len, false).ok_or(FlashError::Logic)?;
                    ITEM_HEAD + n
                };
                self.held = None;
                let value: &[u8] = &self.wbuf.0[..value_len];
                on_map!(self, map_of(key, self.maps), m => m
            .store_item(&mut self.rbuf.0, key, &value)
            .await)?;
            }
            match bound {
                None => break,
                Some(b) => lo = Some(b),
            }
        }
        let mut state = self.state.clone();
        state.committed = upto;
        state.holes.clear();
        self.write_state(&state).await?;
        self.state = state;
        Ok(())
    }

    async fn write_state(&mut self, state: &StateItem) -> Res<(), F> {
        let bytes = postcard::to_slice(state, &mut self.wbuf.0).map_err(|_| FlashError::Logic)?;
        let value: &[u8] = bytes;
        self.held = None;
        on_map!(self, map_of(&STATE_KEY, self.maps), m => m
            .store_item(&mut self.rbuf.0, &STATE_KEY, &value)
            .await)?;
        Ok(())
    }

    /// The record with server id `server`, through the index.
    async fn by_index(&mut self, table: TableId, server: ServerId) -> Res<Option<Record>, F> {
        let key = index_key(index_bucket(server.0, self.index_buckets));
        let Some(r) = self.fetch(&key).await? else {
            return Ok(None);
        };
        let view = self.view();
        let item = self.item(r)?;
        let local = match bucket_find(&item, view.is_visible(item.tag), table.0, server.0)
            .map_err(|()| FlashError::Corrupted)?
        {
            None => return Ok(None),
            Some(e) => {
                let b: [u8; 4] = e.data.try_into().map_err(|_| FlashError::Corrupted)?;
                LocalId(u32::from_le_bytes(b))
            }
        };
        Ok(self
            .get_inner(table, local)
            .await?
            .filter(|r| r.server == Some(server)))
    }

    async fn put_once(&mut self, rec: &Record, body: Option<&[u8]>) -> Res<(), F> {
        self.ensure_mounted().await?;
        self.open()?;
        if rec.table.0 > MAX_TABLE {
            return Err(FlashError::BadTable);
        }
        if let Some(t) = self.txn.as_mut() {
            // Noted before the write: a failed put leaves the record as it was or as put, and
            // a wrong "mixed" only costs the sweep its walk.
            t.marks = match t.marks {
                Marks::None => Marks::All(rec.mark),
                Marks::All(m) if m == rec.mark => Marks::All(m),
                _ => Marks::Mixed,
            };
        }
        let old = self.old(rec.table, rec.local).await?;
        if old.rec.is_some_and(|o| o.meta.is_pending()) && !rec.meta.is_pending() {
            if let Some(t) = self.txn.as_mut() {
                t.cleared = t.cleared.saturating_add(1);
            }
        }
        // The payload, at wbuf[ITEM_HEAD..ITEM_HEAD + len].
        let len = match body {
            Some(b) => {
                write_payload(&mut self.wbuf.0[ITEM_HEAD..], rec, b).ok_or(FlashError::TooLarge)?
            }
            None => {
                if old.rec.is_none() {
                    return Err(FlashError::NoBody);
                }
                let Found::At(r) = self.find_record(rec.table, rec.local).await? else {
                    return Err(FlashError::NoBody);
                };
                let (_, old_body) = decode_record(&self.rbuf.0[r.clone()])?;
                let body_range = r.end - old_body.len()..r.end;
                let rest = self
                    .wbuf
                    .0
                    .get_mut(ITEM_HEAD + 1..)
                    .ok_or(FlashError::TooLarge)?;
                let hl = postcard::to_slice(rec, rest)
                    .map_err(|_| FlashError::TooLarge)?
                    .len();
                let n = body_range.len();
                rest.get_mut(hl..hl + n)
                    .ok_or(FlashError::TooLarge)?
                    .copy_from_slice(&self.rbuf.0[body_range]);
                self.wbuf.0[ITEM_HEAD] = u8::try_from(hl).map_err(|_| FlashError::TooLarge)?;
                1 + hl + n
            }
        };
        let key = bucket_key(rec.local);
        let id = u64::from(rec.local.0);
        if old.stub || len > self.inline_max {
            // Too large for the bucket: an item of its own, a stub in the bucket.
            self.write_versioned(&spilled_key(rec.local), Some(len), !old.committed_stub)
                .await?;
            let pending = u8::from(rec.meta.is_pending());
            self.stage(
                REC_SLOT,
                key,
                rec.table.0,
                id,
                STUB,
                Data::Byte(pending),
                FlashError::TooLarge,
            )
            .await?;
        } else {
            let mark = u16::try_from(len).map_err(|_| FlashError::TooLarge)?;
            self.stage(
                REC_SLOT,
                key,
                rec.table.0,
                id,
                mark,
                Data::Wbuf(ITEM_HEAD..ITEM_HEAD + len),
                FlashError::TooLarge,
            )
            .await?;
        }
        let old_server = old.rec.and_then(|r| r.server);
        if rec.server != old_server {
            if let Some(o) = old_server {
                self.stage_index(rec.table, o, None).await?;
            }
            if let Some(s) = rec.server {
                self.stage_index(rec.table, s, Some(rec.local)).await?;
            }
        }
        self.note_local(rec.local);
        Ok(())
    }

    async fn remove_once(&mut self, table: TableId, local: LocalId) -> Res<(), F> {
        self.ensure_mounted().await?;
        self.open()?;
        if table.0 > MAX_TABLE {
            return Err(FlashError::BadTable);
        }
        let old = self.old(table, local).await?;
        let Some(rec) = old.rec else {
            return Ok(());
        };
        if rec.meta.is_pending() {
            if let Some(t) = self.txn.as_mut() {
                t.cleared = t.cleared.saturating_add(1);
            }
        }
        if old.stub {
            self.write_versioned(&spilled_key(local), None, false)
                .await?;
        }
        self.stage(
            REC_SLOT,
            bucket_key(local),
            table.0,
            u64::from(local.0),
            GONE,
            Data::None,
            FlashError::TooLarge,
        )
        .await?;
        if let Some(s) = rec.server {
            self.stage_index(table, s, None).await?;
        }
        self.note_local(local);
        Ok(())
    }

    async fn push_rejected_once(&mut self, entry: &RejectedEntry, body: &[u8]) -> Res<(), F> {
        self.ensure_mounted().await?;
        let txn = self.open()?;
        let seq = txn.rejected.checked_add(1).ok_or(FlashError::Logic)?;
        let entry = RejectedEntry { seq, ..*entry };
        let new_len = write_payload(&mut self.wbuf.0[ITEM_HEAD..], &entry, body)
            .ok_or(FlashError::TooLarge)?;
        let absent = seq > self.rejected_hi;
        self.write_versioned(&rejected_key(seq), Some(new_len), absent)
            .await?;
        if let Some(t) = self.txn.as_mut() {
            t.rejected = seq;
        }
        Ok(())
    }

    async fn get_inner(&mut self, table: TableId, local: LocalId) -> Res<Option<Record>, F> {
        if table.0 > MAX_TABLE || self.known_absent(local) {
            return Ok(None);
        }
        match self.find_record(table, local).await? {
            Found::Absent => Ok(None),
            Found::At(r) => Ok(Some(decode_record(&self.rbuf.0[r])?.0)),
        }
    }

    /// Lists again the buckets holding pending records (one read of every bucket), after the
    /// list was dropped and a transaction confirmed or removed many of them.
    async fn rebuild_pending(&mut self) -> Res<(), F> {
        let mut set = PendingSet::default();
        let end = self.id_bound().div_ceil(u64::from(BUCKET));
        for b in 0..end {
            let b = u32::try_from(b).map_err(|_| FlashError::Logic)?;
            let Some(r) = self.fetch(&bucket_key(LocalId(b * BUCKET))).await? else {
                continue;
            };
            let view = self.view();
            let bytes = self.rbuf.0.get(r).ok_or(FlashError::Logic)?;
            let applies = Item::parse(bytes).is_none_or(|i| view.is_visible(i.tag));
            if bucket_pending(bytes, applies) {
                set.set(b, true);
            }
        }
        self.pending = set;
        Ok(())
    }

    /// The next bucket at or after `bucket` that may hold pending records.
    fn next_pending(&self, bucket: u64) -> Option<u64> {
        if self.pending.all {
            return Some(bucket);
        }
        self.pending
            .buckets
            .iter()
            .map(|&b| u64::from(b))
            .find(|&b| b >= bucket)
    }

    /// One past the highest local id a record may have.
    fn id_bound(&self) -> u64 {
        let mut bound = u64::from(self.state_floor());
        if let Some(h) = self.txn.and_then(|t| t.fresh_hi) {
            bound = bound.max(u64::from(h) + 1);
        }
        let mut last = self.keys.max_bucket;
        for s in &self.staged {
            if let Some(k) = s.key.filter(|k| k[0] == RECORDS) {
                last = Some(last.map_or(key_id(&k), |m| m.max(key_id(&k))));
            }
        }
        let stored = last.map_or(0, |b| (u64::from(b) + 1) * u64::from(BUCKET));
        bound.min(stored)
    }
}

impl<F: NorFlash, C: CacheSpec, const BUF: usize, const MAPS: usize> LocalStore
    for FlashStore<F, C, BUF, MAPS>
{
    type Error = FlashError<F::Error>;

    async fn load_state(&mut self) -> Result<DeviceState, Self::Error> {
        self.ensure_mounted().await?;
        Ok(self.state.device)
    }

    async fn begin(&mut self) -> Result<(), Self::Error> {
        self.ensure_mounted().await?;
        if self.txn.is_some() {
            return Ok(());
        }
        if self.started > self.state.committed && self.state.holes.len() >= MAX_HOLES {
            self.heal(self.started).await?;
        }
        self.txn = Some(Txn {
            tag: self.started.checked_add(1).ok_or(FlashError::Logic)?,
            marked: false,
            rejected: self.state.rejected,
            fresh_hi: None,
            max_local: None,
            fresh: self.keys.max_bucket.is_none(),
            marks: Marks::None,
            cleared: 0,
        });
        Ok(())
    }

    async fn commit(&mut self, state: &DeviceState) -> Result<(), Self::Error> {
        self.ensure_mounted().await?;
        if self.txn.is_none() {
            self.begin().await?;
        }
        match self.flush_all().await {
            Err(FlashError::Full) if self.heal_for_room().await? => self.flush_all().await?,
            r => r?,
        }
        if self.pending.all && self.open()?.cleared >= REBUILD_AFTER {
            self.rebuild_pending().await?;
        }
        let txn = self.open()?;
        let mut next = self.state.clone();
        next.pending = self.pending.clone();
        next.device = *state;
        next.rejected = txn.rejected;
        if let Some(m) = txn.max_local {
            next.floor = next.floor.max(m.saturating_add(1));
        }
        if !txn.marked && next == self.state {
            self.txn = None;
            return Ok(());
        }
        next.committed = txn.tag;
        if txn.tag > self.state.committed + 1 {
            let hole = (self.state.committed + 1, txn.tag - 1);
            match next.holes.last_mut() {
                Some(last) if last.1 + 1 == hole.0 => last.1 = hole.1,
                _ => next.holes.push(hole).map_err(|_| FlashError::Logic)?,
            }
        }
        match self.write_state(&next).await {
            Err(FlashError::Full) if self.heal_for_room().await? => {
                // Healing committed the aborted numbers below this transaction.
                next.holes = self.state.holes.clone();
                self.write_state(&next).await?;
            }
            r => r?,
        }
        self.state = next;
        self.started = self.started.max(txn.tag);
        self.txn = None;
        Ok(())
    }

    async fn rollback(&mut self) -> Result<(), Self::Error> {
        self.txn = None;
        self.pending = self.state.pending.clone();
        for s in &mut self.staged {
            s.key = None;
        }
        Ok(())
    }

    async fn get(&mut self, table: TableId, local: LocalId) -> Result<Option<Record>, Self::Error> {
        self.ensure_mounted().await?;
        self.get_inner(table, local).await
    }

    async fn get_body(
        &mut self,
        table: TableId,
        local: LocalId,
        buf: &mut [u8],
    ) -> Result<Option<usize>, Self::Error> {
        self.ensure_mounted().await?;
        if table.0 > MAX_TABLE || self.known_absent(local) {
            return Ok(None);
        }
        match self.find_record(table, local).await? {
            Found::Absent => Ok(None),
            Found::At(r) => {
                let (_, body) = decode_record(&self.rbuf.0[r])?;
                let dst = buf
                    .get_mut(..body.len())
                    .ok_or(FlashError::BufferTooSmall)?;
                dst.copy_from_slice(body);
                Ok(Some(body.len()))
            }
        }
    }

    async fn by_server(
        &mut self,
        table: TableId,
        server: ServerId,
    ) -> Result<Option<Record>, Self::Error> {
        self.ensure_mounted().await?;
        if table.0 > MAX_TABLE {
            return Ok(None);
        }
        self.by_index(table, server).await
    }

    async fn put(&mut self, rec: &Record, body: Option<&[u8]>) -> Result<(), Self::Error> {
        match self.put_once(rec, body).await {
            Err(FlashError::Full) if self.heal_for_room().await? => self.put_once(rec, body).await,
            r => r,
        }
    }

    async fn remove(&mut self, table: TableId, local: LocalId) -> Result<(), Self::Error> {
        match self.remove_once(table, local).await {
            Err(FlashError::Full) if self.heal_for_room().await? => {
                self.remove_once(table, local).await
            }
            r => r,
        }
    }

    async fn push_rejected(
        &mut self,
        entry: &RejectedEntry,
        body: &[u8],
    ) -> Result<(), Self::Error> {
        match self.push_rejected_once(entry, body).await {
            Err(FlashError::Full) if self.heal_for_room().await? => {
                self.push_rejected_once(entry, body).await
            }
            r => r,
        }
    }

    async fn next(
        &mut self,
        table: TableId,
        after: Option<LocalId>,
        filter: Filter,
    ) -> Result<Option<Record>, Self::Error> {
        self.ensure_mounted().await?;
        if table.0 > MAX_TABLE {
            return Ok(None);
        }
        let mut id = match after {
            None => 0u64,
            Some(a) => u64::from(a.0) + 1,
        };
        let end = self.id_bound();
        let b = u64::from(BUCKET);
        while id < end {
            if filter == Filter::Pending {
                // Only buckets listed as holding pending records.
                match self.next_pending(id / b) {
                    None => return Ok(None),
                    Some(nb) => id = id.max(nb * b),
                }
                if id >= end {
                    break;
                }
            }
            let bucket_end = (id / b + 1) * b;
            // Local ids fit in u32 (`id < end <= u32::MAX + 1`).
            let local = LocalId(u32::try_from(id).map_err(|_| FlashError::Logic)?);
            if self.fetch(&bucket_key(local)).await?.is_some() {
                while id < bucket_end.min(end) {
                    let local = LocalId(u32::try_from(id).map_err(|_| FlashError::Logic)?);
                    if let Found::At(r) = self.find_record(table, local).await? {
                        let rec = decode_record(&self.rbuf.0[r])?.0;
                        if filter.accepts(&rec) {
                            return Ok(Some(rec));
                        }
                    }
                    id += 1;
                }
            }
            id = bucket_end;
        }
        Ok(None)
    }

    /// A full refresh into a store that was empty when the transaction began, every record of
    /// which carries `mark` (a new device's first sync), has nothing to sweep: skips the walk
    /// over every bucket. Otherwise walks the table as the trait's default does.
    async fn sweep(&mut self, table: TableId, mark: u32) -> Result<(), Self::Error> {
        self.ensure_mounted().await?;
        if let Some(t) = self.txn {
            if t.fresh && (t.marks == Marks::None || t.marks == Marks::All(mark)) {
                return Ok(());
            }
        }
        ferrysync_core::store::sweep_by_walking(self, table, mark).await
    }

    async fn next_rejected(
        &mut self,
        after: Option<u32>,
        buf: &mut [u8],
    ) -> Result<Option<(RejectedEntry, usize)>, Self::Error> {
        self.ensure_mounted().await?;
        let count = self.txn.map_or(self.state.rejected, |t| t.rejected);
        let mut seq = after.map_or(1, |a| a.saturating_add(1));
        while seq >= 1 && seq <= count {
            if let Some(r) = self.visible(&rejected_key(seq)).await? {
                let (e, body) = decode_rejected(&self.rbuf.0[r])?;
                let dst = buf
                    .get_mut(..body.len())
                    .ok_or(FlashError::BufferTooSmall)?;
                dst.copy_from_slice(body);
                return Ok(Some((e, body.len())));
            }
            seq += 1;
        }
        Ok(None)
    }

    async fn clear_rejected(&mut self) -> Result<(), Self::Error> {
        self.ensure_mounted().await?;
        let mut txn = self.open()?;
        txn.rejected = 0;
        self.txn = Some(txn);
        Ok(())
    }
}
