//! The progress line on standard error. While a phase runs, one fixed-format line every 2 s
//! (as River's bench does): phase, a bar, done/total, the rate over the last interval and
//! the time so far; and a last line with the average rate when the phase ends. The count
//! comes from whoever knows it best: the engine's counters for deliveries, the client for
//! accepted requests, the sink for arrivals.
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Reads the current count.
pub type Counter = Arc<dyn Fn() -> u64 + Send + Sync>;

const EVERY: Duration = Duration::from_secs(2);
const BAR: usize = 20;

/// A running progress line; [`Progress::finish`] prints the last line. Dropping it without
/// finishing (an error path) just stops the line.
pub struct Progress {
    label: String,
    total: u64,
    counter: Counter,
    started: Instant,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    pub fn start(label: impl Into<String>, total: u64, counter: Counter) -> Progress {
        let label = label.into();
        let started = Instant::now();
        let (stop, mut stopped) = oneshot::channel();
        let task = {
            let (label, counter) = (label.clone(), counter.clone());
            tokio::spawn(async move {
                let mut last = (started, 0u64);
                loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        _ = tokio::time::sleep(EVERY) => {}
                    }
                    let now = Instant::now();
                    let done = counter();
                    let dt = now.duration_since(last.0).as_secs_f64();
                    let rate = done.saturating_sub(last.1) as f64 / dt.max(1e-9);
                    eprintln!("{}", line(&label, done, total, rate, started.elapsed()));
                    last = (now, done);
                }
            })
        };
        Progress {
            label,
            total,
            counter,
            started,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the periodic line and prints the final one (average rate over the phase).
    pub async fn finish(mut self) {
        self.halt();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let elapsed = self.started.elapsed();
        let done = (self.counter)();
        let rate = done as f64 / elapsed.as_secs_f64().max(1e-9);
        eprintln!(
            "{} done",
            line(&self.label, done, self.total, rate, elapsed)
        );
    }

    fn halt(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.halt();
    }
}

/// `bench delivery         [#########...........]     45000/100000    45.0%     22500/s     2.0s`
fn line(label: &str, done: u64, total: u64, rate: f64, elapsed: Duration) -> String {
    let frac = if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).clamp(0.0, 1.0)
    };
    let filled = (frac * BAR as f64).round() as usize;
    format!(
        "bench {label:<26} [{}{}] {done:>9}/{total:<9} {:>5.1}% {rate:>9.0}/s {:>7.1}s",
        "#".repeat(filled),
        ".".repeat(BAR - filled),
        frac * 100.0,
        elapsed.as_secs_f64(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_has_a_fixed_format() {
        let l = line("delivery", 50, 100, 25.0, Duration::from_secs(2));
        assert!(l.starts_with("bench delivery "), "{l}");
        assert!(l.contains("[##########..........]"), "{l}");
        assert!(l.contains("50/100"), "{l}");
        assert!(
            l.contains("50.0%") && l.contains("25/s") && l.ends_with("2.0s"),
            "{l}"
        );
        // Over-counting (a retried request) never breaks the bar.
        assert!(line("x", 200, 100, 0.0, Duration::ZERO).contains("100.0%"));
    }
}
