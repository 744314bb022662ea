//! The starter's configuration: section `[starter]` of the TOML file
//! (`--config`, default `/etc/stj/stj.toml`); flags override it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

pub const DEFAULT_CONFIG: &str = "/etc/stj/stj.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StarterConfig {
    /// host:port of the schedd's port.
    pub schedd: String,
    /// File holding the join token from `stj-schedd token`.
    pub token_file: PathBuf,
    /// This node's name in the pool; defaults to the host name.
    pub name: Option<String>,
    /// Per-job scratch (container specs); private to root.
    pub work_dir: PathBuf,
    /// Jobs this node runs at once; defaults to the number of CPUs.
    pub slots: Option<u32>,
    /// Seconds between SIGTERM and SIGKILL when a job is removed.
    pub kill_grace_secs: u64,
}

impl Default for StarterConfig {
    fn default() -> Self {
        StarterConfig {
            schedd: "127.0.0.1:9618".into(),
            token_file: PathBuf::from("/etc/stj/join-token"),
            name: None,
            work_dir: PathBuf::from("/var/lib/stj/starter"),
            slots: None,
            kill_grace_secs: 5,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FileConfig {
    starter: StarterConfig,
    #[allow(dead_code)]
    schedd: Option<toml::Value>,
    #[allow(dead_code)]
    client: Option<toml::Value>,
}

pub fn load(path: Option<&Path>) -> Result<StarterConfig> {
    let (path, explicit) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return Ok(StarterConfig::default())
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read config file {}", path.display()))
        }
    };
    parse(&text).with_context(|| {
        format!(
            "config file {} is not valid (see README, section Configuration, for every knob)",
            path.display()
        )
    })
}

pub fn parse(text: &str) -> Result<StarterConfig> {
    let file: FileConfig = toml::from_str(text)?;
    Ok(file.starter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_typos() {
        let c = parse("[starter]\nschedd = \"h:1\"\nslots = 3\n").unwrap();
        assert_eq!(c.schedd, "h:1");
        assert_eq!(c.slots, Some(3));
        let e = parse("[starter]\nslot = 3\n").unwrap_err();
        assert!(format!("{e:#}").contains("slot"));
    }
}
