//! The receivers the bench delivers to, on loopback: an acknowledging sink that answers
//! every request at once with a profile's exact acknowledgement (and can note when each
//! `webhook-id` first arrived, for the latency scenario), and a hanging sink that accepts
//! connections, reads what comes and never answers (the isolation scenario's bad
//! endpoints). Both are minimal hyper servers, so they take as little as possible of the
//! machine being measured.
use anyhow::Context as _;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use herald_protocols::Profile;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// When each `webhook-id` first arrived at the sink.
pub type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

/// A sink answering every request with a profile's acknowledgement.
pub struct AckSink {
    pub addr: SocketAddr,
    /// Requests answered.
    pub served: Arc<AtomicU64>,
    /// Set when the sink records arrivals.
    pub arrivals: Option<Arrivals>,
    accept: tokio::task::JoinHandle<()>,
}

struct Answer {
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
    served: Arc<AtomicU64>,
    arrivals: Option<Arrivals>,
}

impl AckSink {
    /// Starts on a random loopback port. Connection tasks end when their client closes;
    /// dropping the sink stops accepting.
    pub async fn start(profile: Profile, record: bool) -> anyhow::Result<AckSink> {
        let listener = bind().await?;
        let addr = listener.local_addr().context("sink address")?;
        let reply = profile.ack_reply();
        let served = Arc::new(AtomicU64::new(0));
        let arrivals = record.then(Arrivals::default);
        let answer = Arc::new(Answer {
            status: StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK),
            content_type: reply.content_type,
            body: Bytes::from(reply.body),
            served: served.clone(),
            arrivals: arrivals.clone(),
        });
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of descriptors, most likely: let some connections close.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let answer = answer.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer_one(req, answer.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(AckSink {
            addr,
            served,
            arrivals,
            accept,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for AckSink {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn answer_one(
    req: Request<Incoming>,
    answer: Arc<Answer>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(arrivals) = &answer.arrivals {
        // Arrival is when the headers are in: the attempt has reached the receiver.
        let now = Instant::now();
        if let Some(id) = req
            .headers()
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
        {
            if let Ok(mut seen) = arrivals.lock() {
                seen.entry(id.to_string()).or_insert(now);
            }
        }
    }
    // Read the whole body, as a real receiver must before answering (and keep-alive needs).
    let _ = req.into_body().collect().await;
    answer.served.fetch_add(1, Ordering::Relaxed);
    let mut resp = Response::new(Full::new(answer.body.clone()));
    *resp.status_mut() = answer.status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(answer.content_type),
    );
    Ok(resp)
}

/// A sink that accepts connections and never answers.
pub struct HangSink {
    pub addr: SocketAddr,
    /// Connections open now (each holds one attempt that is waiting for an answer).
    pub open: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl HangSink {
    pub async fn start() -> anyhow::Result<HangSink> {
        let listener = bind().await?;
        let addr = listener.local_addr().context("sink address")?;
        let open = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = watch::channel(false);
        let accept = {
            let open = open.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((mut stream, _)) = listener.accept().await else {
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    };
                    let (open, mut stopped) = (open.clone(), stopped.clone());
                    open.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(async move {
                        // Read (so the sender's writes complete) and discard, until the
                        // sender gives up or the sink stops; never write a byte.
                        let mut buf = vec![0u8; 4096];
                        loop {
                            tokio::select! {
                                r = stream.read(&mut buf) => match r {
                                    Ok(0) | Err(_) => break,
                                    Ok(_) => {}
                                },
                                _ = stopped.wait_for(|s| *s) => break,
                            }
                        }
                        open.fetch_sub(1, Ordering::Relaxed);
                    });
                }
            })
        };
        Ok(HangSink {
            addr,
            open,
            stop,
            accept,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Closes every held connection (the attempts waiting on them fail at once) and stops
    /// accepting.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        self.accept.abort();
    }
}

async fn bind() -> anyhow::Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind a loopback sink")
}
