//! `reply_stream`: reply bytes into `engine::receive_reply` on a `MemStore`, as a device
//! applies them.
//!
//! The store is seeded once (a synced company with contacts, a pending update, a pending
//! delete, a pending add with a detail, then a request sent and two local edits made while it
//! was in flight) and cloned for every input. The reply arrives through a scripted transport
//! in chunks chosen by the input.
//!
//! Invariants:
//! - no panic;
//! - on `Err`: the store is exactly as before (records with their bodies, device state,
//!   rejected log);
//! - on `Ok`: every record's parent exists in the store, unless the record is pending; no
//!   two records of a table share a server id; every record edited while the sync was in
//!   flight is still in the store and pending, or is in the rejected log; no pending change
//!   vanished unless the reply rejected or removed it or an ancestor; the device counted one
//!   more sync.

use crate::spec::{self, NOW_MS};
use crate::{chunks, invariant, planted, split_chunking, strict};
use ferrysync_core::body::{self, Value};
use ferrysync_core::engine::{self, Outgoing};
use ferrysync_core::mem::{MemError, MemStore};
use ferrysync_core::schema::{Schema, EXAMPLE};
use ferrysync_core::store::{DeviceState, Filter, LocalStore, Record, RejectedEntry};
use ferrysync_core::wire::{Accepted, Done, Mapping, Mode, Reply};
use ferrysync_core::{track, LocalId, ServerId, TableId, Transport};
use pollster::block_on;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::OnceLock;

const N: usize = 1024;

/// A transport that plays back a reply in the given chunk sizes (and swallows the request).
pub struct Script<'a> {
    chunks: Vec<&'a [u8]>,
    next: usize,
    offset: usize,
}

impl<'a> Script<'a> {
    /// Plays `chunks` in order.
    pub fn new(chunks: Vec<&'a [u8]>) -> Self {
        Script {
            chunks,
            next: 0,
            offset: 0,
        }
    }
}

/// The scripted transport never fails.
#[derive(Debug)]
pub struct Never;

impl fmt::Display for Never {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("never")
    }
}

impl Transport for Script<'_> {
    type Error = Never;
    async fn send(&mut self, _bytes: &[u8]) -> Result<(), Never> {
        Ok(())
    }
    async fn finish(&mut self) -> Result<(), Never> {
        Ok(())
    }
    async fn receive(&mut self, buf: &mut [u8]) -> Result<usize, Never> {
        let Some(chunk) = self.chunks.get(self.next) else {
            return Ok(0);
        };
        let rest = &chunk[self.offset..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.offset += n;
        if self.offset == chunk.len() {
            self.next += 1;
            self.offset = 0;
        }
        Ok(n)
    }
}

/// A `MemStore` whose `rollback` can be made to do nothing (the planted bug).
#[derive(Clone)]
pub struct Store {
    /// The real store.
    pub mem: MemStore,
    leaky: bool,
}

impl LocalStore for Store {
    type Error = MemError;
    async fn load_state(&mut self) -> Result<DeviceState, MemError> {
        self.mem.load_state().await
    }
    async fn begin(&mut self) -> Result<(), MemError> {
        self.mem.begin().await
    }
    async fn commit(&mut self, state: &DeviceState) -> Result<(), MemError> {
        self.mem.commit(state).await
    }
    async fn rollback(&mut self) -> Result<(), MemError> {
        if self.leaky {
            return Ok(());
        }
        self.mem.rollback().await
    }
    async fn get(&mut self, t: TableId, l: LocalId) -> Result<Option<Record>, MemError> {
        self.mem.get(t, l).await
    }
    async fn get_body(
        &mut self,
        t: TableId,
        l: LocalId,
        buf: &mut [u8],
    ) -> Result<Option<usize>, MemError> {
        self.mem.get_body(t, l, buf).await
    }
    async fn by_server(&mut self, t: TableId, s: ServerId) -> Result<Option<Record>, MemError> {
        self.mem.by_server(t, s).await
    }
    async fn put(&mut self, rec: &Record, body: Option<&[u8]>) -> Result<(), MemError> {
        self.mem.put(rec, body).await
    }
    async fn remove(&mut self, t: TableId, l: LocalId) -> Result<(), MemError> {
        self.mem.remove(t, l).await
    }
    async fn next(
        &mut self,
        t: TableId,
        after: Option<LocalId>,
        f: Filter,
    ) -> Result<Option<Record>, MemError> {
        self.mem.next(t, after, f).await
    }
    async fn push_rejected(&mut self, e: &RejectedEntry, body: &[u8]) -> Result<(), MemError> {
        self.mem.push_rejected(e, body).await
    }
    async fn next_rejected(
        &mut self,
        after: Option<u32>,
        buf: &mut [u8],
    ) -> Result<Option<(RejectedEntry, usize)>, MemError> {
        self.mem.next_rejected(after, buf).await
    }
    async fn clear_rejected(&mut self) -> Result<(), MemError> {
        self.mem.clear_rejected().await
    }
}

/// Everything a device keeps, comparable.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    /// Records with bodies.
    pub records: Vec<(Record, Vec<u8>)>,
    /// Device state.
    pub state: DeviceState,
    /// Rejected log with bodies.
    pub rejected: Vec<(RejectedEntry, Vec<u8>)>,
}

/// Reads a snapshot of `store`.
pub fn snapshot(store: &mut MemStore) -> Snapshot {
    let state = block_on(store.load_state()).expect("state");
    let mut rejected = Vec::new();
    let mut after = None;
    let mut buf = vec![0u8; 4096];
    while let Some((e, n)) = block_on(store.next_rejected(after, &mut buf)).expect("rejected") {
        after = Some(e.seq);
        rejected.push((e, buf[..n].to_vec()));
    }
    Snapshot {
        records: store.records(),
        state,
        rejected,
    }
}

/// The seeded device, the request it sent, and the records edited while it was in flight.
pub struct Device {
    /// The store, as it is when the reply starts to arrive.
    pub store: MemStore,
    /// The request sent.
    pub out: Outgoing,
    /// `(table, local)` of the records edited after the request was built.
    pub in_flight: Vec<(TableId, LocalId)>,
}

fn company(name: &str) -> Vec<u8> {
    let mut buf = [0u8; 128];
    body::encode(
        &EXAMPLE.tables[0],
        &[Value::Text(name), Value::Text("Lyon"), Value::Text("1")],
        &mut buf,
    )
    .expect("body")
    .to_vec()
}

fn contact(name: &str) -> Vec<u8> {
    let mut buf = [0u8; 128];
    body::encode(
        &EXAMPLE.tables[1],
        &[Value::Text(name), Value::Text("a@b"), Value::Text("2")],
        &mut buf,
    )
    .expect("body")
    .to_vec()
}

/// A reply for `batch` holding `msgs` between `Accepted` and `Done`.
pub fn reply_bytes(batch: u64, msgs: &[Reply<'_>], cursor: u64) -> Vec<u8> {
    let mut out = spec::frame(&Reply::Accepted(Accepted {
        batch_id: batch,
        server_time: NOW_MS,
    }));
    // Records batched as the server sends them, other messages in frames of their own.
    let mut pack = Box::new(ferrysync_core::pack::Packer::<N>::new());
    for m in msgs {
        pack.reply(m, &mut |f| {
            out.extend_from_slice(f);
            Ok::<(), ()>(())
        })
        .expect("a seed message fits a frame");
    }
    if let Some(f) = pack.flush().expect("a batch fits its frame") {
        out.extend_from_slice(f);
    }
    out.extend(spec::frame(&Reply::Done(Done {
        cursor,
        count: msgs.len() as u32,
    })));
    out
}

/// Builds the seeded device (through the real engine and change-tracking API).
pub fn device() -> Device {
    let s = &EXAMPLE;
    let (co, ct) = (TableId(0), TableId(1));
    let mut m = MemStore::new();
    let t = NOW_MS - 60_000;
    let acme = block_on(track::insert(s, &mut m, co, None, &company("ACME"), t)).expect("insert");
    let ann = block_on(track::insert(
        s,
        &mut m,
        ct,
        Some(acme),
        &contact("Ann"),
        t + 1,
    ))
    .expect("insert");
    let bob = block_on(track::insert(
        s,
        &mut m,
        ct,
        Some(acme),
        &contact("Bob"),
        t + 2,
    ))
    .expect("insert");
    let globex = block_on(track::insert(
        s,
        &mut m,
        co,
        None,
        &company("Globex"),
        t + 3,
    ))
    .expect("insert");
    let cy = block_on(track::insert(
        s,
        &mut m,
        ct,
        Some(globex),
        &contact("Cy"),
        t + 4,
    ))
    .expect("insert");
    // First sync: everything mapped (company 1, 2; contacts 1, 2, 3).
    let mut tr = Script::new(Vec::new());
    let out = block_on(engine::send_request::<_, _, N>(
        s,
        &mut m,
        &mut tr,
        Mode::Full,
    ))
    .expect("send");
    let map = |table, local, server| {
        Reply::Mapping(Mapping {
            table,
            local,
            server: ServerId(server),
        })
    };
    let r = reply_bytes(
        out.batch_id,
        &[
            map(co, acme, 1),
            map(co, globex, 2),
            map(ct, ann, 1),
            map(ct, bob, 2),
            map(ct, cy, 3),
        ],
        10,
    );
    let mut tr = Script::new(vec![&r]);
    block_on(engine::receive_reply::<_, _, N>(s, &mut m, &mut tr, &out)).expect("first sync");
    // Offline: an update, a delete, a new company with a contact.
    block_on(track::update(
        s,
        &mut m,
        co,
        acme,
        &company("ACME SA"),
        t + 10,
    ))
    .expect("update");
    block_on(track::delete(s, &mut m, ct, bob, t + 11)).expect("delete");
    let initech = block_on(track::insert(
        s,
        &mut m,
        co,
        None,
        &company("Initech"),
        t + 12,
    ))
    .expect("insert");
    block_on(track::insert(
        s,
        &mut m,
        ct,
        Some(initech),
        &contact("Dee"),
        t + 13,
    ))
    .expect("insert");
    // Second sync: the request goes out...
    let mut tr = Script::new(Vec::new());
    let out = block_on(engine::send_request::<_, _, N>(
        s,
        &mut m,
        &mut tr,
        Mode::Delta,
    ))
    .expect("send");
    // ... and the user edits while it is in flight.
    block_on(track::update(s, &mut m, ct, ann, &contact("Ann B"), t + 20)).expect("update");
    let eve = block_on(track::insert(
        s,
        &mut m,
        ct,
        Some(globex),
        &contact("Eve"),
        t + 21,
    ))
    .expect("insert");
    Device {
        store: m,
        out,
        in_flight: vec![(ct, ann), (ct, eve)],
    }
}

static DEVICE: OnceLock<Device> = OnceLock::new();

/// The seeded device (built once per process).
pub fn seeded() -> &'static Device {
    DEVICE.get_or_init(device)
}

/// Applies one reply (as chunks) to a copy of the seeded device and checks every invariant.
pub fn apply(schema: &Schema<'_>, reply: &[&[u8]]) {
    let dev = seeded();
    let mut store = Store {
        mem: dev.store.clone(),
        leaky: planted("reply_stream"),
    };
    let before = snapshot(&mut store.mem);
    let mut tr = Script::new(reply.to_vec());
    let result = block_on(engine::receive_reply::<_, _, N>(
        schema, &mut store, &mut tr, &dev.out,
    ));
    let after = snapshot(&mut store.mem);
    match result {
        Err(e) => {
            crate::tally(match e {
                engine::SyncError::Frame { .. } => "err: frame",
                engine::SyncError::Stream(_) => "err: stream",
                engine::SyncError::BadRecord { .. } => "err: bad record",
                _ => "err: other",
            });
            invariant!(
                after == before,
                "a failed reply ({e:?}) changed the store:\n{before:?}\n->\n{after:?}"
            );
        }
        Ok(report) => {
            crate::tally(if report.full { "ok: full" } else { "ok: delta" });
            invariant!(
                after.state.syncs == before.state.syncs + 1,
                "syncs {} -> {}",
                before.state.syncs,
                after.state.syncs
            );
            invariant!(
                after.state.cursor == Some(report.cursor),
                "cursor not stored"
            );
            let present: BTreeSet<(TableId, LocalId)> = after
                .records
                .iter()
                .map(|(r, _)| (r.table, r.local))
                .collect();
            // Open finding (strict only for full refreshes): a full refresh that delivers a
            // detail but not its master drops the master and keeps the detail.
            let parents = strict() || !report.full;
            for (r, _) in after.records.iter().filter(|_| parents) {
                let Some(p) = r.parent else { continue };
                let pt = schema.table(r.table).and_then(|t| t.parent);
                let ok = pt.is_some_and(|pt| present.contains(&(pt, p)));
                invariant!(
                    ok || r.meta.is_pending(),
                    "record {r:?} is clean but its parent {p:?} is gone\n{after:?}"
                );
            }
            let mut servers = BTreeSet::new();
            // No two records of a table share a server id (a reply mapping onto a taken id
            // is refused whole).
            for (r, _) in &after.records {
                if let Some(s) = r.server {
                    invariant!(
                        servers.insert((r.table, s)),
                        "two records of {:?} have server id {s:?}\n{after:?}",
                        r.table
                    );
                }
            }
            unconfirmed_kept(schema, &before, &after, &reply.concat());
            for &(t, l) in &dev.in_flight {
                let kept = after
                    .records
                    .iter()
                    .any(|(r, _)| r.table == t && r.local == l && r.meta.is_pending());
                let logged = after
                    .rejected
                    .iter()
                    .any(|(e, _)| e.table == t && e.local == Some(l));
                invariant!(
                    kept || logged,
                    "the in-flight edit of {t:?} {l:?} was lost\n{after:?}"
                );
            }
        }
    }
}

/// No pending change disappears unexplained: every record that was active and pending
/// before a successful reply is still in the store, unless the reply removed it or an
/// ancestor (`Remove` of its server id, or of the id a `Mapping` gave it; or a full refresh
/// that did not deliver a record with a server id), or the rejected log holds it or an
/// ancestor (a refused add takes its details with it).
fn unconfirmed_kept(schema: &Schema<'_>, before: &Snapshot, after: &Snapshot, reply: &[u8]) {
    use ferrysync_core::frame::FrameDecoder;
    use ferrysync_core::RecordRef;
    use std::collections::BTreeMap;
    let mut removed = BTreeSet::new();
    let mut mapped = BTreeMap::new();
    let mut reset = false;
    let mut dec = FrameDecoder::<N>::new();
    let mut input = reply;
    while !input.is_empty() {
        let fed = dec.feed::<Reply<'_>>(input);
        input = &input[fed.consumed..];
        let Ok(Some(msg)) = fed.result else { continue };
        for item in msg.items() {
            match item {
                Ok(Reply::Remove(r)) => {
                    removed.insert((r.table, r.id));
                }
                Ok(Reply::Mapping(m)) => {
                    mapped.insert((m.table, m.local), m.server);
                }
                Ok(Reply::Reset) => reset = true,
                _ => {}
            }
        }
    }
    let by_local: BTreeMap<(TableId, LocalId), &Record> = before
        .records
        .iter()
        .map(|(r, _)| ((r.table, r.local), r))
        .collect();
    let present: BTreeSet<(TableId, LocalId)> = after
        .records
        .iter()
        .map(|(r, _)| (r.table, r.local))
        .collect();
    let logged = |t: TableId, l: LocalId| {
        after
            .rejected
            .iter()
            .any(|(e, _)| e.table == t && (e.local == Some(l) || e.key == RecordRef::Local(l)))
    };
    // Removed by the server: a `Remove` of its id, or a full refresh (`Reset`) that did not
    // deliver a record the server knows.
    let gone_by_server = |r: &Record| {
        let ids = [r.server, mapped.get(&(r.table, r.local)).copied()];
        ids.iter()
            .flatten()
            .any(|id| reset || removed.contains(&(r.table, *id)))
    };
    for (r, _) in &before.records {
        if !r.meta.is_active || !r.meta.is_pending() || present.contains(&(r.table, r.local)) {
            continue;
        }
        // Walk up: the record, its parent, ... (bounded by the schema's depth).
        let mut explained = false;
        let mut cur = Some(*r);
        let mut steps = 0;
        while let Some(c) = cur {
            if logged(c.table, c.local) || gone_by_server(&c) {
                explained = true;
                break;
            }
            steps += 1;
            let pt = schema.table(c.table).and_then(|t| t.parent);
            cur = match (pt, c.parent) {
                (Some(pt), Some(p)) if steps < 16 => by_local.get(&(pt, p)).map(|x| **x),
                _ => None,
            };
        }
        invariant!(
            explained,
            "the pending change of {:?} {:?} vanished without a rejection or a removal\n{after:?}",
            r.table,
            r.local
        );
    }
}

/// The fuzz entry: byte 0 even = raw bytes (chunking header, reply), odd = a structured
/// [`spec::ReplySpec`] for the seeded device's batch.
pub fn run(input: &[u8]) {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let (sizes, data) = split_chunking(rest);
        apply(&EXAMPLE, &chunks(data, &sizes));
    } else {
        let Some(spec) = spec::take::<spec::ReplySpec>(rest) else {
            return;
        };
        let bytes = spec.bytes(&EXAMPLE, seeded().out.batch_id);
        apply(&EXAMPLE, &chunks(&bytes, &spec.chunk_sizes()));
    }
}
