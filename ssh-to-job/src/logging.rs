//! `--debug` logging for the user's tools: to stderr, colour only on a
//! terminal, transport crates kept quiet.

pub fn init_debug() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter("debug,h2=info,tower=info,hyper=info")
        .init();
}
