//! [`FlashStore`]: a [`LocalStore`] on a sequential-storage map.

use crate::error::FlashError;
use crate::layout::{
    parse_record_key, record_key, rejected_key, server_key, split_payload, write_head,
    write_payload, FlashKey, Item, StateItem, View, INDEX_LEN, ITEM_HEAD, LAYOUT_VERSION,
    MARKER_KEY, MAX_HOLES, MAX_TABLE, STATE_KEY,
};
use core::ops::Range;
use embedded_storage_async::nor_flash::NorFlash;
use ferrysync_core::id::{LocalId, ServerId, TableId};
use ferrysync_core::store::{DeviceState, Filter, LocalStore, Record, RejectedEntry};
use heapless::Vec;
use sequential_storage::cache::CacheImpl;
use sequential_storage::map::{MapConfig, MapStorage};

/// A byte buffer aligned for flash drivers that DMA from RAM (and for the mock flash, which
/// checks it).
#[repr(C, align(4))]
struct Aligned<const N: usize>([u8; N]);

/// Tables whose highest server id the store tracks (to answer "absent" without a scan).
const TRACKED_TABLES: usize = MAX_TABLE as usize + 1;
/// Recent `by_server` answers remembered (a detail's parent is asked for again and again).
const MEMO: usize = 4;
/// Keys healed per pass over the flash when the store forgets aborted transactions.
const HEAL_BATCH: usize = 32;

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
}

/// The walk [`LocalStore::next`] keeps between calls: the records of `table` passing `filter`
/// with a local id in `(start, bound)`, all of them, in order.
struct Cursor<const K: usize> {
    active: bool,
    table: TableId,
    filter: Filter,
    start: Option<u32>,
    bound: Option<u32>,
    list: Vec<Record, K>,
}

impl<const K: usize> Cursor<K> {
    const fn new() -> Self {
        Cursor {
            active: false,
            table: TableId(0),
            filter: Filter::All,
            start: None,
            bound: None,
            list: Vec::new(),
        }
    }

    fn reset(&mut self, table: TableId, filter: Filter, start: Option<u32>) {
        self.active = true;
        self.table = table;
        self.filter = filter;
        self.start = start;
        self.bound = None;
        self.list.clear();
    }

    fn above_start(&self, local: u32) -> bool {
        self.start.is_none_or(|s| local > s)
    }

    /// The latest version of record `local` (`None`: absent, or it fails the filter).
    fn offer(&mut self, local: u32, rec: Option<&Record>) {
        if self.bound.is_some_and(|b| local >= b) || !self.above_start(local) {
            return;
        }
        let pos = self.list.iter().position(|r| r.local.0 >= local);
        let here = pos.is_some_and(|p| self.list[p].local.0 == local);
        match (rec, pos) {
            (None, Some(p)) if here => {
                self.list.remove(p);
            }
            (None, _) => {}
            (Some(r), Some(p)) if here => self.list[p] = *r,
            (Some(r), pos) => {
                if self.list.is_full() {
                    match self.list.last() {
                        Some(last) if last.local.0 > local => {
                            self.bound = Some(last.local.0);
                            self.list.pop();
                        }
                        _ => {
                            self.bound = Some(local);
                            return;
                        }
                    }
                }
                let p = pos.unwrap_or(self.list.len()).min(self.list.len());
                // Room was made above; K == 0 leaves the cursor always empty and bounded.
                if self.list.insert(p, *r).is_err() {
                    self.bound = Some(local);
                }
            }
        }
    }

    /// A write of `rec` (or its removal) by the store itself.
    fn on_write(&mut self, table: TableId, local: LocalId, rec: Option<&Record>) {
        if self.active && self.table == table {
            let rec = rec.filter(|r| self.filter.accepts(r));
            self.offer(local.0, rec);
        }
    }

    /// `Some(answer)` when the cursor knows the answer; `None` when a pass over the flash is
    /// needed, from `start` given back in the `Err`.
    fn answer(
        &self,
        table: TableId,
        after: Option<u32>,
        filter: Filter,
    ) -> Result<Option<Record>, Option<u32>> {
        let covers = self.active
            && self.table == table
            && self.filter == filter
            && match (self.start, after) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(s), Some(a)) => a >= s,
            };
        if !covers {
            return Err(after);
        }
        if let Some(r) = self
            .list
            .iter()
            .find(|r| after.is_none_or(|a| r.local.0 > a))
        {
            return Ok(Some(*r));
        }
        match self.bound {
            None => Ok(None),
            Some(b) if after.is_some_and(|a| a >= b) => Err(after),
            Some(b) => Err(Some(b - 1)),
        }
    }
}

/// A [`LocalStore`] on NOR flash: records, the rejected log and the device state as items of
/// one sequential-storage map, with transactions that survive a power cut at any byte.
///
/// - `F`: the flash (the async `NorFlash` of embedded-storage-async).
/// - `C`: sequential-storage's cache for the map's keys ([`FlashKey`]); see [`StoreCache`].
///   A key-pointer cache as large as the number of records makes every lookup a direct read;
///   a smaller one still works, with lookups that scan the flash.
/// - `BUF`: size of each of the two item buffers (RAM: `2 * BUF`). An item holds a record
///   twice (its new and its committed version), so a record's header (about 40 bytes) and
///   body must fit in `(BUF - 16) / 2`; an item must also fit in one flash page.
/// - `CUR`: records the walk cursor of [`LocalStore::next`] holds (about 64 bytes each).
///
/// See the crate docs for the layout and the transaction scheme.
pub struct FlashStore<F: NorFlash, C: CacheImpl<FlashKey>, const BUF: usize, const CUR: usize = 32>
{
    map: MapStorage<FlashKey, F, C>,
    rbuf: Aligned<BUF>,
    wbuf: Aligned<BUF>,
    mounted: bool,
    /// The committed state item.
    state: StateItem,
    /// Highest transaction number that may have written items.
    started: u32,
    txn: Option<Txn>,
    cursor: Cursor<CUR>,
    /// Upper bound of the server ids stored per table; `None` until computed.
    max_server: Option<[u64; TRACKED_TABLES]>,
    memo: Vec<(TableId, ServerId, LocalId), MEMO>,
}

/// The sequential-storage cache type [`FlashStore`] is usually built with: page states and
/// page pointers for `PAGES` flash pages, and pointers to `KEYS` keys (12 bytes each).
pub type StoreCache<const PAGES: usize, const KEYS: usize> = sequential_storage::cache::Cache<
    sequential_storage::cache::page_states::ArrayPageStates<PAGES>,
    sequential_storage::cache::page_pointers::ArrayPagePointers<PAGES>,
    sequential_storage::cache::key_pointers::ArrayKeyPointers<FlashKey, KEYS>,
    FlashKey,
>;

/// A fresh [`StoreCache`].
pub fn store_cache<const PAGES: usize, const KEYS: usize>() -> StoreCache<PAGES, KEYS> {
    sequential_storage::cache::Cache::new(
        sequential_storage::cache::page_states::ArrayPageStates::new(),
        sequential_storage::cache::page_pointers::ArrayPagePointers::new(),
        sequential_storage::cache::key_pointers::ArrayKeyPointers::new(),
    )
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

impl<F: NorFlash, C: CacheImpl<FlashKey>, const BUF: usize, const CUR: usize>
    FlashStore<F, C, BUF, CUR>
{
    /// A store on `range` of `flash` (page aligned, at least two pages; give it room: the map
    /// needs about twice the live data to work without constant page migrations).
    /// Reads nothing yet: the store mounts on first use (or [`mount`](Self::mount)).
    pub fn try_new(flash: F, range: Range<u32>, cache: C) -> Res<Self, F> {
        let config = MapConfig::<F>::try_new(range).map_err(|_| FlashError::Config)?;
        if BUF < 64 + ITEM_HEAD || CUR == 0 {
            return Err(FlashError::Config);
        }
        Ok(FlashStore {
            map: MapStorage::new(flash, config, cache),
            rbuf: Aligned([0; BUF]),
            wbuf: Aligned([0; BUF]),
            mounted: false,
            state: StateItem::default(),
            started: 0,
            txn: None,
            cursor: Cursor::new(),
            max_server: None,
            memo: Vec::new(),
        })
    }

    /// Reads the committed state. Done on first use; call it to learn early whether the flash
    /// holds a readable store. Writes nothing.
    pub async fn mount(&mut self) -> Res<(), F> {
        let state = match self
            .map
            .fetch_item::<&[u8]>(&mut self.rbuf.0, &STATE_KEY)
            .await?
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
        let marker = self
            .map
            .fetch_item::<u32>(&mut self.rbuf.0, &MARKER_KEY)
            .await?
            .unwrap_or(0);
        self.started = marker.max(state.committed);
        self.state = state;
        self.txn = None;
        self.cursor.active = false;
        self.max_server = None;
        self.memo.clear();
        self.mounted = true;
        Ok(())
    }

    /// Erases the whole partition: an empty store.
    pub async fn format(&mut self) -> Res<(), F> {
        self.map.erase_all().await?;
        self.mounted = false;
        self.mount().await
    }

    /// The flash (for tests and tools; writing to it behind the store's back is at your risk).
    pub fn flash_mut(&mut self) -> &mut F {
        self.map.flash()
    }

    /// Gives the flash back.
    pub fn into_flash(self) -> F {
        self.map.destroy().0
    }

    /// Ranges of aborted transactions the committed state remembers (at most [`MAX_HOLES`]
    /// before the store heals them). For diagnostics and tests.
    pub fn aborted_ranges(&self) -> usize {
        self.state.holes.len()
    }

    /// Size of one map item for a payload of `payload` bytes with a committed version of
    /// `prev` bytes (header and padding included), for sizing partitions.
    pub fn item_size(payload: usize, prev: usize) -> usize {
        let data = 5 + ITEM_HEAD + payload + prev;
        MapStorage::<FlashKey, F, C>::item_overhead_size() as usize
            + data.next_multiple_of(F::WRITE_SIZE)
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
            let r = self
                .map
                .store_item(&mut self.rbuf.0, &MARKER_KEY, &txn.tag)
                .await;
            // Only a marker that is on flash lets items of this transaction be written: a
            // failed marker write is retried by the next write.
            self.check(r)?;
            txn.marked = true;
            self.txn = Some(txn);
        }
        Ok(txn)
    }

    /// Reads the item of `key` into `rbuf`; returns the range of its value there.
    /// `Ok(None)`: no item.
    async fn fetch(&mut self, key: &FlashKey) -> Res<Option<Range<usize>>, F> {
        let base = self.rbuf.0.as_ptr() as usize;
        match self.map.fetch_item::<&[u8]>(&mut self.rbuf.0, key).await? {
            None => Ok(None),
            Some(v) => {
                let start = (v.as_ptr() as usize).wrapping_sub(base);
                Ok(Some(start..start + v.len()))
            }
        }
    }

    fn item(&self, at: Range<usize>) -> Res<Item<'_>, F> {
        Item::parse(self.rbuf.0.get(at).ok_or(FlashError::Logic)?).ok_or(FlashError::Corrupted)
    }

    /// The visible payload of `key`, copied nowhere: a range of `rbuf`.
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
        let start = p.as_ptr() as usize - base;
        start..start + p.len()
    }

    /// Writes a new version of `key` in the open transaction: `new` is `[payload in wbuf at
    /// ITEM_HEAD..ITEM_HEAD + new_len]` or a tombstone. `absent`: the key is known to have no
    /// committed version (skips reading it).
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
        if end + 5 > BUF {
            return Err(FlashError::TooLarge);
        }
        write_head(&mut self.wbuf.0, txn.tag, new_len, has_prev).ok_or(FlashError::TooLarge)?;
        let value: &[u8] = &self.wbuf.0[..end];
        let r = self.map.store_item(&mut self.rbuf.0, key, &value).await;
        self.check(r)
    }

    fn check(&mut self, r: Result<(), sequential_storage::Error<F::Error>>) -> Res<(), F> {
        r.map_err(FlashError::from)
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
    /// no holes. Items of an open transaction (numbered above `upto`) are left alone.
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
            {
                let mut it = self.map.fetch_all_items(&mut self.rbuf.0).await?;
                while let Some((key, v)) = it.next::<&[u8]>(&mut self.rbuf.0).await? {
                    if key == STATE_KEY
                        || key == MARKER_KEY
                        || lo.is_some_and(|l| key < l)
                        || bound.is_some_and(|b| key >= b)
                    {
                        continue;
                    }
                    let item = Item::parse(v).ok_or(FlashError::Corrupted)?;
                    let pos = dirty.binary_search(&key);
                    match (dirty_tag(item.tag), pos) {
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
            }
            for key in &dirty {
                let Some(len) = self.fetch(key).await? else {
                    continue;
                };
                let item = self.item(len)?;
                if !dirty_tag(item.tag) {
                    continue;
                }
                let prev = item.prev.map(|p| self.range_of(p));
                let new_len = prev.as_ref().map(|r| r.len());
                if let Some(r) = prev {
                    let n = r.len();
                    self.wbuf.0[ITEM_HEAD..ITEM_HEAD + n].copy_from_slice(&self.rbuf.0[r]);
                }
                write_head(&mut self.wbuf.0, 0, new_len, false).ok_or(FlashError::Logic)?;
                let value: &[u8] = &self.wbuf.0[..ITEM_HEAD + new_len.unwrap_or(0)];
                let r = self.map.store_item(&mut self.rbuf.0, key, &value).await;
                self.check(r)?;
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
        self.map
            .store_item(&mut self.rbuf.0, &STATE_KEY, &value)
            .await?;
        Ok(())
    }

    /// One pass over every item: fills the cursor with the records of `table` after `start`
    /// that pass `filter`.
    async fn fill_cursor(
        &mut self,
        table: TableId,
        start: Option<u32>,
        filter: Filter,
    ) -> Res<(), F> {
        self.cursor.reset(table, filter, start);
        let view = self.view();
        let mut it = self.map.fetch_all_items(&mut self.rbuf.0).await?;
        while let Some((key, v)) = it.next::<&[u8]>(&mut self.rbuf.0).await? {
            let Some((t, l)) = parse_record_key(&key) else {
                continue;
            };
            if t != table || !self.cursor.above_start(l.0) {
                continue;
            }
            let item = Item::parse(v).ok_or(FlashError::Corrupted)?;
            let rec = match item.visible(&view) {
                Some(p) => Some(decode_record(p)?.0),
                None => None,
            };
            self.cursor
                .offer(l.0, rec.as_ref().filter(|r| filter.accepts(r)));
        }
        Ok(())
    }

    /// One pass over every item: the record of `table` with server id `server`, and the
    /// highest server id of every tracked table.
    async fn scan_server(&mut self, table: TableId, server: ServerId) -> Res<Option<Record>, F> {
        let view = self.view();
        let mut maxes = [0u64; TRACKED_TABLES];
        let mut found: Vec<Record, 4> = Vec::new();
        {
            let mut it = self.map.fetch_all_items(&mut self.rbuf.0).await?;
            while let Some((key, v)) = it.next::<&[u8]>(&mut self.rbuf.0).await? {
                let Some((t, l)) = parse_record_key(&key) else {
                    continue;
                };
                let item = Item::parse(v).ok_or(FlashError::Corrupted)?;
                for p in [item.new, item.prev].into_iter().flatten() {
                    let (r, _) = decode_record(p)?;
                    if let (Some(s), Some(m)) = (r.server, maxes.get_mut(t.0 as usize)) {
                        *m = (*m).max(s.0);
                    }
                }
                if t != table {
                    continue;
                }
                let rec = match item.visible(&view) {
                    Some(p) => Some(decode_record(p)?.0),
                    None => None,
                };
                found.retain(|r| r.local != l);
                if let Some(r) = rec.filter(|r| r.server == Some(server)) {
                    // More than a few records with one server id would be a store bug.
                    let _ = found.push(r);
                }
            }
        }
        self.max_server = Some(maxes);
        Ok(found.first().copied())
    }

    async fn ensure_max_server(&mut self) -> Res<(), F> {
        if self.max_server.is_none() {
            self.scan_server(TableId(0), ServerId(u64::MAX)).await?;
        }
        Ok(())
    }

    /// The record with server id `server`, through the index.
    async fn by_index(&mut self, table: TableId, server: ServerId) -> Res<Option<Record>, F> {
        let Some(r) = self.visible(&server_key(table, server.0)).await? else {
            return Ok(None);
        };
        let p = self.rbuf.0.get(r).ok_or(FlashError::Logic)?;
        if p.len() != INDEX_LEN {
            return Err(FlashError::Corrupted);
        }
        let local = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
        let full = u64::from_le_bytes([p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11]]);
        if full != server.0 {
            // Two ids alike in their low 32 bits: the slow way.
            return self.scan_server(table, server).await;
        }
        // The entry outlives a removed record; the record decides.
        Ok(self
            .get_inner(table, LocalId(local))
            .await?
            .filter(|r| r.server == Some(server)))
    }

    fn note_server(&mut self, rec: &Record) {
        if let (Some(maxes), Some(s)) = (self.max_server.as_mut(), rec.server) {
            if let Some(m) = maxes.get_mut(rec.table.0 as usize) {
                *m = (*m).max(s.0);
            }
        }
    }

    fn remember(&mut self, rec: &Record) {
        if let Some(s) = rec.server {
            self.memo
                .retain(|(t, sv, _)| !(*t == rec.table && *sv == s));
            if self.memo.is_full() {
                self.memo.remove(0);
            }
            let _ = self.memo.push((rec.table, s, rec.local));
        }
    }

    async fn put_once(&mut self, rec: &Record, body: Option<&[u8]>) -> Res<(), F> {
        self.ensure_mounted().await?;
        self.open()?;
        if rec.table.0 > MAX_TABLE {
            return Err(FlashError::BadTable);
        }
        let key = record_key(rec.table, rec.local);
        let absent = self.known_absent(rec.local);
        let old_server = if absent {
            None
        } else {
            self.get_inner(rec.table, rec.local)
                .await?
                .and_then(|r| r.server)
        };
        if rec.server.is_some() && rec.server != old_server {
            self.ensure_max_server().await?;
        }
        let new_len = match body {
            Some(b) => {
                write_payload(&mut self.wbuf.0[ITEM_HEAD..], rec, b).ok_or(FlashError::TooLarge)?
            }
            None => {
                if absent {
                    return Err(FlashError::NoBody);
                }
                let r = self.visible(&key).await?.ok_or(FlashError::NoBody)?;
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
        self.write_versioned(&key, Some(new_len), absent).await?;
        self.note_local(rec.local);
        if let Some(s) = rec.server.filter(|_| rec.server != old_server) {
            // The server-id index entry: written once, when the record gets its server id.
            let fresh = self.max_server.as_ref().is_some_and(|m| {
                m.get(rec.table.0 as usize)
                    .is_some_and(|m| s.0 > *m && *m <= u64::from(u32::MAX))
            }) && s.0 <= u64::from(u32::MAX);
            let out = self
                .wbuf
                .0
                .get_mut(ITEM_HEAD..ITEM_HEAD + INDEX_LEN)
                .ok_or(FlashError::TooLarge)?;
            out[..4].copy_from_slice(&rec.local.0.to_le_bytes());
            out[4..].copy_from_slice(&s.0.to_le_bytes());
            self.write_versioned(&server_key(rec.table, s.0), Some(INDEX_LEN), fresh)
                .await?;
        }
        self.note_server(rec);
        self.remember(rec);
        self.cursor.on_write(rec.table, rec.local, Some(rec));
        Ok(())
    }

    async fn remove_once(&mut self, table: TableId, local: LocalId) -> Res<(), F> {
        self.ensure_mounted().await?;
        self.open()?;
        if table.0 > MAX_TABLE {
            return Err(FlashError::BadTable);
        }
        if self.get_inner(table, local).await?.is_none() {
            return Ok(());
        }
        self.write_versioned(&record_key(table, local), None, false)
            .await?;
        self.note_local(local);
        self.cursor.on_write(table, local, None);
        Ok(())
    }

    async fn push_rejected_once(&mut self, entry: &RejectedEntry, body: &[u8]) -> Res<(), F> {
        self.ensure_mounted().await?;
        let txn = self.open()?;
        let seq = txn.rejected.checked_add(1).ok_or(FlashError::Logic)?;
        let entry = RejectedEntry { seq, ..*entry };
        let new_len = write_payload(&mut self.wbuf.0[ITEM_HEAD..], &entry, body)
            .ok_or(FlashError::TooLarge)?;
        self.write_versioned(&rejected_key(seq), Some(new_len), false)
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
        match self.visible(&record_key(table, local)).await? {
            None => Ok(None),
            Some(r) => Ok(Some(decode_record(&self.rbuf.0[r])?.0)),
        }
    }
}

impl<F: NorFlash, C: CacheImpl<FlashKey>, const BUF: usize, const CUR: usize> LocalStore
    for FlashStore<F, C, BUF, CUR>
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
        });
        Ok(())
    }

    async fn commit(&mut self, state: &DeviceState) -> Result<(), Self::Error> {
        self.ensure_mounted().await?;
        if self.txn.is_none() {
            self.begin().await?;
        }
        let txn = self.open()?;
        let mut next = self.state.clone();
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
        self.cursor.active = false;
        self.memo.clear();
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
        match self.visible(&record_key(table, local)).await? {
            None => Ok(None),
            Some(r) => {
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
        if let Some(&(_, _, local)) = self
            .memo
            .iter()
            .find(|(t, s, _)| *t == table && *s == server)
        {
            if let Some(rec) = self.get_inner(table, local).await? {
                if rec.server == Some(server) {
                    return Ok(Some(rec));
                }
            }
            self.memo.retain(|(t, s, _)| !(*t == table && *s == server));
        }
        self.ensure_max_server().await?;
        if let Some(maxes) = &self.max_server {
            if maxes.get(table.0 as usize).is_some_and(|m| server.0 > *m) {
                return Ok(None);
            }
        }
        let found = self.by_index(table, server).await?;
        if let Some(r) = &found {
            self.remember(r);
        }
        Ok(found)
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
        if table.0 > MAX_TABLE || after.is_some_and(|a| a.0 == u32::MAX) {
            return Ok(None);
        }
        let mut after = after.map(|a| a.0);
        // Each pass starts further than the last (records passing the filter only in versions
        // superseded later can cut a pass short); a pass that does not is a bug.
        let mut last: Option<Option<u32>> = None;
        loop {
            match self.cursor.answer(table, after, filter) {
                Ok(found) => return Ok(found),
                Err(start) => {
                    if last.is_some_and(|l| l >= start) {
                        return Err(FlashError::Logic);
                    }
                    self.fill_cursor(table, start, filter).await?;
                    last = Some(start);
                    after = start;
                }
            }
        }
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
