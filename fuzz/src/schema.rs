//! `schema_file`: arbitrary UTF-8 into `LoadedSchema::parse`.
//!
//! Invariants, for every text the parser accepts:
//! - the schema validates (`Schema::validate`) and its stored hash is `Schema::hash`;
//! - a second parse gives an equal schema with the same hash;
//! - for every table, a body encoded from default values (false, 0, 0, 0.0, "", empty bytes;
//!   and once more with null in every optional field) validates and decodes to those values;
//! - the server can serve it: `SqliteStore::open` on an in-memory database succeeds (every
//!   name the parser lets through is usable in the generated SQL).

use crate::invariant;
use crate::planted;
use ferrysync_core::body::{self, Value};
use ferrysync_core::schema::{FieldType, TableDef};
use ferrysync_server::{LoadedSchema, SqliteStore};
use std::path::Path;

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
    if let Err(e) = SqliteStore::open(Path::new(":memory:"), loaded) {
        invariant!(
            false,
            "the server cannot open a store for an accepted schema: {e}\n{text}"
        );
    }
}
