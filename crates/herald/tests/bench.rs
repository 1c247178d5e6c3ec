//! `herald bench`: the quick run reports every scenario with positive, finite figures in its
//! JSON; e2e reports the process's CPU time per notification, and on PostgreSQL one node and
//! three for each shape (one endpoint, six, each notification's own `notify_url`); a debug
//! build refuses a full run; `--help` explains every scenario. Nothing about speed is
//! asserted: a debug build on a shared machine measures nothing worth asserting.
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_herald");

const SCENARIOS: [&str; 8] = [
    "ceiling",
    "delivery",
    "ingest",
    "e2e",
    "latency",
    "isolation",
    "backlog",
    "profiles",
];

fn positive(v: &Value, what: &str) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x.is_finite() && x > 0.0, "{what} = {x}");
    x
}

/// Runs `herald` with `args` (RUST_LOG=warn), asserts that it succeeded, and returns its
/// standard output and standard error.
fn run_ok(args: &[&str], dir: Option<&std::path::Path>) -> (Vec<u8>, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env("RUST_LOG", "warn");
    if let Some(dir) = dir {
        cmd.arg("--dir").arg(dir);
    }
    let out = cmd.output().expect("run herald bench");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "herald {args:?}: {}\n{stderr}",
        out.status
    );
    (out.stdout, stderr)
}

/// `herald bench --quick --json --scenario e2e --e2e-db <db>`: the report, and standard
/// error.
fn quick_e2e_report(db: &str, dir: Option<&std::path::Path>) -> (Value, String) {
    let (stdout, stderr) = run_ok(
        &[
            "bench",
            "--quick",
            "--json",
            "--scenario",
            "e2e",
            "--e2e-db",
            db,
        ],
        dir,
    );
    let report = serde_json::from_slice(&stdout).expect("one JSON object");
    (report, stderr)
}

/// The e2e scenario's figures in a `--json` report.
fn e2e_figures(report: &Value) -> &Vec<Value> {
    report["scenarios"]["e2e"]["figures"]
        .as_array()
        .unwrap_or_else(|| panic!("no e2e in {report:#}"))
}

#[test]
fn quick_json_reports_every_scenario() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (stdout, stderr) = run_ok(&["bench", "--quick", "--json"], Some(dir.path()));
    // Progress goes to standard error, in the fixed format.
    assert!(stderr.contains("bench delivery "), "{stderr}");
    let report: Value = serde_json::from_slice(&stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {}",
            String::from_utf8_lossy(&stdout)
        )
    });
    assert_eq!(report["quick"], true);
    assert!(report["pass"].is_boolean());
    let scenarios = report["scenarios"].as_object().expect("scenarios");
    assert_eq!(scenarios.len(), SCENARIOS.len(), "{report:#}");
    for name in SCENARIOS {
        let s = &report["scenarios"][name];
        let figures = s["figures"]
            .as_array()
            .unwrap_or_else(|| panic!("no {name} in {report:#}"));
        assert!(!figures.is_empty(), "{name} has no figures");
        positive(&s["seconds"], &format!("{name}.seconds"));
        for f in figures {
            let what = format!("{name}: {}", f["name"]);
            if f["unit"] == "% of a core" {
                // Idle CPU over a one-second window may be zero clock ticks.
                let x = f["value"].as_f64().expect("idle CPU");
                assert!(x.is_finite() && x >= 0.0, "{what} = {x}");
            } else {
                positive(&f["value"], &what);
            }
            if !f["baseline"].is_null() {
                positive(&f["baseline"]["value"], &format!("{what} baseline"));
                positive(&f["ratio"], &format!("{what} ratio"));
            }
            if f["target"].is_null() {
                assert!(f["pass"].is_null(), "{what}: a pass flag without a target");
            } else {
                assert!(
                    f["pass"].is_boolean(),
                    "{what}: a target without a pass flag"
                );
            }
        }
    }
    // The temporary databases are gone.
    let left = std::fs::read_dir(dir.path()).expect("dir").count();
    assert_eq!(
        left,
        0,
        "temporary databases left in {}",
        dir.path().display()
    );
}

#[test]
fn e2e_db_sqlite_measures_on_sqlite_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (report, stderr) = quick_e2e_report("sqlite", Some(dir.path()));
    assert!(!stderr.contains("postgres"), "{stderr}");
    let figures = e2e_figures(&report);
    assert_eq!(figures.len(), 2, "{report:#}");
    let name = figures[0]["name"].as_str().expect("a figure name");
    assert!(name.starts_with("SQLite"), "{name}");
    assert_eq!(figures[0]["unit"], "notifications/s", "{report:#}");
    positive(&figures[0]["value"], name);
}

#[test]
fn e2e_reports_cpu_time_per_notification_of_each_phase() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e2e = [
        "bench",
        "--quick",
        "--scenario",
        "e2e",
        "--e2e-db",
        "sqlite",
    ];
    let (stdout, _) = run_ok(&e2e, Some(dir.path()));
    // The table shows it ...
    let table = String::from_utf8_lossy(&stdout);
    assert!(
        table.lines().any(
            |l| l.contains("SQLite: CPU time of the whole process per notification")
                && l.contains("µs CPU/notification")
        ),
        "{table}"
    );
    // ... and the JSON carries it, positive, with no target of its own.
    let (stdout, _) = run_ok(&[&e2e[..], &["--json"]].concat(), Some(dir.path()));
    let report: Value = serde_json::from_slice(&stdout).expect("one JSON object");
    let figures = e2e_figures(&report);
    let cpu = figures
        .iter()
        .find(|f| f["unit"] == "µs CPU/notification")
        .unwrap_or_else(|| panic!("no CPU figure in {report:#}"));
    assert!(
        cpu["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("SQLite")),
        "{cpu}"
    );
    let us = positive(&cpu["value"], "CPU per notification");
    // At least some work per notification, at most a whole second: a unit slip shows.
    assert!((1.0..1e6).contains(&us), "{us} µs per notification");
    assert!(cpu["target"].is_null() && cpu["pass"].is_null(), "{cpu}");
    // It is read against the ceiling's CPU per request, measured in the same run: the
    // ratio is how many of the ceiling's exchanges a notification costs.
    let per_request = report["scenarios"]["ceiling"]["figures"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["unit"] == "µs CPU/request"))
        .unwrap_or_else(|| panic!("no CPU figure of the ceiling in {report:#}"));
    let request_us = positive(&per_request["value"], "CPU per request");
    assert!(
        (1.0..1e6).contains(&request_us),
        "{request_us} µs per request"
    );
    assert_eq!(cpu["baseline"]["name"], "ceiling, per request", "{cpu}");
    assert_eq!(cpu["baseline"]["value"], per_request["value"], "{cpu}");
    let ratio = positive(&cpu["ratio"], "notification to request");
    assert!((ratio - us / request_us).abs() < 1e-9, "{cpu}");
}

#[test]
fn e2e_on_postgres_measures_one_node_and_three_for_each_shape_notify_url_included() {
    let (report, _) = quick_e2e_report("postgres", None);
    let figures = e2e_figures(&report);
    let rates: Vec<(&str, Option<&str>)> = figures
        .iter()
        .filter(|f| f["unit"] == "notifications/s")
        .map(|f| {
            positive(&f["value"], &f["name"].to_string());
            (
                f["name"].as_str().unwrap_or_default(),
                f["baseline"]["name"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        rates,
        [
            ("PostgreSQL, one node", Some("ceiling")),
            ("PostgreSQL, three nodes on one database", Some("one node")),
            ("PostgreSQL, one node, 6 endpoints", Some("ceiling")),
            (
                "PostgreSQL, three nodes on one database, 6 endpoints",
                Some("one node, 6 endpoints")
            ),
            ("PostgreSQL, one node, notify_url", Some("ceiling")),
            (
                "PostgreSQL, three nodes on one database, notify_url",
                Some("one node, notify_url")
            ),
        ],
        "{report:#}"
    );
}

#[test]
fn a_debug_build_refuses_a_full_run() {
    if !cfg!(debug_assertions) {
        return; // The binary under test is a release build: it would run for minutes.
    }
    let out = Command::new(BIN)
        .args(["bench", "--scenario", "profiles"])
        .output()
        .expect("run herald bench");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("debug build") && stderr.contains("--allow-debug"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn help_explains_every_scenario_and_flag() {
    let out = Command::new(BIN)
        .args(["bench", "--help"])
        .output()
        .expect("run herald bench --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in SCENARIOS.iter().chain(&[
        "--quick",
        "--json",
        "--scenario",
        "--concurrency",
        "--allow-debug",
        "--e2e-db",
    ]) {
        assert!(
            help.contains(word),
            "--help does not mention {word}:\n{help}"
        );
    }
    assert!(!help.contains("backlog-probe"), "internal flags are hidden");
}
