//! User namespaces: which user made the one a caller runs in, for its fair share (`limits.rs`).
//!
//! A user with subordinate ids (`/etc/subuid`, `newuidmap`) can run processes under thousands of
//! uids of its own inside a user namespace it made, and to the kernel each of those uids is a user
//! of its own. Counted by uid alone, each would get a share of its own.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `NS_GET_PARENT` (`_IO(0xb7, 0x2)`): a new descriptor of the parent namespace.
const NS_GET_PARENT: libc::c_ulong = 0xb702;
/// `NS_GET_OWNER_UID` (`_IO(0xb7, 0x4)`): the uid that made a user namespace, as this process sees it.
const NS_GET_OWNER_UID: libc::c_ulong = 0xb704;
/// User namespaces nest at most 32 deep.
const MAX_DEPTH: usize = 33;

/// What [`share_owner`] finds: the user, and whether that user made the caller's namespace
/// directly in the agent's own user namespace (a namespace a host user made, whose `uid_map` root
/// or `newuidmap` wrote from `/etc/subuid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareOwner {
    pub uid: u32,
    pub made_in_agent_ns: bool,
}

/// The uid whose share a caller in the user namespace `ns` (an open `/proc/<pid>/ns/user`) counts
/// against, where that is not the caller's own uid: the maker of the outermost namespace, between
/// `ns` and the agent's own user namespace (inode `agent_ns`), that a user other than root made.
///
/// `None` when root made every one of them (a container runtime maps each container to uids of its
/// own on purpose: each keeps its own share), when `ns` is the agent's own namespace, or when the
/// chain cannot be followed up to the agent's namespace (the caller is not below it).
pub fn share_owner(ns: OwnedFd, agent_ns: u64) -> Option<ShareOwner> {
    // Makers, innermost first.
    let mut owners = Vec::new();
    let mut current = ns;
    for _ in 0..MAX_DEPTH {
        if inode(&current)? == agent_ns {
            let uid = owners.iter().rev().copied().find(|&uid| uid != 0)?;
            return Some(ShareOwner {
                uid,
                made_in_agent_ns: owners.len() == 1,
            });
        }
        let mut uid: libc::uid_t = 0;
        // SAFETY: an open nsfs descriptor of a user namespace and a writable `uid_t`.
        let ret = unsafe { libc::ioctl(current.as_raw_fd(), NS_GET_OWNER_UID, &mut uid) };
        if ret != 0 {
            return None;
        }
        owners.push(uid);
        // SAFETY: an open nsfs descriptor; the kernel returns a new descriptor or -1 (EPERM when
        // the parent is outside this process's namespace).
        let parent = unsafe { libc::ioctl(current.as_raw_fd(), NS_GET_PARENT) };
        if parent < 0 {
            return None;
        }
        // SAFETY: the kernel returned a new file descriptor that nothing else owns.
        current = unsafe { OwnedFd::from_raw_fd(parent) };
    }
    None
}

/// The host uids a user namespace maps, from its `uid_map` as the agent reads it (the kernel gives
/// each range's second column in the reader's namespace): `(first, count)` per line, at most the
/// kernel's 340 lines. A line that does not parse is left out.
pub fn mapped_uids(uid_map: &str) -> Vec<(u32, u32)> {
    uid_map
        .lines()
        .take(340)
        .filter_map(|line| {
            let mut fields = line.split_whitespace().skip(1);
            let first: u32 = fields.next()?.parse().ok()?;
            let count: u32 = fields.next()?.parse().ok()?;
            (count > 0).then_some((first, count))
        })
        .collect()
}

/// The namespace's inode number (what its `/proc/<pid>/ns/user` link names).
fn inode(ns: &OwnedFd) -> Option<u64> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: an open descriptor and a writable `stat`.
    let ret = unsafe { libc::fstat(ns.as_raw_fd(), &mut st) };
    (ret == 0).then_some(st.st_ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_map_is_read_as_host_ranges() {
        let map = "         0     300000      65536\n     65536       1000          1\nbad line\n 1 2 0\n";
        assert_eq!(mapped_uids(map), [(300_000, 65_536), (1000, 1)]);
        assert!(mapped_uids("").is_empty());
    }

    fn own_user_ns() -> OwnedFd {
        OwnedFd::from(std::fs::File::open("/proc/self/ns/user").unwrap())
    }

    #[test]
    fn the_agents_own_namespace_has_no_other_owner() {
        let ino = inode(&own_user_ns()).unwrap();
        assert_eq!(share_owner(own_user_ns(), ino), None);
    }

    #[test]
    fn a_namespace_that_does_not_lead_to_the_agents_has_none() {
        // An inode no namespace has: the walk ends at the top (EPERM or no parent) without it.
        assert_eq!(share_owner(own_user_ns(), u64::MAX), None);
    }
}
