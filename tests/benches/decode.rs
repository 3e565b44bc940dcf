//! Issue 7, item 7: decoder throughput. `FrameDecoder` plus `RequestCheck` (the server's side)
//! and `ReplyCheck` (the device's side) over the workload's real push request and a fresh
//! device's real full-pull reply, fed in 16 KiB chunks as they arrive from a socket, beside a
//! memcpy-class read of the same bytes in the same chunks (copy into a buffer and sum them).
//!
//! `cargo bench -p ferrysync-tests --bench decode`: criterion's figures (MB/s), then a
//! markdown table of medians measured in turns in the same run.

mod common;

use common::*;
use criterion::{Criterion, Throughput};
use ferrysync_core::frame::FrameDecoder;
use ferrysync_core::schema::EXAMPLE;
use ferrysync_core::stream::{ReplyCheck, RequestCheck};
use ferrysync_core::wire::{Mode, Reply, Request};
use ferrysync_server::{direct, LoadedSchema};
use ferrysync_sqlite::{Phone, SqliteStore, MAX_FRAME};
use ferrysync_tests::workload::{OnPhone, Workload};
use std::hint::black_box;
use std::time::{Duration, Instant};

const CHUNK: usize = 16 * 1024;

/// Decodes and checks a whole request stream; returns the frames read.
fn decode_request(bytes: &[u8], hash: u64) -> u32 {
    let mut dec = FrameDecoder::<MAX_FRAME>::new();
    let mut check = RequestCheck::new(hash);
    for mut chunk in bytes.chunks(CHUNK) {
        while !chunk.is_empty() {
            let fed = dec.feed::<Request<'_>>(chunk);
            chunk = &chunk[fed.consumed..];
            if let Some(msg) = fed.result.expect("frame") {
                check.handle(&msg).expect("request stream");
            }
        }
    }
    check.finish().expect("complete request");
    dec.frames()
}

/// Decodes and checks a whole reply stream; returns the frames read.
fn decode_reply(bytes: &[u8], batch_id: u64) -> u32 {
    let mut dec = FrameDecoder::<MAX_FRAME>::new();
    let mut check = ReplyCheck::new(batch_id);
    for mut chunk in bytes.chunks(CHUNK) {
        while !chunk.is_empty() {
            let fed = dec.feed::<Reply<'_>>(chunk);
            chunk = &chunk[fed.consumed..];
            if let Some(msg) = fed.result.expect("frame") {
                check.handle(&msg).expect("reply stream");
            }
        }
    }
    check.finish().expect("complete reply");
    dec.frames()
}

/// The memcpy-class baseline: copy each chunk into a buffer and sum its bytes.
fn copy_and_sum(bytes: &[u8], buf: &mut [u8; CHUNK]) -> u64 {
    let mut sum = 0u64;
    for chunk in bytes.chunks(CHUNK) {
        let dst = &mut buf[..chunk.len()];
        dst.copy_from_slice(chunk);
        sum = black_box(dst)
            .iter()
            .fold(sum, |s, &b| s.wrapping_add(u64::from(b)));
    }
    sum
}

fn time(f: &mut dyn FnMut()) -> Duration {
    let started = Instant::now();
    f();
    started.elapsed()
}

fn main() {
    if !is_bench_run() {
        println!("decode: run with `cargo bench -p ferrysync-tests --bench decode`");
        return;
    }
    let hash = LoadedSchema::example().hash();
    let mut table = Table::new(
        "Item 7: decoder throughput vs copy + sum of the same bytes (16 KiB chunks)",
        &[
            "size",
            "measure",
            "bytes",
            "frames",
            "decode + check",
            "copy + sum",
            "copy / decode",
        ],
    );
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for size in sizes() {
        let w = Workload::generate(size);
        let mut phone = Phone::with_store(SqliteStore::open_in_memory(EXAMPLE).expect("store"));
        w.fill(&mut phone).expect("fill");
        let request = request_of(phone.store(), Mode::Delta);
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, dev) = server_db(dir.path(), "server.db");
        direct::sync(&db, hash, &dev, params(), &request).expect("push");
        // A fresh device's pull: every record, the biggest reply a device reads. Its first
        // request has batch id 1.
        let fresh = another_device(&db);
        let mut empty = SqliteStore::open_in_memory(EXAMPLE).expect("store");
        let pull = request_of(&mut empty, Mode::Delta);
        let reply = direct::sync(&db, hash, &fresh, params(), &pull).expect("pull");
        let streams: [(&str, &[u8], bool); 2] = [
            ("push request (server side: `RequestCheck`)", &request, true),
            (
                "fresh-device pull reply (device side: `ReplyCheck`)",
                &reply,
                false,
            ),
        ];
        for (what, bytes, is_request) in streams {
            let decode = |b: &[u8]| {
                if is_request {
                    decode_request(b, hash)
                } else {
                    decode_reply(b, 1)
                }
            };
            let frames = decode(bytes);
            let mut g = c.benchmark_group(format!(
                "decode_{}_{}",
                size.name,
                if is_request { "request" } else { "reply" }
            ));
            g.throughput(Throughput::Bytes(bytes.len() as u64));
            g.bench_function("frame_decoder_and_check", |b| {
                b.iter(|| decode(black_box(bytes)))
            });
            let mut buf = [0u8; CHUNK];
            g.bench_function("copy_and_sum", |b| {
                b.iter(|| copy_and_sum(black_box(bytes), &mut buf))
            });
            g.finish();
            // Side by side, in turns: the ratio of this run.
            let (mut d, mut m) = (Vec::new(), Vec::new());
            for _ in 0..15 {
                d.push(time(&mut || {
                    black_box(decode(black_box(bytes)));
                }));
                m.push(time(&mut || {
                    black_box(copy_and_sum(black_box(bytes), &mut buf));
                }));
            }
            let (d, m) = (median(&d), median(&m));
            let mbs =
                |t: Duration| format!("{:.0} MB/s", bytes.len() as f64 / t.as_secs_f64() / 1e6);
            table.row(vec![
                size.to_string(),
                what.to_owned(),
                common::bytes(bytes.len() as u64),
                frames.to_string(),
                mbs(d),
                mbs(m),
                x(ratio(d, m)),
            ]);
        }
    }
    c.final_summary();
    table.print();
}
