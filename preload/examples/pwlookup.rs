//! A small program for the shim's tests: looks an account up the ways sshd
//! does and prints what it got.
//!   pwlookup name NAME [BUFSIZE]   getpwnam_r with a BUFSIZE-byte buffer
//!   pwlookup uid UID [BUFSIZE]     getpwuid_r
//!   pwlookup plain NAME            getpwnam
//!   pwlookup closefrom|close_range closefrom(3) or close_range(3, ~0, 0),
//!                                  then prints `fd3 open|closed cloexec 0|1
//!                                  fd4 open|closed`
//! Prints `found NAME UID GID HOME SHELL`, `notfound` or `erange`.

use std::ffi::{CStr, CString};

fn show(p: &libc::passwd) {
    let s = |c: *const libc::c_char| unsafe { CStr::from_ptr(c) }.to_string_lossy().into_owned();
    println!(
        "found {} {} {} {} {}",
        s(p.pw_name),
        p.pw_uid,
        p.pw_gid,
        s(p.pw_dir),
        s(p.pw_shell)
    );
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let size: usize = a.get(3).and_then(|s| s.parse().ok()).unwrap_or(4096);
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; size];
    let mut res: *mut libc::passwd = std::ptr::null_mut();
    if a[1] == "closefrom" || a[1] == "close_range" {
        extern "C" {
            fn closefrom(lowfd: libc::c_int);
            fn close_range(
                first: libc::c_uint,
                last: libc::c_uint,
                flags: libc::c_int,
            ) -> libc::c_int;
        }
        if a[1] == "closefrom" {
            unsafe { closefrom(3) };
        } else {
            unsafe { close_range(3, libc::c_uint::MAX, 0) };
        }
        let flags = |fd| unsafe { libc::fcntl(fd, libc::F_GETFD) };
        let state = |fd| if flags(fd) >= 0 { "open" } else { "closed" };
        println!(
            "fd3 {} cloexec {} fd4 {}",
            state(3),
            (flags(3) >= 0 && flags(3) & libc::FD_CLOEXEC != 0) as u8,
            state(4)
        );
        return;
    }
    let rc = match a[1].as_str() {
        "name" => {
            let n = CString::new(a[2].clone()).unwrap();
            unsafe { libc::getpwnam_r(n.as_ptr(), &mut pwd, buf.as_mut_ptr(), size, &mut res) }
        }
        "uid" => unsafe {
            libc::getpwuid_r(
                a[2].parse().unwrap(),
                &mut pwd,
                buf.as_mut_ptr(),
                size,
                &mut res,
            )
        },
        _ => {
            let n = CString::new(a[2].clone()).unwrap();
            let p = unsafe { libc::getpwnam(n.as_ptr()) };
            if p.is_null() {
                println!("notfound");
            } else {
                show(unsafe { &*p });
            }
            return;
        }
    };
    if rc == libc::ERANGE {
        println!("erange");
    } else if res.is_null() {
        println!("notfound");
    } else {
        show(&pwd);
    }
}
