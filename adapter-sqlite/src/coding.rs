//! HTTP content codings of sync bodies, both ways, for the phone and the server alike:
//! [`Deflater`] compresses a body as it is written (gzip, or brotli flushed as it goes, so
//! the reader can start early), and [`Inflater`] decompresses one step by step, each step
//! putting out at most [`STEP`] bytes whatever the ratio. A few kilobytes of either coding can
//! decode to gigabytes: whoever reads the output (the phone reading a reply, the server reading
//! a request) checks its limits between steps instead of receiving it all at once.

use brotli::{BrotliDecompressStream, BrotliResult, BrotliState, HeapAlloc, HuffmanCode};
use flate2::write::{GzDecoder, GzEncoder};
use flate2::Compression;
use std::io::Write;

/// Decoded bytes put out by one step, at most.
pub const STEP: usize = 32 * 1024;

/// brotli quality, both ways. Full pulls (protocol v3), compressed in one run (release, the
/// shared 2-core machine; medians, in 200-byte writes as frames come), window 22:
///
/// | reply | gzip -6 | brotli 4 | brotli 5 | brotli 6 |
/// | --- | --- | --- | --- | --- |
/// | 1,000 / 10,000 (871,854 B) | 196,494 B, 25.6 ms | 179,646 B, 9.4 ms | 155,332 B, 18.6 ms | 149,724 B, 22.7 ms |
/// | 10,000 / 100,000 (8.72 MB) | 1.921 MB, 261 ms | 1.871 MB, 163 ms | 1.656 MB, 292 ms | 1.520 MB, 352 ms |
///
/// 6 is 24 % smaller than gzip at the default size for less CPU here (21 % at the large one for
/// 35 % more), and 4 % smaller than 5 (9 % at the large size): what takes the pull past 10×
/// fewer bytes than PouchDB's gzipped one (issue 7). Decoding costs the phone the same as
/// gunzip (about 1.1 ms against 1.5 ms for the default pull). End to end on 127.0.0.1 (a
/// fresh phone's whole pull, 9 of each in turns, medians) 6 took 46.6 ms against 39.2 ms
/// gzipped (5: 0.92× gzip's time): on loopback bytes cost nothing, while the 5.6 kB that 6
/// saves over 5 take longer than those 7 ms on any link under 6 Mbit/s. A push's records
/// compress alike (they are the same records), so requests use it too.
pub const BROTLI_QUALITY: u32 = 6;
/// brotli window (log2 of its size): 22 (4 MiB, the reference encoder's default, within RFC
/// 7932 for every decoder). 20 gives the same bytes on the default pull but 31 % more on the
/// large one (1.992 MB at quality 6); 24 saves 1.4 % more there for a 16 MiB window.
pub const BROTLI_LGWIN: u32 = 22;
/// Body bytes after which the brotli encoder is flushed (its output made whole, to send).
/// Left to itself, from quality 4 on it holds a meta-block's output until 8 MiB of input
/// (2^(lgwin + 1)) or the end: the default pull went out in one piece after its last record,
/// the phone idle until then. Flushed every 64 KiB, the first bytes come out after 2 ms of
/// compression, for 0.5 % more bytes (150,372 against 149,581 at quality 6) and no more time;
/// every 32 KiB cost 1 % more bytes.
const BROTLI_FLUSH: usize = 64 * 1024;
/// The brotli encoder's input buffer (the writer hands it input in pieces of this size).
const BROTLI_BUFFER: usize = 4096;

/// A compressor for one body (see the module docs): its output gathers in a `Vec` that the
/// writer takes by whole chunks ([`Deflater::output`]) as it sends them.
pub struct Deflater(Encoder);

enum Encoder {
    Gzip(GzEncoder<Vec<u8>>),
    /// With the body bytes written since its last flush.
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>, usize),
}

impl Deflater {
    /// gzip at `level` (1 fastest to 9 smallest; more counts as 9).
    pub fn gzip(level: u32) -> Self {
        Deflater(Encoder::Gzip(GzEncoder::new(
            Vec::new(),
            Compression::new(level.min(9)),
        )))
    }

    /// brotli at [`BROTLI_QUALITY`], a 4 MiB window, flushed every 64 KiB of input.
    pub fn brotli() -> Self {
        let b =
            brotli::CompressorWriter::new(Vec::new(), BROTLI_BUFFER, BROTLI_QUALITY, BROTLI_LGWIN);
        Deflater(Encoder::Brotli(Box::new(b), 0))
    }

    /// The coding's name in HTTP headers: `"gzip"` or `"br"`.
    pub fn content_coding(&self) -> &'static str {
        match self.0 {
            Encoder::Gzip(_) => "gzip",
            Encoder::Brotli(..) => "br",
        }
    }

    /// Compresses `bytes` (their output may come later).
    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.0 {
            Encoder::Gzip(z) => z.write_all(bytes),
            Encoder::Brotli(b, unflushed) => {
                b.write_all(bytes)?;
                *unflushed += bytes.len();
                if *unflushed >= BROTLI_FLUSH {
                    b.flush()?;
                    *unflushed = 0;
                }
                Ok(())
            }
        }
    }

    /// The compressed bytes not taken yet.
    pub fn output(&mut self) -> &mut Vec<u8> {
        match &mut self.0 {
            Encoder::Gzip(z) => z.get_mut(),
            Encoder::Brotli(b, _) => b.get_mut(),
        }
    }

    /// Ends the stream: the compressed bytes not taken yet, with the stream's end.
    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        match self.0 {
            Encoder::Gzip(z) => z.finish(),
            // It would drop a write error, but writing into a `Vec` has none.
            Encoder::Brotli(b, _) => Ok(b.into_inner()),
        }
    }
}

/// A decompressor for one body (see the module docs).
pub struct Inflater(Coding);

enum Coding {
    Gzip(Box<GzipInflater>),
    Brotli(Box<BrotliInflater>),
}

/// A gzip decoder driven step by step. flate2's decoder keeps up to 32 KiB of output and puts
/// it out at its next write, and may put out more than one such buffer in one write (found by
/// the `body_coding` fuzz target: 40,782 bytes from one 256-byte input): its output goes
/// through [`Capped`], which takes at most [`STEP`] bytes a step and then refuses, so the
/// decoder keeps the rest for the next step.
struct GzipInflater {
    z: GzDecoder<Capped>,
    /// The decoder may hold output: the last step used input or put some out.
    more_out: bool,
}

/// The gzip decoder's output: takes at most `room` more bytes, then writes of 0 bytes, which
/// the decoder reports as [`std::io::ErrorKind::WriteZero`] and resumes from at its next
/// write (what it could not put out stays in its buffer).
struct Capped {
    out: Vec<u8>,
    room: usize,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.room);
        self.out.extend_from_slice(&buf[..n]);
        self.room -= n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A brotli decoder driven step by step (`brotli::DecompressorWriter` would put out all that
/// one input chunk decodes to at once). RFC 7932 streams only: no large-window extension.
struct BrotliInflater {
    state: BrotliState<HeapAlloc<u8>, HeapAlloc<u32>, HeapAlloc<HuffmanCode>>,
    ended: bool,
    /// The last step filled its output: the decoder holds more, whether or not input is left.
    more_out: bool,
}

impl Inflater {
    /// For a gzip body (`Content-Encoding: gzip`): one gzip member, its trailer checked.
    pub fn gzip() -> Self {
        Inflater(Coding::Gzip(Box::new(GzipInflater {
            z: GzDecoder::new(Capped {
                out: Vec::new(),
                room: 0,
            }),
            more_out: false,
        })))
    }

    /// For a brotli body (`Content-Encoding: br`).
    pub fn brotli() -> Self {
        Inflater(Coding::Brotli(Box::new(BrotliInflater {
            state: BrotliState::new_strict(
                HeapAlloc::default(),
                HeapAlloc::default(),
                HeapAlloc::default(),
            ),
            ended: false,
            more_out: false,
        })))
    }

    /// The coding's name for people: `"gzip"` or `"brotli"`.
    pub fn name(&self) -> &'static str {
        match self.0 {
            Coding::Gzip(_) => "gzip",
            Coding::Brotli(_) => "brotli",
        }
    }

    /// The coding's name in HTTP headers: `"gzip"` or `"br"`.
    pub fn content_coding(&self) -> &'static str {
        match self.0 {
            Coding::Gzip(_) => "gzip",
            Coding::Brotli(_) => "br",
        }
    }

    /// Whether the decoder holds output that a step with no input would put out.
    pub fn holds_output(&self) -> bool {
        match &self.0 {
            Coding::Gzip(g) => g.more_out,
            Coding::Brotli(b) => b.more_out,
        }
    }

    /// Decodes some of `input`: how many of its bytes were used, and what came out (at most
    /// [`STEP`] bytes). Some progress is made on a non-empty input, or it is an error.
    pub fn step(&mut self, input: &[u8]) -> std::io::Result<(usize, Vec<u8>)> {
        match &mut self.0 {
            Coding::Gzip(g) => {
                g.z.get_mut().room = STEP;
                let used = match g.z.write(input) {
                    // Only after the end of the gzip member (see GzDecoder's write).
                    Ok(0) if !input.is_empty() => {
                        return Err(std::io::Error::other(
                            "bytes after the end of the gzip stream",
                        ))
                    }
                    Ok(used) => used,
                    // `Capped` is full: the rest comes at the next step.
                    Err(e) if e.kind() == std::io::ErrorKind::WriteZero => 0,
                    Err(e) => return Err(e),
                };
                let out = std::mem::take(&mut g.z.get_mut().out);
                g.more_out = used > 0 || !out.is_empty();
                Ok((used, out))
            }
            Coding::Brotli(b) => {
                if b.ended {
                    if input.is_empty() {
                        return Ok((0, Vec::new()));
                    }
                    return Err(std::io::Error::other(
                        "bytes after the end of the brotli stream",
                    ));
                }
                let mut out = vec![0u8; STEP];
                let (mut available_in, mut input_offset) = (input.len(), 0);
                let (mut available_out, mut output_offset, mut total_out) = (out.len(), 0, 0);
                let result = BrotliDecompressStream(
                    &mut available_in,
                    &mut input_offset,
                    input,
                    &mut available_out,
                    &mut output_offset,
                    &mut out,
                    &mut total_out,
                    &mut b.state,
                );
                out.truncate(output_offset);
                b.more_out = matches!(result, BrotliResult::NeedsMoreOutput);
                match result {
                    BrotliResult::ResultFailure => {
                        return Err(std::io::Error::other(format!(
                            "invalid brotli stream ({:?})",
                            b.state.error_code
                        )))
                    }
                    BrotliResult::ResultSuccess => {
                        b.ended = true;
                        if input_offset < input.len() {
                            return Err(std::io::Error::other(
                                "bytes after the end of the brotli stream",
                            ));
                        }
                    }
                    BrotliResult::NeedsMoreInput | BrotliResult::NeedsMoreOutput => {
                        if !input.is_empty() && input_offset == 0 && out.is_empty() {
                            // The decoder takes all input it is given unless its output is
                            // full: no progress would loop forever.
                            return Err(std::io::Error::other("the brotli decoder is stuck"));
                        }
                    }
                }
                Ok((input_offset, out))
            }
        }
    }

    /// At the end of the body: checks that the stream ended (gzip: its trailer, CRC-32 and
    /// length) and returns the rest of the output. Call it once [`holds_output`] is false.
    ///
    /// [`holds_output`]: Self::holds_output
    pub fn end(&mut self) -> std::io::Result<Vec<u8>> {
        match &mut self.0 {
            Coding::Gzip(g) => {
                // What the steps left is at most a step's worth (they ran until nothing came
                // out); no cap here, so that the trailer's check always runs.
                g.z.get_mut().room = usize::MAX;
                g.z.try_finish()?;
                Ok(std::mem::take(&mut g.z.get_mut().out))
            }
            Coding::Brotli(b) if b.ended => Ok(Vec::new()),
            Coding::Brotli(_) => Err(std::io::Error::other(
                "the brotli stream is cut short (the body ended before its last block)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bytes` through `z`, written in 300-byte pieces as frames come, its output taken as it
    /// goes.
    fn compress(mut z: Deflater, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in bytes.chunks(300) {
            z.write(piece).unwrap();
            out.append(z.output());
        }
        out.extend_from_slice(&z.finish().unwrap());
        out
    }

    fn brotli(bytes: &[u8]) -> Vec<u8> {
        compress(Deflater::brotli(), bytes)
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        compress(Deflater::gzip(9), bytes)
    }

    /// Runs `z` as its readers do, input given in `piece`-byte chunks; returns the output
    /// and the largest step's output.
    fn decode(mut z: Inflater, input: &[u8], piece: usize) -> std::io::Result<(Vec<u8>, usize)> {
        let (mut out, mut largest) = (Vec::new(), 0);
        for chunk in input.chunks(piece) {
            let mut chunk = chunk;
            while !chunk.is_empty() || z.holds_output() {
                let (used, o) = z.step(chunk)?;
                chunk = &chunk[used..];
                largest = largest.max(o.len());
                out.extend_from_slice(&o);
            }
        }
        out.extend_from_slice(&z.end()?);
        Ok((out, largest))
    }

    #[test]
    fn brotli_output_comes_before_the_end() {
        // 1 MiB of frames that do not compress well: output is ready to send every 64 KiB,
        // not held until `finish`.
        let mut z = Deflater::brotli();
        let mut x = 1u64;
        let mut early = 0;
        for _ in 0..(1 << 20) / 256 {
            let frame: Vec<u8> = (0..256)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (x >> 56) as u8
                })
                .collect();
            z.write(&frame).unwrap();
            early += z.output().len();
            z.output().clear();
        }
        assert!(early > 512 * 1024, "{early} bytes out before the end");
    }

    #[test]
    fn a_bomb_comes_out_32_kib_per_step() {
        let big = vec![7u8; 8 << 20];
        let zipped = brotli(&big);
        // Mostly the flushes' block ends: one every 64 KiB of input.
        assert!(zipped.len() < 2048, "{}", zipped.len());
        // The whole stream in one step's input: the output still comes 32 KiB at a time.
        let (out, largest) = decode(Inflater::brotli(), &zipped, zipped.len()).unwrap();
        assert_eq!(out, big);
        assert_eq!(largest, STEP);
        let zipped = gzip(&big);
        assert!(zipped.len() < 16 * 1024, "{}", zipped.len());
        // Whole, and in pieces of 256 bytes: fed so, flate2's own decoder put out 40,782 bytes
        // in one write (the `body_coding` fuzz target's find).
        for piece in [zipped.len(), 256] {
            let (out, largest) = decode(Inflater::gzip(), &zipped, piece).unwrap();
            assert_eq!(out, big);
            assert_eq!(largest, STEP, "pieces of {piece}");
        }
    }

    #[test]
    fn decodes_the_same_whatever_the_input_pieces() {
        let text: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("contact {i} <c{}@example.com>;", i % 97).into_bytes())
            .collect();
        for (zipped, new) in [
            (brotli(&text), Inflater::brotli as fn() -> Inflater),
            (gzip(&text), Inflater::gzip),
        ] {
            for piece in [1, 7, 4096, zipped.len()] {
                assert_eq!(
                    decode(new(), &zipped, piece).unwrap().0,
                    text,
                    "pieces of {piece}"
                );
            }
            // Cut anywhere before the end: an error at the end, never a panic.
            for cut in [0, 1, zipped.len() / 3, zipped.len() - 1] {
                assert!(decode(new(), &zipped[..cut], 4096).is_err(), "cut at {cut}");
            }
            // Bytes after the end are refused.
            let mut longer = zipped.clone();
            longer.push(0);
            assert!(decode(new(), &longer, 4096).is_err());
        }
    }
}
