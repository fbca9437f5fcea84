//! Exec events from the kernel's process connector (netlink `NETLINK_CONNECTOR`, `CN_IDX_PROC`): the
//! cheap way to learn that a process replaced its program. Needs `CAP_NET_ADMIN` (the agent runs as
//! root); without it the agent falls back to re-attesting before each push only.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::{Error, check};

const NETLINK_CONNECTOR: libc::c_int = 11;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_EXEC: u32 = 2;
/// nlmsghdr (16 bytes) + cn_msg header (20 bytes).
const HEADER: usize = 36;

/// A subscription to exec events.
#[derive(Debug)]
pub struct ExecEvents(tokio::io::unix::AsyncFd<OwnedFd>);

impl ExecEvents {
    /// Subscribes to the process connector. Must be called inside a tokio runtime.
    pub fn subscribe() -> Result<Self, Error> {
        // SAFETY: plain socket calls on values owned here; buffers are valid for their lengths.
        let fd = unsafe {
            let raw = check(
                "socket(NETLINK_CONNECTOR)",
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                    NETLINK_CONNECTOR,
                ),
            )?;
            let fd = OwnedFd::from_raw_fd(raw);
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            addr.nl_groups = CN_IDX_PROC;
            addr.nl_pid = 0;
            check(
                "bind(CN_IDX_PROC)",
                libc::bind(
                    fd.as_raw_fd(),
                    (&addr as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                ),
            )?;
            let mut msg = [0u8; HEADER + 4];
            let len = msg.len() as u32;
            msg[0..4].copy_from_slice(&len.to_ne_bytes());
            msg[4..6].copy_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
            msg[16..20].copy_from_slice(&CN_IDX_PROC.to_ne_bytes());
            msg[20..24].copy_from_slice(&CN_VAL_PROC.to_ne_bytes());
            msg[32..34].copy_from_slice(&4u16.to_ne_bytes());
            msg[36..40].copy_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
            let sent = libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0);
            if sent < 0 {
                return Err(Error::Syscall {
                    call: "send(PROC_CN_MCAST_LISTEN)",
                    source: std::io::Error::last_os_error(),
                });
            }
            fd
        };
        // SAFETY: `fd` is a valid, open socket owned by the AsyncFd for its whole life.
        let afd =
            unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| Error::Syscall {
                call: "epoll_ctl(netlink)",
                source: std::io::Error::other(e.to_string()),
            })?;
        Ok(Self(afd))
    }

    /// Waits for the next batch of exec events and returns the PIDs (thread-group IDs) that exec'd.
    /// An overrun of the socket buffer is reported as `Ok(None)`: some events were lost, so the
    /// caller should treat every process as possibly changed.
    pub async fn next(&self) -> Result<Option<Vec<u32>>, Error> {
        let mut buf = [0u8; 8192];
        loop {
            let mut guard = self.0.readable().await.map_err(|source| Error::Syscall {
                call: "epoll(netlink)",
                source,
            })?;
            let mut pids = Vec::new();
            loop {
                // SAFETY: `buf` is valid for writes of its length.
                let n = unsafe {
                    libc::recv(
                        self.0.get_ref().as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                    )
                };
                if n < 0 {
                    let err = std::io::Error::last_os_error();
                    match err.raw_os_error() {
                        Some(libc::EAGAIN) => break,
                        Some(libc::ENOBUFS) => return Ok(None),
                        _ => {
                            return Err(Error::Syscall {
                                call: "recv(netlink)",
                                source: err,
                            });
                        }
                    }
                }
                pids.extend(parse(&buf[..n as usize]));
            }
            guard.clear_ready();
            if !pids.is_empty() {
                return Ok(Some(pids));
            }
        }
    }
}

/// The exec'd thread-group IDs in one datagram.
fn parse(mut data: &[u8]) -> Vec<u32> {
    let mut out = Vec::new();
    while data.len() >= 16 {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len < 16 || len > data.len() {
            break;
        }
        let msg = &data[..len];
        // proc_event: what (4), cpu (4), timestamp (8), then exec: pid (4), tgid (4).
        if msg.len() >= HEADER + 24 {
            let what = u32::from_ne_bytes([msg[36], msg[37], msg[38], msg[39]]);
            if what == PROC_EVENT_EXEC {
                let tgid = i32::from_ne_bytes([msg[56], msg[57], msg[58], msg[59]]);
                if tgid > 0 {
                    out.push(tgid as u32);
                }
            }
        }
        // Netlink messages are 4-byte aligned.
        let step = (len + 3) & !3;
        if step >= data.len() {
            break;
        }
        data = &data[step..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sees_a_child_exec() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!(
                "*** SKIPPED sees_a_child_exec: the process connector needs CAP_NET_ADMIN ***"
            );
            return;
        }
        let events = ExecEvents::subscribe().expect("subscribe as root");
        let mut child = std::process::Command::new("/bin/true").spawn().unwrap();
        let pid = child.id();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let got = tokio::time::timeout_at(deadline, events.next())
                .await
                .expect("event in time");
            if got.unwrap().is_none_or(|pids| pids.contains(&pid)) {
                break;
            }
        }
        child.wait().unwrap();
    }
}
