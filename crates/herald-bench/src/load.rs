//! The closed-loop load driver and the latency arithmetic. `concurrency` tasks share one
//! pooled keep-alive client and send `n` requests between them, each task sending its next
//! request as soon as the last one is answered. The ceiling, the ingest run and its no-op
//! baseline are all driven by this one function, so they differ only in what answers.
use anyhow::Context as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::progress::Progress;

/// Builds request number `i` on the shared client.
pub type MakeRequest = Arc<dyn Fn(&reqwest::Client, u64) -> reqwest::RequestBuilder + Send + Sync>;

/// What a closed-loop run measured.
#[derive(Debug)]
pub struct LoadResult {
    pub done: u64,
    pub elapsed: Duration,
    /// Every request's round trip (send to last body byte), microseconds, sorted.
    pub round_trips_us: Vec<u64>,
}

impl LoadResult {
    pub fn rate(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `p`-th percentile round trip in milliseconds.
    pub fn round_trip_ms(&self, p: f64) -> f64 {
        percentile(&self.round_trips_us, p) as f64 / 1000.0
    }
}

/// A plain pooled keep-alive client, enough idle connections kept for `concurrency`.
pub fn client(concurrency: u32) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(concurrency as usize)
        .timeout(Duration::from_secs(60))
        .build()
        .context("cannot build the HTTP client")
}

/// Sends `n` requests from `concurrency` tasks; any failure (transport error or non-2xx)
/// stops the run and is returned, since a rate over failed requests means nothing.
pub async fn closed_loop(
    label: &str,
    client: &reqwest::Client,
    n: u64,
    concurrency: u32,
    make: MakeRequest,
) -> anyhow::Result<LoadResult> {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let progress = Progress::start(label, n, {
        let done = done.clone();
        Arc::new(move || done.load(Ordering::Relaxed))
    });
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, make) = (client.clone(), make.clone());
        let (next, done, failed, first_error) = (
            next.clone(),
            done.clone(),
            failed.clone(),
            first_error.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut trips = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || failed.load(Ordering::Relaxed) {
                    break;
                }
                let t0 = Instant::now();
                let outcome = match make(&client, i).send().await {
                    Ok(resp) => {
                        let status = resp.status();
                        match resp.bytes().await {
                            Ok(_) if status.is_success() => Ok(()),
                            Ok(body) => Err(format!(
                                "answered {status}: {}",
                                String::from_utf8_lossy(&body[..body.len().min(200)])
                            )),
                            Err(e) => Err(format!("reading the answer: {e}")),
                        }
                    }
                    Err(e) => Err(e.to_string()),
                };
                match outcome {
                    Ok(()) => {
                        trips.push(t0.elapsed().as_micros() as u64);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        if let Ok(mut first) = first_error.lock() {
                            first.get_or_insert(e);
                        }
                        break;
                    }
                }
            }
            trips
        }));
    }
    let mut round_trips_us = Vec::with_capacity(n as usize);
    for t in tasks {
        round_trips_us.extend(
            t.await
                .with_context(|| format!("{label}: a client task died"))?,
        );
    }
    let elapsed = started.elapsed();
    progress.finish().await;
    if failed.load(Ordering::Relaxed) {
        let e = first_error
            .lock()
            .ok()
            .and_then(|mut f| f.take())
            .unwrap_or_default();
        anyhow::bail!("{label}: a request failed: {e}");
    }
    round_trips_us.sort_unstable();
    Ok(LoadResult {
        done: done.load(Ordering::Relaxed),
        elapsed,
        round_trips_us,
    })
}

/// Nearest-rank percentile (`p` in 0..=100) of sorted values; 0 when empty.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&v, 0.0), 1);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }
}
