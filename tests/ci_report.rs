//! Reports that CI shows natively, through the real binary with the CI's variables set on
//! the child: the GitHub step summary (parsed as the Markdown table it is) and `::warning`
//! annotations, and GitLab's collapsible section around a wait (its markers parsed).

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use support::{Backend, Env, assert_code, stderr};

/// A GitHub Actions job of run `run`, writing its step summary to `summary`.
fn github(e: &Env, run: &str, summary: &std::path::Path) -> Command {
    let mut c = e.cmd();
    c.env("GITHUB_ACTIONS", "true")
        .env("GITHUB_REPOSITORY", format!("org/{}", e.test))
        .env("GITHUB_RUN_ID", run)
        .env("GITHUB_RUN_NUMBER", run)
        .env("GITHUB_RUN_ATTEMPT", "1")
        .env("GITHUB_JOB", "deploy")
        .env("GITHUB_STEP_SUMMARY", summary);
    c
}

/// A GitLab job of pipeline `pipeline`.
fn gitlab(e: &Env, pipeline: &str) -> Command {
    let mut c = e.cmd();
    c.env("GITLAB_CI", "true")
        .env("CI_SERVER_HOST", "gitlab.example.com")
        .env("CI_PROJECT_PATH", format!("group/{}", e.test))
        .env("CI_PIPELINE_ID", pipeline)
        .env("CI_PIPELINE_IID", pipeline)
        .env("CI_JOB_ID", "1");
    c
}

/// The step summary's blocks: each heading with its table as (column, value) pairs.
fn blocks(summary: &std::path::Path) -> Vec<(String, Vec<(String, String)>)> {
    let text = std::fs::read_to_string(summary).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let split = |l: &str| -> Vec<String> { l.trim().trim_matches('|').split(" | ").map(|c| c.trim().to_string()).collect() };
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if let Some(heading) = l.strip_prefix("### pipeline-lock: ") {
            let (names, sep, values) = (split(lines[i + 2]), lines[i + 3], split(lines[i + 4]));
            assert!(sep.starts_with("| --- |"), "no separator row in:\n{text}");
            assert_eq!(names.len(), values.len(), "{text}");
            out.push((heading.to_string(), names.into_iter().zip(values).collect()));
        }
    }
    out
}

fn cell<'a>(block: &'a (String, Vec<(String, String)>), name: &str) -> &'a str {
    &block
        .1
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no column {name} in {block:?}"))
        .1
}

#[test]
fn github_gets_a_summary_block_per_command_and_a_warning_for_a_takeover() {
    let e = Env::new(Backend::File, "ci-github");
    let summary = std::env::temp_dir().join(format!("{}-summary.md", e.test));
    // A lock name with the characters annotations escape.
    let lock = e.lock("deploy 100%, eu:1");
    assert_code(&e.run("old", &lock, &["acquire", "--ttl", "1s"]), 0);
    let out: Output = github(&e, "41", &summary)
        .args([
            "--lock",
            &lock,
            "acquire",
            "--retry-interval",
            "200ms",
            "--clock-margin",
            "200ms",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert_code(&out, 0);
    let grant: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is still one JSON document");
    let b = blocks(&summary);
    assert_eq!(b.len(), 1, "{b:?}");
    assert!(b[0].0.contains("taken over from old"), "{:?}", b[0].0);
    assert_eq!(cell(&b[0], "holder"), grant["owner"].as_str().unwrap());
    assert_eq!(cell(&b[0], "fence"), grant["fence"].to_string());
    assert!(cell(&b[0], "waited").ends_with('s'), "{b:?}");
    assert_eq!(cell(&b[0], "queue"), "nobody else waiting");
    let err = stderr(&out);
    let warning = err
        .lines()
        .find(|l| l.starts_with("::warning "))
        .unwrap_or_else(|| panic!("no annotation: {err}"));
    assert!(warning.starts_with("::warning title=lock taken over::"), "{warning}");
    assert!(warning.contains("100%25, eu:1"), "the message is escaped: {warning}");
    let token = grant["token"].as_str().unwrap();
    let written = std::fs::read_to_string(&summary).unwrap();
    assert!(!written.contains(token) && !err.contains(token), "the token is never shown");
    // The release adds its own block with the released fence.
    let out = github(&e, "41", &summary).args(["--lock", &lock, "release"]).output().unwrap();
    assert_code(&out, 0);
    let b = blocks(&summary);
    assert_eq!(b.len(), 2, "{b:?}");
    assert!(b[1].0.contains("released"), "{b:?}");
    assert_eq!(cell(&b[1], "fence"), grant["fence"].to_string());
    let _ = std::fs::remove_file(&summary);
}

#[test]
fn github_warns_of_a_lost_lease_and_run_reports_its_grant() {
    let e = Env::new(Backend::File, "ci-github-lost");
    let summary = std::env::temp_dir().join(format!("{}-summary.md", e.test));
    let lock = e.lock("l");
    assert_code(&github(&e, "7", &summary).args(["--lock", &lock, "acquire"]).output().unwrap(), 0);
    assert_code(&e.run("breaker", &lock, &["acquire", "--force", "--reason", "stuck"]), 0);
    let out = github(&e, "7", &summary).args(["--lock", &lock, "release"]).output().unwrap();
    assert_code(&out, 76);
    assert!(
        stderr(&out).lines().any(|l| l.starts_with("::warning title=lease lost::")),
        "{}",
        stderr(&out)
    );
    let b = blocks(&summary);
    assert!(b.last().is_some_and(|b| b.0.contains("lease lost")), "{b:?}");
    let other = e.lock("run");
    let out = github(&e, "7", &summary).args(["--lock", &other, "run", "--", "true"]).output().unwrap();
    assert_code(&out, 0);
    let b = blocks(&summary);
    assert!(b.last().is_some_and(|b| b.0.contains("acquired") && cell(b, "lock") == other), "{b:?}");
    let _ = std::fs::remove_file(&summary);
}

#[test]
fn outside_github_nothing_is_annotated() {
    let e = Env::new(Backend::File, "ci-none");
    let lock = e.lock("l");
    assert_code(&e.run("old", &lock, &["acquire", "--ttl", "1s"]), 0);
    let out = e.run("new", &lock, &["acquire", "--retry-interval", "200ms", "--clock-margin", "200ms"]);
    assert_code(&out, 0);
    assert!(!stderr(&out).contains("::warning"), "{}", stderr(&out));
}

/// The GitLab section markers of `log`: (start or end, unix seconds, name, line index).
fn markers(log: &str) -> Vec<(&'static str, u64, String, usize)> {
    let mut out = Vec::new();
    for (i, line) in log.lines().enumerate() {
        for (kind, tag) in [("start", "\x1b[0Ksection_start:"), ("end", "\x1b[0Ksection_end:")] {
            if let Some(rest) = line.strip_prefix(tag) {
                let (ts, rest) = rest.split_once(':').unwrap();
                let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || "_.-".contains(*c)).collect();
                let after = &rest[name.len()..];
                if kind == "start" {
                    assert!(after.starts_with("[collapsed=true]\r\x1b[0K"), "{line:?}");
                } else {
                    assert!(after.starts_with("\r\x1b[0K"), "{line:?}");
                }
                out.push((kind, ts.parse().unwrap(), name, i));
            }
        }
    }
    out
}

#[test]
fn gitlab_puts_the_progress_of_a_wait_in_a_collapsed_section_and_the_last_line_outside() {
    let e = Env::new(Backend::File, "ci-gitlab");
    let lock = e.lock("l");
    assert_code(&e.run("holder", &lock, &["acquire"]), 0);
    // A wait that runs out: the error line is the final line, after the section.
    let out = gitlab(&e, "9")
        .args(["--lock", &lock, "acquire", "--wait", "1s", "--retry-interval", "200ms", "-v"])
        .output()
        .unwrap();
    assert_code(&out, 75);
    let log = stderr(&out);
    let m = markers(&log);
    assert_eq!(m.len(), 2, "{log:?}");
    let ((_, start_ts, start, start_at), (end_kind, end_ts, end, end_at)) = (&m[0], &m[1]);
    assert_eq!((m[0].0, *end_kind, start), ("start", "end", end));
    assert!(start_ts <= end_ts);
    let lines: Vec<&str> = log.lines().collect();
    let inside = &lines[start_at + 1..*end_at];
    assert!(
        inside.len() >= 2 && inside.iter().all(|l| l.starts_with("pipeline-lock: waiting for lock")),
        "{inside:?}"
    );
    let after = &lines[end_at + 1..];
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(after[0].contains("gave up waiting"), "{after:?}");
    // A wait that ends with the grant: the section closes, the grant line is on stdout.
    let waiter = gitlab(&e, "10")
        .args(["--lock", &lock, "acquire", "--wait", "20s", "--retry-interval", "200ms"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert_code(&e.run("holder", &lock, &["release"]), 0);
    let out = waiter.wait_with_output().unwrap();
    assert_code(&out, 0);
    let m = markers(&stderr(&out));
    assert_eq!(m.iter().map(|m| m.0).collect::<Vec<_>>(), ["start", "end"], "{:?}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("acquired lock"));
    // run's wait is folded the same way.
    let holder = e.lock("run");
    assert_code(&e.run("holder", &holder, &["acquire", "--ttl", "1s"]), 0);
    let out = gitlab(&e, "12")
        .args([
            "--lock",
            &holder,
            "run",
            "--retry-interval",
            "200ms",
            "--clock-margin",
            "200ms",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_code(&out, 0);
    assert_eq!(
        markers(&stderr(&out)).iter().map(|m| m.0).collect::<Vec<_>>(),
        ["start", "end"],
        "{:?}",
        stderr(&out)
    );
    // Nothing is waited for, nothing is folded.
    let quick = gitlab(&e, "11").args(["--lock", &e.lock("free"), "acquire"]).output().unwrap();
    assert_code(&quick, 0);
    assert!(markers(&stderr(&quick)).is_empty());
}
