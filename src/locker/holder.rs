//! A holder's own writes: renew and release (break-glass included), and the error that says a
//! grant is gone (docs/design.md, rules 5 and 7).

use super::{EAGER_ROUNDS, Grant, Holding, How, Locker, ReleaseOptions, Released, RenewOptions, Ttl, Wrote, how_event, ttl_len};
use crate::clock::rfc3339;
use crate::error::{Error, Occupant, Result};
use crate::record::{Action, Event, EventKind, Hold, Record, SharedOp};
use crate::store::{Expect, Observed, State, Written};

/// The History event that says a grant of `owner` ended without `owner` giving it back:
/// a takeover from it, or a `--force` release by someone else. `None` when the last event
/// about `owner` is its own release (or there is none: never ours, or pushed out of History).
pub fn taken_from<'r>(r: &'r Record, owner: &str) -> Option<&'r Event> {
    let last = r.history.iter().rev().find(|e| {
        let taken = e.event.is_grant() && e.from.as_deref() == Some(owner);
        let released = e.event == EventKind::Released && e.owner == owner;
        taken || released
    })?;
    let forced_away = last.event == EventKind::Released && last.by.as_deref().is_some_and(|b| b != owner);
    (last.event != EventKind::Released || forced_away).then_some(last)
}

/// "taken over by X (why)" / "released by X with --force (why)", for messages.
fn taken_text(e: &Event) -> String {
    let why = e.why.as_deref().map(|w| format!(" ({w})")).unwrap_or_default();
    match e.event {
        EventKind::Released => format!("it was released by {} with --force{why}", e.by.as_deref().unwrap_or("?")),
        _ => format!("it was taken over by {}{why}", e.owner),
    }
}

impl Locker {
    /// Extends the lease of a lock `who` holds. Exit 76 if it is no longer theirs.
    ///
    /// A renewal that knows its lease and its token (`run`'s heartbeat) is one write. One that
    /// keeps the grant's own lease length, or may have to find the grant by owner (a later
    /// job whose exported token is stale), reads the record first.
    pub async fn renew(&self, lock: &str, who: &Holding, opts: RenewOptions) -> Result<Grant> {
        let RenewOptions { ttl, retention, in_history } = opts;
        let synced = self.store.clock().is_synced();
        let event = in_history.then(|| how_event(EventKind::Renewed, &who.owner, None)).flatten();
        if who.shared {
            return self.renew_shared(lock, who, opts, self.store.read(lock, true).await?).await;
        }
        let mut seen = match (ttl, who.by_owner) {
            (Ttl::For(_) | Ttl::NoEnd, false) => None,
            _ => Some(self.store.read(lock, true).await?),
        };
        for _ in 0..EAGER_ROUNDS {
            let (expect, lease) = match &seen {
                None => (who.expect(), ttl_len(ttl, None, 0)),
                Some(obs) => match &obs.state {
                    State::Corrupt(why) => return Err(self.corrupt(lock, why)),
                    State::Valid(r) => match who.finds(r) {
                        Some(token) => (Expect::Token(token.to_string()), ttl_len(ttl, Some(r), self.store.clock().now_ms())),
                        // A shared hold of ours (the caller did not say `--shared`).
                        None if finds_shared(who, r).is_some() => return self.renew_shared(lock, who, opts, obs.clone()).await,
                        None => return Err(self.lost(lock, who, obs)),
                    },
                    State::Absent => return Err(self.lost(lock, who, obs)),
                },
            };
            let change = self.change(
                Action::Renew {
                    restamp: false,
                    raise_fence: None,
                },
                lease,
                retention,
                event.clone(),
            );
            match self.commit(lock, expect, None, &change).await? {
                Written::Done(r) => {
                    let r = if synced {
                        Some(r)
                    } else {
                        self.retime(lock, r, lease, retention, Wrote::Renewal).await?
                    };
                    return match r {
                        Some(r) => Ok(self.grant(lock, &r, None, How::Reentered, 0)),
                        None => Err(self.lost(lock, who, &self.store.read(lock, true).await?)),
                    };
                }
                // Decide again on what is there: the grant under another token of ours, or gone.
                Written::Conflict(obs) => seen = Some(obs),
            }
        }
        Err(Error::Unavailable {
            message: format!("lock {lock:?} in {} kept changing under renew", self.store.url()),
            source: None,
        })
    }

    /// The error for a grant of `who` that is gone: exit 76, saying who has the lock now and,
    /// where History tells, who took it from us and when.
    fn lost(&self, lock: &str, who: &Holding, obs: &Observed) -> Error {
        let record = match &obs.state {
            State::Corrupt(why) => return self.corrupt(lock, why),
            State::Valid(r) => Some(r),
            State::Absent => None,
        };
        let now = match record {
            Some(r) if !r.is_free() => format!("held by {}", r.holders_text()),
            Some(_) => "free".to_string(),
            None => "absent (its record was deleted)".to_string(),
        };
        let how = match record.and_then(|r| taken_from(r, &who.owner)) {
            Some(e) => format!("{} at {}", taken_text(e), rfc3339(e.at)),
            None => "it was taken over (lease ended or --force-after) or released".to_string(),
        };
        Error::LeaseLost {
            message: format!(
                "lock {lock:?} in {} is not held by {} any more: {how}; it is {now} now. Work done since then ran \
                 without the lock; acquire it again, and renew more often than the lease (--ttl)",
                self.store.url(),
                who.owner
            ),
            occupant: Occupant::of(lock, record),
        }
    }

    /// Gives back the lock `who` holds. Someone else's lock is left alone; a grant that was
    /// taken over from `who` is an error (exit 76): the pipeline ran part of its protected
    /// work without the lock and must go red.
    pub async fn release(&self, lock: &str, who: &Holding, opts: &ReleaseOptions) -> Result<Released> {
        if let Some(reason) = &opts.force {
            return self.force_release(lock, who, reason, opts).await;
        }
        if who.shared {
            return self.release_shared(lock, who, opts, self.store.read(lock, true).await?).await;
        }
        let synced = self.store.clock().is_synced();
        let mut expect = who.expect();
        for _ in 0..EAGER_ROUNDS {
            let event = how_event(EventKind::Released, &who.owner, None);
            let change = self.change(Action::Release, None, opts.retention, event);
            let obs = match self.commit(lock, expect.clone(), None, &change).await? {
                Written::Done(r) => {
                    if !synced {
                        self.retime_tombstone(lock, &r, opts.retention).await?;
                    }
                    return Ok(Released::Released { fence: r.fence });
                }
                Written::Conflict(obs) => obs,
            };
            let r = match &obs.state {
                State::Corrupt(why) => return Err(self.corrupt(lock, why)),
                State::Absent => return Ok(Released::NotHeld),
                State::Valid(r) => r,
            };
            if let Some(token) = who.finds(r) {
                // Ours under another token (re-acquired since the token was exported).
                expect = Expect::Token(token.to_string());
                continue;
            }
            if finds_shared(who, r).is_some() {
                return self.release_shared(lock, who, opts, obs.clone()).await;
            }
            if taken_from(r, &who.owner).is_some() {
                return Err(self.lost(lock, who, &obs));
            }
            if r.is_free() || own_release(r, &who.owner) {
                // Free; or our own release is the last word about us (it landed and its reply
                // was lost, the retry meeting the next holder): nothing of ours is held, and
                // the next holder's grant is not "someone else holds ours".
                return Ok(Released::NotHeld);
            }
            return Ok(Released::HeldByOther {
                owner: r.owner.clone().unwrap_or_default(),
                fence: r.fence,
            });
        }
        Err(Error::Unavailable {
            message: format!("lock {lock:?} in {} kept changing under release", self.store.url()),
            source: None,
        })
    }

    async fn force_release(&self, lock: &str, who: &Holding, reason: &str, opts: &ReleaseOptions) -> Result<Released> {
        for _ in 0..EAGER_ROUNDS {
            let obs = self.store.read(lock, true).await?;
            let (expect, previous) = match &obs.state {
                State::Absent => return Ok(Released::NotHeld),
                State::Valid(r) if r.is_free() => return Ok(Released::NotHeld),
                // Shared holds: every one goes, in one write on the version read.
                State::Valid(r) if r.owner.is_none() => (
                    Expect::Rvn(r.rvn.clone()),
                    r.holds().iter().map(|(_, h)| h.owner.as_str()).collect::<Vec<_>>().join(", "),
                ),
                State::Valid(r) => (
                    Expect::TokenRvn {
                        token: r.token.clone().unwrap_or_default(),
                        rvn: r.rvn.clone(),
                    },
                    r.owner.clone().unwrap_or_default(),
                ),
                State::Corrupt(_) => (Expect::Exact, "an unreadable record".to_string()),
            };
            let event = Event {
                event: EventKind::Released,
                owner: previous.clone(),
                fence: None,
                at: self.store.clock().now_ms(),
                by: Some(who.owner.clone()),
                why: Some(format!("--force: {reason}")),
                from: None,
                waited: None,
            };
            let mut change = self.change(Action::Release, None, opts.retention, Some(event));
            change.evict = true;
            if let Written::Done(r) = self.commit(lock, expect, Some(&obs), &change).await? {
                tracing::warn!("force-released lock {lock:?} in {} from {previous}: {reason}", self.store.url());
                return Ok(Released::Released { fence: r.fence });
            }
        }
        Err(Error::Unavailable {
            message: format!("lock {lock:?} in {} kept changing under release --force", self.store.url()),
            source: None,
        })
    }

    /// Renews a shared hold of `who`: one write on the version read (`obs`), again on what a
    /// refusal shows.
    async fn renew_shared(&self, lock: &str, who: &Holding, opts: RenewOptions, mut obs: Observed) -> Result<Grant> {
        let event = opts.in_history.then(|| how_event(EventKind::Renewed, &who.owner, None)).flatten();
        for _ in 0..EAGER_ROUNDS {
            let r = match &obs.state {
                State::Corrupt(why) => return Err(self.corrupt(lock, why)),
                State::Valid(r) => r,
                State::Absent => return Err(self.lost(lock, who, &obs)),
            };
            let Some((slot, token)) = finds_shared(who, r).map(|(k, h)| (k, h.token.clone())) else {
                return Err(self.lost(lock, who, &obs));
            };
            let lease = ttl_len(opts.ttl, r.view_of(slot).as_ref(), self.store.clock().now_ms());
            let mut change = self.change(Action::Shared(SharedOp::Renew { slot }), lease, opts.retention, event.clone());
            change.slots = r.slot_count();
            match self.commit(lock, Expect::Rvn(r.rvn.clone()), Some(&obs), &change).await? {
                Written::Done(r) => return Ok(self.grant(lock, &r, Some(&token), How::Reentered, 0)),
                Written::Conflict(now) => obs = now,
            }
        }
        Err(Error::Unavailable {
            message: format!("lock {lock:?} in {} kept changing under renew", self.store.url()),
            source: None,
        })
    }

    /// Gives back a shared hold of `who`, as [`Locker::release`] does an exclusive one.
    async fn release_shared(&self, lock: &str, who: &Holding, opts: &ReleaseOptions, mut obs: Observed) -> Result<Released> {
        for _ in 0..EAGER_ROUNDS {
            let r = match &obs.state {
                State::Corrupt(why) => return Err(self.corrupt(lock, why)),
                State::Absent => return Ok(Released::NotHeld),
                State::Valid(r) => r,
            };
            let Some((slot, fence)) = finds_shared(who, r).map(|(k, h)| (k, h.fence)) else {
                if taken_from(r, &who.owner).is_some() {
                    return Err(self.lost(lock, who, &obs));
                }
                // Other shared holders hold their own slots, not ours: only an exclusive holder
                // is "someone else holds it" (and a lost reply of our own release lands here).
                return Ok(match &r.owner {
                    Some(owner) => Released::HeldByOther {
                        owner: owner.clone(),
                        fence: r.fence,
                    },
                    None => Released::NotHeld,
                });
            };
            let event = how_event(EventKind::Released, &who.owner, None);
            let mut change = self.change(Action::Shared(SharedOp::Release { slot }), None, opts.retention, event);
            change.slots = r.slot_count();
            match self.commit(lock, Expect::Rvn(r.rvn.clone()), Some(&obs), &change).await? {
                Written::Done(_) => return Ok(Released::Released { fence }),
                Written::Conflict(now) => obs = now,
            }
        }
        Err(Error::Unavailable {
            message: format!("lock {lock:?} in {} kept changing under release", self.store.url()),
            source: None,
        })
    }
}

/// Is the last History event about `owner` its own `released` (not a forced one by someone
/// else)?
fn own_release(r: &Record, owner: &str) -> bool {
    let last = r.history.iter().rev().find(|e| e.owner == owner || e.from.as_deref() == Some(owner));
    last.is_some_and(|e| e.event == EventKind::Released && e.owner == owner && e.by.as_deref().is_none_or(|b| b == owner))
}

/// The shared hold of `who` in `r`: by its token, else (a later job) by its owner.
fn finds_shared<'r>(who: &Holding, r: &'r Record) -> Option<(u32, &'r Hold)> {
    let holds = r.holds();
    let by_token = holds.iter().find(|(_, h)| who.token.as_deref() == Some(h.token.as_str()));
    let by_owner = || holds.iter().find(|(_, h)| who.by_owner && h.owner == who.owner);
    by_token.or_else(by_owner).copied()
}
