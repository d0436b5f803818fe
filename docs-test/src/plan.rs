//! What to run: Markdown files ─▶ sessions of transcripts, blocks marked
//! not run (with their reasons), and code listings to check against files.
//!
//! The meaning of each annotation key is here; `docs/testing-the-docs.md`
//! is the reader's reference for the same language.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::annotation::Attribute;
use crate::markdown::{self, Fence};

/// How long a session may take, unless its blocks say `timeout=`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// One `$ command` of a transcript and what it should print.
#[derive(Clone, Debug)]
pub struct Command {
    /// The command's lines as the document shows them (`$ …` and any
    /// continuation lines), each ending with a new line.
    pub shown: String,
    /// The bash code run: the command without its `$ `, shortened as the
    /// block's `shorten` says.
    pub script: String,
    /// The exit status the transcript expects.
    pub status: Status,
    /// The output the transcript shows, every line ending with a new line.
    pub output: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// 0 (a command with no `?` line).
    Success,
    /// Anything but 0 (`? failed`).
    Failure,
    /// This code (`? N`).
    Code(i32),
}

impl Status {
    pub fn accepts(self, code: i32) -> bool {
        match self {
            Status::Success => code == 0,
            Status::Failure => code != 0,
            Status::Code(expected) => code == expected,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Success => write!(f, "0"),
            Status::Failure => write!(f, "a failure (not 0)"),
            Status::Code(code) => write!(f, "{code}"),
        }
    }
}

/// A ```console block that runs.
#[derive(Clone, Debug)]
pub struct Transcript {
    /// The document, relative to the root.
    pub file: PathBuf,
    /// The line of its opening fence.
    pub line: usize,
    pub commands: Vec<Command>,
    /// The reader runs it in a terminal of its own and leaves it running:
    /// started in the background, interrupted (SIGINT, as Ctrl-C) when its
    /// session ends, and only then compared.
    pub background: bool,
    /// Programs the prose says are running, started before the block and
    /// stopped when the session ends; their output is not compared.
    pub servers: Vec<String>,
    /// Ports that must be listening before the block's commands run (or,
    /// for a background block, before the session goes on).
    pub waits: Vec<u16>,
    /// Text that must appear in the output of what this block started (its
    /// servers, or itself if background) before the session goes on; for a
    /// block that starts nothing, in the output of the session's servers
    /// and background blocks, before its commands run.
    pub wait_output: Vec<String>,
    /// Hidden commands run first in the block's shell; they must succeed.
    pub setup: Vec<String>,
    /// Its lines may come in any order (what two connections print
    /// depends on timing); `...` then allows lines it does not show.
    pub unordered: bool,
}

impl Transcript {
    /// `FILE:LINE`, how reports name a block.
    pub fn place(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkDir {
    /// The repository root (the default): the documents' paths work as written.
    Repo,
    /// A new empty directory, removed afterwards.
    Temp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    /// A network namespace of its own: its own loopback and ports, no way out.
    Isolated,
    /// The machine's network (for a build that downloads); such sessions run one at a time.
    Host,
}

/// Transcripts that run in order in one working directory and one network.
#[derive(Clone, Debug)]
pub struct Session {
    pub file: PathBuf,
    /// Its position among the file's sessions, which names it for a child process.
    pub index: usize,
    pub name: Option<String>,
    pub work_dir: WorkDir,
    pub network: Network,
    pub timeout: Duration,
    pub transcripts: Vec<Transcript>,
}

impl Session {
    pub fn place(&self) -> String {
        let first = self.transcripts.first().map(|t| t.line).unwrap_or_default();
        match &self.name {
            Some(name) => format!("{}:{} (session {name})", self.file.display(), first),
            None => format!("{}:{}", self.file.display(), first),
        }
    }
}

/// A console block marked not to run.
#[derive(Clone, Debug)]
pub struct NotRun {
    pub file: PathBuf,
    pub line: usize,
    pub reason: String,
}

/// A code block that must be a file of the repository, byte for byte.
#[derive(Clone, Debug)]
pub struct Listing {
    pub file: PathBuf,
    pub line: usize,
    pub path: PathBuf,
    pub body: String,
}

/// Everything one document asks for.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub sessions: Vec<Session>,
    pub not_run: Vec<NotRun>,
    pub listings: Vec<Listing>,
    /// `FILE:LINE: message` for every mistake in the annotations.
    pub errors: Vec<String>,
}

/// Reads `root/file` (a path relative to root) into its plan.
pub fn plan_file(root: &Path, file: &Path) -> Plan {
    let mut plan = Plan::default();
    let source = match std::fs::read_to_string(root.join(file)) {
        Ok(source) => source,
        Err(e) => {
            plan.errors.push(format!("{}: cannot read: {e}", file.display()));
            return plan;
        }
    };
    match markdown::fences(&source) {
        Ok(fences) => plan_fences(file, &fences, &mut plan),
        Err(errors) => {
            plan.errors.extend(errors.into_iter().map(|(line, e)| format!("{}:{line}: {e}", file.display())));
        }
    }
    plan
}

/// Session-wide settings as blocks give them, checked to agree.
struct SessionBuilder {
    name: Option<String>,
    work_dir: Option<WorkDir>,
    network: Option<Network>,
    timeout: Option<Duration>,
    transcripts: Vec<Transcript>,
}

fn plan_fences(file: &Path, fences: &[Fence], plan: &mut Plan) {
    let mut sessions: Vec<SessionBuilder> = Vec::new();
    let mut named: BTreeMap<String, usize> = BTreeMap::new();
    for fence in fences {
        let place = format!("{}:{}", file.display(), fence.annotation_line.unwrap_or(fence.line));
        let mut error = |message: String| plan.errors.push(format!("{place}: {message}"));
        if fence.lang != "console" {
            match fence.attributes.as_slice() {
                [] => {}
                [Attribute { key, value: Some(path) }] if key == "file" => plan.listings.push(Listing {
                    file: file.to_owned(),
                    line: fence.line,
                    path: PathBuf::from(path),
                    body: fence.body.clone(),
                }),
                _ => error(format!("a ```{} block takes only file=\"PATH\" (transcripts are ```console blocks)", fence.lang)),
            }
            continue;
        }
        let block = match read_block(fence) {
            Ok(block) => block,
            Err(e) => {
                error(e);
                continue;
            }
        };
        let commands = match parse_commands(&fence.body, &block.shorten) {
            Ok(commands) => commands,
            Err(e) => {
                error(e);
                continue;
            }
        };
        if let Some(reason) = block.skip {
            plan.not_run.push(NotRun { file: file.to_owned(), line: fence.line, reason });
            continue;
        }
        for (from, to) in &block.shorten {
            if !fence.note_after.contains(to.as_str()) {
                error(format!(
                    "shorten=\"{from} => {to}\" needs a visible note in the paragraph after the block that mentions `{to}` (a reader must see how test-docs runs it)"
                ));
            }
        }
        if block.background && commands.is_empty() {
            error("a background block needs a command".into());
        }
        let transcript = Transcript {
            file: file.to_owned(),
            line: fence.line,
            commands,
            background: block.background,
            servers: block.servers,
            waits: block.waits,
            wait_output: block.wait_output,
            setup: block.setup,
            unordered: block.unordered,
        };
        let index = match &block.session {
            Some(name) => *named.entry(name.clone()).or_insert_with(|| {
                sessions.push(SessionBuilder { name: Some(name.clone()), work_dir: None, network: None, timeout: None, transcripts: Vec::new() });
                sessions.len() - 1
            }),
            None => {
                sessions.push(SessionBuilder { name: None, work_dir: None, network: None, timeout: None, transcripts: Vec::new() });
                sessions.len() - 1
            }
        };
        let session = &mut sessions[index];
        for (setting, current, given) in [
            ("cwd", session.work_dir.map(|w| format!("{w:?}")), block.work_dir.map(|w| format!("{w:?}"))),
            ("network", session.network.map(|n| format!("{n:?}")), block.network.map(|n| format!("{n:?}"))),
        ] {
            if let (Some(current), Some(given)) = (current, given)
                && current != given
            {
                error(format!("{setting} differs from an earlier block of the same session"));
            }
        }
        session.work_dir = session.work_dir.or(block.work_dir);
        session.network = session.network.or(block.network);
        session.timeout = match (session.timeout, block.timeout) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        session.transcripts.push(transcript);
    }
    for (index, session) in sessions.into_iter().enumerate() {
        plan.sessions.push(Session {
            file: file.to_owned(),
            index,
            name: session.name,
            work_dir: session.work_dir.unwrap_or(WorkDir::Repo),
            network: session.network.unwrap_or(Network::Isolated),
            timeout: session.timeout.unwrap_or(DEFAULT_TIMEOUT),
            transcripts: session.transcripts,
        });
    }
}

/// A console block's annotation, read.
#[derive(Default)]
struct Block {
    skip: Option<String>,
    session: Option<String>,
    work_dir: Option<WorkDir>,
    network: Option<Network>,
    timeout: Option<Duration>,
    background: bool,
    unordered: bool,
    servers: Vec<String>,
    waits: Vec<u16>,
    wait_output: Vec<String>,
    setup: Vec<String>,
    shorten: Vec<(String, String)>,
}

fn read_block(fence: &Fence) -> Result<Block, String> {
    let mut block = Block::default();
    for Attribute { key, value } in &fence.attributes {
        let value = value.as_deref();
        let needs = |what: &str| value.ok_or_else(|| format!("`{key}` needs a value: {key}=\"{what}\""));
        match key.as_str() {
            "skip" => block.skip = Some(needs("why it cannot run here")?.to_owned()),
            "session" => block.session = Some(needs("NAME")?.to_owned()),
            "cwd" => {
                block.work_dir = Some(match needs("repo|tmp")? {
                    "repo" => WorkDir::Repo,
                    "tmp" => WorkDir::Temp,
                    other => return Err(format!("cwd=\"{other}\": write cwd=\"repo\" or cwd=\"tmp\"")),
                })
            }
            "network" => {
                block.network = Some(match needs("isolated|host")? {
                    "isolated" => Network::Isolated,
                    "host" => Network::Host,
                    other => return Err(format!("network=\"{other}\": write network=\"isolated\" or network=\"host\"")),
                })
            }
            "timeout" => {
                let text = needs("DURATION")?;
                block.timeout = Some(humantime::parse_duration(text).map_err(|e| format!("timeout=\"{text}\": {e}"))?);
            }
            "background" if value.is_none() => block.background = true,
            "unordered" if value.is_none() => block.unordered = true,
            "server" => block.servers.push(needs("COMMAND")?.to_owned()),
            "wait" => {
                let text = needs("PORT")?;
                block.waits.push(text.parse().map_err(|_| format!("wait=\"{text}\": give a port number"))?);
            }
            "wait-output" => block.wait_output.push(needs("TEXT")?.to_owned()),
            "setup" => block.setup.push(needs("COMMAND")?.to_owned()),
            "shorten" => {
                let text = needs("FROM => TO")?;
                let (from, to) = text.split_once(" => ").ok_or_else(|| format!("shorten=\"{text}\": write shorten=\"FROM => TO\""))?;
                block.shorten.push((from.to_owned(), to.to_owned()));
            }
            "file" => return Err("file=\"PATH\" is for code listings, not for ```console transcripts".into()),
            _ => {
                return Err(format!(
                    "unknown attribute `{key}`{} (known: skip, session, cwd, network, timeout, background, unordered, server, wait, wait-output, setup, shorten; file for listings)",
                    if value.is_none() { "" } else { "=…" }
                ));
            }
        }
    }
    if block.skip.is_some() && fence.attributes.len() > 1 {
        return Err("skip=\"…\" stands alone: a block that does not run needs nothing else".into());
    }
    Ok(block)
}

/// Splits a transcript into its commands: `$ ` starts a command (a line
/// ending with `\` continues it), `? failed` or `? N` right after it gives
/// its exit status, and every other line is output of the command above.
pub fn parse_commands(body: &str, shorten: &[(String, String)]) -> Result<Vec<Command>, String> {
    let mut commands: Vec<Command> = Vec::new();
    let mut lines = body.lines().peekable();
    let mut used = vec![false; shorten.len()];
    while let Some(line) = lines.next() {
        if let Some(first) = line.strip_prefix("$ ").or(if line == "$" { Some("") } else { None }) {
            if first.trim().is_empty() {
                return Err("a `$` line without a command".into());
            }
            let mut shown = format!("{line}\n");
            let mut script = first.to_owned();
            let mut last = line;
            while last.ends_with('\\') {
                let Some(next) = lines.next() else { return Err(format!("`{line}` continues past the end of the block")) };
                shown.push_str(next);
                shown.push('\n');
                script.push('\n');
                script.push_str(next);
                last = next;
            }
            for (i, (from, to)) in shorten.iter().enumerate() {
                if script.contains(from.as_str()) {
                    script = script.replace(from.as_str(), to);
                    used[i] = true;
                }
            }
            let mut status = Status::Success;
            if let Some(status_line) = lines.peek().and_then(|l| l.strip_prefix("? ")) {
                status = match status_line.trim() {
                    "failed" => Status::Failure,
                    "success" => Status::Success,
                    code => Status::Code(code.parse().map_err(|_| format!("`? {code}`: write `? failed` or `? N` with N the exit status"))?),
                };
                lines.next();
            }
            commands.push(Command { shown, script, status, output: String::new() });
        } else {
            let Some(command) = commands.last_mut() else {
                return Err(format!("output before any command: `{line}` (a transcript starts with a `$ ` line)"));
            };
            command.output.push_str(line);
            command.output.push('\n');
        }
    }
    if let Some(i) = used.iter().position(|used| !used) {
        return Err(format!("shorten=\"{} => …\": no command of the block contains `{}`", shorten[i].0, shorten[i].0));
    }
    Ok(commands)
}

/// The Markdown files test-docs reads: README.md, then every `.md` under
/// docs/ (sorted, recursively).
pub fn documents(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = vec![PathBuf::from("README.md")];
    let mut found = Vec::new();
    collect_markdown(root, Path::new("docs"), &mut found)?;
    found.sort();
    files.extend(found);
    Ok(files)
}

fn collect_markdown(root: &Path, dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(root.join(dir)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = dir.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            collect_markdown(root, &path, found)?;
        } else if path.extension().is_some_and(|e| e == "md") {
            found.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_statuses_and_output() {
        let body = "$ echo a \\\n  b\na b\n$ false\n? failed\n$ exit 3\n? 3\n$ ls\n...\n";
        let commands = parse_commands(body, &[]).unwrap();
        assert_eq!(commands.len(), 4);
        assert_eq!(commands[0].shown, "$ echo a \\\n  b\n");
        assert_eq!(commands[0].script, "echo a \\\n  b");
        assert_eq!(commands[0].output, "a b\n");
        assert_eq!(commands[1].status, Status::Failure);
        assert_eq!(commands[2].status, Status::Code(3));
        assert_eq!(commands[3].output, "...\n");
    }

    #[test]
    fn shorten_replaces_in_commands_only() {
        let shorten = [("60s".to_owned(), "2s".to_owned())];
        let commands = parse_commands("$ sleep 60s\nslept 60s\n", &shorten).unwrap();
        assert_eq!(commands[0].script, "sleep 2s");
        assert_eq!(commands[0].shown, "$ sleep 60s\n");
        assert_eq!(commands[0].output, "slept 60s\n");
        assert!(parse_commands("$ sleep 1\n", &shorten).is_err());
    }

    #[test]
    fn malformed_transcripts() {
        assert!(parse_commands("output first\n$ true\n", &[]).is_err());
        assert!(parse_commands("$ true\n? maybe\n", &[]).is_err());
        assert!(parse_commands("$ echo \\\n", &[]).is_err());
        assert!(parse_commands("$\n", &[]).is_err());
    }

    fn plan_of(source: &str) -> Plan {
        let mut plan = Plan::default();
        plan_fences(Path::new("doc.md"), &markdown::fences(source).unwrap(), &mut plan);
        plan
    }

    #[test]
    fn sessions_group_blocks_and_skips_are_counted() {
        let plan = plan_of(concat!(
            "<!-- docs-test: session=a cwd=tmp -->\n```console\n$ true\n```\n\n",
            "```console\n$ true\n```\n\n",
            "<!-- docs-test: session=a timeout=5m background wait=80 -->\n```console\n$ sleep 1\n```\n\n",
            "<!-- docs-test: skip=\"needs a public name\" -->\n```console\n$ true\n```\n\n",
            "<!-- docs-test: file=\"x.txt\" -->\n```text\nx\n```\n",
        ));
        assert!(plan.errors.is_empty(), "{:?}", plan.errors);
        assert_eq!(plan.sessions.len(), 2);
        assert_eq!(plan.sessions[0].transcripts.len(), 2);
        assert_eq!(plan.sessions[0].work_dir, WorkDir::Temp);
        assert_eq!(plan.sessions[0].timeout, Duration::from_secs(300));
        assert!(plan.sessions[0].transcripts[1].background);
        assert_eq!(plan.sessions[0].transcripts[1].waits, vec![80]);
        assert_eq!(plan.sessions[1].work_dir, WorkDir::Repo);
        assert_eq!(plan.not_run[0].reason, "needs a public name");
        assert_eq!(plan.listings[0].path, PathBuf::from("x.txt"));
        assert_eq!(plan.listings[0].body, "x\n");
    }

    #[test]
    fn annotation_mistakes_are_errors() {
        for source in [
            "<!-- docs-test: colour=blue -->\n```console\n$ true\n```\n",
            "<!-- docs-test: skip=\"x\" cwd=tmp -->\n```console\n$ true\n```\n",
            "<!-- docs-test: file=\"x\" -->\n```console\n$ true\n```\n",
            "<!-- docs-test: cwd=home -->\n```console\n$ true\n```\n",
            "<!-- docs-test: wait=http -->\n```console\n$ true\n```\n",
            "<!-- docs-test: shorten=\"60s => 2s\" -->\n```console\n$ sleep 60s\n```\n\nNo note.\n",
            "<!-- docs-test: session=a cwd=tmp -->\n```console\n$ true\n```\n<!-- docs-test: session=a cwd=repo -->\n```console\n$ true\n```\n",
            "<!-- docs-test: server=\"x\" -->\n```toml\na = 1\n```\n",
        ] {
            assert!(!plan_of(source).errors.is_empty(), "no error for {source}");
        }
        let noted = plan_of("<!-- docs-test: shorten=\"60s => 2s\" -->\n```console\n$ sleep 60s\n```\n\n(test-docs runs it for 2s.)\n");
        assert!(noted.errors.is_empty(), "{:?}", noted.errors);
    }
}
