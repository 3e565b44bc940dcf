//! Issue 7, item 6: many devices at once against one server. The real `ferrysync serve` binary
//! runs as its own process (built here with `cargo build --release -p ferrysync-server` so it
//! matches the source; `FERRYSYNC_BIN` names another), on a fresh SQLite file per level, with
//! its default limits. For 1, 10, 100 and 500 devices (`FERRYSYNC_LOAD_DEVICES`), every
//! device, each in its own scope, first syncs once (not measured), then for
//! `FERRYSYNC_LOAD_SECS` (default 5) seconds loops: add a company and 4 contacts, sync (delta)
//! over HTTP. A `503 busy` answer is retried after 50 ms and counted; the latency of a sync
//! runs from its first try to its end. The server's memory is read from `/proc/<pid>/status`
//! (VmHWM: peak resident; VmRSS: resident at the end of the level), its CPU time over the
//! timed loop from `/proc/<pid>/stat`.
//!
//! Each device is a phone on its own in-memory `SqliteStore`, the store phones run. Client and
//! server share the machine's cores: syncs/s and latencies are for the pair; the server's CPU
//! per sync is its own, what one core of a server machine would carry.
//!
//! `cargo bench -p ferrysync-tests --bench load`.

mod common;

use common::*;
use ferrysync_core::engine::SyncError;
use ferrysync_core::schema::EXAMPLE;
use ferrysync_core::wire::Mode;
use ferrysync_server::{LoadedSchema, SqliteStore as ServerDb};
use ferrysync_sqlite::{HttpError, HttpTransport, Phone, SqliteStore};
use ferrysync_tests::workload::{company, contact, Workload, COMPANY, CONTACT};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server binary: `FERRYSYNC_BIN`, or `ferrysync` built now next to this bench.
fn server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("FERRYSYNC_BIN") {
        return p.into();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "ferrysync-server",
            "--bin",
            "ferrysync",
        ])
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build of the server failed");
    // This bench runs from <target>/release/deps/.
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("ferrysync")
}

struct ServerProcess {
    child: Child,
    url: String,
}

impl ServerProcess {
    fn start(bin: &Path, db: &Path) -> ServerProcess {
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(db)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ferrysync serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the listening line");
        // "ferrysync listening on http://127.0.0.1:PORT (database ...)"
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_owned();
        ServerProcess { child, url }
    }

    /// (VmHWM, VmRSS) in kB.
    fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    /// CPU time the server process has used so far, user and system (`/proc/<pid>/stat`,
    /// counted in clock ticks of 10 ms: a 5 s level holds hundreds of them).
    fn cpu(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name, which is in parentheses and may hold spaces:
        // state is field 3, utime 14 and stime 15.
        let ticks: u64 = stat
            .rsplit_once(')')
            .map(|(_, rest)| {
                (rest.split_whitespace())
                    .skip(11)
                    .take(2)
                    .filter_map(|v| v.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0);
        Duration::from_millis(ticks * 10)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    busy: u64,
    errors: u64,
    first_error: Option<String>,
}

/// A device: the phone's own store, in memory. Its cost per sync stays the same however many
/// records it holds (the test store `MemStore` copies itself whole at each `begin` and scans
/// for server ids: with one device it grew to take most of the loop, and the figures measured
/// the client more than the server).
type Device = Phone<SqliteStore>;

/// One sync, retrying `503 busy`; `Err` for any other failure.
async fn sync_once(
    phone: &mut Device,
    link: &mut HttpTransport,
    busy: &mut u64,
) -> Result<(), String> {
    loop {
        match phone.sync(link, Mode::Delta).await {
            Ok(_) => return Ok(()),
            Err(SyncError::Transport(HttpError::Status { status: 503, .. })) => {
                *busy += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Adds a company and 4 contacts (the workload's strings) to `phone`.
fn small_batch(phone: &mut Device, n: usize, w: &Workload) {
    let mut buf = [0u8; ferrysync_tests::workload::BODY_BUF];
    let i = n % w.companies.len();
    let body = w.company_body(i, &mut buf).expect("body");
    let parent = phone.insert_body(COMPANY, None, body).expect("insert");
    for k in 0..4 {
        let j = (n * 4 + k) % w.contacts.len();
        let body = w.contact_body(j, None, &mut buf).expect("body");
        phone
            .insert_body(CONTACT, Some(parent), body)
            .expect("insert");
    }
}

async fn device_loop(
    mut phone: Device,
    mut link: HttpTransport,
    w: std::sync::Arc<Workload>,
    seed: usize,
    until: Instant,
) -> Tally {
    let mut t = Tally::default();
    let mut n = seed;
    while Instant::now() < until {
        small_batch(&mut phone, n, &w);
        n += 1;
        let started = Instant::now();
        match sync_once(&mut phone, &mut link, &mut t.busy).await {
            Ok(()) => t.latencies.push(started.elapsed()),
            Err(e) => {
                t.errors += 1;
                t.first_error.get_or_insert(e);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    t
}

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    if !is_bench_run() {
        println!("load: run with `cargo bench -p ferrysync-tests --bench load`");
        return;
    }
    let levels = env_list("FERRYSYNC_LOAD_DEVICES", &[1, 10, 100, 500]);
    let secs = env_list("FERRYSYNC_LOAD_SECS", &[5])
        .first()
        .copied()
        .unwrap_or(5);
    let bin = server_binary();
    println!("server binary: {}", bin.display());
    // Record strings only; the load is small batches, whatever the size.
    let w = std::sync::Arc::new(Workload {
        size: ferrysync_tests::workload::Size::SMALL,
        companies: (0..100).map(company).collect(),
        contacts: (0..400).map(|j| contact(j, 100)).collect(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut table = Table::new(
        &format!(
            "Item 6: devices syncing small batches (1 company + 4 contacts per sync) against \
             the `ferrysync` binary, {secs} s per level"
        ),
        &[
            "devices",
            "syncs",
            "syncs/s",
            "× 1 device",
            "p50",
            "p99",
            "503 busy (retried)",
            "errors",
            "server CPU per sync",
            "server CPU use",
            "server VmHWM",
            "server VmRSS",
        ],
    );
    let mut base: Option<f64> = None;
    for devices in levels {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("server.db");
        let tokens: Vec<String> = {
            let store = ServerDb::open(&db, LoadedSchema::example()).expect("server db");
            (0..devices)
                .map(|d| {
                    ferrysync_server::auth::add_device(&store, &format!("load-{d}"))
                        .expect("device")
                        .1
                })
                .collect()
        };
        let server = ServerProcess::start(&bin, &db);
        let (tallies, server_cpu): (Vec<Tally>, Duration) = rt.block_on(async {
            // First syncs, not measured.
            let mut ready = Vec::new();
            for token in &tokens {
                let url = server.url.clone();
                let token = token.clone();
                ready.push(tokio::spawn(async move {
                    let mut phone = Phone::with_store(
                        SqliteStore::open_in_memory(EXAMPLE).expect("device store"),
                    );
                    let mut link = HttpTransport::new(&url, &token);
                    let mut busy = 0;
                    sync_once(&mut phone, &mut link, &mut busy)
                        .await
                        .expect("first sync");
                    (phone, link)
                }));
            }
            let mut pairs = Vec::new();
            for r in ready {
                pairs.push(r.await.expect("task"));
            }
            let cpu_before = server.cpu();
            let until = Instant::now() + Duration::from_secs(secs as u64);
            let tasks: Vec<_> = pairs
                .into_iter()
                .enumerate()
                .map(|(k, (phone, link))| {
                    tokio::spawn(device_loop(phone, link, w.clone(), k * 7, until))
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.expect("task"));
            }
            (out, server.cpu().saturating_sub(cpu_before))
        });
        let (hwm, rss) = server.memory();
        drop(server);
        let mut lat: Vec<Duration> = tallies.iter().flat_map(|t| t.latencies.clone()).collect();
        lat.sort_unstable();
        let syncs = lat.len();
        let per_sec = syncs as f64 / secs as f64;
        let base = *base.get_or_insert(per_sec);
        let errors: u64 = tallies.iter().map(|t| t.errors).sum();
        if let Some(e) = tallies.iter().find_map(|t| t.first_error.clone()) {
            println!("  first error at {devices} devices: {e}");
        }
        table.row(vec![
            devices.to_string(),
            syncs.to_string(),
            format!("{per_sec:.0}"),
            x(per_sec / base),
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            tallies.iter().map(|t| t.busy).sum::<u64>().to_string(),
            errors.to_string(),
            format!(
                "{:.0} µs",
                server_cpu.as_secs_f64() * 1e6 / syncs.max(1) as f64
            ),
            format!("{:.2} cores", server_cpu.as_secs_f64() / secs as f64),
            format!("{:.1} MB", hwm as f64 / 1024.0),
            format!("{:.1} MB", rss as f64 / 1024.0),
        ]);
    }
    table.print();
}
