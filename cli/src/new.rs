//! `wasmux new NAME [--lang rust|python|js] [--stateful] [--dir PATH]`: a
//! plugin project written from the templates embedded in this binary (its
//! WIT world included), anywhere on disk, with no path back to where wasmux
//! was built. `--stateful` (Python, JavaScript) writes a plugin of the
//! world `stateful-handler` that counts with `wasi:keyvalue`.

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
    /// A plugin that keeps state (Python and JavaScript): built for the
    /// world `stateful-handler`, it counts with wasi:keyvalue (`incr NAME`,
    /// `get NAME`).
    #[arg(long)]
    stateful: bool,
}

pub fn new(args: NewArgs) -> anyhow::Result<()> {
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    let files = wasmux_toolchain::new_project_with(&args.name, args.lang, args.stateful, &dir)?;
    let kind = if args.stateful { format!("a stateful {}", describe(args.lang).trim_start_matches("a ")) } else { describe(args.lang).to_owned() };
    println!("Created {kind} plugin `{}` in {}:", args.name, dir.display());
    for file in files {
        println!("  {}", file.display());
    }
    println!("Next:");
    println!("  cd {}", shell_quoted(&dir.display().to_string()));
    println!("  wasmux build      # dist/{}.wasm", args.name);
    if args.stateful {
        println!("  wasmux call dist/{}.wasm --content 'incr visits' --data-dir state", args.name);
    } else {
        println!("  wasmux call dist/{}.wasm --content world", args.name);
    }
    println!("  wasmux dev        # serve it on 127.0.0.1:65432, each save swapped in");
    Ok(())
}

/// `text` as a POSIX shell reads it back as one word: as it is if every
/// character is one no shell treats specially, else in single quotes, each
/// `'` in it written `'\''` (close the quotes, an escaped quote, open them
/// again), so that the `cd` line can be pasted.
fn shell_quoted(text: &str) -> String {
    let plain = !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || "-_./,:+@%=".contains(c));
    if plain { text.to_owned() } else { format!("'{}'", text.replace('\'', r"'\''")) }
}

fn describe(language: Language) -> &'static str {
    match language {
        Language::Rust => "a Rust",
        Language::Python => "a Python",
        Language::JavaScript => "a JavaScript",
    }
}
