//! What the AWS stores share: configuration with bounded start-up, the interceptor that
//! reads the store clock and counts requests, and the mapping of SDK errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::ProvideCredentials;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{BeforeDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use tokio::time::Instant;

use crate::clock::StoreClock;
use crate::error::{Error, Result};

/// AWS settings that override the standard chain.
#[derive(Debug, Clone, Default)]
pub struct AwsOptions {
    /// `--region`.
    pub region: Option<String>,
    /// `--endpoint-url`: a local server, or a VPC endpoint.
    pub endpoint_url: Option<String>,
    /// `--s3-force-path-style`.
    pub force_path_style: bool,
}

/// How long start-up may spend finding a region and credentials: never a hang on the
/// instance metadata service when there is none.
const RESOLVE_BUDGET: Duration = Duration::from_millis(1900);

/// Loads the standard AWS chain with our overrides and timeouts, and proves that a region
/// and credentials exist before the first request, so their absence is a clear exit 78.
pub async fn load(opts: &AwsOptions, store: &str) -> Result<SdkConfig> {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_attempt_timeout(Duration::from_secs(5))
        .operation_timeout(Duration::from_secs(20))
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(timeouts)
        .retry_config(RetryConfig::standard().with_max_attempts(3));
    if let Some(region) = &opts.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(url) = &opts.endpoint_url {
        loader = loader.endpoint_url(url);
        if url.starts_with("http://") {
            loader = loader.http_client(plain_http_client());
        }
    }
    let resolve = async {
        let config = loader.load().await;
        if config.region().is_none() {
            return Err(Error::Config(format!(
                "no AWS region for {store}: set AWS_REGION (or AWS_DEFAULT_REGION, a profile's region) or pass --region"
            )));
        }
        let provider = config.credentials_provider().ok_or_else(|| no_credentials(store, "no provider"))?;
        provider
            .provide_credentials()
            .await
            .map_err(|e| no_credentials(store, &crate::report::chain(&e)))?;
        Ok(config)
    };
    tokio::time::timeout(RESOLVE_BUDGET, resolve).await.unwrap_or_else(|_| {
        Err(no_credentials(
            store,
            "the credential chain did not answer within 2 s (no instance metadata service?)",
        ))
    })
}

/// The client for a plain-HTTP endpoint (a local server): the default client's TLS set-up
/// reads and parses every certificate of the system trust store, a third of a short
/// command's run time, for connections that never use TLS.
fn plain_http_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, TlsContext, TrustStore, rustls_provider::CryptoMode};
    let builder = aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::AwsLc));
    match TlsContext::builder().with_trust_store(TrustStore::empty()).build() {
        Ok(context) => builder.tls_context(context).build_https(),
        Err(_) => builder.build_https(),
    }
}

fn no_credentials(store: &str, why: &str) -> Error {
    Error::Config(format!(
        "no AWS credentials for {store}: {why}. Set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, \
         or a web identity (AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE); a region comes from AWS_REGION or --region"
    ))
}

/// Counts requests and feeds the store clock from every response's `Date` header.
#[derive(Debug, Clone, Default)]
pub struct Meter {
    /// The store's clock.
    pub clock: Arc<StoreClock>,
    /// HTTP requests sent, retries included.
    pub requests: Arc<AtomicU64>,
}

impl Meter {
    /// Requests sent so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy)]
struct SentAt(Instant);

impl Storable for SentAt {
    type Storer = StoreReplace<Self>;
}

impl Intercept for Meter {
    fn name(&self) -> &'static str {
        "pipeline-lock-meter"
    }

    fn read_before_transmit(
        &self,
        _ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        cfg.interceptor_state().store_put(SentAt(Instant::now()));
        Ok(())
    }

    fn read_before_deserialization(
        &self,
        ctx: &BeforeDeserializationInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let received = Instant::now();
        if let (Some(SentAt(sent)), Some(date)) = (cfg.load::<SentAt>(), ctx.response().headers().get("date")) {
            self.clock.observe_http_date(*sent, received, date);
        }
        Ok(())
    }
}

/// How an SDK failure reads, once normalised, with the SDK's error kept as the source.
#[derive(Debug)]
pub struct Failure {
    /// What it was.
    pub kind: Kind,
    /// The SDK error itself, for the error chain (`Error::source`).
    pub source: Option<BoxError>,
}

/// The kinds of [`Failure`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// The service answered with this error code (and HTTP status).
    Service {
        /// e.g. `ResourceNotFoundException`, `PreconditionFailed`.
        code: String,
        /// HTTP status.
        status: u16,
        /// The service's message.
        message: String,
    },
    /// No answer, or an answer we could not read: the request may have been carried out.
    Transient(String),
    /// The request was never sent (e.g. no credentials).
    NotSent(String),
}

/// Normalises an SDK error into a [`Failure`], keeping it as the source.
pub fn failure<E>(err: SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let kind = match &err {
        SdkError::ServiceError(se) => {
            let e = se.err();
            Kind::Service {
                code: e.code().unwrap_or("Unknown").to_string(),
                status: se.raw().status().as_u16(),
                message: e.message().unwrap_or_default().to_string(),
            }
        }
        SdkError::ConstructionFailure(_) => Kind::NotSent(crate::report::chain(&err)),
        _ => Kind::Transient(crate::report::chain(&err)),
    };
    Failure {
        kind,
        source: Some(Box::new(err)),
    }
}

impl Failure {
    /// Maps what is not specific to one call: access, throttling, outages.
    pub fn into_error(self, action: &str, resource: &str, store: &str) -> Error {
        let source = self.source;
        match self.kind {
            Kind::Service { code, status, message } => {
                let denied = matches!(
                    code.as_str(),
                    "AccessDeniedException"
                        | "AccessDenied"
                        | "UnrecognizedClientException"
                        | "InvalidClientTokenId"
                        | "InvalidAccessKeyId"
                        | "SignatureDoesNotMatch"
                        | "ExpiredToken"
                        | "ExpiredTokenException"
                        | "MissingAuthenticationToken"
                ) || status == 403;
                if denied {
                    Error::AccessDenied {
                        message: format!(
                            "access denied by {store}: {action} on {resource} ({code}: {message}); grant the \
                             credentials {action} (the Terraform module's policy output has exactly the actions needed)"
                        ),
                        source,
                    }
                } else if status >= 500
                    || code.contains("Throttl")
                    || code.contains("ProvisionedThroughputExceeded")
                    || code == "RequestLimitExceeded"
                    || code == "SlowDown"
                {
                    Error::Unavailable {
                        message: format!("{store} is unavailable or throttling: {action} on {resource} answered {code} ({status}): {message}"),
                        source,
                    }
                } else {
                    Error::Other {
                        message: format!("{store}: {action} on {resource} failed: {code} ({status}): {message}"),
                        source,
                    }
                }
            }
            Kind::Transient(why) => Error::Unavailable {
                message: format!(
                    "{store} did not answer {action} on {resource} after retries: {why}; check --endpoint-url, the network and the AWS region"
                ),
                source,
            },
            Kind::NotSent(why) => Error::Config(format!("{store}: {action} could not be sent: {why}")),
        }
    }
}
