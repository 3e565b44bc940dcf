//! Record bodies: the postcard encoding of a record's fields, walked by the schema.
//!
//! Postcard is not self-describing, so a reader that has no Rust struct for a table (the
//! server, a back-office tool) decodes a body by walking the table's [`FieldDef`]s in order.
//! A device that has a serde struct whose fields match the schema writes the same bytes with
//! `postcard::to_slice`.

use crate::schema::{FieldDef, FieldType, TableDef};
use core::fmt;
use serde::de::Deserialize;
use serde::ser::{Serialize, SerializeTuple, Serializer};

/// One field value, borrowed from a body or from text.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    /// No value (optional fields only).
    Null,
    /// A `bool` field.
    Bool(bool),
    /// An `i64` field.
    I64(i64),
    /// A `u64` field.
    U64(u64),
    /// An `f64` field.
    F64(f64),
    /// A `text` field.
    Text(&'a str),
    /// A `bytes` field.
    Bytes(&'a [u8]),
}

impl<'a> Value<'a> {
    /// Whether this value can be stored in `field`.
    pub fn fits(&self, field: &FieldDef<'_>) -> bool {
        matches!(
            (self, field.ty),
            (Value::Bool(_), FieldType::Bool)
                | (Value::I64(_), FieldType::I64)
                | (Value::U64(_), FieldType::U64)
                | (Value::F64(_), FieldType::F64)
                | (Value::Text(_), FieldType::Text)
                | (Value::Bytes(_), FieldType::Bytes)
        ) || (field.optional && *self == Value::Null)
    }

    /// Parses a value of `field`'s type from text, as typed on a command line
    /// (`null` or an empty string gives [`Value::Null`] for optional fields; bytes are hex).
    /// Text borrows from the input; bytes need a decoding buffer, so they are not accepted here.
    pub fn parse(field: &FieldDef<'_>, text: &'a str) -> Result<Value<'a>, ParseError> {
        if field.optional && (text.is_empty() || text == "null") {
            return Ok(Value::Null);
        }
        let bad = ParseError::Invalid(field.ty);
        Ok(match field.ty {
            FieldType::Bool => match text {
                "true" | "1" | "yes" => Value::Bool(true),
                "false" | "0" | "no" => Value::Bool(false),
                _ => return Err(bad),
            },
            FieldType::I64 => Value::I64(text.parse().map_err(|_| bad)?),
            FieldType::U64 => Value::U64(text.parse().map_err(|_| bad)?),
            FieldType::F64 => Value::F64(text.parse().map_err(|_| bad)?),
            FieldType::Text => Value::Text(text),
            FieldType::Bytes => return Err(ParseError::BytesUnsupported),
        })
    }
}

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Text(v) => f.write_str(v),
            Value::Bytes(v) => {
                for b in v.iter() {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

/// Why a text value could not be parsed for a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The text is not a value of this type.
    Invalid(FieldType),
    /// Bytes fields cannot be given as text.
    BytesUnsupported,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Invalid(ty) => write!(f, "not a valid {} value", ty.name()),
            ParseError::BytesUnsupported => f.write_str("bytes fields cannot be set from text"),
        }
    }
}

/// Why a body does not fit its table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Field `field` (index in the table) could not be decoded: wrong type, bad UTF-8,
    /// truncated, or a bad option tag.
    Field {
        /// Index of the field in the table definition.
        field: u8,
    },
    /// Bytes remain after the last field.
    TrailingBytes,
    /// A value given for encoding does not fit its field, or the wrong number of values.
    Mismatch {
        /// Index of the field in the table definition.
        field: u8,
    },
    /// The output buffer is too small for the encoded body.
    BufferFull,
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Field { field } => write!(f, "field #{field} does not decode"),
            BodyError::TrailingBytes => f.write_str("bytes left after the last field"),
            BodyError::Mismatch { field } => write!(f, "value for field #{field} does not fit"),
            BodyError::BufferFull => f.write_str("body does not fit the buffer"),
        }
    }
}

fn decode_one<'a>(
    de: &mut postcard::Deserializer<'a, postcard::de_flavors::Slice<'a>>,
    ty: FieldType,
) -> postcard::Result<Value<'a>> {
    Ok(match ty {
        FieldType::Bool => Value::Bool(bool::deserialize(&mut *de)?),
        FieldType::I64 => Value::I64(i64::deserialize(&mut *de)?),
        FieldType::U64 => Value::U64(u64::deserialize(&mut *de)?),
        FieldType::F64 => Value::F64(f64::deserialize(&mut *de)?),
        FieldType::Text => Value::Text(<&str>::deserialize(&mut *de)?),
        FieldType::Bytes => Value::Bytes(<&[u8]>::deserialize(&mut *de)?),
    })
}

/// Decodes `body` against `table`, calling `visit(index, field, value)` for each field in order.
///
/// Fails on the first field that does not decode, or if bytes remain after the last one; the
/// visitor may have seen earlier fields by then.
pub fn decode<'a, E>(
    table: &TableDef<'_>,
    body: &'a [u8],
    mut visit: impl FnMut(usize, &FieldDef<'_>, Value<'a>) -> Result<(), E>,
) -> Result<Result<(), E>, BodyError> {
    let mut de = postcard::Deserializer::from_bytes(body);
    for (i, field) in table.fields.iter().enumerate() {
        let bad = BodyError::Field { field: i as u8 };
        let value = if field.optional {
            match u8::deserialize(&mut de).map_err(|_| bad)? {
                0 => Value::Null,
                1 => decode_one(&mut de, field.ty).map_err(|_| bad)?,
                _ => return Err(bad),
            }
        } else {
            decode_one(&mut de, field.ty).map_err(|_| bad)?
        };
        if let Err(e) = visit(i, field, value) {
            return Ok(Err(e));
        }
    }
    match de.finalize() {
        Ok([]) => Ok(Ok(())),
        _ => Err(BodyError::TrailingBytes),
    }
}

/// Checks that `body` fits `table`.
pub fn validate(table: &TableDef<'_>, body: &[u8]) -> Result<(), BodyError> {
    decode(table, body, |_, _, _| Ok::<(), ()>(())).map(|_| ())
}

/// Decodes the field at `index` of `body` (walking the fields before it).
pub fn field<'a>(
    table: &TableDef<'_>,
    body: &'a [u8],
    index: usize,
) -> Result<Value<'a>, BodyError> {
    let mut found = Value::Null;
    let walked = decode(table, body, |i, _, v| {
        if i == index {
            found = v;
            Err(())
        } else {
            Ok(())
        }
    })?;
    match walked {
        Err(()) => Ok(found),
        Ok(()) => Err(BodyError::Mismatch { field: index as u8 }),
    }
}

struct Encode<'t, 'v> {
    table: &'t TableDef<'t>,
    values: &'v [Value<'v>],
}

struct Plain<'v>(Value<'v>);

impl Serialize for Plain<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Null => s.serialize_none(),
            Value::Bool(v) => s.serialize_bool(v),
            Value::I64(v) => s.serialize_i64(v),
            Value::U64(v) => s.serialize_u64(v),
            Value::F64(v) => s.serialize_f64(v),
            Value::Text(v) => s.serialize_str(v),
            Value::Bytes(v) => s.serialize_bytes(v),
        }
    }
}

impl Serialize for Encode<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(self.values.len())?;
        for (f, v) in self.table.fields.iter().zip(self.values) {
            if f.optional {
                let opt = match v {
                    Value::Null => None,
                    other => Some(Plain(*other)),
                };
                t.serialize_element(&opt)?;
            } else {
                t.serialize_element(&Plain(*v))?;
            }
        }
        t.end()
    }
}

/// Encodes `values` (one per field, in order) as a body of `table` into `buf`.
pub fn encode<'b>(
    table: &TableDef<'_>,
    values: &[Value<'_>],
    buf: &'b mut [u8],
) -> Result<&'b mut [u8], BodyError> {
    if values.len() != table.fields.len() {
        return Err(BodyError::Mismatch {
            field: values.len().min(table.fields.len()) as u8,
        });
    }
    for (i, (f, v)) in table.fields.iter().zip(values).enumerate() {
        if !v.fits(f) {
            return Err(BodyError::Mismatch { field: i as u8 });
        }
    }
    postcard::to_slice(&Encode { table, values }, buf).map_err(|_| BodyError::BufferFull)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::TableId;
    use crate::schema::{Schema, EXAMPLE};
    use serde::Serialize;

    #[derive(Serialize)]
    struct Company<'a> {
        name: &'a str,
        city: &'a str,
        phone: &'a str,
    }

    #[test]
    fn serde_struct_and_schema_walk_agree() {
        let company = Company {
            name: "ACME",
            city: "Lyon",
            phone: "+33 1",
        };
        let mut a = [0u8; 64];
        let from_struct = postcard::to_slice(&company, &mut a).unwrap();
        let mut b = [0u8; 64];
        let t = &EXAMPLE.tables[0];
        let from_values = encode(
            t,
            &[
                Value::Text("ACME"),
                Value::Text("Lyon"),
                Value::Text("+33 1"),
            ],
            &mut b,
        )
        .unwrap();
        assert_eq!(from_struct, from_values);
        assert_eq!(field(t, from_struct, 1).unwrap(), Value::Text("Lyon"));
        validate(t, from_struct).unwrap();
    }

    const ALL: [FieldDef<'static>; 7] = [
        FieldDef {
            name: "b",
            ty: FieldType::Bool,
            optional: false,
        },
        FieldDef {
            name: "i",
            ty: FieldType::I64,
            optional: false,
        },
        FieldDef {
            name: "u",
            ty: FieldType::U64,
            optional: true,
        },
        FieldDef {
            name: "f",
            ty: FieldType::F64,
            optional: false,
        },
        FieldDef {
            name: "t",
            ty: FieldType::Text,
            optional: true,
        },
        FieldDef {
            name: "y",
            ty: FieldType::Bytes,
            optional: false,
        },
        FieldDef {
            name: "n",
            ty: FieldType::Text,
            optional: true,
        },
    ];
    const T: TableDef<'static> = TableDef {
        name: "all",
        parent: None,
        parent_field: None,
        scope_field: None,
        fields: &ALL,
    };

    #[test]
    fn every_type_round_trips() {
        Schema::try_new(&[T]).unwrap();
        let values = [
            Value::Bool(true),
            Value::I64(-5),
            Value::U64(300),
            Value::F64(1.5),
            Value::Text("hé"),
            Value::Bytes(&[0, 1, 2]),
            Value::Null,
        ];
        let mut buf = [0u8; 64];
        let body = encode(&T, &values, &mut buf).unwrap();
        let mut got = [Value::Null; 7];
        decode(&T, body, |i, _, v| {
            got[i] = v;
            Ok::<(), ()>(())
        })
        .unwrap()
        .unwrap();
        assert_eq!(got, values);
        let _ = TableId(0);
    }

    #[test]
    fn bad_bodies_are_errors() {
        let t = &EXAMPLE.tables[0];
        // Truncated: second field missing.
        assert_eq!(validate(t, &[1, b'a']), Err(BodyError::Field { field: 1 }));
        // Bad UTF-8 in the first field.
        assert_eq!(
            validate(t, &[1, 0xff, 0, 0]),
            Err(BodyError::Field { field: 0 })
        );
        // Trailing byte.
        assert_eq!(validate(t, &[0, 0, 0, 9]), Err(BodyError::TrailingBytes));
        // Huge length prefix.
        assert_eq!(
            validate(t, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
            Err(BodyError::Field { field: 0 })
        );
        // Wrong value type for encoding.
        let mut buf = [0u8; 16];
        assert_eq!(
            encode(
                t,
                &[Value::I64(1), Value::Text(""), Value::Text("")],
                &mut buf
            ),
            Err(BodyError::Mismatch { field: 0 })
        );
        assert_eq!(
            encode(t, &[Value::Text("x")], &mut buf),
            Err(BodyError::Mismatch { field: 1 })
        );
    }

    #[test]
    fn parse_values() {
        let f = FieldDef {
            name: "x",
            ty: FieldType::I64,
            optional: true,
        };
        assert_eq!(Value::parse(&f, "-3"), Ok(Value::I64(-3)));
        assert_eq!(Value::parse(&f, "null"), Ok(Value::Null));
        assert_eq!(
            Value::parse(&f, "abc"),
            Err(ParseError::Invalid(FieldType::I64))
        );
    }
}
