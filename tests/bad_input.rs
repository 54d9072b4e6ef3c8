//! The bad-input sweep: every command fed malformed flags, names, durations, environment
//! values and stored records. Each case asserts the documented exit code, a message that
//! names the problem, no panic, and a store left as it was. The proptest over record parsing
//! is `record_parsing.rs`. Long for a test file: it is mostly the tables.
//!
//! Rows marked `gap` are known holes, kept visible: they report what happens today and fail
//! once fixed, so the mark gets removed.

mod support;

use std::path::Path;
use std::process::Output;

use support::{Backend, Env, stderr};

const COMMANDS: &[&str] = &["acquire", "release", "renew", "status", "list", "doctor", "run"];

/// One malformed invocation.
struct Case {
    what: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    code: i32,
    /// The message must contain this (the flag, value or rule that was broken).
    needle: String,
    /// A known hole: what should happen does not, yet.
    gap: Option<&'static str>,
    /// Run without the test's PIPELINE_LOCK_STORE.
    no_store_env: bool,
}

fn case(what: impl Into<String>, args: &[&str], code: i32, needle: &str) -> Case {
    Case {
        what: what.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
        code,
        needle: needle.into(),
        gap: None,
        no_store_env: false,
    }
}

/// What each command needs besides the malformed part, so that only that part is wrong.
fn tail(command: &str) -> Vec<&'static str> {
    match command {
        "run" => vec!["--", "true"],
        _ => vec![],
    }
}

fn lock_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".lock") || n.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    )
}

fn flag_cases() -> Vec<Case> {
    let mut v = vec![
        case("no command", &["--lock", "l"], 2, "subcommand"),
        case("unknown command", &["--lock", "l", "frobnicate"], 2, "frobnicate"),
    ];
    for &c in COMMANDS {
        let mut args = vec!["--lock", "l", c, "--bogus"];
        args.extend(tail(c));
        v.push(case(format!("{c}: unknown flag"), &args, 2, "--bogus"));
        v.push(case(
            format!("{c}: --output without a value"),
            &["--lock", "l", c, "--output"],
            2,
            "--output",
        ));
        v.push(case(format!("{c}: --output xml"), &["--lock", "l", c, "--output", "xml"], 2, "xml"));
        v.push(case(
            format!("{c}: --scope planet"),
            &["--lock", "l", c, "--scope", "planet"],
            2,
            "planet",
        ));
        v.push(case(
            format!("{c}: --table with --bucket"),
            &["--lock", "l", c, "--table", "tbl", "--bucket", "bkt"],
            2,
            "--bucket",
        ));
        for (place, mut args) in [
            ("after", vec!["--lock", "l", c, "--prefix", "p"]),
            ("before", vec!["--lock", "l", "--prefix", "p", c]),
        ] {
            args.extend(tail(c));
            let mut without = case(format!("{c}: --prefix without --bucket, {place} the command"), &args, 2, "--bucket");
            without.no_store_env = true;
            v.push(without);
            let with_store = case(
                format!("{c}: --prefix with PIPELINE_LOCK_STORE, {place} the command"),
                &args,
                2,
                "--prefix",
            );
            v.push(with_store);
        }
    }
    // Flags of one command given to another.
    for (c, flag, value) in [
        ("status", "--ttl", "5s"),
        ("list", "--wait", "5s"),
        ("release", "--heartbeat", "1s"),
        ("renew", "--no-wait", ""),
        ("doctor", "--force", ""),
        ("acquire", "--kill-grace", "1s"),
        ("acquire", "--strict", ""),
    ] {
        let mut args = vec!["--lock", "l", c, flag];
        if !value.is_empty() {
            args.push(value);
        }
        v.push(case(format!("{c}: {flag} belongs to another command"), &args, 2, flag));
    }
    v.extend([
        case("run without a command", &["--lock", "l", "run"], 2, "CMD"),
        case("acquire --max-retries -1", &["--lock", "l", "acquire", "--max-retries", "-1"], 2, "-1"),
        case(
            "acquire --max-retries too big",
            &["--lock", "l", "acquire", "--max-retries", "99999999999"],
            2,
            "99999999999",
        ),
        case("acquire --queue lifo", &["--lock", "l", "acquire", "--queue", "lifo"], 2, "lifo"),
        case("acquire --ordinal abc", &["--lock", "l", "acquire", "--ordinal", "abc"], 2, "abc"),
        case("acquire --force without --reason", &["--lock", "l", "acquire", "--force"], 2, "--reason"),
        case("release --force without --reason", &["--lock", "l", "release", "--force"], 2, "--reason"),
        case(
            "acquire --wait with --no-wait",
            &["--lock", "l", "acquire", "--wait", "5s", "--no-wait"],
            2,
            "--no-wait",
        ),
        case(
            "acquire --ttl with --disable-ttl",
            &["--lock", "l", "acquire", "--ttl", "5s", "--disable-ttl"],
            2,
            "--disable-ttl",
        ),
        case(
            "run --heartbeat over half the lease",
            &["--lock", "l", "run", "--ttl", "30s", "--heartbeat", "10s", "--", "true"],
            2,
            "half the lease",
        ),
    ]);
    v
}

fn name_cases() -> Vec<Case> {
    let long = "x".repeat(1025);
    let mut v = Vec::new();
    for &c in COMMANDS.iter().filter(|c| !matches!(**c, "list" | "doctor")) {
        for (what, name, needle) in [
            ("empty", "", "empty"),
            ("1025 bytes", long.as_str(), "1024"),
            ("a bell", "a\u{7}b", "control"),
            ("a newline", "a\nb", "control"),
            ("a tab", "a\tb", "control"),
            ("DEL", "a\u{7f}b", "control"),
        ] {
            let mut args = vec!["--owner", "me", "--lock", name, c];
            args.extend(tail(c));
            v.push(case(format!("{c}: lock name {what}"), &args, 2, needle));
        }
    }
    for &c in COMMANDS {
        for (url, needle) in [
            ("ftp://x", "ftp"),
            ("file://relative/dir", "absolute"),
            ("s3://", "bucket"),
            ("s3://Bad_Bucket", "Bad_Bucket"),
            ("s3://bucket/../up", "prefix"),
            ("dynamodb://", "table"),
            ("dynamodb://a b", "a b"),
            ("no-scheme", "scheme"),
        ] {
            let mut args = vec!["--owner", "me", "--lock", "l", "--store", url, c];
            args.extend(tail(c));
            v.push(case(format!("{c}: store {url}"), &args, 2, needle));
        }
    }
    v
}

fn duration_cases() -> Vec<Case> {
    // (command, flag, may it be zero?)
    let flags: &[(&str, &str, bool)] = &[
        ("acquire", "--ttl", false),
        ("acquire", "--force-after", false),
        ("acquire", "--wait", true),
        ("acquire", "--retry-interval", false),
        ("renew", "--ttl", false),
        ("run", "--ttl", false),
        ("run", "--wait", true),
        ("run", "--retry-interval", false),
        ("run", "--heartbeat", false),
        ("run", "--kill-grace", true),
        ("status", "--clock-margin", true),
        ("acquire", "--clock-margin", true),
    ];
    let mut v = Vec::new();
    for &(c, flag, zero_ok) in flags {
        let mut bad = vec!["banana", "-5", "", "5 parsecs", "1000000000000s", "99999999999999999999", "1h -3m", "NaN"];
        if !zero_ok {
            bad.push("0");
        }
        for value in bad {
            let mut args = vec!["--owner", "me", "--lock", "l", c, flag, value];
            args.extend(tail(c));
            v.push(case(format!("{c} {flag} {value:?}"), &args, 2, flag));
        }
    }
    v
}

fn env_cases() -> Vec<Case> {
    let e = |what: &str, var: &str, value: &str, command: &str, code: i32, needle: &str| {
        let mut args = vec!["--owner".to_string(), "me".into(), "--lock".into(), "l".into(), command.into()];
        args.extend(tail(command).iter().map(|s| s.to_string()));
        Case {
            what: what.into(),
            args,
            env: vec![(var.into(), value.into())],
            code,
            needle: needle.into(),
            gap: None,
            no_store_env: false,
        }
    };
    let mut v = vec![
        e("PIPELINE_LOCK_TTL=banana", "PIPELINE_LOCK_TTL", "banana", "acquire", 2, "--ttl"),
        e("PIPELINE_LOCK_TTL=banana (renew)", "PIPELINE_LOCK_TTL", "banana", "renew", 2, "--ttl"),
        e("PIPELINE_LOCK_TTL=0 (run)", "PIPELINE_LOCK_TTL", "0", "run", 2, "--ttl"),
        e("PIPELINE_LOCK_WAIT=forever", "PIPELINE_LOCK_WAIT", "forever", "acquire", 2, "--wait"),
        e(
            "PIPELINE_LOCK_RETRY_INTERVAL=0",
            "PIPELINE_LOCK_RETRY_INTERVAL",
            "0",
            "acquire",
            2,
            "--retry-interval",
        ),
        e(
            "PIPELINE_LOCK_FORCE_AFTER=soon",
            "PIPELINE_LOCK_FORCE_AFTER",
            "soon",
            "acquire",
            2,
            "--force-after",
        ),
        e(
            "PIPELINE_LOCK_MAX_RETRIES=x",
            "PIPELINE_LOCK_MAX_RETRIES",
            "x",
            "acquire",
            2,
            "--max-retries",
        ),
        e("PIPELINE_LOCK_HEARTBEAT=0", "PIPELINE_LOCK_HEARTBEAT", "0", "run", 2, "--heartbeat"),
        e(
            "PIPELINE_LOCK_KILL_GRACE=soon",
            "PIPELINE_LOCK_KILL_GRACE",
            "soon",
            "run",
            2,
            "--kill-grace",
        ),
        e(
            "PIPELINE_LOCK_CLOCK_MARGIN=x",
            "PIPELINE_LOCK_CLOCK_MARGIN",
            "x",
            "status",
            2,
            "--clock-margin",
        ),
        e("PIPELINE_LOCK_OUTPUT=yaml", "PIPELINE_LOCK_OUTPUT", "yaml", "status", 2, "yaml"),
        e("PIPELINE_LOCK_SCOPE=planet", "PIPELINE_LOCK_SCOPE", "planet", "acquire", 2, "planet"),
        e("PIPELINE_LOCK_QUEUE=lifo", "PIPELINE_LOCK_QUEUE", "lifo", "acquire", 2, "lifo"),
        e("PIPELINE_LOCK_ORDINAL=abc", "PIPELINE_LOCK_ORDINAL", "abc", "acquire", 2, "abc"),
        e("PIPELINE_LOCK_STORE=ftp://x", "PIPELINE_LOCK_STORE", "ftp://x", "status", 2, "ftp"),
    ];
    // The lock name from the environment, for every command that needs one.
    for &c in COMMANDS.iter().filter(|c| !matches!(**c, "list" | "doctor")) {
        let mut args = vec!["--owner".to_string(), "me".into(), c.into()];
        args.extend(tail(c).iter().map(|s| s.to_string()));
        v.push(Case {
            what: format!("{c}: PIPELINE_LOCK_NAME with a tab"),
            args,
            env: vec![("PIPELINE_LOCK_NAME".into(), "a\tb".into())],
            code: 2,
            needle: "control".into(),
            gap: None,
            no_store_env: false,
        });
    }
    // CI detected, but the variables an owner is made of are missing.
    for (ci, var) in [("GITLAB_CI", "CI_PROJECT_PATH"), ("GITHUB_ACTIONS", "GITHUB_REPOSITORY")] {
        v.push(Case {
            what: format!("{ci}=true without {var}"),
            args: vec!["--lock".into(), "l".into(), "acquire".into(), "--no-wait".into()],
            env: vec![(ci.into(), "true".into())],
            code: 2,
            needle: var.into(),
            gap: None,
            no_store_env: false,
        });
    }
    // Owners are written into the record, dotenv outputs and $GITHUB_ENV.
    let huge = "o".repeat(100_000);
    for (what, owner, needle) in [
        ("empty", "", "owner"),
        ("with a newline", "a\nPIPELINE_LOCK_FENCE=999", "control"),
        ("100 kB", huge.as_str(), "owner"),
    ] {
        v.push(Case {
            what: format!("acquire: owner {what}"),
            args: vec!["--lock".into(), "l".into(), "acquire".into(), "--no-wait".into()],
            env: vec![("PIPELINE_LOCK_OWNER".into(), owner.into())],
            code: 2,
            needle: needle.into(),
            gap: None,
            no_store_env: false,
        });
    }
    v
}

/// Runs every case; returns the gap rows' findings. Fails on any other mismatch.
fn sweep(cases: Vec<Case>) -> Vec<String> {
    let e = Env::new(Backend::File, "bad-input");
    let dir = e.dir.clone().unwrap();
    let mut failures = Vec::new();
    let mut gaps = Vec::new();
    for c in cases {
        let mut cmd = e.cmd();
        if !c.args.iter().any(|a| a == "--owner")
            && !c.env.iter().any(|(k, _)| k == "PIPELINE_LOCK_OWNER")
            && !c.env.iter().any(|(k, _)| k.ends_with("_CI") || k == "GITHUB_ACTIONS")
        {
            cmd.args(["--owner", "me"]);
        }
        if c.no_store_env {
            cmd.env_remove("PIPELINE_LOCK_STORE");
        }
        for (k, v) in &c.env {
            cmd.env(k, v);
        }
        let out = cmd.args(&c.args).output().unwrap();
        let err = stderr(&out);
        let problems: Vec<&str> = [
            (out.status.code() != Some(c.code)).then_some("exit code"),
            (!err.contains(c.needle.as_str())).then_some("message"),
            (err.contains("panicked") || out.status.code() == Some(101)).then_some("panic"),
            (!lock_files(&dir).is_empty()).then_some("store touched"),
        ]
        .into_iter()
        .flatten()
        .collect();
        // Undo whatever a gap row wrote, so the next row starts from an empty store.
        for f in lock_files(&dir) {
            let _ = std::fs::remove_file(dir.join(f));
        }
        match (c.gap, problems.is_empty()) {
            (None, true) => {}
            (None, false) => failures.push(format!(
                "{}: {} (wanted exit {} naming {:?})\n{}",
                c.what,
                problems.join(", "),
                c.code,
                c.needle,
                describe(&out)
            )),
            (Some(why), false) => gaps.push(format!("{}: {} ({why})", c.what, problems.join(", "))),
            (Some(_), true) => failures.push(format!("{}: fixed; remove its `gap` mark", c.what)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} bad-input cases failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    gaps
}

#[test]
fn malformed_flags_are_usage_errors() {
    for g in sweep(flag_cases()) {
        eprintln!("known gap: {g}");
    }
}

#[test]
fn malformed_names_and_store_urls_are_usage_errors() {
    sweep(name_cases());
}

#[test]
fn malformed_durations_are_usage_errors() {
    sweep(duration_cases());
}

#[test]
fn malformed_environment_values_are_usage_errors() {
    for g in sweep(env_cases()) {
        eprintln!("known gap: {g}");
    }
}

// ---------------------------------------------------------------------------------------
// Stored records that are not lock records.

/// Bytes planted as a lock's record, and what the message must name.
fn bad_records(lock: &str) -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let valid = |extra: &str| format!(r#"{{"LockID":"{lock}","Fence":3,"Rvn":"r1"{extra}}}"#);
    let mut huge = valid(r#","Pad":""#).into_bytes();
    huge.truncate(huge.len() - 2);
    huge.extend(std::iter::repeat_n(b'x', 1_100_000));
    huge.extend(b"\"}");
    vec![
        ("empty file", Vec::new(), "not a lock record"),
        ("null", b"null".to_vec(), "not a lock record"),
        ("an array", b"[1,2]".to_vec(), "not a lock record"),
        ("truncated JSON", valid("").as_bytes()[..20].to_vec(), "not a lock record"),
        ("non-UTF-8", b"\xff\xfe{\"LockID\"".to_vec(), "not a lock record"),
        (
            "non-UTF-8 inside a string",
            format!(r#"{{"LockID":"{lock}","Fence":3,"Rvn":"r"#)
                .bytes()
                .chain(*b"\xc3\x28\"}")
                .collect(),
            "not a lock record",
        ),
        ("missing Fence", format!(r#"{{"LockID":"{lock}","Rvn":"r1"}}"#).into_bytes(), "Fence"),
        ("missing Rvn", format!(r#"{{"LockID":"{lock}","Fence":3}}"#).into_bytes(), "Rvn"),
        ("missing LockID", br#"{"Fence":3,"Rvn":"r1"}"#.to_vec(), "LockID"),
        ("another lock's record", valid("").replace(lock, "someone-else").into_bytes(), "LockID"),
        ("Fence as a string", valid("").replace("3", "\"3\"").into_bytes(), "invalid type"),
        ("negative Fence", valid("").replace("3", "-3").into_bytes(), "invalid value"),
        ("fractional Fence", valid("").replace("3", "3.5").into_bytes(), "invalid type"),
        (
            "Fence past u64",
            valid("").replace("3", "18446744073709551616").into_bytes(),
            "not a lock record",
        ),
        (
            "Owner as a number",
            valid(r#","Owner":5,"Token":"t","AcquiredAt":1,"RenewedAt":1"#).into_bytes(),
            "invalid type",
        ),
        (
            "Owner without Token",
            valid(r#","Owner":"x","AcquiredAt":1,"RenewedAt":1"#).into_bytes(),
            "Token",
        ),
        ("Token without Owner", valid(r#","Token":"t""#).into_bytes(), "Owner"),
        ("History not a list", valid(r#","History":"yesterday""#).into_bytes(), "invalid type"),
        (
            "History event unknown",
            valid(r#","History":[{"Event":"exploded","Owner":"x","At":1}]"#).into_bytes(),
            "exploded",
        ),
        ("Waiters as a list", valid(r#","Waiters":[1]"#).into_bytes(), "invalid type"),
        ("over 1 MiB", huge, "larger than"),
    ]
}

fn record_commands() -> Vec<(&'static str, Vec<&'static str>, i32)> {
    vec![
        ("status", vec!["status"], 78),
        ("status json", vec!["status", "--output", "json"], 78),
        ("acquire", vec!["acquire", "--no-wait"], 78),
        ("acquire waiting", vec!["acquire", "--wait", "1s", "--retry-interval", "100ms"], 78),
        ("release", vec!["release"], 78),
        ("release --strict", vec!["release", "--strict"], 78),
        ("renew", vec!["renew"], 78),
        ("run", vec!["run", "--no-wait", "--", "true"], 78),
    ]
}

#[test]
fn unreadable_file_records_are_never_free_and_never_touched() {
    let Some(e) = Env::try_new(Backend::File, "bad-record") else { return };
    let dir = e.dir.clone().unwrap();
    let mut failures = Vec::new();
    for (i, (what, bytes, needle)) in bad_records("placeholder").into_iter().enumerate() {
        let lock = format!("rec{i}");
        let bytes = replace_bytes(&bytes, b"placeholder", lock.as_bytes());
        let path = dir.join(format!("{}.lock", pipeline_lock::store::encode_name(&lock)));
        std::fs::write(&path, &bytes).unwrap();
        for (cmd, args, code) in record_commands() {
            let out = e.run("me", &lock, &args);
            let err = stderr(&out);
            let ok = out.status.code() == Some(code)
                && err.contains(&format!("{lock:?}"))
                && err.contains(needle)
                && err.contains("--force")
                && !err.contains("panicked")
                && std::fs::read(&path).unwrap() == bytes;
            if !ok {
                failures.push(format!(
                    "{what} / {cmd}: wanted exit {code} naming {needle:?}, the lock and the break-glass command, record untouched\n{}",
                    describe(&out)
                ));
            }
        }
        // `list` shows it as unreadable rather than failing the whole listing.
        let out = e.cmd().args(["list"]).output().unwrap();
        if out.status.code() != Some(0) || !String::from_utf8_lossy(&out.stdout).contains("UNREADABLE") || std::fs::read(&path).unwrap() != bytes {
            failures.push(format!("{what} / list: wanted exit 0 with an UNREADABLE line\n{}", describe(&out)));
        }
        std::fs::remove_file(&path).unwrap();
    }
    assert!(failures.is_empty(), "{} cases failed:\n\n{}", failures.len(), failures.join("\n\n"));
}

fn replace_bytes(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// The break-glass path the messages point to works, and keeps the fence from going back.
#[test]
fn break_glass_clears_an_unreadable_record_and_keeps_its_fence() {
    let Some(e) = Env::try_new(Backend::File, "bad-record-clear") else {
        return;
    };
    let lock = e.lock("l");
    let path = e.dir.as_ref().unwrap().join(format!("{}.lock", pipeline_lock::store::encode_name(&lock)));
    std::fs::write(&path, format!(r#"{{"LockID":"{lock}","Fence":41,"Rvn":"r","Owner":"x"}}"#)).unwrap();
    let out = e.run("me", &lock, &["release", "--force", "--reason", "bad-input test"]);
    support::assert_code(&out, 0);
    let (code, g) = e.json("me", &lock, &["acquire", "--no-wait"]);
    assert_eq!(code, 0, "{g}");
    assert_eq!(g["fence"], 42, "{g}");
}

/// DynamoDB items of the wrong shape, planted with the SDK: never free, never touched.
#[test]
fn unreadable_dynamodb_items_are_never_free_and_never_touched() {
    use aws_sdk_dynamodb::types::AttributeValue as A;
    let Some(e) = Env::try_new(Backend::DynamoLocal, "bad-item") else {
        return;
    };
    let client = support::dynamo_client(e.endpoint.as_ref().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let s = |v: &str| A::S(v.into());
    let n = |v: &str| A::N(v.into());
    const FRACTION: &str = "a DynamoDB condition cannot test a number for being whole, so the blind grant writes over a \
                            fractional Fence (3.5 becomes 4.5, Owner set), then exits 78 \"reads back unparseable\" holding the lock";
    type Row<'a> = (&'a str, Vec<(&'a str, A)>, &'a str, Option<&'a str>);
    let items: Vec<Row> = vec![
        ("Fence as a string", vec![("Fence", s("3")), ("Rvn", s("r"))], "Fence", None),
        ("negative Fence", vec![("Fence", n("-3")), ("Rvn", s("r"))], "Fence", None),
        ("fractional Fence", vec![("Fence", n("3.5")), ("Rvn", s("r"))], "Fence", Some(FRACTION)),
        ("missing Fence", vec![("Rvn", s("r"))], "Fence", None),
        ("missing Rvn", vec![("Fence", n("3"))], "Rvn", None),
        (
            "Owner as binary",
            vec![("Fence", n("3")), ("Rvn", s("r")), ("Owner", A::B(vec![0xff, 0xfe].into()))],
            "Owner",
            None,
        ),
        (
            "Owner without Token",
            vec![
                ("Fence", n("3")),
                ("Rvn", s("r")),
                ("Owner", s("x")),
                ("AcquiredAt", n("1")),
                ("RenewedAt", n("1")),
            ],
            "Token",
            None,
        ),
        (
            // The commands run as "me": the Owner matches, so only the item's shape refuses them.
            "our own Owner, no Rvn",
            vec![
                ("Fence", n("3")),
                ("Owner", s("me")),
                ("Token", s("t")),
                ("AcquiredAt", n("1")),
                ("RenewedAt", n("1")),
            ],
            "Rvn",
            None,
        ),
        (
            "History as a string",
            vec![("Fence", n("3")), ("Rvn", s("r")), ("History", s("yesterday"))],
            "History",
            None,
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, attrs, needle, gap)) in items.into_iter().enumerate() {
        let lock = e.lock(&format!("item{i}"));
        let mut item: std::collections::HashMap<String, A> = attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        item.insert("LockID".into(), s(&lock));
        let mut problems = Vec::new();
        for (cmd, args, code) in record_commands() {
            // Planted afresh for each command: a gap row may have been written over.
            rt.block_on(client.put_item().table_name(support::TABLE).set_item(Some(item.clone())).send())
                .unwrap();
            let out = e.run("me", &lock, &args);
            let err = stderr(&out);
            let now = rt
                .block_on(
                    client
                        .get_item()
                        .table_name(support::TABLE)
                        .key("LockID", s(&lock))
                        .consistent_read(true)
                        .send(),
                )
                .unwrap()
                .item
                .unwrap_or_default();
            let found: Vec<&str> = [
                (out.status.code() != Some(code)).then_some("exit code"),
                (!err.contains(&format!("{lock:?}"))).then_some("lock not named"),
                (!err.contains(needle)).then_some("attribute not named"),
                err.contains("panicked").then_some("panic"),
                (now != item).then_some("item touched"),
            ]
            .into_iter()
            .flatten()
            .collect();
            if !found.is_empty() {
                problems.push(format!("{cmd}: {}\n{}", found.join(", "), describe(&out)));
            }
        }
        match (gap, problems.is_empty()) {
            (None, true) => {}
            (None, false) => failures.push(format!(
                "{what} (wanted exit 78 naming {needle:?} and the lock, item untouched):\n{}",
                problems.join("\n")
            )),
            (Some(why), false) => {
                eprintln!("known gap: {what}: {} commands ({why})", problems.len())
            }
            (Some(_), true) => failures.push(format!("{what}: fixed; remove its `gap` mark")),
        }
    }
    assert!(failures.is_empty(), "{} cases failed:\n\n{}", failures.len(), failures.join("\n\n"));
}

/// S3 objects that are not lock records (the S3 store reads the file store's format).
#[test]
fn unreadable_s3_objects_are_never_free_and_never_touched() {
    let Some(e) = Env::try_new(Backend::MotoS3, "bad-object") else { return };
    let client = support::s3_client(e.endpoint.as_ref().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut failures = Vec::new();
    // A few of the file cases: S3 shares the parser, so these cover the S3 read path.
    let wanted = ["truncated JSON", "non-UTF-8", "missing Fence", "Owner without Token", "over 1 MiB"];
    for (i, (what, bytes, needle)) in bad_records("placeholder").into_iter().filter(|(w, ..)| wanted.contains(w)).enumerate() {
        let lock = e.lock(&format!("obj{i}"));
        let bytes = replace_bytes(&bytes, b"placeholder", lock.as_bytes());
        let key = format!("{}/{}.lock", e.test, pipeline_lock::store::encode_name(&lock));
        rt.block_on(client.put_object().bucket(support::BUCKET).key(&key).body(bytes.clone().into()).send())
            .unwrap();
        for (cmd, args, code) in record_commands()
            .into_iter()
            .filter(|(c, ..)| ["status", "acquire", "release", "renew"].contains(c))
        {
            let out = e.run("me", &lock, &args);
            let err = stderr(&out);
            let now = rt.block_on(async {
                client
                    .get_object()
                    .bucket(support::BUCKET)
                    .key(&key)
                    .send()
                    .await
                    .unwrap()
                    .body
                    .collect()
                    .await
                    .unwrap()
                    .into_bytes()
            });
            let ok = out.status.code() == Some(code)
                && err.contains(&format!("{lock:?}"))
                && err.contains(needle)
                && !err.contains("panicked")
                && now.as_ref() == bytes.as_slice();
            if !ok {
                failures.push(format!(
                    "{what} / {cmd}: wanted exit {code} naming {needle:?} and the lock, object untouched\n{}",
                    describe(&out)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{} cases failed:\n\n{}", failures.len(), failures.join("\n\n"));
}
