//! `wasmux bench`: the guide's multi-connection client grown into a load
//! generator for any server of the guide's protocol.
//!
//! It opens `--connections` clients, each sending requests from a mix
//! (`search`, `binary`, `custom`) in one of three ways: a new connection per
//! request (`connect`, what the guide's client does), one request at a time
//! on a kept connection (`persistent`), or up to `--depth` requests in
//! flight on a kept connection (`pipelined`). Every answer is checked: the
//! guide's requests must get the guide's answers byte for byte, a custom
//! request at least a well-formed message that is not an error answer.
//!
//! Requests are encoded once before the run and expected answers computed
//! once, so the generator spends its time on sockets, not on JSON: on a
//! shared machine, a load generator that burns CPU hides the server's cost.
//!
//! | file | what |
//! | --- | --- |
//! | `mod.rs` | the run, from arguments to report |
//! | `args.rs` | [`BenchArgs`]: the command line |
//! | `plan.rs` | [`Plan`]: the arguments validated, the requests encoded and their answers computed |
//! | `driver.rs` | [`run`]: the connections sending and checking, counting as they go |
//! | `report.rs` | [`Report`]: throughput, latency percentiles, errors by kind |

mod args;
mod driver;
mod plan;
mod report;

use std::io::IsTerminal as _;


pub use args::BenchArgs;
pub use driver::run;
pub use plan::Plan;

/// Runs `wasmux bench`: the load, then the report on stdout. Fails if any
/// answer was wrong or missing, so scripts notice.
pub async fn main(args: BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    let plan = Plan::from_args(&args).await?;
    let progress = !args.json && std::io::stderr().is_terminal();
    let report = run(&plan, progress).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(if report.errors == 0 && report.ok > 0 { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE })
}
