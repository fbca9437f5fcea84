//! A frame-level normaliser between the socket and h2: every request header block a client sends is
//! decoded here and handed to h2 again without `:authority`.
//!
//! Why: on a Unix socket the authority means nothing (the caller is identified by the kernel), yet
//! gRPC clients fill it with whatever their stack derives from the socket path. gRPC's C core
//! (Python, C++, Ruby, PHP, C#) percent-encodes the path (`tmp%2Fdir%2Fworkload.sock`), grpc-swift
//! sends `%2Ftmp%2F...`, older grpc-go sent the raw path. The `http` crate behind h2 refuses `%` and
//! `/` in an authority and h2 resets the stream, so every such client fails on its first call. h2
//! has no option to skip that check (hyperium/h2#487), and a patched h2 would have to be rebased on
//! every release; this layer depends on nothing but the HTTP/2 and HPACK wire formats, which do not
//! change. See docs/ARCHITECTURE.md, "Any :authority on a Unix socket".
//!
//! How it keeps both HPACK states right: the client's encoder state is mirrored by our decoder (every
//! block is decoded in order, so dynamic-table insertions and evictions happen here exactly as in
//! the client). What h2 receives is re-encoded as literals *without indexing* and never a table size
//! update, so h2's decoder table stays empty for the whole connection and can never disagree with
//! anything. Frames other than HEADERS and CONTINUATION pass through unchanged, byte for byte and
//! without being buffered. The h2 server advertises the default header table size (4096), which is
//! the bound our decoder enforces on the client's size updates.
//!
//! A client whose first request carries an authority h2 accepts (`localhost`: the Rust and Go
//! stacks), or none, has nothing to normalise: that first block is handed to h2 as it
//! came, and from then on every byte of the connection passes unchanged, read straight into h2's
//! buffer ([`Normalizer::passes_through`]), and h2's decoder keeps the client's table itself. A
//! client of that kind sends the same authority on every request; one that later sends another
//! authority h2 refuses gets that stream reset by h2, as from any h2 server. The decision is made
//! once, on the first block, because the two ways of keeping h2's table right cannot be mixed.
//!
//! Bad input never reaches a panic: a block that does not decode, a CONTINUATION out of place, a
//! PUSH_PROMISE from a client, or a block over [`MAX_HEADER_BLOCK`] (encoded or decoded) makes the
//! normaliser hand h2 one HEADERS frame that h2's decoder refuses, so h2 answers with its own
//! GOAWAY; then the connection reads as closed. Other connections are not affected.

use std::borrow::Cow;

use bytes::{Buf, BufMut, BytesMut};
use loona_hpack::Decoder;
use loona_hpack::decoder::DecoderError;

mod huffman;

/// The client connection preface (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Largest header block accepted, encoded (all fragments together) and decoded (names, values
/// and 32 bytes a field, as SETTINGS_MAX_HEADER_LIST_SIZE counts). Workload API requests carry a few
/// hundred bytes; gRPC clients send at most 8–16 KiB of metadata by default.
pub(crate) const MAX_HEADER_BLOCK: usize = 32 * 1024;
/// The largest frame h2 accepts unless told otherwise (SETTINGS_MAX_FRAME_SIZE default); re-encoded
/// blocks are cut into HEADERS + CONTINUATION frames of at most this size.
const MAX_FRAME: usize = 16_384;
/// The header table size h2 advertises (HPACK default): the most a client's size update may ask for.
const HEADER_TABLE_SIZE: usize = 4096;
pub(super) const FRAME_HEADER: usize = 9;

pub(super) const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
pub(super) const CONTINUATION: u8 = 0x9;
pub(super) const END_STREAM: u8 = 0x1;
pub(super) const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// Why a connection's input was refused (only logged: the peer sees h2's GOAWAY).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Error {
    #[error("header block does not decode: {0}")]
    Hpack(String),
    #[error("header block over {MAX_HEADER_BLOCK} bytes")]
    TooLarge,
    #[error(
        "frame of type {kind:#x} on stream {stream} while a header block on stream {expected} is open"
    )]
    ExpectedContinuation {
        kind: u8,
        stream: u32,
        expected: u32,
    },
    #[error("CONTINUATION without an open header block")]
    StrayContinuation,
    #[error("HEADERS frame shorter than its padding or priority fields")]
    BadFrame,
    #[error("PUSH_PROMISE from a client")]
    PushPromise,
    #[error("header block on stream 0")]
    StreamZero,
}

/// Where the parser stands in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Inside the connection preface; the count is how many of its bytes were seen.
    Preface(usize),
    /// Not an HTTP/2 client: everything passes unchanged and h2 refuses it itself.
    Raw,
    /// At a frame boundary.
    Frame,
    /// Copying the payload of a frame that is not ours to read; the count is what is left.
    Pass(usize),
    /// The first request needed no normalising: everything passes unchanged from here on.
    Through,
    /// Refused: nothing more is handed to h2.
    Closed,
}

/// A header block being collected from HEADERS + CONTINUATION frames.
struct OpenBlock {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
}

/// The per-connection normaliser. Feed it what the socket delivered; it appends to `out` what h2
/// should read.
pub(crate) struct Normalizer {
    state: State,
    decoder: Decoder<'static>,
    open: Option<OpenBlock>,
    block: Vec<u8>,
    /// `block` with its Huffman-coded strings made plain.
    plain: Vec<u8>,
    refused: Option<Error>,
    /// Header blocks passed to h2 (requests, and trailers): a connection with none has opened no
    /// stream yet.
    blocks: u64,
}

impl Default for Normalizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Normalizer {
    /// A normaliser at the start of a connection.
    pub(crate) fn new() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Self {
            state: State::Preface(0),
            decoder,
            open: None,
            block: Vec::new(),
            plain: Vec::new(),
            refused: None,
            blocks: 0,
        }
    }

    /// Whether the client has sent any request yet.
    pub(crate) fn has_requests(&self) -> bool {
        self.blocks > 0
    }

    /// Whether every byte from now on passes unchanged (the first request's authority was one h2
    /// accepts): the caller may hand h2 the socket's bytes directly once its output is drained.
    pub(crate) fn passes_through(&self) -> bool {
        self.state == State::Through
    }

    /// Whether the connection was refused: after the refusal frame, h2 must read end-of-stream.
    pub(crate) fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Why the connection was refused, once it was.
    pub(crate) fn refusal(&self) -> Option<&Error> {
        self.refused.as_ref()
    }

    /// Consumes what it can of `input` (the rest waits for more bytes) and appends to `out`.
    pub(crate) fn feed(&mut self, input: &mut BytesMut, out: &mut BytesMut) {
        while !input.is_empty() {
            match self.state {
                State::Closed => {
                    input.clear();
                    return;
                }
                State::Raw | State::Through => {
                    out.extend_from_slice(input);
                    input.clear();
                    return;
                }
                State::Preface(seen) => {
                    let want = &PREFACE[seen..];
                    let n = want.len().min(input.len());
                    if input[..n] != want[..n] {
                        self.state = State::Raw;
                        continue;
                    }
                    out.extend_from_slice(&input[..n]);
                    input.advance(n);
                    self.state = if seen + n == PREFACE.len() {
                        State::Frame
                    } else {
                        State::Preface(seen + n)
                    };
                }
                State::Pass(left) => {
                    let n = left.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input.advance(n);
                    self.state = if n == left {
                        State::Frame
                    } else {
                        State::Pass(left - n)
                    };
                }
                State::Frame => {
                    if input.len() < FRAME_HEADER {
                        return;
                    }
                    let len = usize::from(input[0]) << 16
                        | usize::from(input[1]) << 8
                        | usize::from(input[2]);
                    let kind = input[3];
                    let flags = input[4];
                    let stream =
                        u32::from_be_bytes([input[5], input[6], input[7], input[8]]) & 0x7fff_ffff;
                    let ours = matches!(kind, HEADERS | CONTINUATION | PUSH_PROMISE);
                    if let Some(open) = &self.open
                        && kind != CONTINUATION
                    {
                        let e = Error::ExpectedContinuation {
                            kind,
                            stream,
                            expected: open.stream,
                        };
                        self.refuse(e, out);
                        continue;
                    }
                    if !ours {
                        out.extend_from_slice(&input[..FRAME_HEADER]);
                        input.advance(FRAME_HEADER);
                        self.state = if len == 0 {
                            State::Frame
                        } else {
                            State::Pass(len)
                        };
                        continue;
                    }
                    if len > MAX_HEADER_BLOCK || self.block.len() + len > MAX_HEADER_BLOCK {
                        self.refuse(Error::TooLarge, out);
                        continue;
                    }
                    if input.len() < FRAME_HEADER + len {
                        input.reserve(FRAME_HEADER + len - input.len());
                        return;
                    }
                    input.advance(FRAME_HEADER);
                    let payload = input.split_to(len);
                    if let Err(e) = self.header_frame(kind, flags, stream, &payload, out) {
                        self.refuse(e, out);
                    }
                }
            }
        }
    }

    /// One HEADERS or CONTINUATION frame (PUSH_PROMISE is refused: clients never push).
    fn header_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), Error> {
        match kind {
            HEADERS => {
                if stream == 0 {
                    return Err(Error::StreamZero);
                }
                let mut body = payload;
                let mut pad = 0;
                if flags & PADDED != 0 {
                    let (&p, rest) = body.split_first().ok_or(Error::BadFrame)?;
                    pad = usize::from(p);
                    body = rest;
                }
                let mut priority = None;
                if flags & PRIORITY != 0 {
                    let p: [u8; 5] = body
                        .get(..5)
                        .and_then(|p| p.try_into().ok())
                        .ok_or(Error::BadFrame)?;
                    priority = Some(p);
                    body = &body[5..];
                }
                if pad > body.len() {
                    return Err(Error::BadFrame);
                }
                self.block.clear();
                self.block.extend_from_slice(&body[..body.len() - pad]);
                self.open = Some(OpenBlock {
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    priority,
                });
            }
            CONTINUATION => match &self.open {
                Some(open) if open.stream == stream => self.block.extend_from_slice(payload),
                Some(open) => {
                    return Err(Error::ExpectedContinuation {
                        kind,
                        stream,
                        expected: open.stream,
                    });
                }
                None => return Err(Error::StrayContinuation),
            },
            _ => return Err(Error::PushPromise),
        }
        if flags & END_HEADERS != 0 {
            self.finish_block(out)?;
        }
        Ok(())
    }

    /// Decodes the collected block and writes it for h2 as literals, without `:authority`.
    fn finish_block(&mut self, out: &mut BytesMut) -> Result<(), Error> {
        let Some(open) = self.open.take() else {
            return Err(Error::StrayContinuation);
        };
        let first = self.blocks == 0;
        self.blocks += 1;
        let mut fields = Vec::with_capacity(self.block.len() + 64);
        let mut listed = 0usize;
        let mut over = false;
        // The `:authority` fields of the block, and whether each is one h2 accepts as it is.
        let mut authorities = 0usize;
        let mut accepted = true;
        // Huffman-coded strings made plain first (see `huffman`): same fields, same table updates.
        self.plain.clear();
        let block = match huffman::unhuffman(&self.block, &mut self.plain) {
            Some(true) => &self.plain,
            Some(false) | None => &self.block,
        };
        let decoded = self
            .decoder
            .decode_with_cb(block, |name: Cow<[u8]>, value: Cow<[u8]>| {
                listed = listed.saturating_add(name.len() + value.len() + 32);
                if listed > MAX_HEADER_BLOCK {
                    over = true;
                    return;
                }
                if name.as_ref() == b":authority" {
                    authorities += 1;
                    accepted &= h2_accepts_authority(&value);
                } else {
                    put_literal(&mut fields, &name, &value);
                }
            });
        match decoded {
            Ok(()) => {}
            // A block of nothing but a table size update is valid HPACK (RFC 7541 §4.2 only asks
            // that updates come first); the decoder has applied the update before saying so. h2
            // then refuses the empty request itself, as a stream error.
            Err(DecoderError::SizeUpdateAtEnd) => {}
            Err(e) => return Err(Error::Hpack(e.to_string())),
        }
        if over {
            return Err(Error::TooLarge);
        }
        if first && authorities <= 1 && accepted {
            // Nothing to normalise: h2 gets this block as the client encoded it (its decoder then
            // starts from the client's table) and every later byte unchanged.
            write_block(out, &open, &self.block);
            tracing::debug!(
                "the first request's authority needs no normalising: the connection passes through"
            );
            self.state = State::Through;
            self.decoder = Decoder::new();
            self.block = Vec::new();
            self.plain = Vec::new();
            return Ok(());
        }
        self.block.clear();
        write_block(out, &open, &fields);
        Ok(())
    }

    /// Hands h2 a header block its decoder refuses (index 0 does not exist), so h2 ends the
    /// connection with its own GOAWAY; everything after is dropped.
    fn refuse(&mut self, why: Error, out: &mut BytesMut) {
        tracing::debug!(error = %why, "refusing an HTTP/2 connection's header input");
        self.refused = Some(why);
        self.open = None;
        self.block = Vec::new();
        self.plain = Vec::new();
        put_frame_header(out, 1, HEADERS, END_HEADERS | END_STREAM, 1);
        out.put_u8(0x80);
        self.state = State::Closed;
    }
}

/// Whether h2 takes `value` as a request's authority (it parses `:authority` with the `http`
/// crate's `Authority` and resets the stream when that fails).
fn h2_accepts_authority(value: &[u8]) -> bool {
    tonic::codegen::http::uri::Authority::try_from(value).is_ok()
}

/// A literal header field without indexing, new name, no Huffman coding (RFC 7541 §6.2.2).
fn put_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    put_int(out, 7, 0, name.len());
    out.extend_from_slice(name);
    put_int(out, 7, 0, value.len());
    out.extend_from_slice(value);
}

/// An HPACK integer with an N-bit prefix (RFC 7541 §5.1); `first` holds the bits above the prefix.
fn put_int(out: &mut Vec<u8>, prefix: u8, first: u8, mut value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        // Fits in the prefix: value < 2^prefix <= 128.
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

fn put_frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    // len <= MAX_FRAME < 2^24: the top byte is always zero.
    out.put_uint(len as u64, 3);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

/// Writes a block as HEADERS (with the original END_STREAM and priority) + CONTINUATION frames.
fn write_block(out: &mut BytesMut, open: &OpenBlock, fields: &[u8]) {
    let prio_len = if open.priority.is_some() { 5 } else { 0 };
    let first_len = fields.len().min(MAX_FRAME - prio_len);
    let (first, mut rest) = fields.split_at(first_len);
    let mut flags = 0;
    if open.end_stream {
        flags |= END_STREAM;
    }
    if open.priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    put_frame_header(out, prio_len + first.len(), HEADERS, flags, open.stream);
    if let Some(p) = &open.priority {
        out.extend_from_slice(p);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
        let flags = if tail.is_empty() { END_HEADERS } else { 0 };
        put_frame_header(out, chunk.len(), CONTINUATION, flags, open.stream);
        out.extend_from_slice(chunk);
        rest = tail;
    }
}

#[cfg(test)]
mod tests;
