//! User and group names through the system's name service (`getpwuid_r`, `getgrgid_r`).
//!
//! These may block (NSS can reach LDAP or SSSD): call them off the async workers.

use std::ffi::CStr;

/// The name of user `uid`, `None` if the system knows no such user.
pub fn user_name(uid: u32) -> Option<String> {
    lookup(
        // SAFETY (for lookup): every pointer is valid for the sizes given.
        |pwd: &mut libc::passwd, buf, result| unsafe {
            libc::getpwuid_r(uid, pwd, buf.as_mut_ptr().cast(), buf.len(), result)
        },
        |pwd| pwd.pw_name,
    )
}

/// The name of group `gid`, `None` if the system knows no such group.
pub fn group_name(gid: u32) -> Option<String> {
    lookup(
        // SAFETY (for lookup): every pointer is valid for the sizes given.
        |grp: &mut libc::group, buf, result| unsafe {
            libc::getgrgid_r(gid, grp, buf.as_mut_ptr().cast(), buf.len(), result)
        },
        |grp| grp.gr_name,
    )
}

/// The `get*_r` pattern once: call with a buffer, grow it on `ERANGE` (up to 1 MiB), and read the
/// name the record points at (inside the buffer).
fn lookup<T>(
    mut call: impl FnMut(&mut T, &mut [u8], &mut *mut T) -> libc::c_int,
    name: impl Fn(&T) -> *const libc::c_char,
) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: the libc records (passwd, group) are plain C structs; all-zero is a valid
        // out-parameter.
        let mut record: T = unsafe { std::mem::zeroed() };
        let mut result: *mut T = std::ptr::null_mut();
        let ret = call(&mut record, &mut buf, &mut result);
        if ret == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        let ptr = name(&record);
        if ret != 0 || result.is_null() || ptr.is_null() {
            return None;
        }
        // SAFETY: the name is a NUL-terminated string inside `buf`, alive for this scope.
        return Some(
            unsafe { CStr::from_ptr(ptr) }
                .to_string_lossy()
                .into_owned(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_known() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(group_name(0).as_deref(), Some("root"));
        assert_eq!(user_name(3_999_999_999), None);
    }
}
