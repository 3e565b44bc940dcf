//! Syncs per second of many devices syncing at once: one server on SQLite, beside one and two
//! server instances over one PostgreSQL database (the PostgreSQL parts run only when
//! `FERRYSYNC_TEST_POSTGRES` holds an admin URL; `bash .ci/postgres` prints one).
//!
//! 16 devices in 4 scopes, each seeded with a company and a first sync (not timed). One timed
//! iteration is a round: every device syncs once, all at the same time (tokio tasks over real
//! HTTP on 127.0.0.1), device `i` through instance `i % instances`. A sync is a small delta
//! batch, what a phone sends in a day's use: one update of the device's company and one new
//! contact under it; the reply holds the scope's changes since the device's cursor.
//!
//! `cargo bench -p ferrysync-server --bench instances`; a summary with syncs/s per setup and
//! the ratios, measured in the same run, is printed at the end.

#[path = "../tests/http/common.rs"]
mod common;

use common::*;
use criterion::{criterion_group, Criterion, Throughput};
use ferrysync_core::wire::Mode;
use ferrysync_core::Hlc;
use ferrysync_server::{Config, LoadedSchema};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEVICES: usize = 16;
const SCOPES: usize = 4;

/// A device's sync state.
struct Phone {
    dev: Dev,
    cursor: Option<u64>,
    batch: u64,
    next_local: u32,
    counter: u32,
    company: u64,
}

impl Phone {
    fn stamp(&mut self) -> Hlc {
        self.counter += 1;
        Hlc::new(now(), self.counter, self.dev.id)
    }

    async fn sync(mut self, s: Arc<TestServer>, changes: Vec<Chg>) -> (Phone, OwnedReply) {
        self.batch += 1;
        let h = hello(self.batch, self.cursor, Mode::Delta);
        let a = s
            .post_sync(Some(&self.dev.token), encode_request(h, &changes))
            .await;
        assert_eq!(a.status.as_u16(), 200, "{}", a.text());
        let r = decode_reply(self.batch, &a.body).unwrap();
        assert!(r.rejected.is_empty(), "{:?}", r.rejected);
        self.cursor = Some(r.done.cursor);
        (self, r)
    }

    /// A day's changes: the company renamed, one new contact.
    fn changes(&mut self) -> Vec<Chg> {
        self.next_local += 1;
        let (l, t1, t2) = (self.next_local, self.stamp(), self.stamp());
        let name = format!("Company of {} #{}", self.dev.id, self.counter);
        vec![
            update(
                COMPANY,
                server_id(self.company),
                None,
                t1,
                text3(COMPANY, &name, "Lyon", "+33 1"),
            ),
            add(
                CONTACT,
                l,
                Some(server_id(self.company)),
                t2,
                text3(CONTACT, &format!("Contact {l}"), "c@example.com", "+33 6"),
            ),
        ]
    }
}

/// Servers over one fresh database, and seeded devices.
struct Setup {
    servers: Vec<Arc<TestServer>>,
    phones: Vec<Phone>,
}

impl Setup {
    async fn new(kind: StoreKind, instances: usize) -> Setup {
        let db = Arc::new(TestDb::of(kind));
        let config = Config {
            max_concurrent_syncs: DEVICES,
            ..Config::default()
        };
        let mut servers = Vec::new();
        for _ in 0..instances {
            let s = TestServer::on(db.clone(), LoadedSchema::example(), config.clone()).await;
            servers.push(Arc::new(s));
        }
        let mut phones = Vec::new();
        for i in 0..DEVICES {
            let s = servers[i % instances].clone();
            let dev = s.device(&format!("scope{}", i % SCOPES));
            let mut p = Phone {
                dev,
                cursor: None,
                batch: 0,
                next_local: 1,
                counter: 0,
                company: 0,
            };
            let t = p.stamp();
            let seed = vec![add(COMPANY, 1, None, t, text3(COMPANY, "Seed", "x", "0"))];
            let (mut p, r) = p.sync(s, seed).await;
            p.company = r.mapped(COMPANY, 1);
            phones.push(p);
        }
        Setup { servers, phones }
    }

    /// Every device syncs once, all at the same time; returns the time taken.
    async fn round(&mut self) -> Duration {
        let started = Instant::now();
        let n = self.servers.len();
        let tasks: Vec<_> = std::mem::take(&mut self.phones)
            .into_iter()
            .enumerate()
            .map(|(i, mut p)| {
                let changes = p.changes();
                tokio::spawn(p.sync(self.servers[i % n].clone(), changes))
            })
            .collect();
        for t in tasks {
            let (p, _) = t.await.unwrap();
            self.phones.push(p);
        }
        started.elapsed()
    }
}

/// The setups of this run: SQLite, and PostgreSQL with 1 and 2 instances if configured.
fn setups() -> Vec<(&'static str, StoreKind, usize)> {
    let mut v = vec![("sqlite_1_instance", StoreKind::Sqlite, 1)];
    match StoreKind::postgres() {
        Some(pg) => {
            v.push(("postgres_1_instance", pg.clone(), 1));
            v.push(("postgres_2_instances", pg, 2));
        }
        None => eprintln!(
            "instances bench: PostgreSQL setups skipped: {PG_ENV} not set (bash .ci/postgres)"
        ),
    }
    v
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("concurrent_delta_syncs_16_devices");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(DEVICES as u64));
    for (name, kind, instances) in setups() {
        let mut setup = rt.block_on(Setup::new(kind, instances));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| rt.block_on(setup.round()))
                    .sum::<Duration>()
            })
        });
    }
    g.finish();
}

/// Syncs/s of each setup over the same number of rounds, and the ratios, in one run. The
/// setups take turns round by round, so load from elsewhere on the machine falls on all of
/// them alike.
fn summary() {
    let rt = runtime();
    let rounds = 150;
    let mut runs: Vec<(&str, Setup, Duration)> = setups()
        .into_iter()
        .map(|(name, kind, instances)| {
            let mut setup = rt.block_on(Setup::new(kind, instances));
            // Warm up (connections, prepared statements).
            for _ in 0..3 {
                rt.block_on(setup.round());
            }
            (name, setup, Duration::ZERO)
        })
        .collect();
    for _ in 0..rounds {
        for (_, setup, took) in &mut runs {
            *took += rt.block_on(setup.round());
        }
    }
    let rates: Vec<(&str, f64)> = runs
        .iter()
        .map(|(name, _, took)| (*name, (rounds * DEVICES) as f64 / took.as_secs_f64()))
        .collect();
    println!(
        "\nsummary: {DEVICES} devices syncing at once ({rounds} rounds each, taking turns; small \
         delta batches)"
    );
    let base = rates[0].1;
    for (name, rate) in &rates {
        println!(
            "  {name:<22} {rate:8.1} syncs/s  ({:.2} x sqlite)",
            rate / base
        );
    }
    if rates.len() == 3 {
        println!(
            "  postgres 2 / 1 instances: {:.2} x",
            rates[2].1 / rates[1].1
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if std::env::args().any(|a| a == "--bench") && !std::env::args().any(|a| a == "--list") {
        summary();
    }
}
