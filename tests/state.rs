//! `state get|put|delete` on every store, through the real binary: a stale holder's late
//! write is refused (exit 79) and the new holder's value stays; two writers on one version,
//! exactly one wins; state never shows as a lock; bad input is refused before any request.

mod support;

use std::process::{Command, Output, Stdio};

use support::{Backend, Env, assert_code, stderr};

/// `pipeline-lock state ARGS` as `owner`, with `fence` as the exported PIPELINE_LOCK_FENCE
/// (set on the child, as a job's environment would have it).
fn state_cmd(e: &Env, owner: &str, fence: Option<u64>, args: &[&str]) -> Command {
    let mut c = e.cmd();
    c.args(["--owner", owner, "state"]).args(args);
    if let Some(f) = fence {
        c.env("PIPELINE_LOCK_FENCE", f.to_string());
    }
    c
}

fn state(e: &Env, owner: &str, fence: Option<u64>, args: &[&str]) -> Output {
    state_cmd(e, owner, fence, args).output().unwrap()
}

/// `state get KEY --output json`, which must succeed.
fn get(e: &Env, key: &str) -> serde_json::Value {
    let out = state(e, "reader", None, &["get", key, "--output", "json"]);
    assert_code(&out, 0);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn fence_of(v: &serde_json::Value) -> u64 {
    v["fence"].as_u64().unwrap_or_else(|| panic!("no fence in {v}"))
}

fn a_stale_holder_cannot_overwrite_what_the_new_holder_recorded(b: Backend) {
    let Some(e) = Env::try_new(b, "state-stale") else { return };
    let (lock, key) = (e.lock("deploy"), e.lock("deployed"));
    // The old holder takes the lock with a short lease, then stalls past it.
    let (code, old) = e.json("old", &lock, &["acquire", "--ttl", "1s"]);
    assert_eq!(code, 0, "{old}");
    let (code, new) = e.json(
        "new",
        &lock,
        &["acquire", "--retry-interval", "200ms", "--wait", "30s", "--clock-margin", "200ms"],
    );
    assert_eq!(code, 0, "{new}");
    assert_eq!(new["how"]["kind"], "took-over", "{new}");
    assert!(fence_of(&new) > fence_of(&old));
    assert_code(&state(&e, "new", Some(fence_of(&new)), &["put", &key, "--value", "deployed v2"]), 0);
    // The old holder wakes up and records what it deployed, under its own (stale) fence.
    let late = state(&e, "old", Some(fence_of(&old)), &["put", &key, "--value", "deployed v1"]);
    assert_code(&late, 79);
    assert!(stderr(&late).contains("below the stored fence"), "{}", stderr(&late));
    assert!(stderr(&late).contains(&key), "{}", stderr(&late));
    // ... and cannot delete it either.
    assert_code(&state(&e, "old", Some(fence_of(&old)), &["delete", &key]), 79);
    let now = get(&e, &key);
    assert_eq!(now["value"], "deployed v2", "{now}");
    assert_eq!(now["writer"], "new");
    assert_eq!(fence_of(&now), fence_of(&new));
    assert_eq!(now["version"], 1);
}

fn two_writers_on_one_version_exactly_one_wins(b: Backend) {
    // Two writers that read the same version (0: never written) race with --if-version.
    let Some(e) = Env::try_new(b, "state-race") else { return };
    let key = e.lock("deployed");
    // Round 0 creates the key (If-None-Match: * / attribute_not_exists), the others change it.
    for round in 0..=3u64 {
        let seen = round.to_string();
        let racers: Vec<_> = ["a", "b"]
            .iter()
            .map(|who| {
                let value = format!("{who}{round}");
                state_cmd(&e, who, None, &["put", &key, "--value", &value, "--if-version", &seen])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outs: Vec<Output> = racers.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
        let codes: Vec<_> = outs.iter().map(|o| o.status.code()).collect();
        let winners: Vec<usize> = (0..2).filter(|i| codes[*i] == Some(0)).collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: codes {codes:?}, stderr {:?}",
            outs.iter().map(stderr).collect::<Vec<_>>()
        );
        let loser = 1 - winners[0];
        assert_eq!(codes[loser], Some(79), "round {round}: {}", stderr(&outs[loser]));
        let now = get(&e, &key);
        let winner = ["a", "b"][winners[0]];
        assert_eq!(now["value"], format!("{winner}{round}"), "{now}");
        assert_eq!(now["version"], round + 1);
    }
}

fn an_absent_key_is_exit_0_with_an_empty_value(b: Backend) {
    let Some(e) = Env::try_new(b, "state-absent") else { return };
    let key = e.lock("never");
    let v = get(&e, &key);
    assert_eq!(
        (v["present"].as_bool(), v["value"].as_str(), v["version"].as_u64()),
        (Some(false), Some(""), Some(0)),
        "{v}"
    );
    // One read, and nothing was written by it.
    assert_eq!(v["requests"], 1, "{v}");
    let env = state(&e, "reader", None, &["get", &key, "--output", "env"]);
    assert_code(&env, 0);
    let text = String::from_utf8_lossy(&env.stdout);
    assert!(text.lines().any(|l| l == "PIPELINE_LOCK_STATE_VALUE="), "{text}");
    assert!(text.lines().any(|l| l == "PIPELINE_LOCK_STATE_VERSION=0"), "{text}");
    let human = state(&e, "reader", None, &["get", &key]);
    assert_code(&human, 0);
    assert!(String::from_utf8_lossy(&human.stdout).contains("never written"));
}

fn put_get_and_delete_keep_version_fence_and_writer(b: Backend) {
    let Some(e) = Env::try_new(b, "state-cycle") else { return };
    let key = e.lock("deployed");
    let out = state(
        &e,
        "ci",
        Some(7),
        &["put", &key, "--value", "{\"sha\": \"abc\"}", "--json", "--output", "json"],
    );
    assert_code(&out, 0);
    let put: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The request counts of one put: DynamoDB one UpdateItem; S3 and file a read and a put.
    let most = if matches!(b, Backend::DynamoLocal | Backend::MotoDynamo) { 1 } else { 2 };
    assert_eq!(put["requests"], most, "{put}");
    let v = get(&e, &key);
    assert_eq!(v["value"]["sha"], "abc", "a JSON value comes back as JSON: {v}");
    assert_eq!((v["version"].as_u64(), fence_of(&v), v["writer"].as_str()), (Some(1), 7, Some("ci")));
    assert!(v["written_at"].as_str().is_some_and(|t| t.starts_with("20")), "{v}");
    // A delete is a write too: fenced, and it keeps the fence and counts the version on.
    assert_code(&state(&e, "ci", Some(8), &["delete", &key, "--if-version", "1"]), 0);
    let gone = get(&e, &key);
    assert_eq!((gone["present"].as_bool(), gone["value"].as_str()), (Some(false), Some("")), "{gone}");
    assert_eq!((gone["version"].as_u64(), fence_of(&gone)), (Some(2), 8));
    // A writer of the grant before the delete is still refused.
    assert_code(&state(&e, "late", Some(7), &["put", &key, "--value", "x"]), 79);
    assert_code(&state(&e, "ci", Some(8), &["put", &key, "--value", "again", "--if-version", "1"]), 79);
    assert_code(&state(&e, "ci", Some(8), &["put", &key, "--value", "again", "--if-version", "2"]), 0);
    assert_eq!(get(&e, &key)["value"], "again");
}

fn state_never_shows_as_a_lock_and_never_meets_one(b: Backend) {
    let Some(e) = Env::try_new(b, "state-apart") else { return };
    let name = e.lock("same-name");
    let (code, g) = e.json("holder", &name, &["acquire"]);
    assert_eq!(code, 0, "{g}");
    let before = e.record(&name);
    assert_code(&state(&e, "holder", Some(fence_of(&g)), &["put", &name, "--value", "beside"]), 0);
    assert_eq!(e.record(&name), before, "the lock of the same name is untouched");
    assert_eq!(get(&e, &name)["value"], "beside");
    let (code, list) = e.json("observer", &name, &["list", "--name-prefix", &e.test]);
    assert_eq!(code, 0, "{list}");
    let names: Vec<&str> = list["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["lock"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(names, [name.as_str()], "{list}");
}

fn bad_input_is_refused_before_any_request(b: Backend) {
    let Some(e) = Env::try_new(b, "state-bad") else { return };
    let key = e.lock("k");
    let big = std::env::temp_dir().join(format!("{}-big", e.test));
    std::fs::write(&big, vec![b'x'; 64 * 1024 + 1]).unwrap();
    let big = big.to_string_lossy().into_owned();
    let cases: &[(&[&str], &str)] = &[
        (&["put", &key, "--file", &big], "64 KiB"),
        (&["put", "", "--value", "x"], "empty"),
        (&["get", ""], "empty"),
        (&["put", "a\u{7}b", "--value", "x"], "control character"),
        (&["put", &key, "--value", "{nope", "--json"], "not JSON"),
        (&["put", &key], "--value"),
        (&["put", &key, "--value", "x", "--fence", "minus-one"], "--fence"),
    ];
    for (args, says) in cases {
        let out = state(&e, "w", None, args);
        assert_code(&out, 2);
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    let env = state(&e, "w", Some(1), &["put", &key, "--value", "x"]);
    assert_code(&env, 0);
    assert_eq!(get(&e, &key)["version"], 1, "only the good put was written");
    let _ = std::fs::remove_file(&big);
}

on_every_store!(
    a_stale_holder_cannot_overwrite_what_the_new_holder_recorded,
    two_writers_on_one_version_exactly_one_wins,
    an_absent_key_is_exit_0_with_an_empty_value,
    put_get_and_delete_keep_version_fence_and_writer,
    state_never_shows_as_a_lock_and_never_meets_one,
    bad_input_is_refused_before_any_request,
);
