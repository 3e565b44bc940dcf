//! [`Phone`]: the change-tracking API of a device on SQLite, by table and field names.

use crate::store::{SqliteStore, StoreError};
use ferrysync_core::body::{self, Value};
use ferrysync_core::engine::{self, SyncError, SyncReport};
use ferrysync_core::id::{LocalId, RecordRef, TableId};
use ferrysync_core::schema::{Schema, TableDef};
use ferrysync_core::store::{Filter, LocalStore, Record, RejectedEntry};
use ferrysync_core::track::{self, TrackError};
use ferrysync_core::transport::Transport;
use ferrysync_core::wire::{Mode, Op, RejectReason};
use pollster::block_on;
use std::fmt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Largest frame (and so largest record body) a phone sends or accepts.
pub const MAX_FRAME: usize = ferrysync_core::frame::DEFAULT_MAX_FRAME;

/// Room for one stored body when reading it back: far more than a frame holds, for rows an
/// app wrote with plain SQL.
const BODY_BUF: usize = MAX_FRAME * 64;

/// A field value owned by the caller.
#[derive(Clone, Debug, PartialEq)]
pub enum OwnedValue {
    /// Null.
    Null,
    /// A bool.
    Bool(bool),
    /// A signed integer.
    I64(i64),
    /// An unsigned integer.
    U64(u64),
    /// A float.
    F64(f64),
    /// Text.
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
}

impl OwnedValue {
    fn from_value(v: Value<'_>) -> Self {
        match v {
            Value::Null => OwnedValue::Null,
            Value::Bool(b) => OwnedValue::Bool(b),
            Value::I64(i) => OwnedValue::I64(i),
            Value::U64(u) => OwnedValue::U64(u),
            Value::F64(f) => OwnedValue::F64(f),
            Value::Text(t) => OwnedValue::Text(t.to_owned()),
            Value::Bytes(b) => OwnedValue::Bytes(b.to_vec()),
        }
    }

    /// Borrows as a core [`Value`].
    pub fn as_value(&self) -> Value<'_> {
        match self {
            OwnedValue::Null => Value::Null,
            OwnedValue::Bool(b) => Value::Bool(*b),
            OwnedValue::I64(i) => Value::I64(*i),
            OwnedValue::U64(u) => Value::U64(*u),
            OwnedValue::F64(f) => Value::F64(*f),
            OwnedValue::Text(t) => Value::Text(t),
            OwnedValue::Bytes(b) => Value::Bytes(b),
        }
    }

    /// As JSON.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            OwnedValue::Null => serde_json::Value::Null,
            OwnedValue::Bool(b) => (*b).into(),
            OwnedValue::I64(i) => (*i).into(),
            OwnedValue::U64(u) => (*u).into(),
            OwnedValue::F64(f) => (*f).into(),
            OwnedValue::Text(t) => t.as_str().into(),
            OwnedValue::Bytes(b) => self::hex(b).into(),
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl fmt::Display for OwnedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_value().fmt(f)
    }
}

/// One record with its field values, in schema order.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The record header (ids, parent, sync metadata).
    pub record: Record,
    /// Field values in schema order.
    pub values: Vec<OwnedValue>,
}

/// One entry of the rejected log.
#[derive(Clone, Debug, PartialEq)]
pub struct RejectedRow {
    /// The entry.
    pub entry: RejectedEntry,
    /// Table name.
    pub table: String,
    /// The refused body's field values (empty for a delete, or if it no longer decodes).
    pub values: Vec<OwnedValue>,
}

/// Why a device operation failed; `E` is the store's error.
#[derive(Debug)]
pub enum Error<E = StoreError> {
    /// The store failed.
    Store(E),
    /// No table of that name in the schema.
    UnknownTable(String),
    /// No field of that name in the table.
    UnknownField {
        /// Table.
        table: String,
        /// Field given.
        field: String,
        /// The fields that exist.
        known: Vec<String>,
    },
    /// A required field was not given.
    MissingField {
        /// Table.
        table: String,
        /// Field.
        field: String,
    },
    /// A value does not parse as its field's type.
    BadValue {
        /// Field.
        field: String,
        /// What was given.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// The change was refused (no such record, bad parent, ...).
    Track(TrackError<E>),
    /// The sync failed; nothing was changed on the device.
    Sync(SyncError<E, crate::http::HttpError>),
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Store(e) => e.fmt(f),
            Error::UnknownTable(t) => write!(f, "unknown table `{t}`"),
            Error::UnknownField {
                table,
                field,
                known,
            } => write!(
                f,
                "unknown field `{field}` in table `{table}` (fields: {})",
                known.join(", ")
            ),
            Error::MissingField { table, field } => {
                write!(
                    f,
                    "field `{field}` of `{table}` is required: add {field}=VALUE"
                )
            }
            Error::BadValue {
                field,
                value,
                reason,
            } => write!(f, "bad value `{value}` for `{field}`: {reason}"),
            Error::Track(e) => e.fmt(f),
            Error::Sync(e) => e.fmt(f),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for Error<E> {}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Store(e)
    }
}

impl<E> From<TrackError<E>> for Error<E> {
    fn from(e: TrackError<E>) -> Self {
        Error::Track(e)
    }
}

impl<E> From<SyncError<E, crate::http::HttpError>> for Error<E> {
    fn from(e: SyncError<E, crate::http::HttpError>) -> Self {
        Error::Sync(e)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An encoded body and the parent named among its fields.
type BodyAndParent = (Vec<u8>, Option<LocalId>);

/// A device's local data with change tracking by table and field names, and sync: a phone on
/// SQLite by default, or any other [`LocalStore`] (a scanner's flash image on a PC).
pub struct Phone<S: LocalStore = SqliteStore> {
    store: S,
    schema: Schema<'static>,
}

impl Phone {
    /// Opens (creating if needed) the phone database at `path`.
    pub fn open(path: impl AsRef<Path>, schema: Schema<'static>) -> Result<Self, Error> {
        Ok(Phone {
            store: SqliteStore::open(path, schema)?,
            schema,
        })
    }

    /// A phone on an existing SQLite store.
    pub fn with_store(store: SqliteStore) -> Self {
        let schema = *store.schema();
        Phone { store, schema }
    }
}

impl<S: LocalStore> Phone<S>
where
    S::Error: fmt::Display,
{
    /// A device on any store, for `schema`.
    pub fn on_store(store: S, schema: Schema<'static>) -> Self {
        Phone { store, schema }
    }

    /// The underlying store (for the engine, or plain SQL through a SQLite connection).
    pub fn store(&mut self) -> &mut S {
        &mut self.store
    }

    /// The schema.
    pub fn schema(&self) -> &Schema<'static> {
        &self.schema
    }

    /// The table called `name`.
    pub fn table(
        &self,
        name: &str,
    ) -> Result<(TableId, &'static TableDef<'static>), Error<S::Error>> {
        let schema = self.schema;
        let id = schema
            .table_id(name)
            .ok_or_else(|| Error::UnknownTable(name.to_owned()))?;
        let def = schema
            .table(id)
            .ok_or_else(|| Error::UnknownTable(name.to_owned()))?;
        Ok((id, def))
    }

    fn unknown_field(def: &TableDef<'_>, field: &str) -> Error<S::Error> {
        let mut known: Vec<String> = def.fields.iter().map(|f| f.name.to_owned()).collect();
        if let Some(p) = def.parent_field {
            known.insert(0, p.to_owned());
        }
        Error::UnknownField {
            table: def.name.to_owned(),
            field: field.to_owned(),
            known,
        }
    }

    /// Builds a body from `field=value` texts over `base` values (all fields when inserting).
    fn body_from_text(
        def: &TableDef<'_>,
        base: Vec<OwnedValue>,
        fields: &[(&str, &str)],
    ) -> Result<BodyAndParent, Error<S::Error>> {
        let mut values: Vec<Option<OwnedValue>> = base.into_iter().map(Some).collect();
        values.resize(def.fields.len(), None);
        let mut parent = None;
        for (name, text) in fields {
            if Some(*name) == def.parent_field {
                let id = text.parse::<u32>().map_err(|_| Error::BadValue {
                    field: (*name).to_owned(),
                    value: (*text).to_owned(),
                    reason: "not a local record id".into(),
                })?;
                parent = Some(LocalId(id));
                continue;
            }
            let i = def
                .field_index(name)
                .ok_or_else(|| Self::unknown_field(def, name))?;
            let v = Value::parse(&def.fields[i], text).map_err(|e| Error::BadValue {
                field: (*name).to_owned(),
                value: (*text).to_owned(),
                reason: e.to_string(),
            })?;
            values[i] = Some(OwnedValue::from_value(v));
        }
        let mut full = Vec::with_capacity(values.len());
        for (f, v) in def.fields.iter().zip(values) {
            match v {
                Some(v) => full.push(v),
                None if f.optional => full.push(OwnedValue::Null),
                None => {
                    return Err(Error::MissingField {
                        table: def.name.to_owned(),
                        field: f.name.to_owned(),
                    })
                }
            }
        }
        let borrowed: Vec<Value<'_>> = full.iter().map(OwnedValue::as_value).collect();
        let mut buf = vec![0u8; MAX_FRAME];
        let n = body::encode(def, &borrowed, &mut buf)
            .map_err(|e| Error::BadValue {
                field: def.name.to_owned(),
                value: String::new(),
                reason: e.to_string(),
            })?
            .len();
        buf.truncate(n);
        Ok((buf, parent))
    }

    /// Creates a record from `field=value` texts (a detail names its parent's local id in its
    /// parent field, e.g. `company_id`); returns its local id.
    pub fn insert(
        &mut self,
        table: &str,
        fields: &[(&str, &str)],
    ) -> Result<LocalId, Error<S::Error>> {
        let (id, def) = self.table(table)?;
        let (body, parent) = Self::body_from_text(def, Vec::new(), fields)?;
        self.insert_body(id, parent, &body)
    }

    /// Creates a record from an encoded body (e.g. `postcard::to_vec` of the app's struct).
    pub fn insert_body(
        &mut self,
        table: TableId,
        parent: Option<LocalId>,
        body: &[u8],
    ) -> Result<LocalId, Error<S::Error>> {
        let schema = self.schema;
        Ok(block_on(track::insert(
            &schema,
            &mut self.store,
            table,
            parent,
            body,
            now_ms(),
        ))?)
    }

    /// Changes the given fields of a record; the others keep their values.
    pub fn update(
        &mut self,
        table: &str,
        id: LocalId,
        fields: &[(&str, &str)],
    ) -> Result<(), Error<S::Error>> {
        let (tid, def) = self.table(table)?;
        let current = self
            .get(table, id)?
            .filter(|r| r.record.meta.is_active)
            .ok_or(Error::Track(TrackError::NotFound {
                table: tid,
                local: id,
            }))?;
        if let Some((name, _)) = fields.iter().find(|(n, _)| Some(*n) == def.parent_field) {
            return Err(Error::BadValue {
                field: (*name).to_owned(),
                value: String::new(),
                reason: "moving a record to another parent is not supported; delete and add".into(),
            });
        }
        let (body, _) = Self::body_from_text(def, current.values, fields)?;
        self.update_body(tid, id, &body)
    }

    /// Replaces a record's body.
    pub fn update_body(
        &mut self,
        table: TableId,
        id: LocalId,
        body: &[u8],
    ) -> Result<(), Error<S::Error>> {
        let schema = self.schema;
        Ok(block_on(track::update(
            &schema,
            &mut self.store,
            table,
            id,
            body,
            now_ms(),
        ))?)
    }

    /// Deletes a record and its details (soft until the server confirms).
    pub fn delete(&mut self, table: &str, id: LocalId) -> Result<(), Error<S::Error>> {
        let (tid, _) = self.table(table)?;
        let schema = self.schema;
        Ok(block_on(track::delete(
            &schema,
            &mut self.store,
            tid,
            id,
            now_ms(),
        ))?)
    }

    /// The record with its values; `buf` holds the body while it is decoded.
    fn row(&mut self, rec: Record, buf: &mut [u8]) -> Result<Row, Error<S::Error>> {
        let def = self
            .schema
            .table(rec.table)
            .ok_or_else(|| Error::UnknownTable(rec.table.to_string()))?;
        let n = block_on(self.store.get_body(rec.table, rec.local, buf))
            .map_err(Error::Store)?
            .unwrap_or(0);
        let mut values = Vec::with_capacity(def.fields.len());
        let _ = body::decode(def, &buf[..n], |_, _, v| {
            values.push(OwnedValue::from_value(v));
            Ok::<(), ()>(())
        });
        Ok(Row {
            record: rec,
            values,
        })
    }

    /// The record `id` of `table`, deleted or not.
    pub fn get(&mut self, table: &str, id: LocalId) -> Result<Option<Row>, Error<S::Error>> {
        let (tid, _) = self.table(table)?;
        match block_on(self.store.get(tid, id)).map_err(Error::Store)? {
            Some(rec) => Ok(Some(self.row(rec, &mut vec![0u8; BODY_BUF])?)),
            None => Ok(None),
        }
    }

    fn walk(&mut self, table: TableId, filter: Filter) -> Result<Vec<Row>, Error<S::Error>> {
        let mut out = Vec::new();
        let mut after = None;
        let mut buf = vec![0u8; BODY_BUF];
        while let Some(rec) =
            block_on(self.store.next(table, after, filter)).map_err(Error::Store)?
        {
            after = Some(rec.local);
            out.push(self.row(rec, &mut buf)?);
        }
        Ok(out)
    }

    /// Every record of `table` in local-id order (soft-deleted ones included, see
    /// `record.meta.is_active`).
    pub fn list(&mut self, table: &str) -> Result<Vec<Row>, Error<S::Error>> {
        let (tid, _) = self.table(table)?;
        self.walk(tid, Filter::All)
    }

    /// The records of `table` whose parent is `parent`.
    pub fn children(&mut self, table: &str, parent: LocalId) -> Result<Vec<Row>, Error<S::Error>> {
        let (tid, _) = self.table(table)?;
        self.walk(tid, Filter::Children(parent))
    }

    /// Every record a sync would send, parents first.
    pub fn pending(&mut self) -> Result<Vec<Row>, Error<S::Error>> {
        let mut out = Vec::new();
        for t in 0..self.schema.tables.len() {
            out.extend(self.walk(TableId(t as u8), Filter::Pending)?);
        }
        Ok(out)
    }

    /// The rejected log, oldest first.
    pub fn rejected(&mut self) -> Result<Vec<RejectedRow>, Error<S::Error>> {
        let mut out = Vec::new();
        let mut after = None;
        let mut buf = vec![0u8; BODY_BUF];
        while let Some((entry, n)) =
            block_on(self.store.next_rejected(after, &mut buf)).map_err(Error::Store)?
        {
            after = Some(entry.seq);
            let def = self.schema.table(entry.table);
            let mut values = Vec::new();
            if let Some(def) = def {
                if entry.op != Op::Delete
                    && !matches!(
                        body::decode(def, &buf[..n], |_, _, v| {
                            values.push(OwnedValue::from_value(v));
                            Ok::<(), ()>(())
                        }),
                        Ok(Ok(()))
                    )
                {
                    values.clear();
                }
            }
            out.push(RejectedRow {
                entry,
                table: def.map_or_else(|| entry.table.to_string(), |d| d.name.to_owned()),
                values,
            });
        }
        Ok(out)
    }

    /// Empties the rejected log.
    pub fn clear_rejected(&mut self) -> Result<(), Error<S::Error>> {
        block_on(track::clear_rejected(&mut self.store)).map_err(Error::Store)
    }

    /// Syncs with the server through `transport`: sends pending changes, applies the reply in
    /// one transaction. On error nothing changed here; run it again.
    pub async fn sync<T: Transport>(
        &mut self,
        transport: &mut T,
        mode: Mode,
    ) -> Result<SyncReport, SyncError<S::Error, T::Error>> {
        let schema = self.schema;
        engine::sync::<_, _, MAX_FRAME>(&schema, &mut self.store, transport, mode).await
    }
}

/// Describes a rejected-log entry in one line.
impl fmt::Display for RejectedRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.entry;
        let op = match e.op {
            Op::Add => "add",
            Op::Update => "update",
            Op::Delete => "delete",
        };
        let key = match e.key {
            RecordRef::Local(l) => format!("local {}", l.0),
            RecordRef::Server(s) => format!("server {}", s.0),
        };
        let why = match e.reason {
            RejectReason::UnknownTable => "the server does not know this table",
            RejectReason::InvalidBody => "the record does not fit the server's schema",
            RejectReason::OutOfScope => "outside this device's scope",
            RejectReason::ParentMissing => "its parent record no longer exists",
            RejectReason::Deleted => "the record was deleted on the server",
            RejectReason::UnknownRecord => "the server has no such record",
            RejectReason::BadKey => "malformed change",
        };
        let vals: Vec<String> = self.values.iter().map(ToString::to_string).collect();
        write!(
            f,
            "#{} {op} {} ({key}): {} — {why} [{}]",
            e.seq,
            self.table,
            e.reason,
            vals.join(", ")
        )
    }
}
