//! The S3 store: one JSON object per lock, `PREFIX/NAME.lock`, the same bytes the file store
//! writes. S3 rewrites whole objects, so the record logic is the whole-record engine's
//! ([`super::whole`]); this file holds its object primitives and S3's answers. The
//! compare-and-set is a conditional PutObject: `If-None-Match: *` to create, `If-Match: ETAG`
//! (the ETag the decision was based on) for every later change. Every record carries a fresh
//! random `Rvn`, so two different writes never share a body, and so never an ETag.

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use super::aws::{self, AwsOptions, Failure, Kind, Meter};
use super::whole::{MAX_RECORD_BYTES, Object, ObjectPage, Objects, PutMode, PutOutcome, Whole};
use super::{Check, Store, decode_name, encode_name};

mod doctor;
mod state;
use crate::clock::StoreClock;
use crate::error::{Error, Result};
pub(crate) use state::state_object_key;

const SUFFIX: &str = ".lock";

/// How many object reads one page of `list` runs at once.
const READS_IN_FLIGHT: usize = 16;

/// How `doctor`'s scratch object names start; `list` skips them (their random tail keeps them
/// clear of real locks).
pub(crate) const DOCTOR_SCRATCH: &str = ".pipeline-lock-doctor-";

/// Locks under one prefix of one S3 bucket.
pub type S3Store = Whole<S3Bucket>;

/// The S3 store's object primitives: the lock objects under one prefix of one bucket.
#[derive(Debug, Clone)]
pub struct S3Bucket {
    client: Client,
    bucket: String,
    prefix: String,
    region: String,
    meter: Meter,
}

/// S3's version of a record: the object's ETag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Etag(String);

/// What an S3 error answer means for us, decided once from its HTTP status and error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The condition was false: someone else created or changed the object.
    Changed,
    /// Another conditional write to the same key was in flight: retry on a fresh read.
    Concurrent,
    /// No such object (on a read: absent; on `If-Match`: deleted meanwhile).
    Gone,
    /// The bucket does not exist.
    NoBucket,
    /// The bucket lives in another region than the one we sign for.
    WrongRegion,
    /// Anything else: access, throttling, outages; mapped by [`Failure::into_error`].
    Other,
}

/// Classifies an S3 error answer. Codes first: a missing bucket is also a 404.
pub(crate) fn classify(status: u16, code: &str) -> Answer {
    match code {
        "NoSuchBucket" => return Answer::NoBucket,
        // S3 answers 301 (PermanentRedirect) or 400 (AuthorizationHeaderMalformed: "the region
        // 'x' is wrong; expecting 'y'") to requests signed for the wrong region.
        "PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException" => return Answer::WrongRegion,
        "PreconditionFailed" => return Answer::Changed,
        // S3 answers 409 when two conditional writes to one key overlap; it is not "held".
        "ConditionalRequestConflict" | "OperationAborted" => return Answer::Concurrent,
        "NoSuchKey" => return Answer::Gone,
        _ => {}
    }
    match status {
        // HEAD answers carry no error body, so only the status tells.
        301 | 307 => Answer::WrongRegion,
        412 => Answer::Changed,
        409 => Answer::Concurrent,
        404 => Answer::Gone,
        _ => Answer::Other,
    }
}

/// The object key of a lock: `PREFIX/ENCODED.lock`, or `ENCODED.lock` at the bucket root.
/// The name is encoded, so it cannot contain `/` and cannot climb out of the prefix.
pub(crate) fn object_key(prefix: &str, lock: &str) -> String {
    format!("{}{}{SUFFIX}", list_prefix(prefix), encode_name(lock))
}

/// The key prefix that every lock object of this store starts with.
pub(crate) fn list_prefix(prefix: &str) -> String {
    if prefix.is_empty() { String::new() } else { format!("{prefix}/") }
}

/// The lock name of a listed key, `None` for keys that are not lock objects of this prefix
/// (deeper prefixes, doctor scratch objects, foreign files).
pub(crate) fn lock_name(prefix: &str, key: &str) -> Option<String> {
    let encoded = key.strip_prefix(&list_prefix(prefix))?.strip_suffix(SUFFIX)?;
    if encoded.is_empty() || encoded.starts_with(DOCTOR_SCRATCH) || encoded.contains('/') {
        return None;
    }
    decode_name(encoded)
}

impl Whole<S3Bucket> {
    /// Connects with the standard AWS chain plus `opts`. Fails fast (exit 78) when there is no
    /// region or no credentials; does not touch the bucket (`doctor` does).
    pub async fn connect(bucket: &str, prefix: &str, opts: &AwsOptions) -> Result<S3Store> {
        let url = super::StoreUrl::s3(bucket, prefix)?;
        let config = aws::load(opts, &url.to_string()).await?;
        let super::StoreUrl::S3 { bucket, prefix } = url else {
            return Err(Error::Usage(format!("{url} is not an S3 store URL")));
        };
        Ok(Self::from_config(&bucket, &prefix, &config, opts.force_path_style))
    }

    /// A store on an AWS configuration the caller built. `bucket` and `prefix` must already
    /// be valid (see [`super::StoreUrl::s3`]).
    pub fn from_config(bucket: &str, prefix: &str, config: &aws_config::SdkConfig, force_path_style: bool) -> S3Store {
        let meter = Meter::default();
        let conf = aws_sdk_s3::config::Builder::from(config)
            .interceptor(meter.clone())
            .force_path_style(force_path_style)
            .build();
        let region = config.region().map(|r| r.to_string()).unwrap_or_default();
        Whole::new(S3Bucket {
            client: Client::from_conf(conf),
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            region,
            meter,
        })
    }
}

impl S3Bucket {
    fn key(&self, lock: &str) -> String {
        object_key(&self.prefix, lock)
    }

    /// Maps an SDK failure of the IAM action `action` (`s3:GetObject`), bucket cases first.
    fn error<E>(&self, err: SdkError<E, HttpResponse>, action: &str, what: &str) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let bucket_region = match &err {
            SdkError::ServiceError(se) => se.raw().headers().get("x-amz-bucket-region").map(str::to_string),
            _ => None,
        };
        self.map_failure(aws::failure(err), bucket_region, action, what)
    }

    fn map_failure(&self, failure: Failure, bucket_region: Option<String>, action: &str, what: &str) -> Error {
        let store = self.url();
        if let Kind::Service { code, status, message } = &failure.kind {
            match classify(*status, code) {
                Answer::NoBucket => {
                    let at = if what.is_empty() { String::new() } else { format!(" (at {what})") };
                    return Error::Config(format!(
                        "{store}: bucket {b:?} does not exist{at}. Create it with the Terraform module in terraform/ \
                         (create_bucket = true, bucket_name = \"{b}\"), or check the bucket name and --endpoint-url",
                        b = self.bucket
                    ));
                }
                Answer::WrongRegion => {
                    let hint = match bucket_region {
                        Some(r) => {
                            format!("the bucket is in {r}: pass --region {r} or set AWS_REGION={r}")
                        }
                        None => "pass the bucket's region with --region or AWS_REGION".to_string(),
                    };
                    return Error::Config(format!(
                        "{store}: bucket {:?} is not in region {:?} that the requests are signed for ({code}: {message}); {hint}",
                        self.bucket, self.region
                    ));
                }
                _ => {}
            }
        }
        failure.into_error(action, &format!("s3://{}/{what}", self.bucket), &store)
    }

    /// The lock's object (see [`S3Bucket::fetch_key`]).
    async fn fetch(&self, lock: &str) -> Result<Option<Object<Etag>>> {
        self.fetch_key(&self.key(lock)).await
    }

    /// The object's ETag and body (at most `MAX_RECORD_BYTES + 1` bytes), `None` when absent.
    pub(crate) async fn fetch_key(&self, key: &str) -> Result<Option<Object<Etag>>> {
        let out = match self.client.get_object().bucket(&self.bucket).key(key).send().await {
            Ok(out) => out,
            Err(e) => {
                if let SdkError::ServiceError(se) = &e
                    && classify(se.raw().status().as_u16(), se.err().code().unwrap_or_default()) == Answer::Gone
                {
                    return Ok(None);
                }
                return Err(self.error(e, "s3:GetObject", key));
            }
        };
        let tag = out.e_tag().map(|e| Etag(e.to_string()));
        let mut body = out.body;
        let mut bytes = Vec::new();
        // A huge object is not ours: stop reading one byte past the cap (the engine calls it corrupt).
        while (bytes.len() as u64) <= MAX_RECORD_BYTES {
            match body.next().await {
                Some(Ok(chunk)) => bytes.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Err(Error::unavailable(format!("{}: reading {key} was cut off", self.url()), e));
                }
                None => break,
            }
        }
        bytes.truncate(MAX_RECORD_BYTES as usize + 1);
        Ok(Some(Object { bytes, tag }))
    }

    /// Puts `body` at `key` if `mode` holds: the one conditional PutObject (docs/design.md, rule 1).
    pub(crate) async fn put_key(&self, key: &str, body: Vec<u8>, mode: PutMode<'_, Etag>) -> Result<PutOutcome<Etag>> {
        let req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body));
        let req = match mode {
            PutMode::Create => req.if_none_match("*"),
            PutMode::Update(Etag(etag)) => req.if_match(etag),
        };
        let e = match req.send().await {
            Ok(out) => return Ok(PutOutcome::Done(out.e_tag().map(|e| Etag(e.to_string())))),
            Err(e) => e,
        };
        let answer = match &e {
            SdkError::ServiceError(se) => classify(se.raw().status().as_u16(), se.err().code().unwrap_or_default()),
            _ => Answer::Other,
        };
        match answer {
            // 412: someone else created or changed it since our read (or our own lost write
            // landed first): the engine looks at what is there now.
            Answer::Changed => Ok(PutOutcome::Refused(None)),
            // 409: a concurrent conditional write; re-read so the caller re-decides on the
            // winner's record. Never taken to mean "held".
            Answer::Concurrent => Ok(PutOutcome::Refused(None)),
            // 404 to If-Match: the object was deleted meanwhile; the read shows it absent.
            Answer::Gone => Ok(PutOutcome::Refused(None)),
            _ => Err(self.error(e, "s3:PutObject", key)),
        }
    }
}

#[async_trait]
impl Objects for S3Bucket {
    type Tag = Etag;

    fn url(&self) -> String {
        super::StoreUrl::S3 {
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
        }
        .to_string()
    }

    fn clock(&self) -> &StoreClock {
        &self.meter.clock
    }

    fn requests(&self) -> u64 {
        self.meter.requests()
    }

    async fn get(&self, lock: &str) -> Result<Option<Object<Etag>>> {
        // S3 reads are strongly consistent (read-after-write) since December 2020.
        self.fetch(lock).await
    }

    async fn put(&self, lock: &str, body: Vec<u8>, mode: PutMode<'_, Etag>) -> Result<PutOutcome<Etag>> {
        self.put_key(&self.key(lock), body, mode).await
    }

    fn unversioned(&self, lock: &str) -> Error {
        Error::Config(format!(
            "{}: {} was read without an ETag, so it cannot be changed conditionally; this S3-compatible store cannot hold a lock",
            self.url(),
            self.key(lock)
        ))
    }

    async fn list_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<ObjectPage<Etag>> {
        let list_from = format!("{}{}", list_prefix(&self.prefix), encode_name(prefix));
        let mut start_after = after.map(|a| self.key(a));
        let mut continuation: Option<String> = None;
        let (names, truncated) = loop {
            let req = (self.client.list_objects_v2().bucket(&self.bucket).prefix(&list_from))
                .max_keys(limit.min(1000) as i32)
                .set_start_after(start_after.clone())
                .set_continuation_token(continuation.take());
            let page = req.send().await.map_err(|e| self.error(e, "s3:ListBucket", &list_from))?;
            let names: Vec<String> = (page.contents().iter())
                .filter_map(|o| lock_name(&self.prefix, o.key()?))
                .filter(|n| n.starts_with(prefix))
                .collect();
            let truncated = page.is_truncated().unwrap_or(false);
            // A page of foreign keys only (deeper prefixes, doctor scratch objects): on to the next.
            match page.next_continuation_token() {
                Some(token) if names.is_empty() && truncated => {
                    continuation = Some(token.to_string());
                    start_after = None;
                }
                _ => break (names, truncated),
            }
        };
        // The reads run concurrently, at most READS_IN_FLIGHT at a time, and come back in the
        // listing's order.
        let mut out = Vec::with_capacity(names.len());
        let mut in_flight = std::collections::VecDeque::new();
        let mut names = names.into_iter();
        loop {
            while in_flight.len() < READS_IN_FLIGHT {
                let Some(name) = names.next() else { break };
                let this = self.clone();
                in_flight.push_back(tokio::spawn(async move {
                    let object = this.fetch(&name).await;
                    (name, object)
                }));
            }
            let Some(read) = in_flight.pop_front() else { break };
            let (name, object) = read
                .await
                .map_err(|e| Error::other(format!("{}: a listing read failed", self.url()), e))?;
            // Deleted between the listing and the read: not a lock any more.
            out.push((name, object?));
        }
        let next = if truncated { out.last().map(|(n, _)| n.clone()) } else { None };
        Ok((out, next))
    }

    async fn doctor(&self, _store: &dyn Store) -> Vec<Check> {
        doctor::run(self).await
    }
}

#[cfg(feature = "negative-control")]
impl S3Bucket {
    /// The negative control's write around the compare-and-set (see `store::broken`).
    pub(super) async fn overwrite(&self, lock: &str, record: &crate::record::Record) -> Result<()> {
        let body = serde_json::to_vec_pretty(record).map_err(|e| Error::other("negative control: cannot encode the record", e))?;
        let put = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(lock))
            .content_type("application/json")
            .body(body.into());
        put.send()
            .await
            .map_err(|e| Error::unavailable("negative control: PutObject failed", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_under_the_prefix_and_cannot_escape_it() {
        assert_eq!(object_key("ci/locks", "deploy"), "ci/locks/deploy.lock");
        assert_eq!(object_key("", "deploy"), "deploy.lock");
        assert_eq!(object_key("ci", "group/project"), "ci/group%2Fproject.lock");
        assert_eq!(object_key("ci", "../../x"), "ci/..%2F..%2Fx.lock");
        assert!(!object_key("", "/abs").starts_with('/'));
    }

    #[test]
    fn listed_keys_map_back_to_lock_names() {
        for name in ["deploy", "group/project", "deploy prod", "ünï"] {
            assert_eq!(lock_name("ci", &object_key("ci", name)).as_deref(), Some(name));
            assert_eq!(lock_name("", &object_key("", name)).as_deref(), Some(name));
        }
        assert_eq!(lock_name("ci", "ci/sub/deploy.lock"), None);
        assert_eq!(lock_name("ci", "ci/.pipeline-lock-doctor-00ff.lock"), None);
        assert_eq!(lock_name("", &object_key("", "../x")).as_deref(), Some("../x"));
        assert_eq!(lock_name("ci", "ci/notes.txt"), None);
        assert_eq!(lock_name("ci", "other/deploy.lock"), None);
        assert_eq!(lock_name("", "ci/deploy.lock"), None);
    }

    #[test]
    fn answers_are_normalised_once() {
        assert_eq!(classify(412, "PreconditionFailed"), Answer::Changed);
        assert_eq!(classify(409, "ConditionalRequestConflict"), Answer::Concurrent);
        assert_eq!(classify(404, "NoSuchKey"), Answer::Gone);
        assert_eq!(classify(404, "NoSuchBucket"), Answer::NoBucket);
        assert_eq!(classify(301, "PermanentRedirect"), Answer::WrongRegion);
        assert_eq!(classify(400, "AuthorizationHeaderMalformed"), Answer::WrongRegion);
        assert_eq!(classify(301, "Unknown"), Answer::WrongRegion);
        assert_eq!(classify(404, "Unknown"), Answer::Gone);
        assert_eq!(classify(403, "AccessDenied"), Answer::Other);
        assert_eq!(classify(503, "SlowDown"), Answer::Other);
        assert_eq!(classify(500, "InternalError"), Answer::Other);
    }
}
