//! `moat`: the single binary. A thin shell over the libraries: argument parsing, output
//! formatting, and exit codes (0 ok, 1 runtime error, 2 usage error). Errors print as one line
//! `error[CODE]: message`.

mod cli;
mod client;
mod commands;
mod output;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error[runtime]: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(commands::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", e.line());
            for hint in &e.hints {
                eprintln!("  hint: {hint}");
            }
            std::process::ExitCode::from(e.exit_code)
        }
    }
}
