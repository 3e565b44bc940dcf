//! Frames: one postcard message, then its CRC-32, COBS-encoded and ended by a `0x00` byte.
//!
//! ```text
//! frame   = cobs(message ‖ crc32_le(message)) ‖ 0x00
//! ```
//!
//! COBS leaves no `0x00` inside a frame, so a reader can always resynchronise at the next
//! delimiter, and needs at most one frame of buffer. `N`, a const generic on both the encoder
//! and the decoder, is the largest frame in bytes, delimiter included ([`DEFAULT_MAX_FRAME`]).
//!
//! The decoder is feed-style ([`FrameDecoder::feed`]): give it whatever bytes arrived, in
//! chunks of any size; it answers how many it consumed and either "need more", a typed message
//! borrowed from its buffer, or an error. After an error it skips to the next delimiter, so one
//! bad frame costs one frame.

use core::fmt;
use crc::{Crc, CRC_32_ISO_HDLC};
use postcard::ser_flavors::{crc::CrcModifier, Cobs, Slice};
use serde::{Deserialize, Serialize};

/// Default largest frame, delimiter included: enough for a record body of about 900 bytes.
pub const DEFAULT_MAX_FRAME: usize = 1024;

/// Bytes of a frame that are not the message: CRC, COBS overhead up to 254 bytes, delimiter.
pub const FRAME_OVERHEAD_SMALL: usize = 4 + 2 + 1;

/// CRC-32/ISO-HDLC (the zip and Ethernet CRC), little-endian after the message.
pub const CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);

/// The CRC of a message, [`CRC32`]'s: of a received one on every target, of one to send on
/// hosts (firmwares send through postcard's CRC flavor). Hosts (feature `std`: a phone checks
/// every byte of a full refresh) use crc32fast's SIMD; a firmware keeps [`CRC32`]'s 1 KiB table.
#[cfg(feature = "std")]
fn message_crc(msg: &[u8]) -> u32 {
    crc32fast::hash(msg)
}
#[cfg(not(feature = "std"))]
fn message_crc(msg: &[u8]) -> u32 {
    CRC32.checksum(msg)
}

/// Why a message could not be framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The frame would be longer than the buffer (or the maximum frame size).
    TooLarge,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::TooLarge => f.write_str("message does not fit in one frame"),
        }
    }
}

/// Why a frame's message could not be decoded (after its CRC matched).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageError {
    /// The message ended early.
    UnexpectedEnd,
    /// A varint is too long or overflows its type.
    BadVarint,
    /// A `bool` byte other than 0 or 1.
    BadBool,
    /// Text that is not UTF-8.
    BadUtf8,
    /// An `Option` tag other than 0 or 1.
    BadOption,
    /// An enum discriminant (message kind, op, mode, reason) this version does not know.
    UnknownVariant,
    /// Any other encoding error.
    Other,
}

impl MessageError {
    pub(crate) fn from_postcard(e: postcard::Error) -> Self {
        use postcard::Error as P;
        match e {
            P::DeserializeUnexpectedEnd => MessageError::UnexpectedEnd,
            P::DeserializeBadVarint => MessageError::BadVarint,
            P::DeserializeBadBool => MessageError::BadBool,
            P::DeserializeBadChar | P::DeserializeBadUtf8 => MessageError::BadUtf8,
            P::DeserializeBadOption => MessageError::BadOption,
            // Serde's derived enum code reports an unknown variant as a custom error.
            P::DeserializeBadEnum | P::SerdeDeCustom => MessageError::UnknownVariant,
            _ => MessageError::Other,
        }
    }

    /// A short stable name, for machine-readable error bodies.
    pub const fn as_str(self) -> &'static str {
        match self {
            MessageError::UnexpectedEnd => "unexpected_end",
            MessageError::BadVarint => "bad_varint",
            MessageError::BadBool => "bad_bool",
            MessageError::BadUtf8 => "bad_utf8",
            MessageError::BadOption => "bad_option",
            MessageError::UnknownVariant => "unknown_variant",
            MessageError::Other => "bad_encoding",
        }
    }
}

/// Why a frame was refused. The decoder has skipped to the next delimiter when it reports one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// More than `N - 1` bytes arrived without a delimiter.
    TooLarge,
    /// The bytes are not valid COBS.
    Cobs,
    /// Too short to hold a message and its CRC.
    TooShort,
    /// The CRC does not match: the frame was damaged on the way.
    Crc,
    /// The CRC matched but the message does not decode.
    Message(MessageError),
    /// Bytes remain after the message.
    TrailingBytes,
}

impl FrameError {
    /// A short stable name, for machine-readable error bodies.
    pub const fn as_str(self) -> &'static str {
        match self {
            FrameError::TooLarge => "frame_too_large",
            FrameError::Cobs => "bad_cobs",
            FrameError::TooShort => "frame_too_short",
            FrameError::Crc => "bad_crc",
            FrameError::Message(m) => m.as_str(),
            FrameError::TrailingBytes => "trailing_bytes",
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge => f.write_str("frame longer than the maximum frame size"),
            FrameError::Cobs => f.write_str("frame is not valid COBS"),
            FrameError::TooShort => f.write_str("frame too short for a message and its CRC"),
            FrameError::Crc => f.write_str("frame CRC mismatch"),
            FrameError::Message(m) => write!(f, "message does not decode ({})", m.as_str()),
            FrameError::TrailingBytes => f.write_str("bytes left after the message"),
        }
    }
}

/// Encodes `msg` as one frame into `buf`, returning the frame (delimiter included).
///
/// The frame is at most `buf.len()` bytes; give a buffer of the maximum frame size `N`.
///
/// Hosts (feature `std`) write the message's postcard bytes into a per-thread scratch buffer
/// first, then take their CRC with crc32fast and COBS-encode them a run at a time with
/// corncobs: the same bytes as postcard's CRC and COBS flavors, which a firmware keeps (no
/// second buffer), but those go byte by byte: about a fifth of what a server spends reading
/// a reply out of its database.
pub fn encode<'b, M: Serialize + ?Sized>(
    msg: &M,
    buf: &'b mut [u8],
) -> Result<&'b mut [u8], EncodeError> {
    #[cfg(feature = "std")]
    if let Some(done) = host::encode(msg, buf) {
        return done.map(|n| &mut buf[..n]);
    }
    encode_by_flavors(msg, buf)
}

/// [`encode`] through postcard's CRC and COBS flavors, straight into `buf`.
fn encode_by_flavors<'b, M: Serialize + ?Sized>(
    msg: &M,
    buf: &'b mut [u8],
) -> Result<&'b mut [u8], EncodeError> {
    let cobs = Cobs::try_new(Slice::new(buf)).map_err(|_| EncodeError::TooLarge)?;
    postcard::serialize_with_flavor(msg, CrcModifier::new(cobs, CRC32.digest()))
        .map_err(|_| EncodeError::TooLarge)
}

/// Frame encoding on hosts: postcard into a scratch buffer, then crc32fast and corncobs.
#[cfg(feature = "std")]
mod host {
    use super::{message_crc, EncodeError, Serialize};
    use core::cell::RefCell;
    use std::vec::Vec;

    std::thread_local! {
        /// The message's postcard bytes and CRC; grows to the largest frame buffer given.
        static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }

    /// Writes the frame of `msg` at the start of `buf` and returns its length, or `None` when
    /// this path cannot tell (a frame that might only just fit, or a nested call): the
    /// flavors' path decides those.
    pub(super) fn encode<M: Serialize + ?Sized>(
        msg: &M,
        buf: &mut [u8],
    ) -> Option<Result<usize, EncodeError>> {
        SCRATCH.with(|scratch| {
            let mut raw = scratch.try_borrow_mut().ok()?;
            // A message longer than the buffer cannot make a frame that fits it.
            if raw.len() < buf.len() {
                raw.resize(buf.len(), 0);
            }
            let len = match postcard::to_slice(msg, &mut raw[..buf.len()]) {
                Ok(m) => m.len(),
                Err(_) => return Some(Err(EncodeError::TooLarge)),
            };
            let crc = message_crc(&raw[..len]);
            let with_crc = len + 4;
            // The worst case, and the code byte below.
            if corncobs::max_encoded_len(with_crc) + 1 > buf.len() {
                // It may still fit (fewer code bytes than the worst case): let the exact path
                // decide.
                return None;
            }
            raw[len..with_crc].copy_from_slice(&crc.to_le_bytes());
            let raw = &raw[..with_crc];
            let mut n = corncobs::encode_buf(raw, buf);
            // A message that ends with a full block (a multiple of 254 bytes without a zero):
            // postcard's flavor (and the classic encoder) ends it with an empty block, code
            // 0x01, where corncobs writes none. Decoders read both alike; frames stay the same
            // bytes on every device.
            let last_run = raw.len() - memchr::memrchr(0, raw).map_or(0, |z| z + 1);
            if last_run > 0 && last_run.is_multiple_of(254) {
                // In bounds: `n` counts the delimiter (so is at least 1) and is at most the
                // worst case, one byte short of `buf.len()` (checked above).
                buf[n - 1] = 0x01;
                buf[n] = 0;
                n += 1;
            }
            Some(Ok(n))
        })
    }
}

/// An encoder that owns one frame of buffer.
pub struct FrameEncoder<const N: usize = DEFAULT_MAX_FRAME> {
    buf: [u8; N],
}

impl<const N: usize> Default for FrameEncoder<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> FrameEncoder<N> {
    /// An encoder for frames of at most `N` bytes.
    pub const fn new() -> Self {
        FrameEncoder { buf: [0; N] }
    }

    /// Encodes `msg` as one frame; the slice is valid until the next call.
    pub fn encode<M: Serialize + ?Sized>(&mut self, msg: &M) -> Result<&[u8], EncodeError> {
        encode(msg, &mut self.buf).map(|f| &*f)
    }
}

/// What one call to [`FrameDecoder::feed`] found.
#[derive(Debug, PartialEq)]
pub struct Fed<M> {
    /// Bytes of the input consumed; feed the rest again.
    pub consumed: usize,
    /// `Ok(None)`: all input consumed, need more; `Ok(Some(m))`: a message;
    /// `Err(e)`: a bad frame, skipped.
    pub result: Result<Option<M>, FrameError>,
}

/// A streaming frame decoder with one frame of buffer (`N` bytes, delimiter included).
pub struct FrameDecoder<const N: usize = DEFAULT_MAX_FRAME> {
    buf: [u8; N],
    len: usize,
    discarding: bool,
    reset_next: bool,
    frames: u32,
    in_frame: bool,
    last_msg: Option<usize>,
}

impl<const N: usize> Default for FrameDecoder<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> FrameDecoder<N> {
    /// A decoder at a frame boundary.
    pub const fn new() -> Self {
        FrameDecoder {
            buf: [0; N],
            len: 0,
            discarding: false,
            reset_next: false,
            frames: 0,
            in_frame: false,
            last_msg: None,
        }
    }

    /// The message bytes (COBS decoded, CRC checked and removed) of the frame the last
    /// [`feed`](Self::feed) completed, even when its message did not decode; `None` when the
    /// frame failed before its CRC matched. Valid until the next `feed`.
    ///
    /// Lets a server read a newer client's protocol version with
    /// [`wire::peek_protocol`](crate::wire::peek_protocol) when the message itself is not v1.
    pub fn last_message(&self) -> Option<&[u8]> {
        if !self.reset_next {
            return None;
        }
        self.last_msg.and_then(|n| self.buf.get(..n))
    }

    /// Frames completed so far (good or bad); the index of the next frame.
    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// Whether bytes of an unfinished frame are buffered (a stream that ends here is cut).
    pub fn is_mid_frame(&self) -> bool {
        !self.reset_next && (self.len > 0 || self.discarding || self.in_frame)
    }

    /// Consumes bytes from `input` up to and including the next delimiter, and decodes the
    /// frame it ends. Call again with `&input[fed.consumed..]` until all input is consumed.
    /// A message borrows from the decoder until the next call.
    pub fn feed<'d, M: Deserialize<'d>>(&'d mut self, input: &[u8]) -> Fed<M> {
        if self.reset_next {
            self.len = 0;
            self.reset_next = false;
            self.last_msg = None;
        }
        let mut i = 0;
        while i < input.len() {
            // The bytes up to the next delimiter are copied as one run.
            let rest = &input[i..];
            let run = memchr::memchr(0, rest).unwrap_or(rest.len());
            if run > 0 {
                if !self.discarding {
                    // A byte is kept only while the frame has room for it and the delimiter.
                    let room = (N - 1).saturating_sub(self.len);
                    if run > room {
                        // Skip to the next delimiter.
                        self.discarding = true;
                        self.len = 0;
                        self.frames = self.frames.wrapping_add(1);
                        return Fed {
                            consumed: i + room + 1,
                            result: Err(FrameError::TooLarge),
                        };
                    }
                    self.buf[self.len..self.len + run].copy_from_slice(&rest[..run]);
                    self.len += run;
                    self.in_frame = true;
                }
                i += run;
                if i == input.len() {
                    break;
                }
            }
            // `input[i]` is a delimiter.
            if self.discarding {
                self.discarding = false;
                self.in_frame = false;
                self.len = 0;
                i += 1;
                continue;
            }
            if self.len == 0 {
                // Empty frame: a bare delimiter, allowed as padding or to resynchronise.
                i += 1;
                continue;
            }
            self.reset_next = true;
            self.in_frame = false;
            self.frames = self.frames.wrapping_add(1);
            let n = self.len;
            return Fed {
                consumed: i + 1,
                result: decode_frame(&mut self.buf[..n], &mut self.last_msg).map(Some),
            };
        }
        Fed {
            consumed: input.len(),
            result: Ok(None),
        }
    }
}

/// Decodes one COBS frame (delimiter removed) in place and deserialises its message.
fn decode_frame<'d, M: Deserialize<'d>>(
    frame: &'d mut [u8],
    msg_len: &mut Option<usize>,
) -> Result<M, FrameError> {
    let n = corncobs::decode_in_place(frame).map_err(|_| FrameError::Cobs)?;
    let frame: &'d [u8] = frame;
    if n < 5 {
        return Err(FrameError::TooShort);
    }
    let (msg, crc) = frame[..n].split_at(n - 4);
    let mut want = [0u8; 4];
    want.copy_from_slice(crc);
    if message_crc(msg) != u32::from_le_bytes(want) {
        return Err(FrameError::Crc);
    }
    *msg_len = Some(msg.len());
    let (m, rest) = postcard::take_from_bytes::<M>(msg)
        .map_err(|e| FrameError::Message(MessageError::from_postcard(e)))?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes);
    }
    Ok(m)
}

/// Decodes exactly one whole frame (with or without its delimiter) from `frame`.
///
/// `frame` is used as scratch space (COBS decodes in place).
pub fn decode<'d, M: Deserialize<'d>>(frame: &'d mut [u8]) -> Result<M, FrameError> {
    let end = memchr::memchr(0, frame).unwrap_or(frame.len());
    if end + 1 < frame.len() {
        return Err(FrameError::TrailingBytes);
    }
    decode_frame(&mut frame[..end], &mut None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message CRC computes [`CRC32`] exactly, on every length and alignment
    /// (crc32fast takes its SIMD path from 64 bytes on).
    #[test]
    fn the_message_crc_is_crc32() {
        let data: [u8; 600] = core::array::from_fn(|i| (i * 7 + i / 13) as u8);
        for start in 0..9 {
            for end in [
                start,
                start + 1,
                start + 15,
                start + 63,
                start + 64,
                start + 300,
                600,
            ] {
                let msg = &data[start..end];
                assert_eq!(message_crc(msg), CRC32.checksum(msg), "{start}..{end}");
            }
        }
        assert_eq!(message_crc(b"123456789"), 0xCBF4_3926);
    }

    /// Messages of bytes with runs of zeros and non-zeros around COBS's 254-byte blocks.
    fn runs() -> impl proptest::strategy::Strategy<Value = std::vec::Vec<u8>> {
        use proptest::prelude::*;
        proptest::collection::vec((0usize..300, 0usize..3, any::<u8>()), 0..8).prop_map(|rs| {
            let mut v = std::vec::Vec::new();
            for (len, zeros, b) in rs {
                v.extend(core::iter::repeat_n(b | 1, len));
                v.extend(core::iter::repeat_n(0, zeros));
            }
            v
        })
    }

    /// Every length around one and two full COBS blocks (254 bytes without a zero), where
    /// COBS encoders may differ on the end of a block.
    #[test]
    fn hosts_encode_full_blocks_as_the_flavors_do() {
        let data = [0xA5u8; 600];
        for len in (230..280).chain(480..530) {
            let msg = serde_bytes::Bytes::new(&data[..len]);
            let (mut a, mut b) = ([0u8; 700], [0u8; 700]);
            let host = encode(msg, &mut a).unwrap().to_vec();
            assert_eq!(host, encode_by_flavors(msg, &mut b).unwrap(), "{len} bytes");
        }
    }

    proptest::proptest! {
        /// Hosts' frames (crc32fast and corncobs) are byte for byte those of postcard's CRC and
        /// COBS flavors, which firmwares write, and both refuse the same messages as too large,
        /// for buffers from far too small to roomy.
        #[test]
        fn hosts_encode_as_the_flavors_do(msg in runs(), slack in 0usize..12) {
            let msg = serde_bytes::Bytes::new(&msg);
            let mut want = [0u8; 2200];
            let full = encode_by_flavors(msg, &mut want).map(|f| f.len()).unwrap();
            for size in [full.saturating_sub(slack), full, full + slack, 2200] {
                let mut a = std::vec![0u8; size];
                let mut b = std::vec![0u8; size];
                let host = encode(msg, &mut a).map(|f| f.to_vec());
                let flavors = encode_by_flavors(msg, &mut b).map(|f| f.to_vec());
                proptest::prop_assert_eq!(&host, &flavors, "buffer of {}", size);
                if let Ok(frame) = host {
                    let mut frame = frame;
                    let back: &[u8] = decode::<&serde_bytes::Bytes>(&mut frame).unwrap();
                    proptest::prop_assert_eq!(back, &msg[..]);
                }
            }
        }
    }
}
