//! `doctor` for an S3 bucket: the checks an operator wants before pipelines rely on it. The
//! one that matters most: some S3-compatible servers accept `If-None-Match`/`If-Match` and
//! ignore them, and a lock on such a store is no lock at all.

use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use super::{Answer, DOCTOR_SCRATCH, S3Bucket, classify, list_prefix};
use crate::store::aws::{Failure, Kind};
use crate::store::whole::Objects;
use crate::store::{Check, Outcome};

/// An ETag no object has: S3 ETags are quoted MD5s (or MD5-N for multipart uploads).
const WRONG_ETAG: &str = "\"00000000000000000000000000000000\"";

/// How S3 answered a request, normalised: the classification of a service error, if any.
fn answer<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Option<Answer> {
    match err {
        SdkError::ServiceError(se) => Some(classify(se.raw().status().as_u16(), se.err().code().unwrap_or_default())),
        _ => None,
    }
}

pub(super) async fn run(store: &S3Bucket) -> Vec<Check> {
    let mut checks = Vec::new();
    let client = &store.client;
    let bucket = &store.bucket;

    match client.head_bucket().bucket(bucket).send().await {
        Ok(out) => {
            let region = out.bucket_region().unwrap_or(&store.region);
            checks.push(Check::new(
                "bucket exists",
                Outcome::Pass,
                format!("{bucket} is reachable (region {region})"),
            ));
        }
        Err(e) => {
            let err = match &e {
                // HEAD answers have no body, so only the status tells what went wrong.
                SdkError::ServiceError(se) if se.err().code().is_none() => {
                    let status = se.raw().status().as_u16();
                    let code = match status {
                        404 => "NoSuchBucket",
                        403 => "AccessDenied",
                        301 => "PermanentRedirect",
                        _ => "Unknown",
                    };
                    let bucket_region = se.raw().headers().get("x-amz-bucket-region").map(str::to_string);
                    let message = format!("HeadBucket answered {status} without a body");
                    store.map_failure(
                        Failure {
                            kind: Kind::Service {
                                code: code.into(),
                                status,
                                message,
                            },
                            source: Some(Box::new(e)),
                        },
                        bucket_region,
                        "s3:ListBucket",
                        "",
                    )
                }
                _ => store.error(e, "s3:ListBucket", ""),
            };
            checks.push(Check::new("bucket exists", Outcome::Fail, err.to_string()));
            return checks;
        }
    }

    let prefix = list_prefix(&store.prefix);
    checks.push(match client.list_objects_v2().bucket(bucket).prefix(&prefix).max_keys(1).send().await {
        Ok(_) => Check::new("permission ListBucket", Outcome::Pass, format!("listed {prefix:?}")),
        Err(e) => Check::new(
            "permission ListBucket",
            Outcome::Warn,
            format!(
                "{}; only `list` needs it, acquire/release/renew do not",
                store.error(e, "s3:ListBucket", &prefix)
            ),
        ),
    });

    checks.extend(conditional_writes(store).await);
    checks
}

/// Writes a scratch object, proves that conditional headers are enforced, and deletes it. One
/// long function on purpose: the steps run in order on one object, each stopping the rest
/// when it fails, and read top to bottom as the operator's checklist.
async fn conditional_writes(store: &S3Bucket) -> Vec<Check> {
    let client = &store.client;
    let bucket = &store.bucket;
    // `list` skips these; the random part keeps it clear of any real lock.
    let key = format!("{}{DOCTOR_SCRATCH}{:016x}.lock", list_prefix(&store.prefix), rand::random::<u64>());
    let body = |n: &str| ByteStream::from(format!("{{\"Doctor\":\"{n}\",\"At\":{}}}", store.clock().now_ms()).into_bytes());
    let mut checks = Vec::new();

    let first = client
        .put_object()
        .bucket(bucket)
        .key(&key)
        .if_none_match("*")
        .body(body("first"))
        .send()
        .await;
    let first_etag = match first {
        Ok(out) => {
            checks.push(Check::new("permission PutObject", Outcome::Pass, format!("created scratch object {key}")));
            out.e_tag().map(str::to_string)
        }
        Err(e) => {
            checks.push(Check::new(
                "permission PutObject",
                Outcome::Fail,
                store.error(e, "s3:PutObject", &key).to_string(),
            ));
            return checks;
        }
    };

    let name = "create-only write refused when the object exists";
    let second = client
        .put_object()
        .bucket(bucket)
        .key(&key)
        .if_none_match("*")
        .body(body("second"))
        .send()
        .await;
    checks.push(match second {
        Err(e) if answer(&e) == Some(Answer::Changed) => Check::new(name, Outcome::Pass, "412 PreconditionFailed"),
        Err(e) if answer(&e) == Some(Answer::Concurrent) => Check::new(name, Outcome::Pass, "409 ConditionalRequestConflict"),
        Err(e) => Check::new(
            name,
            Outcome::Fail,
            format!(
                "the second create-only PutObject failed for another reason: {}",
                store.error(e, "s3:PutObject", &key)
            ),
        ),
        Ok(_) => Check::new(
            name,
            Outcome::Fail,
            format!(
                "{} accepted a second PutObject with If-None-Match: * on an existing object: it ignores conditional \
             writes, so a lock there is no lock. Use AWS S3 or a store that honours If-None-Match/If-Match, or the DynamoDB store",
                store.url()
            ),
        ),
    });

    let name = "write with a wrong ETag refused";
    let wrong = client
        .put_object()
        .bucket(bucket)
        .key(&key)
        .if_match(WRONG_ETAG)
        .body(body("wrong-etag"))
        .send()
        .await;
    checks.push(match wrong {
        Err(e) if answer(&e) == Some(Answer::Changed) => Check::new(name, Outcome::Pass, "412 PreconditionFailed"),
        Err(e) => Check::new(
            name,
            Outcome::Fail,
            format!(
                "PutObject with If-Match: <wrong ETag> failed for another reason: {}",
                store.error(e, "s3:PutObject", &key)
            ),
        ),
        Ok(_) => Check::new(
            name,
            Outcome::Fail,
            format!(
                "{} accepted a PutObject whose If-Match ETag was wrong: it ignores conditional writes, so a lock there \
             is no lock. Use AWS S3 or a store that honours If-None-Match/If-Match, or the DynamoDB store",
                store.url()
            ),
        ),
    });

    let etag = match client.get_object().bucket(bucket).key(&key).send().await {
        Ok(out) => {
            let etag = out.e_tag().map(str::to_string);
            checks.push(match &etag {
                Some(_) => Check::new("permission GetObject", Outcome::Pass, "read the scratch object back"),
                None => Check::new(
                    "permission GetObject",
                    Outcome::Fail,
                    "GetObject returned no ETag: writes cannot be based on a read here",
                ),
            });
            etag
        }
        Err(e) => {
            checks.push(Check::new(
                "permission GetObject",
                Outcome::Fail,
                store.error(e, "s3:GetObject", &key).to_string(),
            ));
            first_etag
        }
    };

    // Only ever the scratch object we created, and only the version we read: nothing the tool
    // did not write is removed. (`If-Match: *` is no substitute: some servers compare it literally.)
    let mut delete = client.delete_object().bucket(bucket).key(&key);
    if let Some(etag) = &etag {
        delete = delete.if_match(etag);
    }
    checks.push(match delete.send().await {
        Ok(_) => Check::new("permission DeleteObject", Outcome::Pass, "scratch object removed"),
        Err(e) => Check::new(
            "permission DeleteObject",
            Outcome::Fail,
            format!(
                "{} (scratch object {key} left behind; delete it by hand)",
                store.error(e, "s3:DeleteObject", &key)
            ),
        ),
    });
    checks
}
