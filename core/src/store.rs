//! The device-side storage trait that the sync engine and the change-tracking API work behind.
//!
//! A store holds records keyed by `(table, local id)`. Every record on a device has a stable
//! [`LocalId`], given when it was created offline or when it first arrived from the server, and
//! the [`ServerId`] once the server knows it. A detail points at its parent by the parent's
//! local id, so nothing on the device has to be rewritten when the server assigns ids: the
//! server id is one more column, and ids an app holds stay valid across syncs.
//!
//! # Crash contract
//! Writes happen between [`LocalStore::begin`] and [`LocalStore::commit`]. A store promises
//! that after a crash or power cut at any instruction, the next [`LocalStore::load_state`] and
//! reads see either everything up to the last completed `commit` or, if that commit completed,
//! everything it wrote: never part of a transaction. One exception, which loses nothing: the
//! commit of a transaction begun by [`LocalStore::begin_reply`] may be taken back whole when no
//! later commit followed it. Reads inside a transaction see its own writes. Methods say what
//! they write; none of them is visible to a later session before the `commit` that follows it.

use crate::hlc::Hlc;
use crate::id::{LocalId, RecordRef, ServerId, TableId};
use crate::meta::SyncMeta;
use crate::wire::{Op, RejectReason};
use serde::{Deserialize, Serialize};

/// A record's header: everything but its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Table of the record.
    pub table: TableId,
    /// Its stable device-local id.
    pub local: LocalId,
    /// Its server id, once known.
    pub server: Option<ServerId>,
    /// Local id of its parent record (details only).
    pub parent: Option<LocalId>,
    /// Sync metadata.
    pub meta: SyncMeta,
    /// Full-refresh generation that last delivered this record (see [`DeviceState::refresh`]).
    pub mark: u32,
}

/// Device-wide sync state, written by every [`LocalStore::commit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// Cursor of the last applied reply; `None` before the first sync.
    pub cursor: Option<u64>,
    /// Last clock stamp given or seen.
    pub clock: Hlc,
    /// Next local id to give (shared by all tables; never reused).
    pub next_local: u32,
    /// Last edit number given (see [`SyncMeta::edits`]).
    pub edit_seq: u32,
    /// Number of completed syncs; the next batch id.
    pub syncs: u64,
    /// Generation of the last full refresh.
    pub refresh: u32,
    /// The next sync must ask for a full refresh (set after a rejected update, so the device
    /// gets the server's version back).
    pub needs_full: bool,
}

impl Default for DeviceState {
    fn default() -> Self {
        DeviceState {
            cursor: None,
            clock: Hlc::default(),
            next_local: 1,
            edit_seq: 0,
            syncs: 0,
            refresh: 0,
            needs_full: false,
        }
    }
}

/// Which records [`LocalStore::next`] walks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Every record of the table, deleted ones included.
    All,
    /// Records a sync has to send ([`SyncMeta::is_pending`]).
    Pending,
    /// Records whose parent is this local id.
    Children(LocalId),
}

impl Filter {
    /// Whether `rec` passes the filter.
    pub fn accepts(&self, rec: &Record) -> bool {
        match self {
            Filter::All => true,
            Filter::Pending => rec.meta.is_pending(),
            Filter::Children(p) => rec.parent == Some(*p),
        }
    }
}

/// An entry of the rejected log: a change the server refused, kept for the app to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedEntry {
    /// Position in the log (given by the store, increasing).
    pub seq: u32,
    /// Table of the change.
    pub table: TableId,
    /// What the change did.
    pub op: Op,
    /// The record as it was named in the change.
    pub key: RecordRef,
    /// Local id of the record on this device, when it had one.
    pub local: Option<LocalId>,
    /// Why the server (or the device, for a change orphaned by a server delete) refused it.
    pub reason: RejectReason,
    /// Clock of the refused change.
    pub at: Hlc,
}

/// Storage of one device. Async so that a NOR-flash store can await its flash; a store on a
/// blocking medium (SQLite) just never awaits.
///
/// The engine keeps all sync rules; a store only keeps records and answers lookups.
#[allow(async_fn_in_trait)] // Device executors are single-threaded; no Send bound is wanted.
pub trait LocalStore {
    /// The store's own error.
    type Error: core::fmt::Debug;

    /// Whether [`put`](Self::put) decodes every body it is given against the schema and fails
    /// on one that does not fit (a store that writes fields as columns has to decode them
    /// anyway). The sync engine then leaves that check to `put` instead of decoding each
    /// received body twice; it still reports a bad body as a bad record, as for any store.
    const CHECKS_BODIES: bool = false;

    /// Reads the committed device state ([`DeviceState::default`] on a fresh store).
    /// Writes nothing.
    async fn load_state(&mut self) -> Result<DeviceState, Self::Error>;

    /// Starts a transaction. Writes nothing durable.
    async fn begin(&mut self) -> Result<(), Self::Error>;

    /// Makes every write since [`begin`](Self::begin) durable together with `state`, atomically:
    /// after a crash inside it, either all of them or none of them survive.
    async fn commit(&mut self, state: &DeviceState) -> Result<(), Self::Error>;

    /// [`begin`](Self::begin) of the transaction that applies a sync's reply, whose
    /// [`commit`](Self::commit) a store may make durable lazily: a power cut soon after may
    /// take that commit back, whole, but never a later commit without it (a log store that
    /// syncs its log at the next commit does this).
    ///
    /// Losing it loses nothing: the device is as it was before the reply, exactly as when the
    /// reply is lost on the network after the server committed, which the protocol already
    /// redoes. The changes it confirmed are still pending and the next sync sends them again;
    /// the server knows them (adds through its id map, updates by their clock, deletes by their
    /// tombstones) and the device's old cursor gets the rest. Everything an app writes goes
    /// through `begin`. The default is `begin`.
    async fn begin_reply(&mut self) -> Result<(), Self::Error> {
        self.begin().await
    }

    /// Drops every write since [`begin`](Self::begin). A crash inside it leaves the same state.
    async fn rollback(&mut self) -> Result<(), Self::Error>;

    /// The record `(table, local)`, if present. Writes nothing.
    async fn get(&mut self, table: TableId, local: LocalId) -> Result<Option<Record>, Self::Error>;

    /// Copies the body of `(table, local)` into `buf` and returns its length; `Ok(None)` when the
    /// record is absent. Fails if `buf` is too small. Writes nothing.
    async fn get_body(
        &mut self,
        table: TableId,
        local: LocalId,
        buf: &mut [u8],
    ) -> Result<Option<usize>, Self::Error>;

    /// The record of `table` whose server id is `server`. Writes nothing.
    async fn by_server(
        &mut self,
        table: TableId,
        server: ServerId,
    ) -> Result<Option<Record>, Self::Error>;

    /// Inserts or replaces the record `(rec.table, rec.local)`; `body: None` keeps the stored
    /// body (the record must exist then). Part of the open transaction. A store with
    /// [`CHECKS_BODIES`](Self::CHECKS_BODIES) fails, writing nothing, when `body` does not fit
    /// the table.
    async fn put(&mut self, rec: &Record, body: Option<&[u8]>) -> Result<(), Self::Error>;

    /// Removes `(table, local)` for good (absent is not an error). Part of the open transaction.
    async fn remove(&mut self, table: TableId, local: LocalId) -> Result<(), Self::Error>;

    /// The record of `table` with the smallest local id greater than `after` that passes
    /// `filter`. Walks in local-id order. Writes nothing.
    async fn next(
        &mut self,
        table: TableId,
        after: Option<LocalId>,
        filter: Filter,
    ) -> Result<Option<Record>, Self::Error>;

    /// Appends to the rejected log (its `seq` is given by the store). Part of the open
    /// transaction.
    async fn push_rejected(
        &mut self,
        entry: &RejectedEntry,
        body: &[u8],
    ) -> Result<(), Self::Error>;

    /// The rejected-log entry after position `after`, with its body copied into `buf`
    /// (returns the body length). Writes nothing.
    async fn next_rejected(
        &mut self,
        after: Option<u32>,
        buf: &mut [u8],
    ) -> Result<Option<(RejectedEntry, usize)>, Self::Error>;

    /// Empties the rejected log. Part of the open transaction.
    async fn clear_rejected(&mut self) -> Result<(), Self::Error>;

    /// Removes every record of `table` that came from the server, has no pending change, and
    /// was not delivered by the full refresh `mark` (its `mark` differs): the end of a full
    /// refresh. Part of the open transaction.
    ///
    /// The default walks the table with [`next`](Self::next); a store that can select by
    /// these columns (SQLite: one `DELETE`) should do it in one step.
    async fn sweep(&mut self, table: TableId, mark: u32) -> Result<(), Self::Error> {
        sweep_by_walking(self, table, mark).await
    }

    /// Confirms what a sync sent, at its reply's `Done`: each pending record of `table` whose
    /// edit number is at most `sent` (the request carried it) is made clean, or removed for
    /// good if it was deleted locally; an active one the server has not mapped yet (no server
    /// id) stays pending and is sent again. With `mark` (a full refresh), the records made
    /// clean take it, as delivered. A record edited since the request (edit number above
    /// `sent`) is left as it is. Part of the open transaction.
    ///
    /// The default walks the pending records with [`next`](Self::next) and writes each one
    /// ([`confirm_by_walking`]); a store that can select by these columns (SQLite: one
    /// `UPDATE` and one `DELETE`) should do it in one step.
    async fn confirm(
        &mut self,
        table: TableId,
        sent: u32,
        mark: Option<u32>,
    ) -> Result<(), Self::Error> {
        confirm_by_walking(self, table, sent, mark).await
    }
}

/// [`LocalStore::confirm`] by walking the pending records of `table` with
/// [`next`](LocalStore::next) and writing each one: the trait's default.
pub async fn confirm_by_walking<S: LocalStore + ?Sized>(
    store: &mut S,
    table: TableId,
    sent: u32,
    mark: Option<u32>,
) -> Result<(), S::Error> {
    let mut after = None;
    while let Some(mut rec) = store.next(table, after, Filter::Pending).await? {
        after = Some(rec.local);
        if rec.meta.edited_after(sent) {
            continue;
        }
        if rec.meta.is_active {
            if rec.server.is_none() {
                // Neither mapped nor refused: the server did not take it; resend.
                continue;
            }
            rec.meta.confirm(sent);
            if let Some(mark) = mark {
                rec.mark = mark;
            }
            store.put(&rec, None).await?;
        } else {
            store.remove(table, rec.local).await?;
        }
    }
    Ok(())
}

/// [`LocalStore::sweep`] by walking `table` with [`next`](LocalStore::next) and removing each
/// record the sweep drops: the trait's default, for a store that overrides `sweep` only to skip
/// it in some cases.
pub async fn sweep_by_walking<S: LocalStore + ?Sized>(
    store: &mut S,
    table: TableId,
    mark: u32,
) -> Result<(), S::Error> {
    let mut after = None;
    while let Some(rec) = store.next(table, after, Filter::All).await? {
        after = Some(rec.local);
        if rec.server.is_some() && !rec.meta.is_pending() && rec.mark != mark {
            store.remove(table, rec.local).await?;
        }
    }
    Ok(())
}
