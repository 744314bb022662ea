//! A lightweight simulated starter for the benchmark: it registers over the
//! real TLS link protocol, answers heartbeats, reports jobs started at once
//! without running them, and on DialRelay dials the relay and hands the raw connection to
//! the benchmark (no sshd), so the broker can be measured alone and at scale.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use stj_proto::framing::{decode, encode, link_codec};
use stj_proto::preamble::{Preamble, Role};
use stj_proto::starter::{
    schedd_message::Msg as In, starter_message::Msg as Out, Heartbeat, JobStarted, ScheddMessage,
    StarterHello, StarterMessage,
};
use stj_proto::token::JoinToken;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;

pub struct SimStarter {
    pub name: String,
    /// Relay connections the broker asked this starter to make.
    pub relays: Option<mpsc::UnboundedReceiver<TcpStream>>,
}

/// Registers `name` with `slots` and keeps the link alive in a task.
pub async fn register(
    schedd: &str,
    token: &JoinToken,
    name: &str,
    slots: u32,
    want_relays: bool,
) -> Result<SimStarter> {
    // A key of its own, as every node has (the token enrols it).
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["stj-starter".to_string()])?.self_signed(&key)?;
    let identity = (
        vec![rustls::pki_types::CertificateDer::from(cert.der().to_vec())],
        rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
            key.serialize_der(),
        )),
    );
    let (cfg, _) = stj_starter::tls::client_config(token.ca_sha256, identity)?;
    let tcp = TcpStream::connect(schedd)
        .await
        .context("connect to the schedd")?;
    let tls = TlsConnector::from(cfg)
        .connect(stj_starter::tls::server_name(), tcp)
        .await?;
    let mut framed = Framed::new(tls, link_codec());
    let hello = StarterMessage {
        msg: Some(Out::Hello(StarterHello {
            protocol_version: stj_proto::STARTER_PROTOCOL_VERSION,
            name: name.to_string(),
            slots,
            join_secret: token.secret.to_vec(),
            ..Default::default()
        })),
    };
    framed.send(encode(&hello)).await?;
    match framed.next().await {
        Some(Ok(f)) => match decode::<ScheddMessage>(f)?.msg {
            Some(In::Welcome(_)) => {}
            other => bail!("not welcomed: {other:?}"),
        },
        _ => bail!("link closed during registration"),
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let schedd = Arc::new(schedd.to_string());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                f = framed.next() => {
                    let Some(Ok(f)) = f else { return };
                    let d = match decode::<ScheddMessage>(f).map(|m| m.msg) {
                        Ok(Some(In::DialRelay(d))) => d,
                        Ok(Some(In::RunJob(r))) => {
                            let started = StarterMessage { msg: Some(Out::Started(JobStarted { job_id: r.job_id })) };
                            if framed.send(encode(&started)).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        _ => continue,
                    };
                    {
                        let (Ok(session_id), Ok(token)) = (d.session_id.as_slice().try_into(), d.token.as_slice().try_into()) else { continue };
                        let tx = tx.clone();
                        let schedd = schedd.clone();
                        tokio::spawn(async move {
                            if let Ok(mut s) = TcpStream::connect(schedd.as_str()).await {
                                let p = Preamble::Relay { role: Role::Starter, session_id, token }.encode();
                                if s.write_all(&p).await.is_ok() {
                                    let _ = tx.send(s);
                                }
                            }
                        });
                    }
                }
                _ = tick.tick() => {
                    let hb = StarterMessage { msg: Some(Out::Heartbeat(Heartbeat { seq: 0 })) };
                    if framed.send(encode(&hb)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok(SimStarter {
        name: name.to_string(),
        relays: want_relays.then_some(rx),
    })
}
