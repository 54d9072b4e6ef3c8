//! The `pipeline-lock` binary: parse, set up tracing, dispatch, map errors to exit codes.

use std::process::ExitCode;

use pipeline_lock::{app, cli::Cli, exit, report};

fn main() -> ExitCode {
    let cli = match Cli::try_parse_sourced(std::env::args_os()) {
        Ok(cli) => cli,
        // clap prints help/version (exit 0) and usage errors (exit 2) itself.
        Err(e) => e.exit(),
    };
    // `serve` logs every request (its access log) unless told otherwise, with times, and
    // without colour codes when its log goes to a file or a collector.
    let serve = matches!(cli.command, pipeline_lock::cli::Command::Serve(_));
    let filter = match (cli.global.verbose, serve) {
        (0, false) => "warn",
        (0, true) | (1, _) => "info",
        _ => "debug",
    };
    let log = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("PIPELINE_LOCK_LOG").unwrap_or_else(|_| filter.into()))
        .with_writer(std::io::stderr)
        .with_target(false);
    if serve {
        log.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init();
    } else {
        log.without_time().init();
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pipeline-lock: error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::UNEXPECTED);
        }
    };
    let env: app::EnvFn = Box::new(|k| std::env::var(k).ok());
    match runtime.block_on(app::run(cli, env)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("pipeline-lock: error: {}", report::chain(&e));
            ExitCode::from(e.exit_code())
        }
    }
}
