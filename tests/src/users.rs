//! Real Unix users for tests, made with `useradd` once per name.

use std::process::Command;
use std::sync::Mutex;

#[derive(Debug, Clone)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

// useradd takes /etc/passwd's lock; tests in one binary run in parallel.
static USERADD: Mutex<()> = Mutex::new(());

impl TestUser {
    /// The user `name`, created (with a home directory and /bin/sh) if missing.
    pub fn get(name: &str) -> TestUser {
        let _g = USERADD.lock().unwrap_or_else(|p| p.into_inner());
        if nix::unistd::User::from_name(name).ok().flatten().is_none() {
            let out = Command::new("useradd")
                .args(["--create-home", "--shell", "/bin/sh", name])
                .output()
                .expect("run useradd (tests need root)");
            assert!(
                out.status.success() || nix::unistd::User::from_name(name).ok().flatten().is_some(),
                "useradd {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let u = nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .expect("user exists after useradd");
        TestUser {
            name: name.to_string(),
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        }
    }

    pub fn home(&self) -> std::path::PathBuf {
        nix::unistd::User::from_uid(self.uid.into())
            .ok()
            .flatten()
            .map(|u| u.dir)
            .unwrap_or_else(|| "/".into())
    }

    pub fn alice() -> TestUser {
        TestUser::get("stjtest-alice")
    }

    pub fn bob() -> TestUser {
        TestUser::get("stjtest-bob")
    }
}
