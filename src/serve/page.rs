//! The page at `/`: every lock with holder, pipeline link, age, lease left, fence, queue and
//! History. The server renders the lock cards (one place decides what a person sees); a few
//! lines of JS fetch the cards again every few seconds and swap them in, without a reload.
//! The shell needs no token (it holds no data); the cards are a read like any other.

use std::fmt::Write as _;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::Shared;
use super::error::ApiError;
use crate::clock::rfc3339;
use crate::queue::{self, QueueMode};
use crate::record::Record;
use crate::store::{self, Observed, State as Found};

/// Locks per page of cards: a phone scrolls through 100 comfortably; more are paged.
pub const PAGE: usize = 100;

const SHELL: &str = include_str!("page.html");

/// `/`: the shell; with `--public-read` the first page of cards is rendered into it.
pub fn shell() -> Router<Shared> {
    Router::new().route("/", get(index))
}

/// `/ui/locks?after=`: one page of cards, for the page's refresh.
pub fn data() -> Router<Shared> {
    Router::new().route("/ui/locks", get(cards))
}

#[derive(Deserialize)]
struct After {
    after: Option<String>,
}

async fn index(State(s): State<Shared>) -> Result<Response, ApiError> {
    let first = if s.config.public_read {
        render(&s, None).await?
    } else {
        "<p class=\"empty\">Loading&hellip; (this service needs its token to show the locks)</p>".to_string()
    };
    let html = SHELL.replace("{{store}}", &esc(&s.locker.store().url())).replace("{{cards}}", &first);
    Ok((
        [(header::CACHE_CONTROL, "no-store"), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")],
        Html(html),
    )
        .into_response())
}

async fn cards(State(s): State<Shared>, Query(q): Query<After>) -> Result<Response, ApiError> {
    let html = render(&s, q.after.as_deref()).await?;
    Ok(([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response())
}

/// One page of lock cards after `after`, and the link to the next page.
async fn render(s: &Shared, after: Option<&str>) -> Result<String, ApiError> {
    let store = s.locker.store();
    let page = store
        .list_page(&store::ListQuery {
            prefix: "",
            after,
            limit: PAGE,
        })
        .await?;
    let now = store.clock().now_ms();
    let mut html = String::new();
    if page.items.is_empty() {
        html.push_str("<p class=\"empty\">No locks in this store yet.</p>");
    }
    for (name, o) in &page.items {
        card(&mut html, name, o, now);
    }
    if let Some(next) = &page.next {
        let _ = write!(
            html,
            "<p><a class=\"next\" data-after=\"{}\" href=\"#\">Next page &rarr;</a></p>",
            esc(next)
        );
    }
    Ok(html)
}

/// `3m 20s`, as a person reads an age.
fn span(ms: i64) -> String {
    let secs = (ms.max(0) / 1000) as u64;
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

fn card(html: &mut String, name: &str, o: &Observed, now: i64) {
    let (state, r) = match &o.state {
        Found::Absent => ("absent", None),
        Found::Corrupt(_) => ("unreadable", None),
        Found::Valid(r) if r.is_free() => ("free", Some(r)),
        Found::Valid(r) => ("held", Some(r)),
    };
    let _ = write!(
        html,
        "<article class=\"lock {state}\" data-lock=\"{n}\"><h2><span class=\"name\">{n}</span> <span class=\"badge\">{state}</span></h2>",
        n = esc(name)
    );
    if let Found::Corrupt(why) = &o.state {
        let _ = write!(html, "<p class=\"problem\">Unreadable record: {}</p>", esc(why));
    }
    if let Some(r) = r {
        holder(html, r, now);
        waiting(html, r, now);
        timeline(html, r);
    }
    html.push_str("</article>");
}

fn holder(html: &mut String, r: &Record, now: i64) {
    html.push_str("<dl>");
    let mut row = |k: &str, v: String| {
        let _ = write!(html, "<dt>{k}</dt><dd class=\"{}\">{v}</dd>", k.replace(' ', "-"));
    };
    if let Some(owner) = &r.owner {
        row("holder", esc(owner));
        if let Some(url) = r.holder.as_ref().and_then(|h| h.url.as_deref()) {
            row("pipeline", link(url));
        }
        if let Some(a) = r.acquired_at {
            row("age", format!("{} <small>since {}</small>", span(now - a), rfc3339(a)));
        }
        row(
            "lease left",
            match r.lease_expires_at {
                Some(e) if e > now => span(e - now),
                Some(_) => "ended".into(),
                None => "no lease end".into(),
            },
        );
        if let Some(reason) = r.holder.as_ref().and_then(|h| h.reason.as_deref()) {
            row("reason", esc(reason));
        }
    }
    for (k, h) in r.holds() {
        let url = h
            .holder
            .as_ref()
            .and_then(|x| x.url.as_deref())
            .map(|u| format!(" {}", link(u)))
            .unwrap_or_default();
        row(
            &format!("slot {k}"),
            format!("{} (shared, fence {}, for {}){url}", esc(&h.owner), h.fence, span(now - h.acquired_at)),
        );
    }
    row("fence", r.fence.to_string());
    html.push_str("</dl>");
}

fn waiting(html: &mut String, r: &Record, now: i64) {
    if r.waiters.is_empty() {
        return;
    }
    let window = queue::prune_window(std::time::Duration::ZERO, queue::PRUNE_FLOOR);
    html.push_str("<h3>Queue</h3><ol class=\"queue\">");
    for (_, w) in queue::ordered(r, QueueMode::Fifo) {
        let url = w.url.as_deref().map(|u| format!(" {}", link(u))).unwrap_or_default();
        let dead = if queue::is_live(w, now, window) { "" } else { " <em>(gone quiet)</em>" };
        let _ = write!(
            html,
            "<li><span class=\"who\">{}</span> waiting {}{url}{dead}</li>",
            esc(&w.owner),
            span(now - w.enqueued_at)
        );
    }
    html.push_str("</ol>");
}

fn timeline(html: &mut String, r: &Record) {
    if r.history.is_empty() {
        return;
    }
    html.push_str("<details><summary>History</summary><ol class=\"timeline\">");
    for e in r.history.iter().rev() {
        let by = e.by.as_deref().map(|b| format!(" by {}", esc(b))).unwrap_or_default();
        let from = e.from.as_deref().map(|f| format!(" from {}", esc(f))).unwrap_or_default();
        let why = e.why.as_deref().map(|w| format!(" <q>{}</q>", esc(w))).unwrap_or_default();
        let waited = e
            .waited
            .map(|w| format!(" after waiting {}", crate::output::waited_text(w)))
            .unwrap_or_default();
        let _ = write!(
            html,
            "<li class=\"{kind}\"><time>{at}</time> <b>{kind}</b> {owner}{from}{by}{waited}, fence {fence}{why}</li>",
            kind = e.event.as_str(),
            at = rfc3339(e.at),
            owner = esc(&e.owner),
            fence = e.fence.unwrap_or(0),
        );
    }
    html.push_str("</ol></details>");
}

/// A link to a pipeline, only for http(s) URLs (a `javascript:` URL in a record is text).
fn link(url: &str) -> String {
    if url.starts_with("https://") || url.starts_with("http://") {
        format!("<a href=\"{u}\" rel=\"noopener noreferrer\">{u}</a>", u = esc(url))
    } else {
        esc(url)
    }
}

/// HTML-escapes text from the store (owners, reasons and names are anyone's input).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_from_the_store_cannot_open_tags() {
        assert_eq!(super::esc("<script>\"x\"&'"), "&lt;script&gt;&quot;x&quot;&amp;&#39;");
        assert_eq!(super::link("javascript:alert(1)"), "javascript:alert(1)");
        assert!(super::link("https://ci/x?a=1&b=2").contains("&amp;b=2"));
    }
}
