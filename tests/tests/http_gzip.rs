//! Compressed requests (gzip, brotli) and gzip replies over real HTTP on 127.0.0.1: a phone's
//! gzipped or brotli push and its pull sync the same as plain ones; hostile compressed requests
//! are refused with a status, a code, and nothing applied; a phone given a bad gzipped reply
//! applies nothing.

use ferrysync_core::schema::EXAMPLE;
use ferrysync_core::wire::Mode;
use ferrysync_server::Config;
use ferrysync_sqlite::coding::Deflater;
use ferrysync_sqlite::{HttpTransport, Phone, SqliteStore};
use ferrysync_tests::fakes::{assert_bad_reply_changes_nothing, filled, raw_sync, request_of};
use ferrysync_tests::workload::Size;
use ferrysync_tests::{view, TestServer};
use flate2::write::GzEncoder;
use flate2::Compression;
use std::io::Write;

/// 1,000 companies and 9,000 contacts: more changes than the server reads ahead of its
/// transaction (8 Ki), so the end of the body arrives while the transaction is open.
const STREAMED: Size = Size {
    name: "streamed",
    companies: 1_000,
    contacts: 9_000,
};

/// The first push of a phone holding `size`'s records, as the engine builds it.
fn first_push(size: Size) -> Vec<u8> {
    request_of(&mut filled(size))
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut z = GzEncoder::new(Vec::new(), Compression::default());
    z.write_all(bytes).unwrap();
    z.finish().unwrap()
}

/// `bytes` in brotli, as a phone sends them.
fn brotli(bytes: &[u8]) -> Vec<u8> {
    let mut z = Deflater::brotli();
    z.write(bytes).unwrap();
    z.finish().unwrap()
}

/// A compressor of request bodies.
type Compress = fn(&[u8]) -> Vec<u8>;

/// The request codings, each with its compressor, its `Content-Encoding` and the error code
/// of a body that does not decode.
const CODINGS: [(Compress, &str, &str); 2] =
    [(gzip, "gzip", "bad_gzip"), (brotli, "br", "bad_brotli")];

/// Status and JSON error body of a raw `POST /v1/sync` (a client that changes nothing: no
/// gzip of its own, no inflating).
async fn post(
    server: &TestServer,
    token: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let mut req = raw_sync(server, token);
    if let Some(e) = encoding {
        req = req.header(reqwest::header::CONTENT_ENCODING, e);
    }
    let resp = req.body(body).send().await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    let json = if status == 200 {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{status}: not JSON ({e})"))
    };
    (status, json)
}

fn assert_error(got: &(u16, serde_json::Value), status: u16, code: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"], code, "{}", got.1);
    assert!(got.1["message"].as_str().is_some_and(|m| !m.is_empty()));
}

fn count(server: &TestServer, table: &str) -> i64 {
    server.query(&format!("SELECT count(*) FROM {table}"), |r| r.get(0))[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_push_syncs_the_same_as_a_plain_one() {
    let size = Size::SMALL;
    let mut views = Vec::new();
    let mut wire = Vec::new();
    // Plain, gzip both ways, then brotli requests (and brotli replies).
    for coding in [None, Some("gzip"), Some("br")] {
        let on = coding.is_some();
        let server = TestServer::start().await;
        let token = server.enrol("north");
        let mut phone = filled(size);
        let mut link = HttpTransport::new(&server.url(), &token)
            .gzip(coding == Some("gzip"))
            .brotli(coding == Some("br"))
            .brotli_requests(coding == Some("br"));
        let report = phone.sync(&mut link, Mode::Delta).await.unwrap();
        assert_eq!(report.sent as usize, size.records());
        assert_eq!(report.mapped as usize, size.records());
        assert_eq!(report.rejected, 0);
        assert!(phone.pending().unwrap().is_empty());
        assert_eq!(count(&server, "company") as usize, size.companies);
        assert_eq!(count(&server, "contact") as usize, size.contacts);
        wire.push((link.bytes_sent, link.wire_bytes_sent));
        // The same data, seen by the pushing phone and by a fresh one pulling it.
        let mut fresh = Phone::with_store(SqliteStore::open_in_memory(EXAMPLE).unwrap());
        let mut pull = HttpTransport::new(&server.url(), &token)
            .gzip(coding == Some("gzip"))
            .brotli(coding == Some("br"));
        let got = fresh.sync(&mut pull, Mode::Delta).await.unwrap();
        assert_eq!(got.upserts as usize, size.records());
        if on {
            assert!(
                pull.wire_bytes_received * 2 < pull.bytes_received,
                "{coding:?}: {} bytes of reply on the wire for {}",
                pull.wire_bytes_received,
                pull.bytes_received
            );
        } else {
            assert_eq!(pull.wire_bytes_received, pull.bytes_received);
        }
        let pushed = view(&mut phone);
        assert_eq!(pushed.len(), size.records());
        assert_eq!(view(&mut fresh), pushed);
        views.push(pushed);
        server.stop().await;
    }
    assert_eq!(
        views[0], views[1],
        "plain and gzip pushes give the same data"
    );
    assert_eq!(
        views[0], views[2],
        "plain and brotli pushes give the same data"
    );
    let ((plain, plain_wire), (zipped, zipped_wire), (br, br_wire)) = (wire[0], wire[1], wire[2]);
    assert_eq!(plain, zipped, "the same protocol bytes");
    assert_eq!(plain, br, "the same protocol bytes");
    assert_eq!(
        plain_wire, plain,
        "plain: the wire carries the protocol bytes"
    );
    assert!(
        zipped_wire * 2 < zipped,
        "gzip: {zipped_wire} bytes on the wire for {zipped}"
    );
    assert!(
        br_wire < zipped_wire,
        "brotli: {br_wire} bytes on the wire, gzip {zipped_wire}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_levels_change_the_wire_bytes_only() {
    let server = TestServer::start().await;
    let mut sizes = Vec::new();
    for level in [1, 9] {
        let token = server.enrol(&format!("level{level}"));
        let mut phone = filled(Size::SMALL);
        let mut link = HttpTransport::new(&server.url(), &token)
            .gzip(true)
            .gzip_level(level);
        let report = phone.sync(&mut link, Mode::Delta).await.unwrap();
        assert_eq!(report.mapped as usize, Size::SMALL.records());
        sizes.push(link.wire_bytes_sent);
    }
    assert!(
        sizes[1] < sizes[0],
        "level 9 {} vs 1 {}",
        sizes[1],
        sizes[0]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_compressed_request_is_400_and_changes_nothing() {
    for (compress, encoding, code) in CODINGS {
        let server = TestServer::start().await;
        let token = server.enrol("north");
        let request = first_push(Size::SMALL);
        let zipped = compress(&request);

        // Not compressed at all: the plain request under the coding's label.
        assert_error(
            &post(&server, &token, Some(encoding), request.clone()).await,
            400,
            code,
        );
        if encoding == "gzip" {
            // Every frame inflates well, but the trailer's CRC-32 is wrong (brotli has no
            // checksum of its own: the frames' CRCs catch a changed byte there).
            let mut bad_crc = zipped.clone();
            let at = bad_crc.len() - 8;
            bad_crc[at] ^= 0xff;
            assert_error(
                &post(&server, &token, Some(encoding), bad_crc).await,
                400,
                code,
            );
        }
        // The compressed stream stops early although the HTTP body ends well.
        let short = zipped[..zipped.len() * 3 / 4].to_vec();
        assert_error(
            &post(&server, &token, Some(encoding), short).await,
            400,
            code,
        );
        // Bytes after the end of the compressed stream.
        let mut trailing = zipped.clone();
        trailing.extend_from_slice(b"more");
        assert_error(
            &post(&server, &token, Some(encoding), trailing).await,
            400,
            code,
        );
        assert_eq!(count(&server, "company"), 0, "{encoding}");
        assert_eq!(count(&server, "contact"), 0, "{encoding}");
        // The same body, well formed, is applied.
        let (status, _) = post(&server, &token, Some(encoding), zipped).await;
        assert_eq!(status, 200, "{encoding}");
        assert_eq!(count(&server, "company") as usize, Size::SMALL.companies);
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_short_while_the_transaction_is_open_is_rolled_back() {
    for (compress, encoding, code) in CODINGS {
        let server = TestServer::start().await;
        let token = server.enrol("north");
        let zipped = compress(&first_push(STREAMED));
        // 95 % of the stream inflates past the server's read-ahead: it applies the changes
        // in its open transaction before it finds the stream cut.
        let cut = zipped[..zipped.len() * 95 / 100].to_vec();
        assert_error(&post(&server, &token, Some(encoding), cut).await, 400, code);
        assert_eq!(count(&server, "company"), 0, "{encoding}");
        assert_eq!(count(&server, "contact"), 0, "{encoding}");
        // The device sends the whole batch again: applied once.
        let (status, _) = post(&server, &token, Some(encoding), zipped).await;
        assert_eq!(status, 200, "{encoding}");
        assert_eq!(count(&server, "contact") as usize, STREAMED.contacts);
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_limit_applies_to_inflated_and_to_compressed_bytes() {
    let limit = 64 * 1024;
    let server = TestServer::start_with(
        ferrysync_server::LoadedSchema::example(),
        Config {
            max_body_bytes: limit,
            ..Config::default()
        },
    )
    .await;
    let token = server.enrol("north");
    // A bomb: a few kB of gzip or brotli inflating to 4 MiB of zero bytes (empty frames,
    // padding the frame reader would otherwise skip forever).
    for (compress, encoding, _) in CODINGS {
        let bomb = compress(&vec![0u8; 4 << 20]);
        assert!(bomb.len() < 8 * 1024, "{encoding}: {} bytes", bomb.len());
        assert_error(
            &post(&server, &token, Some(encoding), bomb).await,
            413,
            "too_large",
        );
    }
    // A real push over the limit once inflated, well under it compressed.
    let request = first_push(Size::SMALL);
    for (compress, encoding, _) in CODINGS {
        let zipped = compress(&request);
        assert!(zipped.len() < limit as usize && request.len() > limit as usize);
        assert_error(
            &post(&server, &token, Some(encoding), zipped).await,
            413,
            "too_large",
        );
    }
    // Over the limit as it travels (stored, not compressed: level 0).
    let mut z = GzEncoder::new(Vec::new(), Compression::none());
    z.write_all(&request).unwrap();
    let stored = z.finish().unwrap();
    assert!(stored.len() > limit as usize);
    assert_error(
        &post(&server, &token, Some("gzip"), stored).await,
        413,
        "too_large",
    );
    assert_eq!(count(&server, "company"), 0);
    // The server is still well: a small gzipped push goes through.
    let small = Size {
        name: "tiny",
        companies: 10,
        contacts: 50,
    };
    let (status, _) = post(&server, &token, Some("gzip"), gzip(&first_push(small))).await;
    assert_eq!(status, 200);
    assert_eq!(count(&server, "contact"), 50);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_content_encodings_are_415() {
    let server = TestServer::start().await;
    let token = server.enrol("north");
    let request = first_push(Size::SMALL);
    for encoding in ["zstd", "deflate", "gzip, gzip", "br, gzip", "compress"] {
        assert_error(
            &post(&server, &token, Some(encoding), request.clone()).await,
            415,
            "unsupported_encoding",
        );
    }
    assert_eq!(count(&server, "company"), 0);
    // `identity` is no encoding at all.
    let (status, _) = post(&server, &token, Some("identity"), request).await;
    assert_eq!(status, 200);
    assert_eq!(count(&server, "company") as usize, Size::SMALL.companies);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_gzipped_reply_fails_the_sync_and_changes_nothing() {
    let ok = "HTTP/1.1 200 OK\r\ncontent-type: application/vnd.ferrysync.v1";
    let reply = gzip(b"any reply at all, it never gets that far");
    let cases = [
        (
            "not gzip",
            format!("{ok}\r\ncontent-encoding: gzip"),
            b"plain".to_vec(),
            "corrupt",
        ),
        (
            "cut short",
            format!("{ok}\r\ncontent-encoding: gzip"),
            reply[..reply.len() - 4].to_vec(),
            "corrupt",
        ),
        (
            "not asked for",
            format!("{ok}\r\ncontent-encoding: br"),
            b"whatever".to_vec(),
            "did not ask for",
        ),
    ];
    for (case, head, body, says) in cases {
        let link = |url: &str| HttpTransport::new(url, "token").gzip(true);
        assert_bad_reply_changes_nothing(case, &head, body, link, says).await;
    }
}
