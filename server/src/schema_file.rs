//! Loading the synced tables from a `schema.toml` file.
//!
//! ```toml
//! [[table]]
//! name = "company"
//! scope_field = "region"        # optional, master (root) tables only
//! fields = [
//!   { name = "name", type = "text" },
//!   { name = "region", type = "text" },
//!   { name = "phone", type = "text", optional = true },
//! ]
//!
//! [[table]]
//! name = "contact"
//! parent = "company"            # the master table, listed before
//! parent_field = "company_id"   # the foreign-key column
//! fields = [ { name = "name", type = "text" } ]
//! ```
//!
//! Types: `bool`, `i64`, `u64`, `f64`, `text`, `bytes` (and the aliases of
//! [`FieldType::from_name`]). Table and field names become SQL identifiers, so they must match
//! `[A-Za-z_][A-Za-z0-9_]*`, must not start with `_` (the server's own columns do) and must be
//! unique ignoring case (SQL identifiers are case-insensitive); `id` is reserved.

use ferrysync_core::schema::{FieldDef, FieldType, Schema, TableDef, EXAMPLE};
use ferrysync_core::TableId;
use serde::Deserialize;
use std::fmt;
use std::path::Path;

/// A checked schema with `'static` lifetime, and its hash.
///
/// Schemas read from a file are leaked once ([`Box::leak`]) so that they can be shared as
/// `Schema<'static>` by every request; a server loads its schema once, so this costs a few
/// hundred bytes for the life of the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedSchema {
    schema: Schema<'static>,
    hash: u64,
}

impl LoadedSchema {
    /// The built-in example schema (`company` and its `contact`s).
    pub fn example() -> Self {
        LoadedSchema {
            schema: EXAMPLE,
            hash: EXAMPLE.hash(),
        }
    }

    /// Checks a schema description (the rules of [`Schema::validate`] plus SQL-safe names).
    pub fn new(schema: Schema<'static>) -> Result<Self, SchemaFileError> {
        schema
            .validate()
            .map_err(|e| SchemaFileError::Invalid(e.to_string()))?;
        check_names(&schema)?;
        Ok(LoadedSchema {
            schema,
            hash: schema.hash(),
        })
    }

    /// Parses and checks the text of a `schema.toml`.
    pub fn parse(text: &str) -> Result<Self, SchemaFileError> {
        let file: SchemaFile =
            toml::from_str(text).map_err(|e| SchemaFileError::Toml(e.to_string()))?;
        let mut tables: Vec<TableDef<'static>> = Vec::with_capacity(file.table.len());
        for (i, t) in file.table.into_iter().enumerate() {
            let parent = match &t.parent {
                None => None,
                Some(p) => match tables.iter().position(|o| o.name == p.as_str()) {
                    Some(j) => Some(TableId(j as u8)),
                    None => {
                        return Err(SchemaFileError::Invalid(format!(
                            "table {:?} (#{i}): parent {p:?} must be a table listed before it",
                            t.name
                        )))
                    }
                },
            };
            let mut fields = Vec::with_capacity(t.fields.len());
            for f in t.fields {
                let ty = FieldType::from_name(&f.ty).ok_or_else(|| {
                    SchemaFileError::Invalid(format!(
                        "table {:?}, field {:?}: unknown type {:?} (use bool, i64, u64, f64, text or bytes)",
                        t.name, f.name, f.ty
                    ))
                })?;
                fields.push(FieldDef {
                    name: leak_str(f.name),
                    ty,
                    optional: f.optional,
                });
            }
            tables.push(TableDef {
                name: leak_str(t.name),
                parent,
                parent_field: t.parent_field.map(leak_str),
                scope_field: t.scope_field.map(leak_str),
                fields: Box::leak(fields.into_boxed_slice()),
            });
        }
        LoadedSchema::new(Schema {
            tables: Box::leak(tables.into_boxed_slice()),
        })
    }

    /// Reads and checks a `schema.toml` file.
    pub fn load(path: &Path) -> Result<Self, SchemaFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            SchemaFileError::Io(format!("cannot read schema file {}: {e}", path.display()))
        })?;
        Self::parse(&text)
    }

    /// The schema.
    pub fn schema(&self) -> Schema<'static> {
        self.schema
    }

    /// Its hash ([`Schema::hash`]), as devices send it in `Hello`.
    pub fn hash(&self) -> u64 {
        self.hash
    }
}

fn leak_str(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Whether `name` is usable as a table or column name: `[A-Za-z][A-Za-z0-9_]*`, so it needs
/// no quoting games and cannot collide with the server's `_`-prefixed columns.
pub fn is_valid_ident(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 63
}

fn check_names(schema: &Schema<'static>) -> Result<(), SchemaFileError> {
    let bad = |what: &str, name: &str| {
        SchemaFileError::Invalid(format!(
            "{what} name {name:?} is not usable: names must match [A-Za-z][A-Za-z0-9_]* \
             (at most 63 characters, no leading `_`), be unique ignoring case, and not be `id` \
             (nor, for a table, start with `sqlite_`; nor, for a field, be a column phones keep \
             for themselves: {})",
            ferrysync_sqlite::RESERVED.join(", ")
        ))
    };
    let mut table_names: Vec<String> = Vec::new();
    for t in schema.tables {
        let lower = t.name.to_ascii_lowercase();
        if !is_valid_ident(t.name) || table_names.contains(&lower) || lower.starts_with("sqlite_") {
            return Err(bad("table", t.name));
        }
        table_names.push(lower);
        let mut cols: Vec<String> = vec!["id".into()];
        let names = t.fields.iter().map(|f| f.name).chain(t.parent_field);
        for n in names {
            let lower = n.to_ascii_lowercase();
            // Phones store each table with sync columns of their own: a field by one of
            // their names would be a schema the server serves and no phone can open.
            if !is_valid_ident(n) || cols.contains(&lower) || ferrysync_sqlite::is_reserved(n) {
                return Err(bad("field", n));
            }
            cols.push(lower);
        }
    }
    Ok(())
}

/// Why a schema file could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaFileError {
    /// The file could not be read.
    Io(String),
    /// The file is not valid TOML, or has unknown or missing keys.
    Toml(String),
    /// The tables do not form a valid schema.
    Invalid(String),
}

impl fmt::Display for SchemaFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemaFileError::Io(m) => f.write_str(m),
            SchemaFileError::Toml(m) => write!(f, "schema file is not valid: {}", m.trim_end()),
            SchemaFileError::Invalid(m) => write!(f, "schema is not valid: {m}"),
        }
    }
}

impl std::error::Error for SchemaFileError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaFile {
    table: Vec<TableFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableFile {
    name: String,
    #[serde(default)]
    parent: Option<String>,
    #[serde(default)]
    parent_field: Option<String>,
    #[serde(default)]
    scope_field: Option<String>,
    fields: Vec<FieldFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldFile {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    optional: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_matches_builtin() {
        let text = include_str!("../schema.example.toml");
        let s = LoadedSchema::parse(text).unwrap();
        assert_eq!(s.hash(), EXAMPLE.hash());
        assert_eq!(s.schema(), EXAMPLE);
        assert_eq!(s, LoadedSchema::example());
    }

    #[test]
    fn rejects_bad_names_and_order() {
        let bad_name = r#"
            [[table]]
            name = "_x"
            fields = [ { name = "a", type = "text" } ]
        "#;
        assert!(matches!(
            LoadedSchema::parse(bad_name),
            Err(SchemaFileError::Invalid(_))
        ));
        let quote = r#"
            [[table]]
            name = "a"
            fields = [ { name = "a\"b", type = "text" } ]
        "#;
        assert!(LoadedSchema::parse(quote).is_err());
        let case_dup = r#"
            [[table]]
            name = "a"
            fields = [ { name = "Name", type = "text" }, { name = "name", type = "text" } ]
        "#;
        assert!(LoadedSchema::parse(case_dup).is_err());
        let id = r#"
            [[table]]
            name = "a"
            fields = [ { name = "id", type = "text" } ]
        "#;
        assert!(LoadedSchema::parse(id).is_err());
        let order = r#"
            [[table]]
            name = "b"
            parent = "a"
            parent_field = "a_id"
            fields = [ { name = "x", type = "text" } ]
            [[table]]
            name = "a"
            fields = [ { name = "x", type = "text" } ]
        "#;
        assert!(LoadedSchema::parse(order)
            .unwrap_err()
            .to_string()
            .contains("listed before"));
        let ty = r#"
            [[table]]
            name = "a"
            fields = [ { name = "x", type = "decimal" } ]
        "#;
        assert!(LoadedSchema::parse(ty)
            .unwrap_err()
            .to_string()
            .contains("unknown type"));
        // A field named like a column phones keep for themselves (in any case): the server
        // would serve a schema no phone can open.
        for field in [
            "edits",
            "Sync_Pending",
            "SERVER_ID",
            "modified_wall",
            "refresh_mark",
        ] {
            let text = format!(
                "[[table]]\nname = \"a\"\nfields = [ {{ name = \"{field}\", type = \"text\" }} ]\n"
            );
            let err = LoadedSchema::parse(&text).unwrap_err().to_string();
            assert!(err.contains("phones keep"), "{field}: {err}");
        }
        let parent = r#"
            [[table]]
            name = "a"
            fields = [ { name = "x", type = "text" } ]
            [[table]]
            name = "b"
            parent = "a"
            parent_field = "Edits"
            fields = [ { name = "x", type = "text" } ]
        "#;
        assert!(LoadedSchema::parse(parent)
            .unwrap_err()
            .to_string()
            .contains("phones keep"));
        // A table without fields (its records would carry no data; its SQL had no columns to
        // list), refused with the table it is.
        let no_fields = r#"
            [[table]]
            name = "a"
            fields = [ { name = "x", type = "text" } ]
            [[table]]
            name = "b"
            fields = []
        "#;
        let err = LoadedSchema::parse(no_fields).unwrap_err().to_string();
        assert!(err.contains("at least one field"), "{err}");
        let unknown_key = r#"
            [[table]]
            name = "a"
            colour = "red"
            fields = []
        "#;
        assert!(matches!(
            LoadedSchema::parse(unknown_key),
            Err(SchemaFileError::Toml(_))
        ));
    }

    /// Names the fuzzer's schema target showed the store could not create: SQLite's own
    /// `sqlite_` prefix, and tables named like another table's generated index.
    #[test]
    fn names_that_once_broke_the_store() {
        let internal = r#"
            [[table]]
            name = "SQLite_stat"
            fields = [ { name = "x", type = "text" } ]
        "#;
        assert!(LoadedSchema::parse(internal).is_err());
        let like_index = r#"
            [[table]]
            name = "a"
            fields = [ { name = "x", type = "text" } ]
            [[table]]
            name = "a__scope_seq"
            parent = "a"
            parent_field = "scope_seq"
            fields = [ { name = "x", type = "text" } ]
            [[table]]
            name = "b_fk"
            fields = [ { name = "x", type = "text" } ]
            [[table]]
            name = "b"
            fields = [ { name = "x", type = "text" } ]
        "#;
        let schema = LoadedSchema::parse(like_index).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = crate::SqliteStore::open(&dir.path().join("s.db"), schema);
        assert!(store.is_ok(), "{:?}", store.err());
    }

    #[test]
    fn scope_field_and_depth() {
        let text = r#"
            [[table]]
            name = "company"
            scope_field = "region"
            fields = [ { name = "name", type = "text" }, { name = "region", type = "text" } ]
            [[table]]
            name = "contact"
            parent = "company"
            parent_field = "company_id"
            fields = [ { name = "name", type = "text" }, { name = "age", type = "u64", optional = true } ]
            [[table]]
            name = "note"
            parent = "contact"
            parent_field = "contact_id"
            fields = [ { name = "text", type = "text" } ]
        "#;
        let s = LoadedSchema::parse(text).unwrap();
        assert_eq!(s.schema().depth(TableId(2)), 2);
        assert_eq!(s.schema().tables[0].scope_field, Some("region"));
        assert!(s.schema().tables[1].fields[1].optional);
    }
}
