//! [`HttpTransport`]: the engine's [`Transport`] over HTTP, streaming both ways.
//!
//! The request body is a chunked upload fed from a bounded channel while the engine reads
//! pending changes from the store, and the reply is read chunk by chunk as it arrives, so
//! neither side holds a whole batch in memory. With [`HttpTransport::gzip`] the request is
//! gzipped as it streams (`Content-Encoding: gzip`, one compressor state, chunks of the same
//! size) and the reply is asked for gzipped and inflated here as it arrives (at most 32 KiB
//! out per step, whatever the ratio), so that both directions' bytes on the wire are counted.
//! With [`HttpTransport::brotli`] the reply is asked for in brotli (`Accept-Encoding: br`,
//! before gzip when that is on too) and decoded here the same way, 32 KiB out per step; with
//! [`HttpTransport::brotli_requests`] the request goes in brotli instead of gzip. Both
//! directions use the codings of [`crate::coding`].

use crate::coding::{Deflater, Inflater};
use bytes::Bytes;
use ferrysync_core::transport::Transport;
use std::fmt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Content type of sync bodies (the framing; the protocol version travels in `Hello`).
pub const CONTENT_TYPE: &str = "application/vnd.ferrysync.v1";

/// Request bytes are gathered into chunks of about this size before they go on the wire.
const CHUNK: usize = 16 * 1024;

/// gzip level of requests unless [`HttpTransport::gzip_level`] says otherwise: zlib's default.
/// A first push of 11,000 records (871 kB) became 237 kB at 6 against 338 kB at 1, for 36 ms of
/// compression against 9 ms on the bench machine; 9 gained nothing. gzip is for slow links,
/// where 100 kB takes longer than the extra CPU even on a phone's slower core.
const DEFAULT_GZIP_LEVEL: u32 = 6;

/// Why an HTTP exchange failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// No connection to the server.
    Unreachable {
        /// The URL tried.
        url: String,
        /// What the client said.
        detail: String,
    },
    /// The server answered with an error status.
    Status {
        /// HTTP status.
        status: u16,
        /// Machine-readable code from the error body (`bad_crc`, `schema_mismatch`...).
        code: String,
        /// The server's message.
        message: String,
    },
    /// The connection broke during the exchange.
    Broken(String),
    /// The transport was used out of order (a bug in the caller).
    Misuse(&'static str),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Unreachable { url, detail } => write!(
                f,
                "server unreachable at {url} ({detail}): check --server and that `ferrysync serve` is running"
            ),
            HttpError::Status { status: 401, message, .. } => write!(
                f,
                "the server refused the token (401: {message}): check --token, or enrol the device again with `ferrysync device add`"
            ),
            HttpError::Status { status: 409, message, .. } => write!(
                f,
                "schema mismatch (409: {message}): the device and the server must use the same schema file"
            ),
            HttpError::Status { status: 503, message, .. } => {
                write!(f, "server busy (503: {message}): try again in a moment")
            }
            HttpError::Status {
                status,
                code,
                message,
            } => write!(f, "server answered {status} {code}: {message}"),
            HttpError::Broken(d) => write!(f, "connection broken during sync: {d}"),
            HttpError::Misuse(m) => write!(f, "transport misuse: {m}"),
        }
    }
}

impl std::error::Error for HttpError {}

type Upload = mpsc::Sender<Result<Bytes, std::io::Error>>;

/// A [`Transport`] that POSTs to `{server}/v1/sync` with a bearer token.
///
/// Must be used inside a tokio runtime (the upload runs as a task).
pub struct HttpTransport {
    client: reqwest::Client,
    url: String,
    token: String,
    upload: Option<Upload>,
    buffered: Vec<u8>,
    gzip: bool,
    brotli: bool,
    brotli_requests: bool,
    level: u32,
    /// The request's compressor while a compressed request is open.
    encoder: Option<Deflater>,
    request: Option<JoinHandle<reqwest::Result<reqwest::Response>>>,
    response: Option<reqwest::Response>,
    /// The reply's decompressor when it came compressed, and its input not inflated yet.
    inflate: Option<Inflater>,
    zipped: Bytes,
    leftover: Bytes,
    /// Protocol bytes sent in the last exchange (before gzip).
    pub bytes_sent: u64,
    /// Request body bytes that went on the wire in the last exchange: compressed (gzip or
    /// brotli) when the request is, else the same as `bytes_sent`.
    pub wire_bytes_sent: u64,
    /// Protocol bytes received in the last exchange (after decoding a compressed reply).
    pub bytes_received: u64,
    /// Reply body bytes that came over the wire in the last exchange: compressed (gzip or
    /// brotli) when the server compressed it, else the same as `bytes_received`.
    pub wire_bytes_received: u64,
    /// The content coding of the last reply as it travelled: `None` when plain, else `"gzip"`
    /// or `"br"`.
    pub reply_coding: Option<&'static str>,
}

/// The HTTP client: it leaves `Accept-Encoding` and inflating to the transport, which counts
/// the reply's bytes as they travel (even when another crate turns reqwest's `gzip` on).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_gzip()
        .build()
        // Only TLS or resolver setup can fail, and this build has neither: fall back anyway.
        .unwrap_or_default()
}

impl HttpTransport {
    /// Gzips requests (`Content-Encoding: gzip`) and asks the server for gzipped replies:
    /// both about 3-4× smaller, worth it on a cellular link, not on a LAN. `bytes_sent` and
    /// `bytes_received` still count protocol bytes; `wire_bytes_sent` and
    /// `wire_bytes_received` count the bytes as they travel.
    pub fn gzip(mut self, on: bool) -> Self {
        self.gzip = on;
        self
    }

    /// Asks the server for brotli replies (`Accept-Encoding: br`, or `br, gzip` with
    /// [`gzip`](Self::gzip) on): a full pull about 24 % smaller than with gzip. Requests are
    /// unchanged (compressed only with [`gzip`](Self::gzip) or
    /// [`brotli_requests`](Self::brotli_requests)). The reply is decoded in
    /// whichever of the asked codings the server answers with; `wire_bytes_received` counts it
    /// as it travels.
    pub fn brotli(mut self, on: bool) -> Self {
        self.brotli = on;
        self
    }

    /// Sends requests in brotli (`Content-Encoding: br`) instead of gzip: a first push of
    /// 11,000 records about a third smaller than gzipped (148 kB against 219 kB), for less CPU
    /// than gzip's default level. Replies are unchanged (see [`brotli`](Self::brotli)). A
    /// server older than this option answers 415 `unsupported_encoding`.
    pub fn brotli_requests(mut self, on: bool) -> Self {
        self.brotli_requests = on;
        self
    }

    /// The gzip level of requests when [`gzip`](Self::gzip) is on: 1 (fastest) to 9
    /// (smallest), 6 unless set; larger values count as 9.
    pub fn gzip_level(mut self, level: u32) -> Self {
        self.level = level.min(9);
        self
    }

    /// A transport to the server at `server` (e.g. `http://127.0.0.1:7878`).
    pub fn new(server: &str, token: &str) -> Self {
        HttpTransport {
            client: client(),
            url: format!("{}/v1/sync", server.trim_end_matches('/')),
            token: token.to_owned(),
            upload: None,
            buffered: Vec::with_capacity(CHUNK),
            gzip: false,
            brotli: false,
            brotli_requests: false,
            level: DEFAULT_GZIP_LEVEL,
            encoder: None,
            request: None,
            response: None,
            inflate: None,
            zipped: Bytes::new(),
            leftover: Bytes::new(),
            bytes_sent: 0,
            wire_bytes_sent: 0,
            bytes_received: 0,
            wire_bytes_received: 0,
            reply_coding: None,
        }
    }

    fn open(&mut self) -> Upload {
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut request = self
            .client
            .post(&self.url)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE);
        self.buffered.clear();
        self.encoder = None;
        let accept = match (self.brotli, self.gzip) {
            (true, true) => Some("br, gzip"),
            (true, false) => Some("br"),
            (false, true) => Some("gzip"),
            (false, false) => None,
        };
        if let Some(accept) = accept {
            request = request.header(reqwest::header::ACCEPT_ENCODING, accept);
        }
        self.encoder = if self.brotli_requests {
            Some(Deflater::brotli())
        } else if self.gzip {
            Some(Deflater::gzip(self.level))
        } else {
            None
        };
        if let Some(z) = &self.encoder {
            request = request.header(reqwest::header::CONTENT_ENCODING, z.content_coding());
        }
        self.request = Some(tokio::spawn(request.body(body).send()));
        self.response = None;
        self.inflate = None;
        self.zipped = Bytes::new();
        self.leftover = Bytes::new();
        self.bytes_sent = 0;
        self.wire_bytes_sent = 0;
        self.bytes_received = 0;
        self.wire_bytes_received = 0;
        self.reply_coding = None;
        tx
    }

    async fn flush(&mut self) -> Result<(), HttpError> {
        if self.buffered.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffered,
            Vec::with_capacity(CHUNK),
        ));
        self.wire_bytes_sent += chunk.len() as u64;
        let Some(tx) = &self.upload else {
            return Err(HttpError::Misuse("flush without an open request"));
        };
        if tx.send(Ok(chunk)).await.is_err() {
            // The request task ended early (the server answered or the connection failed):
            // its outcome says why.
            return Err(self.outcome_error().await);
        }
        Ok(())
    }

    async fn outcome_error(&mut self) -> HttpError {
        self.upload = None;
        match self.request.take() {
            Some(task) => match task.await {
                Ok(Ok(resp)) => status_error(resp).await,
                Ok(Err(e)) => self.client_error(&e),
                Err(e) => HttpError::Broken(e.to_string()),
            },
            None => HttpError::Misuse("no request in flight"),
        }
    }

    /// Takes decoded reply bytes into `leftover`.
    fn take_inflated(&mut self, out: Vec<u8>) {
        self.bytes_received += out.len() as u64;
        self.leftover = Bytes::from(out);
    }

    /// A compressed reply that does not decode: the exchange is over, as if the link broke.
    fn bad_reply(&mut self, e: &std::io::Error) -> HttpError {
        let coding = self.inflate.as_ref().map_or("compressed", Inflater::name);
        self.response = None;
        self.inflate = None;
        self.zipped = Bytes::new();
        HttpError::Broken(format!("the {coding} reply is corrupt: {e}"))
    }

    fn client_error(&self, e: &reqwest::Error) -> HttpError {
        if e.is_connect() {
            HttpError::Unreachable {
                url: self.url.clone(),
                detail: root_cause(e),
            }
        } else {
            HttpError::Broken(root_cause(e))
        }
    }
}

/// Compressing into memory does not fail; should it, the sync fails like a broken link.
fn compress_failed(e: std::io::Error) -> HttpError {
    HttpError::Broken(format!("compressing the request failed: {e}"))
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

async fn status_error(resp: reqwest::Response) -> HttpError {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let parsed: Option<serde_json::Value> = serde_json::from_str(&text).ok();
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    HttpError::Status {
        status,
        code: field("error").unwrap_or_else(|| "http_error".into()),
        message: field("message").unwrap_or(text),
    }
}

impl Transport for HttpTransport {
    type Error = HttpError;

    async fn send(&mut self, bytes: &[u8]) -> Result<(), HttpError> {
        if self.upload.is_none() {
            let tx = self.open();
            self.upload = Some(tx);
        }
        self.bytes_sent += bytes.len() as u64;
        match &mut self.encoder {
            Some(z) => {
                z.write(bytes).map_err(compress_failed)?;
                if z.output().len() >= CHUNK {
                    self.buffered = std::mem::take(z.output());
                }
            }
            None => self.buffered.extend_from_slice(bytes),
        }
        if self.buffered.len() >= CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), HttpError> {
        if let Some(z) = self.encoder.take() {
            // The compressor's buffer is taken whole into `buffered` and sent right away, so
            // `buffered` is empty here: what is left is the compressor's tail and trailer.
            let tail = z.finish().map_err(compress_failed)?;
            self.buffered.extend_from_slice(&tail);
        }
        self.flush().await?;
        // Closing the channel ends the chunked upload.
        self.upload = None;
        let task = self
            .request
            .take()
            .ok_or(HttpError::Misuse("finish without send"))?;
        let resp = match task.await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => return Err(self.client_error(&e)),
            Err(e) => return Err(HttpError::Broken(e.to_string())),
        };
        if !resp.status().is_success() {
            return Err(status_error(resp).await);
        }
        let encoding = resp
            .headers()
            .get(reqwest::header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
        self.inflate = match encoding.as_deref() {
            None | Some("identity") => None,
            Some("gzip" | "x-gzip") if self.gzip => Some(Inflater::gzip()),
            Some("br") if self.brotli => Some(Inflater::brotli()),
            Some(other) => {
                return Err(HttpError::Broken(format!(
                "the reply came in content encoding {other:?}, which this client did not ask for"
            )))
            }
        };
        self.reply_coding = self.inflate.as_ref().map(Inflater::content_coding);
        self.response = Some(resp);
        Ok(())
    }

    async fn receive(&mut self, buf: &mut [u8]) -> Result<usize, HttpError> {
        while self.leftover.is_empty() {
            if let Some(z) = &mut self.inflate {
                if !self.zipped.is_empty() || z.holds_output() {
                    // One step: at most 32 KiB comes out.
                    let (used, out) = z.step(&self.zipped).map_err(|e| self.bad_reply(&e))?;
                    let _ = self.zipped.split_to(used);
                    self.take_inflated(out);
                    continue;
                }
            }
            let Some(resp) = self.response.as_mut() else {
                return Ok(0);
            };
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    self.wire_bytes_received += chunk.len() as u64;
                    if self.inflate.is_some() {
                        self.zipped = chunk;
                    } else {
                        self.bytes_received += chunk.len() as u64;
                        self.leftover = chunk;
                    }
                }
                Ok(None) => {
                    self.response = None;
                    if let Some(z) = &mut self.inflate {
                        let out = z.end().map_err(|e| self.bad_reply(&e))?;
                        self.take_inflated(out);
                        self.inflate = None;
                    }
                }
                Err(e) => {
                    self.response = None;
                    self.inflate = None;
                    return Err(HttpError::Broken(root_cause(&e)));
                }
            }
        }
        let n = buf.len().min(self.leftover.len());
        buf[..n].copy_from_slice(&self.leftover.split_to(n));
        Ok(n)
    }
}
