//! Server storage: the [`ServerStore`] trait and its SQLite implementation.
//!
//! The HTTP layer never touches SQL. It hands a sync to [`ServerStore::sync`] as a
//! [`ChangeSource`] (changes arrive as the request body is decoded) and the store applies them
//! in **one transaction**, committing only when the source says the stream ended well. The
//! reply is then read from a consistent snapshot by [`ServerStore::read_sync_reply`], which
//! leaves out the rows that sync wrote ([`SyncOutcome::written`]): the device sent them.
//!
//! Every method blocks; the server calls them from `tokio::task::spawn_blocking`.
//!
//! Two implementations: [`SqliteStore`] (one file, one server) and [`PostgresStore`] (several
//! stateless servers over one database). They share everything that is not SQL dialect: the
//! reconciliation rules and the reply's order (`engine`, over two small traits of row-level
//! operations) and the generated DDL and statements of the schema tables (`sqlgen`).

mod engine;
pub mod postgres;
mod sqlgen;
mod sqlite;
#[cfg(test)]
mod testkit;

pub use self::postgres::PostgresStore;
pub use sqlite::SqliteStore;

use ferrysync_core::wire::{Mapping, Mode, Op, RejectReason, Remove, Upsert};
use ferrysync_core::{Hlc, RecordRef, ServerId, TableId};
use std::fmt;

/// Locks a store's mutex, recovering it from a panic of a holder: what the stores guard
/// (a connection whose dropped transaction rolled back, a list of idle connections) stays
/// consistent whatever panicked.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A device known to the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// Device id; also the tie-break id in the device's clock stamps.
    pub id: u32,
    /// The scope whose records the device reads and writes.
    pub scope: String,
    /// When the device was added, in ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Whether its token was revoked.
    pub revoked: bool,
}

/// A change of a request, owned (it crosses from the body reader to the database thread).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedChange {
    /// Table of the record.
    pub table: TableId,
    /// What happened to it.
    pub op: Op,
    /// The record.
    pub key: RecordRef,
    /// Its parent, for a detail.
    pub parent: Option<RecordRef>,
    /// Clock of the change.
    pub modified_at: Hlc,
    /// The record's fields (postcard).
    pub body: Vec<u8>,
}

impl OwnedChange {
    /// Copies a decoded change out of the frame buffer.
    pub fn from_wire(c: &ferrysync_core::wire::Change<'_>) -> Self {
        OwnedChange {
            table: c.table,
            op: c.op,
            key: c.key,
            parent: c.parent,
            modified_at: c.modified_at,
            body: c.body.to_vec(),
        }
    }
}

/// What a [`ChangeSource`] yields next.
#[derive(Debug)]
pub enum Incoming {
    /// One more change to apply.
    Change(OwnedChange),
    /// The request ended well: commit.
    Commit,
}

/// Where a sync's changes come from (the request body, decoded as it arrives).
pub trait ChangeSource {
    /// Blocks until the next change or the end. `None` means the request failed (bad frame,
    /// cut connection, limit): the store must roll back.
    fn next(&mut self) -> Option<Incoming>;
}

impl<I: Iterator<Item = Incoming>> ChangeSource for I {
    fn next(&mut self) -> Option<Incoming> {
        Iterator::next(self)
    }
}

/// Clock and retention settings for one sync.
#[derive(Clone, Copy, Debug)]
pub struct SyncParams {
    /// Server time, ms since the Unix epoch.
    pub now_ms: u64,
    /// Incoming stamps are clamped to `now_ms + max_skew_ms`.
    pub max_skew_ms: u64,
    /// Tombstones older than this are dropped (devices whose cursor predates them get a full
    /// reply).
    pub tombstone_retention_ms: u64,
}

/// A refused change, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedRejected {
    /// Table (as sent).
    pub table: TableId,
    /// Operation (as sent).
    pub op: Op,
    /// Key (as sent).
    pub key: RecordRef,
    /// Why.
    pub reason: RejectReason,
    /// The body that was sent.
    pub body: Vec<u8>,
}

/// The change sequences one sync took: `after < seq <= upto` (empty when equal).
///
/// The single writer lock makes every row and tombstone with a sequence in this range the work
/// of that sync, so its reply can leave out the rows: the device holds them already.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// The last sequence before the sync.
    pub after: u64,
    /// The last sequence the sync took.
    pub upto: u64,
}

/// What applying a batch produced, to put in the reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    /// Server ids of the batch's adds (new, or found again for a retried add).
    pub mappings: Vec<Mapping>,
    /// Refused changes.
    pub rejected: Vec<OwnedRejected>,
    /// Records the reply carries whatever its cursor and [`SyncOutcome::written`] say: those
    /// whose incoming update lost last-write-wins (the reply carries the winner), those stored
    /// with another clock than the device sent (clamped to the allowed skew), and retried
    /// adds of records deleted since (the reply removes them).
    pub losers: Vec<(TableId, ServerId)>,
    /// Changes that were written (adds, winning updates, deletes).
    pub applied: u64,
    /// The change sequences this sync took.
    pub written: Written,
}

/// What the reply should hold.
#[derive(Clone, Copy, Debug)]
pub struct ReplyPlan<'a> {
    /// The device's scope.
    pub scope: &'a str,
    /// Mode the device asked for.
    pub mode: Mode,
    /// The device's cursor.
    pub cursor: Option<u64>,
    /// Records to send even if unchanged since the cursor (the losers of this batch).
    pub extra: &'a [(TableId, ServerId)],
}

/// One record-level item of a reply, in order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ReplyItem<'a> {
    /// Full refresh follows.
    Reset,
    /// A live record.
    Upsert(Upsert<'a>),
    /// A deleted record.
    Remove(Remove),
}

/// Why storage failed.
#[derive(Debug)]
pub enum StoreError {
    /// The SQLite database failed.
    Sqlite(rusqlite::Error),
    /// The PostgreSQL database failed (or its URL is invalid).
    Postgres(::postgres::Error),
    /// The change source ended without `Commit`: rolled back.
    Aborted,
    /// The reply's consumer went away.
    Closed,
    /// The database holds something this server cannot use.
    Corrupt(String),
    /// The operation needs a schema and the store was opened without one.
    NoSchema,
    /// No database connection became free in time.
    Busy(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Sqlite(e) => write!(f, "database error: {e}"),
            StoreError::Postgres(e) => {
                // The client's own message is terse ("db error"); the cause says what.
                write!(f, "PostgreSQL error: {e}")?;
                match std::error::Error::source(e) {
                    Some(cause) => write!(f, ": {cause}"),
                    None => Ok(()),
                }
            }
            StoreError::Aborted => f.write_str("sync aborted, rolled back"),
            StoreError::Closed => f.write_str("reply consumer went away"),
            StoreError::Corrupt(m) => f.write_str(m),
            StoreError::NoSchema => f.write_str("store opened without a schema"),
            StoreError::Busy(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e)
    }
}

/// Server storage. All methods block.
pub trait ServerStore: Send + Sync + 'static {
    /// The device whose token hashes to `token_hash` (revoked ones too), if any.
    fn authenticate(&self, token_hash: &[u8; 32]) -> Result<Option<Device>, StoreError>;

    /// Applies a sync's changes, in one transaction, as `changes` yields them. Commits when it
    /// yields [`Incoming::Commit`]; rolls back (and returns [`StoreError::Aborted`]) when it
    /// ends without. Rejections are part of the outcome, not errors.
    fn sync(
        &self,
        device: &Device,
        params: SyncParams,
        changes: &mut dyn ChangeSource,
    ) -> Result<SyncOutcome, StoreError>;

    /// Reads the reply's records from one consistent snapshot, in reply order, into `sink`;
    /// returns the snapshot's cursor (its highest change sequence). An error from `sink`
    /// stops the read and is returned. Everything the plan selects is read; see
    /// [`ServerStore::read_sync_reply`] for the reply to a sync.
    fn read_reply(
        &self,
        plan: &ReplyPlan<'_>,
        sink: &mut dyn FnMut(ReplyItem<'_>) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        self.read_sync_reply(plan, Written::default(), sink)
    }

    /// [`ServerStore::read_reply`] for the reply to the sync that took `written`
    /// ([`SyncOutcome::written`]): the rows that sync wrote are left out (the device sent
    /// them and keeps them as confirmed), in full replies as in delta ones, except the
    /// plan's `extra` records. A full reply also removes what that sync deleted (its
    /// cascades), and both remove the `extra` records that are deleted.
    fn read_sync_reply(
        &self,
        plan: &ReplyPlan<'_>,
        written: Written,
        sink: &mut dyn FnMut(ReplyItem<'_>) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError>;

    /// Creates a device of `scope` whose bearer token hashes to `token_hash`.
    fn add_device(
        &self,
        scope: &str,
        token_hash: &[u8; 32],
        now_ms: u64,
    ) -> Result<Device, StoreError>;

    /// Every device, by id.
    fn list_devices(&self) -> Result<Vec<Device>, StoreError>;

    /// Revokes a device's token; `false` if there is no such device.
    fn revoke_device(&self, id: u32) -> Result<bool, StoreError>;
}
