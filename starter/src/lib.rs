//! stj-starter: one per compute node. Dials out to the schedd (it listens
//! nowhere), runs jobs in containers it makes itself, and reports them.

pub mod config;
pub mod container;
mod jobs;
mod link;
mod tls;

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result};
use stj_proto::token::JoinToken;

pub use config::StarterConfig;

pub fn node_name(config: &StarterConfig) -> String {
    config.name.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "node".into())
    })
}

pub async fn run(config: StarterConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "stj-starter must run as root: it creates namespaces and runs jobs as their owners"
        );
    }
    let token_text = std::fs::read_to_string(&config.token_file).with_context(|| {
        format!(
            "cannot read the join token file {} (write the output of `stj-schedd token` there, or set token_file / --token-file)",
            config.token_file.display()
        )
    })?;
    let token = JoinToken::parse(&token_text)
        .with_context(|| format!("bad join token in {}", config.token_file.display()))?;
    std::fs::create_dir_all(config.work_dir.join("jobs"))
        .with_context(|| format!("cannot create work dir {}", config.work_dir.display()))?;
    let slots = config.slots.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1)
    });
    let name = node_name(&config);
    let (jobs, events) = jobs::Jobs::new(
        config.work_dir.clone(),
        Duration::from_secs(config.kill_grace_secs),
    );
    tracing::info!(node = %name, slots, schedd = %config.schedd, "starter starting");
    let params = link::LinkParams {
        schedd: config.schedd.clone(),
        token,
        name,
        slots,
    };
    tokio::select! {
        r = link::run(params, jobs, events) => r,
        _ = shutdown => {
            // Jobs die with us: each container's monitor sees our end of its
            // lifeline pipe close and kills the container.
            tracing::info!("starter shutting down; its jobs end with it");
            Ok(())
        }
    }
}
