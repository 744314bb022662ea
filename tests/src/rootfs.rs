//! Tiny root filesystems for image jobs, built from Debian's busybox-static:
//! busybox and its applet links, no sshd, no OpenSSL, no /etc/passwd.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds the rootfs at `dir` and returns it. `/work` is world-writable
/// (sticky), for jobs of any uid.
pub fn busybox(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    fs::copy("/bin/busybox", bin.join("busybox"))
        .expect("busybox-static is installed (scripts/install-deps.sh)");
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            symlink("busybox", bin.join(applet)).unwrap();
        }
    }
    for d in ["work", "tmp", "etc"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    fs::set_permissions(dir.join("work"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(dir.join("etc/image-marker"), "busybox image\n").unwrap();
    assert!(!dir.join("etc/passwd").exists() && !dir.join("usr/sbin/sshd").exists());
    dir.to_path_buf()
}
