//! A stand-in for `wasmux new` and `wasmux build` until the `wasmux` command
//! has them, and the way the lead can see how they print:
//!
//! ```sh
//! cargo run -p wasmux-toolchain --example plugin -- new hello --lang python --dir /tmp/hello
//! cargo run -p wasmux-toolchain --example plugin -- build /tmp/hello [--out DIR]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use wasmux_toolchain::{Language, ToolFailed};

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A tool's own messages are above: one line, no chain.
            match e.downcast_ref::<ToolFailed>() {
                Some(failed) => eprintln!("wasmux: {failed}"),
                None => eprintln!("wasmux: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<()> {
    let mut args = args.into_iter();
    let command = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let option = |name: &str| rest.iter().position(|a| a == name).and_then(|i| rest.get(i + 1)).cloned();
    let positional = rest.iter().enumerate().find(|(i, a)| !a.starts_with("--") && (*i == 0 || !rest[i - 1].starts_with("--"))).map(|(_, a)| a.clone());
    match command.as_str() {
        "new" => {
            let name = positional.context("usage: new NAME [--lang rust|python|js] [--dir PATH]")?;
            let language: Language = option("--lang").as_deref().unwrap_or("rust").parse()?;
            let dir = option("--dir").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(&name));
            let files = wasmux_toolchain::new_project(&name, language, &dir)?;
            println!("wrote a {language} plugin project in {}:", dir.display());
            for file in files {
                println!("  {}", file.display());
            }
        }
        "build" => {
            let dir = PathBuf::from(positional.unwrap_or_else(|| ".".into()));
            let out_dir = option("--out").map(PathBuf::from).unwrap_or_else(|| dir.join("dist"));
            let started = Instant::now();
            let out = wasmux_toolchain::build_project(&dir, &out_dir)?;
            let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
            println!("built {} ({:.1} MB) in {:.1} s", out.display(), size as f64 / 1e6, started.elapsed().as_secs_f64());
        }
        _ => bail!("usage: plugin new NAME [--lang L] [--dir D] | plugin build [DIR] [--out DIR]"),
    }
    Ok(())
}
