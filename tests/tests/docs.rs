//! Every binary documents itself: --help with examples, a man page and
//! shell completions generated from the same definition.

use std::process::Command;

use stj_tests::bin;

const BINARIES: [&str; 5] = [
    "stj-schedd",
    "stj-starter",
    "stj",
    "ssh-to-job",
    "stj-proxy",
];

#[test]
fn help_shows_examples() {
    for b in BINARIES {
        let out = Command::new(bin(b)).arg("--help").output().unwrap();
        assert!(out.status.success(), "{b} --help");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Examples:"),
            "{b} --help has examples:\n{text}"
        );
        assert!(
            text.matches(&format!("  {b} ")).count() + text.matches("  ssh ").count() >= 2,
            "{b}: two or more examples:\n{text}"
        );
    }
}

#[test]
fn man_pages_and_completions_for_every_binary() {
    let dir = tempfile::tempdir().unwrap();
    for b in BINARIES {
        let flag = if b == "stj-proxy" {
            "--generate-docs"
        } else {
            "generate-docs"
        };
        let st = Command::new(bin(b))
            .arg(flag)
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "{b} {flag}");
        // Daemons (in /usr/sbin when packaged) in section 8, the rest in 1.
        let section = if b.starts_with("stj-s") { 8 } else { 1 };
        let page = std::fs::read_to_string(dir.path().join(format!("man/{b}.{section}"))).unwrap();
        assert!(
            page.contains(".TH")
                && page.contains(&format!(" {section} "))
                && page.contains("Examples"),
            "{b}.{section}"
        );
        for f in [format!("{b}.bash"), format!("_{b}"), format!("{b}.fish")] {
            assert!(
                dir.path()
                    .join("completions")
                    .join(&f)
                    .metadata()
                    .unwrap()
                    .len()
                    > 0,
                "{f}"
            );
        }
    }
}
