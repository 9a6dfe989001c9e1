//! The `nano-connect` command: parses the command line, sets up logging, and calls the
//! library. Each subcommand lives in its own file under `src/cli/`.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(args.verbose, args.quiet, args.reports_itself());
    let mut builder = match args.runtime() {
        cli::Runtime::Multi => tokio::runtime::Builder::new_multi_thread(),
        cli::Runtime::Current => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("nano-connect: cannot start the async runtime: {e}");
            return ExitCode::from(cli::exit::FAILURE);
        }
    };
    let code = runtime.block_on(cli::run(args));
    // Do not wait for blocking tasks (stdin readers) to finish.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    ExitCode::from(code)
}
