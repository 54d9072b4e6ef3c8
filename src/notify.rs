//! Notifications (docs/design.md, "Notifications and CI reports (v2)"): `--notify URL`
//! (repeatable, `PIPELINE_LOCK_NOTIFY`) gets a JSON POST with a Slack-compatible `text` and
//! the structured event when a lock is taken over or forced, when a lease is lost, and when a
//! wait lasts longer than `--notify-after`. Best effort and bounded: every POST runs in a task
//! of its own beside the wait, gives up after [`BOUND`], and the command joins the tasks with
//! the same bound before it exits; a failure is a warning, never an exit code. A URL is never
//! printed whole (webhook URLs carry their secret in the path): only its scheme and host.

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use crate::error::{Error, Result};

/// The most one notification may take, from its start to its answer; also the most the
/// command waits for the ones still in flight when it is done.
pub const BOUND: Duration = Duration::from_secs(2);

/// `--notify-after`'s default: a wait this long is worth telling someone about.
pub const DEFAULT_AFTER: Duration = Duration::from_secs(600);

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// What happened, as the event's `event` field names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// We took the lock over from a stale holder.
    TakenOver,
    /// We took it by break-glass (`--force`).
    Forced,
    /// The lease we held was lost (exit 76).
    LeaseLost,
    /// We have waited longer than `--notify-after`.
    Waiting,
}

/// One notification's structured event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// What happened.
    pub event: Kind,
    /// The lock.
    pub lock: String,
    /// The store's URL.
    pub store: String,
    /// Who we are.
    pub owner: String,
    /// The fence of our grant, when we have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
    /// Who held the lock: the one taken over from, or the one we wait for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// Why (the takeover rule, the loss, the reason).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// Seconds waited so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waited_s: Option<u64>,
}

impl Event {
    /// The Slack-compatible one-line text.
    pub fn text(&self) -> String {
        let holder = self.holder.as_deref().unwrap_or("nobody");
        let fence = self.fence.map(|f| format!(" (fence {f})")).unwrap_or_default();
        let why = self.why.as_deref().map(|w| format!(": {w}")).unwrap_or_default();
        match self.event {
            Kind::TakenOver => format!("pipeline-lock: {} took over lock {:?} from {holder}{fence}{why}", self.owner, self.lock),
            Kind::Forced => format!("pipeline-lock: {} forced lock {:?} from {holder}{fence}{why}", self.owner, self.lock),
            Kind::LeaseLost => format!("pipeline-lock: {} lost its lease on lock {:?}{why}", self.owner, self.lock),
            Kind::Waiting => format!(
                "pipeline-lock: {} has waited {} s for lock {:?}, held by {holder}",
                self.owner,
                self.waited_s.unwrap_or_default(),
                self.lock
            ),
        }
    }
}

/// One `--notify` URL.
#[derive(Debug, Clone)]
struct Target {
    uri: hyper::Uri,
    /// Scheme and host only: what messages may show.
    shown: String,
}

/// Where notifications go, and the ones in flight.
pub struct Notifier {
    targets: Vec<Target>,
    /// `--notify-after`.
    pub after: Duration,
    client: OnceLock<std::result::Result<Client<Https, Full<Bytes>>, String>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<&str> = self.targets.iter().map(|t| t.shown.as_str()).collect();
        f.debug_struct("Notifier")
            .field("targets", &shown)
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}

/// Scheme and host (and port) of a URL: what may be printed of it.
pub fn shown(uri: &hyper::Uri) -> String {
    format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("?"),
        uri.authority().map(|a| a.as_str().rsplit('@').next().unwrap_or("")).unwrap_or("")
    )
}

impl Notifier {
    /// Checks the URLs (http or https, with a host); `None` when there are none.
    pub fn new(urls: &[String], after: Duration) -> Result<Option<Arc<Notifier>>> {
        let mut targets = Vec::new();
        for (i, url) in urls.iter().filter(|u| !u.trim().is_empty()).enumerate() {
            let bad = || {
                Error::Usage(format!(
                    "--notify URL number {} (not shown: it may hold a secret) is not an http:// or https:// URL with a host",
                    i + 1
                ))
            };
            let uri: hyper::Uri = url.trim().parse().map_err(|_| bad())?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none_or(str::is_empty) {
                return Err(bad());
            }
            targets.push(Target { shown: shown(&uri), uri });
        }
        if targets.is_empty() {
            return Ok(None);
        }
        Ok(Some(Arc::new(Notifier {
            targets,
            after,
            client: OnceLock::new(),
            tasks: Mutex::new(Vec::new()),
        })))
    }

    /// Sends `event` to every URL in the background: returns at once.
    pub fn send(self: &Arc<Self>, event: Event) {
        for target in self.targets.clone() {
            let (this, event) = (self.clone(), event.clone());
            let task = tokio::spawn(async move {
                match tokio::time::timeout(BOUND, this.post(&target, &event)).await {
                    Ok(Ok(())) => tracing::debug!("notified {} of {:?}", target.shown, event.event),
                    Ok(Err(why)) => eprintln!("pipeline-lock: warning: notification to {} failed: {why}", target.shown),
                    Err(_) => eprintln!(
                        "pipeline-lock: warning: notification to {} gave no answer within {} s; given up",
                        target.shown,
                        BOUND.as_secs()
                    ),
                }
            });
            self.tasks.lock().unwrap_or_else(|e| e.into_inner()).push(task);
        }
    }

    /// Waits for the notifications in flight, at most [`BOUND`] in all (each gives up by
    /// then anyway); called before the command exits.
    pub async fn finish(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        let _ = tokio::time::timeout(BOUND + Duration::from_millis(100), all).await;
    }

    async fn post(&self, target: &Target, event: &Event) -> std::result::Result<(), String> {
        let body = serde_json::json!({"text": event.text(), "event": event}).to_string();
        let request = hyper::Request::post(target.uri.clone())
            .header("Content-Type", "application/json")
            .header("User-Agent", concat!("pipeline-lock/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        // The client's errors never hold the URL; the chain is safe to print.
        let response = self.client()?.request(request).await.map_err(|e| crate::report::chain(&e))?;
        let status = response.status();
        // Read (a little of) the answer so the connection ends cleanly; its content is not ours.
        let _ = Limited::new(response.into_body(), 4096).collect().await;
        if !status.is_success() {
            return Err(format!("the receiver answered {status}"));
        }
        Ok(())
    }

    fn client(&self) -> std::result::Result<&Client<Https, Full<Bytes>>, String> {
        self.client
            .get_or_init(|| {
                let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
                let builder = match hyper_rustls::HttpsConnectorBuilder::new().with_provider_and_native_roots(provider.clone()) {
                    Ok(b) => b,
                    // No CA store here: https receivers fail at the handshake; http ones still work.
                    Err(_) => hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                        rustls::ClientConfig::builder_with_provider(provider)
                            .with_safe_default_protocol_versions()
                            .map_err(|e| format!("TLS setup: {e}"))?
                            .with_root_certificates(rustls::RootCertStore::empty())
                            .with_no_client_auth(),
                    ),
                };
                let https = builder.https_or_http().enable_http1().build();
                Ok(Client::builder(TokioExecutor::new()).build(https))
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// The event of a wait: for `lock` in `store`, by `owner`; `event` is filled in when sent.
pub fn base(lock: &str, store: &str, owner: &str) -> Event {
    Event {
        event: Kind::Waiting,
        lock: lock.to_string(),
        store: store.to_string(),
        owner: owner.to_string(),
        fence: None,
        holder: None,
        why: None,
        waited_s: None,
    }
}

/// After a grant: a takeover (or a break-glass one, `forced`) is announced.
pub fn on_grant(n: Option<&Arc<Notifier>>, grant: &crate::Grant, forced: bool) {
    let (Some(n), crate::locker::How::TookOver { from, why }) = (n, &grant.how) else {
        return;
    };
    n.send(Event {
        event: if forced { Kind::Forced } else { Kind::TakenOver },
        fence: Some(grant.fence),
        holder: Some(from.clone()),
        why: Some(why.clone()),
        ..base(&grant.lock, &grant.store, &grant.owner)
    });
}

/// What the last progress report of a wait said: who held the lock, how many waited.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// The holder's owner (or the shared holders', joined).
    pub holder: Option<String>,
    /// Live waiters, us included.
    pub queued: usize,
    /// Time waited at that report.
    pub waited: Duration,
}

/// Where a wait's last report is kept, for notifications and CI reports.
pub type SeenCell = Arc<Mutex<Option<Seen>>>;

/// How many waited (us included) at the wait's last report; 1 when it never waited.
pub fn queued(seen: &SeenCell) -> usize {
    seen.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map_or(1, |s| s.queued)
}

/// `opts` with its progress reports also kept in the returned cell.
pub fn watch_progress(mut opts: crate::AcquireOptions) -> (crate::AcquireOptions, SeenCell) {
    let cell: SeenCell = Arc::default();
    let inner = opts.progress.take();
    let keep = cell.clone();
    opts.progress = Some(Arc::new(move |r: &crate::locker::WaitReport| {
        let holder = r.holder.owner.clone().or_else(|| {
            let shared: Vec<String> = r.holder.shared.values().map(|h| h.owner.clone()).collect();
            (!shared.is_empty()).then(|| shared.join(", "))
        });
        *keep.lock().unwrap_or_else(|e| e.into_inner()) = Some(Seen {
            holder,
            queued: r.queued,
            waited: r.waited,
        });
        if let Some(inner) = &inner {
            inner(r);
        }
    }));
    (opts, cell)
}

/// Runs the wait `fut`; if it lasts longer than `--notify-after`, a `waiting` event goes out
/// once, in the background, and the wait goes on undisturbed.
pub async fn while_waiting<F: Future>(n: Option<&Arc<Notifier>>, base: Event, seen: &SeenCell, fut: F) -> F::Output {
    let Some(n) = n else { return fut.await };
    tokio::pin!(fut);
    tokio::select! {
        out = &mut fut => return out,
        () = tokio::time::sleep(n.after) => {}
    }
    let last = seen.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default();
    n.send(Event {
        event: Kind::Waiting,
        holder: last.holder,
        waited_s: Some(n.after.as_secs()),
        ..base
    });
    fut.await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_as_scheme_and_host_only() {
        let uri: hyper::Uri = "https://user:pw@hooks.example.test:8443/services/T0/B0/SECRET?token=x".parse().unwrap();
        assert_eq!(shown(&uri), "https://hooks.example.test:8443");
        let err = Notifier::new(&["ftp://host/SECRET".into()], BOUND).unwrap_err().to_string();
        assert!(!err.contains("SECRET") && err.contains("number 1"), "{err}");
        assert!(
            Notifier::new(&["not a url SECRET".into()], BOUND)
                .unwrap_err()
                .to_string()
                .find("SECRET")
                .is_none()
        );
        assert!(Notifier::new(&[], BOUND).unwrap().is_none());
    }

    #[test]
    fn the_text_says_what_happened_to_which_lock() {
        let e = Event {
            event: Kind::TakenOver,
            lock: "deploy".into(),
            store: "file:///x".into(),
            owner: "b".into(),
            fence: Some(4),
            holder: Some("a".into()),
            why: Some("lease ended".into()),
            waited_s: None,
        };
        assert_eq!(e.text(), "pipeline-lock: b took over lock \"deploy\" from a (fence 4): lease ended");
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["event"], "taken-over");
        assert!(json.get("waited_s").is_none());
    }
}
