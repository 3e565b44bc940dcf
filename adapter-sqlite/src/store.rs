//! [`SqliteStore`]: the device store on SQLite.
//!
//! Each schema table is a real SQL table the app can query: `id` (the stable device-local id),
//! `server_id`, the parent column named by the schema (holding the parent's local `id`), one
//! typed column per field, and the sync metadata in five columns: `sync_pending` (0 for a
//! clean server version, else the sum of 1: not on the server yet, 2: changed locally, 4:
//! deleted locally), `edits` (the local edit counter), `modified_wall` and `modified_seq`
//! (the hybrid clock of the last change: wall milliseconds, then counter << 32 | device) and
//! `refresh_mark`. Device state lives in `_fs_state`, the rejected log in `_fs_rejected`, the
//! schema hash and the layout's format (2; [`StoreError::FormatChanged`] for another) in
//! `_fs_meta`.
//!
//! The sync columns are packed because every record a sync writes pays for each column and
//! for the pending index's predicate: one flag column read by `sync_pending != 0` instead of
//! three flags, and two clock columns instead of three, cut a first full refresh from 153M to
//! 145M instructions (issue 7's default size), and fewer columns make each header read
//! cheaper.
//!
//! Crash safety comes from SQLite: `begin` is `BEGIN IMMEDIATE`, `commit` writes the state row
//! and `COMMIT`s, the journal is WAL with `synchronous = FULL`, so a killed app or a power cut
//! leaves the last committed transaction and nothing of a later one.
//!
//! Speed: the engine asks [`LocalStore::by_server`] for every record it receives and for its
//! parent. Inside a transaction the store keeps what it learns of each table's server ids in
//! memory ([`ServerIndex`]): records it wrote or looked up are answered without SQL, and a
//! table that held no server id when the transaction first asked (a first sync) is known
//! completely, so a miss costs no query either. A transaction that asks SQLite about a fifth
//! as many server ids as the table may hold (a full refresh on a synced phone) reads the
//! table's server ids in one scan instead, and is complete from then on; a delta asks too few
//! for that. The index lives from `begin` to `commit` or `rollback`; its size is that of the
//! records the transaction touched (or of the table, once read whole). A commit keeps it for
//! the next transaction, which starts from it if nothing was written since through the
//! connection or by another one (see [`SqliteStore::kept`]): a synced phone's next delta
//! looks up nothing in SQLite. Records the transaction reads (`get`, `next`) are learned too,
//! so a `put` that keeps a record's server id and parent (the engine confirming a sent change,
//! an app's edit) writes only the other columns and leaves the server-id and parent index
//! entries alone.
//!
//! A table that held no row when the transaction first asked about it (a fresh device's first
//! full refresh) holds only what the transaction put: records put above every local id the
//! transaction put there are new, written by plain inserts, and when every record put carries
//! the refresh's mark, `sweep` has nothing to remove and skips its scan of the table.
//!
//! A walk with `next` (the engine's walks over pending records, before a sync and at its
//! end) reads 32 records per query and answers the walk's following calls from them, as long
//! as nothing could have changed what they would find: a put or remove past the walk's
//! position, a sweep, a change through the connection the store did not check itself, or,
//! outside a transaction, another connection's commit (`PRAGMA data_version`) drops them.
//! A walk over pending records outside a transaction (the engine building a request) reads
//! each record's body and its parent's header in the same query, and answers the `get_body`
//! of the record it just returned and the `get` of that record's parent from them, as long as
//! nothing was written through the connection since: one query per 32 records instead of
//! three per record.
//!
//! Inside a transaction, `put`s with a body are gathered (up to 256) and written by one
//! multi-row `INSERT` per 32 records (one statement per record costs more than the row
//! itself; a flush of fewer than 128 records, a delta's, writes one per statement while the
//! long statement is not prepared yet, as parsing it costs more than it saves there, and a
//! record known to be stored with the same server id and parent is then written by a plain
//! `UPDATE` by id instead of an upsert); a record whose metadata is a clean server version's
//! (`SyncMeta::from_server`, what a reply brings) is written by a statement that has its
//! `sync_pending` and `edits` as literals, so each row binds two parameters fewer. The store
//! writes what it gathered before any other statement, so every read still sees the
//! transaction's own writes. A body that does not fit the schema still fails its own `put`;
//! an SQLite error of a gathered write surfaces at the call that writes it, after which the
//! transaction only accepts `rollback` ([`StoreError::TransactionFailed`]).
//!
//! At a reply's `Done`, [`LocalStore::confirm`] is one `DELETE` and one `UPDATE` per table
//! through the pending index, instead of the engine's walk writing each record, and the
//! transaction's index is brought up to date by the same test on the pending records it knows
//! ([`ServerIndex::confirm`]): a 1 % push (100 renames) went from 3.43M to 2.97M instructions
//! on the phone.

use ferrysync_core::body::{self, Value};
use ferrysync_core::hlc::Hlc;
use ferrysync_core::id::{LocalId, RecordRef, ServerId, TableId};
use ferrysync_core::meta::SyncMeta;
use ferrysync_core::schema::{FieldType, Schema, TableDef};
use ferrysync_core::store::{DeviceState, Filter, LocalStore, Record, RejectedEntry};
use ferrysync_core::wire::{Op, RejectReason};
use foldhash::{HashMap, HashSet};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OptionalExtension};
use std::cell::OnceCell;
use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;
use std::path::Path;

/// Whether `name` is one of [`RESERVED`], ignoring ASCII case as SQLite does for column names.
pub fn is_reserved(name: &str) -> bool {
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name))
}

/// Column names the adapter uses itself; a schema field may not take them (in any case).
pub const RESERVED: &[&str] = &[
    "id",
    "server_id",
    "sync_pending",
    "edits",
    "modified_wall",
    "modified_seq",
    "refresh_mark",
];

/// An error of the SQLite store.
#[derive(Debug)]
pub enum StoreError {
    /// SQLite failed.
    Sqlite(rusqlite::Error),
    /// The schema cannot be stored: a bad identifier or a reserved column name.
    Schema(String),
    /// The database was made for another schema (different hash).
    SchemaChanged {
        /// Hash stored in the database.
        stored: u64,
        /// Hash of the schema given.
        given: u64,
    },
    /// The file holds another layout of the store's tables (its `format` in `_fs_meta`; this
    /// version reads and writes format 2): made by another version of this crate.
    FormatChanged {
        /// Format of the file.
        stored: i64,
        /// The format this crate reads and writes.
        supported: i64,
    },
    /// A stored row does not fit the schema (edited by hand?).
    Corrupt(String),
    /// A caller's buffer is too small for a body.
    BufferTooSmall,
    /// An earlier write of the open transaction failed (its error was returned then); the
    /// transaction can only be rolled back.
    TransactionFailed,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Sqlite(e) => write!(f, "sqlite: {e}"),
            StoreError::Schema(m) => write!(f, "schema: {m}"),
            StoreError::SchemaChanged { stored, given } => write!(
                f,
                "this database was made for schema {stored:#018x}, not {given:#018x}: use a new file"
            ),
            StoreError::FormatChanged { stored, supported } => write!(
                f,
                "this database has store format {stored}, this version reads format {supported}: \
                 use a new file (the server holds the data; sync again)"
            ),
            StoreError::Corrupt(m) => write!(f, "stored data does not fit the schema: {m}"),
            StoreError::BufferTooSmall => f.write_str("body buffer too small"),
            StoreError::TransactionFailed => {
                f.write_str("an earlier write of this transaction failed: roll it back")
            }
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e)
    }
}

/// Checks that `name` is a plain SQL identifier.
pub fn check_ident(name: &str) -> Result<(), StoreError> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("_fs");
    if ok {
        Ok(())
    } else {
        Err(StoreError::Schema(format!(
            "`{name}` is not a plain identifier ([A-Za-z_][A-Za-z0-9_]*, not starting with _fs)"
        )))
    }
}

struct TableSql {
    get: String,
    has_server: String,
    /// Whether any record has a server id, and the highest local id (bounds the row count).
    /// `all_servers`: every record that has a server id.
    all_servers: String,
    by_server: String,
    body: String,
    /// The upsert of one row and of [`BATCH_ROWS`] rows of each [`RowKind`] (indexed by
    /// [`RowKind::index`]); row `r` takes parameters `r * kind.params() + 1..`. Written at
    /// first use ([`TableSql::upsert`]): the twelve texts of a table took about 2M instructions
    /// to format, at every open.
    upserts: [[OnceCell<String>; 2]; RowKind::COUNT],
    /// What the upserts are made of.
    upsert_spec: UpsertSpec,
    /// Fields of the table: a row binds `kind.header_params() + fields` parameters.
    fields: usize,
    /// The one-row write of a [`Write::SameKeys`] row (indexed by [`RowKind::from_server`]) as
    /// a plain `UPDATE` by id, with the parameters of the one-row upsert: the record exists,
    /// so the upsert's insert attempt is not needed (if it changes no row, the upsert runs).
    update_same_keys: [String; 2],
    /// `update_same_keys` of a row from the server (`from_server`) for a stored record that
    /// is clean already (`sync_pending = 0 AND edits = 0`, checked by the statement): the
    /// update leaves those columns, and so the pending index, alone.
    update_clean: String,
    update_header: String,
    /// `update_header` for a record known to keep its server id and parent: the update
    /// leaves those columns (and their index entries) alone.
    update_meta: String,
    remove: String,
    /// The next [`AHEAD_ROWS`] records after `?1` in local-id order: all of them, pending
    /// ones, children of `?2` (see [`Ahead`]).
    ahead: [String; 3],
    /// The pending walk outside a transaction (a request being built): each pending record's
    /// header, then its body fields, then its parent's header (NULLs for a master or a parent
    /// that is not there), so that the `get` of its parent and its `get_body` that follow
    /// need no query.
    ahead_send: String,
    sweep: String,
    /// [`LocalStore::confirm`]'s writes, through the pending index: the active records sent
    /// (`edits <= ?1`) and mapped made clean (`[1]`: taking the mark `?2` too); the deleted
    /// ones sent removed ([`ServerIndex::confirm`] does the same to what the index holds).
    confirm: [String; 2],
    confirm_remove: String,
}

/// Columns of [`HEADER_COLS`].
const HEADER_COUNT: usize = 8;

const HEADER_COLS: &str =
    "id, server_id, {parent}, sync_pending, edits, modified_wall, modified_seq, refresh_mark";

/// `sync_pending` bit: the record is not on the server yet (`!SyncMeta::is_from_server`).
const NOT_FROM_SERVER: i64 = 1;
/// `sync_pending` bit: changed locally since the server confirmed it (`SyncMeta::is_modified`).
const MODIFIED: i64 = 2;
/// `sync_pending` bit: deleted locally, not yet confirmed (`!SyncMeta::is_active`).
const DELETED: i64 = 4;

/// The `sync_pending` column of `meta`: 0 for a clean server version, so that "pending" is
/// `sync_pending != 0`, one column for the pending index's predicate to read.
fn pending_bits(meta: &SyncMeta) -> i64 {
    let bit = |on: bool, b: i64| if on { b } else { 0 };
    bit(!meta.is_from_server, NOT_FROM_SERVER)
        | bit(meta.is_modified, MODIFIED)
        | bit(!meta.is_active, DELETED)
}

/// The `modified_seq` column: the clock's counter and device in one integer.
fn clock_seq(at: &Hlc) -> i64 {
    (i64::from(at.counter) << 32) | i64::from(at.device)
}

impl TableSql {
    fn new(schema: &Schema<'_>, t: usize) -> Result<(Self, String), StoreError> {
        let def = &schema.tables[t];
        check_ident(def.name)?;
        let parent_col = def.parent_field.unwrap_or("NULL");
        if let Some(p) = def.parent_field {
            check_ident(p)?;
            if is_reserved(p) {
                return Err(StoreError::Schema(format!(
                    "`{p}` is a reserved column name"
                )));
            }
        }
        for f in def.fields {
            check_ident(f.name)?;
            if is_reserved(f.name) {
                return Err(StoreError::Schema(format!(
                    "field `{}` of `{}` is a reserved column name",
                    f.name, def.name
                )));
            }
        }
        let name = def.name;
        let header = HEADER_COLS.replace("{parent}", parent_col);
        let fields: Vec<&str> = def.fields.iter().map(|f| f.name).collect();
        let field_cols = fields.join(", ");
        let mut ddl = format!(
            "CREATE TABLE IF NOT EXISTS {name} (\n  id INTEGER PRIMARY KEY,\n  server_id INTEGER,\n"
        );
        if let Some(p) = def.parent_field {
            ddl.push_str(&format!("  {p} INTEGER,\n"));
        }
        for f in def.fields {
            let ty = match f.ty {
                FieldType::Bool | FieldType::I64 | FieldType::U64 => "INTEGER",
                FieldType::F64 => "REAL",
                FieldType::Text => "TEXT",
                FieldType::Bytes => "BLOB",
            };
            let null = if f.optional { "" } else { " NOT NULL" };
            ddl.push_str(&format!("  {} {ty}{null},\n", f.name));
        }
        ddl.push_str(
            "  sync_pending INTEGER NOT NULL,\n  edits INTEGER NOT NULL,\n  \
             modified_wall INTEGER NOT NULL,\n  modified_seq INTEGER NOT NULL,\n  \
             refresh_mark INTEGER NOT NULL\n);\n",
        );
        ddl.push_str(&format!(
            "CREATE UNIQUE INDEX IF NOT EXISTS {name}_server ON {name}(server_id) WHERE server_id IS NOT NULL;\n\
             CREATE INDEX IF NOT EXISTS {name}_pending ON {name}(id) WHERE sync_pending != 0;\n"
        ));
        if let Some(p) = def.parent_field {
            ddl.push_str(&format!(
                "CREATE INDEX IF NOT EXISTS {name}_{p} ON {name}({p}, id);\n"
            ));
        }
        let n_fields = fields.len();
        let all_cols = if n_fields == 0 {
            header.clone()
        } else {
            format!("{header}, {field_cols}")
        };
        // Placeholders are numbered and all header values a kind binds are always bound; a
        // master has no parent column, so its rows just never name their third parameter.
        let insert_cols = if def.parent_field.is_some() {
            all_cols.clone()
        } else {
            all_cols.replacen("NULL, ", "", 1)
        };
        let upsert_spec = UpsertSpec {
            name: name.to_owned(),
            insert_cols,
            parent: def.parent_field.map(str::to_owned),
            n_fields,
        };
        let parent_set = match def.parent_field {
            Some(p) => format!("{p} = ?3, "),
            None => String::new(),
        };
        let parent_where = def.parent_field.unwrap_or("NULL");
        let where_pending = "sync_pending != 0";
        let ahead = |cond: &str| {
            format!(
                "SELECT {header} FROM {name} WHERE {cond} id > ?1 ORDER BY id LIMIT {AHEAD_ROWS}"
            )
        };
        let qualified = |table: &str, header: &str| {
            header
                .split(", ")
                .map(|c| {
                    if c == "NULL" {
                        c.to_owned()
                    } else {
                        format!("{table}.{c}")
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut send_cols = qualified("r", &header);
        for f in &fields {
            send_cols.push_str(&format!(", r.{f}"));
        }
        let send_from = match (def.parent, def.parent_field) {
            (Some(pt), Some(pf)) => {
                let pdef = schema.tables.get(pt.0 as usize).ok_or_else(|| {
                    StoreError::Schema(format!("parent of `{name}` is not a table"))
                })?;
                let pheader = HEADER_COLS.replace("{parent}", pdef.parent_field.unwrap_or("NULL"));
                send_cols.push_str(&format!(", {}", qualified("p", &pheader)));
                format!("{name} AS r LEFT JOIN {} AS p ON p.id = r.{pf}", pdef.name)
            }
            _ => {
                send_cols.push_str(&", NULL".repeat(HEADER_COUNT));
                format!("{name} AS r")
            }
        };
        let sql = TableSql {
            ahead_send: format!(
                "SELECT {send_cols} FROM {send_from} WHERE r.sync_pending != 0 AND r.id > ?1 \
                 ORDER BY r.id LIMIT {AHEAD_ROWS}"
            ),
            ahead: [
                ahead(""),
                ahead(&format!("{where_pending} AND")),
                ahead(&format!("{parent_where} = ?2 AND")),
            ],
            get: format!("SELECT {header} FROM {name} WHERE id = ?1"),
            has_server: format!(
                "SELECT EXISTS (SELECT 1 FROM {name} WHERE server_id IS NOT NULL), \
                 coalesce(max(id), 0) FROM {name}"
            ),
            all_servers: format!("SELECT {header} FROM {name} WHERE server_id IS NOT NULL"),
            by_server: format!("SELECT {header} FROM {name} WHERE server_id = ?1"),
            body: format!(
                "SELECT {} FROM {name} WHERE id = ?1",
                if n_fields == 0 { "NULL" } else { &field_cols }
            ),
            upserts: Default::default(),
            upsert_spec,
            update_same_keys: [false, true].map(|from_server| {
                let kind = RowKind::of(Write::SameKeys, from_server);
                let meta = if from_server {
                    "sync_pending = 0, edits = 0, modified_wall = ?4, modified_seq = ?5, \
                     refresh_mark = ?6"
                } else {
                    "sync_pending = ?4, edits = ?5, modified_wall = ?6, modified_seq = ?7, \
                     refresh_mark = ?8"
                };
                let sets: String = fields
                    .iter()
                    .enumerate()
                    .map(|(i, f)| format!(", {f} = ?{}", kind.header_params() + 1 + i))
                    .collect();
                format!("UPDATE {name} SET {meta}{sets} WHERE id = ?1")
            }),
            update_clean: {
                let kind = RowKind::of(Write::SameKeys, true);
                let sets: String = fields
                    .iter()
                    .enumerate()
                    .map(|(i, f)| format!(", {f} = ?{}", kind.header_params() + 1 + i))
                    .collect();
                format!(
                    "UPDATE {name} SET modified_wall = ?4, modified_seq = ?5, refresh_mark = ?6\
                     {sets} WHERE id = ?1 AND sync_pending = 0 AND edits = 0"
                )
            },
            fields: n_fields,
            update_header: format!(
                "UPDATE {name} SET server_id = ?2, {parent_set}sync_pending = ?4, edits = ?5, \
                 modified_wall = ?6, modified_seq = ?7, refresh_mark = ?8 WHERE id = ?1"
            ),
            update_meta: format!(
                "UPDATE {name} SET sync_pending = ?4, edits = ?5, modified_wall = ?6, \
                 modified_seq = ?7, refresh_mark = ?8 WHERE id = ?1"
            ),
            remove: format!("DELETE FROM {name} WHERE id = ?1"),
            sweep: format!(
                "DELETE FROM {name} WHERE server_id IS NOT NULL AND sync_pending = 0 \
                 AND refresh_mark != ?1"
            ),
            // `INDEXED BY`: the planner otherwise takes the server-id index for
            // `server_id IS NOT NULL`, a scan of every synced record. `OR IGNORE`: the update
            // sets two NOT NULL columns to integers and touches no unique or key column, so
            // no constraint can fail, and SQLite then needs no statement journal (which
            // spilled to a temporary file for a 100-row push and made the statement three
            // times as slow as 100 one-row updates).
            confirm: ["", ", refresh_mark = ?2"].map(|set_mark| {
                format!(
                    "UPDATE OR IGNORE {name} INDEXED BY {name}_pending \
                     SET sync_pending = 0{set_mark} WHERE sync_pending != 0 \
                     AND sync_pending & {DELETED} = 0 AND edits <= ?1 AND server_id IS NOT NULL"
                )
            }),
            confirm_remove: format!(
                "DELETE FROM {name} INDEXED BY {name}_pending WHERE sync_pending != 0 \
                 AND sync_pending & {DELETED} != 0 AND edits <= ?1"
            ),
        };
        Ok((sql, ddl))
    }
}

impl TableSql {
    /// The upsert of [`BATCH_ROWS`] rows of `kind` if `many`, else of one.
    fn upsert(&self, kind: RowKind, many: bool) -> &str {
        let rows = if many { BATCH_ROWS } else { 1 };
        self.upserts[kind.index()][usize::from(many)]
            .get_or_init(|| self.upsert_spec.sql(kind, rows))
    }
}

/// The parts of a table's upserts.
struct UpsertSpec {
    name: String,
    /// The columns an upsert writes.
    insert_cols: String,
    /// The parent column, for a detail.
    parent: Option<String>,
    n_fields: usize,
}

impl UpsertSpec {
    /// The values of one row of `kind` whose parameters start after `base`. Placeholders are
    /// numbered and all header values a kind binds are always bound; a master has no parent
    /// column, so its rows just never name their third parameter.
    fn row_vals(&self, kind: RowKind, base: usize) -> String {
        let p = |i: usize| format!("?{}", base + i);
        let mut vals: Vec<String> = if kind.from_server {
            // `SyncMeta::from_server`: nothing pending, no local edit.
            [p(1), p(2), p(3), "0".into(), "0".into()]
                .into_iter()
                .chain((4..=FROM_SERVER_PARAMS).map(p))
                .collect()
        } else {
            (1..=HEADER_PARAMS).map(p).collect()
        };
        if self.parent.is_none() {
            vals.remove(2);
        }
        vals.extend((1..=self.n_fields).map(|i| p(kind.header_params() + i)));
        format!("({})", vals.join(", "))
    }

    /// The upsert of `rows` rows of `kind`.
    fn sql(&self, kind: RowKind, rows: usize) -> String {
        let (name, insert_cols) = (&self.name, &self.insert_cols);
        let per_row = kind.header_params() + self.n_fields;
        let values: Vec<String> = (0..rows)
            .map(|r| self.row_vals(kind, r * per_row))
            .collect();
        let same_keys = kind.write == Write::SameKeys;
        let keep = |c: &&str| {
            *c != "id" && !(same_keys && (*c == "server_id" || Some(*c) == self.parent.as_deref()))
        };
        if kind.write == Write::New {
            // Nothing to update, and `OR FAIL` spares SQLite the statement journal a
            // multi-row statement that may abort keeps (a failure fails the transaction).
            return format!(
                "INSERT OR FAIL INTO {name} ({insert_cols}) VALUES {}",
                values.join(", ")
            );
        }
        format!(
            "INSERT INTO {name} ({insert_cols}) VALUES {} ON CONFLICT(id) DO UPDATE SET {}",
            values.join(", "),
            insert_cols
                .split(", ")
                .filter(keep)
                .map(|c| format!("{c} = excluded.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// Records [`LocalStore::next`] reads at once (see [`Ahead`]).
const AHEAD_ROWS: usize = 32;

/// Records that a walk with [`LocalStore::next`] read ahead: the walk's next calls are
/// answered from here, without a query, until a write could change what they would find (a
/// put or remove of a record of the table past the walk's position, a sweep, any change
/// through the connection the store did not make or check itself, or, outside a
/// transaction, another connection's commit).
#[derive(Default)]
struct Ahead {
    /// The walk: table, filter, and the local id its next call passes as `after`.
    walk: Option<(TableId, Filter, LocalId)>,
    /// The records that pass the filter after that local id, in order.
    rows: VecDeque<Record>,
    /// No record passes the filter after the last of `rows`.
    end: bool,
    /// The connection's `total_changes` when the walk was last known valid.
    changes: u64,
    /// Outside a transaction, `PRAGMA data_version` when the rows were read: another
    /// connection's commit changes it (inside one, `BEGIN IMMEDIATE` keeps them out).
    version: Option<i64>,
    /// A pending walk outside a transaction (a request being built) reads each record's body
    /// and parent with it: per row of `rows`, in order.
    extras: VecDeque<Extra>,
    /// The table and local id of the record the walk returned last, its body and parent, and
    /// the connection's `total_changes` then: `get_body` of that record and `get` of its parent
    /// are answered from here while nothing was written since (as if read with the record).
    current: Option<(TableId, LocalId, Extra, u64)>,
    /// Body fields of `extras` and `current`, decoded; text and blob bytes in `bytes`.
    slots: Vec<Slot>,
    /// Bytes of the text and blob fields in `slots`.
    bytes: Vec<u8>,
}

/// What a pending walk outside a transaction read with one record (see [`Ahead::extras`]).
#[derive(Clone, Debug)]
struct Extra {
    /// The record's body fields in [`Ahead::slots`]; `None` if a stored value does not fit
    /// the schema (`get_body` then asks SQLite and reports it).
    body: Option<Range<usize>>,
    /// The parent's header, if the record has a parent that is stored.
    parent: Option<Record>,
}

/// Rows one multi-row `INSERT` writes.
const BATCH_ROWS: usize = 32;

/// Rows a transaction's `put`s gather before they are written, [`BATCH_ROWS`] per statement:
/// one statement-cache lookup per flush (it hashes the long SQL text) instead of per statement.
const FLUSH_ROWS: usize = 8 * BATCH_ROWS;

/// Rows from which a flush prepares a [`BATCH_ROWS`]-row statement this connection has not
/// prepared yet. Parsing one costs about 1M instructions (as much as writing some 250 rows
/// with it), while a one-row statement costs a few thousand more per row than a row of a
/// multi-row one: a delta's few changed records (100 in issue 7's 1 % of 11,000) are written
/// one row per statement, whose statement is short to prepare, unless the long one is
/// prepared already.
const PREPARE_MANY_ROWS: usize = 4 * BATCH_ROWS;

/// What is known of a gathered row's record in SQLite, which picks its statement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Write {
    /// Nothing: insert, or update every column.
    #[default]
    Upsert,
    /// It exists already with the same server id and parent (or not at all): the update
    /// leaves those columns (and so their index entries) alone.
    SameKeys,
    /// It does not exist: a plain insert.
    New,
}

/// Which upsert statement writes a gathered row, and so which header values it binds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct RowKind {
    /// What is known of the record.
    write: Write,
    /// Its metadata is [`SyncMeta::from_server`]'s: `sync_pending` and `edits` are literals of
    /// the statement instead of two parameters per row.
    from_server: bool,
}

impl RowKind {
    const COUNT: usize = 6;

    const fn of(write: Write, from_server: bool) -> Self {
        RowKind { write, from_server }
    }

    fn index(self) -> usize {
        self.write as usize * 2 + usize::from(self.from_server)
    }

    /// Header parameters of a row (`?1..`): the id, server id, parent and mark always; the
    /// flags and edit count only when they are not literals.
    fn header_params(self) -> usize {
        if self.from_server {
            FROM_SERVER_PARAMS
        } else {
            HEADER_PARAMS
        }
    }

    /// Whether `meta` is what [`SyncMeta::from_server`] gives (any clock).
    fn is_from_server(meta: &SyncMeta) -> bool {
        meta.is_from_server && !meta.is_modified && meta.is_active && meta.edits == 0
    }
}

/// One `by_server` query costs about as much as reading this many rows in a scan.
const LOOKUPS_PER_ROW_READ: u64 = 5;

/// Records of one table put in the open transaction and not yet written to SQLite.
struct Batch {
    table: TableId,
    /// How every row of the batch is written.
    kind: RowKind,
    /// Header, and the range of its body's fields in `fields`.
    rows: Vec<(Record, Range<usize>)>,
    /// Body fields, decoded (and so checked) when put.
    fields: Vec<Slot>,
    /// Bytes of the text and blob fields.
    bytes: Vec<u8>,
}

/// A decoded body field of a gathered row; text and blob bytes live in `Batch::bytes`.
#[derive(Clone, Debug)]
enum Slot {
    Null,
    Integer(i64),
    Real(f64),
    Text(Range<usize>),
    Blob(Range<usize>),
}

impl Slot {
    /// The slot of `v`, its text or blob bytes appended to `bytes`.
    fn of(v: Value<'_>, bytes: &mut Vec<u8>) -> Slot {
        let mut keep = |b: &[u8]| {
            let start = bytes.len();
            bytes.extend_from_slice(b);
            start..bytes.len()
        };
        match v {
            Value::Null => Slot::Null,
            Value::Bool(b) => Slot::Integer(i64::from(b)),
            Value::I64(i) => Slot::Integer(i),
            // Bit-preserving, as `value_sql`.
            Value::U64(u) => Slot::Integer(u as i64),
            Value::F64(f) => Slot::Real(f),
            Value::Text(t) => Slot::Text(keep(t.as_bytes())),
            Value::Bytes(b) => Slot::Blob(keep(b)),
        }
    }
}

impl Batch {
    fn clear(&mut self) {
        self.rows.clear();
        self.fields.clear();
        self.bytes.clear();
    }

    /// Gathers `rec` with `body`, decoded; a body that does not fit `def` leaves the batch as
    /// it was and answers `false`.
    fn push(&mut self, def: &TableDef<'_>, rec: &Record, body: &[u8]) -> bool {
        let (fields, bytes) = (self.fields.len(), self.bytes.len());
        let decoded = body::decode(def, body, |_, _, v| {
            self.fields.push(Slot::of(v, &mut self.bytes));
            Ok::<(), ()>(())
        });
        if matches!(decoded, Ok(Ok(()))) {
            self.rows.push((*rec, fields..self.fields.len()));
            true
        } else {
            self.fields.truncate(fields);
            self.bytes.truncate(bytes);
            false
        }
    }

    /// Binds gathered row `row` as the row that starts after parameter `base`; its server id
    /// and parent only if `keys` (a statement that leaves them alone does not name them).
    fn bind(
        &self,
        stmt: &mut rusqlite::Statement<'_>,
        base: usize,
        row: &(Record, Range<usize>),
        keys: bool,
    ) -> rusqlite::Result<()> {
        let (rec, fields) = row;
        if self.kind.from_server {
            bind_from_server(stmt, base, rec, keys)?;
        } else {
            bind_header(stmt, base, rec, keys)?;
        }
        let base = base + self.kind.header_params();
        for (i, slot) in self.fields[fields.clone()].iter().enumerate() {
            let v = match slot {
                Slot::Null => ValueRef::Null,
                Slot::Integer(i) => ValueRef::Integer(*i),
                Slot::Real(f) => ValueRef::Real(*f),
                Slot::Text(r) => ValueRef::Text(&self.bytes[r.clone()]),
                Slot::Blob(r) => ValueRef::Blob(&self.bytes[r.clone()]),
            };
            stmt.raw_bind_parameter(base + 1 + i, ToSqlOutput::Borrowed(v))?;
        }
        Ok(())
    }
}

/// What a transaction knows of one table's server ids (see the module docs).
#[derive(Default)]
struct ServerIndex {
    /// Server id → the record that holds it, for records written or looked up.
    known: HashMap<u64, Record>,
    /// Local id → server id of every record in `known`, to drop an entry its record leaves.
    by_local: HashMap<u32, u64>,
    /// The server ids in `known` whose record is pending: what [`ServerIndex::confirm`] looks
    /// at, instead of every record known (the whole table after a full refresh).
    pending: HashSet<u64>,
    /// Every server id of the table is in `known`: a miss is an answer.
    complete: bool,
    /// `complete` was decided (by one query) in this transaction.
    checked: bool,
    /// SQL lookups left before the whole table is read into `known` (see `by_server`).
    lookups_left: u64,
    /// The table held no row when `checked` was decided (a fresh device's first sync).
    empty: bool,
}

impl ServerIndex {
    /// Whether `rec` is known to be stored with this very server id and parent.
    fn holds_keys(&self, rec: &Record) -> bool {
        rec.server.is_some_and(|s| {
            self.known
                .get(&s.0)
                .is_some_and(|old| old.local == rec.local && old.parent == rec.parent)
        })
    }

    fn forget_local(&mut self, local: LocalId) {
        if let Some(s) = self.by_local.remove(&local.0) {
            self.known.remove(&s);
            self.pending.remove(&s);
        }
    }

    /// Notes whether the record known under server id `s` is pending.
    fn note_pending(&mut self, s: u64, rec: &Record) {
        if rec.meta.is_pending() {
            self.pending.insert(s);
        } else if !self.pending.is_empty() {
            // A full refresh learns every record of a table, none of them pending: the test
            // above keeps that from paying for a lookup each.
            self.pending.remove(&s);
        }
    }

    /// What [`TableSql::confirm`] and [`TableSql::confirm_remove`] did to the table, done to
    /// the records known: the same test on the same metadata, so the index stays exact.
    fn confirm(&mut self, sent: u32, mark: Option<u32>) {
        let (known, by_local) = (&mut self.known, &mut self.by_local);
        self.pending.retain(|s| {
            let Some(rec) = known.get_mut(s) else {
                return false;
            };
            if rec.meta.edited_after(sent) {
                return true;
            }
            if !rec.meta.is_active {
                by_local.remove(&rec.local.0);
                known.remove(s);
                return false;
            }
            // Known records all have a server id (`learn` keeps only those).
            rec.meta.confirm(sent);
            if let Some(mark) = mark {
                rec.mark = mark;
            }
            false
        });
    }

    /// `rec` is now stored as given.
    fn learn(&mut self, rec: &Record) {
        if let Some(s) = rec.server {
            if let Some(old) = self.known.get_mut(&s.0) {
                if old.local == rec.local {
                    // Known with this server id already (`by_local` maps it back): one lookup
                    // instead of four, for a record that keeps its keys (a delta's updates).
                    *old = *rec;
                    self.note_pending(s.0, rec);
                    return;
                }
            }
        }
        self.forget_local(rec.local);
        if let Some(s) = rec.server {
            // Server ids are unique (a unique index enforces it): whoever held `s` before no
            // longer does, or SQLite refused the write and the transaction is lost anyway.
            if let Some(old) = self.known.insert(s.0, *rec) {
                if old.local != rec.local {
                    self.by_local.remove(&old.local.0);
                }
            }
            self.by_local.insert(rec.local.0, s.0);
            self.note_pending(s.0, rec);
        }
    }
}

/// What a transaction put into one table.
#[derive(Clone, Copy, Debug, Default)]
struct Puts {
    /// The marks of the records (see `sweep`).
    marks: Marks,
    /// The highest local id (0: none).
    max_local: u32,
}

/// The marks of the records a transaction put into one table (see `sweep`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Marks {
    /// It put none.
    #[default]
    None,
    /// Every record it put had this mark.
    All(u32),
    /// Records with different marks.
    Mixed,
}

impl Marks {
    fn add(&mut self, mark: u32) {
        *self = match *self {
            Marks::None => Marks::All(mark),
            Marks::All(m) if m == mark => Marks::All(m),
            _ => Marks::Mixed,
        };
    }

    /// Whether every record put carries `mark`.
    fn all_are(self, mark: u32) -> bool {
        match self {
            Marks::None => true,
            Marks::All(m) => m == mark,
            Marks::Mixed => false,
        }
    }
}

/// A device store on one SQLite file (or in memory).
pub struct SqliteStore {
    conn: Connection,
    schema: Schema<'static>,
    tables: Vec<TableSql>,
    /// One per table while a transaction is open; empty outside one.
    index: Vec<ServerIndex>,
    /// A transaction is open.
    in_tx: bool,
    /// Puts not yet written (inside a transaction only).
    batch: Batch,
    /// A batch of this transaction failed to write: only `rollback` is accepted.
    failed: bool,
    /// Per table, what this transaction put (see `put` and `sweep`).
    puts: Vec<Puts>,
    /// The walk `next` read ahead in the open transaction.
    ahead: Ahead,
    /// `synchronous` is NORMAL for a [`LocalStore::begin_reply`] transaction.
    lazy: bool,
    /// Per table, a bit per [`RowKind::index`]: its [`BATCH_ROWS`]-row upsert was prepared on
    /// this connection (and stays in its statement cache, which holds every statement).
    many_prepared: Vec<u8>,
    /// The server-id index of the last committed transaction, for the next one.
    ///
    /// What a transaction learned of the tables' server ids is still true after its commit
    /// as long as nothing else writes: the next transaction starts from it if the connection's
    /// `total_changes` (its own writes outside the store's transactions, the app's SQL) and
    /// `PRAGMA data_version` (another connection's commits) are those of that commit. A
    /// phone that synced once answers the next sync's lookups (each record received and its
    /// parent) from memory: a first full refresh leaves every server id known. A rollback
    /// drops it. At most [`KEEP_INDEX_ENTRIES`] records are kept.
    kept: Option<KeptIndex>,
}

/// Records a kept server-id index may hold (see [`SqliteStore::kept`]): about 100 bytes
/// each, so at most about 2 MB of a phone's memory between syncs; a bigger data set is
/// looked up in SQLite again by each transaction.
const KEEP_INDEX_ENTRIES: usize = 20_000;

/// A server-id index kept past its transaction's commit (see [`SqliteStore::kept`]).
struct KeptIndex {
    /// One per table.
    index: Vec<ServerIndex>,
    /// The connection's `total_changes` just after the commit.
    changes: u64,
    /// `PRAGMA data_version` just after the commit.
    version: i64,
}

/// Layout of the store's tables, kept in `_fs_meta` (key `format`): 2 packs the sync
/// columns (`sync_pending`, `modified_seq`); 1 (files without the row) had a column per flag
/// and per clock part. A file of another format is refused ([`StoreError::FormatChanged`]).
const FORMAT: i64 = 2;

const STATE_DDL: &str = "
CREATE TABLE IF NOT EXISTS _fs_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS _fs_state (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  cursor INTEGER,
  clock_wall INTEGER NOT NULL, clock_counter INTEGER NOT NULL, clock_device INTEGER NOT NULL,
  next_local INTEGER NOT NULL, edit_seq INTEGER NOT NULL, syncs INTEGER NOT NULL,
  refresh INTEGER NOT NULL, needs_full INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS _fs_rejected (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  tbl INTEGER NOT NULL, op INTEGER NOT NULL,
  key_is_local INTEGER NOT NULL, key INTEGER NOT NULL, local INTEGER,
  reason INTEGER NOT NULL,
  at_wall INTEGER NOT NULL, at_counter INTEGER NOT NULL, at_device INTEGER NOT NULL,
  body BLOB NOT NULL
);
";

fn op_code(op: Op) -> i64 {
    match op {
        Op::Add => 0,
        Op::Update => 1,
        Op::Delete => 2,
    }
}

fn op_from(code: i64) -> Result<Op, StoreError> {
    Ok(match code {
        0 => Op::Add,
        1 => Op::Update,
        2 => Op::Delete,
        _ => return Err(StoreError::Corrupt(format!("op code {code}"))),
    })
}

const REASONS: [RejectReason; 7] = [
    RejectReason::UnknownTable,
    RejectReason::InvalidBody,
    RejectReason::OutOfScope,
    RejectReason::ParentMissing,
    RejectReason::Deleted,
    RejectReason::UnknownRecord,
    RejectReason::BadKey,
];

fn header_from(table: TableId, row: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    header_at(table, row, 0)
}

/// The header in columns `at..at + HEADER_COUNT` of `row`. Read with `get_ref` and matched
/// here: `Row::get` costs about twice as much per column, and a delta or a push reads a header
/// per record.
fn header_at(table: TableId, row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Record> {
    let int = |i: usize| -> rusqlite::Result<i64> { Ok(row.get_ref(at + i)?.as_i64()?) };
    let opt =
        |i: usize| -> rusqlite::Result<Option<i64>> { Ok(row.get_ref(at + i)?.as_i64_or_null()?) };
    let pending = int(3)?;
    let seq = int(6)?;
    Ok(Record {
        table,
        local: LocalId(int(0)? as u32),
        server: opt(1)?.map(|s| ServerId(s as u64)),
        parent: opt(2)?.map(|p| LocalId(p as u32)),
        meta: SyncMeta {
            is_from_server: pending & NOT_FROM_SERVER == 0,
            is_modified: pending & MODIFIED != 0,
            is_active: pending & DELETED == 0,
            edits: int(4)? as u32,
            modified_at: Hlc::new(int(5)? as u64, (seq >> 32) as u32, seq as u32),
        },
        mark: int(7)? as u32,
    })
}

/// The record header the one-row query `sql` finds, if any.
fn query_header(
    conn: &Connection,
    table: TableId,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Option<Record>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    Ok(stmt
        .query_row(params, |row| header_from(table, row))
        .optional()?)
}

/// Parameters `?1..?8` of the insert and header-update statements: the header.
const HEADER_PARAMS: usize = HEADER_COUNT;

/// Parameters `?1..?6` of the upserts of [`RowKind::from_server`] rows: the id, server id,
/// parent, clock (two columns) and mark.
const FROM_SERVER_PARAMS: usize = 6;

/// Binds the header of `rec` (whose metadata is [`SyncMeta::from_server`]'s) to parameters
/// `base + 1..=base + FROM_SERVER_PARAMS`, its server id and parent (2 and 3) only if `keys`.
fn bind_from_server(
    stmt: &mut rusqlite::Statement<'_>,
    base: usize,
    rec: &Record,
    keys: bool,
) -> rusqlite::Result<()> {
    let at = &rec.meta.modified_at;
    stmt.raw_bind_parameter(base + 1, i64::from(rec.local.0))?;
    if keys {
        bind_keys(stmt, base, rec)?;
    }
    stmt.raw_bind_parameter(base + 4, at.wall_ms as i64)?;
    stmt.raw_bind_parameter(base + 5, clock_seq(at))?;
    stmt.raw_bind_parameter(base + 6, i64::from(rec.mark))
}

/// Binds `rec`'s server id and parent to parameters `base + 2` and `base + 3`.
fn bind_keys(
    stmt: &mut rusqlite::Statement<'_>,
    base: usize,
    rec: &Record,
) -> rusqlite::Result<()> {
    stmt.raw_bind_parameter(base + 2, rec.server.map(|s| s.0 as i64))?;
    stmt.raw_bind_parameter(base + 3, rec.parent.map(|p| i64::from(p.0)))
}

/// Binds `rec`'s header to parameters `base + 1..=base + HEADER_PARAMS`, its server id and
/// parent (2 and 3) only if `keys`.
fn bind_header(
    stmt: &mut rusqlite::Statement<'_>,
    base: usize,
    rec: &Record,
    keys: bool,
) -> rusqlite::Result<()> {
    let m = &rec.meta;
    stmt.raw_bind_parameter(base + 1, i64::from(rec.local.0))?;
    if keys {
        bind_keys(stmt, base, rec)?;
    }
    stmt.raw_bind_parameter(base + 4, pending_bits(m))?;
    stmt.raw_bind_parameter(base + 5, i64::from(m.edits))?;
    stmt.raw_bind_parameter(base + 6, m.modified_at.wall_ms as i64)?;
    stmt.raw_bind_parameter(base + 7, clock_seq(&m.modified_at))?;
    stmt.raw_bind_parameter(base + 8, i64::from(rec.mark))
}

/// Binds a record (header and body fields) as the row that starts after parameter `base`.
fn bind_row(
    stmt: &mut rusqlite::Statement<'_>,
    base: usize,
    def: &TableDef<'_>,
    rec: &Record,
    body: &[u8],
) -> Result<(), StoreError> {
    bind_header(stmt, base, rec, true)?;
    let mut bound = Ok(());
    let decoded = body::decode(def, body, |i, _, v| {
        if bound.is_ok() {
            bound = stmt.raw_bind_parameter(base + HEADER_PARAMS + 1 + i, value_sql(&v));
        }
        Ok::<(), ()>(())
    });
    bound?;
    if matches!(decoded, Ok(Ok(()))) {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!(
            "body does not fit table {}",
            def.name
        )))
    }
}

fn value_sql<'a>(v: &Value<'a>) -> ToSqlOutput<'a> {
    ToSqlOutput::Borrowed(match *v {
        Value::Null => ValueRef::Null,
        Value::Bool(b) => ValueRef::Integer(i64::from(b)),
        Value::I64(i) => ValueRef::Integer(i),
        // Bit-preserving: a u64 above i64::MAX is stored negative and read back unchanged.
        Value::U64(u) => ValueRef::Integer(u as i64),
        Value::F64(f) => ValueRef::Real(f),
        Value::Text(t) => ValueRef::Text(t.as_bytes()),
        Value::Bytes(b) => ValueRef::Blob(b),
    })
}

/// Encodes a stored record's body into `buf`; returns its length.
fn encode_body(
    def: &TableDef<'_>,
    values: &[Value<'_>],
    buf: &mut [u8],
) -> Result<Option<usize>, StoreError> {
    match body::encode(def, values, buf) {
        Ok(b) => Ok(Some(b.len())),
        Err(body::BodyError::BufferFull) => Err(StoreError::BufferTooSmall),
        Err(e) => Err(StoreError::Corrupt(format!("{}: {e}", def.name))),
    }
}

fn sql_value<'a>(ty: FieldType, v: ValueRef<'a>) -> Option<Value<'a>> {
    Some(match (ty, v) {
        (_, ValueRef::Null) => Value::Null,
        (FieldType::Bool, ValueRef::Integer(i)) => Value::Bool(i != 0),
        (FieldType::I64, ValueRef::Integer(i)) => Value::I64(i),
        (FieldType::U64, ValueRef::Integer(i)) => Value::U64(i as u64),
        (FieldType::F64, ValueRef::Real(f)) => Value::F64(f),
        (FieldType::F64, ValueRef::Integer(i)) => Value::F64(i as f64),
        (FieldType::Text, ValueRef::Text(t)) => Value::Text(std::str::from_utf8(t).ok()?),
        (FieldType::Bytes, ValueRef::Blob(b)) => Value::Bytes(b),
        _ => return None,
    })
}

impl SqliteStore {
    /// Opens (creating if needed) the store in the SQLite file at `path`.
    pub fn open(path: impl AsRef<Path>, schema: Schema<'static>) -> Result<Self, StoreError> {
        Self::with_connection(Connection::open(path)?, schema)
    }

    /// A store in memory (tests, tools).
    pub fn open_in_memory(schema: Schema<'static>) -> Result<Self, StoreError> {
        Self::with_connection(Connection::open_in_memory()?, schema)
    }

    /// A store on an open connection: sets WAL and `synchronous = FULL`, creates the tables,
    /// and checks that the file was made for this schema.
    pub fn with_connection(conn: Connection, schema: Schema<'static>) -> Result<Self, StoreError> {
        schema
            .validate()
            .map_err(|e| StoreError::Schema(e.to_string()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // WAL answers with a row (the new mode), so it is read, not executed.
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        conn.execute_batch("PRAGMA synchronous = FULL;")?;
        let mut tables = Vec::with_capacity(schema.tables.len());
        let mut ddl = String::new();
        for t in 0..schema.tables.len() {
            let (sql, table_ddl) = TableSql::new(&schema, t)?;
            tables.push(sql);
            ddl.push_str(&table_ddl);
        }
        conn.execute_batch(&format!("BEGIN IMMEDIATE;{STATE_DDL}"))
            .map_err(StoreError::Sqlite)?;
        let meta = |key: &str| {
            conn.query_row("SELECT value FROM _fs_meta WHERE key = ?1", [key], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
        };
        let stored = meta("schema_hash")?;
        // A file made before the format row was written is format 1.
        let format = meta("format")?.unwrap_or(if stored.is_some() { 1 } else { FORMAT });
        if format != FORMAT {
            conn.execute_batch("ROLLBACK")?;
            return Err(StoreError::FormatChanged {
                stored: format,
                supported: FORMAT,
            });
        }
        conn.execute_batch(&ddl).map_err(StoreError::Sqlite)?;
        let given = schema.hash();
        match stored {
            Some(s) if s as u64 != given => {
                conn.execute_batch("ROLLBACK")?;
                return Err(StoreError::SchemaChanged {
                    stored: s as u64,
                    given,
                });
            }
            Some(_) => {}
            None => {
                conn.execute(
                    "INSERT INTO _fs_meta (key, value) VALUES ('schema_hash', ?1), ('format', ?2)",
                    [given as i64, FORMAT],
                )?;
            }
        }
        conn.execute_batch("COMMIT")?;
        // Every statement of every table stays prepared (the default cache holds 16).
        conn.set_prepared_statement_cache_capacity(32 * tables.len() + 16);
        Ok(SqliteStore {
            conn,
            schema,
            tables,
            index: Vec::new(),
            in_tx: false,
            batch: Batch {
                table: TableId(0),
                kind: RowKind::default(),
                rows: Vec::with_capacity(FLUSH_ROWS),
                fields: Vec::new(),
                bytes: Vec::new(),
            },
            failed: false,
            puts: Vec::new(),
            ahead: Ahead::default(),
            lazy: false,
            many_prepared: vec![0; schema.tables.len()],
            kept: None,
        })
    }

    /// The schema this store was opened with.
    pub fn schema(&self) -> &Schema<'static> {
        &self.schema
    }

    /// The connection, for the app's own queries (read the tables with plain SQL). `Phone` and
    /// the sync engine open and end their transactions within one call, so between calls the
    /// app sees committed data; inside a transaction opened through `LocalStore::begin`, puts
    /// the store gathered are not written yet (see the module docs).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Writes the gathered puts, [`BATCH_ROWS`] per statement. Every SQL statement but those
    /// writes runs after this, so SQLite sees what the transaction put. A failure marks the
    /// transaction failed: its writes are incomplete, only `rollback` is accepted.
    fn flush(&mut self) -> Result<(), StoreError> {
        if self.failed {
            return Err(StoreError::TransactionFailed);
        }
        if self.batch.rows.is_empty() {
            return Ok(());
        }
        let (t, kind) = (self.batch.table.0 as usize, self.batch.kind.index());
        let prepared = self
            .many_prepared
            .get(t)
            .is_some_and(|m| m & (1 << kind) != 0);
        let many = prepared || self.batch.rows.len() >= PREPARE_MANY_ROWS;
        if many && !prepared {
            if let Some(m) = self.many_prepared.get_mut(t) {
                *m |= 1 << kind;
            }
        }
        let written = self.write_batch(many);
        self.batch.clear();
        if written.is_err() {
            self.failed = true;
        }
        // Each gathered row was checked against the walk when it was put.
        self.ahead_keep();
        written
    }

    /// Writes the gathered puts: [`BATCH_ROWS`] per statement if `many`, else one per
    /// statement.
    fn write_batch(&self, many: bool) -> Result<(), StoreError> {
        let b = &self.batch;
        let sql = self.sql(b.table)?;
        let per_row = b.kind.header_params() + sql.fields;
        // Rows written by the multi-row statement; the rest go one per statement.
        let in_many = if many {
            b.rows.len() - b.rows.len() % BATCH_ROWS
        } else {
            0
        };
        let (full, rest) = b.rows.split_at(in_many);
        if !full.is_empty() {
            let mut stmt = self.conn.prepare_cached(sql.upsert(b.kind, true))?;
            for chunk in full.chunks_exact(BATCH_ROWS) {
                for (r, row) in chunk.iter().enumerate() {
                    b.bind(&mut stmt, r * per_row, row, true)?;
                }
                stmt.raw_execute()?;
            }
        }
        let mut missed = Vec::new();
        if !rest.is_empty() && b.kind.write == Write::SameKeys {
            let update = &sql.update_same_keys[usize::from(b.kind.from_server)];
            // A record from the server mostly replaces a clean one (a delta on a synced
            // phone): tried first with the update that leaves the pending index alone. Rows it
            // does not find clean take the whole update after, in order: a later row of the
            // same record does not find it clean either.
            let first = if b.kind.from_server {
                &sql.update_clean
            } else {
                update
            };
            let mut not_clean = Vec::new();
            let mut stmt = self.conn.prepare_cached(first)?;
            for row in rest {
                // The updates name neither the server id nor the parent.
                b.bind(&mut stmt, 0, row, false)?;
                if stmt.raw_execute()? == 0 {
                    if b.kind.from_server {
                        not_clean.push(row);
                    } else {
                        missed.push(row);
                    }
                }
            }
            if !not_clean.is_empty() {
                let mut stmt = self.conn.prepare_cached(update)?;
                for row in not_clean {
                    b.bind(&mut stmt, 0, row, false)?;
                    if stmt.raw_execute()? == 0 {
                        missed.push(row);
                    }
                }
            }
        } else {
            missed.extend(rest);
        }
        if !missed.is_empty() {
            let mut stmt = self.conn.prepare_cached(sql.upsert(b.kind, false))?;
            for row in missed {
                b.bind(&mut stmt, 0, row, true)?;
                stmt.raw_execute()?;
            }
        }
        Ok(())
    }

    /// Reads every record of `table` that has a server id into the transaction's index, which
    /// is then complete. Gathered puts must be written first.
    fn load_server_index(&mut self, table: TableId) -> Result<(), StoreError> {
        let sql = self.sql(table)?;
        let mut stmt = self.conn.prepare_cached(&sql.all_servers)?;
        let mut rows = stmt.query([])?;
        let Some(ix) = self.index.get_mut(table.0 as usize) else {
            return Ok(());
        };
        while let Some(row) = rows.next()? {
            ix.learn(&header_from(table, row)?);
        }
        ix.complete = true;
        Ok(())
    }

    /// Inside a transaction, notes a record just read from SQLite (everything gathered was
    /// written before the read, so it is the stored state): a `put` of it that keeps its
    /// server id and parent then leaves those columns and their index entries alone.
    fn learn_read(&mut self, table: TableId, rec: Option<&Record>) {
        if let (Some(rec), Some(ix)) = (rec, self.index.get_mut(table.0 as usize)) {
            ix.learn(rec);
        }
    }

    /// A write to `(table, local)` is coming: a walk past it is dropped (it may change what
    /// the walk finds next).
    fn ahead_touch(&mut self, table: TableId, local: LocalId) {
        if let Some((t, _, last)) = self.ahead.walk {
            if t == table && local > last {
                self.ahead.walk = None;
            }
        }
    }

    /// The store's own writes since the walk was checked left it valid.
    fn ahead_keep(&mut self) {
        if self.ahead.walk.is_some() {
            self.ahead.changes = self.conn.total_changes();
        }
    }

    /// `next` answered from the walk read ahead, if it continues that walk and nothing
    /// changed under it.
    fn ahead_next(
        &mut self,
        table: TableId,
        after: Option<LocalId>,
        filter: Filter,
    ) -> Option<Option<Record>> {
        let (t, f, last) = self.ahead.walk?;
        if t != table || f != filter || after != Some(last) {
            return None;
        }
        let changed = self.ahead.changes != self.conn.total_changes()
            || self.ahead.version.is_some() && self.ahead.version != self.data_version().ok();
        if changed {
            self.ahead.walk = None;
            self.ahead.current = None;
            return None;
        }
        match self.ahead.rows.pop_front() {
            Some(rec) => {
                self.ahead.walk = Some((table, filter, rec.local));
                let extra = self.ahead.extras.pop_front();
                self.ahead.current =
                    extra.map(|e| (table, rec.local, e, self.conn.total_changes()));
                Some(Some(rec))
            }
            None if self.ahead.end => {
                self.ahead.walk = None;
                self.ahead.current = None;
                Some(None)
            }
            None => None,
        }
    }

    /// Reads up to [`AHEAD_ROWS`] records of the walk from `after`; returns the first. A
    /// pending walk outside a transaction (a request being built) reads their bodies and
    /// parents too (see [`Ahead::extras`]).
    fn read_ahead(
        &mut self,
        table: TableId,
        after: i64,
        filter: Filter,
    ) -> Result<Option<Record>, StoreError> {
        let (mut slots, mut bytes) = (
            std::mem::take(&mut self.ahead.slots),
            std::mem::take(&mut self.ahead.bytes),
        );
        let sql = self.sql(table)?;
        let mut rows = VecDeque::with_capacity(AHEAD_ROWS);
        let mut extras = VecDeque::new();
        slots.clear();
        bytes.clear();
        match filter {
            Filter::Pending if !self.in_tx => {
                let def = self
                    .schema
                    .table(table)
                    .ok_or_else(|| StoreError::Corrupt(format!("no {table}")))?;
                let mut stmt = self.conn.prepare_cached(&sql.ahead_send)?;
                let mut found = stmt.query([after])?;
                let at_parent = HEADER_COUNT + def.fields.len();
                while let Some(row) = found.next()? {
                    rows.push_back(header_from(table, row)?);
                    let first = slots.len();
                    let mut fits = true;
                    for (i, f) in def.fields.iter().enumerate() {
                        match sql_value(f.ty, row.get_ref(HEADER_COUNT + i)?) {
                            Some(v) => slots.push(Slot::of(v, &mut bytes)),
                            None => fits = false,
                        }
                    }
                    let parent = match def.parent {
                        Some(pt) if row.get_ref(at_parent)? != ValueRef::Null => {
                            Some(header_at(pt, row, at_parent)?)
                        }
                        _ => None,
                    };
                    extras.push_back(Extra {
                        body: fits.then_some(first..slots.len()),
                        parent,
                    });
                }
            }
            _ => {
                let (sql, parent) = match filter {
                    Filter::All => (&sql.ahead[0], None),
                    Filter::Pending => (&sql.ahead[1], None),
                    Filter::Children(p) => (&sql.ahead[2], Some(i64::from(p.0))),
                };
                let mut stmt = self.conn.prepare_cached(sql)?;
                let mut found = match parent {
                    Some(p) => stmt.query([after, p])?,
                    None => stmt.query([after])?,
                };
                while let Some(row) = found.next()? {
                    rows.push_back(header_from(table, row)?);
                }
            }
        }
        let end = rows.len() < AHEAD_ROWS;
        let first = rows.pop_front();
        let version = if self.in_tx {
            None
        } else {
            Some(self.data_version()?)
        };
        let changes = self.conn.total_changes();
        let current = match (first, extras.pop_front()) {
            (Some(rec), Some(extra)) => Some((table, rec.local, extra, changes)),
            _ => None,
        };
        self.ahead = Ahead {
            walk: first.map(|r| (table, filter, r.local)),
            rows,
            end,
            changes,
            version,
            extras,
            current,
            slots,
            bytes,
        };
        Ok(first)
    }

    /// What the pending walk read with the record it returned last, if that is
    /// `(table, local)` and nothing was written since.
    fn current_extra(&self, table: TableId, local: LocalId) -> Option<&Extra> {
        match &self.ahead.current {
            Some((t, l, extra, changes))
                if *t == table && *l == local && *changes == self.conn.total_changes() =>
            {
                Some(extra)
            }
            _ => None,
        }
    }

    /// The parent of the record the pending walk returned last, if it is `(table, local)`
    /// and nothing was written since.
    fn current_parent(&self, table: TableId, local: LocalId) -> Option<Record> {
        let (t, l, extra, changes) = self.ahead.current.as_ref()?;
        let parent = extra.parent?;
        let def = self.schema.table(*t)?;
        (def.parent == Some(table)
            && parent.local == local
            && *changes == self.conn.total_changes()
            && self.current_extra(*t, *l).is_some())
        .then_some(parent)
    }

    /// `PRAGMA data_version`: changes when another connection commits.
    fn data_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?)
    }

    /// Forgets the transaction's index and unwritten puts.
    /// Begins the transaction and its bookkeeping.
    fn open_tx(&mut self) -> Result<(), StoreError> {
        self.run_cached("BEGIN IMMEDIATE")?;
        self.index.clear();
        if let Some(kept) = self.kept.take() {
            // Nothing was written since that commit, through this connection or another.
            if kept.changes == self.conn.total_changes() && kept.version == self.data_version()? {
                self.index = kept.index;
            }
        }
        self.index
            .resize_with(self.tables.len(), ServerIndex::default);
        self.puts.clear();
        self.puts.resize(self.tables.len(), Puts::default());
        self.ahead = Ahead::default();
        self.in_tx = true;
        self.failed = false;
        Ok(())
    }

    /// After a commit, keeps the transaction's server-id index for the next one (see
    /// [`SqliteStore::kept`]) if it is small enough; `version` is `PRAGMA data_version` as of
    /// the commit.
    fn keep_index(&mut self, version: i64) {
        let entries: usize = self.index.iter().map(|ix| ix.known.len()).sum();
        if entries > KEEP_INDEX_ENTRIES {
            return;
        }
        let mut index = std::mem::take(&mut self.index);
        for ix in &mut index {
            // The table holds what the transaction put: it is not known empty any more.
            ix.empty = false;
        }
        self.kept = Some(KeptIndex {
            index,
            changes: self.conn.total_changes(),
            version,
        });
    }

    /// Puts `synchronous = FULL` back after a [`LocalStore::begin_reply`] transaction: every
    /// other commit waits for its fsync.
    fn full_again(&mut self) -> Result<(), StoreError> {
        if self.lazy {
            self.run_cached("PRAGMA synchronous = FULL")?;
            self.lazy = false;
        }
        Ok(())
    }

    fn end_tx(&mut self) {
        self.ahead = Ahead::default();
        self.index.clear();
        self.puts.clear();
        self.batch.clear();
        self.in_tx = false;
        self.failed = false;
    }

    /// Runs `sql`, one statement that answers no row, from the statement cache: a sync's
    /// `BEGIN`, `COMMIT` and pragmas are parsed once per connection, not once per sync.
    fn run_cached(&self, sql: &str) -> Result<(), StoreError> {
        self.conn.prepare_cached(sql)?.raw_execute()?;
        Ok(())
    }

    fn sql(&self, table: TableId) -> Result<&TableSql, StoreError> {
        self.tables
            .get(table.0 as usize)
            .ok_or_else(|| StoreError::Corrupt(format!("no {table}")))
    }
}

impl LocalStore for SqliteStore {
    type Error = StoreError;

    /// Every body put is decoded into its columns; one that does not fit fails its `put`
    /// ([`StoreError::Corrupt`]) and writes nothing.
    const CHECKS_BODIES: bool = true;

    async fn load_state(&mut self) -> Result<DeviceState, StoreError> {
        self.flush()?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT cursor, clock_wall, clock_counter, clock_device, next_local, edit_seq, syncs, \
             refresh, needs_full FROM _fs_state WHERE id = 1",
        )?;
        let state = stmt
            .query_row([], |r| {
                Ok(DeviceState {
                    cursor: r.get::<_, Option<i64>>(0)?.map(|c| c as u64),
                    clock: Hlc::new(
                        r.get::<_, i64>(1)? as u64,
                        r.get::<_, i64>(2)? as u32,
                        r.get::<_, i64>(3)? as u32,
                    ),
                    next_local: r.get::<_, i64>(4)? as u32,
                    edit_seq: r.get::<_, i64>(5)? as u32,
                    syncs: r.get::<_, i64>(6)? as u64,
                    refresh: r.get::<_, i64>(7)? as u32,
                    needs_full: r.get(8)?,
                })
            })
            .optional()?;
        Ok(state.unwrap_or_default())
    }

    async fn begin(&mut self) -> Result<(), StoreError> {
        self.full_again()?;
        self.open_tx()
    }

    /// A transaction whose commit does not wait for its fsync (`synchronous = NORMAL` until it
    /// ends; SQLite takes the setting only outside a transaction). In WAL mode the commit is
    /// atomic either way; the next `commit` of the app, whose fsync of the log covers this
    /// one's frames, or a checkpoint, makes it durable. A power cut before that takes the
    /// reply back whole, which the next sync redoes ([`LocalStore::begin_reply`]). A synced
    /// phone's delta saves the fsync it was waiting for.
    async fn begin_reply(&mut self) -> Result<(), StoreError> {
        self.run_cached("PRAGMA synchronous = NORMAL")?;
        self.lazy = true;
        self.open_tx()
    }

    async fn commit(&mut self, s: &DeviceState) -> Result<(), StoreError> {
        self.flush()?;
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO _fs_state (id, cursor, clock_wall, clock_counter, \
                 clock_device, next_local, edit_seq, syncs, refresh, needs_full) \
                 VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                s.cursor.map(|c| c as i64),
                s.clock.wall_ms as i64,
                i64::from(s.clock.counter),
                i64::from(s.clock.device),
                i64::from(s.next_local),
                i64::from(s.edit_seq),
                s.syncs as i64,
                i64::from(s.refresh),
                s.needs_full,
            ])?;
        // Read inside the transaction: no other connection can commit while it holds the
        // write lock, and this connection's own commit leaves the value as it is.
        let version = self.data_version()?;
        self.run_cached("COMMIT")?;
        self.keep_index(version);
        self.end_tx();
        self.full_again()
    }

    async fn rollback(&mut self) -> Result<(), StoreError> {
        self.end_tx();
        if !self.conn.is_autocommit() {
            self.conn.execute_batch("ROLLBACK")?;
        }
        self.full_again()
    }

    async fn get(&mut self, table: TableId, local: LocalId) -> Result<Option<Record>, StoreError> {
        if let Some(parent) = self.current_parent(table, local) {
            // Read with the record the pending walk returned last (outside a transaction).
            return Ok(Some(parent));
        }
        self.flush()?;
        let sql = &self.sql(table)?.get;
        let found = query_header(&self.conn, table, sql, [i64::from(local.0)])?;
        self.learn_read(table, found.as_ref());
        Ok(found)
    }

    async fn get_body(
        &mut self,
        table: TableId,
        local: LocalId,
        buf: &mut [u8],
    ) -> Result<Option<usize>, StoreError> {
        self.flush()?;
        let def = self
            .schema
            .table(table)
            .ok_or_else(|| StoreError::Corrupt(format!("no {table}")))?;
        let mut values = Vec::with_capacity(def.fields.len());
        if let Some(fields) = self
            .current_extra(table, local)
            .and_then(|e| e.body.clone())
        {
            // Read with the record the pending walk returned last (outside a transaction).
            let (slots, bytes) = (&self.ahead.slots, &self.ahead.bytes);
            let slots = slots.get(fields).unwrap_or_default();
            for (f, slot) in def.fields.iter().zip(slots) {
                let v = match slot {
                    Slot::Null => ValueRef::Null,
                    Slot::Integer(i) => ValueRef::Integer(*i),
                    Slot::Real(f) => ValueRef::Real(*f),
                    Slot::Text(r) => ValueRef::Text(bytes.get(r.clone()).unwrap_or_default()),
                    Slot::Blob(r) => ValueRef::Blob(bytes.get(r.clone()).unwrap_or_default()),
                };
                // Checked when read: the same value SQLite gave.
                values.push(sql_value(f.ty, v).ok_or_else(|| {
                    StoreError::Corrupt(format!("{}.{} changed type", def.name, f.name))
                })?);
            }
            return encode_body(def, &values, buf);
        }
        let mut stmt = self.conn.prepare_cached(&self.sql(table)?.body)?;
        let mut rows = stmt.query([i64::from(local.0)])?;
        let Some(row) = rows.next()? else {
            return Ok(None);
        };
        for (i, f) in def.fields.iter().enumerate() {
            let v = sql_value(f.ty, row.get_ref(i)?).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "{}.{} has a value of the wrong type",
                    def.name, f.name
                ))
            })?;
            values.push(v);
        }
        encode_body(def, &values, buf)
    }

    async fn by_server(
        &mut self,
        table: TableId,
        server: ServerId,
    ) -> Result<Option<Record>, StoreError> {
        let sql = self
            .tables
            .get(table.0 as usize)
            .ok_or_else(|| StoreError::Corrupt(format!("no {table}")))?;
        if self.failed {
            return Err(StoreError::TransactionFailed);
        }
        let Some(ix) = self.index.get_mut(table.0 as usize) else {
            // No transaction open: ask SQLite.
            return query_header(&self.conn, table, &sql.by_server, [server.0 as i64]);
        };
        if let Some(rec) = ix.known.get(&server.0) {
            return Ok(Some(*rec));
        }
        if !ix.checked {
            ix.checked = true;
            // Gathered puts are in `known` already; SQLite need not see them for this.
            let (held, max_id): (bool, i64) = self
                .conn
                .prepare_cached(&sql.has_server)?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            ix.complete = !held;
            ix.empty = max_id == 0;
            // One lookup costs about as much as reading five rows in one scan, and the table
            // has at most `max_id` rows: after that many lookups, read them all (a full
            // refresh on a synced phone asks for every record; a delta asks for few).
            ix.lookups_left = max_id.unsigned_abs() / LOOKUPS_PER_ROW_READ + 1;
        }
        if ix.complete {
            return Ok(None);
        }
        ix.lookups_left = ix.lookups_left.saturating_sub(1);
        let load_all = ix.lookups_left == 0;
        if load_all || self.batch.kind.write == Write::Upsert {
            // A gathered row may have taken this server id from a stored record. Rows that
            // keep their server id (`SameKeys`) or are new (`New`: they take no id a stored
            // record holds, or their write fails) cannot change the answer for an id outside
            // `known`, so they may wait, and keep their batch (a delta, a full refresh on a
            // synced phone before the load). Reading the whole table needs them written.
            self.flush()?;
        }
        if load_all {
            self.load_server_index(table)?;
            return Ok(self
                .index
                .get(table.0 as usize)
                .and_then(|ix| ix.known.get(&server.0).copied()));
        }
        let sql = &self.sql(table)?.by_server;
        let found = query_header(&self.conn, table, sql, [server.0 as i64])?;
        if let (Some(rec), Some(ix)) = (&found, self.index.get_mut(table.0 as usize)) {
            ix.learn(rec);
        }
        Ok(found)
    }

    async fn put(&mut self, rec: &Record, body: Option<&[u8]>) -> Result<(), StoreError> {
        let def = self
            .schema
            .table(rec.table)
            .ok_or_else(|| StoreError::Corrupt(format!("no {}", rec.table)))?;
        // A master has no parent column: remember the record as SQLite will give it back.
        let stored;
        let rec = if def.parent_field.is_none() && rec.parent.is_some() {
            stored = Record {
                parent: None,
                ..*rec
            };
            &stored
        } else {
            rec
        };
        self.ahead_touch(rec.table, rec.local);
        let t = rec.table.0 as usize;
        // Above every local id this transaction put into the table so far?
        let beyond = self.puts.get_mut(t).is_some_and(|p| {
            p.marks.add(rec.mark);
            let beyond = rec.local.0 > p.max_local;
            p.max_local = p.max_local.max(rec.local.0);
            beyond
        });
        match body {
            Some(body) if self.in_tx => {
                // Gathered for a multi-row insert, decoded now so a bad body fails this call.
                let write = match self.index.get(t) {
                    // Known to be stored (or gathered) with the same server id and parent.
                    Some(ix) if ix.holds_keys(rec) => Write::SameKeys,
                    // The table held no row when the transaction first asked, so it holds
                    // only what the transaction put, all of it below this local id.
                    Some(ix) if ix.checked && ix.empty && beyond => Write::New,
                    _ => Write::Upsert,
                };
                let kind = RowKind {
                    write,
                    from_server: RowKind::is_from_server(&rec.meta),
                };
                if self.batch.table != rec.table || self.batch.kind != kind {
                    self.flush()?;
                    self.batch.table = rec.table;
                    self.batch.kind = kind;
                }
                if self.failed {
                    return Err(StoreError::TransactionFailed);
                }
                if !self.batch.push(def, rec, body) {
                    return Err(StoreError::Corrupt(format!(
                        "body does not fit table {}",
                        def.name
                    )));
                }
                if let Some(ix) = self.index.get_mut(rec.table.0 as usize) {
                    ix.learn(rec);
                }
                if self.batch.rows.len() >= FLUSH_ROWS {
                    self.flush()?;
                }
            }
            Some(body) => {
                let mut stmt = self
                    .conn
                    .prepare_cached(self.sql(rec.table)?.upsert(RowKind::default(), false))?;
                bind_row(&mut stmt, 0, def, rec, body)?;
                stmt.raw_execute()?;
            }
            None => {
                self.flush()?;
                let sql = self.sql(rec.table)?;
                // Same server id and parent as stored (the engine confirming or marking a
                // record it just read): only the metadata columns change.
                let same_keys = self
                    .index
                    .get(rec.table.0 as usize)
                    .is_some_and(|ix| ix.holds_keys(rec));
                let mut stmt = self.conn.prepare_cached(if same_keys {
                    &sql.update_meta
                } else {
                    &sql.update_header
                })?;
                bind_header(&mut stmt, 0, rec, true)?;
                if stmt.raw_execute()? == 0 {
                    return Err(StoreError::Corrupt(format!(
                        "update of missing record {} in {}",
                        rec.local, def.name
                    )));
                }
                drop(stmt);
                if let Some(ix) = self.index.get_mut(rec.table.0 as usize) {
                    ix.learn(rec);
                }
                self.ahead_keep();
            }
        }
        Ok(())
    }

    async fn remove(&mut self, table: TableId, local: LocalId) -> Result<(), StoreError> {
        self.flush()?;
        self.ahead_touch(table, local);
        let mut stmt = self.conn.prepare_cached(&self.sql(table)?.remove)?;
        stmt.execute([i64::from(local.0)])?;
        drop(stmt);
        if let Some(ix) = self.index.get_mut(table.0 as usize) {
            ix.forget_local(local);
        }
        self.ahead_keep();
        Ok(())
    }

    async fn next(
        &mut self,
        table: TableId,
        after: Option<LocalId>,
        filter: Filter,
    ) -> Result<Option<Record>, StoreError> {
        self.flush()?;
        let found = match self.ahead_next(table, after, filter) {
            Some(found) => found,
            None => self.read_ahead(table, after.map_or(-1, |a| i64::from(a.0)), filter)?,
        };
        self.learn_read(table, found.as_ref());
        Ok(found)
    }

    async fn push_rejected(&mut self, e: &RejectedEntry, body: &[u8]) -> Result<(), StoreError> {
        self.flush()?;
        let (is_local, key) = match e.key {
            RecordRef::Local(l) => (true, i64::from(l.0)),
            RecordRef::Server(s) => (false, s.0 as i64),
        };
        let reason = REASONS.iter().position(|r| *r == e.reason).unwrap_or(0) as i64;
        self.conn
            .prepare_cached(
                "INSERT INTO _fs_rejected (tbl, op, key_is_local, key, local, reason, at_wall, \
                 at_counter, at_device, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                i64::from(e.table.0),
                op_code(e.op),
                is_local,
                key,
                e.local.map(|l| i64::from(l.0)),
                reason,
                e.at.wall_ms as i64,
                i64::from(e.at.counter),
                i64::from(e.at.device),
                body,
            ])?;
        // The rejected log holds no record a walk could find.
        self.ahead_keep();
        Ok(())
    }

    async fn next_rejected(
        &mut self,
        after: Option<u32>,
        buf: &mut [u8],
    ) -> Result<Option<(RejectedEntry, usize)>, StoreError> {
        self.flush()?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, tbl, op, key_is_local, key, local, reason, at_wall, at_counter, \
             at_device, body FROM _fs_rejected WHERE seq > ?1 ORDER BY seq LIMIT 1",
        )?;
        let mut rows = stmt.query([after.map_or(0, i64::from)])?;
        let Some(r) = rows.next()? else {
            return Ok(None);
        };
        let key = r.get::<_, i64>(4)?;
        let key = if r.get::<_, bool>(3)? {
            RecordRef::Local(LocalId(key as u32))
        } else {
            RecordRef::Server(ServerId(key as u64))
        };
        let reason = REASONS
            .get(r.get::<_, i64>(6)? as usize)
            .copied()
            .ok_or_else(|| StoreError::Corrupt("reject reason".into()))?;
        let entry = RejectedEntry {
            seq: r.get::<_, i64>(0)? as u32,
            table: TableId(r.get::<_, i64>(1)? as u8),
            op: op_from(r.get(2)?)?,
            key,
            local: r.get::<_, Option<i64>>(5)?.map(|l| LocalId(l as u32)),
            reason,
            at: Hlc::new(
                r.get::<_, i64>(7)? as u64,
                r.get::<_, i64>(8)? as u32,
                r.get::<_, i64>(9)? as u32,
            ),
        };
        let body = r
            .get_ref(10)?
            .as_blob()
            .map_err(|e| StoreError::Corrupt(format!("rejected body: {e}")))?;
        let dst = buf
            .get_mut(..body.len())
            .ok_or(StoreError::BufferTooSmall)?;
        dst.copy_from_slice(body);
        Ok(Some((entry, body.len())))
    }

    async fn sweep(&mut self, table: TableId, mark: u32) -> Result<(), StoreError> {
        self.flush()?;
        self.ahead.walk = None;
        // A table that held no row when this transaction first asked about it (a fresh
        // device's first full refresh) holds only records the transaction put: if all of them
        // carry `mark`, there is nothing to sweep, and the scan of the table is saved.
        let t = table.0 as usize;
        let fresh = self.index.get(t).is_some_and(|ix| ix.checked && ix.empty);
        if fresh && self.puts.get(t).is_some_and(|p| p.marks.all_are(mark)) {
            return Ok(());
        }
        let mut stmt = self.conn.prepare_cached(&self.sql(table)?.sweep)?;
        stmt.execute([i64::from(mark)])?;
        if let Some(ix) = self.index.get_mut(table.0 as usize) {
            // Which records went is not known here: start over.
            *ix = ServerIndex::default();
        }
        Ok(())
    }

    async fn confirm(
        &mut self,
        table: TableId,
        sent: u32,
        mark: Option<u32>,
    ) -> Result<(), StoreError> {
        self.flush()?;
        self.ahead.walk = None;
        let t = table.0 as usize;
        let sql = (self.tables.get(t)).ok_or_else(|| StoreError::Corrupt(format!("no {table}")))?;
        // Outside a transaction there is no index to keep (as for `remove`).
        let mut no_index = ServerIndex::default();
        let ix = self.index.get_mut(t).unwrap_or(&mut no_index);
        let upto = i64::from(sent);
        let mut changed = (self.conn.prepare_cached(&sql.confirm_remove)?).execute([upto])?;
        let mut stmt = self
            .conn
            .prepare_cached(&sql.confirm[usize::from(mark.is_some())])?;
        changed += match mark {
            Some(m) => stmt.execute([upto, i64::from(m)])?,
            None => stmt.execute([upto])?,
        };
        if changed > 0 {
            ix.confirm(sent, mark);
        }
        Ok(())
    }

    async fn clear_rejected(&mut self) -> Result<(), StoreError> {
        self.flush()?;
        self.conn.execute_batch("DELETE FROM _fs_rejected")?;
        self.ahead_keep();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The paths a fresh table takes (new rows written by plain inserts, the sweep skipped),
    //! checked against what SQLite holds.
    use super::*;
    use ferrysync_core::schema::EXAMPLE;
    use pollster::block_on;

    fn company(name: &str) -> Vec<u8> {
        let mut buf = [0u8; 256];
        let values = [Value::Text(name), Value::Text("Lyon"), Value::Text("+33")];
        body::encode(&EXAMPLE.tables[0], &values, &mut buf)
            .expect("a test body fits")
            .to_vec()
    }

    fn record(local: u32, server: u64, mark: u32) -> Record {
        Record {
            table: TableId(0),
            local: LocalId(local),
            server: Some(ServerId(server)),
            parent: None,
            meta: SyncMeta::from_server(Hlc::new(1, 0, 0)),
            mark,
        }
    }

    fn names(s: &SqliteStore) -> Vec<(i64, i64, String)> {
        let mut stmt = s
            .connection()
            .prepare("SELECT id, refresh_mark, name FROM company ORDER BY id")
            .expect("prepare");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    fn synchronous(s: &SqliteStore) -> i64 {
        s.connection()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .expect("pragma")
    }

    /// A reply's transaction commits at `synchronous = NORMAL` (1), every other at FULL (2),
    /// whether the reply committed or rolled back.
    #[test]
    fn only_a_reply_transaction_skips_the_fsync() {
        block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut s = SqliteStore::open(dir.path().join("p.db"), EXAMPLE).expect("open");
            let state = s.load_state().await.expect("state");
            assert_eq!(synchronous(&s), 2);
            for commit in [true, false] {
                s.begin_reply().await.expect("begin");
                assert_eq!(synchronous(&s), 1);
                s.put(&record(1, 7, 0), Some(&company("ACME")))
                    .await
                    .expect("put");
                if commit {
                    s.commit(&state).await.expect("commit");
                } else {
                    s.rollback().await.expect("rollback");
                }
                assert_eq!(synchronous(&s), 2, "commit: {commit}");
                s.begin().await.expect("begin");
                assert_eq!(synchronous(&s), 2);
                s.rollback().await.expect("rollback");
            }
            assert_eq!(names(&s).len(), 1);
        })
    }

    /// A first full refresh into an empty table: more rows than one flush (written by plain
    /// multi-row inserts), a record put again below the highest local id (an upsert), and a
    /// sweep that has nothing to remove; then a second refresh whose sweep does remove.
    #[test]
    fn a_fresh_table_takes_plain_inserts_and_a_sweep_keeps_its_refresh() {
        block_on(async {
            let mut s = SqliteStore::open_in_memory(EXAMPLE).expect("open");
            s.begin().await.expect("begin");
            assert_eq!(
                s.by_server(TableId(0), ServerId(1)).await.expect("ask"),
                None
            );
            let n = 2 * FLUSH_ROWS as u32 + 7;
            for i in 1..=n {
                s.put(
                    &record(i, u64::from(i), 1),
                    Some(&company(&format!("c{i}"))),
                )
                .await
                .expect("put");
            }
            // Again, below the highest local id: written over, not inserted twice.
            s.put(&record(5, 5, 1), Some(&company("five")))
                .await
                .expect("put");
            let found = s.by_server(TableId(0), ServerId(5)).await.expect("ask");
            assert_eq!(found.map(|r| r.local), Some(LocalId(5)));
            s.sweep(TableId(0), 1).await.expect("sweep");
            s.commit(&DeviceState::default()).await.expect("commit");
            let rows = names(&s);
            assert_eq!(rows.len(), n as usize);
            assert_eq!(rows[4], (5, 1, "five".to_owned()));
            assert_eq!(rows[9], (10, 1, "c10".to_owned()));

            // A later refresh (mark 2) delivers two records: the sweep removes the others.
            s.begin().await.expect("begin");
            for i in [3, 8] {
                let rec = s.by_server(TableId(0), ServerId(i)).await.expect("ask");
                let rec = Record {
                    mark: 2,
                    ..rec.expect("held")
                };
                s.put(&rec, Some(&company("kept"))).await.expect("put");
            }
            s.sweep(TableId(0), 2).await.expect("sweep");
            s.commit(&DeviceState::default()).await.expect("commit");
            assert_eq!(
                names(&s),
                vec![(3, 2, "kept".to_owned()), (8, 2, "kept".to_owned())]
            );
        });
    }

    /// Puts records `range` of the company table in one transaction.
    async fn put_range(s: &mut SqliteStore, range: std::ops::RangeInclusive<u32>) {
        s.begin().await.expect("begin");
        for i in range {
            s.put(
                &record(i, u64::from(i), 1),
                Some(&company(&format!("c{i}"))),
            )
            .await
            .expect("put");
        }
        s.commit(&DeviceState::default()).await.expect("commit");
    }

    /// A transaction that gathers few rows writes them one per statement and leaves the long
    /// multi-row statement unprepared; once a big flush has prepared it, small flushes use it
    /// too. Every row lands either way.
    #[test]
    fn few_rows_do_not_prepare_the_multi_row_statement() {
        block_on(async {
            let mut s = SqliteStore::open_in_memory(EXAMPLE).expect("open");
            let upsert = RowKind::of(Write::Upsert, true).index();
            put_range(&mut s, 1..=(PREPARE_MANY_ROWS as u32 - 1)).await;
            assert_eq!(s.many_prepared[0] & (1 << upsert), 0);
            assert_eq!(names(&s).len(), PREPARE_MANY_ROWS - 1);
            let end = 2 * PREPARE_MANY_ROWS as u32;
            put_range(&mut s, PREPARE_MANY_ROWS as u32..=end).await;
            assert_ne!(s.many_prepared[0] & (1 << upsert), 0);
            put_range(&mut s, end + 1..=end + BATCH_ROWS as u32 + 3).await;
            let rows = names(&s);
            assert_eq!(rows.len(), end as usize + BATCH_ROWS + 3);
            assert!(rows
                .iter()
                .enumerate()
                .all(|(i, (id, _, name))| *id == i as i64 + 1 && *name == format!("c{id}")));
        });
    }

    fn contact_body(name: &str) -> Vec<u8> {
        let mut buf = [0u8; 256];
        let values = [Value::Text(name), Value::Text("a@b"), Value::Text("06")];
        body::encode(&EXAMPLE.tables[1], &values, &mut buf)
            .expect("a test body fits")
            .to_vec()
    }

    /// A pending walk outside a transaction answers `get` of the walked record's parent and
    /// its `get_body` from what it read with the record: the same as SQLite holds, until a
    /// write, after which they are read again.
    #[test]
    fn a_request_walk_reads_bodies_and_parents_with_the_records() {
        block_on(async {
            let mut s = SqliteStore::open_in_memory(EXAMPLE).expect("open");
            let acme = record(1, 7, 0);
            let local = |l: u32, parent: Option<u32>| Record {
                table: TableId(1),
                local: LocalId(l),
                server: None,
                parent: parent.map(LocalId),
                meta: SyncMeta::new_local(Hlc::new(2, 0, 0), l),
                mark: 0,
            };
            s.put(&acme, Some(&company("ACME"))).await.expect("put");
            // Contact 3's parent is not stored: no parent to answer.
            for (rec, name) in [(local(2, Some(1)), "Ann"), (local(3, Some(9)), "Bob")] {
                s.put(&rec, Some(&contact_body(name))).await.expect("put");
            }
            let mut buf = [0u8; 256];
            let first = s
                .next(TableId(1), None, Filter::Pending)
                .await
                .expect("next");
            assert_eq!(first, Some(local(2, Some(1))));
            assert!(s.current_parent(TableId(0), LocalId(1)).is_some());
            assert_eq!(
                s.get(TableId(0), LocalId(1)).await.expect("get"),
                Some(acme)
            );
            assert!(s.current_extra(TableId(1), LocalId(2)).is_some());
            let n = s
                .get_body(TableId(1), LocalId(2), &mut buf)
                .await
                .expect("body");
            assert_eq!(&buf[..n.expect("held")], &contact_body("Ann")[..]);
            // A write through the store: read again, and the new body comes back.
            s.put(&local(2, Some(1)), Some(&contact_body("Anne")))
                .await
                .expect("put");
            assert!(s.current_extra(TableId(1), LocalId(2)).is_none());
            let n = s
                .get_body(TableId(1), LocalId(2), &mut buf)
                .await
                .expect("body");
            assert_eq!(&buf[..n.expect("held")], &contact_body("Anne")[..]);
            let second = s
                .next(TableId(1), Some(LocalId(2)), Filter::Pending)
                .await
                .expect("next");
            assert_eq!(second, Some(local(3, Some(9))));
            assert!(s.current_parent(TableId(0), LocalId(9)).is_none());
            assert_eq!(s.get(TableId(0), LocalId(9)).await.expect("get"), None);
            let n = s
                .get_body(TableId(1), LocalId(3), &mut buf)
                .await
                .expect("body");
            assert_eq!(&buf[..n.expect("held")], &contact_body("Bob")[..]);
            // Not the walked record: asked from SQLite.
            assert!(s.current_extra(TableId(1), LocalId(2)).is_none());
            let n = s
                .get_body(TableId(1), LocalId(2), &mut buf)
                .await
                .expect("body");
            assert_eq!(&buf[..n.expect("held")], &contact_body("Anne")[..]);
            // Inside a transaction a walk reads headers only.
            s.begin().await.expect("begin");
            let again = s
                .next(TableId(1), None, Filter::Pending)
                .await
                .expect("next");
            assert_eq!(again.map(|r| r.local), Some(LocalId(2)));
            assert!(s.ahead.current.is_none());
            s.rollback().await.expect("rollback");
        });
    }

    /// The packed sync columns give back every flag combination and the extreme clock, edit
    /// and mark values, in and out of a transaction.
    #[test]
    fn packed_sync_columns_round_trip() {
        block_on(async {
            let mut s = SqliteStore::open_in_memory(EXAMPLE).expect("open");
            let mut recs = Vec::new();
            for bits in 0..8u32 {
                let at = if bits % 2 == 0 {
                    Hlc::new(u64::MAX, u32::MAX, u32::MAX)
                } else {
                    Hlc::new(1 << 40, 1 << 31, 7)
                };
                recs.push(Record {
                    local: LocalId(bits + 1),
                    server: (bits & 1 != 0).then_some(ServerId(u64::MAX - u64::from(bits))),
                    meta: SyncMeta {
                        is_from_server: bits & 1 != 0,
                        is_modified: bits & 2 != 0,
                        is_active: bits & 4 != 0,
                        edits: u32::MAX - bits,
                        modified_at: at,
                    },
                    mark: u32::MAX,
                    ..record(0, 0, 0)
                });
            }
            for (i, rec) in recs.iter().enumerate() {
                if i % 2 == 0 {
                    s.put(rec, Some(&company("x"))).await.expect("put");
                } else {
                    s.begin().await.expect("begin");
                    s.put(rec, Some(&company("x"))).await.expect("put");
                    s.commit(&DeviceState::default()).await.expect("commit");
                }
            }
            for rec in &recs {
                assert_eq!(s.get(rec.table, rec.local).await.expect("get"), Some(*rec));
                let pending = s
                    .next(rec.table, Some(LocalId(rec.local.0 - 1)), Filter::Pending)
                    .await
                    .expect("next");
                assert_eq!(
                    pending.is_some_and(|p| p.local == rec.local),
                    rec.meta.is_pending()
                );
            }
        });
    }

    /// A record known to keep its server id and parent is written by a plain `UPDATE`; if
    /// that finds no row (here the app deleted it through the connection behind the store's
    /// back), the upsert writes it.
    #[test]
    fn a_server_write_over_a_pending_record_clears_it() {
        block_on(async {
            let mut s = SqliteStore::open_in_memory(EXAMPLE).expect("open");
            put_range(&mut s, 1..=3).await;
            // Record 2 edited locally (pending), as the app's own SQL could leave it.
            s.connection()
                .execute(
                    "UPDATE company SET sync_pending = ?1, edits = 1 WHERE id = 2",
                    [MODIFIED],
                )
                .expect("edit");
            s.begin().await.expect("begin");
            let mut held = Vec::new();
            for server in [2, 3] {
                let rec = s
                    .by_server(TableId(0), ServerId(server))
                    .await
                    .expect("ask");
                held.push(rec.expect("held"));
            }
            assert_eq!(held[0].meta.edits, 1, "the index knows record 2 is pending");
            // Record 2 twice in one batch: the later write wins.
            for (rec, name) in [(held[0], "two-a"), (held[1], "three"), (held[0], "two-b")] {
                let rec = Record {
                    meta: SyncMeta::from_server(Hlc::new(9, 0, 0)),
                    mark: 5,
                    ..rec
                };
                assert!(s.index[0].holds_keys(&rec));
                s.put(&rec, Some(&company(name))).await.expect("put");
            }
            s.commit(&DeviceState::default()).await.expect("commit");
            assert_eq!(
                names(&s),
                vec![
                    (1, 1, "c1".to_owned()),
                    (2, 5, "two-b".to_owned()),
                    (3, 5, "three".to_owned())
                ]
            );
            let pending: i64 = s
                .connection()
                .query_row(
                    "SELECT count(*) FROM company WHERE sync_pending != 0 OR edits != 0",
                    [],
                    |r| r.get(0),
                )
                .expect("count");
            assert_eq!(pending, 0, "every record is the server's version now");
        });
    }

    #[test]
    fn a_same_keys_write_that_finds_no_row_inserts_it() {
        block_on(async {
            let mut s = SqliteStore::open_in_memory(EXAMPLE).expect("open");
            put_range(&mut s, 1..=3).await;
            s.begin().await.expect("begin");
            let two = s.by_server(TableId(0), ServerId(2)).await.expect("ask");
            let three = s.by_server(TableId(0), ServerId(3)).await.expect("ask");
            s.connection()
                .execute("DELETE FROM company WHERE id = 2", [])
                .expect("delete");
            for (rec, name) in [(two, "two"), (three, "three")] {
                let rec = Record {
                    mark: 5,
                    ..rec.expect("held")
                };
                assert!(s.index[0].holds_keys(&rec));
                s.put(&rec, Some(&company(name))).await.expect("put");
            }
            s.commit(&DeviceState::default()).await.expect("commit");
            assert_eq!(
                names(&s),
                vec![
                    (1, 1, "c1".to_owned()),
                    (2, 5, "two".to_owned()),
                    (3, 5, "three".to_owned())
                ]
            );
        });
    }

    /// A committed transaction's server-id index serves the next transaction, unless another
    /// connection committed or the app wrote through the connection since; a rolled-back
    /// transaction's index is not kept.
    #[test]
    fn the_server_index_outlives_a_commit_only_while_nothing_else_writes() {
        block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("p.db");
            let mut s = SqliteStore::open(&path, EXAMPLE).expect("open");
            let ask = |s: &mut SqliteStore, server: u64| {
                let found = block_on(s.by_server(TableId(0), ServerId(server))).expect("ask");
                found.map(|r| r.local.0)
            };
            s.begin().await.expect("begin");
            assert_eq!(ask(&mut s, 1), None);
            s.put(&record(1, 1, 0), Some(&company("a")))
                .await
                .expect("put");
            s.commit(&DeviceState::default()).await.expect("commit");
            assert!(s.kept.is_some());
            // Kept: the next transaction knows server id 1 before asking SQLite.
            s.begin().await.expect("begin");
            assert!(s.index[0].known.contains_key(&1));
            assert_eq!(ask(&mut s, 1), Some(1));
            s.commit(&DeviceState::default()).await.expect("commit");
            // Another connection moves the record to server id 9.
            Connection::open(&path)
                .expect("open")
                .execute("UPDATE company SET server_id = 9 WHERE id = 1", [])
                .expect("update");
            s.begin().await.expect("begin");
            assert!(s.index[0].known.is_empty());
            assert_eq!((ask(&mut s, 1), ask(&mut s, 9)), (None, Some(1)));
            s.commit(&DeviceState::default()).await.expect("commit");
            // The app moves it through the store's own connection.
            s.connection()
                .execute("UPDATE company SET server_id = 5 WHERE id = 1", [])
                .expect("update");
            s.begin().await.expect("begin");
            assert_eq!((ask(&mut s, 9), ask(&mut s, 5)), (None, Some(1)));
            // A rolled-back put is forgotten.
            s.put(&record(2, 6, 0), Some(&company("b")))
                .await
                .expect("put");
            assert_eq!(ask(&mut s, 6), Some(2));
            s.rollback().await.expect("rollback");
            assert!(s.kept.is_none());
            s.begin().await.expect("begin");
            assert_eq!((ask(&mut s, 6), ask(&mut s, 5)), (None, Some(1)));
            s.rollback().await.expect("rollback");
        });
    }

    /// A store in a transaction whose company table was empty when first asked about (so it is
    /// fresh), holding the companies `(local, server, mark, name)` put since.
    async fn fresh_table_with(puts: &[(u32, u64, u32, &str)]) -> SqliteStore {
        let mut s = SqliteStore::open_in_memory(EXAMPLE).expect("open");
        s.begin().await.expect("begin");
        let first = puts.first().map_or(1, |p| p.1);
        assert_eq!(
            s.by_server(TableId(0), ServerId(first)).await.expect("ask"),
            None
        );
        for &(local, server, mark, name) in puts {
            s.put(&record(local, server, mark), Some(&company(name)))
                .await
                .expect("put");
        }
        s
    }

    /// In a fresh table, records put with different marks are swept as usual.
    #[test]
    fn a_fresh_table_with_mixed_marks_is_swept() {
        block_on(async {
            let mut s = fresh_table_with(&[(1, 1, 1, "old"), (2, 2, 2, "new")]).await;
            s.sweep(TableId(0), 2).await.expect("sweep");
            s.commit(&DeviceState::default()).await.expect("commit");
            assert_eq!(names(&s), vec![(2, 2, "new".to_owned())]);
        });
    }

    /// The reply to batch 1 of a full refresh holding `upsert`, framed as a server sends it.
    fn reply_with(upsert: ferrysync_core::wire::Upsert<'_>) -> Vec<u8> {
        use ferrysync_core::frame::FrameEncoder;
        use ferrysync_core::wire::{Accepted, Done, Reply};
        let mut enc = FrameEncoder::<{ crate::MAX_FRAME }>::new();
        let mut out = Vec::new();
        let messages = [
            Reply::Accepted(Accepted {
                batch_id: 1,
                server_time: 5,
            }),
            Reply::Reset,
            Reply::Upsert(upsert),
            Reply::Done(Done {
                cursor: 9,
                count: 2,
            }),
        ];
        for m in &messages {
            out.extend_from_slice(enc.encode(m).expect("a test message fits a frame"));
        }
        out
    }

    /// This store checks bodies itself (`CHECKS_BODIES`), so the engine does not: a reply
    /// record whose body does not fit the schema is still a bad record, on the path that puts
    /// it and on the one that skips it for a missing parent, and nothing is stored.
    #[test]
    fn a_bad_body_in_a_reply_is_a_bad_record() {
        use ferrysync_core::engine::{self, Outgoing, SyncError};
        use ferrysync_core::mem::ScriptLink;
        use ferrysync_core::wire::Upsert;
        let bad = [0xff, 0x01];
        let company = Upsert {
            table: TableId(0),
            id: ServerId(1),
            parent: None,
            modified_at: Hlc::new(5, 0, 0),
            body: &bad,
        };
        let orphan = Upsert {
            table: TableId(1),
            parent: Some(ServerId(77)),
            ..company
        };
        for upsert in [company, orphan] {
            let mut s = SqliteStore::open_in_memory(EXAMPLE).expect("open");
            let out = Outgoing {
                batch_id: 1,
                sent: 0,
                changes: 0,
                full: true,
            };
            let mut link = ScriptLink::replying(reply_with(upsert));
            let got = block_on(engine::receive_reply::<_, _, { crate::MAX_FRAME }>(
                &EXAMPLE, &mut s, &mut link, &out,
            ));
            assert!(
                matches!(got, Err(SyncError::BadRecord { frame: 2 })),
                "{got:?}"
            );
            assert_eq!(names(&s), vec![]);
            assert_eq!(block_on(s.load_state()).expect("state").cursor, None);
        }
    }

    /// A new row that takes a server id another new row holds fails the transaction (the
    /// plain insert is refused), and the rollback leaves the table empty.
    #[test]
    fn a_duplicate_server_id_among_new_rows_fails_the_transaction() {
        block_on(async {
            let mut s = fresh_table_with(&[(1, 7, 1, "a"), (2, 7, 1, "b")]).await;
            assert!(s.commit(&DeviceState::default()).await.is_err());
            s.rollback().await.expect("rollback");
            assert_eq!(names(&s), vec![]);
        });
    }
}
