//! The ferrysync server: reconciliation of devices' offline changes over HTTP, on SQLite (one
//! server) or PostgreSQL (several stateless instances, [`PostgresStore`]).
//!
//! A device `POST`s its changes to `/v1/sync` as a stream of frames (protocol v1, see
//! `ferrysync-core`); the server applies them in one transaction (masters first, new local ids
//! mapped to server ids, details' foreign keys rewritten through the map, last-write-wins,
//! deletes cascading, rejections with a reason) and streams back the id map, the rejections
//! and the device's data (delta since its cursor, or full).
//!
//! Start one in a test:
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use ferrysync_server::{run, Config, LoadedSchema, Server, SqliteStore};
//! use std::sync::Arc;
//! let schema = LoadedSchema::example();
//! let store = SqliteStore::open(std::path::Path::new("test.db"), schema)?;
//! let server = Server::new(Arc::new(store), schema, Config::default());
//! let (device, token) = ferrysync_server::auth::add_device(server.store().as_ref(), "north")?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let task = tokio::spawn(run(listener, server, async { let _ = stopped.await; }));
//! // ... POST http://{addr}/v1/sync with `Authorization: Bearer {token}` ...
//! let _ = stop.send(());
//! task.await??;
//! # Ok(()) }
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod auth;
pub mod direct;
pub mod http;
pub mod metrics;
pub mod schema_file;
pub mod store;

pub use http::run;
pub use schema_file::LoadedSchema;
pub use store::{PostgresStore, ServerStore, SqliteStore};

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Content type of sync requests and replies.
pub const CONTENT_TYPE_V1: &str = "application/vnd.ferrysync.v1";

/// Largest frame the server reads or writes, delimiter included.
pub const MAX_FRAME: usize = ferrysync_core::frame::DEFAULT_MAX_FRAME;

/// Limits and clock settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Largest request body, in bytes (413 beyond).
    pub max_body_bytes: u64,
    /// Most frames in one request (413 beyond).
    pub max_frames: u32,
    /// Syncs running at once; more wait for a slot (see `queue_wait`).
    pub max_concurrent_syncs: usize,
    /// How long a sync waits for a free slot before a 503 with `Retry-After`. Waiting in a
    /// fair queue keeps throughput up when many devices sync at once; immediate 503s would turn
    /// into retry storms.
    pub queue_wait: Duration,
    /// Seconds sent in `Retry-After` with a 503.
    pub retry_after_secs: u32,
    /// Incoming clocks are clamped to server time plus this.
    pub max_skew_ms: u64,
    /// How long tombstones are kept; a device whose cursor is older gets a full reply.
    pub tombstone_retention_ms: u64,
    /// Longest wait for the next bytes of a request body (408 beyond).
    pub body_timeout: Duration,
    /// On shutdown, how long requests in flight may take to finish before the server stops
    /// anyway (an unfinished sync is rolled back; a cut reply is never committed by a device).
    pub shutdown_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_body_bytes: 64 * 1024 * 1024,
            max_frames: 200_000,
            max_concurrent_syncs: 16,
            queue_wait: Duration::from_secs(5),
            retry_after_secs: 1,
            max_skew_ms: 5 * 60 * 1000,
            tombstone_retention_ms: 90 * 24 * 3600 * 1000,
            body_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(60),
        }
    }
}

/// A running server's shared state.
pub struct Server {
    store: Arc<dyn ServerStore>,
    schema: LoadedSchema,
    config: Config,
    metrics: metrics::Metrics,
    syncs: Arc<Semaphore>,
    next_request: AtomicU64,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("schema_hash", &self.schema.hash())
            .field("config", &self.config)
            .finish()
    }
}

impl Server {
    /// A server over `store` for `schema` (the store must have been opened for it).
    pub fn new(store: Arc<dyn ServerStore>, schema: LoadedSchema, config: Config) -> Arc<Self> {
        Arc::new(Server {
            store,
            schema,
            syncs: Arc::new(Semaphore::new(config.max_concurrent_syncs.max(1))),
            config,
            metrics: metrics::Metrics::default(),
            next_request: AtomicU64::new(1),
        })
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ServerStore> {
        &self.store
    }

    /// The schema served.
    pub fn schema(&self) -> &LoadedSchema {
        &self.schema
    }

    /// The limits.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The counters.
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.metrics
    }

    fn sync_params(&self) -> store::SyncParams {
        store::SyncParams {
            now_ms: now_ms(),
            max_skew_ms: self.config.max_skew_ms,
            tombstone_retention_ms: self.config.tombstone_retention_ms,
        }
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
