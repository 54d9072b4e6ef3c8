//! The stores behind one small trait of compare-and-set primitives. Waiting, backoff and
//! takeover decisions live above, in [`crate::locker`]; a store only reads, writes
//! conditionally and normalises its vendor's answers.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;

use crate::clock::StoreClock;
use crate::error::Result;
use crate::record::{Action, Change, Record, SharedOp, Waiter};

pub mod aws;
#[cfg(feature = "negative-control")]
mod broken;
pub mod dynamo;
pub mod file;
pub mod memory;
pub mod s3;
pub(crate) mod state_objects;
pub(crate) mod url;
pub mod whole;

pub use url::{StoreUrl, decode_name, encode_name};

/// What a read found.
#[derive(Debug, Clone)]
// A handful live per command, passed by value through matches; a Box would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum State {
    /// No record: the lock was never taken (or its record was garbage-collected).
    Absent,
    /// A record that parsed and validated.
    Valid(Record),
    /// A record that did not parse: never free (docs/design.md, rule 8).
    Corrupt(String),
}

/// A record as read, with the store's version of it for conditional writes.
#[derive(Debug, Clone)]
pub struct Observed {
    /// What was there.
    pub state: State,
    /// Opaque, store-specific: an ETag, the raw item, the file bytes.
    pub version: Version,
}

impl Observed {
    /// The valid record, if any.
    pub fn record(&self) -> Option<&Record> {
        match &self.state {
            State::Valid(r) => Some(r),
            _ => None,
        }
    }
}

/// A store's version of a record, for `Expect::Exact` and whole-record writes. Opaque here:
/// each store puts in its own type (an ETag, the file's bytes, the raw DynamoDB item) and only
/// it looks inside.
#[derive(Clone, Default)]
pub struct Version(Option<Arc<dyn Opaque>>);

/// What a store may keep as a version.
pub(crate) trait Opaque: Any + Send + Sync + std::fmt::Debug {}

impl<T: Any + Send + Sync + std::fmt::Debug> Opaque for T {}

impl Version {
    pub(crate) fn of<T: Opaque>(version: T) -> Version {
        Version(Some(Arc::new(version)))
    }

    /// The store's own version, if this is one of its type.
    pub(crate) fn get<T: Any>(&self) -> Option<&T> {
        let any: &dyn Any = self.0.as_deref()?;
        any.downcast_ref()
    }
}

impl std::fmt::Debug for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Version").field(&self.0).finish()
    }
}

/// The condition a write is made under (docs/design.md, rules 2 to 5).
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// No record, or a valid free tombstone. Grant from free. A blind grant (a write without a
    /// `base`, decided before anything was read) also needs an empty queue: a decision that
    /// never saw the waiters must not jump them (see [`Write::admits`]).
    Vacant,
    /// Held by this owner (renew/release from a later job that knows only its identity).
    Owner(String),
    /// Held under this token (renew/release by the process that holds the grant).
    Token(String),
    /// Held under this token at this version: takeover of what the taker read.
    TokenRvn {
        /// The token read.
        token: String,
        /// The record version read.
        rvn: String,
    },
    /// Exactly the record version we wrote last (a valid record, held or free): re-timing a
    /// tombstone whose times came from this machine's clock.
    Rvn(String),
    /// Exactly the record in `base`, whatever it is: break-glass over a corrupt record. Needs a
    /// `base` (without one the write is an error); over a valid record the change applies to
    /// it as with any other condition.
    Exact,
}

impl Expect {
    /// Does `state` satisfy the condition? Whole-record stores check this before writing,
    /// the stores with server-side conditions only after a refusal.
    pub fn holds(&self, state: &State) -> bool {
        match (self, state) {
            (Expect::Exact, _) => true,
            (Expect::Vacant, State::Absent) => true,
            (Expect::Vacant, State::Valid(r)) => r.is_free(),
            (Expect::Owner(o), State::Valid(r)) => r.owner.as_deref() == Some(o.as_str()),
            (Expect::Token(t), State::Valid(r)) => r.token.as_deref() == Some(t.as_str()),
            (Expect::TokenRvn { token, rvn }, State::Valid(r)) => r.token.as_deref() == Some(token.as_str()) && &r.rvn == rvn,
            (Expect::Rvn(rvn), State::Valid(r)) => &r.rvn == rvn,
            _ => false,
        }
    }
}

/// One conditional write.
#[derive(Debug, Clone)]
pub struct Write<'a> {
    /// The lock name.
    pub lock: &'a str,
    /// The condition.
    pub expect: Expect,
    /// What the decision was based on, if anything was read. Whole-record stores read first
    /// when this is `None`; `Expect::Exact` requires it.
    pub base: Option<&'a Observed>,
    /// What to change.
    pub change: &'a Change,
}

impl Write<'_> {
    /// Does `state` satisfy this write's condition, the blind-grant rule included? Whole-record
    /// stores check this before writing; DynamoDB says the same in its condition expression.
    pub fn admits(&self, state: &State) -> bool {
        let queued = matches!(state, State::Valid(r) if !r.waiters.is_empty());
        // A grant assumes the lock's N; a record that says otherwise is not the lock it meant.
        let grant = matches!(self.change.action, Action::Grant(_) | Action::Shared(SharedOp::Grant { .. }));
        let other_n = matches!(state, State::Valid(r) if r.slot_count() != self.change.slots);
        self.expect.holds(state) && !(self.is_blind_grant() && queued) && !(grant && other_n)
    }

    /// A grant from free decided without reading the record.
    pub fn is_blind_grant(&self) -> bool {
        self.base.is_none() && self.expect == Expect::Vacant
    }
}

/// A waiter's own bookkeeping in `Waiters`. It never changes Rvn or any holder field, so it
/// cannot make a holder's renewal or a taker's compare-and-set on Token and Rvn fail.
#[derive(Debug, Clone)]
pub struct WaiterUpdate<'a> {
    /// The lock name.
    pub lock: &'a str,
    /// The record this update was planned on. Whole-record stores write over it (and re-read
    /// and retry when it changed meanwhile); DynamoDB picks its expression by it.
    pub base: Option<&'a Observed>,
    /// Register or refresh this entry.
    pub set: Option<(&'a str, &'a Waiter)>,
    /// Remove this entry (we got the lock or gave up).
    pub remove: Option<&'a str>,
    /// Also remove dead entries (each by its own window), except `set`'s own.
    pub prune: Option<crate::queue::Prune>,
}

/// The answer to a conditional write: contention is a value, not an error.
#[derive(Debug, Clone)]
pub enum Written {
    /// The write happened; the record as it is now.
    Done(Record),
    /// The condition did not hold; what the store holds instead.
    Conflict(Observed),
}

/// The answer to [`Store::write_all`].
#[derive(Debug, Clone)]
pub enum WrittenAll {
    /// Every write happened; the records as they are now, in the order of the writes.
    Done(Vec<Record>),
    /// Nothing was written: some condition did not hold. What the store holds for each lock
    /// whose condition failed, in the order of the writes (`None`: that one's held).
    Conflict(Vec<Option<Observed>>),
}

/// Compare-and-set primitives over lock records.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The store's URL, for messages: `dynamodb://table`.
    fn url(&self) -> String;

    /// The store's clock.
    fn clock(&self) -> &StoreClock;

    /// Requests sent to the store so far (for `--output json` and the request-count tests).
    fn requests(&self) -> u64;

    /// Write capacity units the store's successful writes consumed so far, where the store
    /// says (DynamoDB's ReturnConsumedCapacity); `None` for stores without the notion.
    fn write_units(&self) -> Option<f64> {
        None
    }

    /// Reads one record. `consistent` asks for a strongly consistent read (after a lost
    /// reply); polling may read eventually consistently.
    async fn read(&self, lock: &str, consistent: bool) -> Result<Observed>;

    /// Writes conditionally. Errors are only for failures to get an answer, or answers that
    /// are not about the condition; the caller treats a transient error as "may have landed".
    async fn write(&self, write: Write<'_>) -> Result<Written>;

    /// Writes several locks at once, all or none (several locks at once, `--lock A --lock B`):
    /// `None` where the store has no such write (S3, file: the locker then takes them one by
    /// one in sorted order, see [`crate::locker::Locker::acquire_all`]). Each write is one
    /// that [`Store::write`] would make alone, for a different lock.
    async fn write_all(&self, writes: &[Write<'_>]) -> Result<Option<WrittenAll>> {
        let _ = writes;
        Ok(None)
    }

    /// Waiter bookkeeping (see [`WaiterUpdate`]). Nothing is written when the record is absent,
    /// free of the entry to remove, or unreadable. Returns the record as it is afterwards when
    /// the store knows it without another request, so the write can stand in for a poll.
    /// Required, with no default: a store that dropped these updates would still be safe, but
    /// its queue would be silently empty and waiters would be served in no order. A wrapper
    /// forwards to the store it wraps; `tests/store_contract.rs` checks every store's.
    async fn update_waiters(&self, update: WaiterUpdate<'_>) -> Result<Option<Observed>>;

    /// One page of lock records (see [`ListQuery`] and [`Page`]): at most `limit` records whose
    /// names start with `prefix`, after the continuation token `after`, in the store's listing
    /// order (DynamoDB's Scan order; S3's and the file store's key order). Following `next`
    /// until it is `None` visits every record there exactly once (records written meanwhile
    /// may or may not be seen). Memory is bounded by the page, not by the number of locks.
    async fn list_page(&self, query: &ListQuery<'_>) -> Result<Page>;

    /// Every lock record in the store, with its name, sorted by name: every page of
    /// [`Store::list_page`] collected. Memory grows with the number of locks; `list` on the
    /// command line streams the pages instead.
    async fn list(&self) -> Result<Vec<(String, Observed)>> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let query = ListQuery {
                prefix: "",
                after: after.as_deref(),
                limit: LIST_PAGE,
            };
            let page = self.list_page(&query).await?;
            out.extend(page.items);
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Operator checks for `doctor`: one line each.
    async fn doctor(&self) -> Vec<Check>;
}

/// A store's writes, intercepted; [`Hooked`] forwards the rest of [`Store`] to
/// [`WriteHook::inner`]. For test doubles: the negative control, injected lost replies.
#[async_trait]
pub trait WriteHook: Send + Sync + std::fmt::Debug {
    /// The store everything but the write goes to.
    fn inner(&self) -> &dyn Store;

    /// The write, the hook's way.
    async fn write(&self, write: Write<'_>) -> Result<Written>;
}

/// The store `H::inner()` with its writes going through `H`.
#[derive(Debug)]
pub struct Hooked<H>(pub H);

#[async_trait]
impl<H: WriteHook> Store for Hooked<H> {
    fn url(&self) -> String {
        self.0.inner().url()
    }

    fn clock(&self) -> &StoreClock {
        self.0.inner().clock()
    }

    fn requests(&self) -> u64 {
        self.0.inner().requests()
    }

    fn write_units(&self) -> Option<f64> {
        self.0.inner().write_units()
    }

    async fn read(&self, lock: &str, consistent: bool) -> Result<Observed> {
        self.0.inner().read(lock, consistent).await
    }

    async fn write(&self, write: Write<'_>) -> Result<Written> {
        self.0.write(write).await
    }

    async fn update_waiters(&self, update: WaiterUpdate<'_>) -> Result<Option<Observed>> {
        self.0.inner().update_waiters(update).await
    }

    async fn list_page(&self, query: &ListQuery<'_>) -> Result<Page> {
        self.0.inner().list_page(query).await
    }

    async fn doctor(&self) -> Vec<Check> {
        self.0.inner().doctor().await
    }
}

/// The page size `list` asks the stores for: a few hundred records in memory at a time.
pub const LIST_PAGE: usize = 250;

/// What [`Store::list_page`] asks for.
#[derive(Debug, Clone, Copy)]
pub struct ListQuery<'a> {
    /// Only lock names that start with this (empty: every lock). DynamoDB filters the Scan
    /// with `begins_with(LockID, prefix)`; S3 and the file store list the key prefix.
    pub prefix: &'a str,
    /// The continuation token of the previous page (its `next`), or `None` for the first.
    pub after: Option<&'a str>,
    /// At most this many records (at least 1).
    pub limit: usize,
}

/// One page of a listing.
#[derive(Debug, Default)]
pub struct Page {
    /// The records, in the store's listing order, with their names.
    pub items: Vec<(String, Observed)>,
    /// The token to pass as `after` for the next page; `None` when this was the last. It is
    /// a lock name: the last one this page looked at (for DynamoDB, the Scan's
    /// `LastEvaluatedKey`), so a caller that stops in the middle of a page may resume after
    /// any name the page returned.
    pub next: Option<String>,
}

/// One `doctor` line.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Pass, warn or fail.
    pub outcome: Outcome,
    /// What was found, and the fix when it failed.
    pub detail: String,
}

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Fine.
    Pass,
    /// Works, but an operator should know.
    Warn,
    /// Locks on this store are not safe, or cannot work.
    Fail,
}

impl Check {
    pub(crate) fn new(name: &str, outcome: Outcome, detail: impl Into<String>) -> Check {
        Check {
            name: name.to_string(),
            outcome,
            detail: detail.into(),
        }
    }
}

/// The tombstone that replaces a corrupt record (break-glass). Its fence must not go back:
/// the old one where it could still be read, else the store-clock milliseconds, which are
/// larger than any fence a lock reaches by counting.
pub(crate) fn salvage(lock: &str, old_fence: Option<u64>, change: &Change) -> Record {
    let mut base = Record::vacant(lock);
    base.fence = old_fence.unwrap_or(change.now.max(0) as u64);
    base.apply(change)
}

/// Opens the store a URL names. AWS stores resolve their region and credentials here.
pub async fn open(url: &StoreUrl, aws_opts: &aws::AwsOptions) -> Result<Arc<dyn Store>> {
    // The safety checker's negative control; never compiled into a release build.
    #[cfg(feature = "negative-control")]
    if let Some(mode) = broken::Mode::from_env()? {
        return broken::open(mode, url, aws_opts).await;
    }
    Ok(match url {
        StoreUrl::DynamoDb { table } => Arc::new(dynamo::DynamoStore::connect(table, aws_opts).await?),
        StoreUrl::File { dir } => Arc::new(file::FileStore::open(dir)?),
        StoreUrl::S3 { bucket, prefix } => Arc::new(s3::S3Store::connect(bucket, prefix, aws_opts).await?),
    })
}

/// A parse error that names the attribute it is about (`History[2].At: invalid type ...`).
pub(crate) fn at_path<E: std::fmt::Display>(e: &serde_path_to_error::Error<E>) -> String {
    match e.path().to_string() {
        p if p == "." => e.inner().to_string(),
        p => format!("{p}: {}", e.inner()),
    }
}
