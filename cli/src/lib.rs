//! What every stj binary shares. `generate`: a binary's man page and shell
//! completions from its clap definition, so they never drift from `--help`
//! (every binary has a hidden `generate-docs DIR`; `scripts/gen-docs.sh`
//! runs them all). `daemon`: process setup of stj-schedd and stj-starter.
//! `expiring`: a map whose entries lapse (replay sets, pending sessions).
//! `config_file`: the TOML file's sections. `logging`: `--debug` and
//! `STJ_LOG`. `fd_passing`: one socket to another process. `paths`: where
//! an installed pool keeps things.
//! `private_file`: secrets on disk, written and read so others cannot.
//! `shares`: what peers may hold of a daemon's capacity. `backoff`: when a
//! starter calls its schedd again.

pub mod backoff;
pub mod config_file;
pub mod daemon;
pub mod expiring;
pub mod fd_passing;
pub mod logging;
pub mod metrics_http;
pub mod paths;
pub mod private_file;
pub mod shares;

use std::fs;
use std::io;
use std::path::Path;

use clap_complete::Shell;

/// The manual section a binary's page belongs in: Debian puts programs
/// users run in section 1 (/usr/bin) and daemons with their admin
/// subcommands in section 8 (/usr/sbin).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManSection {
    User,
    Admin,
}

impl ManSection {
    pub fn number(self) -> &'static str {
        match self {
            ManSection::User => "1",
            ManSection::Admin => "8",
        }
    }
}

/// Writes `DIR/man/NAME.SECTION` and `DIR/completions/{NAME.bash,_NAME,NAME.fish}`.
pub fn generate(mut cmd: clap::Command, section: ManSection, dir: &Path) -> io::Result<()> {
    let name = cmd.get_name().to_string();
    fs::create_dir_all(dir.join("man"))?;
    fs::create_dir_all(dir.join("completions"))?;
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .section(section.number())
        .render(&mut page)?;
    fs::write(
        dir.join("man").join(format!("{name}.{}", section.number())),
        page,
    )?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, &name, dir.join("completions"))?;
    }
    Ok(())
}
