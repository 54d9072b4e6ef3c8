//! `state get|put|delete KEY`: one request to read (two to write on S3 and the file store,
//! one on DynamoDB), the answer printed as text, JSON or dotenv lines.

use crate::cli::Output;
use crate::clock::rfc3339;
use crate::error::{Error, Result};
use crate::exit;
use crate::output::emit;
use crate::settings::{Settings, StateTask};
use crate::state::{self, Entry, Format, StateStore, StateWritten};

/// Runs one state command.
pub(super) async fn cmd_state(s: &Settings, task: &StateTask) -> Result<u8> {
    let store = state::open(&s.store, &s.aws).await?;
    match task {
        StateTask::Get { key } => {
            let entry = store.get(key).await?;
            print_entry(s.output, store.as_ref(), key, entry.as_ref(), None)?;
        }
        StateTask::Write(w) => match store.write(w).await? {
            StateWritten::Done(entry) => {
                let verb = if w.value.is_some() { "stored" } else { "deleted" };
                print_entry(s.output, store.as_ref(), &w.key, Some(&entry), Some(verb))?;
            }
            StateWritten::Refused(why, current) => {
                return Err(state::refused_error(&store.url(), w, &why, current.as_ref()));
            }
        },
    }
    Ok(exit::OK)
}

/// The value as `--output json` shows it: a JSON value as itself, text as a string, and an
/// empty string when there is none, so a script compares without a special case.
fn json_value(entry: Option<&Entry>) -> serde_json::Value {
    match entry.and_then(|e| e.value.as_deref().map(|v| (v, e.format))) {
        None => "".into(),
        Some((v, Format::Json)) => serde_json::from_str(v).unwrap_or_else(|_| v.into()),
        Some((v, Format::Text)) => v.into(),
    }
}

/// Prints what a key holds: after a read (`verb` is `None`) or a write.
fn print_entry(output: Output, store: &dyn StateStore, key: &str, entry: Option<&Entry>, verb: Option<&str>) -> Result<()> {
    let url = store.url();
    let present = entry.is_some_and(|e| e.value.is_some());
    let (version, fence) = entry.map_or((0, 0), |e| (e.version, e.fence));
    match output {
        Output::Env => {
            let value = entry.and_then(|e| e.value.clone()).unwrap_or_default();
            // A line break would end the dotenv line and forge the next one.
            if value.contains(['\n', '\r']) {
                return Err(Error::Usage(format!(
                    "state {key:?} in {url} holds a line break, which a dotenv line cannot carry; use --output json"
                )));
            }
            print!(
                "PIPELINE_LOCK_STATE_KEY={key}\nPIPELINE_LOCK_STATE_VALUE={value}\nPIPELINE_LOCK_STATE_VERSION={version}\nPIPELINE_LOCK_STATE_FENCE={fence}\n"
            );
            Ok(())
        }
        _ => {
            let json = serde_json::json!({
                "key": key,
                "store": url,
                "present": present,
                "value": json_value(entry),
                "format": entry.map(|e| e.format).unwrap_or_default(),
                "version": version,
                "fence": fence,
                "writer": entry.map(|e| e.writer.clone()),
                "written_at": entry.map(|e| rfc3339(e.written_at)),
                "requests": store.requests(),
            });
            let by = entry
                .map(|e| format!("version {version}, fence {fence}, by {} at {}", e.writer, rfc3339(e.written_at)))
                .unwrap_or_default();
            let text = match (verb, entry, present) {
                (Some(verb), _, _) => format!("{verb} state {key:?} in {url}: {by}"),
                (None, None, _) => format!("state {key:?} in {url}: never written (json and env show an empty value, version 0)"),
                (None, Some(_), false) => format!("state {key:?} in {url}: deleted ({by})"),
                (None, Some(e), true) => format!("state {key:?} in {url}: {by}\n{}", e.value.as_deref().unwrap_or_default()),
            };
            emit(output, &text, &json)
        }
    }
}
