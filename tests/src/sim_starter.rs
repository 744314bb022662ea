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
use tokio_util::codec::{Framed, LengthDelimitedCodec};

pub struct SimStarter {
    pub name: String,
    /// Relay connections the broker asked this starter to make.
    pub relays: Option<mpsc::UnboundedReceiver<TcpStream>>,
}

type Link = Framed<tokio_rustls::client::TlsStream<TcpStream>, LengthDelimitedCodec>;

/// Dials the schedd as `name` (with `slots`) under its key and
/// certificate, says Hello and waits for the Welcome, at most `welcome`
/// long when given.
async fn link(
    schedd: &str,
    token: &JoinToken,
    name: &str,
    slots: u32,
    (key, cert): (&rcgen::KeyPair, &rcgen::Certificate),
    welcome: Option<Duration>,
) -> Result<Link> {
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
    let answer = match welcome {
        Some(t) => tokio::time::timeout(t, framed.next()).await.ok().flatten(),
        None => framed.next().await,
    };
    match answer {
        Some(Ok(f)) => match decode::<ScheddMessage>(f)?.msg {
            Some(In::Welcome(_)) => Ok(framed),
            other => bail!("not welcomed: {other:?}"),
        },
        _ => bail!("link closed during registration"),
    }
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
    let mut framed = link(schedd, token, name, slots, (&key, &cert), None).await?;
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

/// A simulated starter that stays registered the way a real one does: it
/// calls back after losing its link, at the moments `stj_cli::backoff`
/// gives (the starter's own policy), with its one key. Each registration's
/// time goes into `registered_at` (milliseconds since `base`).
pub async fn stay_registered(
    schedd: String,
    token: JoinToken,
    name: String,
    base: std::time::Instant,
    registered_at: Arc<std::sync::atomic::AtomicU64>,
) {
    let Ok(key) = rcgen::KeyPair::generate() else {
        return;
    };
    let Ok(cert) = rcgen::CertificateParams::new(vec!["stj-starter".to_string()])
        .and_then(|p| p.self_signed(&key))
    else {
        return;
    };
    let mut backoff =
        stj_cli::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let linked = link(
            &schedd,
            &token,
            &name,
            0,
            (&key, &cert),
            Some(Duration::from_secs(30)),
        );
        if let Ok(mut framed) = linked.await {
            registered_at.store(
                base.elapsed().as_millis() as u64,
                std::sync::atomic::Ordering::SeqCst,
            );
            backoff.reset();
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    f = framed.next() => if !matches!(f, Some(Ok(_))) { break },
                    _ = tick.tick() => {
                        let hb = StarterMessage { msg: Some(Out::Heartbeat(Heartbeat { seq: 0 })) };
                        if framed.send(encode(&hb)).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}
