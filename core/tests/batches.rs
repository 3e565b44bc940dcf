//! Batches: records packed by `pack::Packer` come back, in order and unchanged, from
//! `Request::items` / `Reply::items`; every frame respects the maximum frame size; a record
//! that fits a frame alone always fits a batch; damaged batches are errors, never panics.

use ferrysync_core::frame::{FrameDecoder, MessageError, DEFAULT_MAX_FRAME};
use ferrysync_core::pack::Packer;
use ferrysync_core::wire::{Change, ChangeBatch, Mapping, Op, Remove, Reply, Request, Upsert};
use ferrysync_core::{Hlc, LocalId, RecordRef, ServerId, TableId};
use proptest::prelude::*;

const N: usize = DEFAULT_MAX_FRAME;

#[derive(Clone, Debug)]
struct C {
    table: u8,
    op: Op,
    /// Keyed by local id (an add, or a delete of a record never synced).
    local: bool,
    key: u64,
    parent: Option<(bool, u64)>,
    wall: u64,
    counter: u32,
    body: Vec<u8>,
}

impl C {
    fn change(&self) -> Change<'_> {
        let key = if self.local {
            RecordRef::Local(LocalId(self.key as u32))
        } else {
            RecordRef::Server(ServerId(self.key))
        };
        Change {
            table: TableId(self.table),
            op: self.op,
            key,
            parent: self.parent.map(|(server, id)| {
                if server {
                    RecordRef::Server(ServerId(id))
                } else {
                    RecordRef::Local(LocalId(id as u32))
                }
            }),
            // The device part of a batched change is not sent (the server stamps it).
            modified_at: Hlc::new(self.wall, self.counter, 0),
            body: &self.body,
        }
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![Just(Op::Add), Just(Op::Update), Just(Op::Delete)]
}

fn id() -> impl Strategy<Value = u64> {
    prop_oneof![0..300u64, any::<u32>().prop_map(u64::from), any::<u64>()]
}

fn changes() -> impl Strategy<Value = Vec<C>> {
    let c = (
        0..3u8,
        op(),
        id(),
        proptest::option::of((any::<bool>(), id())),
        prop_oneof![1_700_000_000_000..1_700_000_100_000u64, any::<u64>()],
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(table, op, key, parent, wall, counter, body)| {
            // Adds are keyed by local id, updates by server id, deletes by either.
            let local = op == Op::Add || (op == Op::Delete && key % 2 == 0);
            let key = if local { key as u32 as u64 } else { key };
            let parent = parent.map(|(s, p)| (s, if s { p } else { p as u32 as u64 }));
            C {
                table,
                op,
                local,
                key,
                parent,
                wall,
                counter,
                body,
            }
        });
    proptest::collection::vec(c, 0..120)
}

/// A decoded change, owned.
type Owned = (TableId, Op, RecordRef, Option<RecordRef>, Hlc, Vec<u8>);

/// Packs `cs` the way the engine does; returns the frames.
fn pack_changes(cs: &[C]) -> Vec<Vec<u8>> {
    let mut p = Box::new(Packer::<N>::new());
    let mut frames = Vec::new();
    for c in cs {
        while let Some(f) = p.change(&c.change()).unwrap() {
            frames.push(f.to_vec());
        }
    }
    frames.extend(p.flush().unwrap().map(<[u8]>::to_vec));
    frames
}

fn decode_requests(frames: &[Vec<u8>]) -> Vec<Owned> {
    let mut dec = Box::new(FrameDecoder::<N>::new());
    let mut out = Vec::new();
    for f in frames {
        assert!(f.len() <= N, "frame of {} bytes", f.len());
        let fed = dec.feed::<Request<'_>>(f);
        assert_eq!(fed.consumed, f.len());
        let msg = fed.result.unwrap().unwrap();
        assert!(matches!(msg, Request::Changes(_)));
        for item in msg.items() {
            let Request::Change(c) = item.unwrap() else {
                panic!("a change batch yields changes")
            };
            out.push((
                c.table,
                c.op,
                c.key,
                c.parent,
                c.modified_at,
                c.body.to_vec(),
            ));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn changes_round_trip(cs in changes()) {
        let frames = pack_changes(&cs);
        let got = decode_requests(&frames);
        let want: Vec<_> = cs
            .iter()
            .map(|c| {
                let x = c.change();
                (x.table, x.op, x.key, x.parent, x.modified_at, x.body.to_vec())
            })
            .collect();
        prop_assert_eq!(got, want);
        // Batches are filled: fewer frames than records once records are small.
        if cs.len() > 20 && cs.iter().all(|c| c.body.len() < 40 && c.table == 0 && c.op == Op::Add) {
            prop_assert!(frames.len() * 4 < cs.len());
        }
    }

    #[test]
    fn reply_records_round_trip(
        ups in proptest::collection::vec(
            (0..2u8, id(), proptest::option::of(id()), any::<u64>(), any::<u32>(), any::<u32>(),
             proptest::collection::vec(any::<u8>(), 0..200)),
            0..80),
        maps in proptest::collection::vec((0..2u8, any::<u32>(), id()), 0..80),
        rems in proptest::collection::vec((0..2u8, id()), 0..80),
    ) {
        let mut p = Box::new(Packer::<N>::new());
        let mut frames: Vec<Vec<u8>> = Vec::new();
        let mut want: Vec<String> = Vec::new();
        for (t, l, s) in &maps {
            let m = Mapping { table: TableId(*t), local: LocalId(*l), server: ServerId(*s) };
            want.push(format!("{:?}", Reply::Mapping(m)));
            while let Some(f) = p.mapping(&m).unwrap() { frames.push(f.to_vec()); }
        }
        for (t, id, parent, wall, counter, device, body) in &ups {
            let u = Upsert {
                table: TableId(*t),
                id: ServerId(*id),
                parent: parent.map(ServerId),
                modified_at: Hlc::new(*wall, *counter, *device),
                body,
            };
            want.push(format!("{:?}", Reply::Upsert(u)));
            while let Some(f) = p.upsert(&u).unwrap() { frames.push(f.to_vec()); }
        }
        for (t, id) in &rems {
            let r = Remove { table: TableId(*t), id: ServerId(*id) };
            want.push(format!("{:?}", Reply::Remove(r)));
            while let Some(f) = p.remove(&r).unwrap() { frames.push(f.to_vec()); }
        }
        frames.extend(p.flush().unwrap().map(<[u8]>::to_vec));
        let mut dec = Box::new(FrameDecoder::<N>::new());
        let mut got = Vec::new();
        for f in &frames {
            prop_assert!(f.len() <= N);
            let msg = dec.feed::<Reply<'_>>(f).result.unwrap().unwrap();
            for item in msg.items() {
                got.push(format!("{:?}", item.unwrap()));
            }
        }
        prop_assert_eq!(got, want);
    }

    /// Cutting a batch's items anywhere gives an error or fewer records, never a panic.
    #[test]
    fn cut_items_are_errors(cs in changes(), cut in any::<prop::sample::Index>()) {
        let mut p = Box::new(Packer::<N>::new());
        let Some(c) = cs.first() else { return Ok(()) };
        prop_assert!(p.change(&c.change()).unwrap().is_none());
        let frame = p.flush().unwrap().unwrap().to_vec();
        let mut dec = Box::new(FrameDecoder::<N>::new());
        let Request::Changes(b) = dec.feed::<Request<'_>>(&frame).result.unwrap().unwrap() else {
            panic!("a batch");
        };
        let at = cut.index(b.items.len().max(1));
        let short = Request::Changes(ChangeBatch { items: &b.items[..at], ..b });
        let items: Vec<_> = short.items().collect();
        if at == 0 {
            // An empty batch carries no record.
            prop_assert!(items.is_empty());
        } else if at < b.items.len() {
            prop_assert!(items.len() == 1 && items[0].is_err(), "{:?}", items);
        }
    }
}

/// A body of 960 bytes with the longest ids and clock fits one frame, alone in its batch.
#[test]
fn largest_body_fits() {
    let body = vec![0x41u8; 960];
    let c = Change {
        table: TableId(255),
        op: Op::Update,
        key: RecordRef::Server(ServerId(u64::MAX)),
        parent: Some(RecordRef::Server(ServerId(u64::MAX / 3))),
        modified_at: Hlc::new(u64::MAX / 5, u32::MAX, 0),
        body: &body,
    };
    let mut p = Box::new(Packer::<N>::new());
    assert!(p.change(&c).unwrap().is_none());
    let f = p.flush().unwrap().unwrap();
    assert!(f.len() <= N);
    let u = Upsert {
        table: TableId(255),
        id: ServerId(u64::MAX),
        parent: Some(ServerId(u64::MAX / 3)),
        modified_at: Hlc::new(u64::MAX / 5, u32::MAX, u32::MAX),
        body: &body,
    };
    assert!(p.upsert(&u).unwrap().is_none());
    assert!(p.flush().unwrap().unwrap().len() <= N);
    // Too large alone: a clear error.
    let big = vec![0u8; N];
    let c = Change { body: &big, ..c };
    assert!(p.change(&c).is_err());
}

/// A local id that does not fit 32 bits is refused, not truncated.
#[test]
fn local_id_overflow_is_an_error() {
    // An add whose key delta is 2^32: key, parent None, wall, counter, empty body.
    let mut buf = [0u8; 32];
    let items = postcard::to_slice(&(1i64 << 32, 0u8, 0i64, 0u32, 0u8), &mut buf).unwrap();
    let b = Request::Changes(ChangeBatch {
        table: TableId(0),
        op: Op::Add,
        local: true,
        items,
    });
    let got: Vec<_> = b.items().collect();
    assert_eq!(got, vec![Err(MessageError::BadVarint)]);
}
