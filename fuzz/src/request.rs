//! `request_stream`: request bytes through the server's request path into a real
//! `SqliteStore`.
//!
//! The HTTP handler reads a hyper body, so [`serve`] drives the same pieces it uses: the
//! server's `direct::RequestReader` (frame decoding, the version peek on a bad first frame,
//! stream checks, the frame limit) fed each chunk as it arrives, and `ServerStore::sync`
//! (started once a `Hello` arrived, fed the changes as they are decoded, committed only when
//! the body ended well, rolled back otherwise). Body decoding against the schema and
//! reconciliation are the store's own code.
//!
//! One database per process, on a temporary file, seeded once with two devices in two scopes
//! (companies, contacts, a tombstone, id maps). Each input starts from that seed: after an
//! accepted stream the tables are restored from a copy of it, so a crash replays alone.
//!
//! The same bytes then go through `ferrysync_server::direct::sync`, the whole-request path
//! that simulations and benchmarks use; both paths must agree.
//!
//! Invariants:
//! - no panic, and no store error other than "aborted" (client bytes never cause a 500);
//! - a stream refused as a whole changes nothing (fingerprint of every table equal);
//! - an accepted stream leaves no detail without its master, no detail in another scope than
//!   its master, no live row with a tombstone, and `_meta.seq` at or above every `_seq`;
//! - `direct::sync` refuses every stream the HTTP path refuses (and changes nothing either);
//! - a retry of an accepted stream (through `direct::sync`) is accepted, creates no row (no
//!   insert at all: `sqlite_sequence` unchanged; no table but `_tombstone` grows) and gives
//!   the same id map; when the stream names each record once (local keys resolved through
//!   the id map), the retry changes nothing at all (same fingerprint);
//! - the reply to it decodes frame by frame, passes `ReplyCheck`, and every record in it fits
//!   the schema.

use crate::spec::{self, NOW_MS};
use crate::{chunks, invariant, planted, split_chunking};
use ferrysync_core::body;
use ferrysync_core::frame::FrameDecoder;
use ferrysync_core::schema::Schema;
use ferrysync_core::stream::{ReplyCheck, StreamError};
use ferrysync_core::wire::{Hello, Mapping, Reply, Request, PROTOCOL_VERSION};
use ferrysync_core::RecordRef;
use ferrysync_server::direct::{self, DirectError, ReadError, RequestReader};
use ferrysync_server::store::{
    ChangeSource, Device, Incoming, OwnedChange, ServerStore, StoreError, SyncOutcome, SyncParams,
};
use ferrysync_server::{Config, LoadedSchema, SqliteStore, MAX_FRAME};
use rusqlite::Connection;
use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Why the server refused a stream (it answers 4xx and changes nothing).
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// A bad frame.
    Frame(u32),
    /// A stream rule.
    Stream(StreamError),
    /// A newer protocol's `Hello`.
    Version(u16),
    /// Over the frame limit.
    TooManyFrames,
    /// The store rolled back (it saw the end without `Commit`).
    Aborted,
}

/// What the server did with a request.
#[derive(Debug)]
pub enum Verdict {
    /// Committed.
    Accepted(Hello, SyncOutcome),
    /// Refused as a whole.
    Refused(Refusal),
}

/// The body reader: the server's own `RequestReader`, fed one chunk at a time as
/// `ServerStore::sync` asks for changes.
struct Reader<'a> {
    chunks: std::slice::Iter<'a, &'a [u8]>,
    reader: RequestReader,
    queue: VecDeque<OwnedChange>,
    /// Set when the stream is refused.
    refused: Option<Refusal>,
    /// The stream ended well (the source said `Commit`).
    complete: bool,
    /// Changes handed to the store so far.
    handed: u32,
}

fn refusal(e: ReadError) -> Refusal {
    match e {
        ReadError::Frame { frame, .. } => Refusal::Frame(frame),
        ReadError::Stream {
            error: StreamError::UnsupportedVersion { got },
            ..
        } => Refusal::Version(got),
        ReadError::Stream { error, .. } => Refusal::Stream(error),
        ReadError::TooManyFrames { .. } => Refusal::TooManyFrames,
    }
}

impl Reader<'_> {
    /// Reads the next chunk; `false` at the end of the body or on a refusal.
    fn read_chunk(&mut self) -> bool {
        let Some(chunk) = self.chunks.next() else {
            return false;
        };
        let mut out = Vec::new();
        match self.reader.push(chunk, &mut out) {
            Ok(()) => {
                self.queue.extend(out);
                true
            }
            Err(e) => {
                self.refused = Some(refusal(e));
                false
            }
        }
    }

    /// Called once the body is exhausted without a refusal: is it a whole stream?
    fn finish(&mut self) -> bool {
        if self.refused.is_some() {
            return false;
        }
        match self.reader.finish() {
            Ok(_) => true,
            Err(e) => {
                self.refused = Some(refusal(e));
                false
            }
        }
    }
}

impl ChangeSource for Reader<'_> {
    fn next(&mut self) -> Option<Incoming> {
        loop {
            if let Some(c) = self.queue.pop_front() {
                self.handed += 1;
                return Some(Incoming::Change(c));
            }
            if self.read_chunk() {
                continue;
            }
            if self.finish() {
                self.complete = true;
                return Some(Incoming::Commit);
            }
            // The planted bug (selftest): a server that commits what it has read of a
            // refused stream instead of rolling back.
            if planted("request_stream") && self.handed > 0 {
                return Some(Incoming::Commit);
            }
            return None;
        }
    }
}

/// Runs one request body (as chunks) through the server's request path for `device`.
pub fn serve<'a>(
    store: &SqliteStore,
    schema: &LoadedSchema,
    device: &Device,
    body: &'a [&'a [u8]],
) -> Verdict {
    let mut r = Reader {
        chunks: body.iter(),
        reader: RequestReader::new(schema.hash(), Config::default().max_frames),
        queue: VecDeque::new(),
        refused: None,
        complete: false,
        handed: 0,
    };
    // The database transaction starts once a `Hello` has arrived.
    while r.reader.hello().is_none() {
        if !r.read_chunk() {
            r.finish();
            return Verdict::Refused(r.refused.unwrap_or(Refusal::Stream(StreamError::Truncated)));
        }
    }
    let result = store.sync(device, params(), &mut r);
    match (result, r.reader.hello()) {
        (Ok(outcome), Some(hello)) if r.complete => Verdict::Accepted(hello, outcome),
        // Only reachable with the planted bug: the store committed a refused stream.
        (Ok(_), _) => Verdict::Refused(r.refused.unwrap_or(Refusal::Aborted)),
        (Err(StoreError::Aborted), _) => Verdict::Refused(r.refused.unwrap_or(Refusal::Aborted)),
        (Err(e), _) => panic!("invariant broken: client bytes caused a store error: {e}"),
    }
}

/// The fuzzing state: one seeded database per process.
pub struct World {
    /// The store under test.
    pub store: SqliteStore,
    /// Its schema.
    pub schema: LoadedSchema,
    /// The seeded devices (scopes "north" and "south").
    pub devices: [Device; 2],
    check: Connection,
    seed_print: Vec<i64>,
    _dir: Scratch,
}

/// A scratch directory named after this process, removed on drop. Fuzzing processes end
/// with `exit` (statics are never dropped), so each start also removes the directories of
/// processes that are gone.
pub struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        if let Ok(entries) = std::fs::read_dir(&base) {
            for e in entries.flatten() {
                let name = e.file_name();
                let Some(pid) = name
                    .to_str()
                    .and_then(|n| n.strip_prefix("ferrysync-fuzz-"))
                else {
                    continue;
                };
                let alive = pid
                    .parse::<u32>()
                    .is_ok_and(|p| Path::new(&format!("/proc/{p}")).exists());
                if !alive {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = base.join(format!("ferrysync-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Scratch(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl World {
    /// A fresh database with the seed data (built through [`serve`] itself).
    pub fn new() -> Self {
        let dir = Scratch::new();
        let path = dir.path().join("server.db");
        let schema = LoadedSchema::example();
        let store = SqliteStore::open(&path, schema).expect("open store");
        let north = store.add_device("north", &[1; 32], NOW_MS).expect("device");
        let south = store.add_device("south", &[2; 32], NOW_MS).expect("device");
        for (dev, stream) in seed_streams(&schema.schema()) {
            let device = if dev == 0 { &north } else { &south };
            match serve(&store, &schema, device, &[&stream]) {
                Verdict::Accepted(_, out) => {
                    assert!(out.rejected.is_empty(), "seed rejected: {out:?}")
                }
                Verdict::Refused(r) => panic!("seed refused: {r:?}"),
            }
        }
        let check = Connection::open(&path).expect("check connection");
        check
            .busy_timeout(std::time::Duration::from_secs(10))
            .expect("busy timeout");
        // The restore empties parents before children; the store's own connections keep
        // enforcing foreign keys.
        check
            .pragma_update(None, "foreign_keys", "OFF")
            .expect("pragma");
        let seed = dir.path().join("seed.db");
        check
            .execute("VACUUM INTO ?1", [seed.to_str().expect("utf-8 path")])
            .expect("seed copy");
        check
            .execute(
                "ATTACH DATABASE ?1 AS seed",
                [seed.to_str().expect("utf-8 path")],
            )
            .expect("attach seed");
        let mut w = World {
            store,
            schema,
            devices: [north, south],
            check,
            seed_print: Vec::new(),
            _dir: dir,
        };
        w.seed_print = w.fingerprint();
        w
    }

    fn tables(&self) -> Vec<&'static str> {
        let mut t: Vec<&'static str> = self.schema.schema().tables.iter().map(|t| t.name).collect();
        t.extend(["_idmap", "_tombstone", "_meta", "sqlite_sequence"]);
        t
    }

    /// A cheap fingerprint of everything a sync may write.
    pub fn fingerprint(&self) -> Vec<i64> {
        let mut out = Vec::new();
        let c = &self.check;
        let one = |sql: &str| -> Vec<i64> {
            c.query_row(sql, [], |r| {
                Ok((0..3).map(|i| r.get::<_, i64>(i).unwrap_or(0)).collect())
            })
            .expect("fingerprint query")
        };
        for t in self.schema.schema().tables {
            out.extend(one(&format!(
                "SELECT count(*), coalesce(max(_seq), 0), coalesce(sum(id * 7 + _seq + _wall % 1000003 + _counter + _device), 0) FROM \"{}\"",
                t.name
            )));
        }
        out.extend(one("SELECT count(*), coalesce(sum(server), 0), coalesce(sum(local + device), 0) FROM _idmap"));
        out.extend(one(
            "SELECT count(*), coalesce(max(seq), 0), coalesce(sum(id + seq), 0) FROM _tombstone",
        ));
        out.extend(one(
            "SELECT count(*), coalesce(sum(value), 0), coalesce(max(value), 0) FROM _meta",
        ));
        out.extend(one(
            "SELECT count(*), coalesce(sum(seq), 0), 0 FROM sqlite_sequence",
        ));
        out
    }

    /// Rows per table and the AUTOINCREMENT counters.
    fn counts(&self) -> (Vec<i64>, Vec<(String, i64)>) {
        let c = &self.check;
        let counts = self
            .tables()
            .iter()
            .map(|t| {
                c.query_row(&format!("SELECT count(*) FROM \"{t}\""), [], |r| r.get(0))
                    .expect("count")
            })
            .collect();
        let mut stmt = c
            .prepare_cached("SELECT name, seq FROM sqlite_sequence ORDER BY name")
            .expect("prepare");
        let seqs = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        (counts, seqs)
    }

    /// The structural invariants of the database.
    pub fn check_consistent(&self) {
        let c = &self.check;
        let s = self.schema.schema();
        for t in s.tables {
            let (Some(p), Some(fk)) = (t.parent.and_then(|p| s.table(p)), t.parent_field) else {
                continue;
            };
            let orphans: i64 = c
                .query_row(
                    &format!(
                        "SELECT count(*) FROM \"{c}\" x WHERE NOT EXISTS (SELECT 1 FROM \"{p}\" y WHERE y.id = x.\"{fk}\")",
                        c = t.name,
                        p = p.name
                    ),
                    [],
                    |r| r.get(0),
                )
                .expect("orphan query");
            invariant!(
                orphans == 0,
                "{orphans} {} rows without their {}",
                t.name,
                p.name
            );
            let strays: i64 = c
                .query_row(
                    &format!(
                        "SELECT count(*) FROM \"{c}\" x JOIN \"{p}\" y ON y.id = x.\"{fk}\" WHERE x._scope <> y._scope",
                        c = t.name,
                        p = p.name
                    ),
                    [],
                    |r| r.get(0),
                )
                .expect("scope query");
            invariant!(
                strays == 0,
                "{strays} {} rows in another scope than their {}",
                t.name,
                p.name
            );
        }
        for t in s.tables {
            let both: i64 = c
                .query_row(
                    &format!(
                        "SELECT count(*) FROM _tombstone b JOIN \"{n}\" x ON b.tbl = '{n}' AND b.id = x.id",
                        n = t.name
                    ),
                    [],
                    |r| r.get(0),
                )
                .expect("tombstone query");
            invariant!(both == 0, "{both} live {} rows have a tombstone", t.name);
            let ahead: i64 = c
                .query_row(
                    &format!(
                        "SELECT count(*) FROM \"{}\" WHERE _seq > (SELECT value FROM _meta WHERE key = 'seq')",
                        t.name
                    ),
                    [],
                    |r| r.get(0),
                )
                .expect("seq query");
            invariant!(
                ahead == 0,
                "{ahead} {} rows with _seq above _meta.seq",
                t.name
            );
        }
    }

    /// Puts the seed data back.
    pub fn restore(&self) {
        let mut sql = String::from("BEGIN IMMEDIATE;\n");
        for t in self.tables() {
            sql.push_str(&format!(
                "DELETE FROM main.\"{t}\"; INSERT INTO main.\"{t}\" SELECT * FROM seed.\"{t}\";\n"
            ));
        }
        sql.push_str("COMMIT;");
        self.check.execute_batch(&sql).expect("restore seed");
        let now = self.fingerprint();
        assert_eq!(now, self.seed_print, "restore did not bring the seed back");
    }

    /// Runs one request body through the server and checks every invariant.
    ///
    /// The body goes through the HTTP handler's streaming path ([`serve`]) first; then the
    /// same bytes go through `ferrysync_server::direct::sync` (the whole-request path that
    /// simulations use), which must agree: it refuses what was refused, and for an accepted
    /// stream it is the retry (and its reply is checked as a device would).
    pub fn run_stream(&self, device: usize, body: &[&[u8]]) {
        let device = &self.devices[device % 2];
        let bytes = body.concat();
        match serve(&self.store, &self.schema, device, body) {
            Verdict::Refused(why) => {
                crate::tally(match why {
                    Refusal::Frame(0) => "refused: frame 0",
                    Refusal::Frame(_) => "refused: later frame",
                    Refusal::Stream(StreamError::Truncated) => "refused: truncated",
                    Refusal::Stream(_) => "refused: stream rule",
                    _ => "refused: other",
                });
                if self.fingerprint() != self.seed_print {
                    self.restore();
                    panic!("invariant broken: a refused stream ({why:?}) changed the database");
                }
                match direct::sync(&self.store, self.schema.hash(), device, params(), &bytes) {
                    Ok(_) => {
                        self.restore();
                        panic!("invariant broken: the HTTP path refused ({why:?}) what direct::sync accepted");
                    }
                    Err(DirectError::Store(e)) => {
                        panic!("invariant broken: client bytes caused a store error in direct::sync: {e}")
                    }
                    Err(_) => {}
                }
                if self.fingerprint() != self.seed_print {
                    self.restore();
                    panic!("invariant broken: direct::sync changed the database for a refused stream ({why:?})");
                }
            }
            Verdict::Accepted(hello, first) => {
                crate::tally(match (first.applied, first.rejected.is_empty()) {
                    (0, true) => "accepted: nothing applied",
                    (0, false) => "accepted: all rejected",
                    (_, true) => "accepted: applied",
                    (_, false) => "accepted: applied and rejected",
                });
                self.check_consistent();
                let before = self.counts();
                let print = self.fingerprint();
                let distinct = self.names_records_once(device, &bytes);
                let retry = direct::sync(&self.store, self.schema.hash(), device, params(), &bytes);
                let after = self.counts();
                let reprint = self.fingerprint();
                self.check_consistent();
                self.restore();
                let reply = match retry {
                    Ok(reply) => reply,
                    Err(e) => {
                        panic!("invariant broken: the retry of an accepted stream failed: {e}")
                    }
                };
                invariant!(
                    after.1 == before.1,
                    "the retry inserted rows: sqlite_sequence {:?} -> {:?}",
                    before.1,
                    after.1
                );
                // Tombstones may grow: a batch that deletes a local id before adding it
                // deletes, on retry, the record its first run added.
                for (i, (a, b)) in before.0.iter().zip(&after.0).enumerate() {
                    let t = self.tables()[i];
                    invariant!(
                        b <= a || t == "_tombstone",
                        "the retry grew table {t}: {a} -> {b}"
                    );
                }
                // A batch that names each record once (as a device sends it) is a no-op the
                // second time: adds find their id map, updates lose to themselves, deletes
                // find their tombstone.
                invariant!(
                    !distinct || reprint == print,
                    "the retry of a batch that names each record once changed the database"
                );
                let mappings = check_reply(&self.schema.schema(), hello.batch_id, &reply);
                // The same id map (as a set: a batch that names one local id twice gets
                // its mapping once per add, and a change rejected after its add was found
                // in the id map still reports the mapping).
                let a: BTreeSet<_> = first
                    .mappings
                    .iter()
                    .map(|m| (m.table, m.local, m.server))
                    .collect();
                let b: BTreeSet<_> = mappings
                    .iter()
                    .map(|m| (m.table, m.local, m.server))
                    .collect();
                invariant!(a == b, "the retry gave another id map: {a:?} vs {b:?}");
            }
        }
    }
}

impl World {
    /// Whether an accepted request names each record at most once, with local keys resolved
    /// through the id map as the server resolves them (after the first run).
    fn names_records_once(&self, device: &Device, bytes: &[u8]) -> bool {
        let s = self.schema.schema();
        let mut dec: Box<FrameDecoder<MAX_FRAME>> = Box::new(FrameDecoder::new());
        let mut seen = BTreeSet::new();
        let mut input = bytes;
        while !input.is_empty() {
            let fed = dec.feed::<Request<'_>>(input);
            input = &input[fed.consumed..];
            let Ok(Some(msg)) = fed.result else {
                continue;
            };
            for c in msg.items() {
                let Ok(Request::Change(c)) = c else {
                    continue;
                };
                let Some(t) = s.table(c.table) else { continue };
                let key = match c.key {
                    RecordRef::Server(id) => (c.table, Some(id.0 as i64), None),
                    RecordRef::Local(l) => {
                        let server: Option<i64> = self
                        .check
                        .query_row(
                            "SELECT server FROM _idmap WHERE device = ?1 AND tbl = ?2 AND local = ?3",
                            rusqlite::params![device.id, t.name, l.0],
                            |r| r.get(0),
                        )
                        .ok();
                        match server {
                            Some(id) => (c.table, Some(id), None),
                            None => (c.table, None, Some(l.0)),
                        }
                    }
                };
                if !seen.insert(key) {
                    return false;
                }
            }
        }
        true
    }
}

/// Sync parameters: a fixed server time, the default skew and retention.
pub fn params() -> SyncParams {
    SyncParams {
        now_ms: NOW_MS,
        max_skew_ms: Config::default().max_skew_ms,
        tombstone_retention_ms: Config::default().tombstone_retention_ms,
    }
}

/// Checks a server reply as a device reads it: every frame decodes, the stream passes
/// `ReplyCheck` for `batch_id`, every record's body fits its table and it has a parent id
/// exactly when its table has a parent. Returns the mappings.
pub fn check_reply(schema: &Schema<'_>, batch_id: u64, reply: &[u8]) -> Vec<Mapping> {
    let mut dec: Box<FrameDecoder<MAX_FRAME>> = Box::new(FrameDecoder::new());
    let mut check = ReplyCheck::new(batch_id);
    let mut mappings = Vec::new();
    let mut input = reply;
    while !input.is_empty() {
        let fed = dec.feed::<Reply<'_>>(input);
        input = &input[fed.consumed..];
        let msg = match fed.result {
            Ok(None) => continue,
            Ok(Some(m)) => m,
            Err(e) => panic!("invariant broken: the server wrote a bad reply frame: {e}"),
        };
        for msg in msg.items() {
            let msg = match msg {
                Ok(m) => m,
                Err(e) => panic!("invariant broken: the server wrote a bad batched record: {e:?}"),
            };
            if let Err(e) = check.handle(&msg) {
                panic!(
                    "invariant broken: the server's reply breaks the stream rules: {e} at {msg:?}"
                );
            }
            match msg {
                Reply::Mapping(m) => mappings.push(m),
                Reply::Upsert(u) => {
                    let t = schema.table(u.table);
                    invariant!(t.is_some(), "reply upsert of unknown {:?}", u.table);
                    let t = t.expect("checked");
                    invariant!(
                        body::validate(t, u.body).is_ok(),
                        "reply body of {} does not fit",
                        t.name
                    );
                    invariant!(
                        t.parent.is_some() == u.parent.is_some(),
                        "reply upsert of {} with parent {:?}",
                        t.name,
                        u.parent
                    );
                }
                _ => {}
            }
        }
    }
    invariant!(!dec.is_mid_frame(), "the server's reply ends mid-frame");
    invariant!(check.finish().is_ok(), "the server's reply has no Done");
    mappings
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

static WORLD: OnceLock<Mutex<World>> = OnceLock::new();

/// The fuzz entry: byte 0 even = raw bytes (chunking header, device, stream), odd = a
/// structured [`spec::RequestSpec`].
pub fn run(input: &[u8]) {
    let world = WORLD.get_or_init(|| Mutex::new(World::new()));
    let w = world.lock().unwrap_or_else(|e| e.into_inner());
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let (sizes, data) = split_chunking(rest);
        let device = usize::from(mode / 2);
        w.run_stream(device, &chunks(data, &sizes));
    } else {
        let Some(spec) = spec::take::<spec::RequestSpec>(rest) else {
            return;
        };
        let bytes = spec.bytes(&w.schema.schema());
        w.run_stream(
            usize::from(spec.device),
            &chunks(&bytes, &spec.chunk_sizes()),
        );
    }
}

/// One change of a hand-written stream: table, op, key, parent, wall time, body.
pub type SeedChange = (
    u8,
    ferrysync_core::wire::Op,
    ferrysync_core::RecordRef,
    Option<ferrysync_core::RecordRef>,
    u64,
    Vec<u8>,
);

/// A whole request stream of hand-written changes (full mode without a cursor, delta with).
pub fn seed_request(
    schema_hash: u64,
    batch: u64,
    cursor: Option<u64>,
    changes: &[SeedChange],
) -> Vec<u8> {
    use crate::spec::frame;
    use ferrysync_core::wire::{Change, End, Mode};
    use ferrysync_core::{Hlc, TableId};
    let mut out = frame(&Request::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        schema_hash,
        batch_id: batch,
        cursor,
        mode: if cursor.is_some() {
            Mode::Delta
        } else {
            Mode::Full
        },
    }));
    // Batched as devices send them.
    let mut pack = Box::new(ferrysync_core::pack::Packer::<MAX_FRAME>::new());
    for (t, op, key, parent, wall, body) in changes {
        let change = Change {
            table: TableId(*t),
            op: *op,
            key: *key,
            parent: *parent,
            modified_at: Hlc::new(*wall, 0, 1),
            body,
        };
        while let Some(f) = pack.change(&change).expect("a seed change fits a frame") {
            out.extend_from_slice(f);
        }
    }
    if let Some(f) = pack.flush().expect("a batch fits its frame") {
        out.extend_from_slice(f);
    }
    out.extend(frame(&Request::End(End {
        count: changes.len() as u32,
    })));
    out
}

/// The seed streams: `(device index, bytes)`; the pattern's story for two devices.
pub fn seed_streams(schema: &Schema<'_>) -> Vec<(usize, Vec<u8>)> {
    use ferrysync_core::wire::Op;
    use ferrysync_core::{LocalId, RecordRef, ServerId, TableId};
    let body = |t: u8, a: &str, b: &str, c: &str| -> Vec<u8> {
        let mut buf = [0u8; 256];
        let t = schema.table(TableId(t)).expect("table");
        ferrysync_core::body::encode(
            t,
            &[
                ferrysync_core::body::Value::Text(a),
                ferrysync_core::body::Value::Text(b),
                ferrysync_core::body::Value::Text(c),
            ],
            &mut buf,
        )
        .expect("body")
        .to_vec()
    };
    let stream =
        |batch, cursor, changes: &[SeedChange]| seed_request(schema.hash(), batch, cursor, changes);
    let l = |n: u32| RecordRef::Local(LocalId(n));
    let s = |n: u64| RecordRef::Server(ServerId(n));
    let t0 = NOW_MS - 60_000;
    vec![
        // North adds two companies (local 5, 6) and three contacts under them.
        (
            0,
            stream(
                1,
                None,
                &[
                    (0, Op::Add, l(5), None, t0, body(0, "ACME", "Lyon", "+33 1")),
                    (
                        0,
                        Op::Add,
                        l(6),
                        None,
                        t0,
                        body(0, "Globex", "Paris", "+33 2"),
                    ),
                    (
                        1,
                        Op::Add,
                        l(7),
                        Some(l(5)),
                        t0,
                        body(1, "Ann", "ann@acme", "1"),
                    ),
                    (
                        1,
                        Op::Add,
                        l(8),
                        Some(l(5)),
                        t0,
                        body(1, "Bob", "bob@acme", "2"),
                    ),
                    (
                        1,
                        Op::Add,
                        l(9),
                        Some(l(6)),
                        t0,
                        body(1, "Cy", "cy@globex", "3"),
                    ),
                ],
            ),
        ),
        // North renames company 2 and deletes contact 2 (a tombstone).
        (
            0,
            stream(
                2,
                Some(6),
                &[
                    (
                        0,
                        Op::Update,
                        s(2),
                        None,
                        t0 + 1000,
                        body(0, "Globex SA", "Paris", "+33 2"),
                    ),
                    (1, Op::Delete, s(2), Some(s(1)), t0 + 1000, Vec::new()),
                ],
            ),
        ),
        // South adds its own company and contact.
        (
            1,
            stream(
                1,
                None,
                &[
                    (
                        0,
                        Op::Add,
                        l(5),
                        None,
                        t0,
                        body(0, "Initech", "Lille", "+33 3"),
                    ),
                    (
                        1,
                        Op::Add,
                        l(6),
                        Some(l(5)),
                        t0,
                        body(1, "Dee", "dee@initech", "4"),
                    ),
                ],
            ),
        ),
    ]
}
