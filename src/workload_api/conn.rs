//! A connection's socket: woken only for what the agent waits on, and written once per flush.
//!
//! Two wake-ups per call that a tokio `UnixStream` under h2 costs and that are not needed:
//!
//! - **Writable events.** tokio registers every socket for readable and writable, edge-triggered.
//!   A Unix socket turns writable again each time its peer reads what it was sent, so a client
//!   that reads its answer wakes the agent a second time per call with nothing to do (`epoll_wait`
//!   returns `EPOLLOUT` alone). Answers are small and the socket buffer is large, so writes almost
//!   never wait: a connection is registered for readable only, and the first write that finds the
//!   buffer full (a client that stopped reading) re-registers the socket for both, as tokio would
//!   have, for the rest of the connection. No extra descriptor at any time.
//! - **Split answers.** h2 writes a DATA frame it holds by reference on its own before it encodes
//!   the next frame, so a unary answer (FetchJWTSVID, ValidateJWTSVID) left in two writes — headers
//!   and message, then the trailers — and the client woke twice to read one answer. Here writes are
//!   collected and go out in one `write` when h2 flushes (it flushes whenever it has written what
//!   it had), and the connection says it has no vectored writes, so h2 copies messages under 1 KiB
//!   into its buffer instead of holding them by reference: the whole answer is one write.
//!   Collected bytes are bounded ([`MAX_COLLECTED`]); the buffer is freed once written.

use std::io::{self, IoSlice, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::unix::AsyncFd;
use tokio::io::{Interest, ReadBuf};

use crate::sys::socket::register;

/// At most this much written and not yet flushed is held; more waits for the socket first. h2's own
/// write buffer is this size, so an answer that fits it leaves in one write, and a connection whose
/// client stopped reading holds at most this much more than h2 already does.
const MAX_COLLECTED: usize = 16 * 1024;

/// How many times in a row a flush is put off while other streams are making a push.
const MAX_DEFERRED: u8 = 4;

/// An accepted connection's socket (see the module documentation).
pub(crate) struct Conn {
    socket: Socket,
    /// Written by h2, not yet sent: sent in one `write` at the next flush.
    collected: BytesMut,
    /// Flushes put off since the last send.
    deferred: u8,
}

/// The registered socket.
struct Socket {
    /// `None` only after re-registering failed: the connection then reads and writes as broken.
    io: Option<AsyncFd<UnixStream>>,
    /// Registered for writable as well (a write once found the socket buffer full).
    writable_too: bool,
}

impl Conn {
    /// Takes over `stream` from tokio's registration, registered for readable only.
    pub(crate) fn new(stream: tokio::net::UnixStream) -> io::Result<Self> {
        // Non-blocking, as tokio left it.
        let stream = stream.into_std()?;
        Ok(Self {
            socket: Socket {
                io: Some(register(stream, Interest::READABLE)?),
                writable_too: false,
            },
            collected: BytesMut::new(),
            deferred: 0,
        })
    }

    /// Reads into `buf` once something can be read (one `read` when data is waiting).
    pub(crate) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let io = self.socket.io()?;
        loop {
            let mut guard = ready!(io.poll_read_ready(cx))?;
            let room = buf.remaining();
            match guard.try_io(|s| crate::sys::socket::read_into(s.as_fd(), buf)) {
                Ok(Ok(n)) => {
                    // Less than asked for: the socket is drained (the kernel hands over all it
                    // has), so the next read waits for the next event instead of trying once more.
                    if n > 0 && n < room {
                        guard.clear_ready();
                    }
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Nothing there after all: readiness was cleared; wait for the next event.
                Err(_would_block) => {}
            }
        }
    }

    /// Collects `bufs` for the next flush (sending what was collected first if it would grow past
    /// [`MAX_COLLECTED`]; a larger write goes straight out).
    pub(crate) fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if self.collected.len() + len > MAX_COLLECTED {
            ready!(self.poll_send_collected(cx))?;
            if len > MAX_COLLECTED {
                return self.socket.poll_send(cx, bufs);
            }
        }
        for b in bufs {
            self.collected.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    /// Sends everything collected.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.collected.is_empty()
            && self.deferred < MAX_DEFERRED
            && self.collected.len() < MAX_COLLECTED / 2
            && super::stream::pushes_under_way()
        {
            self.deferred += 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.deferred = 0;
        self.poll_send_collected(cx)
    }

    /// Sends everything collected, then ends the writing half (h2's close).
    pub(crate) fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_collected(cx))?;
        Poll::Ready(self.socket.io()?.get_ref().shutdown(Shutdown::Write))
    }

    fn poll_send_collected(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.collected.is_empty() {
            let n = ready!(self.socket.poll_send(cx, &[IoSlice::new(&self.collected)]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.collected.advance(n);
        }
        // Nothing is kept between answers.
        if self.collected.capacity() > 0 {
            self.collected = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl Socket {
    fn io(&self) -> io::Result<&AsyncFd<UnixStream>> {
        self.io.as_ref().ok_or_else(broken)
    }

    /// Writes `bufs` (one `writev`), waiting for room only when the socket buffer is full.
    fn poll_send(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        loop {
            if self.writable_too {
                let io = self.io()?;
                let mut guard = ready!(io.poll_write_ready(cx))?;
                match guard.try_io(|s| {
                    let mut socket = s.get_ref();
                    socket.write_vectored(bufs)
                }) {
                    Ok(result) => return Poll::Ready(result),
                    Err(_would_block) => continue,
                }
            }
            let mut socket = self.io()?.get_ref();
            match socket.write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.register_writable(cx)?,
                result => return Poll::Ready(result),
            }
        }
    }

    /// From now on registered for readable and writable. The task that writes is the one that
    /// reads (h2 drives both directions of a connection from one task): its read wake-up, which
    /// went with the old registration, is taken again on the new one.
    fn register_writable(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let old = self.io.take().ok_or_else(broken)?;
        let stream = old.into_inner();
        let both = register(stream, Interest::READABLE | Interest::WRITABLE)?;
        // Pending registers the read wake-up; already readable, the task is polled again to read
        // (nothing else may wake it while the client is not reading).
        if both.poll_read_ready(cx).is_ready() {
            cx.waker().wake_by_ref();
        }
        self.io = Some(both);
        self.writable_too = true;
        Ok(())
    }
}

fn broken() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the connection's socket could not be registered for writing",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pair() -> (Conn, tokio::net::UnixStream) {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        (Conn::new(a).unwrap(), b)
    }

    async fn write(conn: &mut Conn, bytes: &[u8]) -> usize {
        poll_fn(|cx| conn.poll_write_vectored(cx, &[IoSlice::new(bytes)]))
            .await
            .unwrap()
    }

    async fn read(conn: &Conn) -> Vec<u8> {
        let mut storage = vec![0u8; 64 * 1024];
        let mut buf = ReadBuf::new(&mut storage);
        poll_fn(|cx| conn.poll_read(cx, &mut buf)).await.unwrap();
        buf.filled().to_vec()
    }

    /// Written pieces stay in the agent until h2 flushes; then the peer has them all at once.
    #[tokio::test]
    async fn writes_leave_together_at_the_flush() {
        let (mut conn, mut peer) = pair();
        assert_eq!(write(&mut conn, b"headers+message|").await, 16);
        assert_eq!(write(&mut conn, b"trailers").await, 8);
        let mut got = [0u8; 64];
        assert_eq!(
            peer.try_read(&mut got).unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "nothing is sent before the flush"
        );
        poll_fn(|cx| conn.poll_flush(cx)).await.unwrap();
        let n = peer.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"headers+message|trailers");
        assert_eq!(
            conn.collected.capacity(),
            0,
            "no buffer kept between answers"
        );
        // Shutdown sends what is left first, then the peer sees the end.
        write(&mut conn, b"goaway").await;
        poll_fn(|cx| conn.poll_shutdown(cx)).await.unwrap();
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"goaway");
    }

    /// While other streams are making a push, a flush is put off (the connection's task is woken to
    /// come back after them), at most [`MAX_DEFERRED`] times in a row; what it collected meanwhile
    /// then leaves in one write.
    #[tokio::test]
    async fn a_flush_waits_for_pushes_under_way_a_bounded_number_of_times() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let (mut conn, mut peer) = pair();
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let pushing = super::super::stream::Pushing::start();
        let mut expected = Vec::new();
        for i in 0..MAX_DEFERRED {
            let piece = format!("answer {i}|");
            write(&mut conn, piece.as_bytes()).await;
            expected.extend_from_slice(piece.as_bytes());
            assert!(
                conn.poll_flush(&mut cx).is_pending(),
                "flush {i} is put off while a push is under way"
            );
            assert_eq!(
                woken.0.load(Ordering::SeqCst),
                usize::from(i) + 1,
                "and the task is woken to come back"
            );
            let mut none = [0u8; 8];
            assert_eq!(
                peer.try_read(&mut none).unwrap_err().kind(),
                io::ErrorKind::WouldBlock,
                "nothing sent while the flush is put off"
            );
        }
        write(&mut conn, b"last").await;
        expected.extend_from_slice(b"last");
        assert!(
            conn.poll_flush(&mut cx).is_ready(),
            "never put off more than MAX_DEFERRED times in a row"
        );
        drop(pushing);
        let mut got = vec![0u8; 1024];
        let n = peer.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], &expected[..], "everything, at the last flush");
        // The count starts again after a send.
        assert_eq!(conn.deferred, 0);
    }

    /// A client that stops reading: writes wait (registered for writable from then on) and go on
    /// once it reads; requests it sends meanwhile still wake the agent; nothing is lost.
    #[tokio::test]
    async fn a_client_that_stops_reading_makes_writes_wait_not_fail() {
        let (mut conn, mut peer) = pair();
        let chunk = vec![7u8; MAX_COLLECTED + 1];
        let mut sent = 0usize;
        // Fill the socket until a write waits.
        loop {
            let pending =
                poll_fn(|cx| Poll::Ready(conn.poll_write_vectored(cx, &[IoSlice::new(&chunk)])))
                    .await;
            match pending {
                Poll::Ready(n) => sent += n.unwrap(),
                Poll::Pending => break,
            }
            assert!(sent < 64 << 20, "the socket never filled");
        }
        assert!(
            conn.socket.writable_too,
            "re-registered for writable once full"
        );
        // The peer sends a request while not reading: the agent's read wakes for it.
        peer.write_all(b"request").await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), read(&conn))
            .await
            .expect("the read side still wakes after re-registering");
        assert_eq!(got, b"request");
        // The peer drains; the waiting write completes, and every byte arrives.
        let reader = tokio::spawn(async move {
            let mut total = 0usize;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match peer.read(&mut buf).await.unwrap() {
                    0 => return total,
                    n => {
                        assert!(buf[..n].iter().all(|&b| b == 7));
                        total += n;
                    }
                }
            }
        });
        let n = tokio::time::timeout(Duration::from_secs(5), write(&mut conn, &chunk))
            .await
            .expect("the waiting write completes once the client reads");
        sent += n;
        poll_fn(|cx| conn.poll_shutdown(cx)).await.unwrap();
        drop(conn);
        assert_eq!(reader.await.unwrap(), sent);
    }
}
