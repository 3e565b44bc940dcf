//! Command groups of `ferrysync`. To add one (say `client`): add a variant to [`Command`]
//! holding its clap `Args`/`Subcommand` type, a module `cli/client.rs` with a
//! `pub fn run(args) -> Result<(), CliError>`, and one arm in [`run`].

mod client;
mod demo;
mod device;
mod serve;

use clap::{Parser, Subcommand};
use std::fmt;
use std::process::ExitCode;

/// Offline-first sync of master-detail data: server and tools.
#[derive(Debug, Parser)]
#[command(name = "ferrysync", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The command groups.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sync server.
    Serve(serve::ServeArgs),
    /// Manage devices and their tokens.
    #[command(subcommand)]
    Device(device::DeviceCommand),
    /// A phone-like device on a local SQLite file: add, update, delete, list, sync.
    Client(client::ClientArgs),
    /// Play the pattern's story end to end: a server, two devices, offline edits, a conflict,
    /// syncs; prints the id map and the final tables side by side.
    Demo(demo::DemoArgs),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Device(cmd) => device::run(cmd),
        Command::Client(args) => client::run(args),
        Command::Demo(args) => demo::run(args),
    }
}

/// A command's failure: one line saying what went wrong and how to fix it.
#[derive(Debug)]
pub struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<T: Into<String>> From<T> for CliError {
    fn from(s: T) -> Self {
        CliError(s.into())
    }
}

/// Prints a command-line parsing error on one line (help and version print in full).
pub fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            let rendered = e.render().to_string();
            let first = rendered
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments")
                .trim();
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("error: {first} (see `ferrysync --help`)");
            ExitCode::from(2)
        }
    }
}
