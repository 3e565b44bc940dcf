//! The deterministic fault simulation (see `ferrysync_tests::sim`): many seeds, each a fleet of
//! devices editing offline and syncing through faults. A failure prints its seed; replay it
//! with `FERRYSYNC_SIM_SEED=<seed> cargo test -p ferrysync-tests --test simulation`.
//! `FERRYSYNC_SIM_SEEDS=<n>` runs more seeds.

use ferrysync_tests::sim::{Broken, Sim, SimConfig, SimStats};

/// Stack for simulation threads: a scanner's host store is large, and debug builds copy it.
const STACK: usize = 256 << 20;

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("FERRYSYNC_SIM_SEED") {
        return vec![s.parse().expect("FERRYSYNC_SIM_SEED is a number")];
    }
    let n: u64 = std::env::var("FERRYSYNC_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    (0..n).collect()
}

#[test]
fn fleets_converge_through_faults() {
    let seeds = seeds();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    // Seeds are independent worlds: run them on every core.
    let results: Vec<SimStats> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let mine: Vec<u64> = seeds.iter().copied().skip(t).step_by(threads).collect();
                // A scanner's host store is large and debug builds copy it on the stack.
                std::thread::Builder::new()
                    .stack_size(STACK)
                    .spawn_scoped(s, move || {
                        let mut total = SimStats::default();
                        for seed in mine {
                            let cfg = SimConfig {
                                devices: 3 + (seed % 4) as usize,
                                ..SimConfig::default()
                            };
                            let stats = Sim::new(seed, cfg).run().unwrap_or_else(|e| {
                                panic!("{e}\nreplay: FERRYSYNC_SIM_SEED={seed}")
                            });
                            total.syncs_ok += stats.syncs_ok;
                            total.syncs_failed += stats.syncs_failed;
                            total.edits += stats.edits;
                            total.rejected += stats.rejected;
                            total.restarts += stats.restarts;
                        }
                        total
                    })
                    .unwrap()
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut total = SimStats::default();
    for r in results {
        total.syncs_ok += r.syncs_ok;
        total.syncs_failed += r.syncs_failed;
        total.edits += r.edits;
        total.rejected += r.rejected;
        total.restarts += r.restarts;
    }
    println!("{} seeds: {total:?}", seeds.len());
    // The faults and the rules were exercised, not only the happy path.
    assert!(total.syncs_failed > seeds.len() as u32, "{total:?}");
    assert!(total.rejected > 0 && total.restarts > 0, "{total:?}");
}

/// The checks are live: each deliberately broken rule is caught within a few seeds.
#[test]
fn a_broken_rule_is_caught() {
    for broken in [Broken::ModelSkipsCascade, Broken::LinkDropsRemoves] {
        let cfg = SimConfig {
            broken: Some(broken),
            ..SimConfig::default()
        };
        let caught = std::thread::Builder::new()
            .stack_size(STACK)
            .spawn(move || (0..50).find_map(|seed| Sim::new(seed, cfg).run().err()))
            .unwrap()
            .join()
            .unwrap();
        let msg = caught.unwrap_or_else(|| panic!("{broken:?} was not caught in 50 seeds"));
        assert!(msg.starts_with("seed "), "{msg}");
    }
}
