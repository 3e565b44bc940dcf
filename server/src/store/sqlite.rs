//! [`ServerStore`] on one SQLite file (WAL, one writer, pooled readers).
//!
//! Layout (created on first open):
//! - one table per schema table, named as in the schema, with typed columns (`text` → TEXT,
//!   `i64`/`u64`/`bool` → INTEGER, `f64` → REAL, `bytes` → BLOB; NOT NULL unless optional;
//!   `u64` values above `i64::MAX` are stored bit-cast, so they read negative in plain SQL),
//!   the parent's foreign key (`INTEGER NOT NULL REFERENCES parent(id)`), and the sync
//!   columns `id` (server id, never reused), `_scope`, `_seq` (global change sequence),
//!   `_wall`, `_counter`, `_device` (the clock of the winning change). Deleted rows are
//!   removed, so plain SQL sees only live data;
//! - `_tombstone(tbl, id, seq, scope, at)`: deleted records, kept for the retention period;
//! - `_idmap(device, tbl, local, server)`: every add's device-local id → server id, forever,
//!   so a retried batch creates nothing twice;
//! - `_device(id, scope, token_hash, revoked, created_at)`;
//! - `_meta(key, value)`: `seq` (last change sequence), `tombstone_floor` (highest pruned
//!   tombstone sequence) and `schema_hash`.

use super::engine::{
    bad_column, check_schema_hash, hlc_of, local_bounds, read_reply, run_sync, Arg, NewRow, Row,
    RowMeta, RowQuery, SnapshotTx, SyncTx,
};
use super::lock;
use super::sqlgen::{self, TableSql, SQLITE};
use super::{
    ChangeSource, Device, ReplyItem, ReplyPlan, ServerStore, StoreError, SyncOutcome, SyncParams,
    Written,
};
use crate::schema_file::LoadedSchema;
use ferrysync_core::body::Value;
use ferrysync_core::schema::{FieldDef, FieldType, Schema, TableDef};
use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};
use rusqlite::{
    params, params_from_iter, CachedStatement, Connection, OptionalExtension, TransactionBehavior,
};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Readers kept open for reuse.
const READER_POOL: usize = 8;
/// Page cache of the writer connection, KiB.
const WRITER_CACHE_KIB: i64 = 64 * 1024;

/// Log pages past which the writer checkpoints in its own commit: only when the
/// [`Checkpointer`] falls that far behind (SQLite's default, 1,000 pages, made every eighth
/// 1 % delta sync pay for copying the log).
const WRITER_AUTOCHECKPOINT_PAGES: i64 = 16 * 1024;

/// Least time between two checkpoints of the [`Checkpointer`]: commits in the meantime are
/// copied by the next one, so a busy server does not fsync its database file per sync. 50 ms
/// cost the median 1 % delta sync 5-25 % (the checkpoint's fsync beside the commit's), 500 ms
/// about 5 %, both cutting its worst case from 6.5-9 ms to 2.7-3.3 ms
/// (`FERRYSYNC_BENCH_PROFILE=delta cargo bench -p ferrysync-server --bench reconcile`).
const CHECKPOINT_REST: Duration = Duration::from_millis(500);
/// Most rows one multi-row insert writes. A sync holds new records (and their `_idmap` rows)
/// back and writes them this many at a time: one statement per batch instead of per row.
/// Measured (callgrind, first push of 100+1,000 and 1,000+10,000 to a fresh store): 16 beats
/// 8, 32 and 64, whose longer statements cost more to prepare than they save in execution.
const BATCH: usize = 16;
/// Row counts of the multi-row inserts, largest first, so any number of held rows is written
/// in few statements of few distinct shapes.
const BATCH_SIZES: [usize; 3] = [BATCH, 4, 1];

const SYSTEM_DDL: &str = "
CREATE TABLE IF NOT EXISTS _meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO _meta (key, value) VALUES ('seq', 0), ('tombstone_floor', 0);
CREATE TABLE IF NOT EXISTS _device (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    scope TEXT NOT NULL,
    token_hash BLOB NOT NULL UNIQUE,
    revoked INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS _idmap (
    device INTEGER NOT NULL,
    tbl TEXT NOT NULL,
    local INTEGER NOT NULL,
    server INTEGER NOT NULL,
    PRIMARY KEY (device, tbl, local)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _tombstone (
    tbl TEXT NOT NULL,
    id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    scope TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (tbl, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS _tombstone_scope_seq ON _tombstone (scope, seq);
CREATE INDEX IF NOT EXISTS _tombstone_at ON _tombstone (at);
";

fn open_conn(path: &Path) -> Result<Connection, rusqlite::Error> {
    let c = Connection::open(path)?;
    c.busy_timeout(Duration::from_secs(10))?;
    // `PRAGMA journal_mode` answers with a row, so it is a query.
    let _mode: String = c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    // FULL: a committed sync survives a power cut; devices trust the ids we send back.
    c.pragma_update(None, "synchronous", "FULL")?;
    c.pragma_update(None, "foreign_keys", "ON")?;
    c.set_prepared_statement_cache_capacity(256);
    Ok(c)
}

// Every sync reads and writes `_meta` (its sequence, the tombstone floor) and asks for expired
// tombstones: their statements come from the connection's cache, as the record statements do
// (parsing them again was 7 % of a server's part of a 1 % delta pull).
fn meta_get(c: &Connection, key: &str) -> Result<Option<i64>, rusqlite::Error> {
    c.prepare_cached("SELECT value FROM _meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()
}

fn meta_set(c: &Connection, key: &str, value: i64) -> Result<(), rusqlite::Error> {
    c.prepare_cached(
        "INSERT INTO _meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![key, value])?;
    Ok(())
}

/// The multi-row inserts of a store, one per count of [`BATCH_SIZES`].
struct BatchSql {
    /// Per schema table: its rows with explicit ids ([`sqlgen::insert_rows`]).
    tables: Vec<Vec<String>>,
    /// `_idmap (device, tbl, local, server)` rows of one device and table: `?1` the device,
    /// `?2` the table, then `local, server` per row.
    idmap: Vec<String>,
    /// Per schema table: the largest id it ever had (AUTOINCREMENT's `sqlite_sequence`, or the
    /// largest id if that has no row), from which a sync numbers its new records.
    last_id: Vec<String>,
}

impl BatchSql {
    fn new(schema: &Schema<'static>) -> Self {
        let idmap = BATCH_SIZES
            .iter()
            .map(|&n| {
                let rows: Vec<String> = (0..n)
                    .map(|r| format!("(?1, ?2, ?{}, ?{})", 3 + 2 * r, 4 + 2 * r))
                    .collect();
                format!(
                    "INSERT INTO _idmap (device, tbl, local, server) VALUES {}",
                    rows.join(", ")
                )
            })
            .collect();
        BatchSql {
            tables: (0..schema.tables.len())
                .map(|ti| {
                    let sizes = BATCH_SIZES.iter();
                    sizes.map(|&n| sqlgen::insert_rows(schema, ti, n)).collect()
                })
                .collect(),
            idmap,
            last_id: schema
                .tables
                .iter()
                .map(|t| {
                    format!(
                        "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = ?1), 0),
                                    coalesce((SELECT max(id) FROM {}), 0))",
                        sqlgen::q(t.name)
                    )
                })
                .collect(),
        }
    }
}

/// The server's store on a SQLite file.
pub struct SqliteStore {
    path: PathBuf,
    schema: Option<LoadedSchema>,
    sql: Vec<TableSql>,
    batch: BatchSql,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    checkpointer: Option<Checkpointer>,
}

/// Copies the WAL into the database file on a thread of its own, after commits, so that a
/// sync's commit does not (`PRAGMA wal_checkpoint(PASSIVE)`: it never waits for the writer
/// nor blocks it). The writer still checkpoints by itself past
/// [`WRITER_AUTOCHECKPOINT_PAGES`], which bounds the log if this thread falls behind or stops.
struct Checkpointer {
    /// Wakes the thread; a nudge while one is pending is dropped (one checkpoint copies all).
    nudge: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread, with its own connection to `path`.
    fn start(path: &Path) -> Result<Checkpointer, StoreError> {
        let conn = open_conn(path)?;
        let (nudge, woken) = mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("ferrysync-checkpoint".into())
            .spawn(move || {
                let mut pending = woken.recv().is_ok();
                while pending {
                    // A failed checkpoint loses nothing (the log keeps the pages): the next
                    // one, or the writer's own past its limit, copies them.
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!("WAL checkpoint failed (the next one retries): {e}");
                    }
                    // Rest, remembering nudges, but end at once when the store is dropped.
                    pending = false;
                    let until = Instant::now() + CHECKPOINT_REST;
                    loop {
                        let left = until.saturating_duration_since(Instant::now());
                        match woken.recv_timeout(left) {
                            Err(RecvTimeoutError::Disconnected) => return,
                            Err(RecvTimeoutError::Timeout) => break,
                            Ok(()) => pending = true,
                        }
                    }
                    if !pending {
                        pending = woken.recv().is_ok();
                    }
                }
            })
            .map_err(|e| StoreError::Corrupt(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer {
            nudge: Some(nudge),
            thread: Some(thread),
        })
    }

    /// Asks for a checkpoint after a commit.
    fn nudge(&self) {
        if let Some(n) = &self.nudge {
            // Full: a checkpoint is pending already. Disconnected: the thread ended; the
            // writer's own checkpoints bound the log.
            let _ = n.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // Closing the channel ends the thread, at once even in its rest.
        drop(self.nudge.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("schema_hash", &self.schema.map(|s| s.hash()))
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` for serving `schema`: creates the
    /// system tables and one table per schema table. Fails if the database was created for
    /// another schema.
    pub fn open(path: &Path, schema: LoadedSchema) -> Result<Self, StoreError> {
        Self::open_inner(path, Some(schema))
    }

    /// Opens (creating if needed) the database at `path` for device administration only
    /// (no schema tables are created).
    pub fn open_admin(path: &Path) -> Result<Self, StoreError> {
        Self::open_inner(path, None)
    }

    fn open_inner(path: &Path, schema: Option<LoadedSchema>) -> Result<Self, StoreError> {
        let conn = open_conn(path)?;
        // The writer's page cache: up to 64 MiB (default 2 MiB), so a large sync does not
        // spill dirty pages to the WAL before its commit (100,000 records: about 20 % faster).
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
        // Checkpoints run on the checkpointer's thread (serving stores), or past this.
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)?;
        conn.execute_batch(SYSTEM_DDL)?;
        let mut sql = Vec::new();
        let mut batch = BatchSql::new(&Schema { tables: &[] });
        if let Some(ls) = schema {
            let s = ls.schema();
            batch = BatchSql::new(&s);
            let mut ops = LiteTx::new(&conn, s, &[], &batch);
            check_schema_hash(&mut ops, &ls, &path.display().to_string(), "--db")?;
            conn.execute_batch(&sqlgen::schema_ddl(&SQLITE, &s))?;
            sql = sqlgen::schema_sql(&SQLITE, &s);
        }
        Ok(SqliteStore {
            path: path.to_path_buf(),
            schema,
            sql,
            batch,
            writer: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
            // Only a store that serves syncs commits often enough to want it.
            checkpointer: match schema {
                Some(_) => Some(Checkpointer::start(path)?),
                None => None,
            },
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `CREATE TABLE` statements of a schema's tables, as this store creates them.
    pub fn schema_ddl(schema: &LoadedSchema) -> String {
        sqlgen::schema_ddl(&SQLITE, &schema.schema())
    }

    fn with_reader<R>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let pooled = lock(&self.readers).pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => open_conn(&self.path)?,
        };
        let r = f(&mut conn);
        if r.is_ok() {
            let mut pool = lock(&self.readers);
            if pool.len() < READER_POOL {
                pool.push(conn);
            }
        }
        r
    }
}

impl ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        use rusqlite::types::Value as V;
        Ok(match self {
            Arg::V(Value::Null) | Arg::Null => ToSqlOutput::Owned(V::Null),
            Arg::V(Value::Bool(b)) => ToSqlOutput::Owned(V::Integer(i64::from(*b))),
            Arg::V(Value::I64(i)) | Arg::I(i) => ToSqlOutput::Owned(V::Integer(*i)),
            Arg::V(Value::U64(u)) => ToSqlOutput::Owned(V::Integer(*u as i64)),
            Arg::V(Value::F64(x)) => ToSqlOutput::Owned(V::Real(*x)),
            Arg::V(Value::Text(s)) | Arg::S(s) => {
                ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes()))
            }
            Arg::V(Value::Bytes(b)) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

fn column_value<'r>(
    t: &TableDef<'_>,
    f: &FieldDef<'_>,
    v: ValueRef<'r>,
) -> Result<Value<'r>, StoreError> {
    Ok(match (v, f.ty) {
        (ValueRef::Null, _) if f.optional => Value::Null,
        (ValueRef::Integer(i), FieldType::Bool) => Value::Bool(i != 0),
        (ValueRef::Integer(i), FieldType::I64) => Value::I64(i),
        (ValueRef::Integer(i), FieldType::U64) => Value::U64(i as u64),
        (ValueRef::Real(x), FieldType::F64) => Value::F64(x),
        (ValueRef::Integer(i), FieldType::F64) => Value::F64(i as f64),
        (ValueRef::Text(s), FieldType::Text) => match std::str::from_utf8(s) {
            Ok(s) => Value::Text(s),
            Err(_) => return Err(bad_column(t, f)),
        },
        (ValueRef::Blob(b), FieldType::Bytes) => Value::Bytes(b),
        _ => return Err(bad_column(t, f)),
    })
}

/// A value of a held row; text and blobs are ranges of the table's byte buffer.
#[derive(Clone, Debug)]
enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(std::ops::Range<usize>),
    Blob(std::ops::Range<usize>),
}

impl Cell {
    /// Copies a field value (its text or blob into `bytes`).
    fn of(v: &Value<'_>, bytes: &mut Vec<u8>) -> Cell {
        let mut keep = |b: &[u8]| {
            let start = bytes.len();
            bytes.extend_from_slice(b);
            start..bytes.len()
        };
        match v {
            Value::Null => Cell::Null,
            Value::Bool(b) => Cell::Int(i64::from(*b)),
            Value::I64(i) => Cell::Int(*i),
            // Stored bit-cast, as `Arg`'s `ToSql` does.
            Value::U64(u) => Cell::Int(*u as i64),
            Value::F64(x) => Cell::Real(*x),
            Value::Text(s) => Cell::Text(keep(s.as_bytes())),
            Value::Bytes(b) => Cell::Blob(keep(b)),
        }
    }

    fn bind<'b>(&self, bytes: &'b [u8]) -> ToSqlOutput<'b> {
        ToSqlOutput::Borrowed(match self {
            Cell::Null => ValueRef::Null,
            Cell::Int(i) => ValueRef::Integer(*i),
            Cell::Real(x) => ValueRef::Real(*x),
            Cell::Text(r) => ValueRef::Text(&bytes[r.clone()]),
            Cell::Blob(r) => ValueRef::Blob(&bytes[r.clone()]),
        })
    }
}

/// New records of one table held back by a sync, with their `_idmap` rows.
#[derive(Default)]
struct Held {
    /// The id the last new record took (read on the first insert of the sync).
    last_id: Option<i64>,
    /// Cells of the held rows, row after row: [`sqlgen::insert_rows`]'s per-row values.
    cells: Vec<Cell>,
    /// Held rows.
    rows: usize,
    /// Text and blob bytes of the cells.
    bytes: Vec<u8>,
    /// The scope of every held row (bound once per statement).
    scope: String,
    /// The device of every held `_idmap` row, and its `(local, server)` pairs.
    device: u32,
    idmap: Vec<(u32, i64)>,
}

/// The statements of a sync or a reply on one SQLite connection (inside its transaction).
///
/// A sync holds its new records and their `_idmap` rows back and writes them up to [`BATCH`]
/// per statement, parents' tables first (the foreign keys hold at every statement); every
/// other statement of the sync first writes what is held, so it sees them
/// ([`SyncTx::finish`] writes the rest). New records are numbered here, from the largest id
/// the table ever had: the sync holds the only writer, and AUTOINCREMENT's `sqlite_sequence`
/// follows the explicit ids, so an id is still never reused.
struct LiteTx<'c> {
    conn: &'c Connection,
    schema: Schema<'static>,
    sql: &'c [TableSql],
    batch: &'c BatchSql,
    /// Per schema table.
    held: Vec<Held>,
    /// The multi-row inserts prepared in this transaction, by table then [`BATCH_SIZES`] index
    /// (the last table's slot after the tables' are `_idmap`'s): kept at hand rather than
    /// looked up by their long text for each batch.
    inserts: Vec<Option<CachedStatement<'c>>>,
    /// The per-record statements prepared in this transaction, by table then
    /// [`RecordStmt`]: a 1 % push runs two for each record, and looking each up in the
    /// statement cache by its text (hashing it, moving it in the LRU list, resetting it on the
    /// way back) cost about 3.8k of the 28k instructions a record's update took.
    records: Vec<Option<CachedStatement<'c>>>,
}

/// The statement in `slots[slot]`, prepared from `sql` (through the connection's cache) the
/// first time the transaction asks for it: [`LiteTx`]'s statements kept at hand.
fn held_stmt<'s, 'c>(
    conn: &'c Connection,
    slots: &'s mut Vec<Option<CachedStatement<'c>>>,
    slot: usize,
    sql: &str,
) -> Result<&'s mut CachedStatement<'c>, StoreError> {
    if slots.len() <= slot {
        slots.resize_with(slot + 1, || None);
    }
    let stmt = match slots[slot].take() {
        Some(stmt) => stmt,
        None => conn.prepare_cached(sql)?,
    };
    Ok(slots[slot].insert(stmt))
}

/// The statements a sync runs once per record, held by [`LiteTx::record_stmt`].
#[derive(Clone, Copy)]
enum RecordStmt {
    /// `TableSql::meta`.
    Meta,
    /// `TableSql::update_sql(true)`.
    UpdateKeepParent,
    /// `TableSql::update_sql(false)`.
    UpdateMoveParent,
    /// `TableSql::delete`.
    Delete,
}

impl RecordStmt {
    const COUNT: usize = 4;
}

impl<'c> LiteTx<'c> {
    fn new(
        conn: &'c Connection,
        schema: Schema<'static>,
        sql: &'c [TableSql],
        batch: &'c BatchSql,
    ) -> Self {
        LiteTx {
            conn,
            schema,
            sql,
            batch,
            held: (0..schema.tables.len()).map(|_| Held::default()).collect(),
            inserts: Vec::new(),
            records: Vec::new(),
        }
    }

    /// Table `ti`'s statement `which`, prepared once per transaction.
    fn record_stmt(
        &mut self,
        ti: usize,
        which: RecordStmt,
    ) -> Result<&mut CachedStatement<'c>, StoreError> {
        let t = &self.sql[ti];
        let sql = match which {
            RecordStmt::Meta => &t.meta,
            RecordStmt::UpdateKeepParent => t.update_sql(true),
            RecordStmt::UpdateMoveParent => t.update_sql(false),
            RecordStmt::Delete => &t.delete,
        };
        let slot = ti * RecordStmt::COUNT + which as usize;
        held_stmt(self.conn, &mut self.records, slot, sql)
    }

    /// The `k`-th multi-row insert of table `ti`, or of `_idmap` for `ti` = the table count.
    fn insert_stmt(&mut self, ti: usize, k: usize) -> Result<&mut CachedStatement<'c>, StoreError> {
        let sql = match self.batch.tables.get(ti) {
            Some(t) => &t[k],
            None => &self.batch.idmap[k],
        };
        held_stmt(
            self.conn,
            &mut self.inserts,
            ti * BATCH_SIZES.len() + k,
            sql,
        )
    }

    /// Writes every held row: tables in schema order (parents first), then `_idmap`.
    fn flush(&mut self) -> Result<(), StoreError> {
        let tables = self.held.len();
        for ti in 0..tables {
            let h = std::mem::take(&mut self.held[ti]);
            let mut row = 0;
            while row < h.rows {
                let (k, n) = batch_size(h.rows - row);
                let width = h.cells.len() / h.rows;
                let st = self.insert_stmt(ti, k)?;
                st.raw_bind_parameter(1, h.scope.as_str())?;
                let cells = &h.cells[row * width..(row + n) * width];
                for (i, c) in cells.iter().enumerate() {
                    st.raw_bind_parameter(i + 2, c.bind(&h.bytes))?;
                }
                st.raw_execute()?;
                row += n;
            }
            self.held[ti] = h;
        }
        for ti in 0..tables {
            let h = std::mem::take(&mut self.held[ti]);
            let mut row = 0;
            while row < h.idmap.len() {
                let (k, n) = batch_size(h.idmap.len() - row);
                let name = self.schema.tables[ti].name;
                let st = self.insert_stmt(tables, k)?;
                st.raw_bind_parameter(1, h.device)?;
                st.raw_bind_parameter(2, name)?;
                for (i, &(local, server)) in h.idmap[row..row + n].iter().enumerate() {
                    st.raw_bind_parameter(3 + 2 * i, local)?;
                    st.raw_bind_parameter(4 + 2 * i, server)?;
                }
                st.raw_execute()?;
                row += n;
            }
            self.held[ti] = h;
        }
        for h in &mut self.held {
            h.cells.clear();
            h.bytes.clear();
            h.rows = 0;
            h.idmap.clear();
        }
        Ok(())
    }
}

/// The index in [`BATCH_SIZES`] and the size of the largest batch of at most `rows` (≥ 1).
fn batch_size(rows: usize) -> (usize, usize) {
    let k = BATCH_SIZES
        .iter()
        .position(|&n| n <= rows)
        .unwrap_or(BATCH_SIZES.len() - 1);
    (k, BATCH_SIZES[k])
}

impl SyncTx for LiteTx<'_> {
    fn meta_get(&mut self, key: &str) -> Result<Option<i64>, StoreError> {
        Ok(meta_get(self.conn, key)?)
    }

    fn meta_set(&mut self, key: &str, value: i64) -> Result<(), StoreError> {
        Ok(meta_set(self.conn, key, value)?)
    }

    fn tombstones_max_seq_before(&mut self, cutoff: i64) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT max(seq) FROM _tombstone WHERE at <= ?1")?
            .query_row([cutoff], |r| r.get(0))?)
    }

    fn prune_tombstones(&mut self, cutoff: i64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM _tombstone WHERE at <= ?1")?
            .execute([cutoff])?;
        Ok(())
    }

    fn idmap_bounds(&mut self, device: u32, table: &str) -> Result<Option<(u32, u32)>, StoreError> {
        self.flush()?;
        // Two subqueries: each of min and max alone is one probe of the primary key.
        let (lo, hi) = self
            .conn
            .prepare_cached(
                "SELECT (SELECT min(local) FROM _idmap WHERE device = ?1 AND tbl = ?2),
                        (SELECT max(local) FROM _idmap WHERE device = ?1 AND tbl = ?2)",
            )?
            .query_row(params![device, table], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(local_bounds(lo, hi))
    }

    fn idmap_get(
        &mut self,
        device: u32,
        table: &str,
        local: u32,
    ) -> Result<Option<i64>, StoreError> {
        self.flush()?;
        Ok(self
            .conn
            .prepare_cached(
                "SELECT server FROM _idmap WHERE device = ?1 AND tbl = ?2 AND local = ?3",
            )?
            .query_row(params![device, table, local], |r| r.get(0))
            .optional()?)
    }

    fn insert_mapped(&mut self, ti: usize, row: &NewRow<'_>) -> Result<i64, StoreError> {
        let h = &self.held[ti];
        if h.rows > 0 && (h.scope != row.scope || h.device != row.device) {
            // Rows of one statement share these (never happens within one device's sync).
            self.flush()?;
        }
        let last = match self.held[ti].last_id {
            Some(id) => id,
            None => self
                .conn
                .prepare_cached(&self.batch.last_id[ti])?
                .query_row([self.schema.tables[ti].name], |r| r.get(0))?,
        };
        let name = self.schema.tables[ti].name;
        let id = last
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt(format!("table {name} ran out of ids")))?;
        let h = &mut self.held[ti];
        if h.rows == 0 {
            h.scope.clear();
            h.scope.push_str(row.scope);
            h.device = row.device;
        }
        h.last_id = Some(id);
        h.cells.push(Cell::Int(id));
        for v in row.values {
            let cell = Cell::of(v, &mut h.bytes);
            h.cells.push(cell);
        }
        h.cells.extend(row.parent.map(Cell::Int));
        h.cells.extend([
            Cell::Int(row.seq),
            Cell::Int(row.at.wall_ms as i64),
            Cell::Int(i64::from(row.at.counter)),
            Cell::Int(i64::from(row.at.device)),
        ]);
        h.rows += 1;
        h.idmap.push((row.local, id));
        if h.rows >= BATCH {
            self.flush()?;
        }
        Ok(id)
    }

    fn update(&mut self, ti: usize, keep_parent: bool, args: &[Arg<'_>]) -> Result<(), StoreError> {
        self.flush()?;
        let which = if keep_parent {
            RecordStmt::UpdateKeepParent
        } else {
            RecordStmt::UpdateMoveParent
        };
        (self.record_stmt(ti, which)?).execute(params_from_iter(args.iter()))?;
        Ok(())
    }

    fn row_meta(&mut self, ti: usize, id: i64) -> Result<Option<RowMeta>, StoreError> {
        self.flush()?;
        Ok((self.record_stmt(ti, RecordStmt::Meta)?)
            .query_row([id], |r| {
                Ok(RowMeta::from_columns(
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                ))
            })
            .optional()?)
    }

    fn tombstone_scope(&mut self, table: &str, id: i64) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT scope FROM _tombstone WHERE tbl = ?1 AND id = ?2")?
            .query_row(params![table, id], |r| r.get(0))
            .optional()?)
    }

    fn child_ids(&mut self, ti: usize, k: usize, id: i64) -> Result<Vec<i64>, StoreError> {
        self.flush()?;
        Ok(self
            .conn
            .prepare_cached(&self.sql[ti].children[k].1)?
            .query_map([id], |r| r.get(0))?
            .collect::<Result<_, _>>()?)
    }

    fn delete(&mut self, ti: usize, id: i64) -> Result<(), StoreError> {
        self.flush()?;
        (self.record_stmt(ti, RecordStmt::Delete)?).execute([id])?;
        Ok(())
    }

    fn put_tombstone(
        &mut self,
        table: &str,
        id: i64,
        seq: i64,
        scope: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO _tombstone (tbl, id, seq, scope, at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![table, id, seq, scope, at_ms])?;
        Ok(())
    }

    fn finish(&mut self) -> Result<(), StoreError> {
        self.flush()
    }
}

impl SnapshotTx for LiteTx<'_> {
    fn meta_get(&mut self, key: &str) -> Result<Option<i64>, StoreError> {
        Ok(meta_get(self.conn, key)?)
    }

    fn rows(
        &mut self,
        ti: usize,
        q: RowQuery<'_>,
        f: &mut dyn FnMut(Row<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let (sql, t) = (&self.sql[ti], &self.schema.tables[ti]);
        let mut stmt;
        let mut rows = match q {
            RowQuery::Full { scope, skip } => {
                stmt = self.conn.prepare_cached(&sql.full)?;
                stmt.query(params![scope, skip.0, skip.1])?
            }
            RowQuery::Delta {
                scope,
                cursor,
                skip,
            } => {
                stmt = self.conn.prepare_cached(&sql.delta)?;
                stmt.query(params![scope, cursor, skip.0, skip.1])?
            }
            RowQuery::ById {
                id,
                scope,
                cursor,
                skip,
            } => {
                stmt = self.conn.prepare_cached(&sql.by_id)?;
                stmt.query(params![id, scope, cursor, skip.0, skip.1])?
            }
        };
        while let Some(row) = rows.next()? {
            let mut values = Vec::with_capacity(t.fields.len());
            for (i, fd) in t.fields.iter().enumerate() {
                values.push(column_value(t, fd, row.get_ref(5 + i)?)?);
            }
            f(Row {
                id: row.get(0)?,
                parent: row.get(1)?,
                at: hlc_of(row.get(2)?, row.get(3)?, row.get(4)?),
                values: &values,
            })?;
        }
        Ok(())
    }

    fn tombstones(
        &mut self,
        scope: &str,
        after: i64,
        upto: i64,
        f: &mut dyn FnMut(&str, i64) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT tbl, id FROM _tombstone WHERE scope = ?1 AND seq > ?2 AND seq <= ?3
             ORDER BY seq",
        )?;
        let mut rows = stmt.query(params![scope, after, upto])?;
        while let Some(row) = rows.next()? {
            let name: String = row.get(0)?;
            f(&name, row.get(1)?)?;
        }
        Ok(())
    }

    fn tombstone_seq(
        &mut self,
        table: &str,
        id: i64,
        scope: &str,
    ) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT seq FROM _tombstone WHERE tbl = ?1 AND id = ?2 AND scope = ?3")?
            .query_row(params![table, id, scope], |r| r.get(0))
            .optional()?)
    }
}

impl ServerStore for SqliteStore {
    fn authenticate(&self, token_hash: &[u8; 32]) -> Result<Option<Device>, StoreError> {
        self.with_reader(|c| {
            Ok(c.prepare_cached(
                "SELECT id, scope, created_at, revoked FROM _device WHERE token_hash = ?1",
            )?
            .query_row([&token_hash[..]], device_row)
            .optional()?)
        })
    }

    fn sync(
        &self,
        device: &Device,
        params: SyncParams,
        changes: &mut dyn ChangeSource,
    ) -> Result<SyncOutcome, StoreError> {
        let schema = self.schema.ok_or(StoreError::NoSchema)?.schema();
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut ops = LiteTx::new(&tx, schema, &self.sql, &self.batch);
        // An error or an abort drops `tx`: rolled back.
        let out = run_sync(&mut ops, schema, &self.sql, device, params, changes)?;
        // Its statements go back to the connection's cache first.
        drop(ops);
        tx.commit()?;
        if let Some(c) = &self.checkpointer {
            c.nudge();
        }
        Ok(out)
    }

    fn read_sync_reply(
        &self,
        plan: &ReplyPlan<'_>,
        written: Written,
        sink: &mut dyn FnMut(ReplyItem<'_>) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        let schema = self.schema.ok_or(StoreError::NoSchema)?.schema();
        self.with_reader(|conn| {
            let tx = conn.transaction()?;
            let mut ops = LiteTx::new(&tx, schema, &self.sql, &self.batch);
            read_reply(&mut ops, schema, plan, written, sink)
        })
    }

    fn add_device(
        &self,
        scope: &str,
        token_hash: &[u8; 32],
        now_ms: u64,
    ) -> Result<Device, StoreError> {
        let conn = lock(&self.writer);
        conn.execute(
            "INSERT INTO _device (scope, token_hash, revoked, created_at) VALUES (?1, ?2, 0, ?3)",
            params![scope, &token_hash[..], now_ms as i64],
        )?;
        let id = conn.last_insert_rowid();
        let id = u32::try_from(id)
            .map_err(|_| StoreError::Corrupt(format!("device id {id} does not fit 32 bits")))?;
        Ok(Device {
            id,
            scope: scope.to_string(),
            created_at_ms: now_ms,
            revoked: false,
        })
    }

    fn list_devices(&self) -> Result<Vec<Device>, StoreError> {
        self.with_reader(|c| {
            let mut stmt =
                c.prepare_cached("SELECT id, scope, created_at, revoked FROM _device ORDER BY id")?;
            let rows = stmt.query_map([], device_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn revoke_device(&self, id: u32) -> Result<bool, StoreError> {
        let conn = lock(&self.writer);
        let n = conn.execute("UPDATE _device SET revoked = 1 WHERE id = ?1", [id])?;
        Ok(n > 0)
    }
}

fn device_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Device> {
    Ok(Device {
        id: r.get(0)?,
        scope: r.get(1)?,
        created_at_ms: r.get::<_, i64>(2)? as u64,
        revoked: r.get::<_, i64>(3)? != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store for the example schema on a file in a new temporary folder (kept alive by the
    /// returned guard).
    fn fresh() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db"), LoadedSchema::example()).unwrap();
        (dir, store)
    }

    #[test]
    fn commits_only_on_commit() {
        let (_dir, store) = fresh();
        crate::store::testkit::commits_only_on_commit(&store);
    }

    #[test]
    fn large_mixed_batches() {
        let (_dir, store) = fresh();
        crate::store::testkit::large_mixed_batches(&store);
    }

    #[test]
    fn batches_past_any_statement_size() {
        let (_dir, store) = fresh();
        crate::store::testkit::batches_past_any_statement_size(&store);
    }

    #[test]
    fn a_cut_batch_leaves_nothing() {
        let (_dir, store) = fresh();
        crate::store::testkit::a_cut_batch_leaves_nothing(&store);
    }

    #[test]
    fn batch_changes_see_the_batchs_own_writes() {
        let (_dir, store) = fresh();
        crate::store::testkit::batch_changes_see_the_batchs_own_writes(&store);
    }

    #[test]
    fn sync_reply_leaves_out_what_the_sync_wrote() {
        let (_dir, store) = fresh();
        crate::store::testkit::sync_reply_leaves_out_what_the_sync_wrote(&store);
    }

    #[test]
    fn updates_keep_or_move_the_parent() {
        let (_dir, store) = fresh();
        crate::store::testkit::updates_keep_or_move_the_parent(&store);
    }

    /// A sync of 500 new companies with local ids from `first`, committed.
    fn add_companies(store: &SqliteStore, dev: &Device, first: u32) {
        use crate::store::testkit::{company, params};
        use crate::store::{Incoming, OwnedChange};
        use ferrysync_core::wire::Op;
        use ferrysync_core::{Hlc, LocalId, RecordRef, TableId};

        let changes: Vec<_> = (first..first + 500)
            .map(|l| {
                Incoming::Change(OwnedChange {
                    table: TableId(0),
                    op: Op::Add,
                    key: RecordRef::Local(LocalId(l)),
                    parent: None,
                    modified_at: Hlc::new(999_000, 0, dev.id),
                    body: company(&format!(
                        "Company {l} with a name long enough to fill pages"
                    )),
                })
            })
            .chain(std::iter::once(Incoming::Commit))
            .collect();
        let out = store.sync(dev, params(), &mut changes.into_iter()).unwrap();
        assert_eq!(out.applied, 500);
    }

    fn file_size(p: &Path) -> u64 {
        std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
    }

    /// Waits (up to 20 s) until the database file at `path` holds more than `bytes` bytes: it
    /// grows only when a checkpoint copies the log into it.
    fn wait_for_checkpoint(path: &Path, bytes: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while file_size(path) <= bytes {
            assert!(
                Instant::now() < deadline,
                "no checkpoint: the database file stayed at {} bytes",
                file_size(path)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A serving store on a new file, with one device, once the checkpoint after its creation
    /// has settled (the writer copies the log itself only past its limit, so the database file
    /// then grows only by the checkpointer's copies).
    fn settled_store() -> (tempfile::TempDir, PathBuf, SqliteStore, Device) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path, LoadedSchema::example()).unwrap();
        let dev = store.add_device("north", &[7; 32], 1).unwrap();
        std::thread::sleep(CHECKPOINT_REST * 2);
        (dir, path, store, dev)
    }

    /// A sync's commit leaves the log to the checkpointer thread, which copies it into the
    /// database file soon after; dropping the store ends the thread.
    #[test]
    fn the_checkpointer_copies_the_log_after_a_commit() {
        let (dir, path, store, dev) = settled_store();
        let before = file_size(&path);
        add_companies(&store, &dev, 1);
        assert!(
            file_size(&dir.path().join("s.db-wal")) > 500 * 40,
            "the commit wrote the log"
        );
        wait_for_checkpoint(&path, before + 500 * 40);
        assert!(
            store
                .checkpointer
                .as_ref()
                .is_some_and(|c| c.thread.is_some()),
            "a serving store runs the checkpointer"
        );
        drop(store);
        // The records are in the file, read by a new connection.
        let c = Connection::open(&path).unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM company", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 500);
    }

    /// A commit while the checkpointer rests after a checkpoint is remembered, and copied when
    /// the rest ends.
    #[test]
    fn a_commit_during_the_rest_is_copied_after_it() {
        let (_dir, path, store, dev) = settled_store();
        let before = file_size(&path);
        add_companies(&store, &dev, 1);
        wait_for_checkpoint(&path, before + 500 * 40);
        // The thread rests now, for CHECKPOINT_REST from the checkpoint just seen.
        let after_first = file_size(&path);
        add_companies(&store, &dev, 501);
        wait_for_checkpoint(&path, after_first + 500 * 40);
    }

    #[test]
    fn an_admin_store_has_no_checkpointer() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_admin(&dir.path().join("s.db")).unwrap();
        assert!(store.checkpointer.is_none());
    }

    #[test]
    fn ddl_has_typed_columns_and_foreign_keys() {
        let ddl = SqliteStore::schema_ddl(&LoadedSchema::example());
        assert!(ddl.contains("\"name\" TEXT NOT NULL"), "{ddl}");
        assert!(
            ddl.contains("\"company_id\" INTEGER NOT NULL REFERENCES \"company\"(id)"),
            "{ddl}"
        );
        assert!(ddl.contains("_seq INTEGER NOT NULL"), "{ddl}");
    }
}
