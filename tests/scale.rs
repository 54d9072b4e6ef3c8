//! At scale (issue 16): `list` over a store seeded with 20,000 lock records streams them
//! within a memory bound (the child's peak RSS, from `wait4`), its filters count what was
//! seeded, and paging with `--limit`/`--after` visits every record exactly once. On the file
//! store and DynamoDB Local (skipped without its server). `PIPELINE_LOCK_TEST_SCALE_RECORDS`
//! sets the number of records: 20,000 by default (the size); more (100000) for the
//! figures, fewer to try something quickly.
mod support;

use std::collections::BTreeSet;
use std::io::BufRead;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Backend, Env, assert_code};

/// The peak RSS `list` must stay under, whatever the number of records.
const RSS_LIMIT_KB: u64 = 64 * 1024;

fn records() -> usize {
    std::env::var("PIPELINE_LOCK_TEST_SCALE_RECORDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000)
}

/// What record `i` is seeded as.
#[derive(Debug, Clone, Copy)]
struct Kind {
    held: bool,
    old: bool,
    waiting: bool,
}

fn kind(i: usize) -> Kind {
    let held = !i.is_multiple_of(4);
    Kind {
        held,
        old: held && i.is_multiple_of(5),
        waiting: held && i.is_multiple_of(7),
    }
}

fn name(test: &str, i: usize) -> String {
    format!("{test}/p{}/{i:06}", i % 2)
}

/// Real records to copy: one held and one free, made by the binary on a scratch file store.
fn templates() -> (Value, Value) {
    let scratch = Env::new(Backend::File, "scale-template");
    let lock = scratch.lock("t");
    let read = |lock: &str| -> Value {
        let dir = scratch.dir.as_ref().unwrap();
        let file = dir.join(format!("{}.lock", pipeline_lock::store::encode_name(lock)));
        serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap()
    };
    assert_code(&scratch.run("holder", &lock, &["acquire"]), 0);
    let held = read(&lock);
    let free_lock = scratch.lock("f");
    assert_code(&scratch.run("holder", &free_lock, &["acquire"]), 0);
    assert_code(&scratch.run("holder", &free_lock, &["release"]), 0);
    let free = read(&free_lock);
    let _ = std::fs::remove_dir_all(scratch.dir.as_ref().unwrap());
    (held, free)
}

/// Record `i` as JSON.
fn record(test: &str, i: usize, held: &Value, free: &Value) -> Value {
    let k = kind(i);
    let mut r = if k.held { held.clone() } else { free.clone() };
    r["LockID"] = json!(name(test, i));
    let now = r["RenewedAt"].as_i64().or(r["History"][0]["At"].as_i64()).unwrap();
    if k.old {
        r["AcquiredAt"] = json!(now - 2 * 3600 * 1000);
    }
    if k.waiting {
        r["Waiters"] = json!({format!("w{i:06}"): {"Owner": "waiter", "EnqueuedAt": now, "SeenAt": now}});
    }
    r
}

/// What one `list` run printed and cost.
struct Run {
    lines: Vec<String>,
    /// The child's VmHWM, read from /proc while it runs (the last reading before it exits).
    peak_rss_kb: u64,
    /// `wait4`'s `ru_maxrss`: an upper bound, since on Linux it also counts the memory of
    /// this test process that the fork copied before the exec.
    rusage_kb: u64,
    first_line: Option<Duration>,
    first_line_while_running: bool,
    total: Duration,
}

/// Runs `list ARGS`, reading its output as it comes; the peak RSS is the child's own
/// (`wait4`'s rusage), so nothing else this test process runs counts.
#[expect(clippy::zombie_processes, reason = "wait4 reaps it, for its rusage")]
fn list(e: &Env, args: &[&str]) -> Run {
    let start = Instant::now();
    let mut child = e
        .cmd()
        .arg("list")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let stdout = child.stdout.take().unwrap();
    let (mut lines, mut first_line, mut first_line_while_running) = (Vec::new(), None, false);
    let mut hwm = 0;
    let sample = |hwm: &mut u64| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
        *hwm = (*hwm).max(kb.unwrap_or(0));
    };
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if lines.len() % 100 == 0 {
            sample(&mut hwm);
        }
        if first_line.is_none() {
            first_line = Some(start.elapsed());
            // Still running (not a zombie) when its first lines arrived: printed as it went.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            first_line_while_running = stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z'));
        }
        lines.push(line);
    }
    sample(&mut hwm);
    let mut status = 0;
    // SAFETY: plain libc call on our own child's pid, with valid out-pointers.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "list {args:?} exited with {status}"
    );
    Run {
        lines,
        peak_rss_kb: hwm,
        rusage_kb: usage.ru_maxrss as u64,
        first_line,
        first_line_while_running,
        total: start.elapsed(),
    }
}

/// The lock names of a text listing.
fn names(run: &Run) -> Vec<String> {
    run.lines.iter().filter_map(|l| l.split_once('\t').map(|(n, _)| n.to_string())).collect()
}

/// The lock names of a JSON listing, read line by line (one lock a line), after checking
/// that the whole is one JSON document; and its `next`.
fn json_page(run: &Run) -> (Vec<String>, Option<String>) {
    let doc: Value = serde_json::from_str(&run.lines.join("\n")).expect("list --output json is one JSON document");
    let locks = doc["locks"].as_array().unwrap();
    assert_eq!(doc["count"].as_u64(), Some(locks.len() as u64));
    let names = locks.iter().map(|l| l["lock"].as_str().unwrap().to_string()).collect();
    (names, doc["next"].as_str().map(str::to_string))
}

fn scale(e: &Env, n: usize) {
    let test = &e.test;
    let all: BTreeSet<String> = (0..n).map(|i| name(test, i)).collect();
    let count = |f: &dyn Fn(usize, Kind) -> bool| (0..n).filter(|&i| f(i, kind(i))).count();

    // Streams, within the bound: every record, as JSON, parsed line by line.
    let full = list(e, &["--output", "json"]);
    let mut seen = BTreeSet::new();
    for line in &full.lines[1..full.lines.len() - 1] {
        let lock: Value = serde_json::from_str(line.trim_end_matches(',')).expect("one lock a line");
        assert!(seen.insert(lock["lock"].as_str().unwrap().to_string()), "listed twice: {line}");
    }
    assert_eq!(seen, all, "{}: list shows every record once", e.store);
    eprintln!(
        "{}: list --output json of {n} records: {} lines in {:.2?}, first at {:.2?}, peak RSS {} KB (VmHWM; rusage bound {} KB)",
        e.backend.name(),
        full.lines.len(),
        full.total,
        full.first_line.unwrap(),
        full.peak_rss_kb,
        full.rusage_kb
    );
    assert!(full.first_line_while_running, "the first records came before list ended");
    assert!(full.peak_rss_kb < RSS_LIMIT_KB, "peak RSS {} KB >= {RSS_LIMIT_KB} KB", full.peak_rss_kb);

    // The filters.
    let p1 = format!("{test}/p1/");
    let p0 = format!("{test}/p0/");
    for (args, want) in [
        (vec!["--held"], count(&|_, k| k.held)),
        (vec!["--waiting"], count(&|_, k| k.waiting)),
        (vec!["--older-than", "1h"], count(&|_, k| k.old)),
        (vec!["--name-prefix", p1.as_str()], count(&|i, _| i % 2 == 1)),
        (
            vec!["--name-prefix", p1.as_str(), "--held", "--waiting"],
            count(&|i, k| i % 2 == 1 && k.waiting),
        ),
    ] {
        let run = list(e, &args);
        assert!(run.peak_rss_kb < RSS_LIMIT_KB, "list {args:?}: peak RSS {} KB", run.peak_rss_kb);
        let got = names(&run);
        assert_eq!(got.len(), want, "list {args:?}");
        assert_eq!(got.iter().collect::<BTreeSet<_>>().len(), want, "list {args:?}: each once");
        eprintln!(
            "{}: list {args:?}: {want} in {:.2?}, peak RSS {} KB",
            e.backend.name(),
            run.total,
            run.peak_rss_kb
        );
    }

    // Paging visits every record exactly once: with no filter, and with a filter that makes
    // pages stop in the middle of the store's pages.
    for (filter, want) in [
        (vec![], all.clone()),
        (
            // Half of p0 is held: pages stop inside the store's pages, after rejected records.
            vec!["--name-prefix", p0.as_str(), "--held"],
            (0..n).filter(|&i| i % 2 == 0 && kind(i).held).map(|i| name(test, i)).collect(),
        ),
    ] {
        let limit = (want.len() / 7).max(1).to_string();
        let (mut paged, mut after, mut pages) = (Vec::new(), None::<String>, 0);
        loop {
            let mut args = filter.clone();
            args.extend(["--output", "json", "--limit", limit.as_str()]);
            if let Some(a) = &after {
                args.extend(["--after", a.as_str()]);
            }
            let (names, next) = json_page(&list(e, &args));
            pages += 1;
            paged.extend(names);
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
            assert!(pages < 100, "paging does not end");
        }
        let unique: BTreeSet<String> = paged.iter().cloned().collect();
        assert_eq!(unique.len(), paged.len(), "paging {filter:?} showed a record twice");
        assert_eq!(unique, want, "paging {filter:?} showed every record");
        eprintln!(
            "{}: paging {filter:?} by {limit}: {} records in {pages} pages",
            e.backend.name(),
            paged.len()
        );
    }
}

#[test]
fn list_streams_filters_and_pages_many_records_on_the_file_store() {
    let e = Env::new(Backend::File, "scale");
    let (held, free) = templates();
    let n = records();
    let dir = e.dir.clone().unwrap();
    let started = Instant::now();
    for i in 0..n {
        let r = record(&e.test, i, &held, &free);
        let path = dir.join(format!("{}.lock", pipeline_lock::store::encode_name(&name(&e.test, i))));
        std::fs::write(path, serde_json::to_vec(&r).unwrap()).unwrap();
    }
    eprintln!("file: seeded {n} records in {:.2?}", started.elapsed());
    scale(&e, n);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn list_streams_filters_and_pages_many_records_on_dynamodb_local() {
    let Some(mut e) = Env::try_new(Backend::DynamoLocal, "scale") else {
        return;
    };
    let endpoint = e.endpoint.clone().unwrap();
    // A table of its own, so the counts are exactly what was seeded.
    let table = format!("scale-{:08x}", rand::random::<u32>());
    support::ensure_table(&endpoint, &table);
    e.store = format!("dynamodb://{table}");
    let (held, free) = templates();
    let n = records();
    let client = support::dynamo_client(&endpoint);
    let started = Instant::now();
    let items: Vec<_> = (0..n)
        .map(|i| {
            serde_dynamo::to_item::<_, std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>>(record(&e.test, i, &held, &free))
        })
        .collect::<Result<_, _>>()
        .unwrap();
    seed(&client, &table, items);
    eprintln!("dynamodb-local: seeded {n} records in {:.2?}", started.elapsed());
    scale(&e, n);
    let _ = support::runtime().block_on(client.delete_table().table_name(&table).send());
}

/// BatchWriteItem, 25 items a batch, 8 batches at a time, unprocessed items sent again.
fn seed(client: &aws_sdk_dynamodb::Client, table: &str, items: Vec<std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>>) {
    use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
    let batches: Vec<Vec<WriteRequest>> = items
        .chunks(25)
        .map(|chunk| {
            (chunk.iter())
                .map(|item| {
                    let put = PutRequest::builder().set_item(Some(item.clone())).build().unwrap();
                    WriteRequest::builder().put_request(put).build()
                })
                .collect()
        })
        .collect();
    support::runtime().block_on(async {
        let mut batches = batches.into_iter();
        let mut running = tokio::task::JoinSet::new();
        loop {
            while running.len() < 8 {
                let Some(batch) = batches.next() else { break };
                let (client, table) = (client.clone(), table.to_string());
                running.spawn(async move {
                    let mut batch = batch;
                    for _ in 0..20 {
                        let out = (client.batch_write_item().request_items(&table, batch.clone()).send().await).expect("BatchWriteItem");
                        match out.unprocessed_items().and_then(|u| u.get(&table)) {
                            Some(left) if !left.is_empty() => batch = left.clone(),
                            _ => return,
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    panic!("BatchWriteItem left items unprocessed 20 times");
                });
            }
            match running.join_next().await {
                Some(done) => done.unwrap(),
                None => break,
            }
        }
    });
}
