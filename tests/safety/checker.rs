//! The checker: judges one run from the witness's total order of events, the contenders'
//! exit codes, the nemesis's notes and the lock record left at the end. Pure: it is tested
//! on hand-written histories below, including ones it must reject.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Deserialize;

/// One witness log entry (see `testkit/src/bin/witness.rs`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Event {
    pub seq: u64,
    /// Witness ms since it started.
    pub t: u64,
    pub kind: String,
    pub owner: String,
    pub fence: u64,
    pub epoch: u64,
    pub value: u64,
    pub ok: bool,
    pub text: String,
    /// A pool holder's `begin`: "shared" or "exclusive"; empty for a plain mutex's holder.
    #[serde(default)]
    pub mode: String,
    /// A `begin`'s slot, or the register of a read or write (0: the mutex's).
    #[serde(default)]
    pub slot: u32,
}

/// How one `pipeline-lock run` ended, as far as the checker cares.
#[derive(Debug, Clone)]
pub struct Exit {
    pub owner: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub panicked: bool,
    pub stderr: String,
}

/// Everything the checker looks at.
#[derive(Debug, Clone, Default)]
pub struct Input {
    pub events: Vec<Event>,
    pub exits: Vec<Exit>,
    /// Did the witness reject stale fences? Without it every overlap is a violation.
    pub fenced: bool,
    /// Owners the nemesis SIGKILLed.
    pub killed: BTreeSet<String>,
    /// Harness-ms windows in which the store was down or empty.
    pub restarts: Vec<(u64, u64)>,
    /// Per contender slot: successful iterations, and whether it finished.
    pub slots: Vec<(u32, bool)>,
    pub min_iterations: u32,
    /// The witness counter at the end.
    pub counter: u64,
    /// `status --output json` at the end: "free", "absent" or "held", and the holder.
    pub final_state: String,
    /// Its holders: the exclusive one, or the shared ones.
    pub final_owners: Vec<String>,
    /// Owners whose process is still alive at the end.
    pub alive: BTreeSet<String>,
    /// Upper bound (ms) from a holder's SIGKILL to the next holder's begin.
    pub takeover_bound_ms: u64,
    /// A pool's N (`--slots`); 0 for a plain mutex. See [`pool`].
    pub pool_slots: u32,
}

/// The verdict.
#[derive(Debug, Default)]
pub struct Report {
    pub violations: Vec<String>,
    pub notes: Vec<String>,
    pub stats: BTreeMap<&'static str, u64>,
}

/// One holder's time inside, as the witness saw it: from its first event to its last.
#[derive(Debug, Clone)]
pub struct Interval {
    pub owner: String,
    pub epoch: u64,
    pub fence: u64,
    pub begin: u64,
    /// Its `end`, or its last event when it never ended (killed, or stopped on lease loss).
    pub close: u64,
    pub ended: bool,
    /// (seq, accepted) of its writes.
    pub writes: Vec<(u64, bool)>,
    /// The register of each write, in the same order.
    pub write_regs: Vec<u32>,
    /// A shared hold of a pool (else exclusive, or a plain mutex's holder).
    pub shared: bool,
    /// Its slot (shared holds).
    pub slot: u32,
    /// One lock of several (`mode=lock`): its slot is its lock, whose fences are its own, so
    /// fences are unique per slot, not across them as in a pool.
    pub own_fences: bool,
}

impl Interval {
    /// May the two not be inside at once: one is exclusive, or both hold the same slot?
    pub fn conflicts(&self, other: &Interval) -> bool {
        !self.shared || !other.shared || self.slot == other.slot
    }

    /// Is register `reg` one it protects: its slot's, or (exclusive) every one?
    pub fn uses(&self, reg: u32) -> bool {
        !self.shared || reg == self.slot
    }

    fn key(&self) -> (u64, u64) {
        (self.epoch, self.fence)
    }

    fn what(&self) -> String {
        match self.shared {
            true => format!("{} (fence {}, slot {})", self.owner, self.fence, self.slot),
            false => format!("{} (fence {})", self.owner, self.fence),
        }
    }
}

/// The holders in the order they began.
pub fn intervals(events: &[Event]) -> Vec<Interval> {
    let mut by_owner: HashMap<&str, Interval> = HashMap::new();
    for e in events.iter().filter(|e| !e.owner.is_empty()) {
        let iv = by_owner.entry(&e.owner).or_insert_with(|| Interval {
            owner: e.owner.clone(),
            epoch: e.epoch,
            fence: e.fence,
            begin: e.seq,
            close: e.seq,
            ended: false,
            writes: Vec::new(),
            write_regs: Vec::new(),
            shared: e.mode == "shared" || e.mode == "lock",
            own_fences: e.mode == "lock",
            slot: e.slot,
        });
        iv.close = e.seq;
        match e.kind.as_str() {
            "write" => {
                iv.writes.push((e.seq, e.ok));
                iv.write_regs.push(e.slot);
            }
            "end" => iv.ended = true,
            _ => {}
        }
    }
    let mut v: Vec<Interval> = by_owner.into_values().collect();
    v.sort_by_key(|i| i.begin);
    v
}

/// The checks on the witness's history alone: mutual exclusion, fences, the counter's
/// increments. Also used while a run is going (the negative control stops at the first).
pub fn history(events: &[Event], fenced: bool, r: &mut Report) {
    let ivs = intervals(events);
    r.stats.insert("holders", ivs.len() as u64);
    r.stats
        .insert("writes accepted", events.iter().filter(|e| e.kind == "write" && e.ok).count() as u64);
    r.stats.insert(
        "writes rejected (stale fence)",
        events.iter().filter(|e| e.kind == "write" && !e.ok).count() as u64,
    );

    // 1. Mutual exclusion: overlapping holders only where the stale one's writes were fenced off.
    let mut fenced_overlaps = 0;
    // Holders overrun by a newer one, each with the fault noted last before that happened.
    let mut overrun: BTreeMap<&str, &str> = BTreeMap::new();
    let cause = |at: u64| {
        events
            .iter()
            .rev()
            .filter(|e| e.seq < at && e.kind == "mark" && !e.text.starts_with("resumed") && e.text != "proxy pass")
            .map(|e| e.text.split_whitespace().next().unwrap_or("?"))
            .next()
            .unwrap_or("no fault")
    };
    // In a pool, shared holders of different slots may be inside together: only holders that
    // exclude each other (see `Interval::conflicts`) count, and a stale holder is fenced off
    // by its writes to the registers the newer one protects.
    for (i, a) in ivs.iter().enumerate() {
        for b in ivs[i + 1..].iter().take_while(|b| b.begin <= a.close).filter(|b| a.conflicts(b)) {
            let (ka, kb) = (a.key(), b.key());
            // "the lock", or "slot K" for two shared holds of one slot.
            let what = if a.shared && b.shared {
                format!("slot {}", a.slot)
            } else {
                "the lock".to_string()
            };
            if ka == kb {
                r.violations.push(format!(
                    "{} and {} held {what} at once with the same fence {} (epoch {}), events {}..{}",
                    a.owner,
                    b.owner,
                    a.fence,
                    a.epoch,
                    b.begin,
                    a.close.min(b.close)
                ));
                continue;
            }
            let (stale, newer) = if ka < kb { (a, b) } else { (b, a) };
            let accepted: Vec<u64> = (stale.writes.iter().zip(&stale.write_regs))
                .filter(|((s, ok), reg)| *ok && *s > newer.begin && newer.uses(**reg))
                .map(|((s, _), _)| *s)
                .collect();
            if !fenced || !accepted.is_empty() {
                r.violations.push(format!(
                    "{} and {} held {what} at once (events {}..{}); the stale holder's writes at {:?} were accepted",
                    stale.what(),
                    newer.what(),
                    newer.begin.max(stale.begin),
                    a.close.min(b.close),
                    accepted
                ));
            } else {
                fenced_overlaps += 1;
                overrun.entry(&stale.owner).or_insert_with(|| cause(newer.begin));
                if fenced_overlaps <= 5 {
                    r.notes.push(format!(
                        "overlap fenced off: {} (fence {}) was still inside after {} (fence {}) began; its writes there were rejected",
                        stale.owner, stale.fence, newer.owner, newer.fence
                    ));
                }
            }
        }
    }
    r.stats.insert("overlaps fenced off", fenced_overlaps);
    r.stats.insert("holders overrun (fenced off)", overrun.len() as u64);
    let mut by_cause: BTreeMap<&str, u64> = BTreeMap::new();
    for c in overrun.values() {
        *by_cause.entry(c).or_default() += 1;
    }
    if !by_cause.is_empty() {
        let list: Vec<String> = by_cause.iter().map(|(c, n)| format!("{c} {n}")).collect();
        r.notes.push(format!(
            "holders overrun by a newer one, by the fault noted last before: {}",
            list.join(", ")
        ));
    }

    // 2. Fences: unique per epoch, increasing in begin order unless fenced off, and the
    //    accepted writes' fences never go back.
    let mut owners_of: BTreeMap<(u64, u64, u32), Vec<&str>> = BTreeMap::new();
    for iv in &ivs {
        let space = if iv.own_fences { iv.slot } else { 0 };
        owners_of.entry((iv.epoch, iv.fence, space)).or_default().push(&iv.owner);
    }
    for ((epoch, fence, _), owners) in &owners_of {
        if owners.len() > 1 {
            r.violations.push(format!(
                "fence {fence} (epoch {epoch}) was granted to {} holders: {}",
                owners.len(),
                owners.join(", ")
            ));
        }
    }
    //    In begin order among holders that exclude each other: shared holds of different
    //    slots may begin at the witness in another order than they were granted.
    for (i, iv) in ivs.iter().enumerate() {
        let before = ivs[..i].iter().filter(|x| x.epoch == iv.epoch && x.conflicts(iv) && x.fence > iv.fence);
        let Some(top) = before.max_by_key(|x| x.fence) else { continue };
        if iv.writes.iter().any(|(_, ok)| *ok) {
            r.violations.push(format!(
                "fence went backwards: {} began with fence {} after {} had {}, and its writes were accepted",
                iv.owner, iv.fence, top.owner, top.fence
            ));
        } else {
            r.notes.push(format!(
                "{} began with fence {} after {} had {}: a stale holder, fenced off",
                iv.owner, iv.fence, top.owner, top.fence
            ));
        }
    }
    // Per register (a pool's slots are separate resources; a plain mutex has one).
    let mut last_key: HashMap<u32, (u64, u64)> = HashMap::new();
    for e in events.iter().filter(|e| e.kind == "write" && e.ok) {
        let last = last_key.entry(e.slot).or_default();
        if (e.epoch, e.fence) < *last {
            r.violations.push(format!(
                "accepted write #{} by {} has fence {} below an earlier accepted {}",
                e.seq, e.owner, e.fence, last.1
            ));
        }
        *last = (*last).max((e.epoch, e.fence));
    }
    for e in events.iter().filter(|e| e.kind == "epoch") {
        r.notes.push(format!(
            "event {}: {}; fences restart in epoch {} (the store kept nothing, as expected)",
            e.seq, e.text, e.epoch
        ));
    }
    r.stats.insert(
        "store restarts (fence epochs)",
        events.iter().filter(|e| e.kind == "epoch").count() as u64,
    );

    // 3. The counters (one per register): every accepted write added exactly one.
    let mut counters: HashMap<u32, u64> = HashMap::new();
    let mut lost = 0;
    for e in events.iter().filter(|e| e.kind == "write" && e.ok) {
        let counter = counters.entry(e.slot).or_default();
        if e.value != *counter + 1 {
            lost += 1;
            if lost <= 5 {
                let reg = if e.slot == 0 { String::new() } else { format!(" of slot {}", e.slot) };
                r.violations.push(format!(
                    "lost update: {} wrote {} over counter{reg} {} (event {})",
                    e.owner, e.value, counter, e.seq
                ));
            }
        }
        *counter = e.value;
    }
}

/// The pool checks (`--slots n`), on the witness's order: at every `begin`, the holders
/// inside (begun, not yet at their last event, and not overrun) are at most `n`, an exclusive
/// one is alone, no two are in one slot, and every shared slot is 1 to `n`. A holder is
/// overrun once a holder that excludes it begins with a higher fence: from then on it is
/// stale, and `history` judges it by its writes (fenced off, or a violation); a holder that
/// begins below one inside that excludes it is stale from the start.
pub fn pool(events: &[Event], n: u32, r: &mut Report) {
    let ivs = intervals(events);
    let mut live: Vec<&Interval> = Vec::new();
    let (mut most, mut most_shared) = (0, 0);
    let mut reported = 0;
    for e in events.iter().filter(|e| !e.owner.is_empty()) {
        let Some(iv) = ivs.iter().find(|iv| iv.owner == e.owner) else { continue };
        if e.seq == iv.begin {
            let stale = live.iter().any(|x| x.conflicts(iv) && x.key() > iv.key());
            live.retain(|x| !(x.conflicts(iv) && x.key() < iv.key()));
            if iv.shared && !(1..=n).contains(&iv.slot) {
                r.violations
                    .push(format!("{} was given slot {}; the slots are 1 to {n}", iv.owner, iv.slot));
            }
            if !stale {
                live.push(iv);
                let mut problems = Vec::new();
                if live.len() > n as usize {
                    problems.push(format!("{} holders inside at once, more than the {n} slots", live.len()));
                }
                if live.len() > 1 && live.iter().any(|x| !x.shared) {
                    problems.push("an exclusive holder inside beside another holder".to_string());
                }
                let mut slots: Vec<u32> = live.iter().filter(|x| x.shared).map(|x| x.slot).collect();
                slots.sort_unstable();
                if slots.windows(2).any(|w| w[0] == w[1]) {
                    problems.push("two holders in one slot at once".to_string());
                }
                for p in problems {
                    reported += 1;
                    if reported <= 5 {
                        let who: Vec<String> = live.iter().map(|x| x.what()).collect();
                        r.violations.push(format!("{p} at event {}: {}", e.seq, who.join(", ")));
                    }
                }
                most = most.max(live.len() as u64);
                most_shared = most_shared.max(live.iter().filter(|x| x.shared).count() as u64);
            }
        }
        if e.seq == iv.close {
            live.retain(|x| x.owner != iv.owner);
        }
    }
    if reported > 5 {
        r.violations.push(format!("... {} pool violations in all", reported));
    }
    r.stats.insert("most holders inside at once", most);
    r.stats.insert("most shared holders inside at once", most_shared);
    r.stats.insert("exclusive holders", ivs.iter().filter(|iv| !iv.shared).count() as u64);
}

/// Judges one run.
pub fn check(input: &Input) -> Report {
    let mut r = Report::default();
    history(&input.events, input.fenced, &mut r);
    if input.pool_slots > 0 {
        pool(&input.events, input.pool_slots, &mut r);
    }
    let events = &input.events;
    let accepted = r.stats["writes accepted"];
    if input.counter != accepted {
        r.violations
            .push(format!("final counter {} != {} accepted increments", input.counter, accepted));
    }

    // 4. Every contender finished its iterations.
    for (i, (done, finished)) in input.slots.iter().enumerate() {
        if !finished || *done < input.min_iterations {
            let last = input.exits.iter().rev().find(|x| x.owner.starts_with(&format!("c{i}-")));
            r.violations.push(format!(
                "contender c{i} did not finish: {done} of {} iterations{}",
                input.min_iterations,
                last.map(|x| format!("; its last run {} ended {:?}/{:?}: {}", x.owner, x.code, x.signal, x.stderr))
                    .unwrap_or_default()
            ));
        }
    }

    // 5. A killed holder's lock is taken over within the lease plus slack.
    let mut worst = 0;
    for m in events.iter().filter(|e| e.kind == "mark" && e.text.starts_with("kill-holder ")) {
        let victim = m.text.trim_start_matches("kill-holder ").trim();
        let next = events
            .iter()
            .find(|e| e.seq > m.seq && e.kind == "begin" && crate::helpers::run_of(&e.owner) != victim);
        match next {
            Some(n) if n.t - m.t <= input.takeover_bound_ms => worst = worst.max(n.t - m.t),
            Some(n) => r.violations.push(format!(
                "{victim} was killed holding the lock; the next holder {} began {} ms later (bound {} ms)",
                n.owner,
                n.t - m.t,
                input.takeover_bound_ms
            )),
            None => r.violations.push(format!("{victim} was killed holding the lock and nobody took it over")),
        }
    }
    r.stats.insert("slowest takeover after kill-holder (ms)", worst);

    // 6. At the end the lock is free, or held by a live process.
    // A holder that stopped without giving its hold back (killed by the nemesis, or exit 76:
    // it could not renew, and said the lock may be someone else's) leaves it to be taken
    // over; with nobody left waiting, it is still there. One that said it was done (exit 0)
    // must have released it.
    let owners = &input.final_owners;
    let left_behind =
        |o: &String| input.alive.contains(o) || input.killed.contains(o) || input.exits.iter().any(|x| &x.owner == o && x.code == Some(76));
    match input.final_state.as_str() {
        "free" | "absent" => {}
        "held" if !owners.is_empty() && owners.iter().all(left_behind) => {}
        state => r
            .violations
            .push(format!("at the end the lock is {state} by {owners:?}, which is not a live process")),
    }

    // 7. Exit codes: the documented ones, and a panic is always a bug.
    let in_restart = |x: &Exit| input.restarts.iter().any(|(a, b)| x.start_ms <= b + 1500 && x.end_ms >= *a);
    let mut by_code: BTreeMap<String, u64> = BTreeMap::new();
    for x in &input.exits {
        let key = match (x.code, x.signal) {
            (Some(c), _) => format!("exit {c}"),
            (None, Some(s)) => format!("signal {s}"),
            _ => "?".into(),
        };
        *by_code.entry(key).or_default() += 1;
        let ok = match (x.code, x.signal) {
            // done; child's write fenced off (exit 10); store unreachable; lease lost
            (Some(0 | 10 | 69 | 76), _) => true,
            // no table or bucket: only while the store restarts
            (Some(78), _) => in_restart(x),
            (None, Some(9)) => input.killed.contains(&x.owner),
            _ => false,
        };
        if !ok || x.panicked {
            r.violations
                .push(format!("{} ended {:?}/{:?} unexpectedly: {}", x.owner, x.code, x.signal, x.stderr));
        }
    }
    for (k, n) in by_code {
        r.notes.push(format!("runs that ended with {k}: {n}"));
    }
    r.stats.insert("runs", input.exits.len() as u64);
    r.stats
        .insert("iterations", input.exits.iter().filter(|x| x.code == Some(0)).count() as u64);
    r
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One witness event at t = 10 ms per seq, epoch 0 (also for the CI checker's tests).
    pub(crate) fn ev(seq: u64, kind: &str, owner: &str, fence: u64, value: u64, ok: bool) -> Event {
        Event {
            seq,
            t: seq * 10,
            kind: kind.into(),
            owner: owner.into(),
            fence,
            epoch: 0,
            value,
            ok,
            text: String::new(),
            mode: String::new(),
            slot: 0,
        }
    }

    /// A clean history of `n` holders one after another.
    fn clean(n: u64) -> Input {
        let mut events = Vec::new();
        for i in 0..n {
            let o = format!("c0-r{i}");
            let s = events.len() as u64;
            events.push(ev(s, "begin", &o, i + 1, 0, true));
            events.push(ev(s + 1, "read", &o, i + 1, i, true));
            events.push(ev(s + 2, "write", &o, i + 1, i + 1, true));
            events.push(ev(s + 3, "end", &o, i + 1, 0, true));
        }
        let exits = (0..n)
            .map(|i| Exit {
                owner: format!("c0-r{i}"),
                start_ms: 0,
                end_ms: 1,
                code: Some(0),
                signal: None,
                panicked: false,
                stderr: String::new(),
            })
            .collect();
        Input {
            events,
            exits,
            fenced: true,
            slots: vec![(n as u32, true)],
            min_iterations: n as u32,
            counter: n,
            final_state: "free".into(),
            takeover_bound_ms: 5000,
            ..Input::default()
        }
    }

    #[test]
    fn a_clean_history_passes() {
        let r = check(&clean(5));
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.stats["iterations"], 5);
        // Left held by a run that could not renew (exit 76): allowed; by one that exited 0: not.
        let mut i = clean(5);
        i.final_state = "held".into();
        i.final_owners = vec!["c0-r4".into()];
        i.exits[4].code = Some(76);
        assert!(check(&i).violations.iter().all(|v| !v.contains("not a live process")));
        i.exits[4].code = Some(0);
        assert!(check(&i).violations.iter().any(|v| v.contains("not a live process")));
    }

    #[test]
    fn two_holders_with_one_fence_fail() {
        let mut i = clean(1);
        i.events = vec![
            ev(0, "begin", "a", 1, 0, true),
            ev(1, "begin", "b", 1, 0, true),
            ev(2, "read", "a", 1, 0, true),
            ev(3, "read", "b", 1, 0, true),
            ev(4, "write", "a", 1, 1, true),
            ev(5, "write", "b", 1, 1, true),
            ev(6, "end", "a", 1, 0, true),
            ev(7, "end", "b", 1, 0, true),
        ];
        i.counter = 1;
        let r = check(&i);
        let all = r.violations.join("\n");
        assert!(all.contains("same fence"), "{all}");
        assert!(all.contains("granted to 2 holders"), "{all}");
        assert!(all.contains("lost update") && all.contains("final counter 1 != 2"), "{all}");
    }

    #[test]
    fn an_overlap_fenced_off_passes_and_an_unfenced_one_fails() {
        let mut i = clean(1);
        i.events = vec![
            ev(0, "begin", "old", 1, 0, true),
            ev(1, "read", "old", 1, 0, true),
            ev(2, "begin", "new", 2, 0, true),
            ev(3, "read", "new", 2, 0, true),
            ev(4, "write", "new", 2, 1, true),
            ev(5, "write", "old", 1, 1, false),
            ev(6, "end", "new", 2, 0, true),
        ];
        i.counter = 1;
        let r = check(&i);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.stats["overlaps fenced off"], 1);
        // The same overlap where the witness accepted the stale write.
        i.events[5].ok = true;
        i.counter = 1;
        let r = check(&i);
        assert!(r.violations.iter().any(|v| v.contains("held the lock at once")), "{:?}", r.violations);
        i.events[5].ok = false;
        i.fenced = false;
        assert!(!check(&i).violations.is_empty());
    }

    #[test]
    fn fences_restart_only_with_an_epoch() {
        let mut i = clean(2);
        // A second holder with a lower fence and an accepted write: backwards.
        i.events[4].fence = 1;
        i.events[5].fence = 1;
        i.events[6].fence = 1;
        i.events[7].fence = 1;
        assert!(!check(&i).violations.is_empty());
        // The same after a store restart: expected, and said so.
        let mut i = clean(2);
        for e in &mut i.events[4..] {
            e.epoch = 1;
            e.fence = 1;
            e.seq += 1;
        }
        i.events.insert(
            4,
            Event {
                seq: 4,
                t: 40,
                kind: "epoch".into(),
                owner: String::new(),
                fence: 0,
                epoch: 1,
                value: 0,
                ok: true,
                text: "restarted".into(),
                mode: String::new(),
                slot: 0,
            },
        );
        let r = check(&i);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert!(r.notes.iter().any(|n| n.contains("fences restart")));
    }

    /// A pool event: `begin` with its mode and slot, or a read/write of register `slot`.
    fn pe(seq: u64, kind: &str, owner: &str, fence: u64, value: u64, ok: bool, (mode, slot): (&str, u32)) -> Event {
        Event {
            mode: mode.into(),
            slot,
            ..ev(seq, kind, owner, fence, value, ok)
        }
    }

    /// Three shared holders of a pool of 3, one per slot, inside together; their fences
    /// reach the witness out of grant order; then an exclusive one writes every register.
    fn pool_history() -> Vec<Event> {
        let s = "shared";
        vec![
            pe(0, "begin", "b", 2, 0, true, (s, 2)),
            pe(1, "begin", "a", 1, 0, true, (s, 1)),
            pe(2, "begin", "c", 3, 0, true, (s, 3)),
            pe(3, "read", "a", 1, 0, true, ("", 1)),
            pe(4, "read", "b", 2, 0, true, ("", 2)),
            pe(5, "write", "a", 1, 1, true, ("", 1)),
            pe(6, "write", "b", 2, 1, true, ("", 2)),
            pe(7, "end", "a", 1, 0, true, ("", 0)),
            pe(8, "end", "b", 2, 0, true, ("", 0)),
            pe(9, "end", "c", 3, 0, true, ("", 0)),
            pe(10, "begin", "x", 4, 0, true, ("exclusive", 1)),
            pe(11, "read", "x", 4, 1, true, ("", 1)),
            pe(12, "write", "x", 4, 2, true, ("", 1)),
            pe(13, "read", "x", 4, 1, true, ("", 2)),
            pe(14, "write", "x", 4, 2, true, ("", 2)),
            pe(15, "end", "x", 4, 0, true, ("", 0)),
        ]
    }

    fn pool_input(events: Vec<Event>) -> Input {
        let counter = events.iter().filter(|e| e.kind == "write" && e.ok).count() as u64;
        Input {
            events,
            fenced: true,
            counter,
            final_state: "free".into(),
            takeover_bound_ms: 5000,
            pool_slots: 3,
            ..Input::default()
        }
    }

    /// Several locks at once: a holder of A and B (two clients, `x@1` and `x@2`), then a holder
    /// of A and one of B beside each other. Each lock counts its fences on its own, so the
    /// same fence on two locks is no violation; two holders of one lock at once are.
    fn multi_history() -> Vec<Event> {
        let l = "lock";
        vec![
            pe(0, "begin", "x@1", 7, 0, true, (l, 1)),
            pe(1, "begin", "x@2", 7, 0, true, (l, 2)),
            pe(2, "write", "x@1", 7, 1, true, ("", 1)),
            pe(3, "write", "x@2", 7, 1, true, ("", 2)),
            pe(4, "end", "x@1", 7, 0, true, ("", 0)),
            pe(5, "end", "x@2", 7, 0, true, ("", 0)),
            pe(6, "begin", "a", 8, 0, true, (l, 1)),
            pe(7, "begin", "b", 8, 0, true, (l, 2)),
            pe(8, "write", "a", 8, 2, true, ("", 1)),
            pe(9, "write", "b", 8, 2, true, ("", 2)),
            pe(10, "end", "a", 8, 0, true, ("", 0)),
            pe(11, "end", "b", 8, 0, true, ("", 0)),
        ]
    }

    #[test]
    fn several_locks_count_fences_per_lock_and_fail_on_two_holders_of_one() {
        let input = |events| Input {
            pool_slots: 2,
            ..pool_input(events)
        };
        let r = check(&input(multi_history()));
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.stats["most holders inside at once"], 2);
        // The holder of B begins while x still holds both: two holders of lock B.
        let mut h = multi_history();
        let b = h.remove(7);
        h.insert(1, Event { seq: 1, ..b });
        for (i, e) in h.iter_mut().enumerate() {
            e.seq = i as u64;
        }
        let all = check(&input(h)).violations.join("\n");
        assert!(all.contains("held slot 2 at once"), "{all}");
    }

    #[test]
    fn a_clean_pool_history_passes() {
        let r = check(&pool_input(pool_history()));
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.stats["most holders inside at once"], 3);
    }

    #[test]
    fn a_fourth_holder_two_in_one_slot_or_one_beside_an_exclusive_fail() {
        // A fourth shared holder in a pool of 3 (slot 4).
        let mut h = pool_history();
        h.insert(3, pe(3, "begin", "d", 5, 0, true, ("shared", 4)));
        let all = check(&pool_input(h)).violations.join("\n");
        assert!(all.contains("4 holders inside at once") && all.contains("slots are 1 to 3"), "{all}");
        // Two holders of slot 1 with one fence.
        let mut h = pool_history();
        h[2].slot = 1;
        h[2].fence = 1;
        let all = check(&pool_input(h)).violations.join("\n");
        assert!(all.contains("held slot 1 at once with the same fence"), "{all}");
        // A holder of slot 2 granted after c (fence 3), beside b, whose write after it
        // began was accepted: b was not fenced off.
        let mut h = pool_history();
        h[1] = pe(1, "begin", "a", 5, 0, true, ("shared", 2));
        for e in h.iter_mut().filter(|e| e.owner == "a") {
            e.fence = 5;
            if e.kind != "begin" && e.kind != "end" {
                e.slot = 2;
            }
        }
        h[6].value = 2;
        let all = check(&pool_input(h)).violations.join("\n");
        assert!(all.contains("held slot 2 at once") && all.contains("were accepted"), "{all}");
        // The exclusive holder begins while c is still inside, and c writes after: accepted.
        let mut h = pool_history();
        h.retain(|e| !(e.owner == "c" && e.kind == "end"));
        h.push(pe(16, "read", "c", 3, 0, true, ("", 3)));
        h.push(pe(17, "write", "c", 3, 1, true, ("", 3)));
        h.push(pe(18, "end", "c", 3, 0, true, ("", 0)));
        let all = check(&pool_input(h.clone())).violations.join("\n");
        assert!(all.contains("held the lock at once") && all.contains("were accepted"), "{all}");
        // The same with c's write rejected (as the witness does): fenced off, not a violation.
        h.iter_mut().find(|e| e.owner == "c" && e.kind == "write").unwrap().ok = false;
        let r = check(&pool_input(h));
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.stats["overlaps fenced off"], 1);
    }

    #[test]
    fn slow_takeover_unfinished_contender_held_lock_and_odd_exits_fail() {
        let mut i = clean(2);
        i.events.insert(
            4,
            Event {
                seq: 3,
                t: 35,
                kind: "mark".into(),
                owner: String::new(),
                fence: 0,
                epoch: 0,
                value: 0,
                ok: true,
                text: "kill-holder c0-r0".into(),
                mode: String::new(),
                slot: 0,
            },
        );
        i.takeover_bound_ms = 1;
        i.slots = vec![(1, false)];
        i.final_state = "held".into();
        i.final_owners = vec!["c0-r1".into()];
        i.exits[0].code = Some(1);
        i.exits[1].code = None;
        i.exits[1].signal = Some(9);
        let all = check(&i).violations.join("\n");
        for needle in [
            "ms later",
            "did not finish",
            "not a live process",
            "c0-r0 ended Some(1)",
            "c0-r1 ended None/Some(9)",
        ] {
            assert!(all.contains(needle), "{needle}: {all}");
        }
    }
}
