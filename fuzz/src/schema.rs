//! `schema_file`: arbitrary UTF-8 into `LoadedSchema::parse`.
//!
//! Invariants, for every text the parser accepts:
//! - the schema validates (`Schema::validate`) and its stored hash is `Schema::hash`;
//! - a second parse gives an equal schema with the same hash;
//! - for every table, a body encoded from default values (false, 0, 0, 0.0, "", empty bytes;
//!   and once more with null in every optional field) validates and decodes to those values;
//! - the server can serve it: `SqliteStore::open` on an in-memory database succeeds (every
//!   name the parser lets through is usable in the generated SQL), and one sync that adds a
//!   record to every table (default values, the scope field set to the device's scope, each
//!   detail under its parent table's record) applies them all and a full reply reads every one
//!   back (every statement the server generates for the schema runs);
//! - phones can use it: a phone store in memory opens with it, takes the same record in every
//!   table and lists them as pending.

use crate::invariant;
use crate::planted;
use ferrysync_core::body::{self, Value};
use ferrysync_core::schema::{FieldType, TableDef};
use ferrysync_core::wire::{Mode, Op};
use ferrysync_core::{Hlc, LocalId, RecordRef, TableId};
use ferrysync_server::store::{Incoming, OwnedChange, ReplyItem, ReplyPlan, SyncParams};
use ferrysync_server::{LoadedSchema, ServerStore, SqliteStore};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

fn default_value(ty: FieldType) -> Value<'static> {
    match ty {
        FieldType::Bool => Value::Bool(false),
        FieldType::I64 => Value::I64(0),
        FieldType::U64 => Value::U64(0),
        FieldType::F64 => Value::F64(0.0),
        FieldType::Text => Value::Text(""),
        FieldType::Bytes => Value::Bytes(&[]),
    }
}

fn roundtrip(t: &TableDef<'_>, nulls: bool) {
    let values: Vec<Value<'_>> = t
        .fields
        .iter()
        .map(|f| {
            if nulls && f.optional {
                Value::Null
            } else {
                default_value(f.ty)
            }
        })
        .collect();
    // The planted bug (selftest): what we expect back says null for optional fields that were
    // sent with a value.
    let expected: Vec<Value<'_>> = if planted("schema_file") {
        t.fields
            .iter()
            .zip(&values)
            .map(|(f, v)| if f.optional { Value::Null } else { *v })
            .collect()
    } else {
        values.clone()
    };
    let mut buf = vec![0u8; 16 + 10 * t.fields.len()];
    let body = match body::encode(t, &values, &mut buf) {
        Ok(b) => b.to_vec(),
        Err(e) => panic!(
            "invariant broken: default body of {} does not encode: {e}",
            t.name
        ),
    };
    invariant!(
        body::validate(t, &body).is_ok(),
        "default body of {} does not validate",
        t.name
    );
    let mut got = Vec::new();
    let walked = body::decode(t, &body, |_, _, v| {
        got.push(v);
        Ok::<(), ()>(())
    });
    invariant!(
        walked == Ok(Ok(())),
        "default body of {} does not decode: {walked:?}",
        t.name
    );
    invariant!(
        got == expected,
        "body of {} decodes to {got:?}, not {expected:?}",
        t.name
    );
}

/// The whole check.
pub fn run(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let Ok(loaded) = LoadedSchema::parse(text) else {
        return;
    };
    let s = loaded.schema();
    invariant!(
        s.validate().is_ok(),
        "parsed schema does not validate: {:?}",
        s.validate()
    );
    invariant!(
        loaded.hash() == s.hash(),
        "stored hash differs from Schema::hash"
    );
    let again = LoadedSchema::parse(text);
    invariant!(again == Ok(loaded), "second parse differs: {again:?}");
    for t in s.tables {
        roundtrip(t, false);
        roundtrip(t, true);
    }
    // One in-memory database shared by the store's connections (its writer and its readers),
    // a new one per input: a plain ":memory:" would give each connection its own.
    static RUN: AtomicU64 = AtomicU64::new(0);
    let db = format!(
        "file:fuzz-schema-{}?mode=memory&cache=shared",
        RUN.fetch_add(1, Ordering::Relaxed)
    );
    let store = match SqliteStore::open(Path::new(&db), loaded) {
        Ok(store) => store,
        Err(e) => {
            invariant!(
                false,
                "the server cannot open a store for an accepted schema: {e}\n{text}"
            );
            return;
        }
    };
    stores_a_record_per_table(&store, s.tables, text);
    phones_store_a_record_per_table(s, text);
}

/// The body of `t`'s default record: default values, the scope field (if any) set to `scope`.
fn default_record(t: &TableDef<'_>, scope: &str) -> Vec<u8> {
    let values: Vec<Value<'_>> = (t.fields.iter())
        .map(|f| {
            if Some(f.name) == t.scope_field {
                Value::Text(scope)
            } else {
                default_value(f.ty)
            }
        })
        .collect();
    let mut buf = vec![0u8; 16 + scope.len() + 10 * t.fields.len()];
    match body::encode(t, &values, &mut buf) {
        Ok(b) => b.to_vec(),
        Err(e) => panic!("invariant broken: body of {} does not encode: {e}", t.name),
    }
}

/// A phone store in memory opens with the schema, takes a default record in every table (each
/// detail under its parent table's record) and lists them all as pending.
fn phones_store_a_record_per_table(schema: ferrysync_core::Schema<'static>, text: &str) {
    let store = match ferrysync_sqlite::SqliteStore::open_in_memory(schema) {
        Ok(store) => store,
        Err(e) => {
            invariant!(false, "a phone cannot open an accepted schema: {e}\n{text}");
            return;
        }
    };
    let mut phone = ferrysync_sqlite::Phone::with_store(store);
    let mut locals: Vec<LocalId> = Vec::with_capacity(schema.tables.len());
    for (i, t) in schema.tables.iter().enumerate() {
        let parent = t.parent.and_then(|p| locals.get(usize::from(p.0)).copied());
        match phone.insert_body(TableId(i as u8), parent, &default_record(t, "fuzz")) {
            Ok(id) => locals.push(id),
            Err(e) => {
                invariant!(
                    false,
                    "a phone cannot store a {} record: {e}\n{text}",
                    t.name
                );
                return;
            }
        }
    }
    let pending = phone.pending().map(|p| p.len());
    invariant!(
        pending.as_ref().ok() == Some(&schema.tables.len()),
        "a phone lists {pending:?} pending records of {}\n{text}",
        schema.tables.len()
    );
}

/// One sync adding a default record to every table of `tables` (the scope field set to the
/// device's scope, each detail under its parent table's record) applies them all, and a full
/// reply reads every one back.
fn stores_a_record_per_table(store: &SqliteStore, tables: &[TableDef<'_>], text: &str) {
    const SCOPE: &str = "fuzz";
    let device = match ferrysync_server::auth::add_device(store, SCOPE) {
        Ok((device, _token)) => device,
        Err(e) => {
            invariant!(false, "no device for an accepted schema: {e}\n{text}");
            return;
        }
    };
    let now_ms = 1_000_000;
    let mut changes = Vec::with_capacity(tables.len() + 1);
    for (i, t) in tables.iter().enumerate() {
        let body = default_record(t, SCOPE);
        // Local ids count from 1, one record per table; parents are listed first.
        let local = |table: usize| RecordRef::Local(LocalId(table as u32 + 1));
        changes.push(Incoming::Change(OwnedChange {
            table: TableId(i as u8),
            op: Op::Add,
            key: local(i),
            parent: t.parent.map(|p| local(usize::from(p.0))),
            modified_at: Hlc::new(now_ms, 0, device.id),
            body,
        }));
    }
    changes.push(Incoming::Commit);
    let params = SyncParams {
        now_ms,
        max_skew_ms: 1_000,
        tombstone_retention_ms: 10_000,
    };
    let out = store.sync(&device, params, &mut changes.into_iter());
    match out {
        Ok(out) => invariant!(
            out.applied as usize == tables.len() && out.rejected.is_empty(),
            "a record per table: {} applied, rejected {:?}\n{text}",
            out.applied,
            out.rejected
        ),
        Err(e) => invariant!(false, "a record per table failed: {e}\n{text}"),
    }
    let plan = ReplyPlan {
        scope: SCOPE,
        mode: Mode::Full,
        cursor: None,
        extra: &[],
    };
    let mut upserts = 0;
    let read = store.read_reply(&plan, &mut |item| {
        upserts += usize::from(matches!(item, ReplyItem::Upsert(_)));
        Ok(())
    });
    invariant!(
        read.is_ok() && upserts == tables.len(),
        "a full reply read {upserts} of {} records: {read:?}\n{text}",
        tables.len()
    );
}
