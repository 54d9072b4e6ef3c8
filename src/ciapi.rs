//! Early takeover (docs/design.md, "The queue and early takeover"): a waiter asks its own CI server whether
//! the holder's pipeline (GitLab) or workflow run (GitHub) has ended.
//!
//! The token never leaves for a place the lock record names: the server is the waiter's own,
//! from its own environment, and a holder on another host is not asked about at all. From the
//! record only the project path and the pipeline number are taken, each checked and
//! percent-encoded into a path on that server. Redirects are not followed. Any failure
//! (network, status, body) is a [`Verdict::Failed`], which never grants a lock.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::ci::{CiSystem, Env, Identity};
use crate::error::{Error, Result};

/// How long one question to the CI server may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read; a pipeline or run document is a few KB.
const MAX_BODY: usize = 1 << 20;

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// What the CI server said about the holder's pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It has ended; the status the server gave.
    Ended(String),
    /// Still going (or waiting); the status the server gave.
    Running(String),
    /// Not asked: the holder is on another CI server, or its owner names no pipeline.
    NotOurs,
    /// The question failed. Never a reason to take a lock.
    Failed(String),
}

/// The waiter's own CI server and the token to ask it with.
pub struct CiApi {
    system: CiSystem,
    /// API root from our environment: `CI_API_V4_URL`, `GITHUB_API_URL`.
    base: String,
    /// Our CI server's host, as owner strings spell it; only holders there are asked about.
    host: String,
    /// Header name and token.
    auth: (&'static str, String),
    client: OnceLock<std::result::Result<Client<Https, Empty<Bytes>>, String>>,
}

impl std::fmt::Debug for CiApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret: never in logs or panics.
        f.debug_struct("CiApi")
            .field("system", &self.system)
            .field("base", &self.base)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

fn get(env: Env<'_>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.trim().is_empty())
}

impl CiApi {
    /// A client for `system`'s API at `base`, asking only about holders on `host`. `auth` is
    /// the header carrying the token (`JOB-TOKEN`, `PRIVATE-TOKEN`, `Authorization`).
    pub fn new(system: CiSystem, base: &str, host: &str, auth: (&'static str, String)) -> CiApi {
        CiApi {
            system,
            base: base.trim_end_matches('/').to_string(),
            host: host.to_string(),
            auth,
            client: OnceLock::new(),
        }
    }

    /// The API of the CI system we run in, when `--ci-api` is on. `wanted`: `Some(true)` for
    /// `--ci-api` (an error if it cannot work), `Some(false)` for `--no-ci-api`, `None` for the
    /// default: on in CI when a token is there.
    pub fn from_env(env: Env<'_>, me: &Identity, wanted: Option<bool>) -> Result<Option<Arc<CiApi>>> {
        if wanted == Some(false) {
            return Ok(None);
        }
        let found = match (me.system, me.server_host.as_deref()) {
            (CiSystem::GitLab, Some(host)) => {
                let auth = match (get(env, "PIPELINE_LOCK_GITLAB_TOKEN"), get(env, "CI_JOB_TOKEN")) {
                    (Some(t), _) => Some(("PRIVATE-TOKEN", t)),
                    (None, Some(t)) => Some(("JOB-TOKEN", t)),
                    _ => None,
                };
                let base = get(env, "CI_API_V4_URL").or_else(|| get(env, "CI_SERVER_URL").map(|u| format!("{}/api/v4", u.trim_end_matches('/'))));
                match (auth, base) {
                    (Some(auth), Some(base)) => Ok(CiApi::new(CiSystem::GitLab, &base, host, auth)),
                    (None, _) => Err("no token: set CI_JOB_TOKEN or PIPELINE_LOCK_GITLAB_TOKEN"),
                    (_, None) => Err("no API URL: CI_API_V4_URL and CI_SERVER_URL are unset"),
                }
            }
            (CiSystem::GitHub, Some(host)) => match get(env, "GITHUB_TOKEN") {
                Some(t) => {
                    let base = get(env, "GITHUB_API_URL").unwrap_or_else(|| "https://api.github.com".into());
                    Ok(CiApi::new(CiSystem::GitHub, &base, host, ("Authorization", format!("Bearer {t}"))))
                }
                None => Err("no token: pass GITHUB_TOKEN (env: GITHUB_TOKEN: ${{ github.token }})"),
            },
            _ => Err("it needs GitLab CI or GitHub Actions"),
        };
        match (found, wanted) {
            (Ok(api), _) => Ok(Some(Arc::new(api))),
            (Err(why), Some(true)) => Err(Error::Usage(format!("--ci-api cannot ask the CI server: {why}"))),
            (Err(why), _) => {
                tracing::debug!("early takeover off: {why}");
                Ok(None)
            }
        }
    }

    /// The API path that tells about the pipeline of `owner`, when `owner` is a pipeline on
    /// our own server; `None` otherwise.
    pub fn target(&self, owner: &str) -> Option<String> {
        match self.system {
            CiSystem::GitLab => {
                let (host, project, id) = gitlab_pipeline(owner)?;
                host.eq_ignore_ascii_case(&self.host)
                    .then(|| format!("/projects/{}/pipelines/{id}", encode(project)))
            }
            CiSystem::GitHub => {
                let (host, repo, id) = github_run(owner)?;
                host.eq_ignore_ascii_case(&self.host).then(|| format!("/repos/{repo}/actions/runs/{id}"))
            }
            CiSystem::Local => None,
        }
    }

    /// Asks whether the pipeline of the lock's holder `owner` has ended.
    pub async fn pipeline_state(&self, owner: &str) -> Verdict {
        let Some(path) = self.target(owner) else {
            return Verdict::NotOurs;
        };
        let url = format!("{}{path}", self.base);
        match tokio::time::timeout(TIMEOUT, self.get(&url)).await {
            Err(_) => Verdict::Failed(format!("GET {url}: no answer within {}s", TIMEOUT.as_secs())),
            Ok(Err(why)) => Verdict::Failed(format!("GET {url}: {why}")),
            Ok(Ok((200, body))) => self.judge(&body).unwrap_or_else(|why| Verdict::Failed(format!("GET {url}: {why}"))),
            Ok(Ok((status, _))) => Verdict::Failed(format!("GET {url}: HTTP {status}")),
        }
    }

    fn judge(&self, body: &[u8]) -> std::result::Result<Verdict, String> {
        let doc: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let status = doc
            .get("status")
            .and_then(|s| s.as_str())
            .ok_or("no \"status\" in the answer")?
            .to_string();
        let ended = match self.system {
            // GitLab's pipeline statuses; every other one (running, pending, manual, ...) may
            // still run a job that holds the lock.
            CiSystem::GitLab => matches!(status.as_str(), "success" | "failed" | "canceled" | "skipped"),
            CiSystem::GitHub => status == "completed",
            CiSystem::Local => false,
        };
        if !ended {
            return Ok(Verdict::Running(status));
        }
        let conclusion = doc
            .get("conclusion")
            .and_then(|c| c.as_str())
            .map(|c| format!(", {c}"))
            .unwrap_or_default();
        Ok(Verdict::Ended(format!("{status}{conclusion}")))
    }

    fn client(&self) -> std::result::Result<&Client<Https, Empty<Bytes>>, String> {
        self.client
            .get_or_init(|| {
                let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
                let builder = match hyper_rustls::HttpsConnectorBuilder::new().with_provider_and_native_roots(provider.clone()) {
                    Ok(b) => b,
                    Err(e) => {
                        // No CA store here: an https server cannot be verified, so asking it fails
                        // at the handshake; a plain-http server (a test) can still be asked.
                        tracing::debug!("no native CA certificates ({e}); https CI APIs cannot be verified");
                        let config = rustls::ClientConfig::builder_with_provider(provider)
                            .with_safe_default_protocol_versions()
                            .map_err(|e| format!("TLS setup: {e}"))?
                            .with_root_certificates(rustls::RootCertStore::empty())
                            .with_no_client_auth();
                        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
                    }
                };
                let https = builder.https_or_http().enable_http1().build();
                Ok(Client::builder(TokioExecutor::new()).build(https))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    async fn get(&self, url: &str) -> std::result::Result<(u16, Bytes), String> {
        let request = hyper::Request::get(url)
            .header(self.auth.0, &self.auth.1)
            .header(
                "Accept",
                if self.system == CiSystem::GitHub {
                    "application/vnd.github+json"
                } else {
                    "application/json"
                },
            )
            .header("User-Agent", concat!("pipeline-lock/", env!("CARGO_PKG_VERSION")))
            .header("X-GitHub-Api-Version", "2022-11-28")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = self.client()?.request(request).await.map_err(|e| crate::report::chain(&e))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }
}

fn digits(s: &str) -> Option<&str> {
    (!s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())).then_some(s)
}

/// `gitlab:HOST/PROJECT/pipelines/ID[/jobs/ID]` -> (HOST, PROJECT, ID).
fn gitlab_pipeline(owner: &str) -> Option<(&str, &str, &str)> {
    let rest = owner.strip_prefix("gitlab:")?;
    let (host, path) = rest.split_once('/')?;
    // Job-scoped owners (`run`) end in /jobs/ID: the job's pipeline is what we ask about.
    let path = match path.rsplit_once("/jobs/") {
        Some((p, job)) if digits(job).is_some() => p,
        _ => path,
    };
    let (project, id) = path.rsplit_once("/pipelines/")?;
    let chars = project.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
    let ok = chars && project.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    ok.then_some((host, project, digits(id)?))
}

/// `github:HOST/OWNER/REPO/runs/ID[/...]` -> (HOST, OWNER/REPO, ID).
fn github_run(owner: &str) -> Option<(&str, &str, &str)> {
    let rest = owner.strip_prefix("github:")?;
    let mut parts = rest.splitn(6, '/');
    let (host, org, repo, runs, id) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let name = |s: &str| !s.is_empty() && s != "." && s != ".." && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if runs != "runs" || !name(org) || !name(repo) {
        return None;
    }
    let repo_path = &rest[host.len() + 1..host.len() + 1 + org.len() + 1 + repo.len()];
    Some((host, repo_path, digits(id)?))
}

/// Percent-encodes everything but RFC 3986's unreserved characters (a GitLab project path
/// becomes one path segment: `group/app` -> `group%2Fapp`).
fn encode(s: &str) -> String {
    const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ci::{Scope, detect, test_env as env};

    const GITLAB: &[(&str, &str)] = &[
        ("GITLAB_CI", "true"),
        ("CI_SERVER_HOST", "gitlab.example.com"),
        ("CI_SERVER_URL", "https://gitlab.example.com"),
        ("CI_PROJECT_PATH", "group/app"),
        ("CI_PIPELINE_ID", "1234"),
        ("CI_JOB_TOKEN", "secret"),
    ];

    fn api(pairs: &[(&str, &str)], wanted: Option<bool>) -> Result<Option<Arc<CiApi>>> {
        let e = env(pairs);
        let me = detect(&e, Scope::Pipeline, None)?.unwrap_or_else(|| detect(&e, Scope::Pipeline, Some("me")).unwrap().unwrap());
        CiApi::from_env(&e, &me, wanted)
    }

    #[test]
    fn gitlab_holders_on_our_server_only() {
        let a = api(GITLAB, None).unwrap().unwrap();
        assert_eq!(a.base, "https://gitlab.example.com/api/v4");
        assert_eq!(a.auth.0, "JOB-TOKEN");
        assert_eq!(
            a.target("gitlab:gitlab.example.com/group/sub/app/pipelines/77").as_deref(),
            Some("/projects/group%2Fsub%2Fapp/pipelines/77")
        );
        assert_eq!(
            a.target("gitlab:gitlab.example.com/group/app/pipelines/77/jobs/9").as_deref(),
            Some("/projects/group%2Fapp/pipelines/77")
        );
        // Another host, a hand-given owner, a path trick, a non-number: never asked.
        assert_eq!(a.target("gitlab:evil.example.com/group/app/pipelines/77"), None);
        assert_eq!(a.target("alice"), None);
        assert_eq!(a.target("gitlab:gitlab.example.com/../x?y/pipelines/77"), None);
        assert_eq!(a.target("gitlab:gitlab.example.com/../pipelines/77"), None);
        assert_eq!(
            a.target("gitlab:GitLab.Example.com/group/app/pipelines/77").as_deref(),
            Some("/projects/group%2Fapp/pipelines/77")
        );
        assert_eq!(a.target("gitlab:gitlab.example.com/group/app/pipelines/7x"), None);
        assert_eq!(a.target("github:gitlab.example.com/o/r/runs/1"), None);
    }

    #[test]
    fn github_runs() {
        let gh = [
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_REPOSITORY", "org/repo"),
            ("GITHUB_RUN_ID", "5"),
            ("GITHUB_TOKEN", "t"),
        ];
        let a = api(&gh, None).unwrap().unwrap();
        assert_eq!(a.base, "https://api.github.com");
        assert_eq!(a.auth, ("Authorization", "Bearer t".to_string()));
        assert_eq!(
            a.target("github:github.com/org/repo/runs/99/jobs/deploy/attempts/1").as_deref(),
            Some("/repos/org/repo/actions/runs/99")
        );
        assert_eq!(a.target("github:ghe.example.com/org/repo/runs/99"), None);
        assert_eq!(a.target("github:github.com/org/re%2Fpo/runs/99"), None);
    }

    #[test]
    fn on_by_default_only_with_a_token() {
        let no_token: Vec<_> = GITLAB.iter().copied().filter(|(k, _)| *k != "CI_JOB_TOKEN").collect();
        assert!(api(&no_token, None).unwrap().is_none());
        assert!(api(&no_token, Some(true)).unwrap_err().to_string().contains("CI_JOB_TOKEN"));
        assert!(api(GITLAB, Some(false)).unwrap().is_none());
        assert!(api(&[], Some(true)).is_err());
        assert!(api(&[], None).unwrap().is_none());
        let mut pat = GITLAB.to_vec();
        pat.push(("PIPELINE_LOCK_GITLAB_TOKEN", "pat"));
        assert_eq!(api(&pat, None).unwrap().unwrap().auth, ("PRIVATE-TOKEN", "pat".to_string()));
        // The token is never printed.
        assert!(!format!("{:?}", api(GITLAB, None).unwrap().unwrap()).contains("secret"));
    }

    #[test]
    fn statuses() {
        let gl = CiApi::new(CiSystem::GitLab, "http://x", "x", ("JOB-TOKEN", "t".into()));
        for (s, ended) in [
            ("success", true),
            ("failed", true),
            ("canceled", true),
            ("skipped", true),
            ("running", false),
            ("manual", false),
            ("pending", false),
        ] {
            let v = gl.judge(format!("{{\"id\":1,\"status\":\"{s}\"}}").as_bytes()).unwrap();
            assert_eq!(matches!(v, Verdict::Ended(_)), ended, "{s}");
        }
        assert!(gl.judge(b"<html>").is_err());
        assert!(gl.judge(b"{}").is_err());
        let gh = CiApi::new(CiSystem::GitHub, "http://x", "x", ("Authorization", "Bearer t".into()));
        assert_eq!(
            gh.judge(br#"{"status":"completed","conclusion":"cancelled"}"#).unwrap(),
            Verdict::Ended("completed, cancelled".into())
        );
        assert_eq!(
            gh.judge(br#"{"status":"in_progress","conclusion":null}"#).unwrap(),
            Verdict::Running("in_progress".into())
        );
    }
}
