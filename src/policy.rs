//! The takeover rules (docs/design.md, rule 4) and each round's decision of the waiting loop
//! ([`plan()`], in `policy/plan.rs`) as pure functions of what was read and what time it is, so they are tested
//! without a store or a clock. Monotonic times are tokio's, so that the waiting loop can be
//! tested under a paused clock.

use crate::clock::ms;
use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::record::Record;

mod plan;
pub use plan::{Asker, Plan, held_via_run, plan};

/// Why a live-looking lock may be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Takeover {
    /// `--force`, with its reason.
    Forced(String),
    /// The lease ended on the store clock.
    LeaseEnded,
    /// The holder's last sign of life (RenewedAt, else AcquiredAt) is older than `--force-after`.
    ForceAfter,
    /// We watched Rvn stay unchanged for the whole lease on our monotonic clock.
    Unrenewed,
    /// Our CI server says the holder's pipeline has ended; its status.
    PipelineEnded(String),
}

impl Takeover {
    /// The History `Why` text.
    pub fn why(&self) -> String {
        match self {
            Takeover::Forced(reason) => format!("--force: {reason}"),
            Takeover::LeaseEnded => "the lease ended".into(),
            Takeover::ForceAfter => "not renewed for longer than --force-after".into(),
            Takeover::Unrenewed => "not renewed for a whole lease (watched on the taker's monotonic clock)".into(),
            Takeover::PipelineEnded(status) => {
                format!("the holder's pipeline has ended ({status}, per the CI API)")
            }
        }
    }
}

/// How long we have watched versions stay the same: the record's `Rvn` (the exclusive
/// holder's), and each shared hold's own `Rvn`, which only that hold's writes change, so a
/// shared holder that stopped renewing shows as one unchanged version beside the others.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    since: BTreeMap<String, Instant>,
}

impl Watch {
    /// Notes a read of `record` that returned at `at`: a version seen for the first time
    /// starts its watch; versions no longer there are forgotten.
    pub fn observe(watch: &mut Option<Watch>, record: &Record, at: Instant) {
        let w = watch.get_or_insert_with(Watch::default);
        let seen: Vec<&String> = std::iter::once(&record.rvn).chain(record.shared.values().map(|h| &h.rvn)).collect();
        w.since.retain(|rvn, _| seen.contains(&rvn));
        for rvn in seen {
            w.since.entry(rvn.clone()).or_insert(at);
        }
    }

    /// Since when version `rvn` has been seen unchanged.
    fn since(&self, rvn: &str) -> Option<Instant> {
        self.since.get(rvn).copied()
    }
}

/// The inputs to the decision besides the record.
#[derive(Debug, Clone)]
pub struct Judge<'a> {
    /// Store-clock now, unix ms.
    pub now: i64,
    /// The skew margin plus the store clock's uncertainty.
    pub margin: Duration,
    /// `--force-after`.
    pub force_after: Option<Duration>,
    /// `--force` with its reason.
    pub force: Option<&'a str>,
    /// Our watch of the record's versions.
    pub watch: Option<&'a Watch>,
    /// Monotonic now.
    pub mono_now: Instant,
    /// The holders whose pipelines our CI server said have ended: (Token asked about,
    /// status). A verdict counts only for a holder (or shared hold) with that Token.
    pub pipeline_ended: &'a [(String, String)],
}

/// The record's lease length: LeaseExpiresAt - RenewedAt.
pub fn lease_len(record: &Record) -> Option<Duration> {
    let (end, renewed) = (record.lease_expires_at?, record.renewed_at?);
    Some(Duration::from_millis(end.saturating_sub(renewed).max(0) as u64))
}

/// The lease a renewal (or a re-entry) that keeps the grant's own writes at store time `now`:
/// none for a grant without a lease end; else the grant's length, `at_least`, or what is left
/// of the lease now, whichever is longest, so that neither the length nor the end moves back
/// (not even by the difference between two runners' store-clock estimates).
pub fn kept_lease(record: &Record, now: i64, at_least: Option<Duration>) -> Option<Duration> {
    let end = record.lease_expires_at?;
    let left = Duration::from_millis(end.saturating_sub(now).max(0) as u64);
    Some([lease_len(record), at_least, Some(left)].into_iter().flatten().max().unwrap_or(left))
}

/// When the holder last showed it is alive: its last renewal, else its grant. `--force-after`
/// counts from here (docs/design.md, rule 4), so a holder that renews is never evicted by it.
pub fn last_sign_of_life(record: &Record) -> Option<i64> {
    record.renewed_at.or(record.acquired_at)
}

impl Judge<'_> {
    /// May we take `record` (held by someone else) now?
    pub fn takeover(&self, record: &Record) -> Option<Takeover> {
        if let Some(reason) = self.force {
            return Some(Takeover::Forced(reason.to_string()));
        }
        let now = self.now.saturating_sub(ms(self.margin));
        if record.lease_expires_at.is_some_and(|end| now > end) {
            return Some(Takeover::LeaseEnded);
        }
        if let (Some(fa), Some(alive)) = (self.force_after, last_sign_of_life(record))
            && now.saturating_sub(alive) > ms(fa)
        {
            return Some(Takeover::ForceAfter);
        }
        if let (Some(lease), Some(since)) = (lease_len(record), self.watch.and_then(|w| w.since(&record.rvn)))
            && self.mono_now.saturating_duration_since(since) > lease + self.margin
        {
            return Some(Takeover::Unrenewed);
        }
        let token = record.token.as_deref()?;
        (self.pipeline_ended.iter())
            .find(|(t, _)| t == token)
            .map(|(_, status)| Takeover::PipelineEnded(status.clone()))
    }

    /// Store-clock time at which a takeover becomes possible, if the record stays as it is.
    pub fn takeover_at(&self, record: &Record) -> Option<i64> {
        let m = ms(self.margin);
        let by_lease = record.lease_expires_at.map(|end| end + m + 1);
        let by_age = self.force_after.zip(last_sign_of_life(record)).map(|(fa, a)| a + ms(fa) + m + 1);
        let by_watch = lease_len(record)
            .zip(self.watch.and_then(|w| w.since(&record.rvn)))
            .map(|(lease, since)| {
                let left = (lease + self.margin).saturating_sub(self.mono_now.saturating_duration_since(since));
                self.now + ms(left) + 1
            });
        [by_lease, by_age, by_watch].into_iter().flatten().min()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::record::Record;

    fn held(acquired: i64, renewed: i64, lease_end: Option<i64>) -> Record {
        held_as("other", acquired, renewed, lease_end)
    }

    /// A record held by `owner` (token "t", Rvn "v1", fence 3), for the policy and plan tests.
    pub(crate) fn held_as(owner: &str, acquired: i64, renewed: i64, lease_end: Option<i64>) -> Record {
        let mut r = Record::vacant("l");
        r.owner = Some(owner.into());
        r.token = Some("t".into());
        r.rvn = "v1".into();
        r.fence = 3;
        r.acquired_at = Some(acquired);
        r.renewed_at = Some(renewed);
        r.lease_expires_at = lease_end;
        r
    }

    /// The judge at store time `now`: 2 s margin, nothing else.
    pub(crate) fn judge(now: i64) -> Judge<'static> {
        Judge {
            now,
            margin: Duration::from_secs(2),
            force_after: None,
            force: None,
            watch: None,
            mono_now: Instant::now(),
            pipeline_ended: &[],
        }
    }

    #[test]
    fn a_live_lease_is_not_taken() {
        let r = held(0, 0, Some(60_000));
        assert_eq!(judge(30_000).takeover(&r), None);
        // Within the margin after the end: still not.
        assert_eq!(judge(61_000).takeover(&r), None);
        assert_eq!(judge(62_001).takeover(&r), Some(Takeover::LeaseEnded));
        assert_eq!(judge(0).takeover_at(&r), Some(62_001));
    }

    #[test]
    fn force_after_counts_from_the_last_renewal() {
        // Acquired at 0, renewed at 100 s: a live holder that renews is never evicted.
        let r = held(0, 100_000, Some(200_000));
        let mut j = judge(100_000);
        j.force_after = Some(Duration::from_secs(60));
        assert_eq!(j.takeover(&r), None);
        j.now = 161_000;
        assert_eq!(j.takeover(&r), None);
        assert_eq!(j.takeover_at(&r), Some(162_001));
        j.now = 162_001;
        assert_eq!(j.takeover(&r), Some(Takeover::ForceAfter));
        // Never renewed: from the grant.
        let quiet = held(0, 0, None);
        j.now = 62_001;
        assert_eq!(j.takeover(&quiet), Some(Takeover::ForceAfter));
        j.now = 61_000;
        assert_eq!(j.takeover(&quiet), None);
    }

    #[test]
    fn no_lease_and_no_force_after_waits_forever() {
        let r = held(0, 0, None);
        assert_eq!(judge(i64::MAX / 2).takeover(&r), None);
        assert_eq!(judge(0).takeover_at(&r), None);
    }

    #[test]
    fn watching_an_unrenewed_record_trusts_no_wall_clock() {
        // The store clock says the lease is far from over (a holder whose clock is fast
        // wrote it), but we saw the version stay the same for longer than the lease.
        let r = held(0, 0, Some(10_000));
        let start = Instant::now();
        let mut watch = None;
        Watch::observe(&mut watch, &r, start);
        let mut j = judge(0);
        j.watch = watch.as_ref();
        j.mono_now = start + Duration::from_secs(11);
        assert_eq!(j.takeover(&r), None);
        j.mono_now = start + Duration::from_millis(12_001);
        assert_eq!(j.takeover(&r), Some(Takeover::Unrenewed));
        // A renewal (new Rvn) restarts the watch.
        let mut renewed = r.clone();
        renewed.rvn = "v2".into();
        let mut watch2 = watch.clone();
        Watch::observe(&mut watch2, &renewed, start + Duration::from_secs(12));
        let j2 = Judge { watch: watch2.as_ref(), ..j };
        assert_eq!(j2.takeover(&renewed), None);
    }

    #[test]
    fn an_ended_pipeline_is_taken_at_once() {
        let r = held(0, 0, Some(i64::MAX / 2));
        let mut j = judge(0);
        assert_eq!(j.takeover(&r), None);
        let ended = [("t".to_string(), "canceled".to_string())];
        j.pipeline_ended = &ended;
        assert_eq!(j.takeover(&r), Some(Takeover::PipelineEnded("canceled".into())));
        assert!(j.takeover(&r).unwrap().why().contains("canceled"));
        // The verdict was about token "t": a holder under another token is not taken.
        let mut other = r.clone();
        other.token = Some("u".into());
        assert_eq!(j.takeover(&other), None);
    }

    #[test]
    fn a_shared_hold_unrenewed_is_watched_on_its_own_version() {
        use crate::record::Hold;
        let hold = |owner: &str, rvn: &str| Hold {
            owner: owner.into(),
            token: format!("tok-{owner}"),
            fence: 1,
            rvn: rvn.into(),
            acquired_at: 0,
            renewed_at: 0,
            lease_expires_at: Some(10_000),
            holder: None,
        };
        let mut r = Record::vacant("l");
        r.slots = Some(3);
        r.rvn = "b1".into();
        r.shared.insert("1".into(), hold("a", "a1"));
        r.shared.insert("2".into(), hold("b", "b1"));
        let start = Instant::now();
        let mut watch = None;
        Watch::observe(&mut watch, &r, start);
        // 6 s later b renews (its version and the record's change); a does not.
        let mut later = r.clone();
        later.rvn = "b2".into();
        later.shared.get_mut("2").unwrap().rvn = "b2".into();
        Watch::observe(&mut watch, &later, start + Duration::from_secs(6));
        let mut j = judge(0);
        j.watch = watch.as_ref();
        j.mono_now = start + Duration::from_millis(12_001);
        let (a, b) = (later.view_of(1).unwrap(), later.view_of(2).unwrap());
        assert_eq!(j.takeover(&a), Some(Takeover::Unrenewed));
        assert_eq!(j.takeover(&b), None);
        assert!(j.takeover_at(&b).is_some_and(|t| t > 0));
    }

    #[test]
    fn force_always_wins() {
        let r = held(0, 0, Some(i64::MAX / 2));
        let mut j = judge(0);
        j.force = Some("incident 42");
        assert_eq!(j.takeover(&r), Some(Takeover::Forced("incident 42".into())));
        assert!(j.takeover(&r).unwrap().why().contains("incident 42"));
    }
}
