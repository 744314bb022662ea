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

/// The sections a config file may have.
pub const SECTIONS: &[&str] = &["schedd", "starter"];

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
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
}

/// Section `name` of `text`; its defaults when the file has no such section.
pub fn parse_section<T: DeserializeOwned + Default>(
    text: &str,
    name: &str,
) -> Result<T, SectionError> {
    let table: toml::Table = toml::from_str(text)?;
    if let Some(other) = table.keys().find(|k| !SECTIONS.contains(&k.as_str())) {
        return Err(SectionError::UnknownSection(other.clone()));
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
        n: u32,
    }

    #[test]
    fn sections_knobs_and_files() {
        assert_eq!(
            parse_section::<S>("[schedd]\nn = 3\n", "schedd").unwrap().n,
            3
        );
        // The other program's section is read by that program.
        assert_eq!(
            parse_section::<S>("[starter]\nx = 1\n", "schedd")
                .unwrap()
                .n,
            0
        );
        let e = parse_section::<S>("[scheddd]\n", "schedd").unwrap_err();
        assert!(e.to_string().contains("[scheddd]"), "{e}");
        let e = parse_section::<S>("[schedd]\nm = 1\n", "schedd").unwrap_err();
        assert!(e.to_string().contains('m'), "{e}");
        let e = load_section::<S>(Some(Path::new("/nonexistent/stj.toml")), "schedd").unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
    }
}
