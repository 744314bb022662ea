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

/// An OCI bundle for a rootless `runc run` by `user`: a busybox root
/// filesystem (the user's, as an unpacked image would be), and runc's own
/// rootless config mapping the container's root to the user, running
/// `args` with `env` added, in `cwd`, without a terminal.
pub fn oci_bundle(
    dir: &Path,
    user: &crate::TestUser,
    args: &[&str],
    env: &[&str],
    cwd: &str,
) -> PathBuf {
    busybox(&dir.join("rootfs"));
    let out = Command::new("runc")
        .args(["spec", "--rootless", "--bundle"])
        .arg(dir)
        .output()
        .expect("runc is installed (scripts/install-deps.sh)");
    assert!(
        out.status.success(),
        "runc spec: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    c["process"]["terminal"] = false.into();
    c["process"]["args"] = args.into();
    c["process"]["cwd"] = cwd.into();
    for e in env {
        c["process"]["env"]
            .as_array_mut()
            .unwrap()
            .push((*e).into());
    }
    c["root"]["readonly"] = false.into();
    // Written by root: the mappings name the user instead.
    c["linux"]["uidMappings"][0]["hostID"] = user.uid.into();
    c["linux"]["gidMappings"][0]["hostID"] = user.gid.into();
    fs::write(&path, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
    let out = Command::new("chown")
        .arg("-R")
        .arg(format!("{}:{}", user.uid, user.gid))
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    dir.to_path_buf()
}
