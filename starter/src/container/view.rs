//! The job's view of the filesystem, set up by its init (root, in the new
//! mount namespace, before the job starts).
//!
//! - Every job: nothing mounted here leaks to the node (private mounts), a
//!   private /proc, /tmp and devpts of its own.
//! - Image jobs: the root is a fresh, read-only tmpfs holding the image's
//!   top-level entries as bind mounts beside our own /proc, /dev, /tmp and
//!   the sshd kit at /.stj. The image directory is opened as the job's user
//!   (its owner must be able to read it) and nothing is ever created or
//!   changed in it: images are mounted, not modified.
//! - Confined jobs (slot users): the node's filesystems are read-only and
//!   nosuid in the job's view except the job's working directory and its
//!   session files, so a slot uid can leave files behind only where the
//!   starter sweeps them (`slots.rs`), and no set-id bit works inside.

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::Path;

use anyhow::{Context, Result};
use nix::fcntl::OFlag;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{Gid, Uid};

use super::ContainerSpec;

fn mnt(
    src: &str,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    mount(Some(src), target, fstype, flags, data)
        .with_context(|| format!("cannot mount {src} on {}", target.display()))
}

/// `mount_setattr(2)` on `path` and, with `recursive`, everything under it.
fn set_mount_attrs(path: &Path, set: u64, clear: u64, recursive: bool) -> Result<()> {
    set_mount_attrs_at(None, path, set, clear, recursive)
}

/// `set_mount_attrs` on the mount `fd` is on (when given; `path` then only
/// names it in messages).
pub(super) fn set_mount_attrs_at(
    fd: Option<&OwnedFd>,
    path: &Path,
    set: u64,
    clear: u64,
    recursive: bool,
) -> Result<()> {
    let c = match fd {
        Some(_) => CString::default(),
        None => CString::new(path.as_os_str().as_encoded_bytes())?,
    };
    let attr = libc::mount_attr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: 0,
    };
    let mut flags = if recursive { libc::AT_RECURSIVE } else { 0 };
    let dirfd = match fd {
        Some(fd) => {
            flags |= libc::AT_EMPTY_PATH;
            fd.as_raw_fd()
        }
        None => libc::AT_FDCWD,
    };
    // SAFETY: a NUL-terminated path and a mount_attr of the size we pass.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            c.as_ptr(),
            flags,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot change the mount flags of {}", path.display()));
    }
    Ok(())
}

/// A confined job's working directory, made writable (that mount only:
/// mounts below it stay read-only) and nosuid. It must be the directory the
/// starter opened (`id`: device and inode), which the slot-user sweep walks:
/// resolved here in the job's view (`base`), checked, then bound onto itself
/// from the checked fd, so no path swap in between changes what is made
/// writable. A different directory refuses the job.
fn writable_workdir(base: &OwnedFd, cwd: &str, id: (u64, u64)) -> Result<()> {
    let open = || {
        crate::in_root::open(base, cwd, libc::O_PATH | libc::O_DIRECTORY).map_err(|e| {
            anyhow::Error::new(super::JobFault(format!(
                "cannot open the working directory {cwd}: {e}"
            )))
        })
    };
    let dir = open()?;
    let st = nix::sys::stat::fstat(dir.as_raw_fd())?;
    if (st.st_dev, st.st_ino) != id {
        return Err(super::JobFault(format!(
            "the working directory {cwd} was replaced while the job started; submit it again"
        ))
        .into());
    }
    let at = format!("/proc/self/fd/{}", dir.as_raw_fd());
    mnt(
        &at,
        Path::new(&at),
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    drop(dir);
    // Opened again: now the path crosses into the new mount.
    let top = open()?;
    set_mount_attrs_at(
        Some(&top),
        Path::new(cwd),
        libc::MOUNT_ATTR_NOSUID,
        libc::MOUNT_ATTR_RDONLY,
        false,
    )
}

/// Binds `path` onto itself, writable (but still nosuid): the job's session
/// files, in a confined job's otherwise read-only view.
fn writable(path: &Path) -> Result<()> {
    let p = path.to_string_lossy();
    mnt(&p, path, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
    set_mount_attrs(path, libc::MOUNT_ATTR_NOSUID, libc::MOUNT_ATTR_RDONLY, true)
}

/// Runs `f` with the effective ids of the job's user, then becomes root
/// again: what `f` opens, the job's owner could have opened.
fn as_user<T>(spec: &ContainerSpec, groups: &[Gid], f: impl FnOnce() -> T) -> Result<T> {
    nix::unistd::setgroups(groups).context("setgroups")?;
    nix::unistd::setegid(Gid::from_raw(spec.gid)).context("setegid")?;
    nix::unistd::seteuid(Uid::from_raw(spec.uid)).context("seteuid")?;
    let out = f();
    nix::unistd::seteuid(Uid::from_raw(0)).context("cannot become root again")?;
    nix::unistd::setegid(Gid::from_raw(0)).context("cannot become root again")?;
    nix::unistd::setgroups(&[]).context("setgroups")?;
    Ok(out)
}

pub fn setup(spec: &ContainerSpec, groups: &[Gid]) -> Result<()> {
    // Nothing we mount may leak back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("cannot make mounts private")?;
    // The new root of an image job lives in the starter's own job
    // directory, never in the image; made before the view turns read-only.
    let root = spec.sessions.with_file_name("root");
    if spec.image.is_some() {
        fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    }
    if spec.confined {
        // Before any mount of our own: those are made with their own flags.
        set_mount_attrs(
            Path::new("/"),
            libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID,
            0,
            true,
        )?;
        writable(&spec.sessions)?;
    }
    match &spec.image {
        Some(image) => image_root(spec, image, &root, groups),
        None => node_view(spec),
    }
}

fn nosuid() -> MsFlags {
    MsFlags::MS_NOSUID | MsFlags::MS_NODEV
}

fn node_view(spec: &ContainerSpec) -> Result<()> {
    if let Some(id) = spec.writable_workdir {
        writable_workdir(&crate::in_root::open_dir(Path::new("/"))?, &spec.cwd, id)?;
    }
    private_proc_and_tmp(Path::new("/"))?;
    mount_devpts(Path::new("/dev/pts"))?;
    mnt(
        "/dev/pts/ptmx",
        Path::new("/dev/ptmx"),
        None,
        MsFlags::MS_BIND,
        None,
    )?;
    if Path::new("/dev/shm").is_dir() {
        shared_tmpfs(Path::new("/dev/shm"))?;
    }
    Ok(())
}

/// A fresh, empty, sticky world-writable tmpfs (like /tmp) at `target`.
fn shared_tmpfs(target: &Path) -> Result<()> {
    mnt("tmpfs", target, Some("tmpfs"), nosuid(), Some("mode=1777"))
}

/// The job's own /proc (its PID namespace) and an empty /tmp under `base`.
fn private_proc_and_tmp(base: &Path) -> Result<()> {
    mnt(
        "proc",
        &base.join("proc"),
        Some("proc"),
        nosuid() | MsFlags::MS_NOEXEC,
        None,
    )?;
    shared_tmpfs(&base.join("tmp"))
}

/// Names at the top of the job's root that are ours, not the image's.
const OURS: [&str; 4] = ["proc", "dev", "tmp", ".stj"];

fn image_root(spec: &ContainerSpec, image: &Path, root: &Path, groups: &[Gid]) -> Result<()> {
    // Opened as the job's user: a job gets only an image its owner can read.
    let img = as_user(spec, groups, || {
        nix::fcntl::open(
            image,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
    })?
    .map_err(|e| {
        super::JobFault(format!(
            "the job's owner (uid {}) cannot read the image {} ({e}); give --image a root filesystem directory its owner can read",
            spec.uid,
            image.display()
        ))
    })?;
    // SAFETY: a fresh fd from open().
    let img = unsafe { OwnedFd::from_raw_fd(img) };

    mnt(
        "tmpfs",
        root,
        Some("tmpfs"),
        nosuid(),
        Some("mode=0755,size=1m"),
    )?;
    // The directory the user opened (they may list it), listed through
    // its fd: whatever the path now names, this is what they opened.
    let names = fs::read_dir(format!("/proc/self/fd/{}", img.as_raw_fd()))
        .context("cannot list the image")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !OURS.contains(&n.as_str()))
        .collect::<Vec<_>>();
    for name in names {
        let target = root.join(&name);
        // Opened without following a symlink, checked on what was opened,
        // and mounted from that very fd: the image is its owner's, who could
        // swap an entry for a symlink between a check by name and a mount
        // by name (mount(2) follows symlinks, as root).
        let Ok(entry) = nix::fcntl::openat(
            Some(img.as_raw_fd()),
            name.as_str(),
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) else {
            continue;
        };
        // SAFETY: a fresh fd from openat().
        let entry = unsafe { OwnedFd::from_raw_fd(entry) };
        let Ok(st) = nix::sys::stat::fstat(entry.as_raw_fd()) else {
            continue;
        };
        let source = format!("/proc/self/fd/{}", entry.as_raw_fd());
        match SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT) {
            SFlag::S_IFDIR => {
                fs::create_dir(&target)?;
                mnt(
                    &source,
                    &target,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None,
                )?;
            }
            SFlag::S_IFREG => {
                fs::File::create(&target)?;
                mnt(&source, &target, None, MsFlags::MS_BIND, None)?;
            }
            SFlag::S_IFLNK => {
                // The link itself (empty path: the fd), copied, never followed.
                let to = nix::fcntl::readlinkat(Some(entry.as_raw_fd()), "")?;
                symlink(to, &target)?;
            }
            _ => {}
        }
    }
    drop(img);
    for d in OURS {
        fs::create_dir(root.join(d))?;
    }
    let r = |p: &str| root.join(p);
    private_proc_and_tmp(root)?;
    mnt(
        "tmpfs",
        &r("dev"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=755"),
    )?;
    for d in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = r(&format!("dev/{d}"));
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o666)
            .open(&target)?;
        mnt(&format!("/dev/{d}"), &target, None, MsFlags::MS_BIND, None)?;
    }
    fs::create_dir_all(r("dev/pts"))?;
    fs::create_dir_all(r("dev/shm"))?;
    mount_devpts(&r("dev/pts"))?;
    symlink("pts/ptmx", r("dev/ptmx"))?;
    shared_tmpfs(&r("dev/shm"))?;
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, r(&format!("dev/{name}")))?;
    }
    if let Some(kit) = &spec.kit {
        mount_kit(&r(".stj"), kit, &spec.sessions, spec.confined)?;
    }
    if let Some(id) = spec.writable_workdir {
        writable_workdir(&crate::in_root::open_dir(root)?, &spec.cwd, id)?;
    }
    nix::unistd::chdir(root)?;
    // pivot_root(".", ".") stacks the old root on the new one; the lazy
    // unmount then drops it without needing a spare directory.
    nix::unistd::pivot_root(".", ".").context("pivot_root into the image failed")?;
    umount2(".", MntFlags::MNT_DETACH).context("cannot detach the host root")?;
    nix::unistd::chdir("/")?;
    // The top level is ours and fixed; what is under it is the image's.
    set_mount_attrs(Path::new("/"), libc::MOUNT_ATTR_RDONLY, 0, false)?;
    Ok(())
}

/// The sshd kit, read-only at `target` (/.stj), with the job's session
/// files writable at /.stj/sessions: sessions then need nothing from the
/// image.
fn mount_kit(target: &Path, kit: &Path, sessions: &Path, confined: bool) -> Result<()> {
    mnt(
        &kit.to_string_lossy(),
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .context("cannot make the sshd kit read-only")?;
    let in_kit = target.join("sessions");
    mnt(
        &sessions.to_string_lossy(),
        &in_kit,
        None,
        MsFlags::MS_BIND,
        None,
    )?;
    if confined {
        // Its source was made read-only with the rest of the node's view.
        set_mount_attrs(
            &in_kit,
            libc::MOUNT_ATTR_NOSUID,
            libc::MOUNT_ATTR_RDONLY,
            false,
        )?;
    }
    Ok(())
}

/// A devpts of the job's own, so ptys work for the job user (gid 5 = tty).
fn mount_devpts(target: &Path) -> Result<()> {
    mnt(
        "devpts",
        target,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=620,gid=5"),
    )
}
