//! Test harness: a real server on 127.0.0.1 (port from binding :0) over a temporary SQLite
//! file, and a small protocol client (frames encoded with `FrameEncoder`, posted with hyper's
//! client, the reply decoded with `FrameDecoder` and checked with `ReplyCheck`).

#![allow(dead_code)]

use bytes::Bytes;
use ferrysync_core::body::{self, Value};
use ferrysync_core::frame::{FrameDecoder, FrameEncoder};
use ferrysync_core::stream::ReplyCheck;
use ferrysync_core::wire::{
    Accepted, Change, Done, End, Hello, Mapping, Mode, Op, RejectReason, Remove, Reply, Request,
    PROTOCOL_VERSION,
};
use ferrysync_core::{Hlc, LocalId, RecordRef, ServerId, TableId};
use ferrysync_server::store::Device;
use ferrysync_server::{Config, LoadedSchema, Server, SqliteStore, CONTENT_TYPE_V1, MAX_FRAME};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub type ReqBody = BoxBody<Bytes, io::Error>;

/// A server running on 127.0.0.1 over a temporary database.
pub struct TestServer {
    pub addr: SocketAddr,
    pub server: Arc<Server>,
    pub db_path: PathBuf,
    pub schema: LoadedSchema,
    stop: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    task: Option<tokio::task::JoinHandle<io::Result<()>>>,
    client: Client<HttpConnector, ReqBody>,
    _dir: tempfile::TempDir,
}

/// A device as the tests drive it: its token, id and scope.
#[derive(Clone, Debug)]
pub struct Dev {
    pub id: u32,
    pub scope: String,
    pub token: String,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(LoadedSchema::example(), Config::default()).await
    }

    pub async fn with_config(config: Config) -> Self {
        Self::with(LoadedSchema::example(), config).await
    }

    pub async fn with(schema: LoadedSchema, config: Config) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("server.db");
        let store = SqliteStore::open(&db_path, schema).unwrap();
        let server = Server::new(Arc::new(store), schema, config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(ferrysync_server::run(listener, server.clone(), async {
            let _ = stopped.await;
        }));
        let client = Client::builder(TokioExecutor::new()).build_http();
        TestServer {
            addr,
            server,
            db_path,
            schema,
            stop: std::sync::Mutex::new(Some(stop)),
            task: Some(task),
            client,
            _dir: dir,
        }
    }

    /// Creates a device of `scope`.
    pub fn device(&self, scope: &str) -> Dev {
        let (d, token): (Device, String) =
            ferrysync_server::auth::add_device(self.server.store().as_ref(), scope).unwrap();
        Dev {
            id: d.id,
            scope: d.scope,
            token,
        }
    }

    /// A plain SQL connection to the server's database file.
    pub fn sql(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(&self.db_path).unwrap()
    }

    /// Every row of every table (schema and system), as text, to compare states.
    pub fn dump(&self) -> Vec<String> {
        let c = self.sql();
        let mut out = Vec::new();
        let mut tables: Vec<String> = self
            .schema
            .schema()
            .tables
            .iter()
            .map(|t| t.name.to_string())
            .collect();
        tables.extend(["_idmap", "_tombstone", "_meta", "_device"].map(String::from));
        for t in tables {
            let mut stmt = c.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
            let n = stmt.column_count();
            let mut rows = stmt.query([]).unwrap();
            while let Some(r) = rows.next().unwrap() {
                let cols: Vec<String> = (0..n)
                    .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                    .collect();
                out.push(format!("{t}: {}", cols.join(", ")));
            }
        }
        out
    }

    pub fn count(&self, table: &str) -> i64 {
        self.sql()
            .query_row(&format!("SELECT count(*) FROM \"{table}\""), [], |r| {
                r.get(0)
            })
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Any request; returns status, headers and the whole body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: ReqBody,
    ) -> Result<(StatusCode, HeaderMap, Bytes), hyper_util::client::legacy::Error> {
        let mut b = hyper::Request::builder().method(method).uri(self.url(path));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = self.client.request(b.body(body).unwrap()).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Ok((status, headers, bytes))
    }

    pub async fn get(&self, path: &str) -> (StatusCode, String) {
        let (s, _, b) = self
            .request("GET", path, &[], full(Vec::new()))
            .await
            .unwrap();
        (s, String::from_utf8(b.to_vec()).unwrap())
    }

    /// POSTs raw bytes to /v1/sync with the right content type and `token`.
    pub async fn post_sync(&self, token: Option<&str>, body: Vec<u8>) -> Answer {
        self.post_sync_body(token, full(body)).await
    }

    pub async fn post_sync_body(&self, token: Option<&str>, body: ReqBody) -> Answer {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", CONTENT_TYPE_V1)];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        let (status, headers, body) = self
            .request("POST", "/v1/sync", &headers, body)
            .await
            .unwrap();
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A whole sync that must succeed; returns the checked reply.
    pub async fn sync(&self, dev: &Dev, hello: Hello, changes: &[Chg]) -> OwnedReply {
        let a = self
            .post_sync(Some(&dev.token), encode_request(hello, changes))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        // The server ends its sync (gauge, slot) just after the last byte: tests that count
        // syncs in flight start from zero.
        self.wait_idle().await;
        decode_reply(hello.batch_id, &a.body).unwrap()
    }

    /// Waits until no sync runs (after a client gave up mid-request).
    pub async fn wait_idle(&self) {
        for _ in 0..500 {
            if self.server.metrics().syncs_in_flight() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("a sync is still running");
    }

    /// Waits until `n` syncs run.
    pub async fn wait_in_flight(&self, n: i64) {
        for _ in 0..500 {
            if self.server.metrics().syncs_in_flight() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never saw {n} syncs in flight");
    }

    /// Signals the server to stop (it finishes what is in flight); `stop` waits for it.
    pub fn begin_stop(&self) -> bool {
        match self.stop.lock().unwrap().take() {
            Some(s) => s.send(()).is_ok(),
            None => false,
        }
    }

    pub async fn stop(mut self) {
        self.begin_stop();
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

pub fn full(b: impl Into<Bytes>) -> ReqBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// An HTTP answer.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Checks an error answer: status, stable code and frame index.
    pub fn assert_error(&self, status: u16, code: &str, frame: Option<u64>) {
        assert_eq!(self.status.as_u16(), status, "{}", self.text());
        let j = self.json();
        assert_eq!(j["error"], code, "{j}");
        assert!(j["message"].as_str().is_some_and(|m| !m.is_empty()), "{j}");
        match frame {
            Some(f) => assert_eq!(j["frame"].as_u64(), Some(f), "{j}"),
            None => assert!(j["frame"].is_null(), "{j}"),
        }
    }
}

/// An owned change, to build requests.
#[derive(Clone, Debug)]
pub struct Chg {
    pub table: TableId,
    pub op: Op,
    pub key: RecordRef,
    pub parent: Option<RecordRef>,
    pub at: Hlc,
    pub body: Vec<u8>,
}

pub const COMPANY: TableId = TableId(0);
pub const CONTACT: TableId = TableId(1);

pub fn local(n: u32) -> RecordRef {
    RecordRef::Local(LocalId(n))
}

pub fn server_id(n: u64) -> RecordRef {
    RecordRef::Server(ServerId(n))
}

/// Encodes `values` as a body of table `t` of `schema`.
pub fn body_of(schema: &LoadedSchema, t: TableId, values: &[Value<'_>]) -> Vec<u8> {
    let mut buf = [0u8; 1024];
    body::encode(&schema.schema().tables[t.0 as usize], values, &mut buf)
        .unwrap()
        .to_vec()
}

/// Body of an example-schema record with three text fields.
pub fn text3(t: TableId, a: &str, b: &str, c: &str) -> Vec<u8> {
    body_of(
        &LoadedSchema::example(),
        t,
        &[Value::Text(a), Value::Text(b), Value::Text(c)],
    )
}

pub fn add(t: TableId, l: u32, parent: Option<RecordRef>, at: Hlc, body: Vec<u8>) -> Chg {
    Chg {
        table: t,
        op: Op::Add,
        key: local(l),
        parent,
        at,
        body,
    }
}

pub fn update(
    t: TableId,
    key: RecordRef,
    parent: Option<RecordRef>,
    at: Hlc,
    body: Vec<u8>,
) -> Chg {
    Chg {
        table: t,
        op: Op::Update,
        key,
        parent,
        at,
        body,
    }
}

pub fn delete(t: TableId, key: RecordRef, at: Hlc) -> Chg {
    Chg {
        table: t,
        op: Op::Delete,
        key,
        parent: None,
        at,
        body: Vec::new(),
    }
}

pub fn hello(batch_id: u64, cursor: Option<u64>, mode: Mode) -> Hello {
    hello_with(LoadedSchema::example().hash(), batch_id, cursor, mode)
}

pub fn hello_with(schema_hash: u64, batch_id: u64, cursor: Option<u64>, mode: Mode) -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        schema_hash,
        batch_id,
        cursor,
        mode,
    }
}

/// Current wall-clock ms.
pub fn now() -> u64 {
    ferrysync_server::now_ms()
}

/// A stamp at now + `offset_ms` for `device`.
pub fn at(device: u32, offset_ms: i64) -> Hlc {
    Hlc::new((now() as i64 + offset_ms) as u64, 0, device)
}

pub fn frame<M: serde::Serialize>(msg: &M) -> Vec<u8> {
    let mut enc: FrameEncoder<MAX_FRAME> = FrameEncoder::new();
    enc.encode(msg).unwrap().to_vec()
}

pub fn change_frame(c: &Chg) -> Vec<u8> {
    frame(&Request::Change(Change {
        table: c.table,
        op: c.op,
        key: c.key,
        parent: c.parent,
        modified_at: c.at,
        body: &c.body,
    }))
}

/// Hello, the changes, End.
pub fn encode_request(hello: Hello, changes: &[Chg]) -> Vec<u8> {
    let mut out = frame(&Request::Hello(hello));
    for c in changes {
        out.extend(change_frame(c));
    }
    out.extend(frame(&Request::End(End {
        count: changes.len() as u32,
    })));
    out
}

#[derive(Clone, Debug, PartialEq)]
pub struct OwnedRejected {
    pub table: TableId,
    pub op: Op,
    pub key: RecordRef,
    pub reason: RejectReason,
    pub body: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OwnedUpsert {
    pub table: TableId,
    pub id: u64,
    pub parent: Option<u64>,
    pub at: Hlc,
    pub body: Vec<u8>,
}

/// A decoded, checked reply.
#[derive(Clone, Debug)]
pub struct OwnedReply {
    pub accepted: Accepted,
    pub mappings: Vec<Mapping>,
    pub rejected: Vec<OwnedRejected>,
    pub reset: bool,
    pub upserts: Vec<OwnedUpsert>,
    pub removes: Vec<Remove>,
    pub done: Done,
}

impl OwnedReply {
    pub fn mapped(&self, t: TableId, l: u32) -> u64 {
        self.mappings
            .iter()
            .find(|m| m.table == t && m.local == LocalId(l))
            .unwrap_or_else(|| panic!("no mapping for {t} L{l} in {:?}", self.mappings))
            .server
            .0
    }

    pub fn upsert(&self, t: TableId, id: u64) -> Option<&OwnedUpsert> {
        self.upserts.iter().find(|u| u.table == t && u.id == id)
    }

    pub fn rejection(&self, reason: RejectReason) -> &OwnedRejected {
        self.rejected
            .iter()
            .find(|r| r.reason == reason)
            .unwrap_or_else(|| panic!("no {reason} rejection in {:?}", self.rejected))
    }

    /// Upserted ids of a table, sorted.
    pub fn ids(&self, t: TableId) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .upserts
            .iter()
            .filter(|u| u.table == t)
            .map(|u| u.id)
            .collect();
        v.sort_unstable();
        v
    }
}

/// Decodes and checks a whole reply stream.
pub fn decode_reply(batch_id: u64, bytes: &[u8]) -> Result<OwnedReply, String> {
    let mut dec: Box<FrameDecoder<MAX_FRAME>> = Box::new(FrameDecoder::new());
    let mut check = ReplyCheck::new(batch_id);
    let mut accepted = None;
    let mut r = OwnedReply {
        accepted: Accepted {
            batch_id: 0,
            server_time: 0,
        },
        mappings: Vec::new(),
        rejected: Vec::new(),
        reset: false,
        upserts: Vec::new(),
        removes: Vec::new(),
        done: Done {
            cursor: 0,
            count: 0,
        },
    };
    let mut input = bytes;
    while !input.is_empty() {
        let fed = dec.feed::<Reply<'_>>(input);
        input = &input[fed.consumed..];
        let msg = match fed.result {
            Ok(None) => continue,
            Ok(Some(m)) => m,
            Err(e) => return Err(format!("bad reply frame: {e}")),
        };
        check.handle(&msg).map_err(|e| format!("bad reply: {e}"))?;
        match msg {
            Reply::Accepted(a) => accepted = Some(a),
            Reply::Mapping(m) => r.mappings.push(m),
            Reply::Rejected(x) => r.rejected.push(OwnedRejected {
                table: x.table,
                op: x.op,
                key: x.key,
                reason: x.reason,
                body: x.body.to_vec(),
            }),
            Reply::Reset => r.reset = true,
            Reply::Upsert(u) => r.upserts.push(OwnedUpsert {
                table: u.table,
                id: u.id.0,
                parent: u.parent.map(|p| p.0),
                at: u.modified_at,
                body: u.body.to_vec(),
            }),
            Reply::Remove(x) => r.removes.push(x),
            Reply::Done(d) => r.done = d,
        }
    }
    check.finish().map_err(|e| format!("reply: {e}"))?;
    r.accepted = accepted.ok_or("no Accepted")?;
    Ok(r)
}

/// Decodes an example-schema body's three text fields.
pub fn texts(schema: &LoadedSchema, t: TableId, b: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    body::decode(&schema.schema().tables[t.0 as usize], b, |_, _, v| {
        out.push(v.to_string());
        Ok::<(), ()>(())
    })
    .unwrap()
    .unwrap();
    out
}
