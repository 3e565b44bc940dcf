//! Writes the seed corpora of every target into `fuzz/corpus/<target>/`, from real encoded
//! streams, and replays each seed through its harness (so a seed that breaks an invariant is
//! caught here, on stable, before any fuzzing).
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --bin make-corpus
//! ```
//!
//! Seeds are deterministic: running it again rewrites the same files.

use ferrysync_core::body::{self, Value};
use ferrysync_core::schema::EXAMPLE;
use ferrysync_core::wire::{Mapping, Op, RejectReason, Rejected, Remove, Reply, Upsert};
use ferrysync_core::{Hlc, LocalId, RecordRef, ServerId, TableId};
use ferrysync_fuzz::request::{self, Verdict};
use ferrysync_fuzz::spec::NOW_MS;
use ferrysync_fuzz::{reply, schema, with_chunking};
use ferrysync_sqlite::coding::Deflater;
use std::path::{Path, PathBuf};

fn body(t: u8, a: &str, b: &str, c: &str) -> Vec<u8> {
    let mut buf = [0u8; 256];
    body::encode(
        &EXAMPLE.tables[t as usize],
        &[Value::Text(a), Value::Text(b), Value::Text(c)],
        &mut buf,
    )
    .expect("body")
    .to_vec()
}

use ferrysync_fuzz::request::SeedChange as Ch;

fn request(batch: u64, cursor: Option<u64>, changes: &[Ch]) -> Vec<u8> {
    request::seed_request(EXAMPLE.hash(), batch, cursor, changes)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join(name), bytes).expect("write seed");
    println!("{:>6} B  {}", bytes.len(), dir.join(name).display());
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let l = |n: u32| RecordRef::Local(LocalId(n));
    let s = |n: u64| RecordRef::Server(ServerId(n));
    let t = NOW_MS - 1000;

    // Requests, for the request stream's seeded server (north = device 0, south = device 1;
    // north holds companies 1, 2 and contacts 1, 3; south company 3 and contact 4).
    let story = request(
        3,
        Some(8),
        &[
            // The pattern's story: new companies (local 20, 21) and contacts under them.
            (
                0,
                Op::Add,
                l(20),
                None,
                t,
                body(0, "Umbrella", "Nantes", "+33 4"),
            ),
            (
                0,
                Op::Add,
                l(21),
                None,
                t,
                body(0, "Hooli", "Brest", "+33 5"),
            ),
            (
                1,
                Op::Add,
                l(22),
                Some(l(20)),
                t,
                body(1, "Gus", "gus@umbrella", "5"),
            ),
            (
                1,
                Op::Add,
                l(23),
                Some(l(21)),
                t,
                body(1, "Hal", "hal@hooli", "6"),
            ),
            (
                1,
                Op::Add,
                l(24),
                Some(s(1)),
                t,
                body(1, "Ivy", "ivy@acme", "7"),
            ),
        ],
    );
    let updates = request(
        4,
        Some(8),
        &[
            (
                0,
                Op::Update,
                s(1),
                None,
                t,
                body(0, "ACME Corp", "Lyon", "+33 1"),
            ),
            (
                1,
                Op::Update,
                s(1),
                Some(s(2)),
                t,
                body(1, "Ann", "ann@globex", "1"),
            ),
            (
                1,
                Op::Update,
                s(3),
                None,
                t,
                body(1, "Cy", "cy@globex.fr", "3"),
            ),
        ],
    );
    let deletes = request(
        5,
        Some(8),
        &[
            (0, Op::Delete, s(1), None, t, Vec::new()),
            (1, Op::Delete, s(3), Some(s(2)), t, Vec::new()),
            (1, Op::Delete, l(99), Some(s(2)), t, Vec::new()),
        ],
    );
    let mixed = request(
        6,
        None,
        &[
            (
                0,
                Op::Add,
                l(30),
                None,
                t,
                body(0, "Vandelay", "Metz", "+33 6"),
            ),
            (
                0,
                Op::Update,
                s(2),
                None,
                t - 90_000,
                body(0, "Old name", "Paris", "+33 2"),
            ),
            (0, Op::Delete, s(3), None, t, Vec::new()),
            (
                1,
                Op::Add,
                l(31),
                Some(l(30)),
                t,
                body(1, "Art", "art@vandelay", "8"),
            ),
            (
                1,
                Op::Add,
                l(32),
                Some(s(3)),
                t,
                body(1, "Kim", "kim@initech", "9"),
            ),
            (
                1,
                Op::Update,
                s(2),
                None,
                t,
                body(1, "Bob", "bob@acme", "2"),
            ),
            (2, Op::Add, l(33), None, t, b"???".to_vec()),
        ],
    );
    // A retry of north's first batch (same local ids: nothing new is created).
    let seed = request::seed_streams(&EXAMPLE);
    let retry = seed[0].1.clone();
    let south = request(
        2,
        Some(8),
        &[
            (
                0,
                Op::Update,
                s(3),
                None,
                t,
                body(0, "Initech SA", "Lille", "+33 3"),
            ),
            (
                1,
                Op::Add,
                l(40),
                Some(s(3)),
                t,
                body(1, "Lou", "lou@initech", "10"),
            ),
            (
                1,
                Op::Add,
                l(41),
                Some(s(1)),
                t,
                body(1, "Max", "max@acme", "11"),
            ),
        ],
    );
    let world = request::World::new();
    let dir = root.join("request_stream");
    for (name, dev, bytes) in [
        ("story", 0usize, &story),
        ("updates", 0, &updates),
        ("deletes", 0, &deletes),
        ("mixed", 0, &mixed),
        ("retry", 0, &retry),
        ("south", 1, &south),
    ] {
        match request::serve(&world.store, &world.schema, &world.devices[dev], &[bytes]) {
            Verdict::Accepted(_, out) => println!(
                "request {name}: accepted, {} mappings, {} rejected, {} applied",
                out.mappings.len(),
                out.rejected.len(),
                out.applied
            ),
            Verdict::Refused(r) => panic!("seed request {name} refused: {r:?}"),
        }
        world.restore();
        let mode = (dev as u8) * 2;
        let mut one = vec![mode];
        one.extend(with_chunking(&[], bytes));
        write(&dir, name, &one);
        ferrysync_fuzz::request::run(&one);
        let mut chunked = vec![mode];
        chunked.extend(with_chunking(&[0, 6, 200], bytes));
        write(&dir, &format!("{name}-chunked"), &chunked);
        ferrysync_fuzz::request::run(&chunked);
    }
    // A few structured inputs (mode odd): `arbitrary` reads any bytes.
    for (i, junk) in [
        &b"\x01\x00\x00\x05\x00\x02\x01abc\x00\x01\x02"[..],
        b"\x01\x01\x10\x20\x30\x40\x50\x60\x70\x80\x90",
    ]
    .iter()
    .enumerate()
    {
        write(&dir, &format!("structured-{i}"), junk);
        ferrysync_fuzz::request::run(junk);
    }

    // Replies, for the reply stream's seeded device (local ids: ACME 1, Ann 2, Bob 3,
    // Globex 4, Cy 5, Initech 6, Dee 7, Eve 8; server ids: companies 1, 2, contacts 1-3).
    let dev = reply::seeded();
    let b = dev.out.batch_id;
    let (co, ct) = (TableId(0), TableId(1));
    let at = Hlc::new(NOW_MS, 0, 0);
    let c_acme = body(0, "ACME SA", "Lyon", "1");
    let c_globex = body(0, "Globex", "Lyon", "1");
    let c_initech = body(0, "Initech", "Lyon", "1");
    let k_ann = body(1, "Ann", "a@b", "2");
    let k_cy = body(1, "Cy", "a@b", "2");
    let k_dee = body(1, "Dee", "a@b", "2");
    let map = |table, local, server| {
        Reply::Mapping(Mapping {
            table,
            local: LocalId(local),
            server: ServerId(server),
        })
    };
    let ups = |table, id, parent: Option<u64>, body: &'static [u8]| {
        Reply::Upsert(Upsert {
            table,
            id: ServerId(id),
            parent: parent.map(ServerId),
            modified_at: at,
            body,
        })
    };
    let leak = |v: Vec<u8>| -> &'static [u8] { Box::leak(v.into_boxed_slice()) };
    let (c_acme, c_globex, c_initech) = (leak(c_acme), leak(c_globex), leak(c_initech));
    let (k_ann, k_cy, k_dee) = (leak(k_ann), leak(k_cy), leak(k_dee));
    let replies: Vec<(&str, Vec<u8>)> = vec![
        (
            "delta",
            reply::reply_bytes(
                b,
                &[
                    map(co, 6, 3),
                    map(ct, 7, 4),
                    ups(co, 1, None, c_acme),
                    ups(co, 3, None, c_initech),
                    ups(ct, 4, Some(3), k_dee),
                    Reply::Remove(Remove {
                        table: ct,
                        id: ServerId(2),
                    }),
                ],
                20,
            ),
        ),
        (
            "full",
            reply::reply_bytes(
                b,
                &[
                    map(co, 6, 3),
                    map(ct, 7, 4),
                    Reply::Reset,
                    ups(co, 1, None, c_acme),
                    ups(co, 2, None, c_globex),
                    ups(co, 3, None, c_initech),
                    ups(ct, 1, Some(1), k_ann),
                    ups(ct, 3, Some(2), k_cy),
                    ups(ct, 4, Some(3), k_dee),
                ],
                21,
            ),
        ),
        (
            "rejected-and-removed",
            reply::reply_bytes(
                b,
                &[
                    Reply::Rejected(Rejected {
                        table: co,
                        op: Op::Add,
                        key: RecordRef::Local(LocalId(6)),
                        reason: RejectReason::InvalidBody,
                        body: c_initech,
                    }),
                    Reply::Rejected(Rejected {
                        table: co,
                        op: Op::Update,
                        key: RecordRef::Server(ServerId(1)),
                        reason: RejectReason::Deleted,
                        body: c_acme,
                    }),
                    Reply::Remove(Remove {
                        table: co,
                        id: ServerId(2),
                    }),
                ],
                22,
            ),
        ),
        (
            "others-records",
            reply::reply_bytes(
                b,
                &[
                    map(co, 6, 3),
                    map(ct, 7, 4),
                    ups(co, 9, None, c_globex),
                    ups(ct, 10, Some(9), k_cy),
                    ups(ct, 11, Some(1), k_ann),
                ],
                23,
            ),
        ),
        ("empty", reply::reply_bytes(b, &[], 24)),
        (
            "other-batch",
            reply::reply_bytes(b + 1, &[map(co, 6, 3)], 25),
        ),
    ];
    let dir = root.join("reply_stream");
    for (name, bytes) in &replies {
        let mut one = vec![0u8];
        one.extend(with_chunking(&[], bytes));
        write(&dir, name, &one);
        reply::run(&one);
        let mut chunked = vec![0u8];
        chunked.extend(with_chunking(&[2, 50], bytes));
        write(&dir, &format!("{name}-chunked"), &chunked);
        reply::run(&chunked);
    }
    // Open finding: a full refresh that delivers a detail (Cy) without its master (Globex).
    // Passes by default; fails with FERRYSYNC_FUZZ_STRICT=1 (see fuzz/README.md).
    let partial = reply::reply_bytes(b, &[Reply::Reset, ups(ct, 3, Some(2), k_cy)], 26);
    let mut one = vec![0u8];
    one.extend(with_chunking(&[], &partial));
    let open = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("regressions/reply_stream/open");
    write(&open, "full-refresh-orphan", &one);
    reply::run(&one);
    // Fixed finding: a mapping to a server id another record holds (Globex's, 2, for ACME)
    // is refused whole; the regression is replayed from regressions/reply_stream.
    let reuse = reply::reply_bytes(b, &[map(co, 1, 2)], 27);
    let mut one = vec![0u8];
    one.extend(with_chunking(&[], &reuse));
    let fixed = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("regressions/reply_stream");
    write(&fixed, "mapping-reuses-server-id", &one);
    reply::run(&one);
    for (i, junk) in [
        &b"\x01\x00\x00\x01\x02\x03\x04\x05\x06\x07"[..],
        b"\x01\x00\x05\x03\x01\x02\x01\x00\x00\x04\x02\x01",
    ]
    .iter()
    .enumerate()
    {
        write(&dir, &format!("structured-{i}"), junk);
        reply::run(junk);
    }

    // Frames: the same request and reply streams, whole and in small chunks.
    let dir = root.join("frame_decoder");
    for (name, bytes) in [
        ("request-story", &story),
        ("request-mixed", &mixed),
        ("reply-delta", &replies[0].1),
        ("reply-full", &replies[1].1),
    ] {
        write(&dir, name, &with_chunking(&[], bytes));
        ferrysync_fuzz::frames::run(&with_chunking(&[], bytes));
        write(
            &dir,
            &format!("{name}-chunked"),
            &with_chunking(&[0, 3, 17, 255], bytes),
        );
        ferrysync_fuzz::frames::run(&with_chunking(&[0, 3, 17, 255], bytes));
    }

    // Bodies: the request and reply streams in gzip and in brotli (input byte 0: even gzip,
    // odd brotli), whole and in chunks, and a bomb of each.
    let dir = root.join("body_coding");
    let bomb = vec![0u8; 4 << 20];
    for (name, bytes) in [
        ("request-story", &story),
        ("reply-full", &replies[1].1),
        ("bomb", &bomb),
    ] {
        for (coding, mut z) in [("gzip", Deflater::gzip(6)), ("brotli", Deflater::brotli())] {
            z.write(bytes).expect("compress");
            // Every compressed byte, as none was taken before the end.
            let zipped = z.finish().expect("compress");
            let first = u8::from(coding == "brotli");
            for (suffix, sizes) in [("", &[][..]), ("-chunked", &[0, 3, 17, 255][..])] {
                let mut seed = vec![first];
                seed.extend_from_slice(&with_chunking(sizes, &zipped));
                write(&dir, &format!("{name}-{coding}{suffix}"), &seed);
                ferrysync_fuzz::coding::run(&seed);
            }
        }
    }

    // Schema files: the example, a three-level tree with a scope field, every type.
    let dir = root.join("schema_file");
    let example = include_str!("../../../server/schema.example.toml");
    let tree = r#"[[table]]
name = "company"
scope_field = "region"
fields = [ { name = "name", type = "text" }, { name = "region", type = "text" } ]

[[table]]
name = "contact"
parent = "company"
parent_field = "company_id"
fields = [ { name = "name", type = "text" }, { name = "age", type = "u64", optional = true } ]

[[table]]
name = "note"
parent = "contact"
parent_field = "contact_id"
fields = [ { name = "text", type = "text" } ]
"#;
    let types = r#"[[table]]
name = "item"
fields = [
  { name = "ok", type = "bool" },
  { name = "qty", type = "i64" },
  { name = "code", type = "u64", optional = true },
  { name = "price", type = "f64" },
  { name = "label", type = "string", optional = true },
  { name = "photo", type = "blob" },
]
"#;
    for (name, text) in [
        ("example.toml", example),
        ("tree.toml", tree),
        ("types.toml", types),
    ] {
        write(&dir, name, text.as_bytes());
        assert!(
            ferrysync_server::LoadedSchema::parse(text).is_ok(),
            "seed schema {name} refused"
        );
        schema::run(text.as_bytes());
    }
    println!("seed corpora written and replayed");
}
