//! `metrics_listen`: the daemons' Prometheus endpoint, `GET /metrics`
//! over plain HTTP/1.1. Off unless the admin names an address (loopback in
//! the commented default config): what it shows (node names, counts of
//! sessions and refusals) is the admin's to expose. Bounded like every
//! other port: a few scrapes at once, headers within seconds.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Scrapes served at once; more wait in the kernel's backlog.
const AT_ONCE: usize = 8;
/// A scraper that does not send its request in time is dropped.
const HEADER_DEADLINE: Duration = Duration::from_secs(5);

/// The text a scrape returns (OpenMetrics, as prometheus-client writes it).
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// OpenMetrics text as Prometheus's classic text format (0.0.4), which
/// every scraper and `promtool check metrics` read: a counter family is
/// named by its samples' `_total` name, and OpenMetrics' `# EOF` and
/// `# UNIT` lines go. Nothing else differs for what the daemons expose
/// (counters, gauges, histograms).
pub fn classic(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for l in openmetrics.lines() {
        if let Some(name) = l
            .strip_prefix("# TYPE ")
            .and_then(|r| r.strip_suffix(" counter"))
        {
            counters.insert(name.to_string());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for l in openmetrics.lines() {
        if l == "# EOF" || l.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = l.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(l));
        out.push('\n');
    }
    out
}

/// Serves `render` at /metrics on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, render: Render) {
    let slots = Arc::new(Semaphore::new(AT_ONCE));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed; backing off");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let render = render.clone();
                async move {
                    let resp = match req.uri().path() {
                        "/metrics" => Response::builder()
                            .header(
                                hyper::header::CONTENT_TYPE,
                                "text/plain; version=0.0.4; charset=utf-8",
                            )
                            .body(Full::new(Bytes::from(classic(&render())))),
                        _ => Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"metrics are at /metrics\n"))),
                    };
                    Ok::<_, Infallible>(
                        resp.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_DEADLINE)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_by_their_samples_and_eof_goes() {
        let om = "# HELP stj_granted Sessions granted.\n# TYPE stj_granted counter\nstj_granted_total 3\n# HELP stj_jobs Jobs.\n# TYPE stj_jobs gauge\nstj_jobs{state=\"idle\"} 2\n# EOF\n";
        assert_eq!(
            classic(om),
            "# HELP stj_granted_total Sessions granted.\n# TYPE stj_granted_total counter\nstj_granted_total 3\n# HELP stj_jobs Jobs.\n# TYPE stj_jobs gauge\nstj_jobs{state=\"idle\"} 2\n"
        );
    }
}
