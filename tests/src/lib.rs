//! Harness for ferrysync's end-to-end tests: a real server on 127.0.0.1, phones on real SQLite
//! files, and fault injectors for transports and stores.
#![allow(clippy::unwrap_used, clippy::expect_used)] // A test harness: failing loudly is its job.

pub mod fakes;
pub mod sim;
pub mod workload;

use ferrysync_core::id::{LocalId, ServerId, TableId};
use ferrysync_core::store::{DeviceState, Filter, LocalStore, Record, RejectedEntry};
use ferrysync_core::transport::Transport;
use ferrysync_server::{run, Config, LoadedSchema, Server, SqliteStore as ServerDb};
use ferrysync_sqlite::{OwnedValue, Phone};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server on a SQLite file in a temporary folder, listening on 127.0.0.1.
pub struct TestServer {
    /// Its address.
    pub addr: SocketAddr,
    /// Its state (store, metrics).
    pub server: Arc<Server>,
    /// The folder holding its database (and the phones' files).
    pub dir: TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Starts a server for `schema` with `config`.
    pub async fn start_with(schema: LoadedSchema, config: Config) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = ServerDb::open(&dir.path().join("server.db"), schema).unwrap();
        let server = Server::new(Arc::new(store), schema, config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(listener, server.clone(), async move {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            server,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Starts a server for the built-in example schema.
    pub async fn start() -> Self {
        Self::start_with(LoadedSchema::example(), Config::default()).await
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Path of the server's database file.
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("server.db")
    }

    /// Enrols a device in `scope`; returns its bearer token.
    pub fn enrol(&self, scope: &str) -> String {
        let (_, token) = ferrysync_server::auth::add_device(self.server.store().as_ref(), scope)
            .expect("enrol device");
        token
    }

    /// A phone on a new SQLite file in the server's folder.
    pub fn phone(&self, name: &str) -> Phone {
        Phone::open(
            self.dir.path().join(format!("{name}.db")),
            self.server.schema().schema(),
        )
        .unwrap()
    }

    /// Runs a read-only SQL query on the server's database file.
    pub fn query<T>(
        &self,
        sql: &str,
        f: impl FnMut(&rusqlite_shim::Row<'_>) -> rusqlite_shim::Result<T>,
    ) -> Vec<T> {
        let conn = rusqlite_shim::Connection::open(self.db_path()).unwrap();
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], f)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

/// rusqlite as the adapters use it, for reading the server's tables with plain SQL.
pub use ferrysync_sqlite::rusqlite as rusqlite_shim;

/// A phone's data as the server identifies it: table → server id → (parent server id,
/// values). Records without a server id or with pending changes are left out.
pub type View = BTreeMap<(String, u64), (Option<u64>, Vec<String>)>;

/// The synced view of a phone (every record clean, by server id).
pub fn view(phone: &mut Phone) -> View {
    let schema = *phone.schema();
    let mut out = View::new();
    for t in schema.tables {
        let rows = phone.list(t.name).unwrap();
        let by_local: BTreeMap<u32, u64> = t
            .parent
            .map(|p| {
                phone
                    .list(schema.tables[p.0 as usize].name)
                    .unwrap()
                    .into_iter()
                    .filter_map(|r| r.record.server.map(|s| (r.record.local.0, s.0)))
                    .collect()
            })
            .unwrap_or_default();
        for r in rows {
            let Some(server) = r.record.server else {
                continue;
            };
            let parent = r.record.parent.and_then(|p| by_local.get(&p.0).copied());
            out.insert(
                (t.name.to_owned(), server.0),
                (parent, r.values.iter().map(OwnedValue::to_string).collect()),
            );
        }
    }
    out
}

/// Where [`FaultyLink`] fails a sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The link fails before anything is sent.
    BeforeSend,
    /// The request reaches the server, the reply is lost.
    AfterSend,
    /// The reply is cut after this many bytes.
    MidReply(usize),
}

/// Error of the fault-injecting wrappers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected(pub String);

impl fmt::Display for Injected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "injected fault: {}", self.0)
    }
}

/// A transport that fails where told, around a real one.
pub struct FaultyLink<T> {
    /// The real transport.
    pub inner: T,
    /// Where to fail (`None`: never).
    pub fault: Option<Fault>,
    received: usize,
}

impl<T> FaultyLink<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, fault: Option<Fault>) -> Self {
        FaultyLink {
            inner,
            fault,
            received: 0,
        }
    }
}

impl<T: Transport> Transport for FaultyLink<T> {
    type Error = Injected;
    async fn send(&mut self, bytes: &[u8]) -> Result<(), Injected> {
        if self.fault == Some(Fault::BeforeSend) {
            return Err(Injected("link down before send".into()));
        }
        self.inner
            .send(bytes)
            .await
            .map_err(|e| Injected(e.to_string()))
    }
    async fn finish(&mut self) -> Result<(), Injected> {
        self.received = 0;
        self.inner
            .finish()
            .await
            .map_err(|e| Injected(e.to_string()))?;
        if self.fault == Some(Fault::AfterSend) {
            // Drain the reply so the server finishes, then lose it.
            let mut buf = [0u8; 4096];
            while self
                .inner
                .receive(&mut buf)
                .await
                .map_err(|e| Injected(e.to_string()))?
                > 0
            {}
            return Err(Injected("reply lost".into()));
        }
        Ok(())
    }
    async fn receive(&mut self, buf: &mut [u8]) -> Result<usize, Injected> {
        if let Some(Fault::MidReply(limit)) = self.fault {
            if self.received >= limit {
                let mut rest = [0u8; 4096];
                while self
                    .inner
                    .receive(&mut rest)
                    .await
                    .map_err(|e| Injected(e.to_string()))?
                    > 0
                {}
                return Err(Injected(format!("reply cut after {limit} bytes")));
            }
            let room = (limit - self.received).min(buf.len());
            let n = self
                .inner
                .receive(&mut buf[..room])
                .await
                .map_err(|e| Injected(e.to_string()))?;
            self.received += n;
            return Ok(n);
        }
        self.inner
            .receive(buf)
            .await
            .map_err(|e| Injected(e.to_string()))
    }
}

/// A store that fails its n-th write (`put`, `remove`, `push_rejected`) or its commit: a crash
/// in the middle of applying a reply, or right before its commit.
pub struct FaultyStore<'a, S> {
    /// The real store.
    pub inner: &'a mut S,
    /// Writes left before the failing one (`None`: never).
    pub writes_left: Option<u32>,
    /// Fail the next commit.
    pub fail_commit: bool,
}

/// Error of [`FaultyStore`].
#[derive(Debug)]
pub enum FaultyError<E> {
    /// The injected failure.
    Injected,
    /// The real store's error.
    Inner(E),
}

impl<E: fmt::Display> fmt::Display for FaultyError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultyError::Injected => f.write_str("injected store fault"),
            FaultyError::Inner(e) => e.fmt(f),
        }
    }
}

impl<S: LocalStore> FaultyStore<'_, S> {
    fn write(&mut self) -> Result<(), FaultyError<S::Error>> {
        match self.writes_left {
            Some(0) => Err(FaultyError::Injected),
            Some(n) => {
                self.writes_left = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl<S: LocalStore> LocalStore for FaultyStore<'_, S> {
    type Error = FaultyError<S::Error>;
    async fn load_state(&mut self) -> Result<DeviceState, Self::Error> {
        self.inner.load_state().await.map_err(FaultyError::Inner)
    }
    async fn begin(&mut self) -> Result<(), Self::Error> {
        self.inner.begin().await.map_err(FaultyError::Inner)
    }
    async fn commit(&mut self, state: &DeviceState) -> Result<(), Self::Error> {
        if self.fail_commit {
            return Err(FaultyError::Injected);
        }
        self.inner.commit(state).await.map_err(FaultyError::Inner)
    }
    async fn rollback(&mut self) -> Result<(), Self::Error> {
        self.inner.rollback().await.map_err(FaultyError::Inner)
    }
    async fn get(&mut self, t: TableId, l: LocalId) -> Result<Option<Record>, Self::Error> {
        self.inner.get(t, l).await.map_err(FaultyError::Inner)
    }
    async fn get_body(
        &mut self,
        t: TableId,
        l: LocalId,
        buf: &mut [u8],
    ) -> Result<Option<usize>, Self::Error> {
        self.inner
            .get_body(t, l, buf)
            .await
            .map_err(FaultyError::Inner)
    }
    async fn by_server(&mut self, t: TableId, s: ServerId) -> Result<Option<Record>, Self::Error> {
        self.inner.by_server(t, s).await.map_err(FaultyError::Inner)
    }
    async fn put(&mut self, rec: &Record, body: Option<&[u8]>) -> Result<(), Self::Error> {
        self.write()?;
        self.inner.put(rec, body).await.map_err(FaultyError::Inner)
    }
    async fn remove(&mut self, t: TableId, l: LocalId) -> Result<(), Self::Error> {
        self.write()?;
        self.inner.remove(t, l).await.map_err(FaultyError::Inner)
    }
    async fn next(
        &mut self,
        t: TableId,
        after: Option<LocalId>,
        filter: Filter,
    ) -> Result<Option<Record>, Self::Error> {
        self.inner
            .next(t, after, filter)
            .await
            .map_err(FaultyError::Inner)
    }
    async fn push_rejected(&mut self, e: &RejectedEntry, body: &[u8]) -> Result<(), Self::Error> {
        self.write()?;
        self.inner
            .push_rejected(e, body)
            .await
            .map_err(FaultyError::Inner)
    }
    async fn next_rejected(
        &mut self,
        after: Option<u32>,
        buf: &mut [u8],
    ) -> Result<Option<(RejectedEntry, usize)>, Self::Error> {
        self.inner
            .next_rejected(after, buf)
            .await
            .map_err(FaultyError::Inner)
    }
    async fn clear_rejected(&mut self) -> Result<(), Self::Error> {
        self.write()?;
        self.inner
            .clear_rejected()
            .await
            .map_err(FaultyError::Inner)
    }
}
