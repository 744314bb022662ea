//! Logging for every binary: to stderr, colour only on a terminal, info
//! (or debug with `--debug`), `STJ_LOG` overriding both; the transport
//! crates stay at info, their debug output says nothing about ours.

pub fn init(debug: bool) {
    let default = if debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("STJ_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{default},h2=info,tower=info,hyper=info,rustls=info"
        ))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
