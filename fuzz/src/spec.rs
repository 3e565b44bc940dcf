//! Structured inputs: request and reply streams described with `arbitrary`, encoded to real
//! frames, then mutated at the frame and byte level.
//!
//! Ids are drawn from small ranges so that changes and replies hit records that exist (in the
//! harnesses' seeded stores) and collide with each other; every "wrong" choice (bad hash,
//! unsorted tables, wrong count, ...) is rare, so most structured streams pass the stream
//! checks and reach the store.

use arbitrary::{Arbitrary, Unstructured};
use ferrysync_core::body::{self, Value};
use ferrysync_core::frame::{encode, DEFAULT_MAX_FRAME};
use ferrysync_core::pack::Packer;
use ferrysync_core::schema::{FieldType, Schema, TableDef};
use ferrysync_core::wire::{
    Accepted, Change, Done, End, Hello, Mapping, Mode, Op, RejectReason, Rejected, Remove, Reply,
    Request, Upsert, PROTOCOL_VERSION,
};
use ferrysync_core::{Hlc, LocalId, RecordRef, ServerId, TableId};

const N: usize = 1024;

/// Server time the harnesses run at (ms since the epoch).
pub const NOW_MS: u64 = 1_700_000_000_000;

/// A small id (most of the time) or any id.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum IdSpec {
    /// An id in 0..8.
    Small(u8),
    /// Any id.
    Raw(u64),
}

impl IdSpec {
    fn get(self) -> u64 {
        match self {
            IdSpec::Small(b) => u64::from(b % 8),
            IdSpec::Raw(v) => v,
        }
    }
}

/// A record reference.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum KeySpec {
    /// `RecordRef::Local`.
    Local(IdSpec),
    /// `RecordRef::Server`.
    Server(IdSpec),
}

impl KeySpec {
    fn get(self) -> RecordRef {
        match self {
            KeySpec::Local(i) => RecordRef::Local(LocalId(i.get() as u32)),
            KeySpec::Server(i) => RecordRef::Server(ServerId(i.get())),
        }
    }
}

/// A clock stamp near the harnesses' times, or anything.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum HlcSpec {
    /// `NOW_MS - 10_000 + 1000 * k`, counter, device.
    Near(u8, u8, u8),
    /// Any stamp.
    Raw(u64, u32, u32),
}

impl HlcSpec {
    fn get(self) -> Hlc {
        match self {
            HlcSpec::Near(k, c, d) => Hlc::new(
                NOW_MS - 10_000 + 1000 * u64::from(k % 32),
                u32::from(c % 4),
                u32::from(d % 4),
            ),
            HlcSpec::Raw(w, c, d) => Hlc::new(w, c, d),
        }
    }
}

/// A record body: valid for its table (from a few strings and numbers), or raw bytes.
#[derive(Arbitrary, Debug, Clone)]
pub enum BodySpec {
    /// Fields made from these values, in order, as the table's types need.
    Valid(Vec<String>, i64, bool),
    /// Any bytes.
    Raw(Vec<u8>),
}

impl BodySpec {
    /// The body bytes for `table` (raw bytes when the table is unknown).
    pub fn bytes(&self, table: Option<&TableDef<'_>>) -> Vec<u8> {
        match (self, table) {
            (BodySpec::Valid(texts, n, flag), Some(t)) => {
                let texts: Vec<String> =
                    texts.iter().map(|s| s.chars().take(40).collect()).collect();
                let values: Vec<Value<'_>> = t
                    .fields
                    .iter()
                    .enumerate()
                    .map(|(i, f)| {
                        if f.optional && *flag {
                            return Value::Null;
                        }
                        match f.ty {
                            FieldType::Bool => Value::Bool(*flag),
                            FieldType::I64 => Value::I64(*n),
                            FieldType::U64 => Value::U64(n.unsigned_abs()),
                            FieldType::F64 => Value::F64(*n as f64 / 8.0),
                            FieldType::Text => Value::Text(texts.get(i).map_or("", |s| s)),
                            FieldType::Bytes => {
                                Value::Bytes(texts.get(i).map_or(&b""[..], |s| s.as_bytes()))
                            }
                        }
                    })
                    .collect();
                let mut buf = [0u8; 900];
                body::encode(t, &values, &mut buf)
                    .map(|b| b.to_vec())
                    .unwrap_or_default()
            }
            (BodySpec::Valid(texts, _, _), None) => texts.concat().into_bytes(),
            (BodySpec::Raw(b), _) => b.iter().copied().take(900).collect(),
        }
    }
}

/// One `Change` of a request.
#[derive(Arbitrary, Debug, Clone)]
pub struct ChangeSpec {
    /// Table: `table % 3`, so table 2 is unknown to the example schema.
    pub table: u8,
    /// Op.
    pub op: OpSpec,
    /// Key.
    pub key: KeySpec,
    /// Parent (a `None` on a detail, or a `Some` on a master, is a bad key).
    pub parent: Option<KeySpec>,
    /// Clock.
    pub at: HlcSpec,
    /// Body.
    pub body: BodySpec,
}

/// `Op`, derivable.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum OpSpec {
    /// Add.
    Add,
    /// Update.
    Update,
    /// Delete.
    Delete,
}

impl OpSpec {
    fn get(self) -> Op {
        match self {
            OpSpec::Add => Op::Add,
            OpSpec::Update => Op::Update,
            OpSpec::Delete => Op::Delete,
        }
    }
}

/// Frame-level and byte-level damage applied after encoding.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Mutation {
    /// Drop frame `i % frames`.
    DropFrame(u8),
    /// Send frame `i % frames` twice.
    DupFrame(u8),
    /// Swap two frames.
    SwapFrames(u8, u8),
    /// XOR one byte of the stream with `x | 1`.
    Flip(u16, u8),
    /// Cut the stream at this position.
    Truncate(u16),
    /// Insert a byte.
    Insert(u16, u8),
}

/// A request stream.
#[derive(Arbitrary, Debug, Clone)]
pub struct RequestSpec {
    /// Which seeded device sends it (`% 2`).
    pub device: u8,
    /// `0xff` = wrong protocol, `0xfe` = wrong schema hash.
    pub hello_fault: u8,
    /// Batch id.
    pub batch_id: u64,
    /// Cursor.
    pub cursor: Option<u64>,
    /// Full mode.
    pub full: bool,
    /// Changes (sorted by table unless `unsorted`).
    pub changes: Vec<ChangeSpec>,
    /// Keep the changes in the given order.
    pub unsorted: bool,
    /// Pack the changes into batch frames (as devices send them) instead of one frame each.
    pub batched: bool,
    /// `0xff` = no `End`, `0xfe` = a count one too high, `0xfd` = one too low.
    pub end: u8,
    /// The mutations apply when this is below 64 (a quarter of the inputs).
    pub damage: u8,
    /// Applied in order after encoding.
    pub mutations: Vec<Mutation>,
    /// Chunk sizes for the transport (each `+1`).
    pub chunking: Vec<u8>,
}

/// The declared count for a fault byte (`None`: no last frame).
fn declared(n: usize, fault: u8) -> Option<u32> {
    let n = n as u32;
    match fault {
        0xff => None,
        0xfe => Some(n.wrapping_add(1)),
        0xfd => Some(n.wrapping_sub(1)),
        _ => Some(n),
    }
}

impl RequestSpec {
    /// The request's messages as frames.
    pub fn frames(&self, schema: &Schema<'_>) -> Vec<Vec<u8>> {
        let mut changes = self.changes.clone();
        if !self.unsorted {
            changes.sort_by_key(|c| c.table % 3);
        }
        let mut frames = Vec::new();
        let hello = Hello {
            protocol: if self.hello_fault == 0xff {
                PROTOCOL_VERSION + 1
            } else {
                PROTOCOL_VERSION
            },
            schema_hash: if self.hello_fault == 0xfe {
                schema.hash() ^ 1
            } else {
                schema.hash()
            },
            batch_id: self.batch_id,
            cursor: self.cursor,
            mode: if self.full { Mode::Full } else { Mode::Delta },
        };
        frames.push(frame(&Request::Hello(hello)));
        let mut pack = Box::new(Packer::<DEFAULT_MAX_FRAME>::new());
        for c in &changes {
            let table = TableId(c.table % 3);
            let body = c.body.bytes(schema.table(table));
            let op = c.op.get();
            let change = Change {
                table,
                op,
                key: c.key.get(),
                parent: c.parent.map(KeySpec::get),
                modified_at: c.at.get(),
                body: if op == Op::Delete { &[] } else { &body },
            };
            if !self.batched {
                frames.push(frame(&Request::Change(change)));
                continue;
            }
            loop {
                match pack.change(&change) {
                    Ok(Some(f)) => frames.push(f.to_vec()),
                    Ok(None) => break,
                    Err(_) => {
                        // Too large for a frame: sent alone (and refused as too large).
                        frames.extend(flush(&mut pack));
                        frames.push(frame(&Request::Change(change)));
                        break;
                    }
                }
            }
        }
        frames.extend(flush(&mut pack));
        if let Some(count) = declared(changes.len(), self.end) {
            frames.push(frame(&Request::End(End { count })));
        }
        frames
    }

    /// The request's bytes after the mutations.
    pub fn bytes(&self, schema: &Schema<'_>) -> Vec<u8> {
        let m: &[Mutation] = if self.damage < 64 {
            &self.mutations
        } else {
            &[]
        };
        mutate(self.frames(schema), m)
    }

    /// Chunk sizes.
    pub fn chunk_sizes(&self) -> Vec<usize> {
        self.chunking
            .iter()
            .take(7)
            .map(|&b| b as usize + 1)
            .collect()
    }
}

/// One reply frame between `Accepted` and `Done`.
#[derive(Arbitrary, Debug, Clone)]
pub enum ReplyItemSpec {
    /// A mapping.
    Mapping(u8, IdSpec, IdSpec),
    /// A rejection.
    Rejected(u8, OpSpec, KeySpec, u8, Vec<u8>),
    /// Full refresh.
    Reset,
    /// A record.
    Upsert(u8, IdSpec, Option<IdSpec>, HlcSpec, BodySpec),
    /// A removal.
    Remove(u8, IdSpec),
}

impl ReplyItemSpec {
    /// Reply sections: mappings, rejections, reset, records.
    fn section(&self) -> u8 {
        match self {
            ReplyItemSpec::Mapping(..) => 0,
            ReplyItemSpec::Rejected(..) => 1,
            ReplyItemSpec::Reset => 2,
            ReplyItemSpec::Upsert(t, ..) => 3 + t % 3,
            ReplyItemSpec::Remove(..) => 3,
        }
    }
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

/// A reply stream.
#[derive(Arbitrary, Debug, Clone)]
pub struct ReplySpec {
    /// `0xff` = another batch.
    pub accepted_fault: u8,
    /// Server time.
    pub server_time: HlcSpec,
    /// Frames between `Accepted` and `Done` (put in section order unless `unsorted`).
    pub items: Vec<ReplyItemSpec>,
    /// Keep the items in the given order.
    pub unsorted: bool,
    /// Pack mappings, upserts and removes into batch frames (as the server sends them).
    pub batched: bool,
    /// `0xff` = no `Done`, `0xfe` = a count one too high, `0xfd` = one too low.
    pub done: u8,
    /// Cursor.
    pub cursor: u64,
    /// The mutations apply when this is below 64 (a quarter of the inputs).
    pub damage: u8,
    /// Applied in order after encoding.
    pub mutations: Vec<Mutation>,
    /// Chunk sizes for the transport (each `+1`).
    pub chunking: Vec<u8>,
}

impl ReplySpec {
    /// The reply's messages as frames, for batch `batch_id`.
    pub fn frames(&self, schema: &Schema<'_>, batch_id: u64) -> Vec<Vec<u8>> {
        let mut items = self.items.clone();
        if !self.unsorted {
            items.sort_by_key(ReplyItemSpec::section);
            // At most one Reset.
            let mut seen = false;
            items.retain(|i| {
                !matches!(i, ReplyItemSpec::Reset) || !std::mem::replace(&mut seen, true)
            });
        }
        let mut frames = Vec::new();
        let batch = if self.accepted_fault == 0xff {
            batch_id ^ 1
        } else {
            batch_id
        };
        frames.push(frame(&Reply::Accepted(Accepted {
            batch_id: batch,
            server_time: self.server_time.get().wall_ms,
        })));
        let mut pack = Box::new(Packer::<DEFAULT_MAX_FRAME>::new());
        for item in &items {
            let body;
            let msg = match item {
                ReplyItemSpec::Mapping(t, l, s) => Reply::Mapping(Mapping {
                    table: TableId(t % 3),
                    local: LocalId(l.get() as u32),
                    server: ServerId(s.get()),
                }),
                ReplyItemSpec::Rejected(t, op, key, reason, b) => {
                    body = b.iter().copied().take(900).collect::<Vec<u8>>();
                    Reply::Rejected(Rejected {
                        table: TableId(t % 3),
                        op: op.get(),
                        key: key.get(),
                        reason: REASONS[*reason as usize % REASONS.len()],
                        body: &body,
                    })
                }
                ReplyItemSpec::Reset => Reply::Reset,
                ReplyItemSpec::Upsert(t, id, parent, at, b) => {
                    let table = TableId(t % 3);
                    body = b.bytes(schema.table(table));
                    Reply::Upsert(Upsert {
                        table,
                        id: ServerId(id.get()),
                        parent: parent.map(|p| ServerId(p.get())),
                        modified_at: at.get(),
                        body: &body,
                    })
                }
                ReplyItemSpec::Remove(t, id) => Reply::Remove(Remove {
                    table: TableId(t % 3),
                    id: ServerId(id.get()),
                }),
            };
            if self.batched {
                let packed = pack.reply(&msg, &mut |f| {
                    frames.push(f.to_vec());
                    Ok::<(), ()>(())
                });
                if packed.is_ok() {
                    continue;
                }
                // Too large for a frame: sent alone (and refused as too large).
                frames.extend(flush(&mut pack));
            }
            frames.push(frame(&msg));
        }
        frames.extend(flush(&mut pack));
        if let Some(count) = declared(items.len(), self.done) {
            frames.push(frame(&Reply::Done(Done {
                cursor: self.cursor,
                count,
            })));
        }
        frames
    }

    /// The reply's bytes after the mutations.
    pub fn bytes(&self, schema: &Schema<'_>, batch_id: u64) -> Vec<u8> {
        let m: &[Mutation] = if self.damage < 64 {
            &self.mutations
        } else {
            &[]
        };
        mutate(self.frames(schema, batch_id), m)
    }

    /// Chunk sizes.
    pub fn chunk_sizes(&self) -> Vec<usize> {
        self.chunking
            .iter()
            .take(7)
            .map(|&b| b as usize + 1)
            .collect()
    }
}

/// One message as a frame (empty if it does not fit, which the specs avoid).
/// The open batch of `pack` as a frame, if any.
fn flush(pack: &mut Packer<DEFAULT_MAX_FRAME>) -> Option<Vec<u8>> {
    pack.flush().ok().flatten().map(<[u8]>::to_vec)
}

pub fn frame<M: serde::Serialize>(msg: &M) -> Vec<u8> {
    let mut buf = [0u8; N];
    encode(msg, &mut buf)
        .map(|f| f.to_vec())
        .unwrap_or_default()
}

/// Applies frame- then byte-level mutations.
pub fn mutate(mut frames: Vec<Vec<u8>>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let n = frames.len();
        if n == 0 {
            break;
        }
        match *m {
            Mutation::DropFrame(i) => {
                frames.remove(i as usize % n);
            }
            Mutation::DupFrame(i) => {
                let f = frames[i as usize % n].clone();
                frames.insert(i as usize % n, f);
            }
            Mutation::SwapFrames(a, b) => frames.swap(a as usize % n, b as usize % n),
            _ => {}
        }
    }
    let mut bytes = frames.concat();
    for m in mutations {
        let len = bytes.len();
        match *m {
            Mutation::Flip(p, x) if len > 0 => bytes[p as usize % len] ^= x | 1,
            Mutation::Truncate(p) if len > 0 => bytes.truncate(p as usize % len),
            Mutation::Insert(p, b) => bytes.insert(p as usize % (len + 1), b),
            _ => {}
        }
    }
    bytes
}

/// Reads a structured spec from the rest of an input (`arbitrary` never fails on short data).
pub fn take<'a, T: Arbitrary<'a>>(data: &'a [u8]) -> Option<T> {
    T::arbitrary_take_rest(Unstructured::new(data)).ok()
}
