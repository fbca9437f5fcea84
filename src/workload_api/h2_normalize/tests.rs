//! Property and table tests of the normaliser. Blocks are encoded with an independent HPACK
//! implementation (`httlib-hpack`: Huffman strings, incremental indexing, never-indexed fields,
//! table size updates) so the decoder is checked against someone else's encoder, and the output is
//! read back with a fresh decoder and a frame parser of the test's own.

use bytes::BytesMut;
use httlib_hpack::Encoder;
use loona_hpack::Decoder;
use proptest::prelude::*;

use super::*;

/// A frame as the test parser reads it from the normaliser's output.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

fn frame_bytes(f: &Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    put_frame_header(&mut out, f.payload.len(), f.kind, f.flags, f.stream);
    out.extend_from_slice(&f.payload);
    out.to_vec()
}

/// Splits the output (after the preface) into frames; panics on a partial frame.
fn parse_frames(mut bytes: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        assert!(
            bytes.len() >= FRAME_HEADER,
            "partial frame header in output"
        );
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        assert!(bytes.len() >= FRAME_HEADER + len, "partial frame in output");
        frames.push(Frame {
            kind: bytes[3],
            flags: bytes[4],
            stream: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]),
            payload: bytes[FRAME_HEADER..FRAME_HEADER + len].to_vec(),
        });
        bytes = &bytes[FRAME_HEADER + len..];
    }
    frames
}

/// What h2 would see: each header block joined and decoded, plus the other frames unchanged.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Block {
        stream: u32,
        end_stream: bool,
        priority: Option<Vec<u8>>,
        fields: Vec<(Vec<u8>, Vec<u8>)>,
    },
    Other(Frame),
}

/// How the output was written: normalised (literals without indexing, never padded) or passed
/// through as the client sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Normalised,
    Through,
}

/// Reads normalised output like h2 does, with a fresh decoder (see [`read_output_as`]).
fn read_output(out: &[u8]) -> Vec<Seen> {
    read_output_as(out, Mode::Normalised)
}

/// Reads the output like h2 does, with one decoder for the connection, and checks that no frame is
/// over the default maximum frame size; normalised output must also use no dynamic table and no
/// padding.
fn read_output_as(out: &[u8], mode: Mode) -> Vec<Seen> {
    assert!(out.starts_with(PREFACE));
    let mut decoder = Decoder::new();
    let mut seen = Vec::new();
    // (stream, END_STREAM, priority, block so far)
    type Open = (u32, bool, Option<Vec<u8>>, Vec<u8>);
    let mut open: Option<Open> = None;
    for f in parse_frames(&out[PREFACE.len()..]) {
        assert!(
            f.payload.len() <= MAX_FRAME,
            "frame over the default SETTINGS_MAX_FRAME_SIZE"
        );
        match f.kind {
            HEADERS => {
                assert!(open.is_none(), "HEADERS inside an open block");
                let mut payload = &f.payload[..];
                if f.flags & PADDED != 0 {
                    assert_eq!(mode, Mode::Through, "normalised output is never padded");
                    let pad = usize::from(payload[0]);
                    payload = &payload[1..payload.len() - pad];
                }
                let (priority, frag) = if f.flags & PRIORITY != 0 {
                    (Some(payload[..5].to_vec()), payload[5..].to_vec())
                } else {
                    (None, payload.to_vec())
                };
                open = Some((f.stream, f.flags & END_STREAM != 0, priority, frag));
                if f.flags & END_HEADERS == 0 {
                    continue;
                }
            }
            CONTINUATION => {
                let o = open
                    .as_mut()
                    .expect("CONTINUATION without HEADERS in output");
                assert_eq!(o.0, f.stream);
                o.3.extend_from_slice(&f.payload);
                if f.flags & END_HEADERS == 0 {
                    continue;
                }
            }
            _ => {
                assert!(open.is_none(), "frame inside an open block");
                seen.push(Seen::Other(f));
                continue;
            }
        }
        let (stream, end_stream, priority, block) = open.take().unwrap();
        let fields = match decoder.decode(&block) {
            Ok(fields) => fields,
            // A block of nothing but a table size update, passed through as the client sent it (h2
            // applies the update and refuses the empty request).
            Err(DecoderError::SizeUpdateAtEnd) if mode == Mode::Through => Vec::new(),
            Err(e) => panic!("output block does not decode: {e:?}"),
        };
        if mode == Mode::Normalised {
            // Only literals without indexing: the decoder's dynamic table must stay empty.
            assert!(block.first().is_none_or(|b| *b == 0x00));
        }
        seen.push(Seen::Block {
            stream,
            end_stream,
            priority,
            fields,
        });
    }
    assert!(open.is_none(), "output ends inside a block");
    seen
}

/// Runs `input` through a normaliser in chunks of the given sizes (cycled).
fn run(input: &[u8], chunks: &[usize]) -> (Vec<u8>, Normalizer) {
    let mut n = Normalizer::new();
    let mut pending = BytesMut::new();
    let mut out = BytesMut::new();
    let mut at = 0;
    let mut i = 0;
    while at < input.len() {
        let size = chunks
            .get(i % chunks.len().max(1))
            .copied()
            .unwrap_or(input.len())
            .max(1);
        let end = (at + size).min(input.len());
        pending.extend_from_slice(&input[at..end]);
        n.feed(&mut pending, &mut out);
        at = end;
        i += 1;
    }
    (out.to_vec(), n)
}

fn request_fields(authority: &[u8], path: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    vec![
        (b":method".to_vec(), b"POST".to_vec()),
        (b":scheme".to_vec(), b"http".to_vec()),
        (b":path".to_vec(), path.as_bytes().to_vec()),
        (b":authority".to_vec(), authority.to_vec()),
        (b"te".to_vec(), b"trailers".to_vec()),
        (b"content-type".to_vec(), b"application/grpc".to_vec()),
        (b"workload.spiffe.io".to_vec(), b"true".to_vec()),
    ]
}

fn without_authority(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    fields
        .iter()
        .filter(|(n, _)| n != b":authority")
        .cloned()
        .collect()
}

fn encode(enc: &mut Encoder<'_>, fields: &[(Vec<u8>, Vec<u8>)], flags: u8) -> Vec<u8> {
    let mut dst = Vec::new();
    for (n, v) in fields {
        enc.encode((n.clone(), v.clone(), flags), &mut dst).unwrap();
    }
    dst
}

/// A header block as HEADERS + CONTINUATION frames cut at `cuts`, with padding and priority.
fn block_frames(
    stream: u32,
    block: &[u8],
    cuts: &[usize],
    pad: Option<u8>,
    prio: bool,
    end_stream: bool,
) -> Vec<u8> {
    let mut pieces = Vec::new();
    let mut rest = block;
    for c in cuts {
        if rest.is_empty() {
            break;
        }
        let (a, b) = rest.split_at((*c).min(rest.len()));
        pieces.push(a);
        rest = b;
    }
    pieces.push(rest);
    let mut out = Vec::new();
    let last = pieces.len() - 1;
    for (i, piece) in pieces.iter().enumerate() {
        let mut payload = Vec::new();
        let mut flags = if i == last { END_HEADERS } else { 0 };
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        if i == 0 {
            if end_stream {
                flags |= END_STREAM;
            }
            if let Some(p) = pad {
                flags |= PADDED;
                payload.push(p);
            }
            if prio {
                flags |= PRIORITY;
                payload.extend_from_slice(&[0, 0, 0, 0, 15]);
            }
        }
        payload.extend_from_slice(piece);
        if i == 0
            && let Some(p) = pad
        {
            payload.extend(std::iter::repeat_n(0u8, usize::from(p)));
        }
        out.extend(frame_bytes(&Frame {
            kind,
            flags,
            stream,
            payload,
        }));
    }
    out
}

fn refused(out: &[u8], n: &Normalizer) -> bool {
    let frames = parse_frames(&out[PREFACE.len()..]);
    n.is_closed()
        && n.refusal().is_some()
        && frames.last()
            == Some(&Frame {
                kind: HEADERS,
                flags: END_HEADERS | END_STREAM,
                stream: 1,
                payload: vec![0x80],
            })
}

#[test]
fn odd_authorities_are_dropped_and_the_rest_kept_in_order() {
    for authority in [
        &b"tmp%2Fx%2Fworkload.sock"[..],
        b"%2Ftmp%2Fx%2Fworkload.sock",
        b"/tmp/x/workload.sock",
        b"",
        b"\xff\xfe not utf-8",
    ] {
        let fields = request_fields(authority, "/SpiffeWorkloadAPI/FetchX509SVID");
        let mut enc = Encoder::default();
        let block = encode(
            &mut enc,
            &fields,
            Encoder::HUFFMAN_VALUE | Encoder::WITH_INDEXING,
        );
        let mut input = PREFACE.to_vec();
        input.extend(block_frames(1, &block, &[], None, false, false));
        let (out, n) = run(&input, &[7]);
        assert!(!n.is_closed());
        assert_eq!(
            read_output(&out),
            vec![Seen::Block {
                stream: 1,
                end_stream: false,
                priority: None,
                fields: without_authority(&fields)
            }]
        );
    }
}

#[test]
fn a_request_without_authority_is_unchanged_in_meaning() {
    let mut fields = request_fields(b"x", "/p");
    fields.retain(|(n, _)| n != b":authority");
    let mut enc = Encoder::default();
    let block = encode(&mut enc, &fields, 0);
    let mut input = PREFACE.to_vec();
    input.extend(block_frames(3, &block, &[], None, false, true));
    let (out, _) = run(&input, &[1000]);
    assert_eq!(
        read_output(&out),
        vec![Seen::Block {
            stream: 3,
            end_stream: true,
            priority: None,
            fields
        }]
    );
}

/// The Rust and Go stacks send an authority h2 accepts: their connections pass through after the
/// first request, which h2 receives as the client encoded it (dynamic table included), and every
/// later frame byte for byte — even a request with an authority h2 will refuse (h2 resets that
/// stream, as any h2 server would).
#[test]
fn a_first_request_with_an_authority_h2_accepts_lets_the_connection_through() {
    for authority in [&b"localhost"[..], b"[::]:50051", b"example.org:443"] {
        assert!(h2_accepts_authority(authority));
        let mut enc = Encoder::default();
        let flags = Encoder::HUFFMAN_VALUE | Encoder::WITH_INDEXING;
        let first = request_fields(authority, "/SpiffeWorkloadAPI/FetchX509SVID");
        let second = request_fields(authority, "/SpiffeWorkloadAPI/FetchJWTSVID");
        let third = request_fields(
            b"tmp%2Fx%2Fworkload.sock",
            "/SpiffeWorkloadAPI/FetchJWTSVID",
        );
        let mut input = PREFACE.to_vec();
        input.extend(block_frames(
            1,
            &encode(&mut enc, &first, flags),
            &[5],
            Some(3),
            true,
            false,
        ));
        let first_len = input.len();
        let data = Frame {
            kind: 0x0,
            flags: END_STREAM,
            stream: 1,
            payload: vec![0, 0, 0, 0, 0],
        };
        input.extend(frame_bytes(&data));
        input.extend(block_frames(
            3,
            &encode(&mut enc, &second, flags),
            &[4, 9],
            Some(1),
            false,
            true,
        ));
        input.extend(block_frames(
            5,
            &encode(&mut enc, &third, flags),
            &[],
            None,
            false,
            true,
        ));
        for chunks in [&[1usize][..], &[7, 100], &[10_000]] {
            let (out, n) = run(&input, chunks);
            assert!(n.passes_through() && n.has_requests() && !n.is_closed());
            // After the first block (framed anew: one HEADERS, no padding), the input unchanged.
            let first_out = out.len() - (input.len() - first_len);
            assert_eq!(out[first_out..], input[first_len..]);
            assert_eq!(
                read_output_as(&out, Mode::Through),
                vec![
                    Seen::Block {
                        stream: 1,
                        end_stream: false,
                        priority: Some(vec![0, 0, 0, 0, 15]),
                        fields: first.clone(),
                    },
                    Seen::Other(data.clone()),
                    Seen::Block {
                        stream: 3,
                        end_stream: true,
                        priority: None,
                        fields: second.clone(),
                    },
                    Seen::Block {
                        stream: 5,
                        end_stream: true,
                        priority: None,
                        fields: third.clone(),
                    },
                ]
            );
        }
    }
}

/// A first request whose authority h2 would refuse (gRPC's C core), or with two authorities, keeps
/// the whole connection normalised, later requests with a plain authority included.
#[test]
fn an_odd_first_authority_keeps_the_connection_normalised() {
    let mut twice = request_fields(b"localhost", "/p");
    twice.push((b":authority".to_vec(), b"localhost".to_vec()));
    for first in [request_fields(b"tmp%2Fx%2Fworkload.sock", "/p"), twice] {
        let second = request_fields(b"localhost", "/q");
        let mut enc = Encoder::default();
        let mut input = PREFACE.to_vec();
        input.extend(block_frames(
            1,
            &encode(&mut enc, &first, Encoder::WITH_INDEXING),
            &[],
            None,
            false,
            true,
        ));
        input.extend(block_frames(
            3,
            &encode(&mut enc, &second, Encoder::WITH_INDEXING),
            &[],
            None,
            false,
            true,
        ));
        let (out, n) = run(&input, &[13]);
        assert!(!n.passes_through() && !n.is_closed());
        assert_eq!(
            read_output(&out),
            vec![
                Seen::Block {
                    stream: 1,
                    end_stream: true,
                    priority: None,
                    fields: without_authority(&first),
                },
                Seen::Block {
                    stream: 3,
                    end_stream: true,
                    priority: None,
                    fields: without_authority(&second),
                },
            ]
        );
    }
}

#[test]
fn not_http2_passes_unchanged() {
    let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let (out, n) = run(input, &[3]);
    assert_eq!(out, input);
    assert!(!n.is_closed());
}

#[test]
fn refusals() {
    let fields = request_fields(b"a", "/p");
    let mut enc = Encoder::default();
    let block = encode(&mut enc, &fields, 0);
    let headers = |flags: u8, stream: u32, payload: Vec<u8>| {
        frame_bytes(&Frame {
            kind: HEADERS,
            flags,
            stream,
            payload,
        })
    };
    let continuation = |stream: u32, payload: Vec<u8>| {
        frame_bytes(&Frame {
            kind: CONTINUATION,
            flags: END_HEADERS,
            stream,
            payload,
        })
    };
    let ping = frame_bytes(&Frame {
        kind: 0x6,
        flags: 0,
        stream: 0,
        payload: vec![0; 8],
    });
    let big_authority = request_fields(&vec![b'a'; 64 * 1024], "/p");
    let cases: Vec<(&str, Vec<u8>, Error)> = vec![
        (
            "undecodable block",
            headers(END_HEADERS, 1, vec![0x80]),
            Error::Hpack(String::new()),
        ),
        (
            "index past the tables",
            headers(END_HEADERS, 1, vec![0xff, 0x7f]),
            Error::Hpack(String::new()),
        ),
        (
            "truncated literal",
            headers(END_HEADERS, 1, vec![0x00, 0x05, b'a']),
            Error::Hpack(String::new()),
        ),
        (
            "table size update over the advertised size",
            headers(END_HEADERS, 1, vec![0x3f, 0xe2, 0x1f]),
            Error::Hpack(String::new()),
        ),
        (
            "padding longer than payload",
            headers(END_HEADERS | PADDED, 1, vec![10, 0x82]),
            Error::BadFrame,
        ),
        (
            "padded without pad length",
            headers(END_HEADERS | PADDED, 1, vec![]),
            Error::BadFrame,
        ),
        (
            "priority flag without priority",
            headers(END_HEADERS | PRIORITY, 1, vec![0, 0]),
            Error::BadFrame,
        ),
        (
            "stream zero",
            headers(END_HEADERS, 0, block.clone()),
            Error::StreamZero,
        ),
        (
            "stray continuation",
            continuation(1, block.clone()),
            Error::StrayContinuation,
        ),
        (
            "continuation on another stream",
            [
                headers(0, 1, block[..3].to_vec()),
                continuation(3, block[3..].to_vec()),
            ]
            .concat(),
            Error::ExpectedContinuation {
                kind: CONTINUATION,
                stream: 3,
                expected: 1,
            },
        ),
        (
            "ping inside a block",
            [headers(0, 1, block[..3].to_vec()), ping.clone()].concat(),
            Error::ExpectedContinuation {
                kind: 0x6,
                stream: 0,
                expected: 1,
            },
        ),
        (
            "push promise",
            frame_bytes(&Frame {
                kind: PUSH_PROMISE,
                flags: END_HEADERS,
                stream: 1,
                payload: vec![0, 0, 0, 2, 0x82],
            }),
            Error::PushPromise,
        ),
        (
            "64 KiB authority",
            block_frames(
                1,
                &encode(&mut Encoder::default(), &big_authority, 0),
                &[16_000, 16_000, 16_000, 16_000],
                None,
                false,
                false,
            ),
            Error::TooLarge,
        ),
        (
            "continuation flood",
            [
                headers(0, 1, vec![]),
                (0..40)
                    .flat_map(|_| {
                        frame_bytes(&Frame {
                            kind: CONTINUATION,
                            flags: 0,
                            stream: 1,
                            payload: vec![0x82; 1024],
                        })
                    })
                    .collect(),
            ]
            .concat(),
            Error::TooLarge,
        ),
    ];
    for (name, frames, want) in cases {
        let mut input = PREFACE.to_vec();
        input.extend(&frames);
        // Whatever follows the refusal is dropped.
        input.extend(&ping);
        for chunks in [&[1usize][..], &[5, 9, 13], &[1 << 20]] {
            let (out, n) = run(&input, chunks);
            assert!(refused(&out, &n), "{name}: not refused (chunks {chunks:?})");
            let got = n.refusal().unwrap();
            assert_eq!(
                std::mem::discriminant(got),
                std::mem::discriminant(&want),
                "{name}: refused for {got}"
            );
        }
    }
}

#[test]
fn a_decoded_block_over_the_limit_is_refused_even_when_small_on_the_wire() {
    // One 4000-byte header inserted once, then referenced by index 62 many times: an HPACK bomb.
    // (The first request's authority keeps the connection normalised; on a connection that passes
    // through, h2's own header list limit meets the bomb: tests/authority.rs.)
    let mut input = PREFACE.to_vec();
    let mut enc = Encoder::default();
    let first = encode(
        &mut enc,
        &[
            (b":authority".to_vec(), b"tmp%2Fx".to_vec()),
            (b"x-big".to_vec(), vec![b'v'; 4000]),
        ],
        Encoder::WITH_INDEXING,
    );
    input.extend(block_frames(1, &first, &[], None, false, false));
    input.extend(block_frames(3, &[0xbe; 100], &[], None, false, false));
    let (out, n) = run(&input, &[64]);
    assert!(refused(&out, &n));
    assert_eq!(n.refusal(), Some(&Error::TooLarge));
}

#[test]
fn large_blocks_are_cut_at_the_frame_size() {
    let mut fields = request_fields(b"tmp%2Fa", "/p");
    for i in 0..6 {
        fields.push((format!("x-meta-{i}").into_bytes(), vec![b'm'; 4000]));
    }
    let block = encode(&mut Encoder::default(), &fields, 0);
    let mut input = PREFACE.to_vec();
    input.extend(block_frames(5, &block, &[9000, 9000], None, true, true));
    let (out, n) = run(&input, &[4096]);
    assert!(!n.is_closed());
    let frames = parse_frames(&out[PREFACE.len()..]);
    assert!(frames.len() >= 2, "a 24 KiB block needs a CONTINUATION");
    assert_eq!(
        read_output(&out),
        vec![Seen::Block {
            stream: 5,
            end_stream: true,
            priority: Some(vec![0, 0, 0, 0, 15]),
            fields: without_authority(&fields),
        }]
    );
}

/// One header field of a generated request.
fn field() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    prop_oneof![
        (
            prop::sample::select(vec![
                "x-a",
                "x-b",
                "grpc-timeout",
                "user-agent",
                "x-long-name-of-a-header"
            ]),
            prop::collection::vec(any::<u8>(), 0..600)
        )
            .prop_map(|(n, v)| (n.as_bytes().to_vec(), v)),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(|v| (b":authority".to_vec(), v)),
    ]
}

/// A connection: blocks (fields, encoder flags, cuts, padding, priority) with other frames between.
#[derive(Debug, Clone)]
struct Block {
    fields: Vec<(Vec<u8>, Vec<u8>)>,
    flags: u8,
    cuts: Vec<usize>,
    pad: Option<u8>,
    prio: bool,
    size_update: Option<u32>,
    end_stream: bool,
    between: Vec<u8>,
}

fn block() -> impl Strategy<Value = Block> {
    (
        prop::collection::vec(field(), 0..12),
        prop::sample::select(vec![
            0u8,
            Encoder::WITH_INDEXING,
            Encoder::WITH_INDEXING | Encoder::HUFFMAN_VALUE | Encoder::HUFFMAN_NAME,
            Encoder::WITH_INDEXING | Encoder::BEST_FORMAT | Encoder::HUFFMAN_VALUE,
            Encoder::NEVER_INDEXED | Encoder::HUFFMAN_NAME,
            Encoder::BEST_FORMAT,
        ]),
        prop::collection::vec(1usize..400, 0..4),
        prop::option::of(any::<u8>()),
        any::<bool>(),
        prop::option::of(prop::sample::select(vec![0u32, 100, 512, 4096])),
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(
            |(fields, flags, cuts, pad, prio, size_update, end_stream, between)| Block {
                fields,
                flags,
                cuts,
                pad,
                prio,
                size_update,
                end_stream,
                between,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random requests from an independent encoder (Huffman, indexing with evictions, size updates),
    /// cut into random frames and random reads: h2 sees the same fields minus `:authority` (all of
    /// them, when the first request's authority is one h2 accepts), the same flags and priority,
    /// and every other frame byte for byte.
    #[test]
    fn what_h2_sees_is_the_request_without_authority(
        blocks in prop::collection::vec(block(), 1..8),
        chunks in prop::collection::vec(1usize..300, 1..6),
    ) {
        let authorities: Vec<&[u8]> = blocks[0]
            .fields
            .iter()
            .filter(|(n, _)| n == b":authority")
            .map(|(_, v)| &v[..])
            .collect();
        let through = authorities.len() <= 1 && authorities.iter().all(|a| h2_accepts_authority(a));
        let mut enc = Encoder::default();
        let mut input = PREFACE.to_vec();
        let mut want = Vec::new();
        for (i, b) in blocks.iter().enumerate() {
            let stream = 1 + 2 * i as u32;
            let mut encoded = Vec::new();
            if let Some(size) = b.size_update {
                enc.update_max_dynamic_size(size, &mut encoded).unwrap();
            }
            encoded.extend(encode(&mut enc, &b.fields, b.flags));
            input.extend(block_frames(stream, &encoded, &b.cuts, b.pad, b.prio, b.end_stream));
            want.push(Seen::Block {
                stream,
                end_stream: b.end_stream,
                priority: b.prio.then(|| vec![0, 0, 0, 0, 15]),
                fields: if through { b.fields.clone() } else { without_authority(&b.fields) },
            });
            let data = Frame { kind: 0x0, flags: 0, stream, payload: b.between.clone() };
            input.extend(frame_bytes(&data));
            want.push(Seen::Other(data));
        }
        let (out, n) = run(&input, &chunks);
        prop_assert!(!n.is_closed(), "refused: {:?}", n.refusal());
        prop_assert_eq!(n.passes_through(), through);
        let mode = if through { Mode::Through } else { Mode::Normalised };
        prop_assert_eq!(read_output_as(&out, mode), want);
    }

    /// Arbitrary bytes after the preface: no panic, and the output is whole frames whose header
    /// blocks all decode, ending in the refusal frame if anything was refused.
    #[test]
    fn garbage_never_panics_and_output_stays_well_formed(
        body in prop::collection::vec(any::<u8>(), 0..2000),
        chunks in prop::collection::vec(1usize..200, 1..5),
    ) {
        let mut input = PREFACE.to_vec();
        input.extend(&body);
        let (out, n) = run(&input, &chunks);
        // Cut a trailing partial pass-through frame (the input may end mid-frame).
        let mut whole = &out[PREFACE.len()..];
        let mut keep = 0;
        while whole.len() >= FRAME_HEADER {
            let len = usize::from(whole[0]) << 16 | usize::from(whole[1]) << 8 | usize::from(whole[2]);
            if whole.len() < FRAME_HEADER + len { break; }
            keep += FRAME_HEADER + len;
            whole = &whole[FRAME_HEADER + len..];
        }
        let frames = parse_frames(&out[PREFACE.len()..PREFACE.len() + keep]);
        let mut decoder = Decoder::new();
        for f in &frames {
            if f.kind == HEADERS && f.payload != [0x80] && f.flags & END_HEADERS != 0 && f.flags & PRIORITY == 0 {
                prop_assert!(decoder.decode(&f.payload).is_ok());
                if n.passes_through() {
                    // The first block decoded and the rest of the garbage passed on, for h2 to refuse.
                    break;
                }
            }
        }
        if n.is_closed() {
            prop_assert!(refused(&out[..PREFACE.len() + keep], &n));
        }
    }
}
