//! stj-common: what ssh-to-job's Debian packages install beside the
//! binaries, and the package that carries the shared part.
//!
//! - `stj.toml`: the commented default `/etc/stj/stj.toml` (stj-common's
//!   conffile). Every knob of `[schedd]` and `[starter]` is there, commented
//!   out, with its default or, marked "example", a sample value; the tests
//!   below hold the file to that.
//! - `systemd/`: `stj-schedd.service` (with `stj-schedd-sock.service` and
//!   `stj-schedd.tmpfile`) and `stj-starter.service`.
//! - `debian/<package>/`: maintainer scripts (cargo-deb adds the systemd
//!   parts at `#DEBHELPER#`).
//!
//! `scripts/package.sh` builds the packages; README, "Install from
//! packages", says what each holds and why the units are sandboxed as they
//! are.

/// The shipped `/etc/stj/stj.toml`.
pub const CONFFILE: &str = include_str!("stj.toml");

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde::de::DeserializeOwned;
    use stj_cli::config_file::parse_section;
    use stj_schedd::config::ScheddConfig;
    use stj_starter::config::StarterConfig;

    use super::CONFFILE;

    /// The knob lines of `section`: `#name = value ...`, with the `#` off.
    fn knob_lines(section: &str) -> Vec<String> {
        let header = format!("[{section}]");
        CONFFILE
            .lines()
            .skip_while(|l| l.trim() != header)
            .skip(1)
            .take_while(|l| !l.starts_with('['))
            .filter_map(|l| l.strip_prefix('#'))
            .filter(|l| l.starts_with(|c: char| c.is_ascii_lowercase()) && l.contains(" = "))
            .map(str::to_string)
            .collect()
    }

    fn check_section<T: DeserializeOwned + Default + std::fmt::Debug>(section: &str) {
        // As shipped, everything is commented out: the daemon runs on its
        // defaults.
        let shipped: T = parse_section(CONFFILE, section).expect("the shipped file parses");
        assert_eq!(format!("{shipped:?}"), format!("{:?}", T::default()));

        let lines = knob_lines(section);
        // Every knob the daemon accepts is in the file, and nothing else.
        let in_file: BTreeSet<String> = lines
            .iter()
            .map(|l| l.split(" = ").next().unwrap_or("").trim().to_string())
            .collect();
        let accepted: BTreeSet<String> = serde_aux::serde_introspection::serde_introspect::<T>()
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(in_file, accepted, "[{section}] knobs in packaging/stj.toml");
        // The names every program checks in every section are the same.
        let listed: BTreeSet<String> = stj_cli::config_file::SECTIONS
            .iter()
            .find(|(s, _)| *s == section)
            .map(|(_, knobs)| knobs.iter().map(|k| k.to_string()).collect())
            .unwrap_or_default();
        assert_eq!(
            listed, accepted,
            "[{section}] knobs in stj_cli::config_file"
        );

        for line in &lines {
            // Each line, uncommented, is a valid setting...
            let one: T = parse_section(&format!("[{section}]\n{line}\n"), section)
                .unwrap_or_else(|e| panic!("[{section}] {line}: {e}"));
            // ...and one that does not say it is an example is the default.
            if !line.contains("# example") {
                assert_eq!(
                    format!("{one:?}"),
                    format!("{:?}", T::default()),
                    "[{section}] {line}: not the default (mark it \"# example\" if it is one)"
                );
            }
        }
    }

    #[test]
    fn the_schedd_section_has_every_knob_with_its_default() {
        check_section::<ScheddConfig>("schedd");
    }

    #[test]
    fn the_starter_section_has_every_knob_with_its_default() {
        check_section::<StarterConfig>("starter");
    }
}
