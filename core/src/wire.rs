//! Messages of protocol v1 (see `docs/wire-format.md` for the normative byte layout).
//!
//! A request is `Hello`, then one `Change` per changed record (parent tables before child
//! tables), then `End`. A reply is `Accepted`, then `Mapping`s, `Rejected`s, an optional
//! `Reset`, `Upsert`s and `Remove`s, then `Done`. Each message travels in its own frame
//! ([`crate::frame`]). Bodies are borrowed from the frame buffer: decoding copies nothing.

use crate::hlc::Hlc;
use crate::id::{LocalId, RecordRef, ServerId, TableId};
use core::fmt;
use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// What the device asks the reply to contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mode {
    /// Only what changed since the device's cursor (the server may still answer in full).
    Delta,
    /// Everything in the device's scope, after a `Reset`.
    Full,
}

/// What a change does to its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    /// A record created on the device (key is a [`LocalId`]).
    Add,
    /// A changed record (key is a [`ServerId`]).
    Update,
    /// A deleted record.
    Delete,
}

/// First frame of a request.
///
/// `protocol` is the first field of the first variant forever, so any future version can read
/// it and answer "unsupported version" instead of misreading the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version of the sender ([`PROTOCOL_VERSION`]).
    pub protocol: u16,
    /// [`Schema::hash`](crate::schema::Schema::hash) of the sender's schema.
    pub schema_hash: u64,
    /// Device-chosen id of this batch; a retry of the same pending changes may reuse it.
    pub batch_id: u64,
    /// Change-sequence cursor of the last applied reply; `None` before the first sync.
    pub cursor: Option<u64>,
    /// Reply mode asked for.
    pub mode: Mode,
}

/// Reads the protocol version of a request message without decoding the rest of it.
///
/// A `Hello` of a later version may carry fields this version cannot decode; the version is
/// always its first field (discriminant 0, then a varint `u16`), so a server can still answer
/// "unsupported version" instead of "malformed". `msg` is the frame's message bytes (COBS
/// decoded, CRC removed). Returns `None` if the message is not a `Hello`.
pub fn peek_protocol(msg: &[u8]) -> Option<u16> {
    match msg.split_first() {
        Some((0, rest)) => postcard::take_from_bytes::<u16>(rest).ok().map(|(v, _)| v),
        _ => None,
    }
}

/// One changed record of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change<'a> {
    /// Table of the record.
    pub table: TableId,
    /// What happened to it.
    pub op: Op,
    /// The record: local id for an add, server id otherwise.
    pub key: RecordRef,
    /// The parent record, for a detail.
    pub parent: Option<RecordRef>,
    /// Clock of the change, for last-write-wins.
    pub modified_at: Hlc,
    /// The record's fields (postcard, see [`crate::body`]); empty for a delete.
    #[serde(borrow)]
    pub body: &'a [u8],
}

/// Last frame of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    /// Number of `Change` frames sent.
    pub count: u32,
}

/// A frame of a request stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request<'a> {
    /// First frame.
    Hello(Hello),
    /// One changed record.
    #[serde(borrow)]
    Change(Change<'a>),
    /// Last frame.
    End(End),
}

/// Why the server refused a change. The device keeps it, with the change, in its rejected log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RejectReason {
    /// The table id is not in the schema.
    UnknownTable,
    /// The body does not fit the table's fields.
    InvalidBody,
    /// The record (or its master) is outside the device's scope.
    OutOfScope,
    /// A detail whose parent does not exist or was deleted.
    ParentMissing,
    /// An update of a record deleted on the server.
    Deleted,
    /// An update or delete of a server id that never existed.
    UnknownRecord,
    /// The change is malformed for its op (an add keyed by server id, a detail without parent).
    BadKey,
}

impl RejectReason {
    /// A short stable name, for logs and machine-readable error bodies.
    pub const fn as_str(self) -> &'static str {
        match self {
            RejectReason::UnknownTable => "unknown_table",
            RejectReason::InvalidBody => "invalid_body",
            RejectReason::OutOfScope => "out_of_scope",
            RejectReason::ParentMissing => "parent_missing",
            RejectReason::Deleted => "deleted",
            RejectReason::UnknownRecord => "unknown_record",
            RejectReason::BadKey => "bad_key",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// First frame of a reply: the batch was applied (atomically) by the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// The request's `batch_id`.
    pub batch_id: u64,
    /// Server time in ms since the Unix epoch; devices advance their clock to it.
    pub server_time: u64,
}

/// A new record's server id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    /// Table of the record.
    pub table: TableId,
    /// Its device-local id.
    pub local: LocalId,
    /// The id the server gave it.
    pub server: ServerId,
}

/// A change the server refused, with the body that was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected<'a> {
    /// Table (as sent).
    pub table: TableId,
    /// What the change did.
    pub op: Op,
    /// The record (as sent).
    pub key: RecordRef,
    /// Why.
    pub reason: RejectReason,
    /// The body that was sent.
    #[serde(borrow)]
    pub body: &'a [u8],
}

/// A record as the server holds it; the device stores it in place of its copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upsert<'a> {
    /// Table of the record.
    pub table: TableId,
    /// Server id.
    pub id: ServerId,
    /// Server id of the parent, for a detail.
    pub parent: Option<ServerId>,
    /// Clock of the winning change.
    pub modified_at: Hlc,
    /// The record's fields.
    #[serde(borrow)]
    pub body: &'a [u8],
}

/// A record deleted on the server (or gone from the device's scope).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remove {
    /// Table of the record.
    pub table: TableId,
    /// Server id.
    pub id: ServerId,
}

/// Last frame of a reply; nothing before it may be committed by the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// Change-sequence cursor to send in the next `Hello`.
    pub cursor: u64,
    /// Number of frames between `Accepted` and `Done`.
    pub count: u32,
}

/// A frame of a reply stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply<'a> {
    /// First frame.
    Accepted(Accepted),
    /// A new record's server id.
    Mapping(Mapping),
    /// A refused change.
    #[serde(borrow)]
    Rejected(Rejected<'a>),
    /// Full refresh: the records that follow replace all of the device's server-origin data.
    Reset,
    /// A record to store.
    #[serde(borrow)]
    Upsert(Upsert<'a>),
    /// A record to drop.
    Remove(Remove),
    /// Last frame.
    Done(Done),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peek_protocol_reads_only_the_version() {
        let mut buf = [0u8; 64];
        let hello = Request::Hello(Hello {
            protocol: 300,
            schema_hash: 1,
            batch_id: 2,
            cursor: None,
            mode: Mode::Full,
        });
        let bytes = postcard::to_slice(&hello, &mut buf).unwrap();
        assert_eq!(peek_protocol(bytes), Some(300));
        // A later Hello with unknown trailing fields still shows its version.
        assert_eq!(peek_protocol(&[0, 2, 0xff, 0xff]), Some(2));
        assert_eq!(peek_protocol(&[2, 1]), None);
        assert_eq!(peek_protocol(&[]), None);
    }
}
