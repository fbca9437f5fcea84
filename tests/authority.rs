//! Any `:authority` on the local sockets: a raw HTTP/2 client of the test's own sends each form that
//! gRPC stacks put there for a Unix socket — gRPC C core's percent-encoded path, grpc-swift's
//! `%2F...`, old grpc-go's raw path, `localhost`, empty, absent, non-UTF-8 — over each of the seven
//! Workload API RPCs and on the admin socket, and gets exactly what `localhost` gets. Bad input (a
//! 64 KiB authority, a header block that does not decode) ends that connection with a GOAWAY, never
//! a panic, and other connections keep being served.
//!
//! This is the test that fails the day the normaliser in front of h2 is lost: h2 resets every
//! stream whose authority holds `%` or `/`.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::*;
use prost::Message;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What came back for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// A gRPC response message arrived (the call was served).
    Message,
    /// The call ended with this grpc-status before any message.
    Status(u32),
    /// The stream was reset with this HTTP/2 error code.
    Reset(u32),
    /// The connection was ended with this HTTP/2 error code.
    GoAway(u32),
    /// The socket closed without an answer.
    Closed,
}

/// A bare HTTP/2 client connection over the Unix socket.
struct Raw {
    sock: UnixStream,
    decoder: loona_hpack::Decoder<'static>,
    next_stream: u32,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// A literal header field without indexing, new name, raw bytes (any bytes at all).
fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    fn int(out: &mut Vec<u8>, mut v: usize) {
        if v < 127 {
            out.push(v as u8);
            return;
        }
        out.push(127);
        v -= 127;
        while v >= 128 {
            out.push((v % 128) as u8 | 0x80);
            v /= 128;
        }
        out.push(v as u8);
    }
    out.push(0);
    int(out, name.len());
    out.extend(name);
    int(out, value.len());
    out.extend(value);
}

impl Raw {
    fn connect(path: &Path) -> Self {
        let mut sock = UnixStream::connect(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        sock.write_all(PREFACE).unwrap();
        sock.write_all(&frame(0x4, 0, 0, &[])).unwrap();
        Self {
            sock,
            decoder: loona_hpack::Decoder::new(),
            next_stream: 1,
        }
    }

    /// The header block of a gRPC request to `path` with the given authority (None: absent).
    fn request_block(path: &str, authority: Option<&[u8]>) -> Vec<u8> {
        let mut block = Vec::new();
        literal(&mut block, b":method", b"POST");
        literal(&mut block, b":scheme", b"http");
        literal(&mut block, b":path", path.as_bytes());
        if let Some(a) = authority {
            literal(&mut block, b":authority", a);
        }
        literal(&mut block, b"content-type", b"application/grpc");
        literal(&mut block, b"te", b"trailers");
        literal(&mut block, b"workload.spiffe.io", b"true");
        block
    }

    /// Sends one request (header block in frames of at most 16 KiB, then the message) and reads
    /// until its outcome is known.
    fn call(&mut self, path: &str, authority: Option<&[u8]>, message: &[u8]) -> Outcome {
        let block = Self::request_block(path, authority);
        self.call_with_block(&block, message)
    }

    fn call_with_block(&mut self, block: &[u8], message: &[u8]) -> Outcome {
        let stream = self.next_stream;
        self.next_stream += 2;
        let mut out = Vec::new();
        let mut chunks = block.chunks(16_384).peekable();
        let mut first = true;
        while let Some(chunk) = chunks.next() {
            let end_headers = if chunks.peek().is_none() { 0x4 } else { 0 };
            let kind = if first { 0x1 } else { 0x9 };
            out.extend(frame(kind, end_headers, stream, chunk));
            first = false;
        }
        let mut body = vec![0];
        body.extend((message.len() as u32).to_be_bytes());
        body.extend(message);
        out.extend(frame(0x0, 0x1, stream, &body));
        if self.sock.write_all(&out).is_err() {
            return self.read_outcome(stream);
        }
        self.read_outcome(stream)
    }

    fn read_exact(&mut self, n: usize) -> Option<Vec<u8>> {
        let mut buf = vec![0; n];
        self.sock.read_exact(&mut buf).ok()?;
        Some(buf)
    }

    fn read_outcome(&mut self, stream: u32) -> Outcome {
        loop {
            let Some(head) = self.read_exact(9) else {
                return Outcome::Closed;
            };
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let (kind, flags) = (head[3], head[4]);
            let sid = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let Some(payload) = self.read_exact(len) else {
                return Outcome::Closed;
            };
            match kind {
                0x4 if flags & 0x1 == 0 => {
                    let _ = self.sock.write_all(&frame(0x4, 0x1, 0, &[]));
                }
                0x1 => {
                    assert_ne!(flags & 0x4, 0, "the agent's headers fit one frame");
                    let fields = self
                        .decoder
                        .decode(&payload)
                        .expect("server headers decode");
                    if sid != stream {
                        continue;
                    }
                    if let Some((_, v)) = fields.iter().find(|(n, _)| n == b"grpc-status") {
                        return Outcome::Status(std::str::from_utf8(v).unwrap().parse().unwrap());
                    }
                }
                0x0 if sid == stream && !payload.is_empty() => return Outcome::Message,
                0x3 if sid == stream => {
                    return Outcome::Reset(u32::from_be_bytes(payload[..4].try_into().unwrap()));
                }
                0x7 => {
                    return Outcome::GoAway(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
                }
                _ => {}
            }
        }
    }
}

/// The seven Workload API RPCs with a request each.
fn rpcs() -> Vec<(&'static str, Vec<u8>)> {
    use lanyard::proto::*;
    vec![
        (
            "/SpiffeWorkloadAPI/FetchX509SVID",
            X509svidRequest {}.encode_to_vec(),
        ),
        (
            "/SpiffeWorkloadAPI/FetchX509Bundles",
            X509BundlesRequest {}.encode_to_vec(),
        ),
        (
            "/SpiffeWorkloadAPI/FetchJWTSVID",
            JwtsvidRequest {
                audience: vec!["db.example".into()],
                spiffe_id: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            "/SpiffeWorkloadAPI/FetchJWTBundles",
            JwtBundlesRequest {}.encode_to_vec(),
        ),
        (
            "/SpiffeWorkloadAPI/ValidateJWTSVID",
            ValidateJwtsvidRequest {
                audience: "db.example".into(),
                svid: "not.a.token".into(),
            }
            .encode_to_vec(),
        ),
        (
            "/SpiffeWorkloadAPI/FetchWITSVID",
            WitsvidRequest::default().encode_to_vec(),
        ),
        (
            "/SpiffeWorkloadAPI/FetchWITBundles",
            WitBundlesRequest {}.encode_to_vec(),
        ),
    ]
}

/// What each gRPC stack sends as `:authority` for this socket path.
fn odd_authorities(socket: &Path) -> Vec<(&'static str, Option<Vec<u8>>)> {
    let path = socket.to_str().unwrap();
    let c_core = path.trim_start_matches('/').replace('/', "%2F");
    let swift = path.replace('/', "%2F");
    vec![
        (
            "gRPC C core (percent-encoded path)",
            Some(c_core.into_bytes()),
        ),
        ("grpc-swift (%2F-prefixed path)", Some(swift.into_bytes())),
        ("old grpc-go (raw path)", Some(path.as_bytes().to_vec())),
        ("localhost", Some(b"localhost".to_vec())),
        ("empty", Some(Vec::new())),
        ("absent", None),
        ("non-UTF-8", Some(b"\xff\xfe\x80sock".to_vec())),
    ]
}

/// An agent giving this test's uid `spiffe://example.org/raw`.
async fn agent_serving_this_uid() -> TestAgent {
    let cfg = format!(
        "[[entry]]\nspiffe_id = \"spiffe://example.org/raw\"\nselectors = [\"unix:uid:{}\"]\n",
        euid()
    );
    TestAgent::start(&cfg).await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_authority_form_is_served_on_all_seven_rpcs() {
    let agent = agent_serving_this_uid().await;
    let socket = agent.socket.clone();
    tokio::task::block_in_place(|| {
        let mut baseline = Raw::connect(&socket);
        let want: Vec<Outcome> = rpcs()
            .iter()
            .map(|(path, msg)| baseline.call(path, Some(b"localhost"), msg))
            .collect();
        assert_eq!(
            want,
            [
                Outcome::Message,
                Outcome::Message,
                Outcome::Message,
                Outcome::Message,
                Outcome::Status(3),
                Outcome::Status(12),
                Outcome::Status(12),
            ],
            "baseline with :authority localhost"
        );
        for (name, authority) in odd_authorities(&socket) {
            // One connection per form, and all forms again on one connection (HPACK state shared).
            let mut conn = Raw::connect(&socket);
            for ((path, msg), want) in rpcs().iter().zip(&want) {
                let got = conn.call(path, authority.as_deref(), msg);
                assert_eq!(&got, want, "{path} with :authority {name}");
            }
        }
        let mut shared = Raw::connect(&socket);
        for (name, authority) in odd_authorities(&socket) {
            let (path, msg) = &rpcs()[0];
            assert_eq!(
                shared.call(path, authority.as_deref(), msg),
                Outcome::Message,
                "{name} on a shared connection"
            );
        }
    });
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_socket_ignores_the_authority_too() {
    let agent = TestAgent::start("").await;
    let admin = agent.dir.path().join("admin").join("admin.sock");
    tokio::task::block_in_place(|| {
        for (name, authority) in odd_authorities(&admin) {
            let mut conn = Raw::connect(&admin);
            let got = conn.call(
                "/lanyard.admin.v1.Admin/AgentInfo",
                authority.as_deref(),
                &lanyard::proto::admin::AgentInfoRequest {}.encode_to_vec(),
            );
            assert_eq!(
                got,
                Outcome::Message,
                "admin AgentInfo with :authority {name}"
            );
        }
    });
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_header_input_ends_only_its_own_connection() {
    let agent = agent_serving_this_uid().await;
    let socket = agent.socket.clone();
    tokio::task::block_in_place(|| {
        let (path, msg) = &rpcs()[0];
        let mut bystander = Raw::connect(&socket);
        assert_eq!(
            bystander.call(path, Some(b"localhost"), msg),
            Outcome::Message
        );

        let huge = vec![b'a'; 64 * 1024];
        let mut bad_inputs: Vec<(&str, Vec<u8>)> = vec![
            ("64 KiB authority", Raw::request_block(path, Some(&huge))),
            ("index 0", vec![0x80]),
            ("index past both tables", vec![0xff, 0x7f]),
            ("truncated literal", vec![0x00, 0x7f]),
            ("table size update over 4096", vec![0x3f, 0xe2, 0x1f, 0x82]),
        ];
        let mut non_utf8_name = Vec::new();
        literal(&mut non_utf8_name, b"\xff\xfe", b"x");
        bad_inputs.push((
            "non-UTF-8 header name",
            [Raw::request_block(path, None), non_utf8_name].concat(),
        ));
        for (name, block) in bad_inputs {
            let mut conn = Raw::connect(&socket);
            let got = conn.call_with_block(&block, msg);
            assert!(
                matches!(
                    got,
                    Outcome::GoAway(_) | Outcome::Reset(_) | Outcome::Closed
                ),
                "{name}: got {got:?}"
            );
            // Every other connection is still served, old and new.
            assert_eq!(
                bystander.call(path, Some(b"localhost"), msg),
                Outcome::Message,
                "after {name}"
            );
            assert_eq!(
                Raw::connect(&socket).call(path, None, msg),
                Outcome::Message,
                "a new connection after {name}"
            );
        }
        // The refused block's connection got a GOAWAY, not just a closed socket.
        let mut conn = Raw::connect(&socket);
        assert!(matches!(
            conn.call_with_block(&[0x80], msg),
            Outcome::GoAway(_)
        ));
    });
    agent.shutdown().await;
}

/// A connection whose first request has an authority h2 accepts (`localhost`: the Rust and Go
/// stacks) is no longer normalised after it; a later request on it with an authority h2 refuses has
/// that one stream reset by h2, and the connection goes on serving. (A client's stack sends the same
/// authority on every request; a connection that starts with an odd one is normalised throughout:
/// `every_authority_form_is_served_on_all_seven_rpcs`.) An HPACK bomb on such a connection meets
/// h2's own header list limit and ends only its own stream.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_starts_plain_passes_through_to_h2() {
    let agent = agent_serving_this_uid().await;
    let socket = agent.socket.clone();
    tokio::task::block_in_place(|| {
        let (path, msg) = &rpcs()[0];
        let c_core = odd_authorities(&socket)[0].1.clone().unwrap();
        let mut conn = Raw::connect(&socket);
        assert_eq!(conn.call(path, Some(b"localhost"), msg), Outcome::Message);
        assert!(matches!(
            conn.call(path, Some(&c_core), msg),
            Outcome::Reset(_)
        ));
        assert_eq!(conn.call(path, Some(b"localhost"), msg), Outcome::Message);

        // The bomb: one 4,000-byte field put in the table (literal with incremental indexing,
        // RFC 7541 §6.2.1), then a request naming it 100 times (index 62: the newest entry).
        let mut conn = Raw::connect(&socket);
        let mut block = Raw::request_block(path, Some(b"localhost"));
        block.extend([0x40, 5]);
        block.extend(b"x-big");
        block.extend([0x7f, 0xa1, 0x1e]); // 4,000 = 127 + 3,873 (33 | 0x80, then 30)
        block.extend(vec![b'v'; 4000]);
        assert_eq!(conn.call_with_block(&block, msg), Outcome::Message);
        let mut bomb = Raw::request_block(path, Some(b"localhost"));
        bomb.extend([0xbe; 100]);
        let got = conn.call_with_block(&bomb, msg);
        assert!(
            matches!(got, Outcome::Reset(_) | Outcome::GoAway(_)),
            "an HPACK bomb got {got:?}"
        );
        assert_eq!(
            Raw::connect(&socket).call(path, Some(b"localhost"), msg),
            Outcome::Message,
            "a new connection after the bomb"
        );
    });
    agent.shutdown().await;
}
