//! A gRPC client for the schedd's local UNIX socket. The schedd learns who we
//! are from the socket itself (SO_PEERCRED); nothing here carries identity.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use stj_proto::user::schedd_client::ScheddClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

pub use stj_cli::paths::SCHEDD_SOCKET as DEFAULT_SOCKET;

/// The socket named by `--socket`, else `$STJ_SCHEDD_SOCKET`, else the default.
pub fn socket_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("STJ_SCHEDD_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

pub async fn connect(path: &Path) -> Result<ScheddClient<Channel>> {
    // Dial once up front so a missing schedd gets a plain answer rather than
    // a transport error chain.
    let first = UnixStream::connect(path).await.with_context(|| {
        format!(
            "cannot connect to the schedd at {}; is stj-schedd running? (use --socket or STJ_SCHEDD_SOCKET for another socket)",
            path.display()
        )
    })?;
    let first = Arc::new(Mutex::new(Some(first)));
    let path = path.to_path_buf();
    // The URI is required by the API and unused: the connector below dials the socket.
    let channel = Endpoint::try_from("http://stj-schedd.local")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let first = first.clone();
            let path = path.clone();
            async move {
                let ready = first.lock().unwrap_or_else(|p| p.into_inner()).take();
                let stream = match ready {
                    Some(s) => s,
                    None => UnixStream::connect(&path).await?,
                };
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .context("cannot talk to the schedd")?;
    Ok(ScheddClient::new(channel))
}

/// A schedd refusal as the typed error that carries its code and reason
/// (and shows only its message).
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    crate::client_error::ClientError::from_status(s).into()
}

/// Every job the query matches, page after page (the schedd keeps each
/// reply small).
pub async fn query_all(
    c: &mut ScheddClient<Channel>,
    job_ids: Vec<u64>,
    include_ended: bool,
) -> Result<Vec<stj_proto::user::Job>> {
    let mut jobs = Vec::new();
    let mut after_id = 0;
    loop {
        let page = c
            .query(stj_proto::user::QueryRequest {
                job_ids: job_ids.clone(),
                include_ended,
                after_id,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        jobs.extend(page.jobs);
        if page.next_after_id == 0 {
            return Ok(jobs);
        }
        after_id = page.next_after_id;
    }
}

/// Every node `names` asks for (all when empty), page after page.
pub async fn nodes_all(
    c: &mut ScheddClient<Channel>,
    names: Vec<String>,
) -> Result<Vec<stj_proto::user::Node>> {
    let mut nodes = Vec::new();
    let mut after_name = String::new();
    loop {
        let page = c
            .nodes(stj_proto::user::NodesRequest {
                names: names.clone(),
                after_name: after_name.clone(),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        nodes.extend(page.nodes);
        if page.next_after_name.is_empty() {
            return Ok(nodes);
        }
        // Names only grow from page to page: a schedd that says otherwise
        // would keep us asking forever.
        if page.next_after_name <= after_name {
            anyhow::bail!(
                "the schedd's node list went backwards at {:?}: is stj older than the schedd? (stj --version, stj-schedd --version)",
                page.next_after_name
            );
        }
        after_name = page.next_after_name;
    }
}

/// Every audit record the request matches, page after page.
pub async fn audit_all(
    c: &mut ScheddClient<Channel>,
    job_id: u64,
    uid: Option<u32>,
) -> Result<Vec<stj_proto::user::AuditRecord>> {
    let mut records = Vec::new();
    let mut after = String::new();
    loop {
        let page = c
            .audit(stj_proto::user::AuditRequest { job_id, uid, after })
            .await
            .map_err(status_error)?
            .into_inner();
        records.extend(page.records);
        if page.next.is_empty() {
            return Ok(records);
        }
        after = page.next;
    }
}
