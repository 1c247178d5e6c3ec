//! The bench's results and how they are printed: each figure with the baseline measured in
//! the same run, their ratio, and the figure's target with a pass flag; shown as a Markdown
//! table (stdout, pasteable into the README) or as one JSON object (`--json`).
//!
//! Targets are reported, never asserted: a miss is a finding, not a crash.
use serde_json::{json, Map, Value};

/// A figure's target (Herald's own performance goals).
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// The ratio to the baseline is at least this.
    RatioAtLeast(f64),
    /// The figure itself is below this, in the figure's unit.
    Below(f64),
}

/// The reference a figure is compared with, measured in the same run.
#[derive(Clone, Debug)]
pub struct Baseline {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
}

/// One measured number.
#[derive(Clone, Debug)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    pub baseline: Option<Baseline>,
    pub target: Option<Target>,
}

impl Figure {
    pub fn new(name: impl Into<String>, value: f64, unit: &'static str) -> Figure {
        Figure {
            name: name.into(),
            value,
            unit,
            baseline: None,
            target: None,
        }
    }

    /// Compares the figure with `value` (same kind of quantity), called `name`.
    pub fn against(mut self, name: impl Into<String>, value: f64, unit: &'static str) -> Figure {
        self.baseline = Some(Baseline {
            name: name.into(),
            value,
            unit,
        });
        self
    }

    pub fn target(mut self, target: Target) -> Figure {
        self.target = Some(target);
        self
    }

    /// Figure / baseline; `None` without a (positive) baseline.
    pub fn ratio(&self) -> Option<f64> {
        let b = self.baseline.as_ref()?;
        (b.value > 0.0).then(|| self.value / b.value)
    }

    pub fn pass(&self) -> Option<bool> {
        Some(match self.target? {
            Target::RatioAtLeast(r) => self.ratio().is_some_and(|x| x >= r),
            Target::Below(v) => self.value < v,
        })
    }

    fn target_text(&self) -> Option<String> {
        Some(match self.target? {
            Target::RatioAtLeast(r) => format!(">= {r}x"),
            Target::Below(v) => format!("< {} {}", number(v), self.unit),
        })
    }

    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline.as_ref().map(|b| json!({
                "name": b.name,
                "value": b.value,
                "unit": b.unit,
            })),
            "ratio": self.ratio(),
            "target": self.target_text(),
            "pass": self.pass(),
        })
    }
}

/// What one scenario measured.
#[derive(Clone, Debug)]
pub struct ScenarioReport {
    pub name: &'static str,
    /// Wall time of the scenario, set-up included.
    pub seconds: f64,
    pub figures: Vec<Figure>,
}

impl ScenarioReport {
    /// `None` when no figure has a target; otherwise whether all of them pass.
    fn pass(&self) -> Option<bool> {
        let flags: Vec<bool> = self.figures.iter().filter_map(Figure::pass).collect();
        (!flags.is_empty()).then(|| flags.iter().all(|p| *p))
    }
}

/// The whole run.
#[derive(Clone, Debug)]
pub struct Report {
    pub quick: bool,
    pub release: bool,
    pub concurrency: u32,
    pub scenarios: Vec<ScenarioReport>,
}

impl Report {
    /// The summary table, Markdown: scenario | figure | baseline | ratio | target | ok.
    pub fn table(&self) -> String {
        let mut rows = vec![[
            "scenario".to_string(),
            "figure".into(),
            "baseline".into(),
            "ratio".into(),
            "target".into(),
            "ok".into(),
        ]];
        for s in &self.scenarios {
            for f in &s.figures {
                rows.push([
                    s.name.to_string(),
                    format!("{}: {}", f.name, quantity(f.value, f.unit)),
                    f.baseline
                        .as_ref()
                        .map(|b| format!("{}: {}", b.name, quantity(b.value, b.unit)))
                        .unwrap_or_else(|| "-".into()),
                    f.ratio().map(ratio).unwrap_or_else(|| "-".into()),
                    f.target_text().unwrap_or_else(|| "-".into()),
                    match f.pass() {
                        Some(true) => "pass".into(),
                        Some(false) => "FAIL".into(),
                        None => "-".into(),
                    },
                ]);
            }
        }
        let mut widths = [0usize; 6];
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for (i, row) in rows.iter().enumerate() {
            out.push('|');
            for (w, cell) in widths.iter().zip(row) {
                let pad = w - cell.chars().count();
                out.push_str(&format!(" {cell}{} |", " ".repeat(pad)));
            }
            out.push('\n');
            if i == 0 {
                out.push('|');
                for w in widths {
                    out.push_str(&format!("{}|", "-".repeat(w + 2)));
                }
                out.push('\n');
            }
        }
        out
    }

    /// One JSON object: run settings, then each scenario (by name) with its figures.
    pub fn json(&self) -> Value {
        let mut scenarios = Map::new();
        for s in &self.scenarios {
            scenarios.insert(
                s.name.to_string(),
                json!({
                    "seconds": s.seconds,
                    "figures": s.figures.iter().map(Figure::to_json).collect::<Vec<_>>(),
                    "pass": s.pass(),
                }),
            );
        }
        let flags: Vec<bool> = self.scenarios.iter().filter_map(|s| s.pass()).collect();
        json!({
            "herald": env!("CARGO_PKG_VERSION"),
            "build": if self.release { "release" } else { "debug" },
            "quick": self.quick,
            "concurrency": self.concurrency,
            "scenarios": scenarios,
            "pass": flags.iter().all(|p| *p),
        })
    }
}

/// A ratio with two significant digits at least: `0.53x`, `0.0033x`, `12.4x`, `310x`.
pub fn ratio(r: f64) -> String {
    if !r.is_finite() || r <= 0.0 {
        format!("{r}x")
    } else if r >= 100.0 {
        format!("{r:.0}x")
    } else if r >= 10.0 {
        format!("{r:.1}x")
    } else if r >= 0.1 {
        format!("{r:.2}x")
    } else {
        let decimals = (-r.log10()).ceil() as usize + 1;
        format!("{r:.decimals$}x")
    }
}

/// A value with its unit, e.g. `12,345 deliveries/s`, `3.21 ms`.
pub fn quantity(value: f64, unit: &str) -> String {
    format!("{} {unit}", number(value))
}

/// Enough digits to read, not more: thousands separated, decimals only for small values.
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let a = v.abs();
    if a >= 100.0 {
        let digits = format!("{:.0}", a);
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 {
            out.insert(0, '-');
        }
        out
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(number(1234567.4), "1,234,567");
        assert_eq!(number(123.4), "123");
        assert_eq!(number(12.34), "12.3");
        assert_eq!(number(1.234), "1.23");
        assert_eq!(number(-1500.0), "-1,500");
        assert_eq!(ratio(0.5312), "0.53x");
        assert_eq!(ratio(0.00329), "0.0033x");
        assert_eq!(ratio(0.05), "0.050x");
        assert_eq!(ratio(12.44), "12.4x");
        assert_eq!(ratio(1033.5), "1034x");
    }

    #[test]
    fn ratios_and_targets() {
        let f = Figure::new("rate", 60.0, "/s")
            .against("ceiling", 100.0, "/s")
            .target(Target::RatioAtLeast(0.5));
        assert_eq!(f.ratio(), Some(0.6));
        assert_eq!(f.pass(), Some(true));
        let f = Figure::new("p99", 12.0, "ms").target(Target::Below(10.0));
        assert_eq!(f.pass(), Some(false));
        assert_eq!(f.ratio(), None);
        assert_eq!(Figure::new("x", 1.0, "").pass(), None);
    }

    #[test]
    fn table_has_a_header_and_a_row_per_figure() {
        let r = Report {
            quick: true,
            release: false,
            concurrency: 8,
            scenarios: vec![ScenarioReport {
                name: "delivery",
                seconds: 1.0,
                figures: vec![Figure::new("rate", 5.0, "/s")
                    .against("ceiling", 10.0, "/s")
                    .target(Target::RatioAtLeast(0.5))],
            }],
        };
        let t = r.table();
        assert_eq!(t.lines().count(), 3);
        assert!(t.contains("0.50x") && t.contains("pass"), "{t}");
        assert_eq!(r.json()["scenarios"]["delivery"]["pass"], true);
    }
}
