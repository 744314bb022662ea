//! `libstj_preload.so`: overrides `getpwnam`, `getpwuid`, `getpwnam_r` and
//! `getpwuid_r` for one account, the job's user, described by the starter in
//! the environment variable `STJ_PASSWD` as a passwd line
//! (`name:x:uid:gid:gecos:home:shell`). Every other lookup goes to the real
//! implementation (found with `dlsym(RTLD_NEXT)`), unchanged.
//!
//! Why: sshd refuses a user it cannot look up ("Invalid user"), and an image
//! or a node often has no passwd entry for the job's uid (slot users,
//! minimal images). The starter also sets the entry's home to the job's
//! working directory (so sessions start where the job runs), and the shim
//! replaces a `nologin`/`false` (or missing) shell with a usable one. Both
//! choices are documented in README.
//!
//! One more thing, cosmetic: a program started through the kit's loader
//! (`ld-linux-x86-64.so.2 /.stj/bin/sshd ...`) is named after the loader in
//! `ps`/`top` inside the job. A constructor renames it after its own argv[0].
//!
//! And one that lets sshd read its session files from inside any
//! container (only with `STJ_PASSWD` set, i.e. in a session's sshd): the
//! starter's helper gives sshd a read-only detached copy of the session's
//! directory as fd [`SESSION_FD`], and sshd names its files
//! `/proc/self/fd/3/...` (it reads authorized_keys long after start-up).
//! `closefrom`/`close_range` (sshd closes every fd above stderr at
//! start-up) spare that fd, and a constructor marks it close-on-exec, so
//! no program sshd runs — the session's shell — inherits it.

use std::cell::RefCell;
use std::ffi::{CStr, CString};
use std::sync::OnceLock;

use libc::{c_char, c_int, gid_t, passwd, size_t, uid_t};

pub const ENV: &str = "STJ_PASSWD";

/// The fd on the session's directory that a session's sshd keeps.
pub const SESSION_FD: c_int = 3;

/// The process name (`comm`) for a program whose argv[0] is `argv0`, if the
/// current one is the loader's (`ld-...`); at most 15 bytes, as the kernel
/// keeps.
pub fn own_name(current: &[u8], argv0: &[u8]) -> Option<Vec<u8>> {
    if !current.starts_with(b"ld-") {
        return None;
    }
    let base = argv0.rsplit(|&b| b == b'/').next().unwrap_or(argv0);
    if base.is_empty() || base.starts_with(b"ld-") {
        return None;
    }
    Some(base[..base.len().min(15)].to_vec())
}

/// Runs when the shim is loaded, with the program's argc and argv (glibc
/// passes them to `.init_array` functions).
extern "C" fn rename_after_argv0(
    argc: c_int,
    argv: *const *const c_char,
    _env: *const *const c_char,
) {
    if argc < 1 || argv.is_null() {
        return;
    }
    // SAFETY: glibc hands constructors the process's argv; argv[0] is a C
    // string. PR_GET_NAME writes at most 16 bytes into `current`.
    unsafe {
        let argv0 = *argv;
        if argv0.is_null() {
            return;
        }
        let mut current = [0u8; 17];
        if libc::prctl(libc::PR_GET_NAME, current.as_mut_ptr()) != 0 {
            return;
        }
        let len = current.iter().position(|&b| b == 0).unwrap_or(16);
        if let Some(name) = own_name(&current[..len], CStr::from_ptr(argv0).to_bytes()) {
            if let Ok(c) = CString::new(name) {
                libc::prctl(libc::PR_SET_NAME, c.as_ptr());
            }
        }
    }
}

#[used]
#[link_section = ".init_array"]
static RENAME: extern "C" fn(c_int, *const *const c_char, *const *const c_char) =
    rename_after_argv0;

/// In a session's sshd (see the module comment): nothing sshd runs gets
/// the session's fd.
extern "C" fn session_fd_cloexec(
    _argc: c_int,
    _argv: *const *const c_char,
    _env: *const *const c_char,
) {
    if in_session() {
        // SAFETY: fcntl with constant arguments on this process's fd table.
        unsafe { libc::fcntl(SESSION_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

#[used]
#[link_section = ".init_array"]
static SESSION_FD_CLOEXEC: extern "C" fn(c_int, *const *const c_char, *const *const c_char) =
    session_fd_cloexec;

fn in_session() -> bool {
    // SAFETY: getenv with a NUL-terminated name; no allocation.
    !unsafe { libc::getenv(c"STJ_PASSWD".as_ptr()) }.is_null()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: CString,
    pub passwd: CString,
    pub uid: uid_t,
    pub gid: gid_t,
    pub gecos: CString,
    pub dir: CString,
    pub shell: CString,
}

/// Parses one passwd line; None if it is not exactly seven fields with
/// numeric uid and gid.
pub fn parse(line: &str) -> Option<Entry> {
    let f: Vec<&str> = line.trim_end_matches('\n').split(':').collect();
    if f.len() != 7 || f[0].is_empty() {
        return None;
    }
    let c = |s: &str| CString::new(s).ok();
    Some(Entry {
        name: c(f[0])?,
        passwd: c(f[1])?,
        uid: f[2].parse().ok()?,
        gid: f[3].parse().ok()?,
        gecos: c(f[4])?,
        dir: c(f[5])?,
        shell: c(f[6])?,
    })
}

/// The shell sessions get: the entry's own, unless it is a placeholder that
/// refuses logins (`nologin`, `false`) or is missing from this filesystem
/// (an image); then /bin/bash, else /bin/sh.
pub fn usable_shell(shell: &CStr) -> CString {
    let exists = |p: &CStr| {
        // SAFETY: access() on a NUL-terminated path.
        unsafe { libc::access(p.as_ptr(), libc::X_OK) == 0 }
    };
    let name = shell
        .to_bytes()
        .rsplit(|&b| b == b'/')
        .next()
        .unwrap_or(b"");
    if !matches!(name, b"nologin" | b"false") && !shell.is_empty() && exists(shell) {
        return shell.to_owned();
    }
    if exists(c"/bin/bash") {
        c"/bin/bash".to_owned()
    } else {
        c"/bin/sh".to_owned()
    }
}

fn entry() -> Option<Entry> {
    // getenv, not std::env: no locks, no allocation before we know we need it.
    // SAFETY: getenv returns null or a NUL-terminated string owned by libc.
    let v = unsafe { libc::getenv(c"STJ_PASSWD".as_ptr()) };
    if v.is_null() {
        return None;
    }
    // SAFETY: checked non-null above.
    let s = unsafe { CStr::from_ptr(v) }.to_str().ok()?;
    let mut e = parse(s)?;
    e.shell = usable_shell(&e.shell);
    Some(e)
}

/// Copies `e` into the caller's buffer, as the `_r` functions must.
/// ERANGE when the buffer is too small, so callers retry with a larger one.
///
/// # Safety
/// `pwd`, `buf` (of `buflen` bytes) and `result` must be valid for writes.
pub unsafe fn fill(
    e: &Entry,
    pwd: *mut passwd,
    buf: *mut c_char,
    buflen: size_t,
    result: *mut *mut passwd,
) -> c_int {
    let fields = [&e.name, &e.passwd, &e.gecos, &e.dir, &e.shell];
    let need: usize = fields.iter().map(|s| s.as_bytes_with_nul().len()).sum();
    if !result.is_null() {
        *result = std::ptr::null_mut();
    }
    if pwd.is_null() || buf.is_null() || need > buflen {
        return libc::ERANGE;
    }
    let mut at = 0;
    let mut ptrs = [std::ptr::null_mut::<c_char>(); 5];
    for (i, s) in fields.iter().enumerate() {
        let bytes = s.as_bytes_with_nul();
        std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), buf.add(at), bytes.len());
        ptrs[i] = buf.add(at);
        at += bytes.len();
    }
    (*pwd).pw_name = ptrs[0];
    (*pwd).pw_passwd = ptrs[1];
    (*pwd).pw_uid = e.uid;
    (*pwd).pw_gid = e.gid;
    (*pwd).pw_gecos = ptrs[2];
    (*pwd).pw_dir = ptrs[3];
    (*pwd).pw_shell = ptrs[4];
    if !result.is_null() {
        *result = pwd;
    }
    0
}

type NamR = unsafe extern "C" fn(
    *const c_char,
    *mut passwd,
    *mut c_char,
    size_t,
    *mut *mut passwd,
) -> c_int;
type UidR =
    unsafe extern "C" fn(uid_t, *mut passwd, *mut c_char, size_t, *mut *mut passwd) -> c_int;
type Nam = unsafe extern "C" fn(*const c_char) -> *mut passwd;
type Uid = unsafe extern "C" fn(uid_t) -> *mut passwd;

fn next(symbol: &CStr, cache: &OnceLock<usize>) -> usize {
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name.
    *cache.get_or_init(|| unsafe { libc::dlsym(libc::RTLD_NEXT, symbol.as_ptr()) } as usize)
}

macro_rules! real {
    ($name:literal, $ty:ty) => {{
        static CACHE: OnceLock<usize> = OnceLock::new();
        let p = next($name, &CACHE);
        // SAFETY: the symbol of that name in libc has exactly this signature.
        (p != 0).then(|| unsafe { std::mem::transmute::<usize, $ty>(p) })
    }};
}

thread_local! {
    /// Storage behind the non-reentrant getpwnam/getpwuid results, per thread
    /// like glibc's own static buffer is per process.
    static STATIC: RefCell<(passwd, Vec<c_char>)> = RefCell::new((
        // SAFETY: passwd is plain data; all-zero is a valid (empty) value.
        unsafe { std::mem::zeroed() },
        vec![0; 4096],
    ));
}

fn static_result(e: &Entry) -> *mut passwd {
    STATIC.with(|s| {
        let mut s = s.borrow_mut();
        let (pwd, buf) = &mut *s;
        let mut out = std::ptr::null_mut();
        // SAFETY: pwd and buf are ours and live as long as the thread.
        let rc = unsafe { fill(e, pwd, buf.as_mut_ptr(), buf.len(), &mut out) };
        if rc == 0 {
            out
        } else {
            std::ptr::null_mut()
        }
    })
}

fn is_ours(e: &Entry, name: *const c_char) -> bool {
    // SAFETY: callers pass a NUL-terminated name (checked non-null).
    !name.is_null() && unsafe { CStr::from_ptr(name) } == e.name.as_c_str()
}

/// # Safety
/// As libc's getpwnam_r.
#[no_mangle]
pub unsafe extern "C" fn getpwnam_r(
    name: *const c_char,
    pwd: *mut passwd,
    buf: *mut c_char,
    buflen: size_t,
    result: *mut *mut passwd,
) -> c_int {
    if let Some(e) = entry().filter(|e| is_ours(e, name)) {
        return fill(&e, pwd, buf, buflen, result);
    }
    match real!(c"getpwnam_r", NamR) {
        Some(f) => f(name, pwd, buf, buflen, result),
        None => libc::ENOSYS,
    }
}

/// # Safety
/// As libc's getpwuid_r.
#[no_mangle]
pub unsafe extern "C" fn getpwuid_r(
    uid: uid_t,
    pwd: *mut passwd,
    buf: *mut c_char,
    buflen: size_t,
    result: *mut *mut passwd,
) -> c_int {
    if let Some(e) = entry().filter(|e| e.uid == uid) {
        return fill(&e, pwd, buf, buflen, result);
    }
    match real!(c"getpwuid_r", UidR) {
        Some(f) => f(uid, pwd, buf, buflen, result),
        None => libc::ENOSYS,
    }
}

/// # Safety
/// As libc's getpwnam.
#[no_mangle]
pub unsafe extern "C" fn getpwnam(name: *const c_char) -> *mut passwd {
    if let Some(e) = entry().filter(|e| is_ours(e, name)) {
        return static_result(&e);
    }
    match real!(c"getpwnam", Nam) {
        Some(f) => f(name),
        None => std::ptr::null_mut(),
    }
}

/// # Safety
/// As libc's getpwuid.
#[no_mangle]
pub unsafe extern "C" fn getpwuid(uid: uid_t) -> *mut passwd {
    if let Some(e) = entry().filter(|e| e.uid == uid) {
        return static_result(&e);
    }
    match real!(c"getpwuid", Uid) {
        Some(f) => f(uid),
        None => std::ptr::null_mut(),
    }
}

/// Closes `[first, last]` but the session fd in a session's sshd.
fn close_sparing(first: libc::c_uint, last: libc::c_uint, flags: libc::c_int) -> c_int {
    let range = |a: libc::c_uint, b: libc::c_uint| {
        // SAFETY: close_range(2) on this process's own fd table.
        unsafe { libc::syscall(libc::SYS_close_range, a, b, flags) as c_int }
    };
    let keep = SESSION_FD as libc::c_uint;
    if !in_session() || keep < first || keep > last {
        return range(first, last);
    }
    let below = if first < keep {
        range(first, keep - 1)
    } else {
        0
    };
    let above = if keep < last {
        range(keep + 1, last)
    } else {
        0
    };
    if below != 0 {
        below
    } else {
        above
    }
}

/// # Safety
/// As libc's closefrom. (OpenSSH may bring its own closefrom, which calls
/// close_range: both are covered.)
#[no_mangle]
pub unsafe extern "C" fn closefrom(lowfd: c_int) {
    close_sparing(lowfd.max(0) as libc::c_uint, libc::c_uint::MAX, 0);
}

/// # Safety
/// As libc's close_range.
#[no_mangle]
pub unsafe extern "C" fn close_range(
    first: libc::c_uint,
    last: libc::c_uint,
    flags: c_int,
) -> c_int {
    close_sparing(first, last, flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_only_what_the_loader_started() {
        assert_eq!(
            own_name(b"ld-linux-x86-64", b"/.stj/bin/sshd"),
            Some(b"sshd".to_vec())
        );
        assert_eq!(own_name(b"sshd", b"/usr/sbin/sshd"), None);
        assert_eq!(own_name(b"ld-linux-x86-64", b"ld-linux-x86-64.so.2"), None);
        assert_eq!(
            own_name(b"ld-linux-x86-64", b"/x/a-very-long-program-name"),
            Some(b"a-very-long-pro".to_vec())
        );
    }

    #[test]
    fn parses_a_passwd_line() {
        let e = parse("slot1:x:5001:5001:stj slot:/work:/bin/sh").unwrap();
        assert_eq!(e.uid, 5001);
        assert_eq!(e.dir.to_str().unwrap(), "/work");
        assert!(parse("a:x:1:2:g:/h").is_none());
        assert!(parse("a:x:one:2:g:/h:/bin/sh").is_none());
    }

    #[test]
    fn fill_reports_erange_for_small_buffers_and_fits_exactly() {
        let e = parse("u:x:7:8::/w:/bin/sh").unwrap();
        let need = 2 + 2 + 1 + 3 + 8;
        let mut pwd: passwd = unsafe { std::mem::zeroed() };
        let mut buf = vec![0 as c_char; need];
        let mut res = std::ptr::NonNull::dangling().as_ptr();
        assert_eq!(
            unsafe { fill(&e, &mut pwd, buf.as_mut_ptr(), need - 1, &mut res) },
            libc::ERANGE
        );
        assert!(res.is_null());
        assert_eq!(
            unsafe { fill(&e, &mut pwd, buf.as_mut_ptr(), need, &mut res) },
            0
        );
        assert_eq!(res, &mut pwd as *mut passwd);
        assert_eq!(
            unsafe { CStr::from_ptr(pwd.pw_shell) }.to_str().unwrap(),
            "/bin/sh"
        );
        assert_eq!(pwd.pw_uid, 7);
    }
}
