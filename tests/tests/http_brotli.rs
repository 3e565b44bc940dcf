//! brotli replies over real HTTP on 127.0.0.1: a phone that asks for them (`HttpTransport::
//! brotli`) pulls exactly the records a plain or gzip pull gets; the server answers `br` only
//! when `Accept-Encoding` lists it without `q=0`, before gzip; a phone given a corrupt or
//! truncated brotli reply fails its sync with a clear error and applies nothing.

use ferrysync_core::schema::EXAMPLE;
use ferrysync_core::wire::Mode;
use ferrysync_sqlite::{HttpTransport, Phone, SqliteStore};
use ferrysync_tests::fakes::{
    assert_bad_reply_changes_nothing, fake_server, filled, raw_sync, request_of,
};
use ferrysync_tests::workload::Size;
use ferrysync_tests::{view, TestServer};

/// The request of an empty phone's first sync: a pull of everything in its scope.
fn pull_request() -> Vec<u8> {
    request_of(&mut Phone::with_store(
        SqliteStore::open_in_memory(EXAMPLE).unwrap(),
    ))
}

/// A server whose scope `north` holds `size`'s records, pushed by a phone over plain HTTP.
async fn seeded(size: Size) -> TestServer {
    let server = TestServer::start().await;
    let token = server.enrol("north");
    let mut phone = filled(size);
    let report = phone
        .sync(&mut HttpTransport::new(&server.url(), &token), Mode::Delta)
        .await
        .unwrap();
    assert_eq!(report.mapped as usize, size.records());
    server
}

/// A raw `POST /v1/sync` of a pull with `accept` as `Accept-Encoding` (a client that changes
/// nothing: no encoding of its own, no decoding): status, `Content-Encoding`, body as sent.
async fn raw_pull(server: &TestServer, accept: Option<&str>) -> (u16, Option<String>, Vec<u8>) {
    let token = server.enrol("north");
    let mut req = raw_sync(server, &token);
    if let Some(a) = accept {
        req = req.header(reqwest::header::ACCEPT_ENCODING, a);
    }
    let resp = req.body(pull_request()).send().await.unwrap();
    let status = resp.status().as_u16();
    let encoding = resp
        .headers()
        .get(reqwest::header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap().to_owned());
    (status, encoding, resp.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brotli_pull_gives_the_same_records_as_a_plain_one() {
    // 1,100 records: a reply of about 90 kB, decoded over several 32 KiB steps.
    let size = Size::SMALL;
    let server = seeded(size).await;
    let mut got = Vec::new();
    for (brotli, gzip, coding) in [
        (false, false, None),
        (false, true, Some("gzip")),
        (true, false, Some("br")),
        (true, true, Some("br")),
    ] {
        let token = server.enrol("north");
        let mut fresh = Phone::with_store(SqliteStore::open_in_memory(EXAMPLE).unwrap());
        let mut link = HttpTransport::new(&server.url(), &token)
            .brotli(brotli)
            .gzip(gzip);
        let report = fresh.sync(&mut link, Mode::Delta).await.unwrap();
        assert_eq!(report.upserts as usize, size.records());
        assert_eq!(link.reply_coding, coding, "brotli {brotli}, gzip {gzip}");
        if coding.is_none() {
            assert_eq!(link.wire_bytes_received, link.bytes_received);
        } else {
            assert!(
                link.wire_bytes_received * 3 < link.bytes_received,
                "{coding:?}: {} bytes of reply on the wire for {}",
                link.wire_bytes_received,
                link.bytes_received
            );
        }
        got.push((
            view(&mut fresh),
            link.bytes_received,
            link.wire_bytes_received,
        ));
    }
    let (plain, plain_bytes, _) = &got[0];
    assert_eq!(plain.len(), size.records());
    for (i, (v, b, _)) in got.iter().enumerate() {
        assert_eq!(v, plain, "pull {i}: the same records as the plain pull");
        // The same protocol bytes but for the reply's timestamps: a few bytes either way.
        assert!(
            b.abs_diff(*plain_bytes) < 64,
            "pull {i}: {b} vs {plain_bytes}"
        );
    }
    let (gzip_wire, br_wire) = (got[1].2, got[2].2);
    assert!(
        br_wire < gzip_wire,
        "brotli {br_wire} bytes vs gzip {gzip_wire}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_answers_br_only_when_asked() {
    let server = seeded(Size {
        name: "few",
        companies: 3,
        contacts: 10,
    })
    .await;
    let cases = [
        (None, None),
        (Some("identity"), None),
        (Some("gzip"), Some("gzip")),
        (Some("br"), Some("br")),
        (Some("br, gzip"), Some("br")),
        (Some("gzip, deflate, br"), Some("br")),
        (Some("gzip;q=1.0, BR;q=0.5"), Some("br")),
        (Some("br;q=0, gzip"), Some("gzip")),
        (Some("br; q=0.000, gzip"), Some("gzip")),
        (Some("br;Q=0"), None),
        (Some("gzip;q=0, br;q=0"), None),
        (Some("brotli, x-br"), None),
    ];
    let mut plain_len = None;
    for (accept, want) in cases {
        let (status, encoding, body) = raw_pull(&server, accept).await;
        assert_eq!(status, 200, "{accept:?}");
        assert_eq!(encoding.as_deref(), want, "{accept:?}");
        match want {
            None => {
                let n = *plain_len.get_or_insert(body.len());
                assert!(body.len().abs_diff(n) < 64, "{accept:?}");
            }
            // A brotli stream of a reply this size is not empty and is smaller than it.
            Some(_) => assert!(!body.is_empty() && body.len() < plain_len.unwrap_or(0)),
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_brotli_reply_fails_the_sync_and_changes_nothing() {
    // A real brotli reply, to cut and to spoil.
    let server = seeded(Size::SMALL).await;
    let (_, encoding, reply) = raw_pull(&server, Some("br")).await;
    server.stop().await;
    assert_eq!(encoding.as_deref(), Some("br"));
    assert!(reply.len() > 1000);
    let mut flipped = reply.clone();
    for b in &mut flipped[reply.len() / 2..reply.len() / 2 + 64] {
        *b ^= 0x5a;
    }
    let mut trailing = reply.clone();
    trailing.extend_from_slice(b"more");
    let ok = "HTTP/1.1 200 OK\r\ncontent-type: application/vnd.ferrysync.v1";
    let br = format!("{ok}\r\ncontent-encoding: br");
    let cases = [
        ("not brotli", b"\xff\xff\xff\xff plain".to_vec(), "corrupt"),
        ("empty", Vec::new(), "cut short"),
        ("cut short", reply[..reply.len() / 2].to_vec(), "cut short"),
        (
            "last bytes missing",
            reply[..reply.len() - 1].to_vec(),
            "brotli",
        ),
        // brotli has no checksum: bytes that still decode are caught by the frames' CRC-32.
        ("spoilt in the middle", flipped, ""),
        ("bytes after the end", trailing, "after the end"),
    ];
    for (case, body, says) in cases {
        let link = |url: &str| HttpTransport::new(url, "token").brotli(true).gzip(true);
        assert_bad_reply_changes_nothing(case, &br, body, link, says).await;
    }
    // A br reply to a client that did not ask for it is refused, not guessed at.
    let (url, fake) = fake_server(&br, reply);
    let mut phone = filled(Size {
        name: "one",
        companies: 1,
        contacts: 0,
    });
    let mut link = HttpTransport::new(&url, "token").gzip(true);
    let err = phone.sync(&mut link, Mode::Delta).await.unwrap_err();
    assert!(err.to_string().contains("did not ask for"), "{err}");
    fake.join().unwrap();
}
