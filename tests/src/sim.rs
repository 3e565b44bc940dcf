//! A deterministic simulation of a fleet: phones on SQLite, scanners on NOR-flash images and
//! devices on the core's in-memory store make random offline edits on masters and details,
//! sync in random order through the server's real request/reply path, and suffer faults:
//! request lost, reply lost, reply cut mid-stream, device crash mid-apply (for a scanner, a
//! power cut: the store is dropped and mounted again from its flash image), duplicate
//! delivery, server restart. The server's time and every device's clock are simulated, so a seed replays
//! exactly.
//!
//! Checked after every step: a failed sync changed nothing on its device; a successful one
//! leaves the device with nothing pending and equal to the server's view of its scope; the
//! server equals a reference model of the rules (id map, last-write-wins with clamping,
//! delete wins and cascades, rejections); retries map to the same ids (no duplicate); no
//! detail lives without its master. At the end, after a round of clean syncs, every device
//! equals the server and the server equals the model.

use crate::{FaultyError, FaultyStore};
use ferrysync_core::body::{self, Value};
use ferrysync_core::engine::{self, SyncError};
use ferrysync_core::frame::FrameDecoder;
use ferrysync_core::hlc::Hlc;
use ferrysync_core::id::{LocalId, RecordRef, ServerId, TableId};
use ferrysync_core::mem::MemStore;
use ferrysync_core::schema::{Schema, EXAMPLE};
use ferrysync_core::store::{DeviceState, Filter, LocalStore, Record, RejectedEntry};
use ferrysync_core::track;
use ferrysync_core::transport::Transport;
use ferrysync_core::wire::{Mode, Op, RejectReason, Reply, Request};
use ferrysync_flash::{store_cache, HostStore};
use ferrysync_server::direct;
use ferrysync_server::store::{Device, OwnedChange, ReplyItem, ReplyPlan, ServerStore, SyncParams};
use ferrysync_server::{LoadedSchema, SqliteStore as ServerDb};
use ferrysync_sqlite::SqliteStore;
use pollster::block_on;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

const N: usize = ferrysync_core::frame::DEFAULT_MAX_FRAME;
const MAX_SKEW_MS: u64 = 60_000;
const SCHEMA: Schema<'static> = EXAMPLE;

/// A rule broken on purpose, to show the checks catch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// The reference model forgets to cascade a master's delete to its details.
    ModelSkipsCascade,
    /// The link silently drops `Remove` frames from replies (fixing up `Done`).
    LinkDropsRemoves,
}

/// A simulation's settings.
#[derive(Clone, Copy, Debug)]
pub struct SimConfig {
    /// Random steps before the final round.
    pub steps: usize,
    /// Devices (alternating SQLite and in-memory stores, alternating two scopes).
    pub devices: usize,
    /// A rule broken on purpose.
    pub broken: Option<Broken>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            steps: 60,
            devices: 4,
            broken: None,
        }
    }
}

/// What a simulation did, for the summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Syncs that completed.
    pub syncs_ok: u32,
    /// Syncs failed by a fault.
    pub syncs_failed: u32,
    /// Local changes made.
    pub edits: u32,
    /// Changes the server refused.
    pub rejected: u32,
    /// Server restarts.
    pub restarts: u32,
}

/// A device's store: one of the adapters, behind one type.
pub enum DevStore {
    /// A phone on SQLite (in memory).
    Sqlite(Box<SqliteStore>),
    /// The core's in-memory store.
    Mem(Box<MemStore>),
    /// A scanner: the flash store on a flash image file.
    Flash(Box<HostStore>, PathBuf),
}

/// Size of a simulated scanner's flash image.
const FLASH_BYTES: usize = 256 * 1024;

impl DevStore {
    fn flash(image: PathBuf) -> DevStore {
        let store = HostStore::open_file(&image, FLASH_BYTES, store_cache()).unwrap();
        DevStore::Flash(Box::new(store), image)
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            DevStore::Sqlite($s) => $e.map_err(|e| e.to_string()),
            DevStore::Mem($s) => $e.map_err(|e| e.to_string()),
            DevStore::Flash($s, _) => $e.map_err(|e| e.to_string()),
        }
    };
}

impl LocalStore for DevStore {
    type Error = String;
    async fn load_state(&mut self) -> Result<DeviceState, String> {
        each!(self, s => s.load_state().await)
    }
    async fn begin(&mut self) -> Result<(), String> {
        each!(self, s => s.begin().await)
    }
    async fn commit(&mut self, state: &DeviceState) -> Result<(), String> {
        each!(self, s => s.commit(state).await)
    }
    async fn rollback(&mut self) -> Result<(), String> {
        each!(self, s => s.rollback().await)
    }
    async fn get(&mut self, t: TableId, l: LocalId) -> Result<Option<Record>, String> {
        each!(self, s => s.get(t, l).await)
    }
    async fn get_body(
        &mut self,
        t: TableId,
        l: LocalId,
        buf: &mut [u8],
    ) -> Result<Option<usize>, String> {
        each!(self, s => s.get_body(t, l, buf).await)
    }
    async fn by_server(&mut self, t: TableId, id: ServerId) -> Result<Option<Record>, String> {
        each!(self, s => s.by_server(t, id).await)
    }
    async fn put(&mut self, rec: &Record, body: Option<&[u8]>) -> Result<(), String> {
        each!(self, s => s.put(rec, body).await)
    }
    async fn remove(&mut self, t: TableId, l: LocalId) -> Result<(), String> {
        each!(self, s => s.remove(t, l).await)
    }
    async fn next(
        &mut self,
        t: TableId,
        after: Option<LocalId>,
        f: Filter,
    ) -> Result<Option<Record>, String> {
        each!(self, s => s.next(t, after, f).await)
    }
    async fn push_rejected(&mut self, e: &RejectedEntry, body: &[u8]) -> Result<(), String> {
        each!(self, s => s.push_rejected(e, body).await)
    }
    async fn next_rejected(
        &mut self,
        after: Option<u32>,
        buf: &mut [u8],
    ) -> Result<Option<(RejectedEntry, usize)>, String> {
        each!(self, s => s.next_rejected(after, buf).await)
    }
    async fn clear_rejected(&mut self) -> Result<(), String> {
        each!(self, s => s.clear_rejected().await)
    }
}

/// Every record of a store with its body: the device's whole state, for "nothing changed".
pub async fn dump<S: LocalStore>(s: &mut S) -> Vec<(Record, Vec<u8>)>
where
    S::Error: fmt::Debug,
{
    let mut out = Vec::new();
    for t in 0..SCHEMA.tables.len() {
        let mut after = None;
        while let Some(r) = s.next(TableId(t as u8), after, Filter::All).await.unwrap() {
            after = Some(r.local);
            let mut buf = [0u8; N];
            let n = s
                .get_body(r.table, r.local, &mut buf)
                .await
                .unwrap()
                .unwrap();
            out.push((r, buf[..n].to_vec()));
        }
    }
    out
}

/// One record as the server identifies it: (table, id) → (parent id, body, stamp).
pub type ServerView = BTreeMap<(u8, u64), (Option<u64>, Vec<u8>, Hlc)>;

/// A device's synced records by server id (with the stamp the server sent).
async fn device_view(s: &mut DevStore) -> ServerView {
    let all = dump(s).await;
    let by_local: BTreeMap<(u8, u32), u64> = all
        .iter()
        .filter_map(|(r, _)| r.server.map(|id| ((r.table.0, r.local.0), id.0)))
        .collect();
    let mut out = ServerView::new();
    for (r, body) in all {
        let Some(id) = r.server else { continue };
        let parent = SCHEMA.tables[r.table.0 as usize].parent.map(|pt| {
            r.parent
                .and_then(|p| by_local.get(&(pt.0, p.0)).copied())
                .unwrap_or(u64::MAX)
        });
        out.insert((r.table.0, id.0), (parent, body, r.meta.modified_at));
    }
    out
}

/// `view` with every stamp's device id (the tie-break) set to 0.
fn without_tie_break(view: ServerView) -> ServerView {
    view.into_iter()
        .map(|(k, (parent, body, at))| (k, (parent, body, Hlc::new(at.wall_ms, at.counter, 0))))
        .collect()
}

/// The server's view of a scope, read through its own reply path (a full snapshot).
fn server_view(store: &dyn ServerStore, scope: &str) -> ServerView {
    let mut out = ServerView::new();
    let plan = ReplyPlan {
        scope,
        mode: Mode::Full,
        cursor: None,
        extra: &[],
    };
    store
        .read_reply(&plan, &mut |item| {
            if let ReplyItem::Upsert(u) = item {
                out.insert(
                    (u.table.0, u.id.0),
                    (u.parent.map(|p| p.0), u.body.to_vec(), u.modified_at),
                );
            }
            Ok(())
        })
        .unwrap();
    out
}

#[derive(Clone, Debug)]
struct MRec {
    parent: Option<u64>,
    body: Vec<u8>,
    at: Hlc,
    scope: String,
}

/// The reference model: the rules of DESIGN.md section 2, written plainly.
#[derive(Default)]
struct Model {
    live: BTreeMap<(u8, u64), MRec>,
    dead: BTreeMap<(u8, u64), String>,
    idmap: BTreeMap<(u32, u8, u32), u64>,
    skip_cascade: bool,
}

type Outcome = Result<(), RejectReason>;

impl Model {
    fn missing(&self, t: u8, id: u64, scope: &str) -> RejectReason {
        match self.dead.get(&(t, id)) {
            Some(s) if s == scope => RejectReason::Deleted,
            Some(_) => RejectReason::OutOfScope,
            None => RejectReason::UnknownRecord,
        }
    }

    fn key(&self, dev: u32, t: u8, key: RecordRef) -> Option<u64> {
        match key {
            RecordRef::Server(s) => Some(s.0),
            RecordRef::Local(l) => self.idmap.get(&(dev, t, l.0)).copied(),
        }
    }

    fn parent(&self, dev: &Device, pt: u8, r: RecordRef) -> Result<u64, RejectReason> {
        let id = self.key(dev.id, pt, r).ok_or(RejectReason::ParentMissing)?;
        match self.live.get(&(pt, id)) {
            Some(m) if m.scope != dev.scope => Err(RejectReason::OutOfScope),
            Some(_) => Ok(id),
            None => match self.missing(pt, id, &dev.scope) {
                RejectReason::OutOfScope => Err(RejectReason::OutOfScope),
                _ => Err(RejectReason::ParentMissing),
            },
        }
    }

    fn stamp(dev: &Device, at: Hlc, now: u64) -> Hlc {
        Hlc {
            device: dev.id,
            ..at.clamp(now + MAX_SKEW_MS)
        }
    }

    fn update(&mut self, dev: &Device, c: &OwnedChange, id: u64, now: u64) -> Outcome {
        let t = c.table.0;
        let Some(cur) = self.live.get(&(t, id)).cloned() else {
            return Err(self.missing(t, id, &dev.scope));
        };
        if cur.scope != dev.scope {
            return Err(RejectReason::OutOfScope);
        }
        let parent = match (SCHEMA.tables[t as usize].parent, c.parent) {
            (None, _) => None,
            (Some(_), None) => cur.parent,
            (Some(pt), Some(r)) => Some(self.parent(dev, pt.0, r)?),
        };
        let at = Self::stamp(dev, c.modified_at, now);
        if at > cur.at {
            self.live.insert(
                (t, id),
                MRec {
                    parent,
                    body: c.body.clone(),
                    at,
                    scope: cur.scope,
                },
            );
        }
        Ok(())
    }

    fn cascade(&mut self, t: u8, id: u64) {
        if !self.skip_cascade {
            for (ct, def) in SCHEMA.tables.iter().enumerate() {
                if def.parent == Some(TableId(t)) {
                    let kids: Vec<u64> = self
                        .live
                        .iter()
                        .filter(|((kt, _), m)| *kt == ct as u8 && m.parent == Some(id))
                        .map(|((_, k), _)| *k)
                        .collect();
                    for k in kids {
                        self.cascade(ct as u8, k);
                    }
                }
            }
        }
        if let Some(m) = self.live.remove(&(t, id)) {
            self.dead.insert((t, id), m.scope);
        }
    }

    /// Applies a committed batch; `mapped` is the server ids the real server gave to adds.
    fn apply(
        &mut self,
        dev: &Device,
        changes: &[OwnedChange],
        mapped: &BTreeMap<(u8, u32), u64>,
        now: u64,
    ) -> Result<Vec<(u8, RecordRef, RejectReason)>, String> {
        let mut rejected = Vec::new();
        for c in changes {
            let t = c.table.0;
            let outcome = match c.op {
                Op::Add => {
                    let RecordRef::Local(l) = c.key else {
                        return Err("add keyed by server id".into());
                    };
                    if let Some(&id) = self.idmap.get(&(dev.id, t, l.0)) {
                        if mapped.get(&(t, l.0)) != Some(&id) {
                            return Err(format!(
                                "retried add {t}/{} mapped to {:?}, first to {id}: duplicate",
                                l.0,
                                mapped.get(&(t, l.0))
                            ));
                        }
                        match self.update(dev, c, id, now) {
                            Err(RejectReason::Deleted) => Ok(()),
                            other => other,
                        }
                    } else {
                        let parent = match (SCHEMA.tables[t as usize].parent, c.parent) {
                            (None, _) => Ok(None),
                            (Some(_), None) => Err(RejectReason::BadKey),
                            (Some(pt), Some(r)) => self.parent(dev, pt.0, r).map(Some),
                        };
                        match parent {
                            Err(e) => Err(e),
                            Ok(parent) => {
                                let Some(&id) = mapped.get(&(t, l.0)) else {
                                    return Err(format!("add {t}/{} accepted but not mapped", l.0));
                                };
                                if self.live.contains_key(&(t, id))
                                    || self.dead.contains_key(&(t, id))
                                {
                                    return Err(format!("server reused id {t}/{id}"));
                                }
                                self.idmap.insert((dev.id, t, l.0), id);
                                self.live.insert(
                                    (t, id),
                                    MRec {
                                        parent,
                                        body: c.body.clone(),
                                        at: Self::stamp(dev, c.modified_at, now),
                                        scope: dev.scope.clone(),
                                    },
                                );
                                Ok(())
                            }
                        }
                    }
                }
                Op::Update => match self.key(dev.id, t, c.key) {
                    None => Err(RejectReason::UnknownRecord),
                    Some(id) => self.update(dev, c, id, now),
                },
                Op::Delete => match (c.key, self.key(dev.id, t, c.key)) {
                    (RecordRef::Local(_), None) => Ok(()),
                    (_, None) => Err(RejectReason::UnknownRecord),
                    (_, Some(id)) => match self.live.get(&(t, id)) {
                        Some(m) if m.scope != dev.scope => Err(RejectReason::OutOfScope),
                        Some(_) => {
                            self.cascade(t, id);
                            Ok(())
                        }
                        None => match self.missing(t, id, &dev.scope) {
                            RejectReason::Deleted => Ok(()),
                            other => Err(other),
                        },
                    },
                },
            };
            if let Err(reason) = outcome {
                rejected.push((t, c.key, reason));
            }
        }
        Ok(rejected)
    }

    fn view(&self, scope: &str) -> ServerView {
        self.live
            .iter()
            .filter(|(_, m)| m.scope == scope)
            .map(|(k, m)| (*k, (m.parent, m.body.clone(), m.at)))
            .collect()
    }
}

/// What the link does to one sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkFault {
    None,
    RequestLost,
    ReplyLost,
    ReplyCut(usize),
    Duplicate,
}

#[derive(Debug)]
struct LinkError(&'static str);

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// A transport straight into the server's request/reply path, with faults.
struct Link<'a> {
    store: &'a dyn ServerStore,
    device: &'a Device,
    now: u64,
    fault: LinkFault,
    drop_removes: bool,
    request: Vec<u8>,
    reply: Vec<u8>,
    pos: usize,
    /// Requests the server committed (the same bytes twice for a duplicate delivery).
    committed: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Link<'_> {
    fn deliver(&mut self) -> Result<Vec<u8>, LinkError> {
        let params = SyncParams {
            now_ms: self.now,
            max_skew_ms: MAX_SKEW_MS,
            tombstone_retention_ms: u64::MAX / 4,
        };
        let reply = direct::sync(
            self.store,
            SCHEMA.hash(),
            self.device,
            params,
            &self.request,
        )
        .map_err(|_| LinkError("server refused the request"))?;
        self.committed.push((self.request.clone(), reply.clone()));
        Ok(reply)
    }
}

impl Transport for Link<'_> {
    type Error = LinkError;
    async fn send(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        self.request.extend_from_slice(bytes);
        Ok(())
    }
    async fn finish(&mut self) -> Result<(), LinkError> {
        match self.fault {
            LinkFault::RequestLost => return Err(LinkError("request lost")),
            LinkFault::Duplicate => {
                self.deliver()?;
            }
            _ => {}
        }
        let mut reply = self.deliver()?;
        if self.drop_removes {
            reply = drop_removes(&reply);
        }
        match self.fault {
            LinkFault::ReplyLost => Err(LinkError("reply lost")),
            LinkFault::ReplyCut(k) => {
                reply.truncate(k % reply.len().max(1));
                self.reply = reply;
                Ok(())
            }
            _ => {
                self.reply = reply;
                Ok(())
            }
        }
    }
    async fn receive(&mut self, buf: &mut [u8]) -> Result<usize, LinkError> {
        let n = buf.len().min(self.reply.len() - self.pos).min(61);
        buf[..n].copy_from_slice(&self.reply[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The broken link: re-encodes a reply without its `Remove` frames.
fn drop_removes(reply: &[u8]) -> Vec<u8> {
    let mut dec = FrameDecoder::<N>::new();
    let mut enc = ferrysync_core::frame::FrameEncoder::<N>::new();
    let mut out = Vec::new();
    let mut dropped = 0;
    let mut pos = 0;
    while pos < reply.len() {
        let fed = dec.feed::<Reply<'_>>(&reply[pos..]);
        pos += fed.consumed;
        match fed.result {
            Ok(Some(Reply::Remove(_))) => dropped += 1,
            Ok(Some(m @ Reply::Removes(_))) => dropped += m.items().count() as u32,
            Ok(Some(Reply::Done(mut d))) => {
                d.count -= dropped;
                out.extend_from_slice(enc.encode(&Reply::Done(d)).unwrap());
            }
            Ok(Some(m)) => out.extend_from_slice(enc.encode(&m).unwrap()),
            _ => {}
        }
    }
    out
}

struct Parsed {
    changes: Vec<OwnedChange>,
    mapped: BTreeMap<(u8, u32), u64>,
    rejected: Vec<(u8, RecordRef, RejectReason)>,
}

fn parse(request: &[u8], reply: &[u8]) -> Parsed {
    let mut changes = Vec::new();
    let mut dec = FrameDecoder::<N>::new();
    let mut pos = 0;
    while pos < request.len() {
        let fed = dec.feed::<Request<'_>>(&request[pos..]);
        pos += fed.consumed;
        let Ok(Some(msg)) = fed.result else { continue };
        for item in msg.items() {
            if let Ok(Request::Change(c)) = item {
                changes.push(OwnedChange::from_wire(&c));
            }
        }
    }
    let mut mapped = BTreeMap::new();
    let mut rejected = Vec::new();
    let mut dec = FrameDecoder::<N>::new();
    let mut pos = 0;
    while pos < reply.len() {
        let fed = dec.feed::<Reply<'_>>(&reply[pos..]);
        pos += fed.consumed;
        let Ok(Some(msg)) = fed.result else { continue };
        for item in msg.items() {
            match item {
                Ok(Reply::Mapping(m)) => {
                    mapped.insert((m.table.0, m.local.0), m.server.0);
                }
                Ok(Reply::Rejected(r)) => rejected.push((r.table.0, r.key, r.reason)),
                _ => {}
            }
        }
    }
    Parsed {
        changes,
        mapped,
        rejected,
    }
}

struct SimDevice {
    store: DevStore,
    device: Device,
    /// This device's clock offset from simulated time (a device with a wrong clock).
    skew: i64,
}

/// One simulated world, driven by a seed.
pub struct Sim {
    seed: u64,
    rng: StdRng,
    cfg: SimConfig,
    db: PathBuf,
    _dir: tempfile::TempDir,
    server: Arc<ServerDb>,
    devices: Vec<SimDevice>,
    model: Model,
    now: u64,
    log: Vec<String>,
    /// What happened.
    pub stats: SimStats,
}

fn company(rng: &mut StdRng) -> Vec<u8> {
    let name = format!("co{}", rng.random_range(0..1000u32));
    let city = ["Lyon", "Paris", "Nice"][rng.random_range(0..3usize)];
    let mut buf = [0u8; 128];
    body::encode(
        &SCHEMA.tables[0],
        &[Value::Text(&name), Value::Text(city), Value::Text("+33")],
        &mut buf,
    )
    .unwrap()
    .to_vec()
}

fn contact(rng: &mut StdRng) -> Vec<u8> {
    let name = format!("p{}", rng.random_range(0..1000u32));
    let mut buf = [0u8; 128];
    body::encode(
        &SCHEMA.tables[1],
        &[Value::Text(&name), Value::Text("x@y"), Value::Text("06")],
        &mut buf,
    )
    .unwrap()
    .to_vec()
}

impl Sim {
    /// A world for `seed`.
    pub fn new(seed: u64, cfg: SimConfig) -> Sim {
        let base = std::path::Path::new("/dev/shm");
        let dir = if base.is_dir() {
            tempfile::tempdir_in(base).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let db = dir.path().join("server.db");
        let server = Arc::new(ServerDb::open(&db, LoadedSchema::example()).unwrap());
        let mut rng = StdRng::seed_from_u64(seed);
        let mut devices = Vec::new();
        for i in 0..cfg.devices {
            let scope = if i % 2 == 0 { "north" } else { "south" };
            let device = server.add_device(scope, &[i as u8; 32], 0).unwrap();
            let store = match i % 3 {
                0 => DevStore::Sqlite(Box::new(SqliteStore::open_in_memory(SCHEMA).unwrap())),
                1 => DevStore::flash(dir.path().join(format!("scanner{i}.img"))),
                _ => DevStore::Mem(Box::default()),
            };
            // One device in five runs ten minutes fast: the server clamps its stamps.
            let skew = if rng.random_range(0..5u32) == 0 {
                600_000
            } else {
                rng.random_range(-500..500i64)
            };
            devices.push(SimDevice {
                store,
                device,
                skew,
            });
        }
        Sim {
            seed,
            rng,
            cfg,
            db,
            _dir: dir,
            server,
            devices,
            model: Model {
                skip_cascade: cfg.broken == Some(Broken::ModelSkipsCascade),
                ..Model::default()
            },
            now: 1_700_000_000_000,
            log: Vec::new(),
            stats: SimStats::default(),
        }
    }

    fn fail(&self, what: String) -> String {
        let tail: Vec<&String> = self.log.iter().rev().take(12).collect();
        format!(
            "seed {}: {what}\nlast steps (newest first):\n  {}",
            self.seed,
            tail.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n  ")
        )
    }

    async fn pick(&mut self, d: usize, table: u8) -> Option<LocalId> {
        let mut active = Vec::new();
        let mut after = None;
        let store = &mut self.devices[d].store;
        while let Some(r) = store
            .next(TableId(table), after, Filter::All)
            .await
            .unwrap()
        {
            after = Some(r.local);
            if r.meta.is_active {
                active.push(r.local);
            }
        }
        if active.is_empty() {
            None
        } else {
            Some(active[self.rng.random_range(0..active.len())])
        }
    }

    async fn edit(&mut self, d: usize) {
        let now = (self.now as i64 + self.devices[d].skew) as u64;
        let what = self.rng.random_range(0..10u32);
        let result = match what {
            0..=2 => {
                let b = company(&mut self.rng);
                let s = &mut self.devices[d].store;
                track::insert(&SCHEMA, s, TableId(0), None, &b, now)
                    .await
                    .map(|_| ())
            }
            3..=5 => match self.pick(d, 0).await {
                Some(p) => {
                    let b = contact(&mut self.rng);
                    let s = &mut self.devices[d].store;
                    track::insert(&SCHEMA, s, TableId(1), Some(p), &b, now)
                        .await
                        .map(|_| ())
                }
                None => return,
            },
            6..=8 => {
                let t = self.rng.random_range(0..2u8);
                match self.pick(d, t).await {
                    Some(l) => {
                        let b = if t == 0 {
                            company(&mut self.rng)
                        } else {
                            contact(&mut self.rng)
                        };
                        let s = &mut self.devices[d].store;
                        track::update(&SCHEMA, s, TableId(t), l, &b, now).await
                    }
                    None => return,
                }
            }
            _ => {
                let t = self.rng.random_range(0..2u8);
                match self.pick(d, t).await {
                    Some(l) => {
                        let s = &mut self.devices[d].store;
                        track::delete(&SCHEMA, s, TableId(t), l, now).await
                    }
                    None => return,
                }
            }
        };
        result.unwrap_or_else(|e| panic!("{}", self.fail(format!("local edit failed: {e}"))));
        self.stats.edits += 1;
        self.log
            .push(format!("t={} device {d} edit kind {what}", self.now));
    }

    /// One sync of device `d` with `fault`; `crash_at`: the device's store fails its n-th write.
    async fn sync(
        &mut self,
        d: usize,
        fault: LinkFault,
        crash_at: Option<u32>,
    ) -> Result<(), String> {
        let before = dump(&mut self.devices[d].store).await;
        let broken_link = self.cfg.broken == Some(Broken::LinkDropsRemoves);
        let dev = &mut self.devices[d];
        let mut link = Link {
            store: self.server.as_ref(),
            device: &dev.device,
            now: self.now,
            fault,
            drop_removes: broken_link,
            request: Vec::new(),
            reply: Vec::new(),
            pos: 0,
            committed: Vec::new(),
        };
        let mode = if self.rng.random_range(0..8u32) == 0 {
            Mode::Full
        } else {
            Mode::Delta
        };
        let result = match crash_at {
            None => engine::sync::<_, _, N>(&SCHEMA, &mut dev.store, &mut link, mode)
                .await
                .map_err(|e| e.to_string()),
            Some(n) => {
                let mut faulty = FaultyStore {
                    inner: &mut dev.store,
                    writes_left: Some(n),
                    fail_commit: false,
                };
                let r = engine::sync::<_, _, N>(&SCHEMA, &mut faulty, &mut link, mode).await;
                match r {
                    Err(SyncError::Store(FaultyError::Injected)) => Err("crash mid-apply".into()),
                    other => other.map_err(|e| e.to_string()),
                }
            }
        };
        let committed = std::mem::take(&mut link.committed);
        self.reboot_scanner(d, crash_at.is_some());
        self.log.push(format!(
            "t={} device {d} ({}) sync {mode:?} fault {fault:?} crash {crash_at:?}: {}",
            self.now,
            self.devices[d].device.scope,
            match &result {
                Ok(r) => format!("ok {r:?}"),
                Err(e) => format!("failed: {e}"),
            }
        ));
        // The model follows what the server committed.
        let device = self.devices[d].device.clone();
        for (request, reply) in &committed {
            let p = parse(request, reply);
            let expected = self
                .model
                .apply(&device, &p.changes, &p.mapped, self.now)
                .map_err(|e| self.fail(e))?;
            if expected != p.rejected {
                return Err(self.fail(format!(
                    "rejections differ: model {expected:?}, server {:?}",
                    p.rejected
                )));
            }
            self.stats.rejected += p.rejected.len() as u32;
        }
        match result {
            Err(e) => {
                self.stats.syncs_failed += 1;
                if !e.contains("lost") && !e.contains("crash") && !e.contains("ended before") {
                    return Err(self.fail(format!("unexpected sync error: {e}")));
                }
                let after = dump(&mut self.devices[d].store).await;
                if after != before {
                    return Err(self.fail("a failed sync changed the device".into()));
                }
            }
            Ok(_) => {
                self.stats.syncs_ok += 1;
                let store = &mut self.devices[d].store;
                let pending = track::pending_count(&SCHEMA, store).await.unwrap();
                if pending != 0 {
                    return Err(self.fail(format!("{pending} changes still pending after a sync")));
                }
                // The device keeps its own stamp of the changes it made (the server does not
                // send back what a sync wrote); the server adds the device's id as the
                // tie-break. Only the server compares stamps, so the tie-break is left out.
                let mine = without_tie_break(device_view(store).await);
                let server = without_tie_break(server_view(self.server.as_ref(), &device.scope));
                if mine != server {
                    return Err(self.fail(format!(
                        "device {d} differs from the server after its sync:\n device {mine:?}\n server {server:?}"
                    )));
                }
            }
        }
        self.check_server()
    }

    /// A scanner that crashed loses its RAM: mount its store again from the flash image (the
    /// state must be exactly what was committed). Scanners also reboot now and then anyway.
    fn reboot_scanner(&mut self, d: usize, crashed: bool) {
        let again = crashed || self.rng.random_range(0..10u32) == 0;
        if let DevStore::Flash(_, image) = &self.devices[d].store {
            if again {
                let image = image.clone();
                // Drop the old store (and its file handle) before mounting the image again.
                self.devices[d].store = DevStore::Mem(Box::default());
                self.devices[d].store = DevStore::flash(image);
                self.log.push(format!(
                    "t={} device {d} reboots from its flash image",
                    self.now
                ));
            }
        }
    }

    fn check_server(&self) -> Result<(), String> {
        for scope in ["north", "south"] {
            let real = server_view(self.server.as_ref(), scope);
            let model = self.model.view(scope);
            if real != model {
                return Err(self.fail(format!(
                    "server differs from the model in scope {scope}:\n server {real:?}\n model  {model:?}"
                )));
            }
        }
        let conn = ferrysync_sqlite::rusqlite::Connection::open(&self.db).unwrap();
        let orphans: i64 = conn
            .query_row(
                "SELECT count(*) FROM contact WHERE company_id NOT IN (SELECT id FROM company)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        if orphans != 0 {
            return Err(self.fail(format!("{orphans} contacts without their company")));
        }
        Ok(())
    }

    fn restart_server(&mut self) {
        // Reopen the database file, as a restarted process would.
        self.server = Arc::new(ServerDb::open(&self.db, LoadedSchema::example()).unwrap());
        self.stats.restarts += 1;
        self.log.push(format!("t={} server restart", self.now));
    }

    /// Runs the random steps, then the final round; `Err` says what broke, with the seed.
    pub fn run(&mut self) -> Result<SimStats, String> {
        block_on(self.run_async())
    }

    async fn run_async(&mut self) -> Result<SimStats, String> {
        for _ in 0..self.cfg.steps {
            self.now += self.rng.random_range(0..40u64);
            let d = self.rng.random_range(0..self.devices.len());
            match self.rng.random_range(0..100u32) {
                0..=44 => self.edit(d).await,
                45..=94 => {
                    let (fault, crash) = match self.rng.random_range(0..12u32) {
                        0 => (LinkFault::RequestLost, None),
                        1 => (LinkFault::ReplyLost, None),
                        2 => (LinkFault::ReplyCut(self.rng.random_range(0..4096)), None),
                        3 => (LinkFault::Duplicate, None),
                        4 => (LinkFault::None, Some(self.rng.random_range(0..12u32))),
                        _ => (LinkFault::None, None),
                    };
                    self.sync(d, fault, crash).await?;
                }
                _ => self.restart_server(),
            }
        }
        // Final round: everyone syncs cleanly twice; all equal the server, the server the model.
        for _ in 0..2 {
            for d in 0..self.devices.len() {
                self.now += 1;
                self.sync(d, LinkFault::None, None).await?;
            }
        }
        for d in 0..self.devices.len() {
            let scope = self.devices[d].device.scope.clone();
            let mine = without_tie_break(device_view(&mut self.devices[d].store).await);
            if mine != without_tie_break(server_view(self.server.as_ref(), &scope)) {
                return Err(self.fail(format!("device {d} did not converge")));
            }
        }
        Ok(self.stats)
    }
}
