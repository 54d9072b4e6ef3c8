use super::*;

#[test]
fn durations() {
    assert_eq!(parse_duration("--ttl", "3600").unwrap(), Duration::from_secs(3600));
    assert_eq!(parse_duration("--ttl", "1h 30m").unwrap(), Duration::from_secs(5400));
    assert_eq!(parse_duration("--ttl", "90s").unwrap(), Duration::from_secs(90));
    for bad in ["banana", "-5", "", "99999999999999999999999", "1000000000000s", "5 parsecs"] {
        let err = parse_duration("--ttl", bad).unwrap_err();
        assert!(matches!(err, Error::Usage(_)), "{bad}: {err}");
        assert!(err.to_string().contains("--ttl"), "{err}");
    }
    assert!(positive("--ttl", "0").unwrap_err().to_string().contains("longer than 0"));
}

#[test]
fn lock_names() {
    assert!(validate_lock("group/app").is_ok());
    assert!(validate_lock("").is_err());
    assert!(validate_lock(&"x".repeat(1025)).is_err());
    assert!(validate_lock(&"x".repeat(1024)).is_ok());
    assert!(validate_lock("a\nb").unwrap_err().to_string().contains("control"));
}

#[test]
fn store_options_accepted_before_or_after_the_command() {
    let a = Cli::try_parse_sourced(["pipeline-lock", "--table", "tbl", "acquire", "--no-wait"]).unwrap();
    let b = Cli::try_parse_sourced(["pipeline-lock", "acquire", "--table", "tbl", "--no-wait"]).unwrap();
    assert_eq!(a.global.store_url(&a.given).unwrap(), b.global.store_url(&b.given).unwrap());
    assert_eq!(a.global.store_url(&a.given).unwrap(), StoreUrl::DynamoDb { table: "tbl".into() });
}

#[test]
fn queue_options() {
    let a = Cli::try_parse_from([
        "pipeline-lock",
        "acquire",
        "--queue",
        "newest",
        "--supersede",
        "--ordinal",
        "7",
        "--no-ci-api",
    ])
    .unwrap();
    let Command::Acquire(args) = a.command else { panic!("not acquire") };
    let opts = args.options(Duration::from_secs(2), &Given::default(), ACQUIRE_TTL).unwrap();
    assert_eq!((opts.queue, opts.supersede, opts.ordinal), (QueueMode::Newest, true, Some(7)));
    assert_eq!(opts.prune_floor, Duration::from_secs(30));
    assert_eq!(args.ci_api_wanted(), Some(false));
    let b = Cli::try_parse_sourced(["pipeline-lock", "acquire", "--ci-api"]).unwrap();
    let Command::Acquire(args) = b.command else { panic!("not acquire") };
    assert_eq!((args.ci_api_wanted(), args.queue), (Some(true), QueueMode::Fifo));
    assert!(Cli::try_parse_from(["pipeline-lock", "acquire", "--queue", "lifo"]).is_err());
}

#[test]
fn wait_and_no_wait_conflict_on_the_command_line() {
    let cli = Cli::try_parse_sourced(["pipeline-lock", "acquire", "--wait", "5s", "--no-wait"]).unwrap();
    let Command::Acquire(args) = &cli.command else { panic!("not acquire") };
    let err = args.options(Duration::from_secs(2), &cli.given, ACQUIRE_TTL).unwrap_err();
    assert!(matches!(err, Error::Usage(_)), "{err}");
    assert!(err.to_string().contains("--wait and --no-wait"), "{err}");
}

#[test]
fn the_flag_on_the_command_line_beats_the_environment() {
    // What clap would have taken from PIPELINE_LOCK_WAIT / _TTL / _TABLE: set, but not given.
    let given = |ids: &[&str]| Given(ids.iter().map(|s| s.to_string()).collect());
    let mut cli = Cli::try_parse_sourced(["pipeline-lock", "acquire", "--no-wait", "--disable-ttl"]).unwrap();
    let Command::Acquire(args) = &mut cli.command else {
        panic!("not acquire")
    };
    args.wait = Some("10m".into());
    args.ttl = Some("1h".into());
    let opts = args.options(Duration::from_secs(2), &cli.given, ACQUIRE_TTL).unwrap();
    assert_eq!((opts.wait, opts.ttl), (crate::Wait::No, None));
    // Both from the environment: neither is explicit, so that is an error naming both.
    let err = args.options(Duration::from_secs(2), &given(&[]), ACQUIRE_TTL).unwrap_err().to_string();
    assert!(
        err.contains("PIPELINE_LOCK_WAIT (for --wait)") && err.contains("PIPELINE_LOCK_NO_WAIT"),
        "{err}"
    );
    let mut g = Cli::try_parse_sourced(["pipeline-lock", "--store", "file:///tmp/x", "status"]).unwrap();
    g.global.table = Some("from-env".into());
    assert_eq!(g.global.store_url(&g.given).unwrap(), StoreUrl::File { dir: "/tmp/x".into() });
    g.given = given(&["table"]);
    assert_eq!(g.global.store_url(&g.given).unwrap(), StoreUrl::DynamoDb { table: "from-env".into() });
}
