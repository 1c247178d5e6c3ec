//! How the API serves HTTP/1 connections: an accept loop with a cap on open connections,
//! a header-read timeout and an idle timeout per connection, the process's descriptor limit
//! raised at start, and graceful shutdown. Slow or idle clients cannot hold descriptors the
//! engine needs for deliveries, nor lock fresh requests (such as `/healthz`) out.
//!
//! Timeouts, per connection, while no request is being handled:
//! - idle: no byte of a next request for `idle_timeout` (a new connection, or a keep-alive
//!   one after its last response) closes the connection;
//! - header read: once the first byte of a request arrived, the whole head must follow
//!   within `header_read_timeout`, however slowly it drips.
//!
//! While a request is being handled neither applies; its body must then arrive within
//! `body_read_timeout` of its head (a body dripping slower fails the request, and the
//! connection closes).
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;

/// The API's connection limits (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Most time from a request's first byte to the end of its head.
    pub header_read_timeout: Duration,
    /// Most time a connection may wait for the first byte of a request.
    pub idle_timeout: Duration,
    /// Most time from the end of a request's head to the end of its body.
    pub body_read_timeout: Duration,
    /// Most API connections open at once; `None`: a quarter of the descriptor limit in
    /// force after start, at most [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: Option<usize>,
}

pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(20);
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            max_connections: None,
        }
    }
}

impl HttpLimits {
    /// The connection cap in force: the configured one, or a quarter of the descriptor
    /// limit (the rest is for the engine's outgoing connections and the database), between
    /// 16 and [`DEFAULT_MAX_CONNECTIONS`].
    pub fn connection_cap(&self, nofile: Option<u64>) -> usize {
        match (self.max_connections, nofile) {
            (Some(n), _) => n,
            (None, Some(limit)) => usize::try_from(limit / 4)
                .map_or(DEFAULT_MAX_CONNECTIONS, |q| {
                    q.clamp(16, DEFAULT_MAX_CONNECTIONS)
                }),
            (None, None) => DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the (soft, hard) limits in
/// force afterwards. Outgoing deliveries, the database and API connections all need
/// descriptors, and the common default soft limit (1,024) is far below what the hard limit
/// usually allows.
#[cfg(unix)]
#[allow(unsafe_code)] // getrlimit/setrlimit have no safe wrapper in std
pub fn raise_descriptor_limit() -> std::io::Result<(u64, u64)> {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which lives on this stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if current.rlim_cur < current.rlim_max {
        // An unlimited hard limit is not a valid soft limit for descriptors (the kernel caps
        // it at fs.nr_open); ask for a generous finite number then.
        let target = if current.rlim_max == libc::RLIM_INFINITY {
            1 << 20
        } else {
            current.rlim_max
        };
        let wanted = libc::rlimit {
            rlim_cur: target.max(current.rlim_cur),
            rlim_max: current.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
            current = wanted;
        } else {
            let e = std::io::Error::last_os_error();
            tracing::warn!(error = %e, soft = current.rlim_cur, hard = current.rlim_max,
                "cannot raise the open-file (descriptor) limit");
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not on every Unix
    Ok((current.rlim_cur as u64, current.rlim_max as u64))
}

#[cfg(not(unix))]
pub fn raise_descriptor_limit() -> std::io::Result<(u64, u64)> {
    Err(std::io::Error::other(
        "no descriptor limit on this platform",
    ))
}

/// What one connection is doing, shared by its socket wrapper, its service wrapper and the
/// task that enforces its timeouts.
struct ConnState {
    clock: Mutex<Clock>,
    /// Signalled when a request starts or ends, or a request's first byte arrives.
    changed: Notify,
    /// Signalled when the accept loop needs this connection's slot.
    evict: Notify,
}

struct Clock {
    /// Requests being handled.
    busy: usize,
    /// When the connection started waiting for its next request.
    waiting_since: Instant,
    /// When the first byte of that request arrived.
    first_byte_at: Option<Instant>,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            clock: Mutex::new(Clock {
                busy: 0,
                waiting_since: Instant::now(),
                first_byte_at: None,
            }),
            changed: Notify::new(),
            evict: Notify::new(),
        }
    }

    fn clock(&self) -> MutexGuard<'_, Clock> {
        self.clock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the connection closes if nothing happens; `None` while a request is handled.
    fn deadline(&self, limits: &HttpLimits) -> Option<Instant> {
        let c = self.clock();
        if c.busy > 0 {
            return None;
        }
        Some(match c.first_byte_at {
            Some(t) => t + limits.header_read_timeout,
            None => c.waiting_since + limits.idle_timeout,
        })
    }

    /// Since when the connection waits for a request; `None` while one is handled.
    fn waiting_since(&self) -> Option<Instant> {
        let c = self.clock();
        (c.busy == 0).then_some(c.waiting_since)
    }

    fn bytes_read(&self) {
        let mut c = self.clock();
        if c.busy == 0 && c.first_byte_at.is_none() {
            c.first_byte_at = Some(Instant::now());
            drop(c);
            self.changed.notify_one();
        }
    }

    fn request_started(&self) {
        self.clock().busy += 1;
        self.changed.notify_one();
    }

    fn request_ended(&self) {
        let mut c = self.clock();
        c.busy = c.busy.saturating_sub(1);
        if c.busy == 0 {
            c.waiting_since = Instant::now();
            c.first_byte_at = None;
        }
        drop(c);
        self.changed.notify_one();
    }
}

/// The socket, noting when bytes of a request arrive.
struct Watched {
    io: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.bytes_read();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The router, noting when each request starts and ends, and bounding how long its body
/// may take.
#[derive(Clone)]
struct Tracked {
    inner: TowerToHyperService<Router>,
    state: Arc<ConnState>,
    body_read_timeout: Duration,
}

/// A request body that fails once its deadline passes before it ends.
struct TimedBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

/// The error a [`TimedBody`] ends with.
pub use herald_http::BodyTimeout;

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimeout))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Marks a request as handled until dropped: it travels with the response body, so a
/// request counts as handled until its response is written (also when the connection is
/// dropped mid-way).
struct Busy(Arc<ConnState>);

/// A response body holding its request's [`Busy`] mark.
struct MarkedBody {
    inner: Body,
    _busy: Busy,
}

impl http_body::Body for MarkedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

impl hyper::service::Service<hyper::Request<Incoming>> for Tracked {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        self.state.request_started();
        let busy = Busy(self.state.clone());
        let deadline = Box::pin(tokio::time::sleep(self.body_read_timeout));
        let req = req.map(|b| {
            Body::new(TimedBody {
                inner: Body::new(b),
                deadline,
            })
        });
        let response = self.inner.call(req);
        Box::pin(async move {
            let r = response.await;
            r.map(|resp| {
                resp.map(|b| {
                    Body::new(MarkedBody {
                        inner: b,
                        _busy: busy,
                    })
                })
            })
        })
    }
}

type Registry = Arc<Mutex<HashMap<u64, Arc<ConnState>>>>;

fn registry(r: &Registry) -> MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

/// Asks the connection that has waited longest for a request to close; false when every
/// connection is handling one.
fn evict_longest_waiting(r: &Registry) -> bool {
    let victim = registry(r)
        .values()
        .filter_map(|s| s.waiting_since().map(|t| (t, s.clone())))
        .min_by_key(|(t, _)| *t)
        .map(|(_, s)| s);
    match victim {
        Some(s) => {
            s.evict.notify_one();
            true
        }
        None => false,
    }
}

/// True for accept errors that mean this process or machine is out of resources (the
/// loop pauses instead of spinning).
fn out_of_resources(e: &std::io::Error) -> bool {
    herald_engine::attempt::is_local_resource_error(e)
}

/// Serves `router` on `listener` until `stop` turns true, then lets open connections
/// finish their requests (idle ones close at once) and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    max_connections: usize,
    mut stop: watch::Receiver<bool>,
) {
    let max_connections = max_connections.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let permits = Arc::new(Semaphore::new(max_connections));
    let open: Registry = Arc::default();
    let service = TowerToHyperService::new(router);
    let mut next_id = 0u64;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if out_of_resources(&e) => {
                tracing::warn!(error = %e, "cannot accept an API connection: out of local resources; pausing accepts for 100 ms");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                continue;
            }
        };
        // At the cap, the loop waits rather than closing the new connection at once: it
        // asks the connection that has waited longest for a request (an idle keep-alive
        // or a slow client) to close and takes its slot, or, when every connection is
        // handling a request, waits for one to finish. Meanwhile further clients queue in
        // the kernel's listen backlog, where they hold none of Herald's descriptors; a
        // flood of slow or idle clients thus cannot lock a fresh request out, and a burst
        // of real work is served in turn instead of being refused.
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                evict_longest_waiting(&open);
                tokio::select! {
                    p = permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::new(ConnState::new());
        let id = next_id;
        next_id += 1;
        registry(&open).insert(id, state.clone());
        let io = TokioIo::new(Watched {
            io: stream,
            state: state.clone(),
        });
        let svc = Tracked {
            inner: service.clone(),
            state: state.clone(),
            body_read_timeout: limits.body_read_timeout,
        };
        let limits = limits.clone();
        let stop = stop.clone();
        let open = open.clone();
        tokio::spawn(async move {
            serve_connection(io, svc, state, &limits, stop).await;
            registry(&open).remove(&id);
            drop(permit);
        });
    }
    drop(listener);
    // Every connection task holds a permit until it ends.
    let _ = permits.acquire_many(max_connections as u32).await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn serve_connection(
    io: TokioIo<Watched>,
    svc: Tracked,
    state: Arc<ConnState>,
    limits: &HttpLimits,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The timeouts are enforced below (hyper's own header timer would also run while a
    // keep-alive connection waits for its next request, which is the idle timeout's job).
    builder.header_read_timeout(None);
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let deadline = state.deadline(limits);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "API connection ended with an error");
                }
                return;
            }
            _ = sleep_until(deadline) => {
                if state.deadline(limits).is_some_and(|d| d <= Instant::now()) {
                    return; // dropping the connection closes it
                }
            }
            _ = state.changed.notified() => {}
            _ = state.evict.notified() => {
                if state.waiting_since().is_some() {
                    return;
                }
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_connection_cap_leaves_most_descriptors_to_the_engine() {
        let l = HttpLimits::default();
        assert_eq!(l.connection_cap(Some(256)), 64);
        assert_eq!(l.connection_cap(Some(1024)), 256);
        assert_eq!(l.connection_cap(Some(1 << 20)), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(l.connection_cap(Some(10)), 16);
        assert_eq!(l.connection_cap(None), DEFAULT_MAX_CONNECTIONS);
        let l = HttpLimits {
            max_connections: Some(7),
            ..HttpLimits::default()
        };
        assert_eq!(l.connection_cap(Some(1 << 20)), 7);
    }

    #[test]
    fn deadlines_follow_the_idle_then_the_header_timeout() {
        let limits = HttpLimits {
            header_read_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(50),
            body_read_timeout: Duration::from_secs(5),
            max_connections: None,
        };
        let near = |d: Option<Instant>, secs: u64| {
            let left = d.expect("a deadline") - Instant::now();
            assert!(
                left <= Duration::from_secs(secs) && left > Duration::from_secs(secs - 1),
                "{left:?} vs {secs} s"
            );
        };
        let s = ConnState::new();
        near(s.deadline(&limits), 50);
        s.bytes_read();
        near(s.deadline(&limits), 3);
        s.bytes_read(); // later bytes of the same head do not extend it
        near(s.deadline(&limits), 3);
        s.request_started();
        assert_eq!(s.deadline(&limits), None);
        assert_eq!(s.waiting_since(), None);
        s.bytes_read(); // the body: no deadline while the request is handled
        assert_eq!(s.deadline(&limits), None);
        s.request_ended();
        near(s.deadline(&limits), 50);
        assert!(s.waiting_since().is_some());
    }
}
