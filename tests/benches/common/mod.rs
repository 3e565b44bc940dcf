//! Shared pieces of the issue-7 benchmarks: links into the server without sockets, the bare
//! rusqlite baseline, side-by-side timing and the markdown table they print.
#![allow(dead_code)] // Each bench target uses its own subset.

use ferrysync_core::engine;
use ferrysync_core::schema::EXAMPLE;
use ferrysync_core::transport::Transport;
use ferrysync_core::wire::Mode;
use ferrysync_server::direct;
use ferrysync_server::store::{Device, SyncParams};
use ferrysync_server::{LoadedSchema, ServerStore, SqliteStore as ServerDb};
use ferrysync_sqlite::{rusqlite, SqliteStore, MAX_FRAME};
use ferrysync_tests::workload::{Size, Workload};
use std::fmt;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Error of the links: what went wrong, as text (a benchmark stops on it).
#[derive(Debug)]
pub struct LinkError(pub String);

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Records the request a device sends; answers nothing.
#[derive(Default)]
pub struct Capture {
    pub request: Vec<u8>,
}

impl Transport for Capture {
    type Error = LinkError;
    async fn send(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        self.request.extend_from_slice(bytes);
        Ok(())
    }
    async fn finish(&mut self) -> Result<(), LinkError> {
        Ok(())
    }
    async fn receive(&mut self, _: &mut [u8]) -> Result<usize, LinkError> {
        Ok(0)
    }
}

/// The request `store`'s device would send now (nothing is written to the store).
pub fn request_of(store: &mut SqliteStore, mode: Mode) -> Vec<u8> {
    let mut cap = Capture::default();
    pollster::block_on(engine::send_request::<_, _, MAX_FRAME>(
        &EXAMPLE, store, &mut cap, mode,
    ))
    .expect("build request");
    cap.request
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn params() -> SyncParams {
    SyncParams {
        now_ms: now_ms(),
        max_skew_ms: 5 * 60 * 1000,
        tombstone_retention_ms: 90 * 24 * 3600 * 1000,
    }
}

/// A transport straight into `direct::sync` (no sockets): the server's whole request and reply
/// path on byte slices. Counts the bytes of the last exchange.
pub struct DirectLink<'a> {
    pub store: &'a dyn ServerStore,
    pub device: &'a Device,
    request: Vec<u8>,
    reply: Vec<u8>,
    pos: usize,
    /// Request bytes of the last exchange.
    pub sent: u64,
    /// Reply bytes of the last exchange.
    pub received: u64,
    /// Time the last exchange spent in `direct::sync` (the server's whole part).
    pub server_time: Duration,
}

impl<'a> DirectLink<'a> {
    pub fn new(store: &'a dyn ServerStore, device: &'a Device) -> Self {
        DirectLink {
            store,
            device,
            request: Vec::new(),
            reply: Vec::new(),
            pos: 0,
            sent: 0,
            received: 0,
            server_time: Duration::ZERO,
        }
    }
}

impl Transport for DirectLink<'_> {
    type Error = LinkError;
    async fn send(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        self.request.extend_from_slice(bytes);
        Ok(())
    }
    async fn finish(&mut self) -> Result<(), LinkError> {
        let request = std::mem::take(&mut self.request);
        self.sent = request.len() as u64;
        let started = Instant::now();
        self.reply = direct::sync(
            self.store,
            LoadedSchema::example().hash(),
            self.device,
            params(),
            &request,
        )
        .map_err(|e| LinkError(e.to_string()))?;
        self.server_time = started.elapsed();
        self.received = self.reply.len() as u64;
        self.pos = 0;
        Ok(())
    }
    async fn receive(&mut self, buf: &mut [u8]) -> Result<usize, LinkError> {
        let n = buf.len().min(self.reply.len() - self.pos);
        buf[..n].copy_from_slice(&self.reply[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A server database in `dir` with one device of scope `bench`.
pub fn server_db(dir: &Path, name: &str) -> (ServerDb, Device) {
    let store = ServerDb::open(&dir.join(name), LoadedSchema::example()).expect("server db");
    let (device, _) = ferrysync_server::auth::add_device(&store, "bench").expect("device");
    (store, device)
}

/// [`server_db`] on a file whose pages are `page_size` bytes (see [`file_with_pages`]).
pub fn server_db_with_pages(dir: &Path, name: &str, page_size: u32) -> (ServerDb, Device) {
    file_with_pages(&dir.join(name), page_size);
    server_db(dir, name)
}

/// Makes `path` a new SQLite file whose pages are `page_size` bytes. A file's page size is
/// fixed when its first page is written, and the stores (server and phone) leave it to the
/// file: one opened on this file afterwards keeps these pages.
pub fn file_with_pages(path: &Path, page_size: u32) {
    let _ = std::fs::remove_file(path);
    let c = rusqlite::Connection::open(path).expect("open");
    c.pragma_update(None, "page_size", page_size)
        .expect("page_size");
    c.execute_batch("CREATE TABLE _first_page (x); DROP TABLE _first_page;")
        .expect("first page");
    assert_pages(path, page_size);
}

/// Checks that the SQLite file at `path` has pages of `page_size` bytes (a store opened on a
/// [`file_with_pages`] file kept them).
pub fn assert_pages(path: &Path, page_size: u32) {
    let c = rusqlite::Connection::open(path).expect("open");
    let got: u32 = c
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .expect("page_size");
    assert_eq!(got, page_size, "page size of {}", path.display());
}

/// Pages of the stores' files on the smaller side of item 4: a row changed on its own page
/// writes a quarter of the bytes of SQLite's default page.
pub const SMALL_PAGE: u32 = 1024;

/// A second device of scope `bench` on `store`.
pub fn another_device(store: &dyn ServerStore) -> Device {
    ferrysync_server::auth::add_device(store, "bench")
        .expect("device")
        .0
}

/// How durable a commit is, as SQLite's `synchronous` setting in WAL mode.
#[derive(Clone, Copy, Debug)]
pub enum Commit {
    /// `FULL`: the commit waits for the log's fsync (the server's syncs, the phone's edits).
    Durable,
    /// `NORMAL`: no fsync at commit (the phone's reply transaction, `LocalStore::begin_reply`).
    Lazy,
}

/// The bare baseline: the workload's rows inserted with rusqlite into plain tables (id,
/// fields, the contact's `company_id` with a foreign key and its index) in one transaction, on
/// a fresh file, WAL, committed as `commit` says (the same as the side it is compared with).
/// Times the transaction, from `BEGIN` to the end of `COMMIT`.
pub fn bare_bulk_insert(dir: &Path, w: &Workload, commit: Commit) -> Duration {
    let mut c = bare_db(&dir.join("bare.db"), commit, DEFAULT_PAGE);
    let started = Instant::now();
    bare_insert(&mut c, w);
    started.elapsed()
}

/// SQLite's default page size, the one the server's and the phone's files use.
pub const DEFAULT_PAGE: u32 = 4096;

/// A fresh file with the bare baseline's plain tables, WAL, `synchronous` as `commit` says,
/// pages of `page_size` bytes.
fn bare_db(path: &Path, commit: Commit, page_size: u32) -> rusqlite::Connection {
    let _ = std::fs::remove_file(path);
    let c = rusqlite::Connection::open(path).expect("open bare db");
    // Before the first write (the file is new), so it holds.
    c.pragma_update(None, "page_size", page_size)
        .expect("page_size");
    let _: String = c
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .expect("WAL");
    c.pragma_update(
        None,
        "synchronous",
        match commit {
            Commit::Durable => "FULL",
            Commit::Lazy => "NORMAL",
        },
    )
    .expect("synchronous");
    c.execute_batch(
        "PRAGMA foreign_keys = ON;
         CREATE TABLE company (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL,
                               phone TEXT NOT NULL);
         CREATE TABLE contact (id INTEGER PRIMARY KEY,
                               company_id INTEGER NOT NULL REFERENCES company(id),
                               name TEXT NOT NULL, email TEXT NOT NULL, phone TEXT NOT NULL);
         CREATE INDEX contact_company ON contact (company_id);",
    )
    .expect("bare schema");
    c
}

/// Inserts the workload's rows into [`bare_db`]'s tables, prepared statements, one transaction.
fn bare_insert(c: &mut rusqlite::Connection, w: &Workload) {
    let tx = c.transaction().expect("begin");
    {
        let mut ins = tx
            .prepare("INSERT INTO company (id, name, city, phone) VALUES (?1, ?2, ?3, ?4)")
            .expect("prepare");
        for (i, r) in w.companies.iter().enumerate() {
            ins.execute(rusqlite::params![i as i64 + 1, r.name, r.city, r.phone])
                .expect("insert company");
        }
        let mut ins = tx
            .prepare(
                "INSERT INTO contact (id, company_id, name, email, phone) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .expect("prepare");
        for (j, r) in w.contacts.iter().enumerate() {
            ins.execute(rusqlite::params![
                j as i64 + 1,
                r.company as i64 + 1,
                r.name,
                r.email,
                r.phone
            ])
            .expect("insert contact");
        }
    }
    tx.commit().expect("commit");
}

/// The floor of a 1 % delta: the bare baseline's tables holding the whole workload, in which
/// [`BareDelta::rename`] writes the 1 % renames as bare `UPDATE`s by primary key and
/// [`BareDelta::read`] reads those rows back.
pub struct BareDelta {
    conn: rusqlite::Connection,
    round: usize,
}

impl BareDelta {
    /// The workload in a fresh [`bare_db`] file `name` in `dir`, committed as `commit` says,
    /// pages of `page_size` bytes (a small page writes fewer bytes for a row changed on its
    /// own page).
    pub fn new(dir: &Path, name: &str, w: &Workload, commit: Commit, page_size: u32) -> BareDelta {
        let mut conn = bare_db(&dir.join(name), commit, page_size);
        bare_insert(&mut conn, w);
        BareDelta { conn, round: 0 }
    }

    /// Reads every contact the 1 % update renames, all its columns, one prepared `SELECT ...
    /// WHERE id = ?` each, in one read transaction (what a server must read at least to send
    /// them); returns how many and the time from `BEGIN` to the end of `COMMIT`.
    pub fn read(&mut self, w: &Workload) -> (usize, Duration) {
        let ids: Vec<i64> = (0..w.contacts.len())
            .filter(|&j| ferrysync_core::workload::is_renamed(j))
            .map(|j| j as i64 + 1)
            .collect();
        let started = Instant::now();
        let tx = self.conn.transaction().expect("begin");
        let mut n = 0;
        {
            let mut get = tx
                .prepare_cached(
                    "SELECT id, company_id, name, email, phone FROM contact WHERE id = ?1",
                )
                .expect("prepare");
            for id in &ids {
                let mut rows = get.query([id]).expect("select");
                while let Some(row) = rows.next().expect("row") {
                    // Every column, as the server reads them to send the row.
                    let mut len = 0;
                    for i in 2..5 {
                        len += row
                            .get_ref(i)
                            .expect("column")
                            .as_str()
                            .expect("text")
                            .len();
                    }
                    let ids: i64 =
                        row.get::<_, i64>(0).expect("id") + row.get::<_, i64>(1).expect("fk");
                    n += usize::from(len > 0 && ids > 0);
                }
            }
        }
        tx.commit().expect("commit");
        (n, started.elapsed())
    }

    /// Renames every contact the 1 % update renames (to its new name, or back in every other
    /// round, so each round changes the rows), one prepared `UPDATE ... WHERE id = ?` each, in
    /// one transaction; returns how many and the time from `BEGIN` to the end of `COMMIT`.
    pub fn rename(&mut self, w: &Workload) -> (usize, Duration) {
        self.round += 1;
        let names: Vec<(i64, String)> = (w.contacts.iter().enumerate())
            .filter(|&(j, _)| ferrysync_core::workload::is_renamed(j))
            .map(|(j, c)| {
                let name = if self.round % 2 == 1 {
                    ferrysync_core::workload::renamed(j)
                } else {
                    c.name.clone()
                };
                (j as i64 + 1, name)
            })
            .collect();
        let started = Instant::now();
        let tx = self.conn.transaction().expect("begin");
        let mut n = 0;
        {
            let mut up = tx
                .prepare_cached("UPDATE contact SET name = ?2 WHERE id = ?1")
                .expect("prepare");
            for (id, name) in &names {
                n += up.execute(rusqlite::params![id, name]).expect("update");
            }
        }
        tx.commit().expect("commit");
        (n, started.elapsed())
    }
}

/// The same records as one JSON array of objects, what a JSON API would carry: companies
/// `{id, name, city, phone}`, then contacts `{id, company_id, name, email, phone}`.
pub fn json(w: &Workload) -> Vec<u8> {
    let mut items = Vec::with_capacity(w.records());
    for (i, c) in w.companies.iter().enumerate() {
        items.push(serde_json::json!({
            "id": i + 1, "name": c.name, "city": c.city, "phone": c.phone,
        }));
    }
    for (j, c) in w.contacts.iter().enumerate() {
        items.push(serde_json::json!({
            "id": j + 1, "company_id": c.company + 1, "name": c.name, "email": c.email,
            "phone": c.phone,
        }));
    }
    serde_json::to_vec(&items).expect("json")
}

/// gzip (default level) of `bytes`: what HTTP `Content-Encoding: gzip` would carry.
pub fn gzip_len(bytes: &[u8]) -> usize {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip").len()
}

/// Bytes of `bytes` as brotli at the quality and window bodies travel with
/// (`ferrysync_sqlite::coding`), in one run: no flushes.
pub fn brotli_len(bytes: &[u8]) -> usize {
    use ferrysync_sqlite::coding::{BROTLI_LGWIN, BROTLI_QUALITY};
    let mut out = Vec::new();
    {
        let mut w =
            brotli::CompressorWriter::new(&mut out, 64 * 1024, BROTLI_QUALITY, BROTLI_LGWIN);
        w.write_all(bytes).expect("brotli");
    }
    out.len()
}

pub fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort_unstable();
    v[v.len() / 2]
}

/// Flushes the OS's dirty pages (`sync`), so a timed run does not pay, in its own fsync, for
/// the writeback of the run before it.
pub fn settle() {
    let _ = std::process::Command::new("sync").status();
}

/// Medians of runs taken in turns, and the median of each turn's ratio `a / b` (a turn's two
/// runs see the same machine load, so this ratio moves less than the ratio of the medians).
#[derive(Clone, Copy, Debug)]
pub struct Pair {
    pub a: Duration,
    pub b: Duration,
    pub ratio: f64,
}

/// Runs `a` and `b` in turns, `runs` times each, each after [`settle`]; each goes first in
/// every other turn.
pub fn side_by_side(
    runs: usize,
    mut a: impl FnMut() -> Duration,
    mut b: impl FnMut() -> Duration,
) -> Pair {
    let (mut va, mut vb, mut vr) = (Vec::new(), Vec::new(), Vec::new());
    for turn in 0..runs {
        let (ta, tb) = if turn % 2 == 0 {
            settle();
            let ta = a();
            settle();
            (ta, b())
        } else {
            settle();
            let tb = b();
            settle();
            (a(), tb)
        };
        va.push(ta);
        vb.push(tb);
        vr.push(ratio(ta, tb));
    }
    vr.sort_by(f64::total_cmp);
    Pair {
        a: median(&va),
        b: median(&vb),
        ratio: vr[vr.len() / 2],
    }
}

/// Timed runs per size: fewer on the large workload.
pub fn runs(size: Size) -> usize {
    // Enough turns that one disturbed turn does not move a median (the default size is the
    // one the targets are judged on).
    match size.name {
        "small" => 11,
        "default" => 11,
        _ => 3,
    }
}

pub fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1e3)
    }
}

pub fn bytes(n: u64) -> String {
    if n >= 10 * 1024 * 1024 {
        format!("{:.1} MB", n as f64 / 1e6)
    } else if n >= 10 * 1024 {
        format!("{:.0} kB", n as f64 / 1e3)
    } else {
        format!("{n} B")
    }
}

/// Where a figure stands against its target.
pub fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "not yet"
    }
}

/// A markdown table, printed as rows arrive (so a long run shows progress) and whole at the
/// end, ready to paste into BENCHMARKS.md.
pub struct Table {
    title: String,
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: &str, header: &[&'static str]) -> Self {
        Table {
            title: title.to_owned(),
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        println!("  {}", cells.join(" | "));
        self.rows.push(cells);
    }

    pub fn print(&self) {
        println!("\n#### {}\n", self.title);
        println!("| {} |", self.header.join(" | "));
        println!(
            "|{}",
            self.header
                .iter()
                .map(|h| if matches!(*h, "measure" | "size" | "step") {
                    " --- |"
                } else {
                    " ---: |"
                })
                .collect::<String>()
        );
        for r in &self.rows {
            println!("| {} |", r.join(" | "));
        }
        println!();
    }
}

/// `ratio` with two decimals and an `×`.
pub fn x(ratio: f64) -> String {
    if ratio >= 100.0 {
        format!("{ratio:.0}×")
    } else if ratio >= 10.0 {
        format!("{ratio:.1}×")
    } else {
        format!("{ratio:.2}×")
    }
}

pub fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

/// The sizes to run, from `FERRYSYNC_BENCH_SIZES`; exits with the reason when it is wrong.
pub fn sizes() -> Vec<Size> {
    match Size::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    }
}

/// Whether cargo asked for a real run (`cargo bench`), not a listing or a test pass
/// (`cargo test --benches` runs harness-less benches without `--bench`).
pub fn is_bench_run() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--list")
}
