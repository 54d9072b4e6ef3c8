use super::*;
use crate::ci::{GITLAB_TEST_ENV as GITLAB, test_env};

fn parse(args: &[&str]) -> Cli {
    Cli::try_parse_sourced(args).unwrap()
}

/// As clap reads PIPELINE_LOCK_OWNER from an inherited dotenv: set, but not given.
fn with_inherited_owner(mut cli: Cli, owner: &str) -> Cli {
    cli.global.owner = Some(owner.into());
    cli
}

fn usage(cli: Cli, env: Env<'_>) -> String {
    match Settings::build(cli, env) {
        Err(Error::Usage(m)) => m,
        Err(e) => panic!("not a usage error: {e}"),
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn in_ci_run_ignores_an_inherited_owner_and_acquire_keeps_it() {
    let env = test_env(GITLAB);
    let pipeline = ci::detect(&env, Scope::Pipeline, None).unwrap().unwrap().owner;
    let job = ci::detect(&env, Scope::Job, None).unwrap().unwrap().owner;
    let cli = with_inherited_owner(parse(&["pipeline-lock", "run", "--", "true"]), &pipeline);
    let Task::Run(run) = Settings::build(cli, &env).unwrap().command else {
        panic!("not run")
    };
    assert_eq!(run.me.owner, job);
    assert_eq!(run.me.holder.via.as_deref(), Some("run"));
    assert!(!run.opts.reenter);
    assert!(run.opts.own_pipeline.contains(&pipeline), "{:?}", run.opts.own_pipeline);
    let cli = with_inherited_owner(parse(&["pipeline-lock", "acquire"]), "exported-owner");
    let Task::Acquire(acquire) = Settings::build(cli, &env).unwrap().command else {
        panic!("not acquire")
    };
    assert_eq!(acquire.me.owner, "exported-owner");
    // On run's own command line it counts.
    let cli = parse(&["pipeline-lock", "run", "--owner", "mine", "--", "true"]);
    let Task::Run(run) = Settings::build(cli, &env).unwrap().command else {
        panic!("not run")
    };
    assert_eq!(run.me.owner, "mine");
}

#[test]
#[cfg(feature = "negative-control")]
fn the_negative_control_restores_the_old_owner_rule() {
    let mut pairs = GITLAB.to_vec();
    pairs.push(("PIPELINE_LOCK_TEST_BREAK", "old-owner-rule"));
    let env = test_env(&pairs);
    let cli = with_inherited_owner(parse(&["pipeline-lock", "run", "--", "true"]), "exported-owner");
    let Task::Run(run) = Settings::build(cli, &env).unwrap().command else {
        panic!("not run")
    };
    assert_eq!(run.me.owner, "exported-owner");
    assert!(run.opts.reenter && run.opts.own_pipeline.is_empty());
}

#[test]
fn each_command_checks_only_what_it_needs() {
    let env = test_env(&[]);
    let list = Settings::build(parse(&["pipeline-lock", "list"]), &env).unwrap();
    assert!(matches!(list.command, Task::List(_)));
    assert_eq!((list.scope, list.clock_margin), (Scope::Pipeline, Duration::from_secs(2)));
    let status = parse(&["pipeline-lock", "status", "--lock", "x", "--queue", "newest"]);
    let Task::Status(s) = Settings::build(status, &env).unwrap().command else {
        panic!("not status")
    };
    assert_eq!((s.locks.as_slice(), s.queue), (&["x".to_string()][..], QueueMode::Newest));
    assert!(usage(parse(&["pipeline-lock", "status"]), &env).contains("no lock name"));
    assert!(usage(parse(&["pipeline-lock", "release", "--lock", "x"]), &env).contains("no owner"));
    let too_long = parse(&["pipeline-lock", "--store", "file:///tmp/x", "status", "--lock", &"x".repeat(300)]);
    assert!(!usage(too_long, &env).is_empty());
}

#[test]
fn run_timings_that_cannot_be_kept_are_refused_before_connecting() {
    let env = test_env(&[]);
    let args = [
        "pipeline-lock",
        "run",
        "--lock",
        "x",
        "--owner",
        "me",
        "--ttl",
        "10s",
        "--kill-grace",
        "1s",
        "--heartbeat",
        "9s",
        "--",
        "true",
    ];
    assert!(usage(parse(&args), &env).contains("--heartbeat"));
    let ok = parse(&["pipeline-lock", "run", "--lock", "x", "--owner", "me", "--", "true"]);
    let Task::Run(run) = Settings::build(ok, &env).unwrap().command else {
        panic!("not run")
    };
    assert_eq!((run.opts.ttl, run.spec.kill_grace), (Some(cli::RUN_TTL), Duration::from_secs(10)));
}

#[test]
fn renew_keeps_the_grants_lease_unless_told() {
    let env = test_env(&[]);
    let ttl = |args: &[&str]| match Settings::build(parse(args), &env).unwrap().command {
        Task::Renew(r) => r.ttl,
        _ => panic!("not renew"),
    };
    assert_eq!(ttl(&["pipeline-lock", "renew", "--lock", "x", "--owner", "me"]), Ttl::Keep);
    assert_eq!(
        ttl(&["pipeline-lock", "renew", "--lock", "x", "--owner", "me", "--disable-ttl"]),
        Ttl::NoEnd
    );
    assert_eq!(
        ttl(&["pipeline-lock", "renew", "--lock", "x", "--owner", "me", "--ttl", "5m"]),
        Ttl::For(Duration::from_secs(300))
    );
}
