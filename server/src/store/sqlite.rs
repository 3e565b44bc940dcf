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

use super::{
    ChangeSource, Device, Incoming, OwnedChange, OwnedRejected, ReplyItem, ReplyPlan, ServerStore,
    StoreError, SyncOutcome, SyncParams,
};
use crate::schema_file::LoadedSchema;
use ferrysync_core::body::{self, Value};
use ferrysync_core::schema::{FieldDef, FieldType, Schema, TableDef};
use ferrysync_core::wire::{Mapping, Mode, Op, RejectReason, Remove, Upsert};
use ferrysync_core::{Hlc, LocalId, RecordRef, ServerId, TableId};
use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Readers kept open for reuse.
const READER_POOL: usize = 8;
/// Largest body re-encoded from columns (a frame is far smaller, so this never limits).
const BODY_BUF: usize = 64 * 1024;

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

/// Generated statements of one schema table.
struct TableSql {
    insert: String,
    update: String,
    meta: String,
    delete: String,
    /// `(child table index, SELECT id FROM child WHERE fk = ?1)`.
    children: Vec<(usize, String)>,
    full: String,
    delta: String,
    by_id: String,
    scope_index: Option<usize>,
}

fn q(ident: &str) -> String {
    // Identifiers were checked by `LoadedSchema` ([A-Za-z][A-Za-z0-9_]*); quote anyway.
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn sql_type(f: &FieldDef<'_>) -> String {
    let ty = match f.ty {
        FieldType::Text => "TEXT",
        FieldType::I64 | FieldType::U64 | FieldType::Bool => "INTEGER",
        FieldType::F64 => "REAL",
        FieldType::Bytes => "BLOB",
    };
    if f.optional {
        ty.to_string()
    } else {
        format!("{ty} NOT NULL")
    }
}

fn table_ddl(schema: &Schema<'static>, t: &TableDef<'static>) -> String {
    let name = q(t.name);
    let mut cols = vec!["id INTEGER PRIMARY KEY AUTOINCREMENT".to_string()];
    for f in t.fields {
        cols.push(format!("{} {}", q(f.name), sql_type(f)));
    }
    let mut extra = String::new();
    if let (Some(p), Some(pf)) = (t.parent.and_then(|p| schema.table(p)), t.parent_field) {
        cols.push(format!(
            "{} INTEGER NOT NULL REFERENCES {}(id)",
            q(pf),
            q(p.name)
        ));
        extra = format!(
            "CREATE INDEX IF NOT EXISTS {} ON {name} ({});\n",
            q(&format!("{}__{}", t.name, pf)),
            q(pf)
        );
    }
    cols.extend(
        [
            "_scope TEXT NOT NULL",
            "_seq INTEGER NOT NULL",
            "_wall INTEGER NOT NULL",
            "_counter INTEGER NOT NULL",
            "_device INTEGER NOT NULL",
        ]
        .map(String::from),
    );
    format!(
        "CREATE TABLE IF NOT EXISTS {name} (\n    {}\n);\n\
         CREATE INDEX IF NOT EXISTS {} ON {name} (_scope, _seq);\n{extra}",
        cols.join(",\n    "),
        q(&format!("{}__scope_seq", t.name)),
    )
}

fn table_sql(schema: &Schema<'static>, ti: usize, t: &TableDef<'static>) -> TableSql {
    let name = q(t.name);
    let fk = t.parent_field.map(q);
    let mut cols: Vec<String> = t.fields.iter().map(|f| q(f.name)).collect();
    if let Some(fk) = &fk {
        cols.push(fk.clone());
    }
    let n = cols.len();
    let insert = format!(
        "INSERT INTO {name} ({}, _scope, _seq, _wall, _counter, _device) VALUES ({})",
        cols.join(", "),
        (1..=n + 5)
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let sets: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c} = ?{}", i + 1))
        .collect();
    let update = format!(
        "UPDATE {name} SET {}, _seq = ?{}, _wall = ?{}, _counter = ?{}, _device = ?{} WHERE id = ?{}",
        sets.join(", "),
        n + 1,
        n + 2,
        n + 3,
        n + 4,
        n + 5
    );
    let fk_or_null = fk.clone().unwrap_or_else(|| "NULL".into());
    let meta =
        format!("SELECT _scope, _wall, _counter, _device, {fk_or_null} FROM {name} WHERE id = ?1");
    let delete = format!("DELETE FROM {name} WHERE id = ?1");
    let children = schema
        .tables
        .iter()
        .enumerate()
        .filter(|(_, c)| c.parent == Some(TableId(ti as u8)))
        .filter_map(|(ci, c)| {
            c.parent_field.map(|pf| {
                (
                    ci,
                    format!("SELECT id FROM {} WHERE {} = ?1", q(c.name), q(pf)),
                )
            })
        })
        .collect();
    let fields: Vec<String> = t.fields.iter().map(|f| q(f.name)).collect();
    let select = format!(
        "SELECT id, {fk_or_null}, _wall, _counter, _device{}{} FROM {name}",
        if fields.is_empty() { "" } else { ", " },
        fields.join(", ")
    );
    TableSql {
        insert,
        update,
        meta,
        delete,
        children,
        full: format!("{select} WHERE _scope = ?1 ORDER BY _seq"),
        delta: format!("{select} WHERE _scope = ?1 AND _seq > ?2 ORDER BY _seq"),
        by_id: format!("{select} WHERE id = ?1 AND _scope = ?2 AND _seq <= ?3"),
        scope_index: t.scope_field.and_then(|sf| t.field_index(sf)),
    }
}

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

fn meta_get(c: &Connection, key: &str) -> Result<Option<i64>, rusqlite::Error> {
    c.query_row("SELECT value FROM _meta WHERE key = ?1", [key], |r| {
        r.get(0)
    })
    .optional()
}

fn meta_set(c: &Connection, key: &str, value: i64) -> Result<(), rusqlite::Error> {
    c.execute(
        "INSERT INTO _meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

/// The server's store on a SQLite file.
pub struct SqliteStore {
    path: PathBuf,
    schema: Option<LoadedSchema>,
    sql: Vec<TableSql>,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("schema_hash", &self.schema.map(|s| s.hash()))
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock dropped its transaction (rolled back), so the
    // connection is still consistent: recover it.
    m.lock().unwrap_or_else(|e| e.into_inner())
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
        conn.execute_batch(SYSTEM_DDL)?;
        let mut sql = Vec::new();
        if let Some(ls) = schema {
            let s = ls.schema();
            let want = ls.hash() as i64;
            match meta_get(&conn, "schema_hash")? {
                Some(have) if have != want => {
                    return Err(StoreError::Corrupt(format!(
                        "database {} was created for schema {:#018x}, but the schema given has \
                         {:#018x}; start with the schema file it was created with, or use a new --db",
                        path.display(),
                        have as u64,
                        ls.hash()
                    )));
                }
                Some(_) => {}
                None => meta_set(&conn, "schema_hash", want)?,
            }
            let mut ddl = String::new();
            for (i, t) in s.tables.iter().enumerate() {
                ddl.push_str(&table_ddl(&s, t));
                sql.push(table_sql(&s, i, t));
            }
            conn.execute_batch(&ddl)?;
        }
        Ok(SqliteStore {
            path: path.to_path_buf(),
            schema,
            sql,
            writer: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `CREATE TABLE` statements of a schema's tables, as this store creates them.
    pub fn schema_ddl(schema: &LoadedSchema) -> String {
        let s = schema.schema();
        s.tables.iter().map(|t| table_ddl(&s, t)).collect()
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

fn sid(id: ServerId) -> Option<i64> {
    i64::try_from(id.0).ok()
}

/// A value bound to a statement.
enum Arg<'a> {
    V(Value<'a>),
    I(i64),
    S(&'a str),
    Null,
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

fn bad_column(t: &TableDef<'_>, f: &FieldDef<'_>) -> StoreError {
    StoreError::Corrupt(format!(
        "column {}.{} holds a value that is not a {}{}",
        t.name,
        f.name,
        f.ty.name(),
        if f.optional { " or null" } else { "" }
    ))
}

struct RowMeta {
    scope: String,
    at: Hlc,
    parent: Option<i64>,
}

type Step = Result<Result<(), RejectReason>, StoreError>;

/// One sync's work inside its transaction.
struct Apply<'c> {
    conn: &'c Connection,
    schema: Schema<'static>,
    sql: &'c [TableSql],
    device: &'c Device,
    params: SyncParams,
    seq: i64,
    out: SyncOutcome,
}

impl Apply<'_> {
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

    fn idmap(&self, table: TableId, local: LocalId) -> Result<Option<i64>, StoreError> {
        let name = self.schema.tables[table.0 as usize].name;
        Ok(self
            .conn
            .prepare_cached(
                "SELECT server FROM _idmap WHERE device = ?1 AND tbl = ?2 AND local = ?3",
            )?
            .query_row(params![self.device.id, name, local.0], |r| r.get(0))
            .optional()?)
    }

    fn row_meta(&self, table: TableId, id: i64) -> Result<Option<RowMeta>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(&self.sql[table.0 as usize].meta)?
            .query_row([id], |r| {
                Ok(RowMeta {
                    scope: r.get(0)?,
                    at: Hlc::new(
                        r.get::<_, i64>(1)? as u64,
                        r.get::<_, i64>(2)? as u32,
                        r.get::<_, i64>(3)? as u32,
                    ),
                    parent: r.get(4)?,
                })
            })
            .optional()?)
    }

    /// Why a record that is not live cannot be changed.
    fn missing(&self, table: TableId, id: i64) -> Result<RejectReason, StoreError> {
        let name = self.schema.tables[table.0 as usize].name;
        let scope: Option<String> = self
            .conn
            .prepare_cached("SELECT scope FROM _tombstone WHERE tbl = ?1 AND id = ?2")?
            .query_row(params![name, id], |r| r.get(0))
            .optional()?;
        Ok(match scope {
            Some(s) if s == self.device.scope => RejectReason::Deleted,
            Some(_) => RejectReason::OutOfScope,
            None => RejectReason::UnknownRecord,
        })
    }

    /// Resolves a parent reference to a live server id in the device's scope.
    fn parent(
        &self,
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
        Ok(match self.row_meta(table, id)? {
            None => match self.missing(table, id)? {
                RejectReason::OutOfScope => Err(RejectReason::OutOfScope),
                _ => Err(RejectReason::ParentMissing),
            },
            Some(m) if m.scope != self.device.scope => Err(RejectReason::OutOfScope),
            Some(_) => Ok(id),
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
                Err(RejectReason::Deleted) => Ok(()),
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
        let mut args: Vec<Arg<'_>> = values.iter().map(|v| Arg::V(*v)).collect();
        if t.parent.is_some() {
            args.push(parent.map_or(Arg::Null, Arg::I));
        }
        args.extend([
            Arg::S(&device.scope),
            Arg::I(seq),
            Arg::I(at.wall_ms as i64),
            Arg::I(i64::from(at.counter)),
            Arg::I(i64::from(at.device)),
        ]);
        self.conn
            .prepare_cached(&self.sql[c.table.0 as usize].insert)?
            .execute(params_from_iter(args.iter()))?;
        let id = self.conn.last_insert_rowid();
        self.conn
            .prepare_cached(
                "INSERT INTO _idmap (device, tbl, local, server) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![device.id, t.name, local.0, id])?;
        self.out.mappings.push(Mapping {
            table: c.table,
            local,
            server: ServerId(id as u64),
        });
        self.out.applied += 1;
        Ok(Ok(()))
    }

    fn update(&mut self, c: &OwnedChange, t: &TableDef<'static>) -> Step {
        let id = match c.key {
            RecordRef::Server(s) => match sid(s) {
                Some(id) => id,
                None => return Ok(Err(RejectReason::UnknownRecord)),
            },
            RecordRef::Local(l) => match self.idmap(c.table, l)? {
                Some(id) => id,
                None => return Ok(Err(RejectReason::UnknownRecord)),
            },
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
        if t.parent.is_some() {
            args.push(parent.map_or(Arg::Null, Arg::I));
        }
        args.extend([
            Arg::I(seq),
            Arg::I(at.wall_ms as i64),
            Arg::I(i64::from(at.counter)),
            Arg::I(i64::from(at.device)),
            Arg::I(id),
        ]);
        self.conn
            .prepare_cached(&self.sql[c.table.0 as usize].update)?
            .execute(params_from_iter(args.iter()))?;
        self.out.applied += 1;
        Ok(Ok(()))
    }

    fn delete(&mut self, c: &OwnedChange) -> Step {
        let id = match c.key {
            RecordRef::Server(s) => match sid(s) {
                Some(id) => id,
                None => return Ok(Err(RejectReason::UnknownRecord)),
            },
            RecordRef::Local(l) => match self.idmap(c.table, l)? {
                Some(id) => id,
                // Never reached the server: nothing to delete.
                None => return Ok(Ok(())),
            },
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
        for (child, sql) in &sqls[ti].children {
            let child = *child;
            let ids: Vec<i64> = self
                .conn
                .prepare_cached(sql)?
                .query_map([id], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for cid in ids {
                self.cascade(child, cid)?;
            }
        }
        self.conn.prepare_cached(&sqls[ti].delete)?.execute([id])?;
        let seq = self.next_seq();
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO _tombstone (tbl, id, seq, scope, at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                self.schema.tables[ti].name,
                id,
                seq,
                self.device.scope,
                self.params.now_ms as i64
            ])?;
        Ok(())
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
        let cutoff = params.now_ms.saturating_sub(params.tombstone_retention_ms) as i64;
        let pruned: Option<i64> = tx.query_row(
            "SELECT max(seq) FROM _tombstone WHERE at <= ?1",
            [cutoff],
            |r| r.get(0),
        )?;
        if let Some(max) = pruned {
            let floor = meta_get(&tx, "tombstone_floor")?.unwrap_or(0);
            meta_set(&tx, "tombstone_floor", floor.max(max))?;
            tx.execute("DELETE FROM _tombstone WHERE at <= ?1", [cutoff])?;
        }
        let start_seq = meta_get(&tx, "seq")?.unwrap_or(0);
        let seq = start_seq;
        let mut apply = Apply {
            conn: &tx,
            schema,
            sql: &self.sql,
            device,
            params,
            seq,
            out: SyncOutcome::default(),
        };
        loop {
            match changes.next() {
                Some(Incoming::Change(c)) => apply.change(c)?,
                Some(Incoming::Commit) => break,
                // Dropping `tx` rolls back.
                None => return Err(StoreError::Aborted),
            }
        }
        let (seq, out) = (apply.seq, apply.out);
        if seq != start_seq {
            meta_set(&tx, "seq", seq)?;
        }
        tx.commit()?;
        Ok(out)
    }

    fn read_reply(
        &self,
        plan: &ReplyPlan<'_>,
        sink: &mut dyn FnMut(ReplyItem<'_>) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        let schema = self.schema.ok_or(StoreError::NoSchema)?.schema();
        self.with_reader(|conn| {
            let tx = conn.transaction()?;
            let seq = meta_get(&tx, "seq")?.unwrap_or(0);
            let floor = meta_get(&tx, "tombstone_floor")?.unwrap_or(0);
            let cursor = match (plan.mode, plan.cursor) {
                (Mode::Delta, Some(c)) if c >= floor as u64 && c <= seq as u64 => Some(c as i64),
                _ => None,
            };
            let mut buf = vec![0u8; BODY_BUF];
            let mut extra = plan.extra.to_vec();
            extra.sort_unstable();
            extra.dedup();
            if cursor.is_none() {
                sink(ReplyItem::Reset)?;
            }
            for (ti, t) in schema.tables.iter().enumerate() {
                let sql = &self.sql[ti];
                let table = TableId(ti as u8);
                let mut emit = |row: &rusqlite::Row<'_>| -> Result<(), StoreError> {
                    let id: i64 = row.get(0)?;
                    let parent: Option<i64> = row.get(1)?;
                    let at = Hlc::new(
                        row.get::<_, i64>(2)? as u64,
                        row.get::<_, i64>(3)? as u32,
                        row.get::<_, i64>(4)? as u32,
                    );
                    let mut values = Vec::with_capacity(t.fields.len());
                    for (i, f) in t.fields.iter().enumerate() {
                        values.push(column_value(t, f, row.get_ref(5 + i)?)?);
                    }
                    let body = body::encode(t, &values, &mut buf).map_err(|e| {
                        StoreError::Corrupt(format!("{}#{id} does not encode: {e}", t.name))
                    })?;
                    sink(ReplyItem::Upsert(Upsert {
                        table,
                        id: ServerId(id as u64),
                        parent: parent.map(|p| ServerId(p as u64)),
                        modified_at: at,
                        body,
                    }))
                };
                match cursor {
                    None => {
                        let mut stmt = tx.prepare_cached(&sql.full)?;
                        let mut rows = stmt.query([plan.scope])?;
                        while let Some(row) = rows.next()? {
                            emit(row)?;
                        }
                    }
                    Some(c) => {
                        {
                            let mut stmt = tx.prepare_cached(&sql.delta)?;
                            let mut rows = stmt.query(params![plan.scope, c])?;
                            while let Some(row) = rows.next()? {
                                emit(row)?;
                            }
                        }
                        let mut stmt = tx.prepare_cached(&sql.by_id)?;
                        for (_, id) in extra.iter().filter(|(xt, _)| *xt == table) {
                            let Some(id) = sid(*id) else { continue };
                            let mut rows = stmt.query(params![id, plan.scope, c])?;
                            while let Some(row) = rows.next()? {
                                emit(row)?;
                            }
                        }
                    }
                }
            }
            if let Some(c) = cursor {
                let mut stmt = tx.prepare_cached(
                    "SELECT tbl, id FROM _tombstone WHERE scope = ?1 AND seq > ?2 ORDER BY seq",
                )?;
                let mut rows = stmt.query(params![plan.scope, c])?;
                while let Some(row) = rows.next()? {
                    let name: String = row.get(0)?;
                    let id: i64 = row.get(1)?;
                    if let Some(table) = schema.table_id(&name) {
                        sink(ReplyItem::Remove(Remove {
                            table,
                            id: ServerId(id as u64),
                        }))?;
                    }
                }
            }
            drop(tx);
            Ok(seq as u64)
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
    use ferrysync_core::body::encode;

    fn company(name: &str) -> Vec<u8> {
        let mut buf = [0u8; 128];
        let t = &ferrysync_core::schema::EXAMPLE.tables[0];
        encode(
            t,
            &[Value::Text(name), Value::Text("c"), Value::Text("p")],
            &mut buf,
        )
        .unwrap()
        .to_vec()
    }

    fn params() -> SyncParams {
        SyncParams {
            now_ms: 1_000_000,
            max_skew_ms: 1_000,
            tombstone_retention_ms: 10_000,
        }
    }

    #[test]
    fn commits_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db"), LoadedSchema::example()).unwrap();
        let dev = store.add_device("north", &[7; 32], 1).unwrap();
        let change = |l: u32| OwnedChange {
            table: TableId(0),
            op: Op::Add,
            key: RecordRef::Local(LocalId(l)),
            parent: None,
            modified_at: Hlc::new(999_000, 0, dev.id),
            body: company("ACME"),
        };
        // The source ends without Commit: rolled back.
        let mut cut = vec![Incoming::Change(change(1))].into_iter();
        assert!(matches!(
            store.sync(&dev, params(), &mut cut),
            Err(StoreError::Aborted)
        ));
        let mut reply = Vec::new();
        let plan = ReplyPlan {
            scope: "north",
            mode: Mode::Full,
            cursor: None,
            extra: &[],
        };
        let cursor = store
            .read_reply(&plan, &mut |i| {
                reply.push(format!("{i:?}"));
                Ok(())
            })
            .unwrap();
        assert_eq!((cursor, reply.len()), (0, 1), "only Reset: {reply:?}");
        // With Commit: applied, mapped, readable.
        let mut ok = vec![Incoming::Change(change(1)), Incoming::Commit].into_iter();
        let out = store.sync(&dev, params(), &mut ok).unwrap();
        assert_eq!(out.mappings.len(), 1);
        assert_eq!(out.applied, 1);
        let mut n = 0;
        let cursor = store
            .read_reply(&plan, &mut |i| {
                if let ReplyItem::Upsert(u) = i {
                    assert_eq!(u.body, company("ACME"));
                    n += 1;
                }
                Ok(())
            })
            .unwrap();
        assert_eq!((cursor, n), (1, 1));
        // The device lookup by token hash, and revocation.
        let found = store.authenticate(&[7; 32]).unwrap().unwrap();
        assert_eq!(found.id, dev.id);
        assert!(store.revoke_device(dev.id).unwrap());
        assert!(store.authenticate(&[7; 32]).unwrap().unwrap().revoked);
        assert!(store.authenticate(&[8; 32]).unwrap().is_none());
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
