//! Entry point: parse the command line, set up logging and signals, run a subcommand,
//! and turn its outcome into the documented exit status.

use std::process::ExitCode;

use metrics_flow::cli::{Cli, Command};
use metrics_flow::error::UsageError;
use metrics_flow::pubsub;
use metrics_flow::shutdown::Shutdown;

fn main() -> ExitCode {
    let cli = match Cli::parse_args() {
        Ok(cli) => cli,
        Err(error) => return usage_failure(&error),
    };
    metrics_flow::logging::init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("metrics-flow: {}", error_line(&error));
            if error.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let shutdown = Shutdown::install()?;
    match cli.command {
        Command::Pub(args) => pubsub::publish::run(args, shutdown),
        Command::Sub(args) => pubsub::subscribe::run(args, shutdown),
        Command::Report(args) => pubsub::report::run(args, shutdown),
        Command::Targets(command) => pubsub::publish::fleet::command::run(command, shutdown),
    }
}

/// Help and version go to stdout with status 0; real usage errors become one line.
fn usage_failure(error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = error.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            ExitCode::from(2)
        }
        _ => {
            let rendered = error.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            eprintln!("metrics-flow: {}", first.trim_start_matches("error: "));
            ExitCode::from(2)
        }
    }
}

/// The error chain joined on one line, the way a user reads it.
fn error_line(error: &anyhow::Error) -> String {
    format!("{error:#}").replace('\n', " ")
}
