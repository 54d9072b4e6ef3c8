//! The checker for the CI-shaped scenarios (`pipelines.rs`): the witness's history judged as
//! in `checker.rs`, plus what a pipeline must be told. Pure, and tested on hand-written
//! histories below.
//!
//! These scenarios pause no process, so stricter rules hold than under the nemesis:
//! - Nobody is overrun unless its scenario lets it lose its lease (a stage longer than the
//!   lease without renewing). A `run` whose command still works after a taker began broke
//!   its promise to stop the command first, fenced off or not.
//! - A holder never begins with a fence below one seen before: with no store restart a fence
//!   that went back is refused by a resource that keeps the highest fence, for ever.
//! - A pipeline that lost its lock must not go green: some `pipeline-lock` step says so (76).

use std::collections::BTreeSet;

use crate::checker::{self, Event, Report, intervals};

/// One process of a scenario and how it ended.
#[derive(Debug, Clone)]
pub struct Step {
    pub what: String,
    /// A `pipeline-lock` command (acquire, renew, release, run), not the witness client:
    /// these are what tell the pipeline whether it kept its lock.
    pub tool: bool,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// The exit codes the contract allows here.
    pub allowed: Vec<i32>,
    pub stderr: String,
    pub ms: u64,
}

/// A pipeline (its stages' witness work under one name) or one `run` job.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    /// The name the witness knows it by (`witness client --as`).
    pub name: String,
    /// Pipeline-scoped: acquire, stages, release in separate processes.
    pub pipeline: bool,
    /// Its scenario lets it lose the lock (a stage longer than its lease, not renewed).
    pub may_lose: bool,
    pub steps: Vec<Step>,
}

/// One scenario's run.
#[derive(Debug, Clone, Default)]
pub struct Scenario {
    pub events: Vec<Event>,
    pub counter: u64,
    pub actors: Vec<Actor>,
}

fn code_text(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "?".into(),
    }
}

/// Judges one scenario.
pub fn check(s: &Scenario) -> Report {
    let mut r = Report::default();
    checker::history(&s.events, true, &mut r);
    let accepted = r.stats["writes accepted"];
    if s.counter != accepted {
        r.violations
            .push(format!("final counter {} != {accepted} accepted increments", s.counter));
    }
    let ivs = intervals(&s.events);
    let actor = |name: &str| s.actors.iter().find(|a| a.name == name);
    let may_lose = |name: &str| actor(name).is_some_and(|a| a.may_lose);
    // The latest mark before an event, to say what happened just before.
    let mark_before = |seq: u64| {
        s.events
            .iter()
            .rev()
            .find(|e| e.seq < seq && e.kind == "mark")
            .map(|e| format!(" (after \"{}\", event {})", e.text, e.seq))
            .unwrap_or_default()
    };

    // Overruns: a newer holder began while an older one was still inside.
    let mut lost: BTreeSet<&str> = BTreeSet::new();
    for (i, a) in ivs.iter().enumerate() {
        for b in ivs[i + 1..].iter().take_while(|b| b.begin <= a.close) {
            if (a.epoch, a.fence) == (b.epoch, b.fence) {
                continue; // reported by `history` as the same fence
            }
            let (stale, newer) = if (a.epoch, a.fence) < (b.epoch, b.fence) { (a, b) } else { (b, a) };
            lost.insert(&stale.owner);
            if !may_lose(&stale.owner) {
                let how = if actor(&stale.owner).is_some_and(|x| !x.pipeline) {
                    "another was let in while its `run` command was still at work (a `run` stops its command before its lease ends, \
                     and shares its grant with no other process)"
                } else {
                    "it kept its lease, yet the lock was given to another"
                };
                r.violations.push(format!(
                    "{} (fence {}) and {} (fence {}) held the lock at once (events {}..{}): {how}; writes refused after {} began: {}",
                    stale.owner,
                    stale.fence,
                    newer.owner,
                    newer.fence,
                    newer.begin.max(stale.begin),
                    a.close.min(b.close),
                    newer.owner,
                    stale.writes.iter().filter(|(q, ok)| !ok && *q > newer.begin).count()
                ));
            }
        }
    }

    // Fences that went back, even where the witness refused every write of the holder: that
    // holder was the lock's rightful one (nobody here is paused), so it is stuck for good.
    let mut top: Option<(u64, u64, &str)> = None;
    for iv in &ivs {
        match top {
            Some((epoch, fence, by)) if (iv.epoch, iv.fence) < (epoch, fence) => {
                if !iv.writes.iter().any(|(_, ok)| *ok) {
                    r.violations.push(format!(
                        "fence went backwards: {} began with fence {} after {by} had {fence}{}; the witness refused its writes, \
                         as any resource that keeps the highest fence would, for ever: a stuck pipeline",
                        iv.owner,
                        iv.fence,
                        mark_before(iv.begin)
                    ));
                }
            }
            _ => top = Some((iv.epoch, iv.fence, &iv.owner)),
        }
    }

    // Exit codes, and pipelines that lost their lock without being told.
    for a in &s.actors {
        for st in &a.steps {
            let ok = st.code.is_some_and(|c| st.allowed.contains(&c));
            if !ok {
                r.violations.push(format!(
                    "{}: {} ended with {} after {} ms (allowed: {:?}): {}",
                    a.name,
                    st.what,
                    code_text(st.code, st.signal),
                    st.ms,
                    st.allowed,
                    st.stderr.trim()
                ));
            }
        }
        if !a.pipeline {
            continue;
        }
        let refused = ivs
            .iter()
            .filter(|iv| iv.owner == a.name)
            .flat_map(|iv| iv.writes.iter())
            .filter(|(_, ok)| !ok)
            .count();
        let green = a.steps.iter().filter(|st| st.tool).all(|st| st.code == Some(0));
        if green && lost.contains(a.name.as_str()) {
            r.violations.push(format!(
                "pipeline {} lost its lock (a newer holder began while it was inside; {refused} of its writes refused) and still went green: \
                 every pipeline-lock step exited 0 ({})",
                a.name,
                a.steps
                    .iter()
                    .filter(|st| st.tool)
                    .map(|st| st.what.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    r.stats.insert("steps", s.actors.iter().map(|a| a.steps.len() as u64).sum());
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::tests::ev;

    fn step(what: &str, code: i32, allowed: &[i32]) -> Step {
        Step {
            what: what.into(),
            tool: what != "work",
            code: Some(code),
            signal: None,
            allowed: allowed.to_vec(),
            stderr: String::new(),
            ms: 1,
        }
    }

    fn pipeline(name: &str, may_lose: bool, release: i32) -> Actor {
        Actor {
            name: name.into(),
            pipeline: true,
            may_lose,
            steps: vec![step("acquire", 0, &[0]), step("work", 0, &[0, 10]), step("release", release, &[0, 76])],
        }
    }

    /// `old` (fence 1) is overrun by `new` (fence 2); `old`'s write after that is refused.
    fn takeover() -> Scenario {
        Scenario {
            events: vec![
                ev(0, "begin", "old", 1, 0, true),
                ev(1, "read", "old", 1, 0, true),
                ev(2, "write", "old", 1, 1, true),
                ev(3, "begin", "new", 2, 0, true),
                ev(4, "read", "new", 2, 1, true),
                ev(5, "write", "new", 2, 2, true),
                ev(6, "end", "new", 2, 0, true),
                ev(7, "write", "old", 1, 2, false),
                ev(8, "end", "old", 1, 0, true),
            ],
            counter: 2,
            actors: vec![pipeline("old", true, 76), pipeline("new", false, 0)],
        }
    }

    #[test]
    fn a_pipeline_that_lost_its_lease_and_was_told_passes() {
        let r = check(&takeover());
        assert!(r.violations.is_empty(), "{:?}", r.violations);
    }

    #[test]
    fn a_pipeline_that_lost_its_lock_and_went_green_fails() {
        let mut s = takeover();
        s.actors[0] = pipeline("old", true, 0);
        let all = check(&s).violations.join("\n");
        assert!(all.contains("pipeline old lost its lock") && all.contains("went green"), "{all}");
    }

    #[test]
    fn an_overrun_of_a_holder_that_kept_its_lease_fails_even_when_fenced_off() {
        let mut s = takeover();
        s.actors[0].may_lose = false;
        let all = check(&s).violations.join("\n");
        assert!(all.contains("held the lock at once") && all.contains("kept its lease"), "{all}");
        // A `run` job's command that outlived its lease.
        s.actors[0].pipeline = false;
        let all = check(&s).violations.join("\n");
        assert!(all.contains("while its `run` command was still at work"), "{all}");
    }

    #[test]
    fn a_fence_that_went_back_fails_though_the_witness_refused_it() {
        let s = Scenario {
            events: vec![
                ev(0, "begin", "a", 5, 0, true),
                ev(1, "read", "a", 5, 0, true),
                ev(2, "write", "a", 5, 1, true),
                ev(3, "end", "a", 5, 0, true),
                ev(4, "mark", "", 0, 0, true),
                ev(5, "begin", "b", 1, 0, true),
                ev(6, "read", "b", 1, 1, true),
                ev(7, "write", "b", 1, 2, false),
                ev(8, "end", "b", 1, 0, true),
            ],
            counter: 1,
            actors: vec![pipeline("a", false, 0), pipeline("b", false, 0)],
        };
        let all = check(&s).violations.join("\n");
        assert!(all.contains("fence went backwards: b began with fence 1 after a had 5"), "{all}");
    }

    #[test]
    fn an_exit_code_the_contract_does_not_allow_fails() {
        let mut s = takeover();
        s.actors[1].steps[0] = step("acquire --wait 60s", 69, &[0]);
        let all = check(&s).violations.join("\n");
        assert!(all.contains("new: acquire --wait 60s ended with exit 69"), "{all}");
    }
}
