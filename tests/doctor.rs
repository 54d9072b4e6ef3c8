//! `doctor` passes on stores that honour conditional writes and fails, clearly, on one that
//! ignores them (s3rver): a lock there would silently be no lock at all.

mod support;

use support::{Backend, Env, assert_code, stderr};

fn passes(b: Backend) {
    let Some(e) = Env::try_new(b, "doctor") else { return };
    let out = e.cmd().arg("doctor").output().unwrap();
    assert_code(&out, 0);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("FAIL"), "{text}");
    let conditional = text.lines().filter(|l| l.contains("refused") || l.contains("conditional writes")).count();
    assert!(conditional >= 1, "no conditional-write check in:\n{text}");
    for line in text.lines() {
        assert!(line.starts_with("PASS") || line.starts_with("WARN"), "{line}");
    }
    // It cleaned up after itself: no scratch record is listed.
    let list = e.cmd().arg("list").output().unwrap();
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains("pipeline-lock-doctor"),
        "{}",
        String::from_utf8_lossy(&list.stdout)
    );
}

on_every_store!(passes);

#[test]
fn fails_on_a_store_that_ignores_conditions() {
    let Ok(endpoint) = std::env::var("PIPELINE_LOCK_TEST_S3RVER") else {
        return support::skip("PIPELINE_LOCK_TEST_S3RVER is not set, so there is no s3rver");
    };
    let Some(e) = Env::try_new(Backend::File, "doctor-s3rver") else { return };
    let out = e
        .cmd()
        .env("PIPELINE_LOCK_STORE", "s3://doctor-test/ci")
        .env("PIPELINE_LOCK_ENDPOINT_URL", &endpoint)
        .env("PIPELINE_LOCK_S3_FORCE_PATH_STYLE", "true")
        // s3rver's fixed credentials.
        .env("AWS_ACCESS_KEY_ID", "S3RVER")
        .env("AWS_SECRET_ACCESS_KEY", "S3RVER")
        .arg("doctor")
        .output()
        .unwrap();
    assert_code(&out, 78);
    let text = String::from_utf8_lossy(&out.stdout);
    let fails: Vec<_> = text.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(fails.len(), 2, "{text}");
    assert!(fails.iter().all(|l| l.contains("no lock")), "{text}");
    assert!(stderr(&out).contains("doctor"), "{}", stderr(&out));
}

#[test]
fn missing_table_fails_with_the_fix() {
    let Some(e) = Env::try_new(Backend::DynamoLocal, "doctor-no-table") else {
        return;
    };
    let out = e
        .cmd()
        .env("PIPELINE_LOCK_STORE", "dynamodb://no-such-table-doctor")
        .arg("doctor")
        .output()
        .unwrap();
    assert_code(&out, 78);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL") && text.contains("create-table"), "{text}");
}
