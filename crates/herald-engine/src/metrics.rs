//! What the engine measures for `GET /metrics`: labelled counters and fixed-bucket
//! histograms, cheap to update from attempt tasks (atomics, or a short mutex around a small
//! map), read as snapshots by the exposition code in the `herald` crate.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) for latency histograms: 1 ms to 30 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A histogram with fixed upper bounds, as Prometheus defines one.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); the last one is `+Inf`.
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(LATENCY_BUCKETS)
    }
}

/// A histogram as read at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, cumulative count)`; the `+Inf` bucket is `count`.
    pub buckets: Vec<(f64, u64)>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(&self.counts)
            .map(|(b, c)| {
                cumulative += c.load(Ordering::Relaxed);
                (*b, cumulative)
            })
            .collect();
        let count = cumulative + self.counts[self.bounds.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count,
        }
    }
}

/// Counters keyed by a small set of label values.
#[derive(Debug, Default)]
pub struct Counters(Mutex<BTreeMap<Vec<&'static str>, u64>>);

impl Counters {
    pub fn inc(&self, labels: &[&'static str]) {
        if let Ok(mut m) = self.0.lock() {
            match m.get_mut(labels) {
                Some(n) => *n += 1,
                None => {
                    m.insert(labels.to_vec(), 1);
                }
            }
        }
    }

    pub fn snapshot(&self) -> Vec<(Vec<&'static str>, u64)> {
        self.0
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }
}

/// The engine's labelled measurements.
#[derive(Debug, Default)]
pub struct EngineMetrics {
    /// Attempts by `(profile, result)`: `succeeded`, `retry` (not acknowledged, tried again
    /// later) or `failed` (not acknowledged, schedule spent).
    pub attempts: Counters,
    /// Deliveries that ended, by `(profile, status)`: `succeeded` or `failed`.
    pub deliveries: Counters,
    /// Duration of the HTTP exchange of every attempt.
    pub attempt_seconds: Histogram,
    /// Time for the store to commit an attempt's outcome.
    pub store_commit_seconds: Histogram,
    /// Breaker transitions by kind (`opened`, `reopened`, `recovered`, `disabled`).
    pub breaker_transitions: Counters,
    /// Operational notifications by `(event type, result)`: `queued` (committed by the store
    /// with the transition this node recorded; delivered like any notification after that).
    pub ops_notifications: Counters,
}
