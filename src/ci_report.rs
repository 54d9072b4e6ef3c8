//! Reports that CI shows natively (docs/design.md, "Notifications and CI reports (v2)").
//! GitHub Actions: `acquire`, `run` and `release` append a short Markdown block to
//! `$GITHUB_STEP_SUMMARY` (lock, holder, fence, waited, queue), and takeovers and lost leases
//! become `::warning` annotations, escaped as the runner requires. GitLab CI: a wait's
//! progress lines go into a collapsed log section, and the final line stays outside it.
//! Nothing here carries a token or a notification URL.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::ci::Env;
use crate::locker::{Grant, How};

/// What this job's CI shows, from its environment.
#[derive(Debug, Default)]
pub struct CiReport {
    /// `$GITHUB_STEP_SUMMARY`, in GitHub Actions.
    summary: Option<PathBuf>,
    /// `GITHUB_ACTIONS=true`: workflow commands are read from the log.
    github: bool,
    /// `GITLAB_CI=true`: the log knows collapsible sections.
    gitlab: bool,
    /// The GitLab section a wait opened and has not closed yet.
    open: Mutex<Option<String>>,
}

/// Escapes an annotation's message: `%`, CR and LF, as the runner decodes them.
pub fn escape_data(s: &str) -> String {
    s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

/// Escapes an annotation's property value: the message's escapes plus `:` and `,`.
pub fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// A Markdown table cell: characters that would end the cell or start markup, escaped.
fn cell(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\|`*_[]<>#".contains(c) {
            out.push('\\');
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

fn seconds(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

impl CiReport {
    /// Reads the CI environment.
    pub fn from_env(env: Env<'_>) -> Arc<CiReport> {
        let on = |k: &str| env(k).is_some_and(|v| v == "true");
        Arc::new(CiReport {
            summary: env("GITHUB_STEP_SUMMARY").filter(|p| !p.is_empty()).map(PathBuf::from),
            github: on("GITHUB_ACTIONS"),
            gitlab: on("GITLAB_CI"),
            open: Mutex::new(None),
        })
    }

    /// `opts` whose first progress report opens a collapsed GitLab section (the lines of the
    /// wait go inside it); see [`CiReport::end_wait`].
    pub fn around_progress(self: &Arc<Self>, mut opts: crate::AcquireOptions, lock: &str) -> crate::AcquireOptions {
        if !self.gitlab {
            return opts;
        }
        let (this, inner, lock) = (self.clone(), opts.progress.take(), lock.to_string());
        opts.progress = Some(Arc::new(move |r: &crate::locker::WaitReport| {
            this.open_section(&lock);
            if let Some(inner) = &inner {
                inner(r);
            }
        }));
        opts
    }

    fn open_section(&self, lock: &str) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.is_some() {
            return;
        }
        // Section names take letters, digits, `_`, `.` and `-` only.
        let name = format!("pipeline_lock_wait_{:08x}", rand::random::<u32>());
        let now = crate::clock::kernel_wall_ms() / 1000;
        eprint!("\x1b[0Ksection_start:{now}:{name}[collapsed=true]\r\x1b[0Kpipeline-lock: waiting for lock {lock:?}\n");
        *open = Some(name);
    }

    /// Closes the wait's GitLab section, if one was opened, before the final line.
    pub fn end_wait(&self) {
        if let Some(name) = self.open.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let now = crate::clock::kernel_wall_ms() / 1000;
            eprint!("\x1b[0Ksection_end:{now}:{name}\r\x1b[0K\n");
        }
    }

    /// A `::warning` annotation (GitHub Actions only), on stderr, which the runner reads as
    /// it reads stdout, so `--output json` on stdout stays one document.
    pub fn warning(&self, title: &str, message: &str) {
        if self.github {
            eprintln!("::warning title={}::{}", escape_property(title), escape_data(message));
        }
    }

    /// Appends a Markdown block to the step summary (GitHub Actions only). Best effort: a
    /// summary that cannot be written is a warning, not a failed lock operation.
    pub fn summary(&self, heading: &str, rows: &[(&str, String)]) {
        let Some(path) = &self.summary else { return };
        let mut md = format!("### pipeline-lock: {heading}\n\n| ");
        let names: Vec<&str> = rows.iter().map(|(n, _)| *n).collect();
        md.push_str(&names.join(" | "));
        md.push_str(" |\n|");
        md.push_str(&vec![" --- |"; rows.len()].concat());
        md.push_str("\n|");
        for (_, value) in rows {
            md.push_str(&format!(" {} |", cell(value)));
        }
        md.push_str("\n\n");
        let written = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .and_then(|mut f| f.write_all(md.as_bytes()));
        if let Err(e) = written {
            eprintln!("pipeline-lock: warning: cannot append to $GITHUB_STEP_SUMMARY ({}): {e}", path.display());
        }
    }

    /// After a grant: the summary block, and a warning when it was a takeover. `queued` is
    /// how many waited (us included) at the last poll of the wait.
    pub fn granted(&self, g: &Grant, queued: usize, forced: bool) {
        if let How::TookOver { from, why } = &g.how {
            let title = if forced { "lock forced" } else { "lock taken over" };
            self.warning(
                title,
                &format!("{} took lock {:?} over from {from} (fence {}): {why}", g.owner, g.lock, g.fence),
            );
        }
        let how = match &g.how {
            How::Acquired => "acquired".to_string(),
            How::Reentered => "re-entered (already ours)".to_string(),
            How::TookOver { from, .. } => format!("taken over from {from}"),
        };
        let queue = match queued.saturating_sub(1) {
            0 => "nobody else waiting".to_string(),
            n => format!("{n} other(s) waiting"),
        };
        self.summary(
            &format!("`{}` {how}", cell(&g.lock)),
            &[
                ("lock", g.lock.clone()),
                ("holder", g.owner.clone()),
                ("fence", g.fence.to_string()),
                ("waited", seconds(Duration::from_millis(g.waited_ms))),
                ("queue", queue),
            ],
        );
    }

    /// A lost lease (exit 76): a warning annotation and a summary block.
    pub fn lease_lost(&self, lock: &str, owner: &str, message: &str) {
        self.warning("lease lost", message);
        self.summary(
            &format!("`{}` lease lost", cell(lock)),
            &[
                ("lock", lock.to_string()),
                ("holder", owner.to_string()),
                ("what happened", message.to_string()),
            ],
        );
    }

    /// After a release.
    pub fn released(&self, lock: &str, owner: &str, fence: Option<u64>, result: &str) {
        self.summary(
            &format!("`{}` released", cell(lock)),
            &[
                ("lock", lock.to_string()),
                ("holder", owner.to_string()),
                ("fence", fence.map(|f| f.to_string()).unwrap_or_else(|| "-".into())),
                ("result", result.to_string()),
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_are_escaped_as_the_runner_decodes_them() {
        assert_eq!(escape_data("50% done\r\nnext"), "50%25 done%0D%0Anext");
        assert_eq!(escape_property("lock: a, b"), "lock%3A a%2C b");
        assert_eq!(escape_property("%"), "%25");
    }

    #[test]
    fn table_cells_cannot_break_the_table_or_start_markup() {
        assert_eq!(cell("a|b`c\nd"), "a\\|b\\`c d");
        assert_eq!(cell("github:h/o/r/runs/1"), "github:h/o/r/runs/1");
    }
}
