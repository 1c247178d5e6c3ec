//! The README's walk-through, run as written: every ```sh block between the
//! `<!-- walkthrough:begin -->` and `<!-- walkthrough:end -->` markers, in order, as one bash
//! script (`set -e`: any failing command fails the test), with the `herald` this build made
//! first on the PATH and `curl` and `jq` from the machine (`.ci/run` installs them). It runs
//! in a fresh directory inside a network namespace of its own (`unshare -n`, loopback only),
//! so the README's fixed ports (8080, 9000, 9001) never meet another test's or another
//! process's. Each `# ...` line under a command is what the README says it prints; the test
//! checks the output against the key ones.
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// The shell blocks between the walkthrough markers, joined in order.
fn walkthrough_script(readme: &str) -> String {
    let begin = readme
        .find("<!-- walkthrough:begin -->")
        .expect("README.md has a walkthrough:begin marker");
    let end = readme
        .find("<!-- walkthrough:end -->")
        .expect("README.md has a walkthrough:end marker");
    assert!(begin < end, "the markers are in order");
    let section = &readme[begin..end];
    let mut script = String::new();
    let mut in_block = false;
    for line in section.lines() {
        if !in_block && line.trim_start() == "```sh" {
            in_block = true;
        } else if in_block && line.trim_start() == "```" {
            in_block = false;
            script.push('\n');
        } else if in_block {
            script.push_str(line);
            script.push('\n');
        }
    }
    assert!(!in_block, "every block in the walk-through is closed");
    script
}

#[test]
fn the_walkthrough_script_is_every_sh_block_between_the_markers() {
    let text = "intro\n```sh\nnot this\n```\n<!-- walkthrough:begin -->\nSay:\n```sh\necho a\n```\n\
                ```json\n{}\n```\ntext\n```sh\necho b\n```\n<!-- walkthrough:end -->\n```sh\nnor this\n```\n";
    assert_eq!(walkthrough_script(text), "echo a\n\necho b\n\n");
}

#[tokio::test]
async fn the_readme_walkthrough_runs_as_written_against_the_built_binary() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let script = walkthrough_script(&readme);
    for needed in ["herald serve", "herald listen", "jq", "recover"] {
        assert!(script.contains(needed), "the walk-through uses {needed}");
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("walkthrough.sh"), &script).unwrap();
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_herald"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // A network namespace of our own, loopback up, then the README's script with `set -e`.
    let child = Command::new("unshare")
        .args([
            "--net",
            "--",
            "bash",
            "-c",
            "ip link set lo up && exec bash -e -o pipefail walkthrough.sh",
        ])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("unshare (util-linux) runs");
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the walk-through finishes within 2 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let log = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    assert!(
        out.status.success(),
        "the walk-through failed ({:?})\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- serve.log\n{}\n--- listen.log\n{}",
        out.status,
        log("serve.log"),
        log("listen.log")
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let app = lines.first().copied().unwrap_or_default();
    assert!(app.starts_with("app_"), "echo $APP: {stdout}");
    for expected in [
        "{\"status\":\"succeeded\",\"deliveries\":[{\"status\":\"succeeded\",\"attempt_count\":1}]}",
        "{\"n\":1,\"status_code\":500}",
        "{\"n\":2,\"status_code\":500}",
        "{\"n\":3,\"status_code\":500}",
        "{\"requeued\":1}",
        "{\"status\":\"succeeded\",\"attempt_count\":4}",
    ] {
        assert!(
            lines.contains(&expected),
            "the README says a command prints {expected}:\n{stdout}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("verified POST /hook  notify id msg_")),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ntf_") && l.ends_with(" refund.success failed")),
        "{stdout}"
    );
    assert!(
        !lines.contains(&"{\"n\":4,\"status_code\":500}"),
        "three attempts, as the schedule says: {stdout}"
    );
    // The fixed receiver took the recovered delivery.
    assert!(
        log("fixed.log").contains("verified POST /hook"),
        "{}",
        log("fixed.log")
    );
}
