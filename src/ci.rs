//! Who we are, from the CI environment: the Owner, the Holder details, the ordinal and the
//! default lock name. Takes the environment as a lookup function so tests never touch the
//! process environment.

use crate::error::{Error, Result};
use crate::record::Holder;

/// Whose lock: the whole pipeline (acquire/renew/release) or one job (`run`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Scope {
    /// Every job of one pipeline (or workflow run, re-runs included) is the same owner.
    #[default]
    Pipeline,
    /// Each job is its own owner, so parallel jobs of one pipeline exclude each other.
    Job,
}

/// The CI system we run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CiSystem {
    /// GitLab CI.
    GitLab,
    /// GitHub Actions.
    GitHub,
    /// Neither: the owner comes from `--owner`.
    Local,
}

/// What the environment says about us.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The lock owner string (docs/design.md, "Owner identity and scopes").
    pub owner: String,
    /// Holder details stored with a grant.
    pub holder: Holder,
    /// The CI system.
    pub system: CiSystem,
    /// The project path, used as the default lock name.
    pub project: Option<String>,
    /// The CI server's host (for the early-takeover API).
    pub server_host: Option<String>,
}

/// Reads one environment variable; empty counts as unset.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn get(env: Env<'_>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.trim().is_empty())
}

fn require(env: Env<'_>, system: &str, name: &str) -> Result<String> {
    get(env, name).ok_or_else(|| {
        Error::Usage(format!(
            "{system} is detected but {name} is not set; pass --owner to name the lock owner yourself"
        ))
    })
}

/// Works out the identity. `owner` (from `--owner`/`PIPELINE_LOCK_OWNER`) wins over CI.
/// `Ok(None)` outside CI without `--owner`: fine for `status`, an error for `release`.
pub fn detect(env: Env<'_>, scope: Scope, owner: Option<&str>) -> Result<Option<Identity>> {
    let mut holder = Holder {
        host: get(env, "HOSTNAME").or_else(hostname),
        pid: Some(std::process::id()),
        ..Holder::default()
    };
    let ci = if get(env, "GITLAB_CI").is_some() {
        Some(gitlab(env, scope, &mut holder)?)
    } else if get(env, "GITHUB_ACTIONS").is_some() {
        Some(github(env, scope, &mut holder)?)
    } else {
        None
    };
    let (system, project, server_host, ci_owner) = match ci {
        Some((system, project, host, owner)) => (system, Some(project), Some(host), Some(owner)),
        None => (CiSystem::Local, None, None, None),
    };
    let Some(owner) = owner.map(str::to_string).or(ci_owner) else {
        return Ok(None);
    };
    if system == CiSystem::Local {
        holder.ci = Some("local".into());
    }
    Ok(Some(Identity {
        owner,
        holder,
        system,
        project,
        server_host,
    }))
}

type Found = (CiSystem, String, String, String);

/// The CI instance as it appears in an owner: the server URL without its scheme, so another
/// port or another path is another instance (docs/design.md, "Owner identity and scopes"). A path's `/` is
/// written `%2F`, which keeps the owner's first `/` the end of the instance.
fn instance(url: &str) -> String {
    let bare = url.split_once("://").map_or(url, |(_, rest)| rest).trim_end_matches('/');
    bare.replace('/', "%2F")
}

/// GitLab's instance: CI_SERVER_HOST, its CI_SERVER_PORT unless the protocol's default, and
/// the path of CI_SERVER_URL (a relative URL root), so `gitlab:HOST[:PORT][%2FPATH]`.
fn gitlab_instance(env: Env<'_>) -> String {
    let host = get(env, "CI_SERVER_HOST").unwrap_or_else(|| "gitlab.com".into());
    let url = get(env, "CI_SERVER_URL").unwrap_or_default();
    let default_port = if url.starts_with("http://") { "80" } else { "443" };
    let port = get(env, "CI_SERVER_PORT")
        .filter(|p| p != default_port)
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    let path = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(_, p)| p.trim_end_matches('/'));
    let path = path.filter(|p| !p.is_empty()).map(|p| format!("/{p}")).unwrap_or_default();
    instance(&format!("{host}{port}{path}"))
}

fn gitlab(env: Env<'_>, scope: Scope, holder: &mut Holder) -> Result<Found> {
    let host = gitlab_instance(env);
    let project = require(env, "GitLab CI", "CI_PROJECT_PATH")?;
    let pipeline = require(env, "GitLab CI", "CI_PIPELINE_ID")?;
    let mut owner = format!("gitlab:{host}/{project}/pipelines/{pipeline}");
    if scope == Scope::Job {
        owner.push_str(&format!("/jobs/{}", require(env, "GitLab CI", "CI_JOB_ID")?));
    }
    holder.ci = Some("gitlab".into());
    holder.url = get(env, "CI_PIPELINE_URL");
    holder.job_url = get(env, "CI_JOB_URL");
    holder.job = get(env, "CI_JOB_NAME");
    holder.ordinal = get(env, "CI_PIPELINE_IID").and_then(|v| v.parse().ok());
    Ok((CiSystem::GitLab, project, host, owner))
}

fn github(env: Env<'_>, scope: Scope, holder: &mut Holder) -> Result<Found> {
    let server = get(env, "GITHUB_SERVER_URL").unwrap_or_else(|| "https://github.com".into());
    let host = instance(&server);
    let repo = require(env, "GitHub Actions", "GITHUB_REPOSITORY")?;
    let run = require(env, "GitHub Actions", "GITHUB_RUN_ID")?;
    let mut owner = format!("github:{host}/{repo}/runs/{run}");
    if scope == Scope::Job {
        let job = require(env, "GitHub Actions", "GITHUB_JOB")?;
        let attempt = get(env, "GITHUB_RUN_ATTEMPT").unwrap_or_else(|| "1".into());
        owner.push_str(&format!("/jobs/{job}/attempts/{attempt}"));
        // A matrix job runs once per combination under one GITHUB_JOB, and no variable of the
        // runner tells the legs apart: the workflow passes `${{ strategy.job-index }}`. Without
        // it the legs share this owner, and still exclude each other (`run` never shares a
        // grant it did not make).
        if let Some(index) = get(env, "PIPELINE_LOCK_MATRIX_INDEX") {
            owner.push_str(&format!("/matrix/{index}"));
        }
    }
    holder.ci = Some("github".into());
    holder.url = Some(format!("{}/{repo}/actions/runs/{run}", server.trim_end_matches('/')));
    holder.job = get(env, "GITHUB_JOB");
    holder.ordinal = get(env, "GITHUB_RUN_NUMBER").and_then(|v| v.parse().ok());
    Ok((CiSystem::GitHub, repo, host, owner))
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The default lock name: the CI project path, when in CI.
pub fn default_lock(env: Env<'_>) -> Option<String> {
    if get(env, "GITLAB_CI").is_some() {
        get(env, "CI_PROJECT_PATH")
    } else if get(env, "GITHUB_ACTIONS").is_some() {
        get(env, "GITHUB_REPOSITORY")
    } else {
        None
    }
}

/// An environment lookup over fixed pairs, for unit tests of anything that reads CI variables.
#[cfg(test)]
pub(crate) fn test_env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: std::collections::HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k| map.get(k).cloned()
}

/// A GitLab job's environment (pipeline 1234, job 99 of group/app), for unit tests.
#[cfg(test)]
pub(crate) const GITLAB_TEST_ENV: &[(&str, &str)] = &[
    ("GITLAB_CI", "true"),
    ("CI_SERVER_HOST", "gitlab.example.com"),
    ("CI_PROJECT_PATH", "group/app"),
    ("CI_PIPELINE_ID", "1234"),
    ("CI_PIPELINE_IID", "56"),
    ("CI_PIPELINE_URL", "https://gitlab.example.com/group/app/-/pipelines/1234"),
    ("CI_JOB_ID", "99"),
    ("CI_JOB_NAME", "deploy"),
];

#[cfg(test)]
mod tests {
    use super::test_env as env;
    use super::*;

    const GITLAB: &[(&str, &str)] = GITLAB_TEST_ENV;

    #[test]
    fn gitlab_pipeline_and_job_scope() {
        let e = env(GITLAB);
        let id = detect(&e, Scope::Pipeline, None).unwrap().unwrap();
        assert_eq!(id.owner, "gitlab:gitlab.example.com/group/app/pipelines/1234");
        assert_eq!(id.holder.ordinal, Some(56));
        assert_eq!(id.holder.job.as_deref(), Some("deploy"));
        assert_eq!(id.system, CiSystem::GitLab);
        assert_eq!(default_lock(&e).as_deref(), Some("group/app"));
        let job = detect(&e, Scope::Job, None).unwrap().unwrap();
        assert_eq!(job.owner, "gitlab:gitlab.example.com/group/app/pipelines/1234/jobs/99");
    }

    #[test]
    fn github_run_and_job_scope() {
        let e = env(&[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_SERVER_URL", "https://github.com"),
            ("GITHUB_REPOSITORY", "org/repo"),
            ("GITHUB_RUN_ID", "777"),
            ("GITHUB_RUN_NUMBER", "12"),
            ("GITHUB_RUN_ATTEMPT", "2"),
            ("GITHUB_JOB", "deploy"),
        ]);
        let id = detect(&e, Scope::Pipeline, None).unwrap().unwrap();
        assert_eq!(id.owner, "github:github.com/org/repo/runs/777");
        assert_eq!(id.holder.url.as_deref(), Some("https://github.com/org/repo/actions/runs/777"));
        assert_eq!(id.holder.ordinal, Some(12));
        let job = detect(&e, Scope::Job, None).unwrap().unwrap();
        assert_eq!(job.owner, "github:github.com/org/repo/runs/777/jobs/deploy/attempts/2");
    }

    #[test]
    fn explicit_owner_wins_and_outside_ci_there_is_none() {
        let e = env(GITLAB);
        assert_eq!(detect(&e, Scope::Pipeline, Some("me")).unwrap().unwrap().owner, "me");
        let none = env(&[]);
        assert_eq!(detect(&none, Scope::Pipeline, None).unwrap(), None);
        assert_eq!(
            detect(&none, Scope::Pipeline, Some("me")).unwrap().unwrap().holder.ci.as_deref(),
            Some("local")
        );
        assert_eq!(default_lock(&none), None);
    }

    #[test]
    fn another_port_or_path_is_another_instance() {
        let mut pairs = GITLAB.to_vec();
        pairs.extend([("CI_SERVER_URL", "https://gitlab.example.com:8443/code"), ("CI_SERVER_PORT", "8443")]);
        let id = detect(&env(&pairs), Scope::Pipeline, None).unwrap().unwrap();
        assert_eq!(id.owner, "gitlab:gitlab.example.com:8443%2Fcode/group/app/pipelines/1234");
        pairs.truncate(GITLAB.len());
        pairs.extend([("CI_SERVER_URL", "https://gitlab.example.com"), ("CI_SERVER_PORT", "443")]);
        let id = detect(&env(&pairs), Scope::Pipeline, None).unwrap().unwrap();
        assert_eq!(id.owner, "gitlab:gitlab.example.com/group/app/pipelines/1234");
        let gh = env(&[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_SERVER_URL", "https://ghe.example.com:8443/"),
            ("GITHUB_REPOSITORY", "org/repo"),
            ("GITHUB_RUN_ID", "7"),
        ]);
        assert_eq!(
            detect(&gh, Scope::Pipeline, None).unwrap().unwrap().owner,
            "github:ghe.example.com:8443/org/repo/runs/7"
        );
    }

    #[test]
    fn matrix_legs_are_told_apart_only_by_the_index_the_workflow_passes() {
        let base = [
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_REPOSITORY", "org/repo"),
            ("GITHUB_RUN_ID", "7"),
            ("GITHUB_JOB", "test"),
            ("strategy.job-index", "3"),
        ];
        let leg = detect(&env(&base), Scope::Job, None).unwrap().unwrap();
        assert_eq!(leg.owner, "github:github.com/org/repo/runs/7/jobs/test/attempts/1");
        let mut with_index = base.to_vec();
        with_index.push(("PIPELINE_LOCK_MATRIX_INDEX", "2"));
        let leg2 = detect(&env(&with_index), Scope::Job, None).unwrap().unwrap();
        assert_eq!(leg2.owner, "github:github.com/org/repo/runs/7/jobs/test/attempts/1/matrix/2");
    }

    #[test]
    fn half_a_ci_environment_is_a_usage_error() {
        let e = env(&[("GITLAB_CI", "true"), ("CI_PROJECT_PATH", "g/a")]);
        let err = detect(&e, Scope::Pipeline, None).unwrap_err();
        assert!(err.to_string().contains("CI_PIPELINE_ID"), "{err}");
    }
}
