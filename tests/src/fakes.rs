//! Doubles shared by the HTTP compression tests: a transport that records a request, a phone
//! holding a workload, a raw client, and a one-shot raw HTTP server that answers whatever bytes
//! a test gives.

use crate::workload::{OnPhone, Size, Workload};
use ferrysync_core::schema::EXAMPLE;
use ferrysync_core::transport::Transport;
use ferrysync_sqlite::{Phone, SqliteStore};
use std::io::{Read, Write};

/// Records the request a device sends; answers nothing.
#[derive(Default)]
pub struct Capture(pub Vec<u8>);

impl Transport for Capture {
    type Error = std::convert::Infallible;
    async fn send(&mut self, bytes: &[u8]) -> Result<(), Self::Error> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
    async fn finish(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
    async fn receive(&mut self, _: &mut [u8]) -> Result<usize, Self::Error> {
        Ok(0)
    }
}

/// A phone in memory holding `size`'s records, all new.
pub fn filled(size: Size) -> Phone {
    let mut phone = Phone::with_store(SqliteStore::open_in_memory(EXAMPLE).unwrap());
    Workload::generate(size).fill(&mut phone).unwrap();
    phone
}

/// A one-shot fake server on 127.0.0.1: reads one request to the end of its chunked body, then
/// answers `head` (status line and headers, without the blank line) and `body`. Returns its
/// URL and the thread serving it.
pub fn fake_server(head: &str, body: Vec<u8>) -> (String, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut answer = format!(
        "{head}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    let task = std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"\r\n0\r\n\r\n") {
            let n = sock.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        sock.write_all(&answer).unwrap();
    });
    (url, task)
}

/// Syncs a phone holding one company and one contact, both new, through the transport
/// `link(url)` makes, against a [`fake_server`] answering `head` and `body`: the sync must fail
/// with an error that contains `says`, and apply nothing (both records still pending, without
/// server ids). `case` names the check in failures.
pub async fn assert_bad_reply_changes_nothing(
    case: &str,
    head: &str,
    body: Vec<u8>,
    link: impl FnOnce(&str) -> ferrysync_sqlite::HttpTransport,
    says: &str,
) {
    let mut phone = filled(Size {
        name: "two",
        companies: 1,
        contacts: 1,
    });
    let (url, server) = fake_server(head, body);
    let err = phone
        .sync(&mut link(&url), ferrysync_core::wire::Mode::Delta)
        .await
        .map(|r| r.cursor)
        .unwrap_err()
        .to_string();
    assert!(err.contains(says), "{case}: {err}");
    server.join().unwrap();
    let pending = phone.pending().unwrap();
    assert_eq!(pending.len(), 2, "{case}");
    assert!(pending.iter().all(|r| r.record.server.is_none()), "{case}");
}

/// The request `phone`'s next delta sync sends, as the engine builds it.
pub fn request_of(phone: &mut Phone) -> Vec<u8> {
    let mut cap = Capture::default();
    pollster::block_on(ferrysync_core::engine::send_request::<
        _,
        _,
        { ferrysync_sqlite::MAX_FRAME },
    >(
        &EXAMPLE,
        phone.store(),
        &mut cap,
        ferrysync_core::wire::Mode::Delta,
    ))
    .unwrap();
    cap.0
}

/// A `POST /v1/sync` to `server` as `token`, from a raw client that changes nothing of what
/// travels (no compression of its own, no decoding of replies), so a test sends and sees the
/// bytes as they are. The caller adds its headers and the body.
pub fn raw_sync(server: &crate::TestServer, token: &str) -> reqwest::RequestBuilder {
    reqwest::Client::builder()
        .gzip(false)
        .build()
        .unwrap()
        .post(format!("{}/v1/sync", server.url()))
        .bearer_auth(token)
        .header(
            reqwest::header::CONTENT_TYPE,
            ferrysync_sqlite::CONTENT_TYPE,
        )
}
