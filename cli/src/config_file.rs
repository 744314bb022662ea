//! The config file both daemons read: TOML, one section per program. A
//! section nobody reads (a typo like `[scheddd]`) is an error, as an
//! unknown knob is: it would otherwise be ignored silently and its program
//! run on defaults.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Whose jobs a pool's daemons serve (`jobs` in `[schedd]` and `[starter]`,
/// DESIGN §12). A value that is neither is an error, like an unknown knob.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Jobs {
    /// The schedd's own queue (`stj submit`), run by starters in
    /// containers of their own.
    #[default]
    Queue,
    /// Slurm's: the schedd asks Slurm about jobs, starters beside slurmd
    /// find them in Slurm's cgroups and start none.
    Slurm,
}

/// The sections a config file may have, with the knobs of each. A program
/// refuses an unknown knob in its own section, and one of its own knobs
/// under another section (`enable_ssh_to_job = false` appended after
/// `[starter]` on a host that runs no starter): an error, never a setting
/// nobody reads. Other unknown names in another section are that
/// program's to refuse: a newer schedd's knob in a file shared with older
/// starters must not stop them. The lists are the fields of
/// `ScheddConfig` and `StarterConfig`; a test in packaging/ holds them to
/// the structs.
pub const SECTIONS: &[(&str, &[&str])] = &[("schedd", SCHEDD_KNOBS), ("starter", STARTER_KNOBS)];

pub const SCHEDD_KNOBS: &[&str] = &[
    "listen",
    "socket",
    "state_dir",
    "heartbeat_secs",
    "enable_ssh_to_job",
    "job_lease_secs",
    "capability_ttl_secs",
    "daemon_sock_dir",
    "relay_pairing_secs",
    "broker_addr",
    "max_sessions_per_user",
    "max_pending_per_user",
    "audit_retention_days",
    "max_jobs_per_user",
    "job_retention_days",
    "jobs",
    "slurm_bin_dir",
    "slurm_cache_secs",
    "slurm_placeholder",
    "max_registrations_per_sec",
    "metrics_listen",
];

pub const STARTER_KNOBS: &[&str] = &[
    "schedd",
    "token_file",
    "name",
    "work_dir",
    "slots",
    "kill_grace_secs",
    "session_listen",
    "session_advertise",
    "sshd_path",
    "preload_path",
    "sshd_extra_config",
    "slot_users",
    "allow_tcp_forwarding",
    "allow_x11_forwarding",
    "allow_agent_forwarding",
    "cgroup_parent",
    "jobs",
    "job_pids_max",
    "metrics_listen",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {} is not valid (every knob and its default: the commented stj.toml the packages install, packaging/stj.toml in the source): {source}", path.display())]
    Invalid { path: PathBuf, source: SectionError },
}

#[derive(Debug, thiserror::Error)]
pub enum SectionError {
    #[error("unknown section [{0}] (the sections are [schedd] and [starter]; a typo?)")]
    UnknownSection(String),
    #[error("unknown knob `{knob}` in [{section}]{}", match belongs_in {
        Some(other) => format!(" (it is a [{other}] knob: move it under [{other}])"),
        None => " (a typo?)".to_string(),
    })]
    UnknownKnob {
        section: String,
        knob: String,
        belongs_in: Option<&'static str>,
    },
    #[error("[{0}] must be a table of knobs")]
    NotATable(String),
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
}

/// Section `name` of `text`; its defaults when the file has no such section.
pub fn parse_section<T: DeserializeOwned + Default>(
    text: &str,
    name: &str,
) -> Result<T, SectionError> {
    let table: toml::Table = toml::from_str(text)?;
    let mine = SECTIONS
        .iter()
        .find(|(s, _)| *s == name)
        .map(|(_, knobs)| *knobs)
        .unwrap_or_default();
    for (section, value) in &table {
        let Some((_, knobs)) = SECTIONS.iter().find(|(s, _)| s == section) else {
            return Err(SectionError::UnknownSection(section.clone()));
        };
        let mut keys = value
            .as_table()
            .ok_or_else(|| SectionError::NotATable(section.clone()))?
            .keys();
        let refused = |k: &&String| {
            !knobs.contains(&k.as_str()) && (section == name || mine.contains(&k.as_str()))
        };
        if let Some(knob) = keys.find(refused) {
            return Err(SectionError::UnknownKnob {
                section: section.clone(),
                knob: knob.clone(),
                belongs_in: SECTIONS
                    .iter()
                    .find(|(_, ks)| ks.contains(&knob.as_str()))
                    .map(|(s, _)| *s),
            });
        }
    }
    match table.get(name) {
        Some(v) => Ok(T::deserialize(v.clone())?),
        None => Ok(T::default()),
    }
}

/// Section `name` of the file at `path`, or of [`crate::paths::CONFIG`]
/// when no path is given: that one may be missing (defaults), a file the
/// caller named may not.
pub fn load_section<T: DeserializeOwned + Default>(
    path: Option<&Path>,
    name: &str,
) -> Result<T, ConfigError> {
    let (path, explicit) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(crate::paths::CONFIG), false),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(T::default()),
        Err(source) => return Err(ConfigError::Read { path, source }),
    };
    parse_section(&text, name).map_err(|source| ConfigError::Invalid { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct S {
        heartbeat_secs: u32,
    }

    #[test]
    fn sections_knobs_and_files() {
        assert_eq!(
            parse_section::<S>("[schedd]\nheartbeat_secs = 3\n", "schedd")
                .unwrap()
                .heartbeat_secs,
            3
        );
        // The other program's section is that program's to check: its
        // values and names it does not know (a newer version's knob).
        assert_eq!(
            parse_section::<S>("[starter]\nslots = \"x\"\nslotz = 1\n", "schedd")
                .unwrap()
                .heartbeat_secs,
            0
        );
        let e = parse_section::<S>("[starter]\nslotz = 1\n", "starter").unwrap_err();
        assert!(
            matches!(
                &e,
                SectionError::UnknownKnob {
                    belongs_in: None,
                    ..
                }
            ),
            "{e}"
        );
        // A schedd knob appended under [starter], read by the schedd.
        let e = parse_section::<S>("[schedd]\n[starter]\nenable_ssh_to_job = false\n", "schedd")
            .unwrap_err();
        assert!(
            matches!(
                &e,
                SectionError::UnknownKnob {
                    belongs_in: Some("schedd"),
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("move it under [schedd]"), "{e}");
        let e = parse_section::<S>("[scheddd]\n", "schedd").unwrap_err();
        assert!(e.to_string().contains("[scheddd]"), "{e}");
        let e = parse_section::<S>("[schedd]\nm = 1\n", "schedd").unwrap_err();
        assert!(e.to_string().contains("`m`"), "{e}");
        let e = load_section::<S>(Some(Path::new("/nonexistent/stj.toml")), "schedd").unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
    }
}
