//! The HTTP server: `POST /v1/sync`, `GET /healthz`, `GET /metrics`.
//!
//! A sync streams both ways. The request body is inflated as it arrives, 32 KiB at a time,
//! when it says `Content-Encoding: gzip` or `br` (the body limit counts both the bytes as they
//! travel and the inflated bytes; a bad stream is 400 `bad_gzip` or `bad_brotli`, another
//! encoding 415), decoded frame by frame (one frame of buffer) and checked by
//! [`RequestReader`], and its changes go through a bounded
//! channel to a blocking task that applies them inside one database transaction. Only when the
//! body ended well (an `End` with the right count, nothing after it) is the transaction
//! committed; any error rolls it back and is answered with a status and a JSON body
//! `{"error": code, "message": text, "frame": index or null}`. The reply is then read from a
//! snapshot by another blocking task and streamed through a bounded channel, compressed as it
//! goes when the request's `Accept-Encoding` lists `br` (brotli, preferred) or `gzip`.

use crate::auth::hash_token;
use crate::direct::{ReadError, RequestReader};
use crate::store::{ChangeSource, Device, Incoming, OwnedChange, StoreError, SyncOutcome};
use crate::{now_ms, Server, CONTENT_TYPE_V1, MAX_FRAME};
use bytes::Bytes;
use ferrysync_core::frame::FrameError;
use ferrysync_core::stream::StreamError;
use ferrysync_core::wire::Hello;
use ferrysync_sqlite::coding::{Deflater, Inflater};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming as IncomingBody, SizeHint};
use hyper::header::{
    HeaderValue, ACCEPT_ENCODING, AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE,
    RETRY_AFTER,
};
use hyper::{Method, Request as HttpRequest, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn, Instrument};

/// Reply bytes gathered before they are handed to hyper.
const CHUNK: usize = 16 * 1024;
/// Chunks (request batches or reply chunks) in flight between the network and the database.
const CHANNEL_DEPTH: usize = 8;
/// A request is read this far (bytes, or changes) before its transaction starts, so that a
/// small request from a slow device never holds the database's single writer while its bytes
/// trickle in; larger requests stream into the open transaction.
const SPOOL_BYTES: u64 = 1024 * 1024;
/// See [`SPOOL_BYTES`].
const SPOOL_CHANGES: usize = 8 * 1024;

/// Serves HTTP on `listener` until `shutdown` completes, then stops accepting and waits for
/// the connections in flight (and their syncs) to finish.
pub async fn run(
    listener: TcpListener,
    server: Arc<Server>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let server = server.clone();
                let service = hyper::service::service_fn(move |req| handle(server.clone(), req));
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    info!(
        connections = graceful.count(),
        "shutting down: finishing requests in flight"
    );
    let grace = server.config.shutdown_grace;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            grace_s = grace.as_secs_f64(),
            "requests still running after the grace period; stopping anyway"
        );
    }
    info!("stopped");
    Ok(())
}

/// A response body: either whole bytes or a stream from a channel.
#[derive(Debug)]
pub struct ReplyBody {
    full: Option<Bytes>,
    rx: Option<mpsc::Receiver<Result<Bytes, io::Error>>>,
}

impl ReplyBody {
    fn full(b: impl Into<Bytes>) -> Self {
        ReplyBody {
            full: Some(b.into()),
            rx: None,
        }
    }

    fn stream(rx: mpsc::Receiver<Result<Bytes, io::Error>>) -> Self {
        ReplyBody {
            full: None,
            rx: Some(rx),
        }
    }
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if let Some(b) = this.full.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        match &mut this.rx {
            None => Poll::Ready(None),
            Some(rx) => rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.full.is_none() && self.rx.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.full, &self.rx) {
            (Some(b), None) => SizeHint::with_exact(b.len() as u64),
            (None, None) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// An error answer.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    frame: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            frame: None,
        }
    }

    fn at(mut self, frame: Option<u32>) -> Self {
        self.frame = frame;
        self
    }

    fn read(e: ReadError) -> Self {
        match e {
            ReadError::Frame { frame, error } => ApiError::frame(error, frame),
            ReadError::Stream { frame, error } => ApiError::stream(error, frame),
            ReadError::TooManyFrames { limit } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request over the limit of {limit} frames"),
            )
            .at(Some(limit)),
        }
    }

    fn frame(e: FrameError, index: u32) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            e.as_str(),
            format!("frame {index}: {e}"),
        )
        .at(Some(index))
    }

    fn stream(e: StreamError, index: Option<u32>) -> Self {
        let status = match e {
            StreamError::SchemaMismatch { .. } => StatusCode::CONFLICT,
            _ => StatusCode::BAD_REQUEST,
        };
        let message = match index {
            Some(i) => format!("frame {i}: {e}"),
            None => e.to_string(),
        };
        ApiError::new(status, e.as_str(), message).at(index)
    }

    fn internal(e: impl std::fmt::Display) -> Self {
        error!(error = %e, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal server error; see the server log",
        )
    }

    fn into_response(self, server: &Server) -> Response<ReplyBody> {
        server.metrics.error(self.status.as_u16(), self.code);
        if self.status.is_server_error() {
            warn!(status = self.status.as_u16(), code = self.code, message = %self.message, "request failed");
        } else {
            info!(status = self.status.as_u16(), code = self.code, message = %self.message, "request refused");
        }
        let body = serde_json::json!({
            "error": self.code,
            "message": self.message,
            "frame": self.frame,
        });
        let mut resp = Response::new(ReplyBody::full(format!("{body}\n")));
        *resp.status_mut() = self.status;
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(
                RETRY_AFTER,
                HeaderValue::from(server.config.retry_after_secs),
            );
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<ReplyBody> {
    let mut resp = Response::new(ReplyBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

async fn handle(
    server: Arc<Server>,
    req: HttpRequest<IncomingBody>,
) -> Result<Response<ReplyBody>, Infallible> {
    let id = server.next_request.fetch_add(1, Relaxed);
    let span = tracing::info_span!(
        "request",
        id,
        method = %req.method(),
        path = %req.uri().path(),
        device = tracing::field::Empty
    );
    async move {
        let started = Instant::now();
        let result = match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => Ok(text(StatusCode::OK, "text/plain", "ok\n".into())),
            (&Method::GET, "/metrics") => Ok(text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                server.metrics.render(),
            )),
            (&Method::POST, "/v1/sync") => sync(&server, req, started).await,
            (_, "/healthz" | "/metrics" | "/v1/sync") => Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use GET for /healthz and /metrics, POST for /v1/sync",
            )),
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint (try POST /v1/sync, GET /healthz, GET /metrics)",
            )),
        };
        let mut resp = result.unwrap_or_else(|e| e.into_response(&server));
        resp.headers_mut()
            .insert("x-request-id", HeaderValue::from(id));
        Ok(resp)
    }
    .instrument(span)
    .await
}

/// Holds a sync slot; gives it back (and updates the gauge) when dropped.
struct SyncSlot {
    server: Arc<Server>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for SyncSlot {
    fn drop(&mut self) {
        self.server.metrics.in_flight(-1);
    }
}

fn bearer(req: &HttpRequest<IncomingBody>) -> Option<&str> {
    let v = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ApiError::internal(e)),
        Err(e) => Err(ApiError::internal(e)),
    }
}

async fn sync(
    server: &Arc<Server>,
    req: HttpRequest<IncomingBody>,
    started: Instant,
) -> Result<Response<ReplyBody>, ApiError> {
    let coding = ReplyCoding::of(req.headers());
    let ct = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.split(';').next().map(str::trim) != Some(CONTENT_TYPE_V1) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("content type must be {CONTENT_TYPE_V1}, got {ct:?}"),
        ));
    }
    let inflater = request_inflater(req.headers())?;
    let Some(token) = bearer(&req) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "no bearer token: send Authorization: Bearer <token> (see `ferrysync device add`)",
        ));
    };
    let hash = hash_token(token);
    let store = server.store.clone();
    let device = match blocking(move || store.authenticate(&hash)).await? {
        None => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "unknown token",
            ))
        }
        Some(d) if d.revoked => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("device {} was revoked", d.id),
            ))
        }
        Some(d) => d,
    };
    tracing::Span::current().record("device", device.id);
    // Wait in the semaphore's fair queue for a slot, up to `queue_wait`.
    let slot = tokio::time::timeout(
        server.config.queue_wait,
        server.syncs.clone().acquire_owned(),
    )
    .await;
    let Ok(Ok(permit)) = slot else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!(
                "{} syncs running and none finished within {} ms; retry later",
                server.config.max_concurrent_syncs,
                server.config.queue_wait.as_millis()
            ),
        ));
    };
    server.metrics.in_flight(1);
    let slot = SyncSlot {
        server: server.clone(),
        _permit: permit,
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > server.config.max_body_bytes) {
        return Err(body_too_large(server));
    }
    let (hello, outcome) = receive(server, &device, req.into_body(), inflater).await?;
    let rejected: Vec<_> = outcome.rejected.iter().map(|r| r.reason).collect();
    server
        .metrics
        .sync_committed(outcome.applied, outcome.mappings.len(), &rejected);
    info!(
        device = device.id,
        batch = hello.batch_id,
        applied = outcome.applied,
        mappings = outcome.mappings.len(),
        rejected = rejected.len(),
        "batch committed"
    );
    Ok(reply(server, slot, device, hello, outcome, started, coding))
}

fn body_too_large(server: &Server) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!(
            "request body over the limit of {} bytes",
            server.config.max_body_bytes
        ),
    )
}

enum ToDb {
    Changes(Vec<OwnedChange>),
    Commit,
}

/// The database side of a sync: a change source fed by the body reader.
struct ChannelSource {
    rx: mpsc::Receiver<ToDb>,
    pending: std::vec::IntoIter<OwnedChange>,
}

impl ChangeSource for ChannelSource {
    fn next(&mut self) -> Option<Incoming> {
        loop {
            if let Some(c) = self.pending.next() {
                return Some(Incoming::Change(c));
            }
            match self.rx.blocking_recv()? {
                ToDb::Changes(v) => self.pending = v.into_iter(),
                ToDb::Commit => return Some(Incoming::Commit),
            }
        }
    }
}

struct DbTask {
    tx: mpsc::Sender<ToDb>,
    join: JoinHandle<Result<SyncOutcome, StoreError>>,
}

impl DbTask {
    fn start(server: &Server, device: &Device) -> Self {
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let store = server.store.clone();
        let device = device.clone();
        let params = server.sync_params();
        let join = tokio::task::spawn_blocking(move || {
            let mut src = ChannelSource {
                rx,
                pending: Vec::new().into_iter(),
            };
            store.sync(&device, params, &mut src)
        });
        DbTask { tx, join }
    }

    /// Ends the sync: commits if `commit`, else rolls back. Waits for the database.
    async fn finish(self, commit: bool) -> Result<SyncOutcome, ApiError> {
        if commit {
            // A send error means the task already ended; its result says why.
            let _ = self.tx.send(ToDb::Commit).await;
        }
        drop(self.tx);
        match self.join.await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(StoreError::Aborted)) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "aborted",
                "sync aborted",
            )),
            Ok(Err(e)) => Err(ApiError::internal(e)),
            Err(e) => Err(ApiError::internal(e)),
        }
    }
}

/// Why [`Inflated`] refused the request's bytes.
#[derive(Clone, Copy, Debug)]
enum Refused {
    /// More bytes than `max_body_bytes` after inflating.
    TooLarge,
    /// The frame reader refused them.
    Read(ReadError),
}

/// The request's bytes after inflating, on their way to the frame reader; counts them against
/// the body limit (a few kB of gzip can inflate to gigabytes). Refuses every write after the
/// first refusal.
struct Inflated {
    reader: RequestReader,
    changes: Vec<OwnedChange>,
    bytes: u64,
    limit: u64,
    refused: Option<Refused>,
}

impl Write for Inflated {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.refused.is_some() {
            return Err(io::Error::other("request refused"));
        }
        self.bytes += buf.len() as u64;
        let result = if self.bytes > self.limit {
            Err(Refused::TooLarge)
        } else {
            self.reader
                .push(buf, &mut self.changes)
                .map_err(Refused::Read)
        };
        match result {
            Ok(()) => Ok(buf.len()),
            Err(r) => {
                self.refused = Some(r);
                Err(io::Error::other("request refused"))
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The request body's decoder: its bytes go to the frame reader as they are, or inflated
/// step by step ([`Inflater`]: at most 32 KiB out per step, so the changes they complete go to
/// the database before more is inflated, whatever the ratio).
struct BodyDecoder {
    inflater: Option<Inflater>,
    sink: Inflated,
}

impl BodyDecoder {
    fn hello(&self) -> Option<Hello> {
        self.sink.reader.hello()
    }

    /// Whether the decoder holds output that [`feed`](Self::feed) with no input puts out.
    fn holds_output(&self) -> bool {
        self.inflater.as_ref().is_some_and(Inflater::holds_output)
    }

    /// Feeds the start of `data` (bytes as they came on the wire, or none to take out what the
    /// decoder holds); returns how many were used. Some progress is made: bytes used, or (when
    /// it returns 0) output put out.
    fn feed(&mut self, data: &[u8], server: &Server) -> Result<usize, ApiError> {
        let result = match &mut self.inflater {
            None => self.sink.write_all(data).map(|()| data.len()),
            Some(z) => z
                .step(data)
                .and_then(|(used, out)| self.sink.write_all(&out).map(|()| used)),
        };
        result.map_err(|e| self.refusal(&e, server))
    }

    /// Ends the body, once the decoder holds no more output (see `receive`): checks the end of
    /// the compressed stream (gzip: its CRC and length), then the frames.
    fn finish(&mut self, server: &Server) -> Result<(), ApiError> {
        if let Some(z) = &mut self.inflater {
            if let Err(e) = z.end().and_then(|rest| self.sink.write_all(&rest)) {
                return Err(self.refusal(&e, server));
            }
        }
        self.sink
            .reader
            .finish()
            .map(|_| ())
            .map_err(ApiError::read)
    }

    fn refusal(&mut self, e: &io::Error, server: &Server) -> ApiError {
        match self.sink.refused {
            Some(Refused::Read(r)) => ApiError::read(r),
            Some(Refused::TooLarge) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "request body over the limit of {} bytes once inflated",
                    server.config.max_body_bytes
                ),
            ),
            None => {
                let (code, name) = match self.inflater.as_ref().map(Inflater::content_coding) {
                    Some("br") => ("bad_brotli", "brotli"),
                    _ => ("bad_gzip", "gzip"),
                };
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    code,
                    format!("the request body is not a valid {name} stream: {e}"),
                )
            }
        }
    }
}

/// The request body's decoder, from its `Content-Encoding`: absent or `identity` (plain),
/// `gzip` (or its old name `x-gzip`) or `br`; anything else is 415.
fn request_inflater(headers: &hyper::HeaderMap) -> Result<Option<Inflater>, ApiError> {
    let codings: Vec<String> = headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .map(|v| v.to_str().unwrap_or("?"))
        .flat_map(|v| v.split(','))
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .collect();
    match codings.as_slice() {
        [] => Ok(None),
        [c] if c == "gzip" || c == "x-gzip" => Ok(Some(Inflater::gzip())),
        [c] if c == "br" => Ok(Some(Inflater::brotli())),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            format!(
                "request content encoding {:?} is not supported: send gzip or br, or no \
                 Content-Encoding",
                codings.join(", ")
            ),
        )),
    }
}

/// Reads and applies the request body (inflating it with `inflater` when it is compressed);
/// returns its hello and the committed outcome.
async fn receive(
    server: &Server,
    device: &Device,
    mut body: IncomingBody,
    inflater: Option<Inflater>,
) -> Result<(Hello, SyncOutcome), ApiError> {
    let cfg = &server.config;
    let sink = Inflated {
        reader: RequestReader::new(server.schema.hash(), cfg.max_frames),
        changes: Vec::new(),
        bytes: 0,
        limit: cfg.max_body_bytes,
        refused: None,
    };
    let mut dec = BodyDecoder { inflater, sink };
    let mut db: Option<DbTask> = None;
    let mut received: u64 = 0;
    let read = async {
        let mut ended = false;
        while !ended {
            let next = tokio::time::timeout(cfg.body_timeout, body.frame())
                .await
                .map_err(|_| {
                    ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "body_timeout",
                        format!("no request bytes for {} s", cfg.body_timeout.as_secs_f64()),
                    )
                })?;
            let data = match next {
                Some(frame) => {
                    let frame = frame.map_err(|e| {
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "body_error",
                            format!("reading the request body failed: {e}"),
                        )
                    })?;
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    data
                }
                // The end of the body: what the decoder still holds comes out below, with the
                // same hand-off to the database as the rest.
                None => {
                    ended = true;
                    Bytes::new()
                }
            };
            received += data.len() as u64;
            if received > cfg.max_body_bytes {
                return Err(body_too_large(server));
            }
            let mut data = &data[..];
            while !data.is_empty() || dec.holds_output() {
                let used = dec.feed(data, server)?;
                data = &data[used..];
                let sink = &mut dec.sink;
                if db.is_none() && (sink.bytes > SPOOL_BYTES || sink.changes.len() > SPOOL_CHANGES)
                {
                    db = Some(DbTask::start(server, device));
                }
                if let Some(db) = &db {
                    if !sink.changes.is_empty()
                        && db
                            .tx
                            .send(ToDb::Changes(std::mem::take(&mut sink.changes)))
                            .await
                            .is_err()
                    {
                        // The database task ended early; `finish` reports why.
                        return Ok(());
                    }
                }
            }
        }
        dec.finish(server)
    }
    .await;
    match (read, db, dec.hello()) {
        (Ok(()), db, Some(hello)) => {
            let pending = std::mem::take(&mut dec.sink.changes);
            let db = match db {
                Some(db) => db,
                // Nothing to write (a pull): no write transaction, so a pull never queues
                // behind the single writer, which a push streaming in over a slow link may
                // hold for as long as its body takes. Its reply reads a snapshot as any other.
                None if pending.is_empty() => return Ok((hello, SyncOutcome::default())),
                None => DbTask::start(server, device),
            };
            // A send error means the task ended early; `finish` reports why.
            if !pending.is_empty() {
                let _ = db.tx.send(ToDb::Changes(pending)).await;
            }
            Ok((hello, db.finish(true).await?))
        }
        (Ok(()), _, None) => Err(ApiError::stream(StreamError::Truncated, None)),
        (Err(e), db, _) => {
            if let Some(db) = db {
                // Roll back before answering, so the error means "nothing changed".
                let _ = db.finish(false).await;
            }
            Err(e)
        }
    }
}

/// The reply's content coding, chosen from the request's `Accept-Encoding`: brotli when the
/// client lists `br`, else gzip when it lists `gzip`, else none (a coding with `q=0` is not
/// listed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyCoding {
    Plain,
    Gzip,
    Brotli,
}

impl ReplyCoding {
    fn of(headers: &hyper::HeaderMap) -> Self {
        if accepts(headers, "br") {
            ReplyCoding::Brotli
        } else if accepts(headers, "gzip") {
            ReplyCoding::Gzip
        } else {
            ReplyCoding::Plain
        }
    }
}

/// gzip level of replies: zlib's default (the client is on a slow link, or it would not ask;
/// the fast level left the reply 1.5 times larger, 0.41 against about 0.28 of the bodies).
const GZIP_LEVEL: u32 = 6;

/// Writes reply frames into chunks sent to the response body, compressed when the client
/// accepts it: gzip at [`GZIP_LEVEL`], or brotli as [`Deflater::brotli`] does (quality
/// [`BROTLI_QUALITY`](ferrysync_sqlite::coding::BROTLI_QUALITY), flushed as it goes).
/// Compressed output is sent whenever a chunk of it is ready.
struct ReplyWriter {
    chunk: Vec<u8>,
    coder: Option<Deflater>,
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
}

impl ReplyWriter {
    fn new(coding: ReplyCoding, tx: mpsc::Sender<Result<Bytes, io::Error>>) -> Self {
        let coder = match coding {
            ReplyCoding::Plain => None,
            ReplyCoding::Gzip => Some(Deflater::gzip(GZIP_LEVEL)),
            ReplyCoding::Brotli => Some(Deflater::brotli()),
        };
        ReplyWriter {
            chunk: Vec::with_capacity(CHUNK + MAX_FRAME),
            coder,
            tx,
        }
    }

    fn put(&mut self, frame: &[u8]) -> Result<(), StoreError> {
        let Some(z) = &mut self.coder else {
            self.chunk.extend_from_slice(frame);
            if self.chunk.len() >= CHUNK {
                self.send()?;
            }
            return Ok(());
        };
        z.write(frame).map_err(compress_failed)?;
        if z.output().len() >= CHUNK {
            self.chunk = std::mem::take(z.output());
            self.send()?;
        }
        Ok(())
    }

    /// Sends what is left, and ends the compressed stream.
    fn finish(&mut self) -> Result<(), StoreError> {
        if let Some(z) = self.coder.take() {
            self.chunk = z.finish().map_err(compress_failed)?;
        }
        self.send()
    }

    fn send(&mut self) -> Result<(), StoreError> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK + MAX_FRAME));
        self.tx
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| StoreError::Closed)
    }
}

/// Compressing into memory does not fail; should it, the reply is cut like any other failure.
fn compress_failed(e: io::Error) -> StoreError {
    StoreError::Corrupt(format!("compressing the reply failed: {e}"))
}

/// Whether the request's `Accept-Encoding` lists `coding` without refusing it (`q=0`).
fn accepts(headers: &hyper::HeaderMap, coding: &str) -> bool {
    headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            parts.next().is_some_and(|c| c.eq_ignore_ascii_case(coding))
                && !parts.any(|p| {
                    // `q=0`, `q=0.0`, `Q = 0.000`: a weight of zero refuses the coding.
                    let p = p.replace(' ', "");
                    p.get(..2).is_some_and(|k| k.eq_ignore_ascii_case("q="))
                        && p[2..].parse::<f32>().is_ok_and(|q| q <= 0.0)
                })
        })
}

fn reply(
    server: &Arc<Server>,
    slot: SyncSlot,
    device: Device,
    hello: Hello,
    outcome: SyncOutcome,
    started: Instant,
    coding: ReplyCoding,
) -> Response<ReplyBody> {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let server2 = server.clone();
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _span = span.enter();
        let _slot = slot;
        let server = server2;
        let mut w = ReplyWriter::new(coding, tx);
        let result = crate::direct::write_reply(
            server.store.as_ref(),
            &device,
            &hello,
            &outcome,
            now_ms(),
            &mut |m| w.put(m),
        )
        .and_then(|stats| {
            w.finish()?;
            Ok(stats)
        });
        match result {
            Ok(stats) => {
                server.metrics.reply_records(stats.records);
                server.metrics.observe_latency(started.elapsed());
                info!(
                    frames = stats.frames,
                    records = stats.records,
                    cursor = stats.cursor,
                    ms = started.elapsed().as_millis() as u64,
                    "reply sent"
                );
            }
            Err(StoreError::Closed) => {
                info!("client went away during the reply (it commits nothing without Done)")
            }
            Err(e) => {
                error!(error = %e, "reply failed; cutting the stream (the device commits nothing)");
                let _ = w.tx.blocking_send(Err(io::Error::other(e.to_string())));
            }
        }
    });
    let mut resp = Response::new(ReplyBody::stream(rx));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_V1));
    let encoding = match coding {
        ReplyCoding::Plain => None,
        ReplyCoding::Gzip => Some("gzip"),
        ReplyCoding::Brotli => Some("br"),
    };
    if let Some(e) = encoding {
        resp.headers_mut()
            .insert(CONTENT_ENCODING, HeaderValue::from_static(e));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// 512 KiB of record-like frames that do not compress to nothing.
    fn frames() -> Vec<Vec<u8>> {
        (0..20_000u32)
            .map(|i| {
                format!(
                    "contact {i} <c{}@example.com> +33 4 {} {};",
                    i.wrapping_mul(7919) % 100_003,
                    i * 31 % 997,
                    i * 17 % 89
                )
                .into_bytes()
            })
            .scan(0usize, |n, f| {
                *n += f.len();
                (*n <= 512 * 1024).then_some(f)
            })
            .collect()
    }

    /// Writes `frames()` as a reply in `coding`: the chunks sent before `finish`, all the
    /// chunks, and the frames' bytes.
    fn write(coding: ReplyCoding) -> (usize, Vec<u8>, Vec<u8>) {
        let (tx, mut rx) = mpsc::channel(1024);
        let mut w = ReplyWriter::new(coding, tx);
        let mut plain = Vec::new();
        for f in frames() {
            w.put(&f).unwrap();
            plain.extend_from_slice(&f);
        }
        let mut body = Vec::new();
        let mut early = 0;
        while let Ok(chunk) = rx.try_recv() {
            early += 1;
            body.extend_from_slice(&chunk.unwrap());
        }
        w.finish().unwrap();
        while let Ok(chunk) = rx.try_recv() {
            body.extend_from_slice(&chunk.unwrap());
        }
        (early, body, plain)
    }

    #[test]
    fn compressed_replies_stream_before_their_end() {
        let (early, body, plain) = write(ReplyCoding::Brotli);
        // Without the flushes the encoder would keep all of it (under 8 MiB) until the end.
        assert!(early >= 2, "{early} brotli chunks before the end");
        assert!(
            body.len() * 3 < plain.len(),
            "{} of {}",
            body.len(),
            plain.len()
        );
        let mut decoded = Vec::new();
        brotli::Decompressor::new(&body[..], 4096)
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, plain);

        let (early, body, plain) = write(ReplyCoding::Gzip);
        assert!(early >= 2, "{early} gzip chunks before the end");
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, plain);

        let (early, body, plain) = write(ReplyCoding::Plain);
        assert_eq!(early, plain.len() / CHUNK);
        assert_eq!(body, plain);
    }
}
