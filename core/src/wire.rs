//! Messages of protocol v2 (see `docs/wire-format.md` for the normative byte layout).
//!
//! A request is `Hello`, then the changed records (parent tables before child tables), then
//! `End`. A reply is `Accepted`, then mappings, `Rejected`s, an optional `Reset`, upserts and
//! removes, then `Done`. Each message travels in its own frame ([`crate::frame`]).
//!
//! Records travel in *batches*: one [`ChangeBatch`], [`MappingBatch`], [`UpsertBatch`] or
//! [`RemoveBatch`] frame carries as many records of one table as fit, each item delta-encoded
//! against the one before it (ids and clocks), so ids, metadata and framing cost a few bytes
//! per record instead of a frame each ([`crate::pack::Packer`] fills them). The single-record
//! messages (`Change`, `Mapping`, `Upsert`, `Remove`) remain valid. Readers expand every
//! message into single-record messages with [`Request::items`] and [`Reply::items`]: the
//! stream rules and the apply logic only ever see those. Bodies are borrowed from the frame
//! buffer: decoding copies nothing.

use crate::frame::MessageError;
use crate::hlc::Hlc;
use crate::id::{LocalId, RecordRef, ServerId, TableId};
use core::fmt;
use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks (2: v1 plus record batches; 3: batch items carry
/// their clock counter as a delta, which compresses).
pub const PROTOCOL_VERSION: u16 = 3;

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
    #[serde(borrow, with = "serde_bytes")]
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
    /// Several changed records of one table and op.
    #[serde(borrow)]
    Changes(ChangeBatch<'a>),
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
    #[serde(borrow, with = "serde_bytes")]
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
    #[serde(borrow, with = "serde_bytes")]
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
    /// Several new records' server ids, of one table.
    #[serde(borrow)]
    Mappings(MappingBatch<'a>),
    /// Several records to store, of one table.
    #[serde(borrow)]
    Upserts(UpsertBatch<'a>),
    /// Several records to drop, of one table.
    #[serde(borrow)]
    Removes(RemoveBatch<'a>),
}

/// Changed records of one table and op, in one frame: `items` is a sequence of
/// [`ChangeItem`]s read with [`Request::items`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeBatch<'a> {
    /// Table of every record.
    pub table: TableId,
    /// What happened to every record.
    pub op: Op,
    /// Whether every key is a local id (an add; a delete of a record never synced) rather
    /// than a server id.
    pub local: bool,
    /// The encoded items, back to back.
    #[serde(borrow, with = "serde_bytes")]
    pub items: &'a [u8],
}

/// New records' server ids, of one table: a sequence of [`MappingItem`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingBatch<'a> {
    /// Table of every record.
    pub table: TableId,
    /// The encoded items, back to back.
    #[serde(borrow, with = "serde_bytes")]
    pub items: &'a [u8],
}

/// Records to store, of one table: a sequence of [`UpsertItem`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpsertBatch<'a> {
    /// Table of every record.
    pub table: TableId,
    /// The encoded items, back to back.
    #[serde(borrow, with = "serde_bytes")]
    pub items: &'a [u8],
}

/// Records to drop, of one table: a sequence of [`RemoveItem`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveBatch<'a> {
    /// Table of every record.
    pub table: TableId,
    /// The encoded items, back to back.
    #[serde(borrow, with = "serde_bytes")]
    pub items: &'a [u8],
}

/// The parent of a [`ChangeItem`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParentItem {
    /// A master record: no parent.
    None,
    /// A parent known by its local id.
    Local(u32),
    /// A parent known by its server id.
    Server(u64),
}

/// One record of a [`ChangeBatch`]. Deltas are wrapping differences from the previous item of
/// the same batch (from 0 for the first), zigzag-encoded by postcard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeItem<'a> {
    /// Key delta: the key is a local id (it must fit 32 bits) when the batch says so, a server
    /// id otherwise.
    pub key: i64,
    /// The parent, for a detail.
    pub parent: ParentItem,
    /// Delta of the clock's `wall_ms`.
    pub wall: i64,
    /// Delta of the clock's counter (the counter must fit 32 bits). The device part is not
    /// sent: the server stamps the sender's id.
    pub counter: i64,
    /// The record's fields; empty for a delete.
    #[serde(borrow, with = "serde_bytes")]
    pub body: &'a [u8],
}

/// One record of a [`MappingBatch`] (deltas as in [`ChangeItem`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingItem {
    /// Local id delta (the id must fit 32 bits).
    pub local: i64,
    /// Server id delta.
    pub server: i64,
}

/// One record of an [`UpsertBatch`] (deltas as in [`ChangeItem`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpsertItem<'a> {
    /// Server id delta.
    pub id: i64,
    /// Delta of the parent's server id from the previous item's parent, for a detail.
    pub parent: Option<i64>,
    /// Delta of the clock's `wall_ms`.
    pub wall: i64,
    /// Delta of the clock's counter (the counter must fit 32 bits).
    pub counter: i64,
    /// The clock's device.
    pub device: u32,
    /// The record's fields.
    #[serde(borrow, with = "serde_bytes")]
    pub body: &'a [u8],
}

/// One record of a [`RemoveBatch`] (delta as in [`ChangeItem`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveItem {
    /// Server id delta.
    pub id: i64,
}

/// The running values a batch's deltas are taken from; all start at 0 in each batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Chain {
    id: u64,
    other: u64,
    wall: u64,
    counter: u64,
}

fn delta(prev: &mut u64, v: u64) -> i64 {
    let d = v.wrapping_sub(*prev) as i64;
    *prev = v;
    d
}

fn undelta(prev: &mut u64, d: i64) -> u64 {
    *prev = prev.wrapping_add(d as u64);
    *prev
}

/// A clock counter from its running value: it must fit 32 bits.
fn counter(v: u64) -> Result<u32, MessageError> {
    u32::try_from(v).map_err(|_| MessageError::BadVarint)
}

fn local_id(v: u64) -> Result<LocalId, MessageError> {
    u32::try_from(v)
        .map(LocalId)
        .map_err(|_| MessageError::BadVarint)
}

impl Chain {
    pub(crate) const fn new() -> Self {
        Chain {
            id: 0,
            other: 0,
            wall: 0,
            counter: 0,
        }
    }

    pub(crate) fn change_item<'b>(&mut self, c: &Change<'b>) -> ChangeItem<'b> {
        let key = match c.key {
            RecordRef::Local(l) => u64::from(l.0),
            RecordRef::Server(s) => s.0,
        };
        ChangeItem {
            key: delta(&mut self.id, key),
            parent: match c.parent {
                None => ParentItem::None,
                Some(RecordRef::Local(l)) => ParentItem::Local(l.0),
                Some(RecordRef::Server(s)) => ParentItem::Server(s.0),
            },
            wall: delta(&mut self.wall, c.modified_at.wall_ms),
            counter: delta(&mut self.counter, u64::from(c.modified_at.counter)),
            body: c.body,
        }
    }

    fn change<'b>(
        &mut self,
        b: &ChangeBatch<'_>,
        it: ChangeItem<'b>,
    ) -> Result<Change<'b>, MessageError> {
        let key = undelta(&mut self.id, it.key);
        let key = if b.local {
            RecordRef::Local(local_id(key)?)
        } else {
            RecordRef::Server(ServerId(key))
        };
        Ok(Change {
            table: b.table,
            op: b.op,
            key,
            parent: match it.parent {
                ParentItem::None => None,
                ParentItem::Local(l) => Some(RecordRef::Local(LocalId(l))),
                ParentItem::Server(s) => Some(RecordRef::Server(ServerId(s))),
            },
            modified_at: Hlc::new(
                undelta(&mut self.wall, it.wall),
                counter(undelta(&mut self.counter, it.counter))?,
                0,
            ),
            body: it.body,
        })
    }

    pub(crate) fn mapping_item(&mut self, m: &Mapping) -> MappingItem {
        MappingItem {
            local: delta(&mut self.id, u64::from(m.local.0)),
            server: delta(&mut self.other, m.server.0),
        }
    }

    fn mapping(&mut self, table: TableId, it: MappingItem) -> Result<Mapping, MessageError> {
        Ok(Mapping {
            table,
            local: local_id(undelta(&mut self.id, it.local))?,
            server: ServerId(undelta(&mut self.other, it.server)),
        })
    }

    pub(crate) fn upsert_item<'b>(&mut self, u: &Upsert<'b>) -> UpsertItem<'b> {
        UpsertItem {
            id: delta(&mut self.id, u.id.0),
            parent: u.parent.map(|p| delta(&mut self.other, p.0)),
            wall: delta(&mut self.wall, u.modified_at.wall_ms),
            counter: delta(&mut self.counter, u64::from(u.modified_at.counter)),
            device: u.modified_at.device,
            body: u.body,
        }
    }

    fn upsert<'b>(
        &mut self,
        table: TableId,
        it: UpsertItem<'b>,
    ) -> Result<Upsert<'b>, MessageError> {
        Ok(Upsert {
            table,
            id: ServerId(undelta(&mut self.id, it.id)),
            parent: it.parent.map(|d| ServerId(undelta(&mut self.other, d))),
            modified_at: Hlc::new(
                undelta(&mut self.wall, it.wall),
                counter(undelta(&mut self.counter, it.counter))?,
                it.device,
            ),
            body: it.body,
        })
    }

    pub(crate) fn remove_item(&mut self, r: &Remove) -> RemoveItem {
        RemoveItem {
            id: delta(&mut self.id, r.id.0),
        }
    }

    fn remove(&mut self, table: TableId, it: RemoveItem) -> Remove {
        Remove {
            table,
            id: ServerId(undelta(&mut self.id, it.id)),
        }
    }
}

/// Takes one item off the front of `rest`.
fn take<'a, T: Deserialize<'a>>(rest: &mut &'a [u8]) -> Result<T, MessageError> {
    let (item, tail) = postcard::take_from_bytes::<T>(rest).map_err(MessageError::from_postcard)?;
    *rest = tail;
    Ok(item)
}

/// The single-record messages of one request message: itself, or a batch's records.
/// After an error it yields nothing more.
#[derive(Clone, Debug)]
pub struct RequestItems<'a> {
    single: Option<Request<'a>>,
    batch: Option<ChangeBatch<'a>>,
    rest: &'a [u8],
    chain: Chain,
}

impl<'a> Iterator for RequestItems<'a> {
    type Item = Result<Request<'a>, MessageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(m) = self.single.take() {
            return Some(Ok(m));
        }
        let b = self.batch?;
        if self.rest.is_empty() {
            self.batch = None;
            return None;
        }
        let item = take::<ChangeItem<'a>>(&mut self.rest).and_then(|it| self.chain.change(&b, it));
        if item.is_err() {
            self.batch = None;
        }
        Some(item.map(Request::Change))
    }
}

impl<'a> Request<'a> {
    /// This message as single-record messages: a [`ChangeBatch`] becomes its `Change`s, any
    /// other message itself.
    pub fn items(&self) -> RequestItems<'a> {
        match *self {
            Request::Changes(b) => RequestItems {
                single: None,
                batch: Some(b),
                rest: b.items,
                chain: Chain::default(),
            },
            m => RequestItems {
                single: Some(m),
                batch: None,
                rest: &[],
                chain: Chain::default(),
            },
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum ReplyBatch {
    Mappings(TableId),
    Upserts(TableId),
    Removes(TableId),
}

/// The single-record messages of one reply message: itself, or a batch's records.
/// After an error it yields nothing more.
#[derive(Clone, Debug)]
pub struct ReplyItems<'a> {
    single: Option<Reply<'a>>,
    batch: Option<ReplyBatch>,
    rest: &'a [u8],
    chain: Chain,
}

impl<'a> Iterator for ReplyItems<'a> {
    type Item = Result<Reply<'a>, MessageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(m) = self.single.take() {
            return Some(Ok(m));
        }
        let b = self.batch?;
        if self.rest.is_empty() {
            self.batch = None;
            return None;
        }
        let item = match b {
            ReplyBatch::Mappings(t) => take::<MappingItem>(&mut self.rest)
                .and_then(|it| self.chain.mapping(t, it))
                .map(Reply::Mapping),
            ReplyBatch::Upserts(t) => take::<UpsertItem<'a>>(&mut self.rest)
                .and_then(|it| self.chain.upsert(t, it))
                .map(Reply::Upsert),
            ReplyBatch::Removes(t) => {
                take::<RemoveItem>(&mut self.rest).map(|it| Reply::Remove(self.chain.remove(t, it)))
            }
        };
        if item.is_err() {
            self.batch = None;
        }
        Some(item)
    }
}

impl<'a> Reply<'a> {
    /// This message as single-record messages: a batch becomes its `Mapping`s, `Upsert`s or
    /// `Remove`s, any other message itself.
    pub fn items(&self) -> ReplyItems<'a> {
        let (batch, rest) = match *self {
            Reply::Mappings(b) => (ReplyBatch::Mappings(b.table), b.items),
            Reply::Upserts(b) => (ReplyBatch::Upserts(b.table), b.items),
            Reply::Removes(b) => (ReplyBatch::Removes(b.table), b.items),
            m => {
                return ReplyItems {
                    single: Some(m),
                    batch: None,
                    rest: &[],
                    chain: Chain::default(),
                }
            }
        };
        ReplyItems {
            single: None,
            batch: Some(batch),
            rest,
            chain: Chain::default(),
        }
    }
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
