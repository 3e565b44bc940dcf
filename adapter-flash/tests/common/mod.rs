//! Shared test helpers: a mock flash, a scripted transport, a small fake server, snapshots.
#![allow(dead_code)]

use ferrysync_core::body::{encode, Value};
use ferrysync_core::engine::{self, SyncError, SyncReport};
use ferrysync_core::frame::{FrameDecoder, FrameEncoder};
use ferrysync_core::hlc::Hlc;
use ferrysync_core::id::{LocalId, RecordRef, ServerId, TableId};
use ferrysync_core::mem::{LinkDown, ScriptLink};
use ferrysync_core::schema::EXAMPLE;
use ferrysync_core::store::{DeviceState, Filter, LocalStore, Record, RejectedEntry};
use ferrysync_core::wire::{
    Accepted, Done, Mapping, Mode, Op, RejectReason, Rejected, Remove, Reply, Request, Upsert,
};
use ferrysync_flash::{store_cache, FlashStore, StoreCache};
use pollster::block_on;
use sequential_storage::mock_flash::{MockFlashBase, WriteCountCheck};
use std::collections::BTreeMap;
use std::fmt;

pub const N: usize = 1024;
pub const CO: TableId = TableId(0);
pub const CT: TableId = TableId(1);

/// A small NOR flash: 16 pages of 1 KiB, 4-byte words.
pub type Small = MockFlashBase<16, 4, 256>;
pub type SmallStore = FlashStore<Small, StoreCache<16, 512>, 1024, 1>;

pub fn small_flash() -> Small {
    MockFlashBase::new(WriteCountCheck::Twice, None, true)
}

pub fn small_store(flash: Small) -> SmallStore {
    FlashStore::try_new(flash, Small::FULL_FLASH_RANGE, store_cache()).unwrap()
}

pub fn company(name: &str) -> Vec<u8> {
    let mut buf = [0u8; 256];
    encode(
        &EXAMPLE.tables[0],
        &[Value::Text(name), Value::Text("Lyon"), Value::Text("1")],
        &mut buf,
    )
    .unwrap()
    .to_vec()
}

pub fn contact(name: &str) -> Vec<u8> {
    let mut buf = [0u8; 256];
    encode(
        &EXAMPLE.tables[1],
        &[Value::Text(name), Value::Text("a@b"), Value::Text("2")],
        &mut buf,
    )
    .unwrap()
    .to_vec()
}

#[derive(Clone, Debug)]
struct SRec {
    parent: Option<u64>,
    body: Vec<u8>,
    at: Hlc,
    seq: u64,
}

/// A tiny in-memory server for the example schema: maps adds, applies updates and deletes
/// (cascading), and answers with a full refresh or a delta since the device's cursor.
#[derive(Clone, Debug, Default)]
pub struct FakeServer {
    next_id: u64,
    seq: u64,
    recs: BTreeMap<(u8, u64), SRec>,
    removed: Vec<(u8, u64, u64)>,
    /// Server ids the next reply rejects updates of (to exercise the rejected log).
    pub refuse: Vec<u64>,
}

impl FakeServer {
    pub fn new() -> Self {
        FakeServer {
            next_id: 100,
            ..Default::default()
        }
    }

    /// Adds a record as if another device had created it; returns its id.
    pub fn add(&mut self, table: TableId, parent: Option<u64>, body: Vec<u8>) -> u64 {
        self.next_id += 1;
        self.seq += 1;
        let id = self.next_id;
        self.recs.insert(
            (table.0, id),
            SRec {
                parent,
                body,
                at: Hlc::new(1_000 + self.seq, 0, 0),
                seq: self.seq,
            },
        );
        id
    }

    /// Changes a record as if another device had.
    pub fn touch(&mut self, table: TableId, id: u64, body: Vec<u8>) {
        self.seq += 1;
        let seq = self.seq;
        if let Some(r) = self.recs.get_mut(&(table.0, id)) {
            r.body = body;
            r.at = Hlc::new(100_000 + seq, 0, 0);
            r.seq = seq;
        }
    }

    pub fn ids(&self, table: TableId) -> Vec<u64> {
        self.recs
            .keys()
            .filter(|k| k.0 == table.0)
            .map(|k| k.1)
            .collect()
    }

    /// Deletes a record (and its children) as if another device had.
    pub fn delete(&mut self, table: TableId, id: u64) {
        self.seq += 1;
        let seq = self.seq;
        if self.recs.remove(&(table.0, id)).is_some() {
            self.removed.push((table.0, id, seq));
            if table == CO {
                let kids: Vec<u64> = self
                    .recs
                    .iter()
                    .filter(|(k, r)| k.0 == CT.0 && r.parent == Some(id))
                    .map(|(k, _)| k.1)
                    .collect();
                for k in kids {
                    self.recs.remove(&(CT.0, k));
                    self.removed.push((CT.0, k, seq));
                }
            }
        }
    }

    pub fn handle(&mut self, request: &[u8]) -> Vec<u8> {
        let mut dec = FrameDecoder::<N>::new();
        let mut pos = 0;
        let mut hello = None;
        let mut changes = Vec::new();
        while pos < request.len() {
            let fed = dec.feed::<Request<'_>>(&request[pos..]);
            pos += fed.consumed;
            let Some(msg) = fed.result.unwrap() else {
                continue;
            };
            for item in msg.items() {
                match item.unwrap() {
                    Request::Hello(h) => hello = Some(h),
                    Request::Change(c) => changes.push((
                        c.table,
                        c.op,
                        c.key,
                        c.parent,
                        c.modified_at,
                        c.body.to_vec(),
                    )),
                    Request::End(_) | Request::Changes(_) => {}
                }
            }
        }
        let hello = hello.unwrap();
        let mut mappings = Vec::new();
        let mut rejected = Vec::new();
        let mut map: BTreeMap<(u8, u32), u64> = BTreeMap::new();
        for (table, op, key, parent, at, body) in changes {
            match (op, key) {
                (Op::Add, RecordRef::Local(l)) => {
                    let parent = match parent {
                        None => None,
                        Some(RecordRef::Local(pl)) => map.get(&(CO.0, pl.0)).copied(),
                        Some(RecordRef::Server(ps)) => {
                            self.recs.contains_key(&(CO.0, ps.0)).then_some(ps.0)
                        }
                    };
                    if table == CT && parent.is_none() {
                        rejected.push((table, op, key, RejectReason::ParentMissing, body));
                        continue;
                    }
                    self.next_id += 1;
                    self.seq += 1;
                    let id = self.next_id;
                    map.insert((table.0, l.0), id);
                    self.recs.insert(
                        (table.0, id),
                        SRec {
                            parent,
                            body,
                            at,
                            seq: self.seq,
                        },
                    );
                    mappings.push(Mapping {
                        table,
                        local: l,
                        server: ServerId(id),
                    });
                }
                (Op::Update, RecordRef::Server(s)) => {
                    if self.refuse.contains(&s.0) {
                        rejected.push((table, op, key, RejectReason::InvalidBody, body));
                        continue;
                    }
                    self.seq += 1;
                    let seq = self.seq;
                    match self.recs.get_mut(&(table.0, s.0)) {
                        Some(r) if at > r.at => {
                            r.body = body;
                            r.at = at;
                            r.seq = seq;
                        }
                        Some(_) => {}
                        None => rejected.push((table, op, key, RejectReason::Deleted, body)),
                    }
                }
                (Op::Delete, RecordRef::Server(s)) => self.delete(table, s.0),
                _ => {}
            }
        }
        self.refuse.clear();
        let mut enc = FrameEncoder::<N>::new();
        let mut out = Vec::new();
        let mut count = 0u32;
        let mut put = |out: &mut Vec<u8>, m: &Reply<'_>| {
            out.extend_from_slice(enc.encode(m).unwrap());
        };
        put(
            &mut out,
            &Reply::Accepted(Accepted {
                batch_id: hello.batch_id,
                server_time: 10_000 + self.seq,
            }),
        );
        for m in &mappings {
            put(&mut out, &Reply::Mapping(*m));
            count += 1;
        }
        for (table, op, key, reason, body) in &rejected {
            put(
                &mut out,
                &Reply::Rejected(Rejected {
                    table: *table,
                    op: *op,
                    key: *key,
                    reason: *reason,
                    body,
                }),
            );
            count += 1;
        }
        let since = match hello.mode {
            Mode::Full => {
                put(&mut out, &Reply::Reset);
                count += 1;
                0
            }
            Mode::Delta => hello.cursor.unwrap_or(0),
        };
        for ((t, id), r) in &self.recs {
            if r.seq > since {
                put(
                    &mut out,
                    &Reply::Upsert(Upsert {
                        table: TableId(*t),
                        id: ServerId(*id),
                        parent: r.parent.map(ServerId),
                        modified_at: r.at,
                        body: &r.body,
                    }),
                );
                count += 1;
            }
        }
        if hello.mode == Mode::Delta {
            for (t, id, seq) in &self.removed {
                if *seq > since {
                    put(
                        &mut out,
                        &Reply::Remove(Remove {
                            table: TableId(*t),
                            id: ServerId(*id),
                        }),
                    );
                    count += 1;
                }
            }
        }
        put(
            &mut out,
            &Reply::Done(Done {
                cursor: self.seq,
                count,
            }),
        );
        out
    }
}

/// Everything a store holds, in a comparable form.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub state: DeviceState,
    pub records: Vec<(Record, Vec<u8>)>,
    pub rejected: Vec<(RejectedEntry, Vec<u8>)>,
}

pub async fn snapshot<S: LocalStore>(s: &mut S) -> Result<Snapshot, S::Error> {
    let state = s.load_state().await?;
    let mut records = Vec::new();
    let mut buf = [0u8; N];
    for t in 0..EXAMPLE.tables.len() {
        let mut after = None;
        while let Some(r) = s.next(TableId(t as u8), after, Filter::All).await? {
            after = Some(r.local);
            let n = s.get_body(r.table, r.local, &mut buf).await?.unwrap();
            assert_eq!(
                s.get(r.table, r.local).await?,
                Some(r),
                "get agrees with next"
            );
            records.push((r, buf[..n].to_vec()));
        }
    }
    let mut rejected = Vec::new();
    let mut after = None;
    while let Some((e, n)) = s.next_rejected(after, &mut buf).await? {
        after = Some(e.seq);
        rejected.push((e, buf[..n].to_vec()));
    }
    Ok(Snapshot {
        state,
        records,
        rejected,
    })
}

pub async fn pending<S: LocalStore>(s: &mut S) -> Result<Vec<(TableId, LocalId)>, S::Error> {
    let mut out = Vec::new();
    for t in 0..EXAMPLE.tables.len() {
        let mut after = None;
        while let Some(r) = s.next(TableId(t as u8), after, Filter::Pending).await? {
            after = Some(r.local);
            out.push((r.table, r.local));
        }
    }
    Ok(out)
}

/// One sync against `server`; the server keeps what it applied only if the device's sync
/// went through (a failed sync models a request that never arrived).
pub fn sync_with<S: LocalStore>(
    s: &mut S,
    server: &mut FakeServer,
) -> Result<SyncReport, SyncError<S::Error, LinkDown>> {
    sync_mode(s, server, Mode::Delta)
}

/// [`sync_with`] asking for `mode` (`Mode::Full`: a full refresh).
pub fn sync_mode<S: LocalStore>(
    s: &mut S,
    server: &mut FakeServer,
    mode: Mode,
) -> Result<SyncReport, SyncError<S::Error, LinkDown>> {
    let mut next = server.clone();
    let mut respond = |request: &[u8]| next.handle(request);
    let mut t = ScriptLink::answering(&mut respond);
    let r = block_on(engine::sync::<_, _, N>(&EXAMPLE, s, &mut t, mode));
    drop(t);
    if r.is_ok() {
        *server = next;
    }
    r
}

/// One step of a scenario, applied the same way to any store.
#[derive(Clone, Debug)]
pub enum Step {
    /// A company, or a contact under the `parent`-th active company.
    Insert { parent: Option<usize>, name: String },
    /// Update the `idx`-th active record (over both tables).
    Update { idx: usize, name: String },
    /// Delete the `idx`-th active record.
    Delete { idx: usize },
    /// A sync against the fake server.
    Sync,
    /// Another device adds a company with `kids` contacts on the server.
    ServerAdd { kids: usize },
    /// Another device deletes the `idx`-th company on the server.
    ServerDelete { idx: usize },
    /// The server refuses the next update of the `idx`-th synced record.
    Refuse { idx: usize },
    /// The app clears the rejected log.
    ClearRejected,
    /// A transaction that rewrites every record and is rolled back.
    Abort,
}

async fn active<S: LocalStore>(s: &mut S, table: Option<TableId>) -> Result<Vec<Record>, S::Error> {
    let mut out = Vec::new();
    for t in 0..EXAMPLE.tables.len() {
        if table.is_some_and(|x| x.0 as usize != t) {
            continue;
        }
        let mut after = None;
        while let Some(r) = s.next(TableId(t as u8), after, Filter::All).await? {
            after = Some(r.local);
            if r.meta.is_active {
                out.push(r);
            }
        }
    }
    Ok(out)
}

impl Step {
    /// Applies the step; `now` is the wall clock. Errors are reported as text (a store error
    /// or a power cut).
    pub fn apply<S: LocalStore>(
        &self,
        s: &mut S,
        server: &mut FakeServer,
        now: u64,
    ) -> Result<(), String>
    where
        S::Error: fmt::Debug,
    {
        use ferrysync_core::track;
        let e = |e: &dyn fmt::Debug| format!("{e:?}");
        match self {
            Step::Insert { parent, name } => {
                let (table, parent, body) = match parent {
                    None => (CO, None, company(name)),
                    Some(i) => {
                        let cos = block_on(active(s, Some(CO))).map_err(|x| e(&x))?;
                        if cos.is_empty() {
                            return Ok(());
                        }
                        (CT, Some(cos[i % cos.len()].local), contact(name))
                    }
                };
                block_on(track::insert(&EXAMPLE, s, table, parent, &body, now))
                    .map(|_| ())
                    .map_err(|x| e(&x))
            }
            Step::Update { idx, name } => {
                let all = block_on(active(s, None)).map_err(|x| e(&x))?;
                if all.is_empty() {
                    return Ok(());
                }
                let r = all[idx % all.len()];
                let body = if r.table == CO {
                    company(name)
                } else {
                    contact(name)
                };
                block_on(track::update(&EXAMPLE, s, r.table, r.local, &body, now))
                    .map_err(|x| e(&x))
            }
            Step::Delete { idx } => {
                let all = block_on(active(s, None)).map_err(|x| e(&x))?;
                if all.is_empty() {
                    return Ok(());
                }
                let r = all[idx % all.len()];
                block_on(track::delete(&EXAMPLE, s, r.table, r.local, now)).map_err(|x| e(&x))
            }
            Step::Sync => sync_with(s, server).map(|_| ()).map_err(|x| e(&x)),
            Step::ServerAdd { kids } => {
                let c = server.add(CO, None, company("Remote"));
                for k in 0..*kids {
                    server.add(CT, Some(c), contact(&format!("Kid {k}")));
                }
                Ok(())
            }
            Step::ServerDelete { idx } => {
                let ids = server.ids(CO);
                if !ids.is_empty() {
                    server.delete(CO, ids[idx % ids.len()]);
                }
                Ok(())
            }
            Step::Refuse { idx } => {
                let all = block_on(active(s, None)).map_err(|x| e(&x))?;
                let synced: Vec<_> = all.iter().filter_map(|r| r.server).collect();
                if !synced.is_empty() {
                    server.refuse.push(synced[idx % synced.len()].0);
                }
                Ok(())
            }
            Step::ClearRejected => block_on(track::clear_rejected(s)).map_err(|x| e(&x)),
            Step::Abort => {
                let all = block_on(active(s, None)).map_err(|x| e(&x))?;
                block_on(s.begin()).map_err(|x| e(&x))?;
                for mut r in all {
                    r.mark = r.mark.wrapping_add(1000);
                    block_on(s.put(&r, Some(b"junk"))).map_err(|x| e(&x))?;
                }
                block_on(s.rollback()).map_err(|x| e(&x))
            }
        }
    }
}
