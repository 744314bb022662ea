//! The sshd kit: the node's `sshd`, every shared library
//! they need, the dynamic loader and `libstj_preload.so`, assembled once at
//! start-up into a read-only directory. Every image job gets it at `/.stj`,
//! and sessions run sshd through the kit's own loader, so the image needs
//! neither sshd nor OpenSSL nor a matching libc.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Where image jobs see the kit.
pub const IN_IMAGE: &str = "/.stj";
pub const PRELOAD_NAME: &str = "libstj_preload.so";

#[derive(Debug, Clone)]
pub struct Kit {
    /// The kit on the node.
    pub dir: PathBuf,
    /// File name of the dynamic loader inside `lib/`.
    pub loader: String,
}

/// Paths of one job's view of the kit and of its session files.
pub struct JobView {
    pub kit: PathBuf,
    pub sessions: PathBuf,
}

impl Kit {
    /// How a job sees the kit: at `/.stj` in an image, at its node path when
    /// the job sees the node's filesystem.
    pub fn view(&self, in_image: bool, host_sessions: &Path) -> JobView {
        if in_image {
            JobView {
                kit: PathBuf::from(IN_IMAGE),
                sessions: Path::new(IN_IMAGE).join("sessions"),
            }
        } else {
            JobView {
                kit: self.dir.clone(),
                sessions: host_sessions.to_path_buf(),
            }
        }
    }

    /// The command line that runs `program` from the kit with the kit's
    /// loader and libraries only (plus the shim when `preload`).
    pub fn command(&self, kit_in_job: &Path, program: &str, preload: bool) -> Vec<String> {
        let lib = kit_in_job.join("lib");
        let mut v = vec![lib.join(&self.loader).to_string_lossy().into_owned()];
        if preload {
            v.push("--preload".into());
            v.push(lib.join(PRELOAD_NAME).to_string_lossy().into_owned());
        }
        v.push("--library-path".into());
        v.push(lib.to_string_lossy().into_owned());
        v.push(
            kit_in_job
                .join("bin")
                .join(program)
                .to_string_lossy()
                .into_owned(),
        );
        v
    }
}

/// The libraries `ldd` lists for `binary`, and its loader.
fn dependencies(binary: &Path) -> Result<(Vec<(String, PathBuf)>, PathBuf)> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("cannot run ldd (Debian package libc-bin)")?;
    if !out.status.success() {
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut libs = Vec::new();
    let mut loader = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let line = line.trim();
        if let Some((name, rest)) = line.split_once(" => ") {
            let path = rest.split(" (").next().unwrap_or("").trim();
            if path == "not found" {
                bail!("{} needs {name}, which is not installed", binary.display());
            }
            if path.starts_with('/') {
                libs.push((name.trim().to_string(), PathBuf::from(path)));
            }
        } else if line.starts_with('/') {
            loader = Some(PathBuf::from(line.split(" (").next().unwrap_or(line)));
        }
    }
    let loader =
        loader.with_context(|| format!("ldd found no dynamic loader for {}", binary.display()))?;
    Ok((libs, loader))
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Builds the kit in `work_dir/kit`, replacing an older one. Fails with an
/// admin-facing message when sshd is missing. (sftp is sshd's own
/// internal-sftp: it needs no program of its own, nor a passwd lookup.)
pub fn build(work_dir: &Path, sshd: &Path, preload: &Path) -> Result<Kit> {
    if !sshd.is_file() {
        bail!(
            "sshd not found at {} (install openssh-server or set sshd_path)",
            sshd.display()
        );
    }
    // OpenSSH 9.8 split sshd: `sshd -i` execs /usr/lib/openssh/sshd-session
    // by its node path, which a job's view need not have and the kit would
    // not provide. Refused here, where the admin looks, not per session.
    let binary = fs::read(sshd).with_context(|| format!("cannot read {}", sshd.display()))?;
    if binary
        .windows(b"sshd-session".len())
        .any(|w| w == b"sshd-session")
    {
        bail!(
            "{} is OpenSSH 9.8 or later, which runs a separate sshd-session program the sshd kit does not carry yet; point sshd_path at an OpenSSH 9.7 or older sshd",
            sshd.display()
        );
    }
    if !preload.is_file() {
        bail!("{PRELOAD_NAME} not found at {} (build it with `cargo build --workspace`, or set preload_path)", preload.display());
    }
    let staging = work_dir.join("kit.new");
    let dir = work_dir.join("kit");
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    for d in ["bin", "lib", "sessions"] {
        fs::create_dir_all(staging.join(d))?;
    }
    let mut loader_name = None;
    // Ourselves too: the placeholder of interactive jobs runs from the kit.
    let me = std::env::current_exe().context("cannot find the stj-starter binary")?;
    for (binary, name) in [(sshd, "sshd"), (me.as_path(), "stj-starter")] {
        copy(binary, &staging.join("bin").join(name), 0o755)?;
    }
    for binary in [sshd, preload, me.as_path()] {
        let (libs, loader) = dependencies(binary)?;
        for (name, path) in libs {
            copy(&path, &staging.join("lib").join(&name), 0o755)?;
        }
        let lname = loader
            .file_name()
            .context("loader path")?
            .to_string_lossy()
            .into_owned();
        copy(&loader, &staging.join("lib").join(&lname), 0o755)?;
        loader_name = Some(lname);
    }
    copy(preload, &staging.join("lib").join(PRELOAD_NAME), 0o755)?;
    for d in [
        &staging,
        &staging.join("bin"),
        &staging.join("lib"),
        &staging.join("sessions"),
    ] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
    }
    if dir.exists() {
        fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot replace the old kit {}", dir.display()))?;
    }
    fs::rename(&staging, &dir)?;
    Ok(Kit {
        dir,
        loader: loader_name.context("no loader")?,
    })
}
