//! The device's link to the server, as the sync engine uses it.

/// One request/reply exchange at a time, driven by the engine:
/// [`send`](Transport::send) is called with the request's bytes in order (the first call opens
/// the exchange), [`finish`](Transport::finish) once the request is complete, then
/// [`receive`](Transport::receive) until it returns `Ok(0)` (end of the reply). A transport may
/// stream (HTTP chunked upload, a TCP socket) or buffer; the engine never needs more than one
/// frame of its own buffer either way.
///
/// If any call fails the engine drops the exchange and commits nothing; the next sync starts a
/// new exchange with a new first `send`.
#[allow(async_fn_in_trait)] // Device executors are single-threaded; no Send bound is wanted.
pub trait Transport {
    /// The transport's own error (unreachable server, HTTP status, cut connection...).
    type Error: core::fmt::Debug + core::fmt::Display;

    /// Sends the next bytes of the request.
    async fn send(&mut self, bytes: &[u8]) -> Result<(), Self::Error>;

    /// Ends the request; the reply can be read from now on.
    async fn finish(&mut self) -> Result<(), Self::Error>;

    /// Reads the next bytes of the reply into `buf`; `Ok(0)` means the reply ended.
    async fn receive(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error>;
}
