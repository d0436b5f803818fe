//! `wasmux-docs-test`: the documentation's transcripts, run.
//!
//! Every ```console block of README.md and docs/**/*.md is a transcript:
//! `$ command` lines and the output that follows each. `cargo xtask
//! test-docs` runs each command in bash and compares what it printed with
//! the block, line by line, with snapbox's wildcards for what varies
//! (`[..]` inside a line, `...` for any lines). What a transcript needs
//! around it (a server running, a working directory, a time bound) is said
//! by an annotation, an HTML comment before the block that readers do not
//! see: `<!-- docs-test: server="…" wait=65432 -->`. A block that cannot run
//! here says why (`<!-- docs-test: skip="…" -->`) and is counted.
//!
//! `docs/testing-the-docs.md` is the reference of the annotation language.
//!
//! The modules, in the order a run goes through them: [`markdown`] finds
//! the fenced blocks and their [`annotation`]s, [`plan`] turns them into
//! sessions, [`runner`] runs each session in a child process (in a network
//! namespace of its own, [`netns`]), where [`session`] runs the commands
//! and compares their output. [`links`] checks that every relative link
//! names a file, and a heading that exists.

pub mod annotation;
pub mod links;
pub mod markdown;
pub mod netns;
pub mod plan;
pub mod runner;
pub mod session;
