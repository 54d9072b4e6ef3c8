//! Command-line arguments, parsed raw by clap ([`Cli::try_parse_sourced`]) and then checked
//! into values the commands can trust ([`Global::store_url`], [`AcquireArgs::options`],
//! [`lease`]), which [`crate::settings::Settings::build`] calls before anything connects.

use std::time::Duration;

use std::collections::BTreeSet;

use clap::builder::FalseyValueParser;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::ci::Scope;
use crate::error::{Error, Result};
use crate::queue::QueueMode;
use crate::store::StoreUrl;
use crate::store::aws::AwsOptions;

mod acquire;
mod state;
mod values;

pub use acquire::{AcquireArgs, RunArgs};
pub use state::{StateAction, StateArgs, StateGetArgs, StatePutArgs, StateWriteArgs};

pub use values::{check_slots, parse_duration, positive, validate_lock, validate_text};

/// Take a lock in one CI job and give it back in a later one.
#[derive(Debug, Parser)]
#[command(name = "pipeline-lock", version, about, after_long_help = exit_codes_help())]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Which options were given on the command line (not from the environment).
    #[arg(skip)]
    pub given: Given,
}

/// The options given on the command line, by clap id. An explicit flag beats the environment
/// (docs/design.md, "Leases in practice (v2)"): `--no-wait` wins over `PIPELINE_LOCK_WAIT`, and so on;
/// and `run` in CI takes its owner only from `--owner`, never from an inherited variable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Given(BTreeSet<String>);

impl Given {
    /// Was option `id` (clap's id: the field name) on the command line?
    pub fn has(&self, id: &str) -> bool {
        self.0.contains(id)
    }

    fn collect(m: &ArgMatches, into: &mut BTreeSet<String>) {
        for id in m.ids() {
            if m.value_source(id.as_str()) == Some(ValueSource::CommandLine) {
                into.insert(id.to_string());
            }
        }
        if let Some((_, sub)) = m.subcommand() {
            Self::collect(sub, into);
        }
    }

    /// Of options that exclude each other, the one that counts: the one on the command line
    /// when the others come from the environment. Two on the command line, or two from the
    /// environment, are a usage error naming both.
    fn one_of<'a>(&self, set: &[(&'a str, &str, bool)]) -> Result<Option<&'a str>> {
        let present: Vec<_> = set.iter().filter(|(_, _, on)| *on).collect();
        let explicit: Vec<_> = present.iter().filter(|(id, _, _)| self.has(id)).collect();
        match (present.as_slice(), explicit.as_slice()) {
            ([], _) => Ok(None),
            ([only], _) => Ok(Some(only.0)),
            (_, [winner]) => Ok(Some(winner.0)),
            (all, _) => {
                let names: Vec<String> = all
                    .iter()
                    .map(|(id, var, _)| {
                        let flag = format!("--{}", id.replace('_', "-"));
                        if self.has(id) { flag } else { format!("{var} (for {flag})") }
                    })
                    .collect();
                Err(Error::Usage(format!("{} exclude each other; give one", names.join(" and "))))
            }
        }
    }
}

impl Cli {
    /// Parses `args` and notes which options came from the command line.
    pub fn try_parse_sourced<I, T>(args: I) -> std::result::Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Cli::command().try_get_matches_from(args)?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        Given::collect(&matches, &mut cli.given.0);
        Ok(cli)
    }
}

fn exit_codes_help() -> String {
    let mut s = String::from("Exit codes:\n");
    for (code, meaning) in crate::exit::TABLE {
        s.push_str(&format!("  {code:>3}  {meaning}\n"));
    }
    s.push_str("  128+N: signal N stopped a wait (the queue entry is removed first)\n");
    s.push_str("  run: the command's own exit code; 128+N if it died of signal N\n");
    s
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// For people.
    #[default]
    Text,
    /// One JSON document, for scripts.
    Json,
    /// Dotenv lines PIPELINE_LOCK_NAME/OWNER/TOKEN/FENCE (a GitLab dotenv artifact).
    Env,
}

/// Options accepted before or after the command.
#[derive(Debug, Args)]
pub struct Global {
    /// Store URL: dynamodb://TABLE, s3://BUCKET/PREFIX or file:///DIR [default: dynamodb://pipeline-locks]
    #[arg(long, global = true, help_heading = "Store options", env = "PIPELINE_LOCK_STORE")]
    pub store: Option<String>,
    /// DynamoDB table (shorthand for --store dynamodb://TABLE).
    #[arg(long, global = true, help_heading = "Store options", env = "PIPELINE_LOCK_TABLE")]
    pub table: Option<String>,
    /// S3 bucket (shorthand for --store s3://BUCKET/PREFIX).
    #[arg(long, global = true, help_heading = "Store options", env = "PIPELINE_LOCK_BUCKET")]
    pub bucket: Option<String>,
    /// Key prefix within --bucket.
    #[arg(long, global = true, help_heading = "Store options", env = "PIPELINE_LOCK_PREFIX", requires = "bucket")]
    pub prefix: Option<String>,
    /// AWS endpoint (a local server, a VPC endpoint).
    #[arg(long, global = true, help_heading = "Store options", env = "PIPELINE_LOCK_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// AWS region.
    #[arg(long, global = true, help_heading = "Store options", env = "PIPELINE_LOCK_REGION")]
    pub region: Option<String>,
    /// Path-style S3 addressing (MinIO-like stores, emulators).
    #[arg(long, global = true, help_heading = "Store options", env = "PIPELINE_LOCK_S3_FORCE_PATH_STYLE", value_parser = FalseyValueParser::new(), default_value_t = false)]
    pub s3_force_path_style: bool,
    /// Lock name [default: the CI project path]; repeat it to take several locks, all or
    /// none (acquire, run, release, renew, status)
    #[arg(long, global = true, help_heading = "Lock options", env = "PIPELINE_LOCK_NAME", action = clap::ArgAction::Append)]
    pub lock: Vec<String>,
    /// Owner outside CI (in CI it comes from the pipeline).
    #[arg(long, global = true, help_heading = "Lock options", env = "PIPELINE_LOCK_OWNER")]
    pub owner: Option<String>,
    /// Whose lock: the pipeline (acquire/renew/release) or the job (run).
    #[arg(long, global = true, help_heading = "Lock options", env = "PIPELINE_LOCK_SCOPE", value_enum)]
    pub scope: Option<Scope>,
    /// Output format.
    #[arg(
        long,
        global = true,
        help_heading = "Lock options",
        env = "PIPELINE_LOCK_OUTPUT",
        value_enum,
        default_value_t
    )]
    pub output: Output,
    /// Skew margin for comparisons on the store clock.
    #[arg(
        long,
        global = true,
        help_heading = "Lock options",
        env = "PIPELINE_LOCK_CLOCK_MARGIN",
        default_value = "2s",
        allow_hyphen_values = true
    )]
    pub clock_margin: String,
    /// POST a JSON event (Slack-compatible `text`) here on takeovers, forced takeovers, lost
    /// leases and long waits (repeatable; the variable takes URLs separated by spaces).
    #[arg(
        long,
        global = true,
        help_heading = "Notify options",
        env = "PIPELINE_LOCK_NOTIFY",
        value_name = "URL",
        value_delimiter = ' '
    )]
    pub notify: Vec<String>,
    /// Notify when a wait lasts longer than this [default: 10m]
    #[arg(
        long,
        global = true,
        help_heading = "Notify options",
        env = "PIPELINE_LOCK_NOTIFY_AFTER",
        value_name = "D",
        allow_hyphen_values = true
    )]
    pub notify_after: Option<String>,
    /// More detail: progress on every poll (-v), debug logs (-vv).
    #[arg(short, long, global = true, help_heading = "Lock options", action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Take the lock for this pipeline.
    Acquire(AcquireArgs),
    /// Give back this pipeline's lock (idempotent).
    Release(ReleaseArgs),
    /// Extend this pipeline's lease.
    Renew(RenewArgs),
    /// Show one lock: holder, age, lease, fence, queue, history.
    Status(StatusArgs),
    /// Show the locks in the store, streamed page by page (filters and paging below).
    List(ListArgs),
    /// Check that the store can hold locks safely.
    Doctor,
    /// Hold the lock (job-scoped) around one command: `run [options] -- CMD ARGS...`.
    Run(RunArgs),
    /// A small value beside the locks, fenced: `state get|put|delete KEY`.
    State(StateArgs),
    /// Serve the store over HTTP: Tracker's lock API, a JSON API and a live page of every lock.
    Serve(ServeArgs),
}

/// Options of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0: any free port; the bound address is printed first).
    #[arg(long, env = "PIPELINE_LOCK_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Also serve Tracker's gRPC LockService on this address.
    #[arg(long, env = "PIPELINE_LOCK_GRPC_LISTEN", value_name = "ADDR")]
    pub grpc_listen: Option<String>,
    /// File holding the bearer token that writes (and reads, without --public-read) need;
    /// without it the service is read-only.
    #[arg(long, env = "PIPELINE_LOCK_TOKEN_FILE", value_name = "F")]
    pub token_file: Option<std::path::PathBuf>,
    /// Reads (the page, status, list) need no token.
    #[arg(long, env = "PIPELINE_LOCK_PUBLIC_READ", value_parser = FalseyValueParser::new(), default_value_t = false)]
    pub public_read: bool,
    /// Lease of a grant made through Tracker's API, which has no lease of its own.
    #[arg(long, env = "PIPELINE_LOCK_SERVE_TTL", default_value = "1h", allow_hyphen_values = true)]
    pub ttl: String,
    /// The longest wait an acquire request may ask for.
    #[arg(long, env = "PIPELINE_LOCK_SERVE_MAX_WAIT", default_value = "5m", allow_hyphen_values = true)]
    pub max_wait: String,
}

/// Options of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The order to show the queue in (the waiters' --queue).
    #[arg(long, env = "PIPELINE_LOCK_QUEUE", value_enum, default_value_t)]
    pub queue: QueueMode,
    /// Check that the lock has this many slots (exit 78 if its record says otherwise).
    #[arg(long, env = "PIPELINE_LOCK_SLOTS")]
    pub slots: Option<u32>,
}

/// Options of `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only locks whose names start with this (DynamoDB: a Scan filter; S3 and file: the key prefix).
    #[arg(long, value_name = "P")]
    pub name_prefix: Option<String>,
    /// Only held locks, exclusive or shared (an unreadable record counts as held: it is never free).
    #[arg(long, conflicts_with = "free")]
    pub held: bool,
    /// Only free locks (tombstones).
    #[arg(long)]
    pub free: bool,
    /// Only locks with entries in their queue.
    #[arg(long)]
    pub waiting: bool,
    /// Only locks held for longer than this (e.g. 1h): the exclusive holder's, or the oldest shared hold's, time.
    #[arg(long, value_name = "D", allow_hyphen_values = true)]
    pub older_than: Option<String>,
    /// Print at most N locks; the JSON's `next` (text: a line on stderr) then says where to go on.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Go on after this continuation token: the `next` of the page before.
    #[arg(long, visible_alias = "continue", value_name = "TOKEN")]
    pub after: Option<String>,
}

/// Options of `release`.
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// Break glass: release whoever holds it, or clear an unreadable record (needs --reason).
    #[arg(long, requires = "reason")]
    pub force: bool,
    /// Why (with --force).
    #[arg(long, env = "PIPELINE_LOCK_REASON")]
    pub reason: Option<String>,
    /// Exit 72 if someone else holds the lock.
    #[arg(long, env = "PIPELINE_LOCK_STRICT", value_parser = FalseyValueParser::new(), default_value_t = false)]
    pub strict: bool,
    /// The grant's token (set by acquire's outputs); by default the owner identifies the grant.
    #[arg(long, env = "PIPELINE_LOCK_TOKEN")]
    pub token: Option<String>,
}

/// Options of `renew`.
#[derive(Debug, Args)]
pub struct RenewArgs {
    /// New lease length from now [default: the grant's own]
    #[arg(long, env = "PIPELINE_LOCK_TTL", allow_hyphen_values = true)]
    pub ttl: Option<String>,
    /// Renew without a lease end.
    #[arg(long, env = "PIPELINE_LOCK_DISABLE_TTL", value_parser = FalseyValueParser::new(), default_value_t = false)]
    pub disable_ttl: bool,
    /// The grant's token (set by acquire's outputs).
    #[arg(long, env = "PIPELINE_LOCK_TOKEN")]
    pub token: Option<String>,
}

/// The lease: `--ttl`, `--disable-ttl` (whichever is explicit, see [`Given`]), or `default`.
pub fn lease(ttl: Option<&str>, disable: bool, given: &Given, default: Option<Duration>) -> Result<Option<Duration>> {
    match given.one_of(&[
        ("ttl", "PIPELINE_LOCK_TTL", ttl.is_some()),
        ("disable_ttl", "PIPELINE_LOCK_DISABLE_TTL", disable),
    ])? {
        Some("disable_ttl") => Ok(None),
        Some(_) => positive("--ttl", ttl.unwrap_or_default()).map(Some),
        None => Ok(default),
    }
}

/// `acquire`'s default lease.
pub const ACQUIRE_TTL: Duration = Duration::from_secs(3600);
/// `run`'s default lease: short, because its heartbeat keeps it alive and a killed `run` must
/// not block its own re-run for long (docs/design.md, "Leases in practice (v2)").
pub const RUN_TTL: Duration = Duration::from_secs(120);

impl Global {
    /// The store URL from `--store`, `--table` or `--bucket`/`--prefix`; the one on the
    /// command line wins over the others' environment variables.
    pub fn store_url(&self, given: &Given) -> Result<StoreUrl> {
        let which = given.one_of(&[
            ("store", "PIPELINE_LOCK_STORE", self.store.is_some()),
            ("table", "PIPELINE_LOCK_TABLE", self.table.is_some()),
            ("bucket", "PIPELINE_LOCK_BUCKET", self.bucket.is_some()),
        ])?;
        if self.prefix.is_some() && which != Some("bucket") {
            return Err(Error::Usage(
                "--prefix only goes with --bucket; with --store put the prefix in the URL (s3://BUCKET/PREFIX)".into(),
            ));
        }
        match (which, &self.store, &self.table, &self.bucket) {
            (Some("table"), _, Some(table), _) => StoreUrl::dynamodb(table),
            (Some("bucket"), _, _, Some(bucket)) => StoreUrl::s3(bucket, self.prefix.as_deref().unwrap_or("")),
            (Some("store"), Some(url), _, _) => StoreUrl::parse(url),
            _ => StoreUrl::dynamodb(crate::store::url::DEFAULT_TABLE),
        }
    }

    /// AWS overrides.
    pub fn aws(&self) -> AwsOptions {
        AwsOptions {
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
            force_path_style: self.s3_force_path_style,
        }
    }

    /// The margin, validated.
    pub fn clock_margin(&self) -> Result<Duration> {
        parse_duration("--clock-margin", &self.clock_margin)
    }
}

#[cfg(test)]
mod tests;
