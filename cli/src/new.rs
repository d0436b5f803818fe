//! `wasmux new NAME [--lang rust|python|js] [--dir PATH]`: a plugin project
//! written from the templates embedded in this binary (its WIT world
//! included), anywhere on disk, with no path back to where wasmux was built.

use std::path::PathBuf;

use clap::Args;
use wasmux_toolchain::Language;

#[derive(Args)]
pub struct NewArgs {
    /// The plugin's name: lower-case letters, digits, - and _ (e.g. hello-world).
    name: String,
    /// The plugin's language: rust, python or js.
    #[arg(long, short, default_value = "rust")]
    lang: Language,
    /// Where to write the project (default: ./NAME). It must not exist, or be empty.
    #[arg(long, short)]
    dir: Option<PathBuf>,
}

pub fn new(args: NewArgs) -> anyhow::Result<()> {
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    let files = wasmux_toolchain::new_project(&args.name, args.lang, &dir)?;
    println!("Created {} plugin `{}` in {}:", describe(args.lang), args.name, dir.display());
    for file in files {
        println!("  {}", file.display());
    }
    let shown = dir.display().to_string();
    let cd = if shown.contains(char::is_whitespace) { format!("cd '{shown}'") } else { format!("cd {shown}") };
    println!("Next:");
    println!("  {cd}");
    println!("  wasmux build      # dist/{}.wasm", args.name);
    println!("  wasmux call dist/{}.wasm --content world", args.name);
    println!("  wasmux dev        # serve it on 127.0.0.1:65432, each save swapped in");
    Ok(())
}

fn describe(language: Language) -> &'static str {
    match language {
        Language::Rust => "a Rust",
        Language::Python => "a Python",
        Language::JavaScript => "a JavaScript",
    }
}
