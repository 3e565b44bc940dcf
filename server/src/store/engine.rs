//! The reconciliation rules and the reply's order, written once over two small traits that
//! each store implements in its SQL dialect: [`SyncTx`] (the row-level operations of one sync
//! transaction) and [`SnapshotTx`] (the reads of one reply snapshot).
//!
//! [`run_sync`] holds every rule: id mapping through `_idmap` (and the idempotent retry),
//! foreign keys resolved through the map at any depth, last-write-wins on clamped stamps,
//! delete cascade with tombstones, delete-wins, scopes, and each rejection's reason; plus the
//! change sequence and tombstone pruning. [`read_reply`] decides full or delta and emits
//! records and tombstones in reply order. A store only opens, commits and runs statements.

use super::sqlgen::TableSql;
use super::{
    ChangeSource, Device, Incoming, OwnedChange, OwnedRejected, ReplyItem, ReplyPlan, StoreError,
    SyncOutcome, SyncParams, Written,
};
use crate::schema_file::LoadedSchema;
use ferrysync_core::body::{self, Value};
use ferrysync_core::schema::{FieldDef, Schema, TableDef};
use ferrysync_core::wire::{Mapping, Mode, Op, RejectReason, Remove, Upsert};
use ferrysync_core::{Hlc, LocalId, RecordRef, ServerId, TableId};
use std::collections::HashMap;

/// The memos' hasher: foldhash (seeded per process) hashes their small integer keys several
/// times faster than the default SipHash, and a sync looks them up for every change.
type Memo<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Largest body re-encoded from columns: a frame's, since a record travels in one frame (a
/// larger one could not be sent in any case). 64 KiB, zeroed for every reply, was 5 % of the
/// server's part of a 1 % delta pull.
const BODY_BUF: usize = crate::MAX_FRAME;
/// Entries a sync remembers (mappings, record metas) before starting over: bounds memory for
/// the largest batches, and a batch's details usually follow their masters closely.
const MEMO_MAX: usize = 1 << 16;

/// A value bound to a statement; each store converts it to its driver's type.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg<'a> {
    /// A field value (`U64` is stored bit-cast to a signed 64-bit integer).
    V(Value<'a>),
    /// An integer (ids, sequence, clock).
    I(i64),
    /// Text (scope).
    S(&'a str),
    /// SQL NULL (a master's absent foreign key).
    Null,
}

/// A new record for [`SyncTx::insert_mapped`], and the device's local id it maps.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NewRow<'a> {
    /// Field values in schema order.
    pub values: &'a [Value<'a>],
    /// Its foreign key: `Some` exactly for the tables that have a parent.
    pub parent: Option<i64>,
    /// Its scope.
    pub scope: &'a str,
    /// Its change sequence.
    pub seq: i64,
    /// Clock of the change.
    pub at: Hlc,
    /// The device that added it.
    pub device: u32,
    /// The device's local id of it.
    pub local: u32,
}

impl NewRow<'_> {
    /// The arguments of `TableSql::insert`.
    pub fn args(&self) -> Vec<Arg<'_>> {
        let mut args: Vec<Arg<'_>> = self.values.iter().map(|v| Arg::V(*v)).collect();
        args.extend(self.parent.map(Arg::I));
        args.extend([
            Arg::S(self.scope),
            Arg::I(self.seq),
            Arg::I(self.at.wall_ms as i64),
            Arg::I(i64::from(self.at.counter)),
            Arg::I(i64::from(self.at.device)),
        ]);
        args
    }
}

/// The stored clock, scope and parent of a live record.
#[derive(Clone, Debug)]
pub(crate) struct RowMeta {
    /// Scope of the record.
    pub scope: String,
    /// Clock of its winning change.
    pub at: Hlc,
    /// Its foreign key (detail tables).
    pub parent: Option<i64>,
}

impl RowMeta {
    /// From the columns `_scope, _wall, _counter, _device, fk` as stored.
    pub fn from_columns(
        scope: String,
        wall: i64,
        counter: i64,
        device: i64,
        parent: Option<i64>,
    ) -> Self {
        RowMeta {
            scope,
            at: hlc_of(wall, counter, device),
            parent,
        }
    }
}

/// A clock from its stored columns (stored from `u64`/`u32` values, so the casts round-trip).
pub(crate) fn hlc_of(wall: i64, counter: i64, device: i64) -> Hlc {
    Hlc::new(wall as u64, counter as u32, device as u32)
}

/// Row-level operations of one sync transaction. Table indexes are schema table indexes;
/// statements come from the store's [`TableSql`].
pub(crate) trait SyncTx {
    /// A `_meta` value.
    fn meta_get(&mut self, key: &str) -> Result<Option<i64>, StoreError>;
    /// Sets a `_meta` value.
    fn meta_set(&mut self, key: &str, value: i64) -> Result<(), StoreError>;
    /// The highest sequence of the tombstones deleted at or before `cutoff` ms.
    fn tombstones_max_seq_before(&mut self, cutoff: i64) -> Result<Option<i64>, StoreError>;
    /// Drops the tombstones deleted at or before `cutoff` ms.
    fn prune_tombstones(&mut self, cutoff: i64) -> Result<(), StoreError>;
    /// The smallest and largest local ids of `table` that `_idmap` maps for `device`, if any.
    fn idmap_bounds(&mut self, device: u32, table: &str) -> Result<Option<(u32, u32)>, StoreError>;
    /// The server id mapped to a device's local id.
    fn idmap_get(
        &mut self,
        device: u32,
        table: &str,
        local: u32,
    ) -> Result<Option<i64>, StoreError>;
    /// Inserts a record into table `ti` and maps the device's local id to it; returns the new
    /// server id. A store may hold the rows back and write them in batches, as long as every
    /// later call of this trait sees them (and [`SyncTx::finish`] writes them).
    fn insert_mapped(&mut self, ti: usize, row: &NewRow<'_>) -> Result<i64, StoreError>;
    /// Updates a record: `TableSql::update` with its arguments, or `TableSql::update_fields`
    /// (the arguments without the foreign key) when `keep_parent`.
    fn update(&mut self, ti: usize, keep_parent: bool, args: &[Arg<'_>]) -> Result<(), StoreError>;
    /// The live record's meta.
    fn row_meta(&mut self, ti: usize, id: i64) -> Result<Option<RowMeta>, StoreError>;
    /// The scope of a tombstone.
    fn tombstone_scope(&mut self, table: &str, id: i64) -> Result<Option<String>, StoreError>;
    /// Ids of the details of `id` in the `k`-th child table of `ti`.
    fn child_ids(&mut self, ti: usize, k: usize, id: i64) -> Result<Vec<i64>, StoreError>;
    /// Deletes a record row.
    fn delete(&mut self, ti: usize, id: i64) -> Result<(), StoreError>;
    /// Writes (or replaces) a tombstone.
    fn put_tombstone(
        &mut self,
        table: &str,
        id: i64,
        seq: i64,
        scope: &str,
        at_ms: i64,
    ) -> Result<(), StoreError>;
    /// Writes whatever the store held back; the last call of a sync before its commit.
    fn finish(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// How many changes [`run_sync`] reads from its source before it applies them, and
    /// shows to [`SyncTx::prefetch`] first; at most 1 (the default) applies each change as it
    /// comes.
    const READ_AHEAD: usize = 1;
    /// Called with the next changes before any of them is applied (only when
    /// [`SyncTx::READ_AHEAD`] is above 1): a store may read ahead what applying them will ask
    /// ([`SyncTx::row_meta`]), as long as every answer it gives stays what it would read when
    /// asked (each of this trait's writes comes in between).
    fn prefetch(&mut self, _changes: &[OwnedChange]) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The bounds of stored local ids read as `min(local), max(local)`: `None` when there are
/// none, the widest range when a stored value does not fit a local id (it only costs
/// queries).
pub(crate) fn local_bounds(lo: Option<i64>, hi: Option<i64>) -> Option<(u32, u32)> {
    let (lo, hi) = (lo?, hi?);
    Some((
        u32::try_from(lo).unwrap_or(0),
        u32::try_from(hi).unwrap_or(u32::MAX),
    ))
}

/// Records the schema's hash in a new database, or refuses a database made for another
/// schema (`db` names it in the message, `flag` is the option that picks another one).
pub(crate) fn check_schema_hash<T: SyncTx>(
    tx: &mut T,
    schema: &LoadedSchema,
    db: &str,
    flag: &str,
) -> Result<(), StoreError> {
    let want = schema.hash() as i64;
    match tx.meta_get("schema_hash")? {
        Some(have) if have != want => Err(StoreError::Corrupt(format!(
            "database {db} was created for schema {:#018x}, but the schema given has \
             {:#018x}; start with the schema file it was created with, or use a new {flag}",
            have as u64,
            schema.hash()
        ))),
        Some(_) => Ok(()),
        None => tx.meta_set("schema_hash", want),
    }
}

/// Applies a sync inside the store's open transaction: prunes expired tombstones, applies
/// the changes as `changes` yields them, advances `_meta.seq`. (The server does not open one
/// for a request without changes, so expired tombstones go with the next sync that writes;
/// until then a device's cursor finds them still there.) Returns
/// [`StoreError::Aborted`] when the source ends without `Commit` (the caller rolls back);
/// on `Ok` the caller commits.
///
/// The caller must hold the database's single-writer lock for the whole transaction: the
/// sequence read here is the last committed one and every number taken is above it, so the
/// sequence grows in commit order (a reader's cursor never skips a change). The lock is also
/// what lets this remember, for the rest of the transaction, the mappings it made or read and
/// the meta of the records it looked at (a batch's details find their new master without a
/// query): nothing else writes meanwhile.
pub(crate) fn run_sync<T: SyncTx>(
    tx: &mut T,
    schema: Schema<'static>,
    sql: &[TableSql],
    device: &Device,
    params: SyncParams,
    changes: &mut dyn ChangeSource,
) -> Result<SyncOutcome, StoreError> {
    let cutoff = params.now_ms.saturating_sub(params.tombstone_retention_ms) as i64;
    if let Some(max) = tx.tombstones_max_seq_before(cutoff)? {
        let floor = tx.meta_get("tombstone_floor")?.unwrap_or(0);
        tx.meta_set("tombstone_floor", floor.max(max))?;
        tx.prune_tombstones(cutoff)?;
    }
    let start_seq = tx.meta_get("seq")?.unwrap_or(0);
    let mut apply = Apply {
        tx,
        schema,
        sql,
        device,
        params,
        seq: start_seq,
        out: SyncOutcome::default(),
        mapped: Memo::default(),
        metas: Memo::default(),
        bounds: vec![Bounds::Unread; schema.tables.len()],
    };
    if T::READ_AHEAD <= 1 {
        loop {
            match changes.next() {
                Some(Incoming::Change(c)) => apply.change(c)?,
                Some(Incoming::Commit) => break,
                None => return Err(StoreError::Aborted),
            }
        }
    } else {
        // Up to `READ_AHEAD` changes, shown to the store, then applied in order; the commit
        // waits for the source's end in any case.
        let mut window = Vec::with_capacity(T::READ_AHEAD);
        loop {
            let mut end = None;
            while window.len() < T::READ_AHEAD {
                match changes.next() {
                    Some(Incoming::Change(c)) => window.push(c),
                    Some(Incoming::Commit) => {
                        end = Some(true);
                        break;
                    }
                    None => {
                        end = Some(false);
                        break;
                    }
                }
            }
            if end == Some(false) {
                return Err(StoreError::Aborted);
            }
            if !window.is_empty() {
                apply.tx.prefetch(&window)?;
            }
            for c in window.drain(..) {
                apply.change(c)?;
            }
            if end == Some(true) {
                break;
            }
        }
    }
    let (seq, mut out) = (apply.seq, apply.out);
    if seq != start_seq {
        tx.meta_set("seq", seq)?;
    }
    tx.finish()?;
    // Sequences start at 0 and only grow: both fit.
    out.written = Written {
        after: start_seq as u64,
        upto: seq as u64,
    };
    Ok(out)
}

fn sid(id: ServerId) -> Option<i64> {
    i64::try_from(id.0).ok()
}

/// Decodes a body into one value per field; NaN is refused (SQLite stores it as NULL).
fn decode_body<'b>(t: &TableDef<'_>, body: &'b [u8]) -> Result<Vec<Value<'b>>, RejectReason> {
    let mut values = Vec::with_capacity(t.fields.len());
    match body::decode(t, body, |_, _, v| {
        if matches!(v, Value::F64(x) if x.is_nan()) {
            return Err(());
        }
        values.push(v);
        Ok(())
    }) {
        Ok(Ok(())) => Ok(values),
        _ => Err(RejectReason::InvalidBody),
    }
}

/// The error for a column whose stored value does not fit its field.
pub(crate) fn bad_column(t: &TableDef<'_>, f: &FieldDef<'_>) -> StoreError {
    StoreError::Corrupt(format!(
        "column {}.{} holds a value that is not a {}{}",
        t.name,
        f.name,
        f.ty.name(),
        if f.optional { " or null" } else { "" }
    ))
}

type Step = Result<Result<(), RejectReason>, StoreError>;

/// What a sync knows of the local ids `_idmap` maps for its device in one table.
#[derive(Clone, Copy, Debug)]
enum Bounds {
    /// Not read yet.
    Unread,
    /// None.
    Empty,
    /// Every mapped local id is in `lo..=hi` (not every one there is mapped).
    Range(u32, u32),
}

impl Bounds {
    fn may_hold(self, local: u32) -> bool {
        match self {
            Bounds::Unread => true,
            Bounds::Empty => false,
            Bounds::Range(lo, hi) => (lo..=hi).contains(&local),
        }
    }

    fn widen(self, local: u32) -> Bounds {
        match self {
            Bounds::Unread => Bounds::Unread,
            Bounds::Empty => Bounds::Range(local, local),
            Bounds::Range(lo, hi) => Bounds::Range(lo.min(local), hi.max(local)),
        }
    }
}

/// One sync's work inside its transaction.
struct Apply<'c, T> {
    tx: &'c mut T,
    schema: Schema<'static>,
    sql: &'c [TableSql],
    device: &'c Device,
    params: SyncParams,
    seq: i64,
    out: SyncOutcome,
    /// `(table, local) → server` of this device, as made or read in this transaction.
    mapped: Memo<(TableId, u32), i64>,
    /// Meta of live records as read or written in this transaction (`None`: not live).
    metas: Memo<(TableId, i64), Option<RowMeta>>,
    /// Per table, the bounds of this device's mapped local ids, widened by every mapping this
    /// transaction makes: a new add's local id (devices count up) is outside, so it needs no
    /// query to know it is not a retry.
    bounds: Vec<Bounds>,
}

impl<T: SyncTx> Apply<'_, T> {
    fn next_seq(&mut self) -> i64 {
        self.seq += 1;
        self.seq
    }

    /// The stamp stored for an incoming change: clamped to server time plus the allowed skew,
    /// and carrying the authenticated device's id (a device cannot claim another's tie-break).
    fn stamp(&self, at: Hlc) -> Hlc {
        let at = at.clamp(self.params.now_ms.saturating_add(self.params.max_skew_ms));
        Hlc {
            device: self.device.id,
            ..at
        }
    }

    fn change(&mut self, c: OwnedChange) -> Result<(), StoreError> {
        let res = match self.schema.table(c.table) {
            None => Err(RejectReason::UnknownTable),
            Some(t) => match c.op {
                Op::Add => self.add(&c, t)?,
                Op::Update => self.update(&c, t)?,
                Op::Delete => self.delete(&c)?,
            },
        };
        if let Err(reason) = res {
            self.out.rejected.push(OwnedRejected {
                table: c.table,
                op: c.op,
                key: c.key,
                reason,
                body: c.body,
            });
        }
        Ok(())
    }

    fn idmap(&mut self, table: TableId, local: LocalId) -> Result<Option<i64>, StoreError> {
        if let Some(id) = self.mapped.get(&(table, local.0)) {
            return Ok(Some(*id));
        }
        let ti = table.0 as usize;
        let name = self.schema.tables[ti].name;
        if let Bounds::Unread = self.bounds[ti] {
            self.bounds[ti] = match self.tx.idmap_bounds(self.device.id, name)? {
                Some((lo, hi)) => Bounds::Range(lo, hi),
                None => Bounds::Empty,
            };
        }
        if !self.bounds[ti].may_hold(local.0) {
            return Ok(None);
        }
        let found = self.tx.idmap_get(self.device.id, name, local.0)?;
        if let Some(id) = found {
            self.remember_mapping(table, local.0, id);
        }
        Ok(found)
    }

    fn row_meta(&mut self, table: TableId, id: i64) -> Result<Option<RowMeta>, StoreError> {
        if !self.is_parent(table) {
            return self.tx.row_meta(table.0 as usize, id);
        }
        if let Some(m) = self.metas.get(&(table, id)) {
            return Ok(m.clone());
        }
        let m = self.tx.row_meta(table.0 as usize, id)?;
        self.remember_meta(table, id, m.clone());
        Ok(m)
    }

    /// Whether records of `table` can be parents: only theirs are remembered (a batch's
    /// details look their parents up; a record is rarely changed twice in one batch), so the
    /// memos hold nothing of other tables.
    fn is_parent(&self, table: TableId) -> bool {
        !self.sql[table.0 as usize].children.is_empty()
    }

    fn remember_mapping(&mut self, table: TableId, local: u32, id: i64) {
        if !self.is_parent(table) {
            return;
        }
        if self.mapped.len() >= MEMO_MAX {
            self.mapped.clear();
        }
        self.mapped.insert((table, local), id);
    }

    /// Records what a record's row now is (`None`: deleted). Must follow every write.
    fn remember_meta(&mut self, table: TableId, id: i64, meta: Option<RowMeta>) {
        if !self.is_parent(table) {
            return;
        }
        if self.metas.len() >= MEMO_MAX {
            self.metas.clear();
        }
        self.metas.insert((table, id), meta);
    }

    /// Why a record that is not live cannot be changed.
    fn missing(&mut self, table: TableId, id: i64) -> Result<RejectReason, StoreError> {
        let name = self.schema.tables[table.0 as usize].name;
        Ok(match self.tx.tombstone_scope(name, id)? {
            Some(s) if s == self.device.scope => RejectReason::Deleted,
            Some(_) => RejectReason::OutOfScope,
            None => RejectReason::UnknownRecord,
        })
    }

    /// Resolves a parent reference to a live server id in the device's scope.
    fn parent(
        &mut self,
        table: TableId,
        r: RecordRef,
    ) -> Result<Result<i64, RejectReason>, StoreError> {
        let id = match r {
            RecordRef::Server(s) => match sid(s) {
                Some(id) => id,
                None => return Ok(Err(RejectReason::ParentMissing)),
            },
            RecordRef::Local(l) => match self.idmap(table, l)? {
                Some(id) => id,
                None => return Ok(Err(RejectReason::ParentMissing)),
            },
        };
        // The remembered meta is compared in place (a batch's details mostly find it there).
        let in_scope = match self.metas.get(&(table, id)) {
            Some(m) => m.as_ref().map(|m| m.scope == self.device.scope),
            None => self
                .row_meta(table, id)?
                .map(|m| m.scope == self.device.scope),
        };
        Ok(match in_scope {
            None => match self.missing(table, id)? {
                RejectReason::OutOfScope => Err(RejectReason::OutOfScope),
                _ => Err(RejectReason::ParentMissing),
            },
            Some(false) => Err(RejectReason::OutOfScope),
            Some(true) => Ok(id),
        })
    }

    fn scope_field_ok(&self, table: TableId, values: &[Value<'_>]) -> bool {
        match self.sql[table.0 as usize].scope_index {
            None => true,
            Some(i) => values.get(i) == Some(&Value::Text(&self.device.scope)),
        }
    }

    fn add(&mut self, c: &OwnedChange, t: &TableDef<'static>) -> Step {
        let RecordRef::Local(local) = c.key else {
            return Ok(Err(RejectReason::BadKey));
        };
        let values = match decode_body(t, &c.body) {
            Ok(v) => v,
            Err(r) => return Ok(Err(r)),
        };
        if let Some(server) = self.idmap(c.table, local)? {
            // A retry: the add was applied before. Same mapping; the rest is an update.
            self.out.mappings.push(Mapping {
                table: c.table,
                local,
                server: ServerId(server as u64),
            });
            return Ok(match self.write_update(c, t, server, &values)? {
                // Deleted since: the delete wins, and the device learns it from the reply.
                Err(RejectReason::Deleted) => {
                    self.out.losers.push((c.table, ServerId(server as u64)));
                    Ok(())
                }
                other => other,
            });
        }
        let parent = match (t.parent, c.parent) {
            (None, None) => None,
            (None, Some(_)) | (Some(_), None) => return Ok(Err(RejectReason::BadKey)),
            (Some(pt), Some(r)) => match self.parent(pt, r)? {
                Ok(id) => Some(id),
                Err(e) => return Ok(Err(e)),
            },
        };
        if !self.scope_field_ok(c.table, &values) {
            return Ok(Err(RejectReason::OutOfScope));
        }
        let at = self.stamp(c.modified_at);
        let seq = self.next_seq();
        let device = self.device;
        let ti = c.table.0 as usize;
        let row = NewRow {
            values: &values,
            parent,
            scope: &device.scope,
            seq,
            at,
            device: device.id,
            local: local.0,
        };
        let id = self.tx.insert_mapped(ti, &row)?;
        if (at.wall_ms, at.counter) != (c.modified_at.wall_ms, c.modified_at.counter) {
            // Stored with another clock than the device holds (clamped): the reply sends it.
            // The device id is always the server's stamp (batched changes do not carry it).
            self.out.losers.push((c.table, ServerId(id as u64)));
        }
        self.bounds[ti] = self.bounds[ti].widen(local.0);
        self.remember_mapping(c.table, local.0, id);
        let meta = RowMeta {
            scope: device.scope.clone(),
            at,
            parent,
        };
        self.remember_meta(c.table, id, Some(meta));
        self.out.mappings.push(Mapping {
            table: c.table,
            local,
            server: ServerId(id as u64),
        });
        self.out.applied += 1;
        Ok(Ok(()))
    }

    /// The server id a change's key names: `Ok(None)` for a local id never mapped, a
    /// rejection for a server id that cannot exist.
    fn key_id(&mut self, c: &OwnedChange) -> Result<Result<Option<i64>, RejectReason>, StoreError> {
        Ok(match c.key {
            RecordRef::Server(s) => sid(s).map(Some).ok_or(RejectReason::UnknownRecord),
            RecordRef::Local(l) => Ok(self.idmap(c.table, l)?),
        })
    }

    fn update(&mut self, c: &OwnedChange, t: &TableDef<'static>) -> Step {
        let id = match self.key_id(c)? {
            Ok(Some(id)) => id,
            Ok(None) => return Ok(Err(RejectReason::UnknownRecord)),
            Err(r) => return Ok(Err(r)),
        };
        let values = match decode_body(t, &c.body) {
            Ok(v) => v,
            Err(r) => return Ok(Err(r)),
        };
        self.write_update(c, t, id, &values)
    }

    /// Last-write-wins update of live record `id` (or the reason it cannot be changed).
    fn write_update(
        &mut self,
        c: &OwnedChange,
        t: &TableDef<'static>,
        id: i64,
        values: &[Value<'_>],
    ) -> Step {
        let Some(meta) = self.row_meta(c.table, id)? else {
            return Ok(Err(self.missing(c.table, id)?));
        };
        if meta.scope != self.device.scope || !self.scope_field_ok(c.table, values) {
            return Ok(Err(RejectReason::OutOfScope));
        }
        let parent = match (t.parent, c.parent) {
            (None, None) => None,
            (None, Some(_)) => return Ok(Err(RejectReason::BadKey)),
            (Some(_), None) => meta.parent,
            // The parent the record has already: it was checked when it was set, the foreign
            // key keeps it there, and scopes do not move (`scope_field_ok`), so it is not
            // looked up again.
            (Some(_), Some(RecordRef::Server(s))) if sid(s).is_some() && sid(s) == meta.parent => {
                meta.parent
            }
            (Some(pt), Some(r)) => match self.parent(pt, r)? {
                Ok(id) => Some(id),
                Err(e) => return Ok(Err(e)),
            },
        };
        let at = self.stamp(c.modified_at);
        if at <= meta.at {
            self.out.losers.push((c.table, ServerId(id as u64)));
            return Ok(Ok(()));
        }
        let seq = self.next_seq();
        let mut args: Vec<Arg<'_>> = values.iter().map(|v| Arg::V(*v)).collect();
        // Most updates keep their parent: then the foreign key is not written again.
        let keep_parent = parent == meta.parent;
        if t.parent.is_some() && !keep_parent {
            args.push(parent.map_or(Arg::Null, Arg::I));
        }
        args.extend([
            Arg::I(seq),
            Arg::I(at.wall_ms as i64),
            Arg::I(i64::from(at.counter)),
            Arg::I(i64::from(at.device)),
            Arg::I(id),
        ]);
        self.tx.update(c.table.0 as usize, keep_parent, &args)?;
        if (at.wall_ms, at.counter) != (c.modified_at.wall_ms, c.modified_at.counter) {
            // Stored with another clock than the device holds (clamped): the reply sends it.
            // The device id is always the server's stamp (batched changes do not carry it).
            self.out.losers.push((c.table, ServerId(id as u64)));
        }
        self.remember_meta(c.table, id, Some(RowMeta { at, parent, ..meta }));
        self.out.applied += 1;
        Ok(Ok(()))
    }

    fn delete(&mut self, c: &OwnedChange) -> Step {
        let id = match self.key_id(c)? {
            Ok(Some(id)) => id,
            // Never reached the server: nothing to delete.
            Ok(None) => return Ok(Ok(())),
            Err(r) => return Ok(Err(r)),
        };
        match self.row_meta(c.table, id)? {
            None => Ok(match self.missing(c.table, id)? {
                // Already deleted: deletes are idempotent.
                RejectReason::Deleted => Ok(()),
                other => Err(other),
            }),
            Some(m) if m.scope != self.device.scope => Ok(Err(RejectReason::OutOfScope)),
            Some(_) => {
                self.cascade(c.table.0 as usize, id)?;
                self.out.applied += 1;
                Ok(Ok(()))
            }
        }
    }

    /// Deletes a record and all its details at every depth, each with a tombstone.
    fn cascade(&mut self, ti: usize, id: i64) -> Result<(), StoreError> {
        let sqls = self.sql;
        for (k, (child, _)) in sqls[ti].children.iter().enumerate() {
            for cid in self.tx.child_ids(ti, k, id)? {
                self.cascade(*child, cid)?;
            }
        }
        self.tx.delete(ti, id)?;
        self.remember_meta(TableId(ti as u8), id, None);
        let seq = self.next_seq();
        let (name, scope) = (self.schema.tables[ti].name, self.device.scope.as_str());
        self.tx
            .put_tombstone(name, id, seq, scope, self.params.now_ms as i64)
    }
}

/// One record row of a reply, as read from the store.
pub(crate) struct Row<'r> {
    /// Server id.
    pub id: i64,
    /// Foreign key (details).
    pub parent: Option<i64>,
    /// Clock of the winning change.
    pub at: Hlc,
    /// Field values in schema order.
    pub values: &'r [Value<'r>],
}

/// Which rows of a table a reply reads (see [`TableSql`]'s `full`, `delta` and `by_id`).
/// `skip` is `(after, upto)`: rows whose `_seq` is in `after < _seq <= upto` are left out of
/// `Full` and `Delta` (those of the sync being answered; `(0, 0)` leaves out nothing).
#[derive(Clone, Copy, Debug)]
pub(crate) enum RowQuery<'a> {
    /// Every row of the scope, but those in `skip`.
    Full { scope: &'a str, skip: (i64, i64) },
    /// Rows of the scope changed after `cursor`, but those in `skip`.
    Delta {
        scope: &'a str,
        cursor: i64,
        skip: (i64, i64),
    },
    /// One row if in the scope and `Delta` with the same arguments leaves it out (not changed
    /// after `cursor`, or in `skip`); a full reply passes `cursor` -1.
    ById {
        id: i64,
        scope: &'a str,
        cursor: i64,
        skip: (i64, i64),
    },
}

/// Reads of one reply, all from one snapshot.
pub(crate) trait SnapshotTx {
    /// A `_meta` value.
    fn meta_get(&mut self, key: &str) -> Result<Option<i64>, StoreError>;
    /// Calls `f` for each row of table `ti` that `q` selects, in `_seq` order.
    fn rows(
        &mut self,
        ti: usize,
        q: RowQuery<'_>,
        f: &mut dyn FnMut(Row<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
    /// Calls `f` with `(table name, id)` of each tombstone of `scope` whose sequence is in
    /// `after < seq <= upto`, in sequence order.
    fn tombstones(
        &mut self,
        scope: &str,
        after: i64,
        upto: i64,
        f: &mut dyn FnMut(&str, i64) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
    /// The sequence of the tombstone of record `id` of table `table` in `scope`, if any.
    fn tombstone_seq(
        &mut self,
        table: &str,
        id: i64,
        scope: &str,
    ) -> Result<Option<i64>, StoreError>;
}

/// Reads a reply from a snapshot, in reply order, into `sink`; returns the snapshot's cursor.
/// Rows the sync that took `written` wrote are left out, but for `plan.extra`; see
/// [`super::ServerStore::read_sync_reply`].
pub(crate) fn read_reply<T: SnapshotTx>(
    tx: &mut T,
    schema: Schema<'static>,
    plan: &ReplyPlan<'_>,
    written: Written,
    sink: &mut dyn FnMut(ReplyItem<'_>) -> Result<(), StoreError>,
) -> Result<u64, StoreError> {
    let seq = tx.meta_get("seq")?.unwrap_or(0);
    let floor = tx.meta_get("tombstone_floor")?.unwrap_or(0);
    let cursor = match (plan.mode, plan.cursor) {
        (Mode::Delta, Some(c)) if c >= floor as u64 && c <= seq as u64 => Some(c as i64),
        _ => None,
    };
    let skip = match (i64::try_from(written.after), i64::try_from(written.upto)) {
        (Ok(after), Ok(upto)) if after < upto => (after, upto),
        _ => (0, 0),
    };
    let mut buf = vec![0u8; BODY_BUF];
    let mut extra = plan.extra.to_vec();
    extra.sort_unstable();
    extra.dedup();
    // The extra records no query answered: live ones the delta read, or deleted ones.
    let mut unanswered = Vec::new();
    if cursor.is_none() {
        sink(ReplyItem::Reset)?;
    }
    for (ti, t) in schema.tables.iter().enumerate() {
        let table = TableId(ti as u8);
        let answered = std::cell::Cell::new(false);
        let mut emit = |row: Row<'_>| -> Result<(), StoreError> {
            let id = row.id;
            answered.set(true);
            let body = body::encode(t, row.values, &mut buf).map_err(|e| {
                StoreError::Corrupt(format!("{}#{id} does not encode: {e}", t.name))
            })?;
            sink(ReplyItem::Upsert(Upsert {
                table,
                id: ServerId(id as u64),
                parent: row.parent.map(|p| ServerId(p as u64)),
                modified_at: row.at,
                body,
            }))
        };
        let scope = plan.scope;
        match cursor {
            None => tx.rows(ti, RowQuery::Full { scope, skip }, &mut emit)?,
            Some(cursor) => tx.rows(
                ti,
                RowQuery::Delta {
                    scope,
                    cursor,
                    skip,
                },
                &mut emit,
            )?,
        }
        for (_, id) in extra.iter().filter(|(xt, _)| *xt == table) {
            let Some(id) = sid(*id) else { continue };
            answered.set(false);
            let cursor = cursor.unwrap_or(-1);
            let q = RowQuery::ById {
                id,
                scope,
                cursor,
                skip,
            };
            tx.rows(ti, q, &mut emit)?;
            if !answered.get() {
                unanswered.push((ti, id));
            }
        }
    }
    // Tombstones: all after the cursor for a delta; for a full reply, those of the sync
    // answered (its cascades may have taken records it confirms).
    let (after, upto) = match cursor {
        Some(c) => (c, i64::MAX),
        None => skip,
    };
    let mut remove = |name: &str, id: i64| match schema.table_id(name) {
        Some(table) => sink(ReplyItem::Remove(Remove {
            table,
            id: ServerId(id as u64),
        })),
        None => Ok(()),
    };
    if after < upto {
        tx.tombstones(plan.scope, after, upto, &mut remove)?;
    }
    for (ti, id) in unanswered {
        let name = schema.tables[ti].name;
        if let Some(s) = tx.tombstone_seq(name, id, plan.scope)? {
            if !(after < s && s <= upto) {
                remove(name, id)?;
            }
        }
    }
    Ok(seq as u64)
}
