//! The `kvprobe` binary: parse, dispatch, print the error chain, exit.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = kvprobe::cmd::Cli::parse();
    match kvprobe::cmd::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kvprobe: error: {:#}", e.error);
            ExitCode::from(e.code)
        }
    }
}
