//! The Unix socket: safe binding (a live agent is never taken over) and an accept stream that records
//! each connection's peer at accept.

use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::server::Connected;

use super::conn::Conn;
use super::h2_normalize::FRAME_HEADER;
use super::h2_normalize::Normalizer;
use crate::attest::Caller;
use crate::limits::{AnswerSlot, ConnectionSlot, Refusal, Shares};

/// Why the socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "another agent is serving on {path}; stop it first or choose another socket path (a live socket is never taken over)"
    )]
    InUse { path: PathBuf },
    #[error("{path} exists and is not a socket; remove it or choose another socket path")]
    NotASocket { path: PathBuf },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// Binds a Unix socket at `path` with mode `mode`, creating the parent directory with `dir_mode` if
/// it is missing. A stale socket file is replaced only when nothing answers on it.
pub(crate) fn bind(path: &Path, mode: u32, dir_mode: u32) -> Result<UnixListener, BindError> {
    let io_err = |what, source| BindError::Io {
        what,
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        // Created with `dir_mode`, or adopted only if it is the agent's and nobody else can write
        // in it (someone who can could replace the socket).
        crate::atomic_file::adopt_or_create_dir(dir, dir_mode)
            .map_err(|e| io_err("preparing the directory of", e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(BindError::InUse {
                        path: path.to_owned(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(), "removing stale socket");
                    std::fs::remove_file(path).map_err(|e| io_err("removing stale socket", e))?;
                }
                Err(e) => return Err(io_err("probing existing socket", e)),
            }
        }
        Ok(_) => {
            return Err(BindError::NotASocket {
                path: path.to_owned(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspecting", e)),
    }
    // The socket is created with its mode (through the umask), never chmod'ed by path afterwards.
    // (The umask applies only on a thread of its own: other threads keep creating files with theirs.)
    let owned = path.to_owned();
    let listener = crate::sys::with_private_umask(!mode & 0o777, move || {
        std::os::unix::net::UnixListener::bind(owned)
    })
    .map_err(|e| io_err("binding", io::Error::other(e.to_string())))?
    .map_err(|e| io_err("binding", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| io_err("binding", e))?;
    let listener = UnixListener::from_std(listener).map_err(|e| io_err("binding", e))?;
    Ok(listener)
}

/// The connection info every request carries: the caller as recorded at accept, or why it could not
/// be recorded (then the caller gets no identity); and whether the connection is over a limit (then
/// every request on it is refused with that).
#[derive(Clone, Debug)]
pub(crate) struct PeerInfo {
    pub(crate) caller: Arc<Result<Caller, String>>,
    pub(crate) refused: Option<Arc<Refusal>>,
}

/// How long a connection over a limit is kept at most, waiting for a request to answer with the
/// refusal; once its first answer is sent, it is closed at once (and its answering place freed).
const REFUSED_GRACE: Duration = Duration::from_secs(1);

/// An accepted connection with its peer. What the client sends reaches h2 through the
/// [`Normalizer`], which drops the meaningless `:authority` every gRPC stack fills differently.
pub(crate) struct PeerStream {
    inner: Conn,
    peer: PeerInfo,
    normalizer: Normalizer,
    /// Read from the socket, not yet consumed by the normaliser (a partial frame).
    pending: BytesMut,
    /// Normalised, not yet handed to h2.
    ready: BytesMut,
    /// Closes the connection if it has opened no stream by then (or, over a limit, at all).
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Over a limit: closed at the deadline even with streams open.
    hard_deadline: bool,
    /// This connection's place in its uid's share (given back when the connection is dropped).
    _slot: Option<ConnectionSlot>,
    /// Over a limit: the place in the few refused connections answered before closing, given back
    /// as soon as the first answer has been sent.
    answering: Option<AnswerSlot>,
    /// Over a limit and answered: watches what h2 writes for the end of the first answer (once
    /// seen, the next flush that completes sends it).
    watch: Option<AnswerWatch>,
}

impl PeerStream {
    /// Records the peer of a freshly accepted connection (and the ceiling of what it can get);
    /// `peer_pidfd` false takes the path of kernels without `SO_PEERPIDFD`. With `shares`, the
    /// connection is counted against its uid's rate of new connections and takes a place in its
    /// uid's share first (only the cheap `SO_PEERCRED` read comes before that); a caller in a user
    /// namespace that another user made then moves to that user's share (`Ceiling::share_uid`,
    /// known once the caller is). A connection over a limit is answered with the refusal and
    /// closed soon.
    ///
    /// `None`: the connection is to be closed at once, unanswered — it came faster than its uid's
    /// rate, or it is over a share with no place left to answer it from. Nothing else is done for
    /// it (no pidfd, no registration with the runtime), so a uid connecting and closing in a loop
    /// costs the agent a few system calls a connection. Fails only when the socket cannot be
    /// registered with the runtime (see [`Conn`]).
    pub(crate) fn new(
        inner: UnixStream,
        peer_pidfd: bool,
        shares: Option<&Shares>,
    ) -> io::Result<Option<Self>> {
        let mut slot = None;
        let mut refused = None;
        let mut answering = None;
        let refuse = |shares: &Shares, uid: u32, r: Refusal| {
            tracing::debug!(uid, limit = %r, "connection over its share");
            (Some(Arc::new(r)), shares.answer_refusal())
        };
        // A peer whose credentials cannot be read counts under a uid no process has.
        let uid = crate::sys::peer::peer_cred(inner.as_fd()).map_or(u32::MAX, |c| c.uid);
        // A uid learned to be another user's subordinate uid counts against that user's rate now,
        // before anything is read about the caller: a user flooding from thousands of its
        // subordinate uids (each with a fresh bucket of its own) is turned away as cheaply as one
        // flooding from its own uid.
        let mut charged_owner = None;
        if let Some(shares) = shares {
            if let Err(r) = shares.arrive(uid) {
                warn_arrivals(uid, &r);
                return Ok(None);
            }
            if let Some(owner) = shares.owner_of(uid).filter(|&o| o != uid) {
                if let Err(r) = shares.arrive(owner) {
                    warn_arrivals(owner, &r);
                    return Ok(None);
                }
                charged_owner = Some(owner);
            }
            match shares.connect(uid) {
                Ok(s) => slot = Some(s),
                Err(r) => (refused, answering) = refuse(shares, uid, r),
            }
        }
        if refused.is_some() && answering.is_none() {
            return Ok(None);
        }
        let mut caller = if slot.is_none() && shares.is_some() {
            Err("the connection is over a limit".to_owned())
        } else {
            Caller::from_socket_with(inner.as_fd(), peer_pidfd).map_err(|e| e.to_string())
        };
        // What was learned about the uid no longer holds (its range is mapped by another user
        // now, or by no one): forgotten; the user it was charged to is not refunded (one token).
        if let (Some(shares), Ok(c), Some(_)) = (shares, &caller, charged_owner)
            && c.ceiling().share_uid == uid
        {
            shares.forget_subordinate(uid);
        }
        // Subordinate uids of a user count against that user's share: the connection's place moves
        // there (its place in its own uid's share is given back first), and against that user's
        // rate of new connections too (unless charged to that user already, above).
        if let (Some(shares), Ok(c)) = (shares, &caller)
            && c.ceiling().share_uid != uid
        {
            let owner = c.ceiling().share_uid;
            if !c.ceiling().share_uids.is_empty() {
                shares.learn_subordinates(owner, &c.ceiling().share_uids);
            }
            slot = None;
            if charged_owner != Some(owner)
                && let Err(r) = shares.arrive(owner)
            {
                warn_arrivals(owner, &r);
                return Ok(None);
            }
            match shares.connect(owner) {
                Ok(s) => slot = Some(s),
                Err(r) => {
                    (refused, answering) = refuse(shares, owner, r);
                    caller = Err("the connection is over a limit".to_owned());
                }
            }
            if refused.is_some() && answering.is_none() {
                return Ok(None);
            }
        }
        if let Err(e) = &caller
            && refused.is_none()
        {
            tracing::debug!(error = %e, "cannot identify the peer of a connection");
        }
        let (deadline, hard_deadline) = match (&refused, shares) {
            // Answered with the refusal for a moment, then closed.
            (Some(_), _) => (Some(REFUSED_GRACE), true),
            (None, Some(s)) => (Some(s.config().connection_idle), false),
            (None, None) => (None, false),
        };
        let watch = answering.as_ref().map(|_| AnswerWatch::default());
        Ok(Some(Self {
            inner: Conn::new(inner)?,
            peer: PeerInfo {
                caller: Arc::new(caller),
                refused,
            },
            normalizer: Normalizer::new(),
            pending: BytesMut::new(),
            ready: BytesMut::new(),
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep(d))),
            hard_deadline,
            _slot: slot,
            answering,
            watch,
        }))
    }

    /// Notes what h2 wrote (accepted by the socket layer, `n` bytes of `bufs`).
    fn wrote(&mut self, bufs: &[io::IoSlice<'_>], mut n: usize) {
        let Some(watch) = self.watch.as_mut() else {
            return;
        };
        for b in bufs {
            if n == 0 {
                break;
            }
            let take = n.min(b.len());
            watch.wrote(&b[..take]);
            n -= take;
        }
    }

    /// After a flush: a refused connection whose answer is now sent ends here — its answering
    /// place is given back, and h2 reads the end of the connection (woken to see it).
    fn flushed(&mut self, cx: &mut Context<'_>) {
        if self.watch.as_ref().is_some_and(|w| w.answered) {
            self.watch = None;
            self.answering = None;
            self.deadline = Some(Box::pin(tokio::time::sleep(Duration::ZERO)));
            cx.waker().wake_by_ref();
        }
    }

    /// Whether the connection is past its deadline: then it reads as closed.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(deadline) = self.deadline.as_mut() else {
            return false;
        };
        if !self.hard_deadline && self.normalizer.has_requests() {
            self.deadline = None;
            return false;
        }
        deadline.as_mut().poll(cx).is_ready()
    }
}

/// Says, at most once a minute for all uids together, that a uid's connections are being closed
/// unanswered for coming too fast (they are counted by the refusals metric every time).
fn warn_arrivals(uid: u32, refusal: &Refusal) {
    use std::sync::atomic::{AtomicU64, Ordering};
    // Seconds since the first call, plus one (0: never warned), on the monotonic clock: a step of
    // the wall clock cannot silence it.
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs()
        + 1;
    let last = LAST.load(Ordering::Relaxed);
    if (last == 0 || now >= last + 60)
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(uid, limit = %refusal, "connections closed unanswered");
    }
}

impl Connected for PeerStream {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.expired(cx) {
                // No stream opened in time (or over a limit): h2 sees the end of the connection.
                return Poll::Ready(Ok(()));
            }
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.normalizer.is_closed() {
                // Refused: h2 has its GOAWAY frame; now the connection reads as closed.
                return Poll::Ready(Ok(()));
            }
            if this.normalizer.passes_through() && this.pending.is_empty() {
                // Nothing left to normalise on this connection: the socket reads into h2's buffer,
                // and neither buffer of the normaliser is needed again.
                if this.pending.capacity() > 0 || this.ready.capacity() > 0 {
                    this.pending = BytesMut::new();
                    this.ready = BytesMut::new();
                }
                return this.inner.poll_read(cx, buf);
            }
            // The socket is read into h2's own buffer, used here as scratch space (no buffer of
            // our own per connection); the bytes are moved out before anything is handed over.
            let before = buf.filled().len();
            ready!(this.inner.poll_read(cx, buf))?;
            if buf.filled().len() == before {
                return Poll::Ready(Ok(()));
            }
            this.pending.extend_from_slice(&buf.filled()[before..]);
            buf.set_filled(before);
            this.normalizer.feed(&mut this.pending, &mut this.ready);
            if let Some(why) = this
                .normalizer
                .refusal()
                .filter(|_| this.normalizer.is_closed())
            {
                tracing::debug!(error = %why, "HTTP/2 input refused; the connection ends with GOAWAY");
            }
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.inner.poll_flush(cx))?;
        if let Some(goaway) = this.watch.as_mut().and_then(AnswerWatch::goaway) {
            // Into the connection's empty buffer (whole, see `Conn`), sent by one more flush.
            ready!(
                this.inner
                    .poll_write_vectored(cx, &[io::IoSlice::new(&goaway)])
            )?;
            ready!(this.inner.poll_flush(cx))?;
        }
        this.flushed(cx);
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(this.inner.poll_write_vectored(cx, bufs))?;
        this.wrote(bufs, n);
        Poll::Ready(Ok(n))
    }

    /// No: h2 then copies small messages into its own buffer, and a whole answer leaves in one
    /// write (see [`Conn`]).
    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// The stream of accepted connections. Accept errors (such as running out of file descriptors) are
/// logged and retried after a pause; they never end the server.
pub(crate) struct Incoming {
    listener: UnixListener,
    peer_pidfd: bool,
    shares: Option<Shares>,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Incoming {
    /// Accepts from `listener`; see [`PeerStream::new`] for `peer_pidfd` and `shares`.
    pub(crate) fn new(listener: UnixListener, peer_pidfd: bool, shares: Option<Shares>) -> Self {
        Self {
            listener,
            peer_pidfd,
            shares,
            backoff: None,
        }
    }
}

impl tokio_stream::Stream for Incoming {
    type Item = Result<PeerStream, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(sleep) = self.backoff.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.backoff = None;
        }
        for _ in 0..CLOSED_IN_A_ROW {
            match self.listener.poll_accept(cx) {
                Poll::Ready(Ok((stream, _))) => {
                    let shares = self.shares.as_ref();
                    match PeerStream::new(stream, self.peer_pidfd, shares) {
                        // Too fast, or over a limit with no place to be answered from: closed
                        // here, now, not handed to the server to be closed when its task gets to
                        // run. A client connecting and closing in a loop then holds no descriptor
                        // of the agent's beyond its share, however far ahead of the server it runs.
                        Ok(None) => continue,
                        Ok(Some(peer)) => return Poll::Ready(Some(Ok(peer))),
                        // The connection is closed; the server goes on accepting.
                        Err(e) => {
                            tracing::warn!(
                                error = %e,
                                "cannot register an accepted connection; closed it"
                            );
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                }
                Poll::Ready(Err(e)) => {
                    tracing::warn!(error = %e, "accept failed; retrying in 100ms");
                    let mut sleep =
                        Box::pin(tokio::time::sleep(std::time::Duration::from_millis(100)));
                    // Register the timer with this task's waker.
                    let _ = sleep.as_mut().poll(cx);
                    self.backoff = Some(sleep);
                    return Poll::Pending;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        // Many closed in a row: the server's other work runs before the next ones.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Connections closed unanswered in one turn of the accept loop, at most.
const CLOSED_IN_A_ROW: usize = 64;

/// Follows the HTTP/2 frames the agent writes on a refused connection, to see its first answer end:
/// a complete header block with END_STREAM (the trailers-only status a refusal is) or a DATA frame
/// with END_STREAM, on any stream. Only frame headers are read; payloads are skipped by length.
#[derive(Default)]
struct AnswerWatch {
    /// The frame header being read, and how many of its bytes have been seen.
    head: [u8; FRAME_HEADER],
    have: usize,
    /// Payload bytes of the current frame still to come.
    skip: usize,
    /// The current frame ends a stream once all of it is written.
    ends: bool,
    /// An open header block (HEADERS without END_HEADERS) ends its stream.
    block_ends: bool,
    /// The stream of the current frame.
    stream: u32,
    answered: bool,
    /// The stream the first answer ended (valid once `answered`).
    answered_stream: u32,
    /// The GOAWAY after the answer was handed out.
    goaway_taken: bool,
}

impl AnswerWatch {
    /// Takes the next written bytes; true once a frame ending a stream has been written whole.
    /// Frames after that are followed too, so that [`Self::goaway`] knows where one ends.
    fn wrote(&mut self, mut bytes: &[u8]) -> bool {
        use super::h2_normalize::{CONTINUATION, END_HEADERS, END_STREAM, HEADERS};
        const DATA: u8 = 0x0;
        while !bytes.is_empty() {
            if self.have < FRAME_HEADER {
                let n = (FRAME_HEADER - self.have).min(bytes.len());
                self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have < FRAME_HEADER {
                    break;
                }
                let h = self.head;
                self.skip = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                let (kind, flags) = (h[3], h[4]);
                let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                self.stream = stream;
                self.ends = stream != 0
                    && match kind {
                        DATA => flags & END_STREAM != 0,
                        HEADERS => {
                            self.block_ends = flags & END_STREAM != 0;
                            self.block_ends && flags & END_HEADERS != 0
                        }
                        CONTINUATION => self.block_ends && flags & END_HEADERS != 0,
                        _ => false,
                    };
            }
            let n = self.skip.min(bytes.len());
            self.skip -= n;
            bytes = &bytes[n..];
            if self.skip == 0 {
                self.have = 0;
                if self.ends && !self.answered {
                    self.answered = true;
                    self.answered_stream = self.stream;
                }
            }
        }
        self.answered
    }

    /// Once the first answer is written and the bytes written so far end on a frame boundary: a
    /// GOAWAY (NO_ERROR) naming the answered stream as the last one taken, handed out once. A
    /// client that sent another request on the refused connection before it saw the close then
    /// knows that request was not acted on, and sends it again on a new connection (where it meets
    /// the refusal, with its reason) instead of failing it with a bare end of file.
    fn goaway(&mut self) -> Option<[u8; FRAME_HEADER + 8]> {
        if !self.answered || self.goaway_taken || self.have != 0 || self.skip != 0 {
            return None;
        }
        self.goaway_taken = true;
        const GOAWAY: u8 = 0x7;
        let mut frame = [0u8; FRAME_HEADER + 8];
        frame[2] = 8;
        frame[3] = GOAWAY;
        frame[9..13].copy_from_slice(&self.answered_stream.to_be_bytes());
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::AnswerWatch;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// What h2 writes before a refusal: its SETTINGS, the ACK of the client's, a WINDOW_UPDATE.
    fn preamble() -> Vec<u8> {
        let mut out = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        out.extend(frame(0x4, 0x1, 0, &[]));
        out.extend(frame(0x8, 0, 0, &[0, 0, 0x10, 0]));
        out
    }

    #[test]
    fn a_trailers_only_answer_is_seen_once_written_whole_in_any_split() {
        let mut bytes = preamble();
        // A header block that ends stream 1 in one frame (END_STREAM | END_HEADERS), payload 40.
        bytes.extend(frame(0x1, 0x5, 1, &[0x88; 40]));
        for cut in 1..bytes.len() {
            let mut w = AnswerWatch::default();
            assert!(
                !w.wrote(&bytes[..cut]),
                "not answered before all of it: cut {cut}"
            );
            assert!(w.wrote(&bytes[cut..]), "answered once written: cut {cut}");
        }
        let mut w = AnswerWatch::default();
        for b in &bytes[..bytes.len() - 1] {
            assert!(!w.wrote(std::slice::from_ref(b)));
        }
        assert!(w.wrote(&bytes[bytes.len() - 1..]), "byte by byte");
    }

    #[test]
    fn after_the_answer_a_goaway_names_its_stream_once_at_a_frame_boundary() {
        let mut w = AnswerWatch::default();
        assert!(!w.wrote(&preamble()));
        assert_eq!(w.goaway(), None, "nothing answered yet");
        // Stream 3 answered, then half of another frame written after it.
        let answer = frame(0x1, 0x5, 3, &[0x88; 12]);
        let next = frame(0x0, 0x0, 5, &[0; 20]);
        let mut bytes = answer.clone();
        bytes.extend_from_slice(&next[..10]);
        assert!(w.wrote(&bytes));
        assert_eq!(w.goaway(), None, "not in the middle of a frame");
        w.wrote(&next[10..]);
        let goaway = w.goaway().expect("at a frame boundary");
        assert_eq!(
            goaway,
            *frame(0x7, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0]).as_slice()
        );
        assert_eq!(w.goaway(), None, "handed out once");
    }

    #[test]
    fn only_a_frame_that_ends_a_stream_answers() {
        let mut w = AnswerWatch::default();
        // Headers that open an answer, a message: not the end.
        assert!(!w.wrote(&preamble()));
        assert!(!w.wrote(&frame(0x1, 0x4, 1, &[0x88])));
        assert!(!w.wrote(&frame(0x0, 0, 1, &[0; 300])));
        // END_STREAM-like flags on stream 0 (a SETTINGS ACK, a PING ACK) end nothing.
        assert!(!w.wrote(&frame(0x4, 0x1, 0, &[])));
        assert!(!w.wrote(&frame(0x6, 0x1, 0, &[0; 8])));
        // A GOAWAY or RST_STREAM is not an answer either.
        assert!(!w.wrote(&frame(0x3, 0, 1, &[0, 0, 0, 8])));
        // A trailer block split into HEADERS(END_STREAM) + CONTINUATION(END_HEADERS).
        assert!(!w.wrote(&frame(0x1, 0x1, 1, &[0x40; 10])));
        assert!(w.wrote(&frame(0x9, 0x4, 1, &[0x40; 10])));
        // A DATA frame that ends its stream answers too.
        let mut w = AnswerWatch::default();
        assert!(w.wrote(&frame(0x0, 0x1, 3, b"x")));
    }
}
