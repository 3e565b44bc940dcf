//! Test harness: a real server on 127.0.0.1 (port from binding :0) over a fresh database, and a
//! small protocol client (frames encoded with `FrameEncoder`, posted with hyper's client, the
//! reply decoded with `FrameDecoder` and checked with `ReplyCheck`).
//!
//! **Stores.** Tests written with [`store_test!`] run twice: `<name>::sqlite` on a temporary
//! SQLite file and `<name>::postgres` on a fresh PostgreSQL database (created with a random
//! name, dropped after), when `FERRYSYNC_TEST_POSTGRES` holds an admin URL
//! (`bash .ci/postgres` prints one); without it the PostgreSQL variant prints
//! `skipped: FERRYSYNC_TEST_POSTGRES not set` and passes. The store of a test is a task-local
//! that [`TestServer::with`] reads; outside a scope (benches) it is SQLite. SQL helpers
//! ([`TestServer::rows`] and friends) take `?N` placeholders and run on either store.

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
use ferrysync_server::store::{Device, StoreError};
use ferrysync_server::{
    Config, LoadedSchema, PostgresStore, Server, ServerStore, SqliteStore, CONTENT_TYPE_V1,
    MAX_FRAME,
};
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

/// Environment variable with a PostgreSQL admin URL (one that may `CREATE DATABASE`).
pub const PG_ENV: &str = "FERRYSYNC_TEST_POSTGRES";

/// Which store a test runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// A temporary SQLite file.
    Sqlite,
    /// A fresh database on the PostgreSQL server of this admin URL.
    Postgres(String),
}

tokio::task_local! {
    static STORE: StoreKind;
}

impl StoreKind {
    /// PostgreSQL from `FERRYSYNC_TEST_POSTGRES`, if set.
    pub fn postgres() -> Option<StoreKind> {
        std::env::var(PG_ENV)
            .ok()
            .filter(|u| !u.trim().is_empty())
            .map(StoreKind::Postgres)
    }

    /// The store of the running test (SQLite outside [`StoreKind::scope`]).
    pub fn current() -> StoreKind {
        STORE.try_with(Clone::clone).unwrap_or(StoreKind::Sqlite)
    }

    /// Runs a test body with this store.
    pub async fn scope<F: std::future::Future>(self, f: F) -> F::Output {
        STORE.scope(self, f).await
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, StoreKind::Postgres(_))
    }
}

/// Prints that a test was skipped, past the test harness's output capture (so it shows).
pub fn skipped(test: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "{test}: skipped: {PG_ENV} not set (bash .ci/postgres starts one)"
    );
}

/// One test, run on SQLite and on PostgreSQL: `mod name { fn sqlite; fn postgres }`. The
/// attributes (the `#[tokio::test]` line, docs) go on both.
#[macro_export]
macro_rules! store_test {
    ($(#[$m:meta])* async fn $name:ident() $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body() $body

            $(#[$m])*
            async fn sqlite() {
                $crate::common::StoreKind::Sqlite.scope(body()).await
            }

            $(#[$m])*
            async fn postgres() {
                match $crate::common::StoreKind::postgres() {
                    Some(k) => k.scope(body()).await,
                    None => $crate::common::skipped(concat!(module_path!(), "::postgres")),
                }
            }
        }
    };
}

/// Runs blocking store work on a plain thread: the synchronous PostgreSQL client must not
/// block an async worker (it would panic), and tests call the store from async code.
pub fn off_runtime<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// A fresh database: a SQLite file in a temporary directory, or a PostgreSQL database with a
/// random name (dropped, with its connections, when this is dropped).
pub struct TestDb {
    pub kind: StoreKind,
    /// The SQLite file (SQLite only).
    pub path: PathBuf,
    /// The database URL (PostgreSQL only).
    pub url: String,
    admin: String,
    name: String,
    _dir: Option<tempfile::TempDir>,
}

/// `url` with its database name replaced by `db`.
pub fn url_with_db(url: &str, db: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, format!("?{q}")),
        None => (rest, String::new()),
    };
    let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
    format!("{scheme}://{authority}/{db}{query}")
}

impl TestDb {
    /// A fresh database of the running test's store.
    pub fn new() -> TestDb {
        Self::of(StoreKind::current())
    }

    pub fn of(kind: StoreKind) -> TestDb {
        match &kind {
            StoreKind::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                TestDb {
                    path: dir.path().join("server.db"),
                    kind,
                    url: String::new(),
                    admin: String::new(),
                    name: String::new(),
                    _dir: Some(dir),
                }
            }
            StoreKind::Postgres(admin) => {
                let mut r = [0u8; 8];
                getrandom::fill(&mut r).unwrap();
                let name = format!("ferrysync_t_{:016x}", u64::from_le_bytes(r));
                let admin = admin.clone();
                off_runtime(|| {
                    let mut c = postgres::Client::connect(&admin, postgres::NoTls)
                        .unwrap_or_else(|e| panic!("cannot connect to {PG_ENV}={admin}: {e}"));
                    c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
                });
                TestDb {
                    path: PathBuf::new(),
                    url: url_with_db(&admin, &name),
                    kind,
                    admin,
                    name,
                    _dir: None,
                }
            }
        }
    }

    /// Opens a store on this database for `schema`.
    pub fn open(&self, schema: LoadedSchema) -> Result<Arc<dyn ServerStore>, StoreError> {
        off_runtime(|| -> Result<Arc<dyn ServerStore>, StoreError> {
            Ok(match self.kind {
                StoreKind::Sqlite => Arc::new(SqliteStore::open(&self.path, schema)?),
                StoreKind::Postgres(_) => Arc::new(PostgresStore::open(&self.url, schema)?),
            })
        })
    }

    /// Rows of a query (`?N` placeholders, integer parameters), cells normalised.
    pub fn rows(&self, sql: &str, params: &[i64]) -> Vec<Vec<Cell>> {
        match self.kind {
            StoreKind::Sqlite => {
                let c = rusqlite::Connection::open(&self.path).unwrap();
                let mut stmt = c.prepare(sql).unwrap();
                let n = stmt.column_count();
                let mut rows = stmt
                    .query(rusqlite::params_from_iter(params.iter()))
                    .unwrap();
                let mut out = Vec::new();
                while let Some(r) = rows.next().unwrap() {
                    out.push((0..n).map(|i| Cell::lite(r.get_ref(i).unwrap())).collect());
                }
                out
            }
            StoreKind::Postgres(_) => {
                let sql = dollar_params(sql);
                off_runtime(|| {
                    let mut c = postgres::Client::connect(&self.url, postgres::NoTls).unwrap();
                    let p: Vec<&(dyn postgres::types::ToSql + Sync)> = params
                        .iter()
                        .map(|x| x as &(dyn postgres::types::ToSql + Sync))
                        .collect();
                    c.query(&sql, &p)
                        .unwrap_or_else(|e| panic!("{sql}: {e}"))
                        .iter()
                        .map(|r| (0..r.len()).map(|i| Cell::pg(r, i)).collect())
                        .collect()
                })
            }
        }
    }

    /// Whether a sync transaction holds the single-writer lock.
    pub fn writer_busy(&self) -> bool {
        match self.kind {
            StoreKind::Sqlite => {
                let c = rusqlite::Connection::open(&self.path).unwrap();
                c.busy_timeout(Duration::ZERO).unwrap();
                match c.execute_batch("BEGIN IMMEDIATE; ROLLBACK;") {
                    Ok(()) => false,
                    Err(e) => {
                        assert!(e.to_string().contains("locked"), "{e}");
                        true
                    }
                }
            }
            StoreKind::Postgres(_) => {
                let n = self.rows(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
                     AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                    &[],
                );
                n[0][0] != Cell::Int(0)
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.kind.is_postgres() {
            let (admin, name) = (&self.admin, &self.name);
            off_runtime(|| {
                if let Ok(mut c) = postgres::Client::connect(admin, postgres::NoTls) {
                    let _ =
                        c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
                }
            });
        }
    }
}

/// `?N` placeholders as `$N`.
fn dollar_params(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

/// A value read by plain SQL, the same on both stores (booleans as integers).
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Bytes(Vec<u8>),
}

impl Cell {
    fn lite(v: rusqlite::types::ValueRef<'_>) -> Cell {
        use rusqlite::types::ValueRef as V;
        match v {
            V::Null => Cell::Null,
            V::Integer(i) => Cell::Int(i),
            V::Real(x) => Cell::Real(x),
            V::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
            V::Blob(b) => Cell::Bytes(b.to_vec()),
        }
    }

    fn pg(r: &postgres::Row, i: usize) -> Cell {
        use postgres::types::Type;
        let ty = r.columns()[i].type_().clone();
        let cell = if ty == Type::INT8 {
            r.get::<_, Option<i64>>(i).map(Cell::Int)
        } else if ty == Type::INT4 {
            r.get::<_, Option<i32>>(i).map(|x| Cell::Int(x.into()))
        } else if ty == Type::BOOL {
            r.get::<_, Option<bool>>(i).map(|b| Cell::Int(b.into()))
        } else if ty == Type::FLOAT8 {
            r.get::<_, Option<f64>>(i).map(Cell::Real)
        } else if ty == Type::TEXT || ty == Type::VARCHAR || ty == Type::NAME {
            r.get::<_, Option<String>>(i).map(Cell::Text)
        } else if ty == Type::BYTEA {
            r.get::<_, Option<Vec<u8>>>(i).map(Cell::Bytes)
        } else {
            panic!("column {i} has type {ty}, unknown to the tests")
        };
        cell.unwrap_or(Cell::Null)
    }

    pub fn int(&self) -> i64 {
        match self {
            Cell::Int(i) => *i,
            other => panic!("not an integer: {other:?}"),
        }
    }

    pub fn text(&self) -> String {
        match self {
            Cell::Text(t) => t.clone(),
            other => panic!("not text: {other:?}"),
        }
    }
}

/// A server running on 127.0.0.1 over a fresh database.
pub struct TestServer {
    pub addr: SocketAddr,
    pub server: Arc<Server>,
    pub db: Arc<TestDb>,
    pub schema: LoadedSchema,
    stop: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    task: Option<tokio::task::JoinHandle<io::Result<()>>>,
    client: Client<HttpConnector, ReqBody>,
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

    /// A server on a fresh database of the running test's store.
    pub async fn with(schema: LoadedSchema, config: Config) -> Self {
        Self::on(Arc::new(TestDb::new()), schema, config).await
    }

    /// Another server instance over the same database (PostgreSQL: a second stateless
    /// instance; SQLite: a second process-like opener of the same file).
    pub async fn another(&self) -> Self {
        Self::on(self.db.clone(), self.schema, self.server.config().clone()).await
    }

    /// A server over `db`.
    pub async fn on(db: Arc<TestDb>, schema: LoadedSchema, config: Config) -> Self {
        let store = db.open(schema).unwrap();
        let server = Server::new(store, schema, config);
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
            db,
            schema,
            stop: std::sync::Mutex::new(Some(stop)),
            task: Some(task),
            client,
        }
    }

    /// Whether this server runs on PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.db.kind.is_postgres()
    }

    /// Creates a device of `scope`.
    pub fn device(&self, scope: &str) -> Dev {
        let store = self.server.store().clone();
        let (d, token): (Device, String) =
            off_runtime(|| ferrysync_server::auth::add_device(store.as_ref(), scope).unwrap());
        Dev {
            id: d.id,
            scope: d.scope,
            token,
        }
    }

    /// Revokes a device; `false` if there is none.
    pub fn revoke(&self, id: u32) -> bool {
        let store = self.server.store().clone();
        off_runtime(|| store.revoke_device(id).unwrap())
    }

    /// Rows of a plain SQL query on the server's database (`?N` placeholders).
    pub fn rows(&self, sql: &str, params: &[i64]) -> Vec<Vec<Cell>> {
        self.db.rows(sql, params)
    }

    /// The one integer a query returns.
    pub fn one_i64(&self, sql: &str, params: &[i64]) -> i64 {
        let rows = self.rows(sql, params);
        assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
        rows[0][0].int()
    }

    /// The one text a query returns.
    pub fn one_text(&self, sql: &str, params: &[i64]) -> String {
        let rows = self.rows(sql, params);
        assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
        rows[0][0].text()
    }

    /// Whether a sync transaction holds the database's single-writer lock.
    pub fn writer_busy(&self) -> bool {
        self.db.writer_busy()
    }

    /// Every row of every table (schema and system), as text, sorted, to compare states.
    pub fn dump(&self) -> Vec<String> {
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
            for r in self.rows(&format!("SELECT * FROM \"{t}\""), &[]) {
                let cols: Vec<String> = r.iter().map(|c| format!("{c:?}")).collect();
                out.push(format!("{t}: {}", cols.join(", ")));
            }
        }
        out.sort();
        out
    }

    pub fn count(&self, table: &str) -> i64 {
        self.one_i64(&format!("SELECT count(*) FROM \"{table}\""), &[])
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

/// A request body that arrives in two parts: the test sends `head`, then `tail`, through
/// `tx`; until the tail arrives the sync holds its slot.
pub fn split_body(
    body: &[u8],
    at: usize,
) -> (
    http_body_util::channel::Sender<Bytes, io::Error>,
    ReqBody,
    Bytes,
    Bytes,
) {
    let (tx, chan) = http_body_util::channel::Channel::<Bytes, io::Error>::new(4);
    let (head, tail) = (
        Bytes::copy_from_slice(&body[..at]),
        Bytes::copy_from_slice(&body[at..]),
    );
    (tx, chan.boxed(), head, tail)
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
        for item in msg.items() {
            let item = item.map_err(|e| format!("bad batched record: {e:?}"))?;
            check.handle(&item).map_err(|e| format!("bad reply: {e}"))?;
            take_reply(item, &mut r, &mut accepted);
        }
    }
    check.finish().map_err(|e| format!("reply: {e}"))?;
    r.accepted = accepted.ok_or("no Accepted")?;
    Ok(r)
}

/// Files one single-record reply message into `r`.
fn take_reply(msg: Reply<'_>, r: &mut OwnedReply, accepted: &mut Option<Accepted>) {
    match msg {
        Reply::Accepted(a) => *accepted = Some(a),
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
        Reply::Mappings(_) | Reply::Upserts(_) | Reply::Removes(_) => {
            unreachable!("items() expands batches")
        }
    }
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
