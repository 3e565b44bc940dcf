//! Static description of the synced tables, and its stable hash.
//!
//! Tables form a tree listed in parent-first order: a table's parent always has a smaller
//! [`TableId`]. A detail's foreign key is not part of its body: it travels beside the body as
//! the change's `parent` reference, and the schema only names the column that holds it.
//!
//! Both sides hash the schema ([`Schema::hash`]); the hello frame carries the hash, and a
//! device and server that disagree refuse to sync instead of misreading bodies.

use crate::id::TableId;
use core::fmt;
use crc::{Crc, Digest, CRC_64_XZ};
use serde::{Deserialize, Serialize};

/// Most tables a schema may hold (ids are one byte on the wire).
pub const MAX_TABLES: usize = 64;
/// Most fields a table may hold.
pub const MAX_FIELDS: usize = 64;

/// Type of a body field; fixes its postcard encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FieldType {
    /// `bool`: one byte, 0 or 1.
    Bool,
    /// `i64`: zigzag varint.
    I64,
    /// `u64`: varint.
    U64,
    /// `f64`: 8 bytes little-endian.
    F64,
    /// UTF-8 text: varint length then bytes.
    Text,
    /// Raw bytes: varint length then bytes.
    Bytes,
}

impl FieldType {
    /// Stable one-byte code used in the schema hash.
    pub const fn code(self) -> u8 {
        match self {
            FieldType::Bool => 1,
            FieldType::I64 => 2,
            FieldType::U64 => 3,
            FieldType::F64 => 4,
            FieldType::Text => 5,
            FieldType::Bytes => 6,
        }
    }

    /// The name used in schema files (`bool`, `i64`, `u64`, `f64`, `text`, `bytes`).
    pub const fn name(self) -> &'static str {
        match self {
            FieldType::Bool => "bool",
            FieldType::I64 => "i64",
            FieldType::U64 => "u64",
            FieldType::F64 => "f64",
            FieldType::Text => "text",
            FieldType::Bytes => "bytes",
        }
    }

    /// Parses a schema-file type name.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "bool" => FieldType::Bool,
            "i64" | "int" | "integer" => FieldType::I64,
            "u64" => FieldType::U64,
            "f64" | "real" | "float" => FieldType::F64,
            "text" | "string" | "str" => FieldType::Text,
            "bytes" | "blob" => FieldType::Bytes,
            _ => return None,
        })
    }
}

/// One field of a table's body, in body order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldDef<'a> {
    /// Column name.
    pub name: &'a str,
    /// Value type.
    pub ty: FieldType,
    /// Whether the field may be null (encoded as a postcard `Option`).
    pub optional: bool,
}

/// One synced table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableDef<'a> {
    /// Table name (also the SQL table name on both sides).
    pub name: &'a str,
    /// The parent table, for a detail; `None` for a master (root) table.
    pub parent: Option<TableId>,
    /// Name of the column holding the parent's id (details only).
    pub parent_field: Option<&'a str>,
    /// For a root table, the body field that holds the record's scope; `None` when the
    /// server keeps the scope in its own column. Details inherit their master's scope.
    pub scope_field: Option<&'a str>,
    /// Body fields in encoding order.
    pub fields: &'a [FieldDef<'a>],
}

impl<'a> TableDef<'a> {
    /// Index of the field called `name`.
    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }
}

/// A whole schema: the synced tables in parent-first order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schema<'a> {
    /// Tables; `tables[i]` has id `TableId(i)`.
    pub tables: &'a [TableDef<'a>],
}

/// Why a schema description is not usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemaError {
    /// No tables.
    Empty,
    /// More than [`MAX_TABLES`] tables or [`MAX_FIELDS`] fields in one table.
    TooLarge,
    /// Table `table` names a parent that is not listed before it.
    ParentOrder {
        /// The offending table.
        table: TableId,
    },
    /// A detail without a parent field, or a master with one.
    ParentField {
        /// The offending table.
        table: TableId,
    },
    /// The scope field is not a text field of a root table.
    ScopeField {
        /// The offending table.
        table: TableId,
    },
    /// Two tables, or two fields of one table, share a name; or a name is empty.
    Name {
        /// The offending table.
        table: TableId,
    },
    /// A table without fields: its records would carry no data.
    NoFields {
        /// The offending table.
        table: TableId,
    },
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemaError::Empty => f.write_str("schema has no tables"),
            SchemaError::TooLarge => write!(
                f,
                "schema too large (at most {MAX_TABLES} tables of {MAX_FIELDS} fields)"
            ),
            SchemaError::ParentOrder { table } => {
                write!(f, "{table}: parent must be listed before its details")
            }
            SchemaError::ParentField { table } => write!(
                f,
                "{table}: a detail needs a parent field and a master must not have one"
            ),
            SchemaError::ScopeField { table } => write!(
                f,
                "{table}: the scope field must be a text field of a master table"
            ),
            SchemaError::Name { table } => {
                write!(f, "{table}: empty or duplicate table or field name")
            }
            SchemaError::NoFields { table } => {
                write!(f, "{table}: a table needs at least one field")
            }
        }
    }
}

const HASHER: Crc<u64> = Crc::<u64>::new(&CRC_64_XZ);

fn hash_str(d: &mut Digest<'_, u64>, s: &str) {
    d.update(&(s.len() as u32).to_le_bytes());
    d.update(s.as_bytes());
}

fn hash_opt_str(d: &mut Digest<'_, u64>, s: Option<&str>) {
    match s {
        Some(s) => {
            d.update(&[1]);
            hash_str(d, s);
        }
        None => d.update(&[0]),
    }
}

impl<'a> Schema<'a> {
    /// A checked schema.
    pub fn try_new(tables: &'a [TableDef<'a>]) -> Result<Self, SchemaError> {
        let s = Schema { tables };
        s.validate()?;
        Ok(s)
    }

    /// Checks the rules listed in the module docs.
    pub fn validate(&self) -> Result<(), SchemaError> {
        if self.tables.is_empty() {
            return Err(SchemaError::Empty);
        }
        if self.tables.len() > MAX_TABLES {
            return Err(SchemaError::TooLarge);
        }
        for (i, t) in self.tables.iter().enumerate() {
            let id = TableId(i as u8);
            if t.fields.len() > MAX_FIELDS {
                return Err(SchemaError::TooLarge);
            }
            if t.name.is_empty()
                || self.tables[..i].iter().any(|o| o.name == t.name)
                || t.fields.iter().enumerate().any(|(j, f)| {
                    f.name.is_empty()
                        || t.fields[..j].iter().any(|o| o.name == f.name)
                        || Some(f.name) == t.parent_field
                })
            {
                return Err(SchemaError::Name { table: id });
            }
            match (t.parent, t.parent_field) {
                (Some(p), Some(pf)) => {
                    if (p.0 as usize) >= i {
                        return Err(SchemaError::ParentOrder { table: id });
                    }
                    if pf.is_empty() {
                        return Err(SchemaError::ParentField { table: id });
                    }
                }
                (None, None) => {}
                _ => return Err(SchemaError::ParentField { table: id }),
            }
            if t.fields.is_empty() {
                return Err(SchemaError::NoFields { table: id });
            }
            if let Some(sf) = t.scope_field {
                let ok = t.parent.is_none()
                    && t.fields
                        .iter()
                        .any(|f| f.name == sf && f.ty == FieldType::Text && !f.optional);
                if !ok {
                    return Err(SchemaError::ScopeField { table: id });
                }
            }
        }
        Ok(())
    }

    /// The table with id `id`.
    pub fn table(&self, id: TableId) -> Option<&'a TableDef<'a>> {
        self.tables.get(id.0 as usize)
    }

    /// The id of the table called `name`.
    pub fn table_id(&self, name: &str) -> Option<TableId> {
        self.tables
            .iter()
            .position(|t| t.name == name)
            .map(|i| TableId(i as u8))
    }

    /// Depth of a table in the tree: 0 for a master, 1 for its details, and so on.
    pub fn depth(&self, id: TableId) -> usize {
        let mut depth = 0;
        let mut cur = self.table(id).and_then(|t| t.parent);
        while let Some(p) = cur {
            depth += 1;
            // Parents always have smaller ids (validated), so this walk ends.
            cur = self.table(p).and_then(|t| t.parent).filter(|pp| pp.0 < p.0);
        }
        depth
    }

    /// The root (master) table above `id`.
    pub fn root_of(&self, id: TableId) -> TableId {
        let mut cur = id;
        while let Some(p) = self.table(cur).and_then(|t| t.parent) {
            if p.0 >= cur.0 {
                break;
            }
            cur = p;
        }
        cur
    }

    /// Stable 64-bit hash (CRC-64/XZ) of everything that shapes the wire: table names and
    /// order, parents, parent and scope fields, field names, types and optionality.
    pub fn hash(&self) -> u64 {
        let mut d = HASHER.digest();
        d.update(b"ferrysync-schema-v1");
        d.update(&(self.tables.len() as u32).to_le_bytes());
        for t in self.tables {
            hash_str(&mut d, t.name);
            match t.parent {
                Some(p) => d.update(&[1, p.0]),
                None => d.update(&[0]),
            }
            hash_opt_str(&mut d, t.parent_field);
            hash_opt_str(&mut d, t.scope_field);
            d.update(&(t.fields.len() as u32).to_le_bytes());
            for f in t.fields {
                hash_str(&mut d, f.name);
                d.update(&[f.ty.code(), u8::from(f.optional)]);
            }
        }
        d.finalize()
    }
}

/// The pattern's example schema: `company` (master) and `contact` (detail, `company_id`).
pub const EXAMPLE: Schema<'static> = Schema {
    tables: &[
        TableDef {
            name: "company",
            parent: None,
            parent_field: None,
            scope_field: None,
            fields: &[
                FieldDef {
                    name: "name",
                    ty: FieldType::Text,
                    optional: false,
                },
                FieldDef {
                    name: "city",
                    ty: FieldType::Text,
                    optional: false,
                },
                FieldDef {
                    name: "phone",
                    ty: FieldType::Text,
                    optional: false,
                },
            ],
        },
        TableDef {
            name: "contact",
            parent: Some(TableId(0)),
            parent_field: Some("company_id"),
            scope_field: None,
            fields: &[
                FieldDef {
                    name: "name",
                    ty: FieldType::Text,
                    optional: false,
                },
                FieldDef {
                    name: "email",
                    ty: FieldType::Text,
                    optional: false,
                },
                FieldDef {
                    name: "phone",
                    ty: FieldType::Text,
                    optional: false,
                },
            ],
        },
    ],
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_is_valid_and_hash_is_stable() {
        EXAMPLE.validate().unwrap();
        // Pinned: changing the example schema or the hash input is a wire change.
        assert_eq!(EXAMPLE.hash(), EXAMPLE_HASH);
        assert_eq!(EXAMPLE.depth(TableId(1)), 1);
        assert_eq!(EXAMPLE.root_of(TableId(1)), TableId(0));
    }

    const EXAMPLE_HASH: u64 = 0x258f_90dc_a644_b210;

    #[test]
    fn hash_sees_every_part() {
        let base = EXAMPLE.hash();
        let mut tables = [EXAMPLE.tables[0], EXAMPLE.tables[1]];
        let fields = [
            FieldDef {
                name: "name",
                ty: FieldType::Text,
                optional: true,
            },
            EXAMPLE.tables[1].fields[1],
            EXAMPLE.tables[1].fields[2],
        ];
        tables[1].fields = &fields;
        assert_ne!(Schema { tables: &tables }.hash(), base);
        tables[1] = EXAMPLE.tables[1];
        tables[1].parent_field = Some("company");
        assert_ne!(Schema { tables: &tables }.hash(), base);
        tables[1] = EXAMPLE.tables[1];
        tables[0].name = "companies";
        assert_ne!(Schema { tables: &tables }.hash(), base);
    }

    #[test]
    fn rejects_bad_shapes() {
        let mut tables = [EXAMPLE.tables[1], EXAMPLE.tables[0]];
        assert_eq!(
            Schema::try_new(&tables),
            Err(SchemaError::ParentOrder { table: TableId(0) })
        );
        tables = [EXAMPLE.tables[0], EXAMPLE.tables[0]];
        assert_eq!(
            Schema::try_new(&tables),
            Err(SchemaError::Name { table: TableId(1) })
        );
        tables = [EXAMPLE.tables[0], EXAMPLE.tables[1]];
        tables[1].parent_field = None;
        assert_eq!(
            Schema::try_new(&tables),
            Err(SchemaError::ParentField { table: TableId(1) })
        );
        tables = [EXAMPLE.tables[0], EXAMPLE.tables[1]];
        tables[0].scope_field = Some("nope");
        assert_eq!(
            Schema::try_new(&tables),
            Err(SchemaError::ScopeField { table: TableId(0) })
        );
        assert_eq!(Schema::try_new(&[]), Err(SchemaError::Empty));
        tables = [EXAMPLE.tables[0], EXAMPLE.tables[1]];
        tables[1].fields = &[];
        assert_eq!(
            Schema::try_new(&tables),
            Err(SchemaError::NoFields { table: TableId(1) })
        );
    }
}
