//! `kvprobe __initiator`: the initiator process of a sweep (started by `sweep`).
//!
//! Reads a [`SweepPlan`] as JSON on stdin and writes one JSON [`Event`] per
//! line on stdout.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

use super::CliError;
use crate::engine::{Event, SweepPlan};
use crate::nixl::Nixl;

/// Arguments of `__initiator` (the plan comes on stdin).
#[derive(Debug, clap::Args)]
pub struct InitiatorArgs {}

fn emit(out: &mut std::fs::File, e: &Event) {
    if let Ok(mut line) = serde_json::to_string(e) {
        line.push('\n');
        // one write per event, so a line is never split
        let _ = out.write_all(line.as_bytes());
    }
}

/// Runs the initiator.
pub fn run(_: InitiatorArgs) -> Result<ExitCode, CliError> {
    let mut out = crate::child::private_stdout().context("setting up the event stream").map_err(CliError::usage)?;
    let plan: SweepPlan = serde_json::from_reader(std::io::stdin().lock())
        .context("reading the sweep plan from stdin")
        .map_err(CliError::usage)?;
    let nixl = if plan.backends.iter().any(|b| b.is_nixl()) { Some(Nixl::open(&plan.nixl_lib)) } else { None };
    let result = match nixl.transpose() {
        Ok(nixl) => crate::engine::initiator::run(&plan, nixl.as_ref(), &mut |e| emit(&mut out, &e)),
        Err(e) => Err(crate::engine::EngineError::from(e)),
    };
    match result {
        Ok(target_drop_errors) => {
            let mut drop_errors = crate::nixl::error::take_drop_errors();
            drop_errors.extend(target_drop_errors);
            emit(&mut out, &Event::Done { drop_errors });
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            emit(&mut out, &Event::Failed { error: e.to_string() });
            Ok(ExitCode::from(1))
        }
    }
}
