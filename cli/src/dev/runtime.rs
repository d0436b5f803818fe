//! `wasmux dev`'s path for Python and JavaScript plugins: the language's
//! dev runtime ([`wasmux_toolchain::dev`]) is served as the plugin, and
//! the project's source reaches it through the server's settings (the
//! plugin's setting [`SOURCES_KEY`], added to the configuration's by
//! [`SourceLayer`]).
//!
//! On a save, the source is read again and checked: one call of the
//! runtime with [`CHECK_KEY`] set loads it as a request would and reports
//! an error (a syntax error, an exception at module level) with its
//! traceback, and the imports that will fail, as `wasmux build` reports
//! them. If it loads, the settings are reloaded with it: requests under
//! way finish on the source they started on, the next ones get the new
//! one. No build, no compile: the runtime's code stays compiled.
//!
//! A change of the WIT or of the manifest (pyproject.toml, package.json)
//! may need another runtime (one is built per WIT and `wasi` setting, and
//! kept in the cache directory): the project is read again, and the
//! runtime it needs is loaded (built first if it was never built).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::mpsc;
use wasmux::config::{self, ConfigFile, ConfigValue, Settings};
use wasmux::digest::Digest;
use wasmux::message::Message;
use wasmux::runtime::{CallContext, CallLimits, CompileMode, Reuse};
use wasmux::service::Service;
use wasmux::watcher::FileWatcher;
use wasmux_toolchain::dev::{CHECK_KEY, SOURCES_KEY};
use wasmux_toolchain::{BuildOptions, Language, Project};

use super::DevArgs;
use crate::serve::{self, ServeArgs, Serving};

/// The longest the check of a save may take: module-level code that runs
/// longer is reported as too slow, not as a failure to load.
const CHECK_DEADLINE: Duration = Duration::from_secs(10);

pub(super) async fn serve(args: DevArgs, project: Project, options: BuildOptions, compile: CompileMode) -> anyhow::Result<()> {
    let layer = Arc::new(SourceLayer { plugin: project.name.clone(), config: args.config.clone(), sources: Mutex::new(None) });
    let settings = layer.settings_with(None)?;
    let parse = {
        let layer = Arc::clone(&layer);
        Arc::new(move |text: &str| layer.settings_from_text(text)) as wasmux::reload::Parse
    };
    // Watched before the runtime is loaded, so that a save meanwhile is not missed.
    let watched = project.clone();
    let (watcher, changes) = FileWatcher::new(move |path| watched.is_build_input(path))?;
    watcher.watch(&project.dir, true)?;
    let supply: serve::Supply = Box::new(move |service| {
        Box::pin(async move {
            tracing::info!(
                "serving {} plugin {} in {} through the {} dev runtime: a save is served without a build (`wasmux dev --build` serves the built component)",
                project.language,
                project.name,
                project.dir.display(),
                language_name(project.language)
            );
            let mut dev = Dev { project, options, layer, service, runtime: None };
            if !dev.load_runtime().await {
                tracing::warn!("serving without plugin {} until its dev runtime loads", dev.project.name);
            } else if !dev.serve_source(None).await {
                tracing::warn!("plugin {} answers every request with an error until its source loads; fix it and save", dev.project.name);
            }
            tokio::spawn(dev.follow(watcher, changes));
            Ok(())
        })
    });
    let serving = Serving { compile, parse, supply: Some(supply) };
    serve::serve_with(ServeArgs::dev(args.listen, None, args.config, args.data_dir, args.verbose), settings, serving).await
}

fn language_name(language: Language) -> &'static str {
    match language {
        Language::Python => "Python",
        Language::JavaScript => "JavaScript",
        Language::Rust => "Rust",
    }
}

/// The settings the server runs under: the configuration file's (or, with
/// none, every content-type routed to the plugin), with the plugin's
/// source added as its setting [`SOURCES_KEY`].
struct SourceLayer {
    plugin: String,
    /// The configuration file, if `--config` named one.
    config: Option<PathBuf>,
    /// The source being served.
    sources: Mutex<Option<Arc<String>>>,
}

impl SourceLayer {
    fn current(&self) -> Option<Arc<String>> {
        self.sources.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn add_to(&self, file: &mut ConfigFile, sources: Option<&str>) {
        if let Some(sources) = sources {
            file.plugins.entry(self.plugin.clone()).or_default().insert(SOURCES_KEY.to_owned(), ConfigValue::String(sources.to_owned()));
        }
    }

    /// The settings of the configuration file's `text` (changed, reloaded)
    /// with the source being served.
    fn settings_from_text(&self, text: &str) -> anyhow::Result<Settings> {
        let sources = self.current();
        Settings::from_text_with(text, |file| self.add_to(file, sources.as_deref().map(String::as_str)))
    }

    /// The settings now, with `sources`.
    fn settings_with(&self, sources: Option<&str>) -> anyhow::Result<Settings> {
        match &self.config {
            Some(path) => {
                let text = config::read_text(path)?;
                Settings::from_text_with(&text, |file| self.add_to(file, sources)).with_context(|| format!("invalid configuration in {}", path.display()))
            }
            None => {
                let mut file = super::routed_to(&self.plugin);
                self.add_to(&mut file, sources);
                Settings::from_file(file)
            }
        }
    }

    /// Serves `sources` from now on: the settings are reloaded with them.
    fn apply(&self, service: &Service, sources: String) -> anyhow::Result<()> {
        let settings = self.settings_with(Some(&sources))?;
        *self.sources.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(sources));
        service.reload(settings)
    }
}

/// What the dev path serves, and with what.
struct Dev {
    project: Project,
    options: BuildOptions,
    layer: Arc<SourceLayer>,
    service: Arc<Service>,
    /// The runtime loaded as the plugin, by its SHA-256.
    runtime: Option<Digest>,
}

impl Dev {
    /// Serves each batch of saves; a change of the WIT or the manifest
    /// reads the project again, and loads the runtime it needs.
    async fn follow(mut self, _watcher: FileWatcher, mut changes: mpsc::UnboundedReceiver<Vec<PathBuf>>) {
        while let Some(changed) = super::next_batch(&mut changes, &self.project).await {
            let project_changed = changed.split(", ").any(|path| path.ends_with(".wit") || path == self.project.language.manifest());
            if project_changed {
                tracing::info!("{changed} changed: reading the project again");
                match Project::open(&self.project.dir) {
                    Ok(project) if project.name == self.project.name && project.language == self.project.language => self.project = project,
                    Ok(project) => {
                        tracing::error!(
                            "the project is now {} plugin {}: restart wasmux dev to serve it; {} plugin {} keeps serving",
                            project.language,
                            project.name,
                            self.project.language,
                            self.project.name
                        );
                        continue;
                    }
                    Err(e) => {
                        super::log_failure("the project cannot be read", &e, super::Served(self.layer.current().is_some()));
                        continue;
                    }
                }
                if !self.load_runtime().await {
                    continue;
                }
            } else {
                tracing::info!("{changed} changed: checking and serving the source (no build)");
            }
            self.serve_source(Some(&changed)).await;
        }
    }

    /// Loads the dev runtime the project needs (built first if missing) as
    /// the plugin, unless it is the one loaded. Returns whether it is
    /// loaded.
    async fn load_runtime(&mut self) -> bool {
        let (project, options) = (self.project.clone(), self.options.clone());
        let found = tokio::task::spawn_blocking(move || -> anyhow::Result<(PathBuf, Vec<u8>)> {
            let path = wasmux_toolchain::dev::runtime(&project, &options)?;
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            Ok((path, bytes))
        })
        .await;
        let (path, bytes) = match found {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                super::log_failure("the dev runtime could not be built", &e, super::Served(self.runtime.is_some()));
                return false;
            }
            Err(e) => {
                tracing::error!("the dev runtime could not be built: {e}");
                return false;
            }
        };
        let digest = Digest::of(&bytes);
        if self.runtime == Some(digest) {
            return true;
        }
        match self.service.plugins().load(&self.project.name, digest, bytes, &path.display().to_string()).await {
            Ok(()) => {
                self.runtime = Some(digest);
                true
            }
            Err(e) => {
                tracing::error!("{e:#}");
                false
            }
        }
    }

    /// Reads the project's source, checks it, and serves it if it loads.
    /// `changed` names the files saved (none at start). Returns whether the
    /// source is served.
    async fn serve_source(&self, changed: Option<&str>) -> bool {
        let started = Instant::now();
        let what = changed.unwrap_or("the source");
        let (project, options) = (self.project.clone(), self.options.clone());
        let sources = match tokio::task::spawn_blocking(move || wasmux_toolchain::dev::sources(&project, &options)).await {
            Ok(Ok(sources)) => sources,
            Ok(Err(e)) => {
                super::log_failure(&format!("{what} not served"), &e, super::Served(self.layer.current().is_some()));
                return false;
            }
            Err(e) => {
                tracing::error!("{what} not served: {e}");
                return false;
            }
        };
        if self.layer.current().is_some_and(|served| *served == sources) {
            tracing::info!("{what}: the source is the one served already");
            return true;
        }
        match self.check(&sources).await {
            Ok(Check { error: None, warnings, took }) => {
                for warning in warnings {
                    eprintln!("wasmux: warning: {warning}");
                }
                self.warn_if_slow(took);
            }
            Ok(Check { error: Some(error), warnings, .. }) => {
                for warning in warnings {
                    eprintln!("wasmux: warning: {warning}");
                }
                eprintln!("{error}");
                tracing::error!("{what} not served: the plugin fails to load (above); {}", super::Served(self.layer.current().is_some()));
                return false;
            }
            Err(e) => {
                tracing::error!("{what} not served: {e:#}; {}", super::Served(self.layer.current().is_some()));
                return false;
            }
        }
        if let Err(e) = self.layer.apply(&self.service, sources) {
            tracing::error!("{what} not served: {e:#}; {}", super::Served(self.layer.current().is_some()));
            return false;
        }
        tracing::info!(
            "plugin {}: serving {} as saved ({} ms: checked and handed to the dev runtime, no build)",
            self.project.name,
            changed.unwrap_or("its source"),
            started.elapsed().as_millis()
        );
        true
    }

    /// Loads `sources` in a new instance of the runtime, as a request's
    /// instance would, with [`CHECK_KEY`] set: the runtime answers whether
    /// it loaded and which of its imports will fail.
    async fn check(&self, sources: &str) -> anyhow::Result<Check> {
        let name = &self.project.name;
        let plugin = self.service.plugins().get(name).context("the dev runtime is not loaded")?;
        let settings = self.service.settings();
        let tenant = settings.tenants.get("default").or_else(|| settings.tenants.iter().next());
        let mut values: BTreeMap<String, String> = tenant.map(|t| (*t.config_for(name)).clone()).unwrap_or_default();
        values.insert(SOURCES_KEY.to_owned(), sources.to_owned());
        values.insert(CHECK_KEY.to_owned(), "1".to_owned());
        let limits = CallLimits {
            deadline: CHECK_DEADLINE,
            memory: tenant.map_or(settings.limits.call.memory, |t| t.plugin_memory),
            ..settings.limits.call
        };
        let context = CallContext {
            tenant: "wasmux-dev-check".into(),
            config: Arc::new(values),
            limits,
            reuse: Reuse::FRESH,
            generation: settings.generation,
            kv_limits: tenant.map_or(settings.kv.limits, |t| t.kv_limits),
            kv_buckets: settings.kv.buckets_for(name),
        };
        let started = Instant::now();
        let (answer, _) = plugin
            .call(&Message::new("application/json", "utf-8", Vec::new()), &context)
            .await
            .map_err(|e| anyhow::anyhow!("the dev runtime {e} while loading the plugin"))?;
        let took = started.elapsed();
        let report: serde_json::Value = serde_json::from_slice(&answer.content).context("the dev runtime's report is not JSON")?;
        let error = report["error"].as_str().map(str::to_owned);
        let warnings = report["warnings"].as_array().map(|w| w.iter().filter_map(|w| w.as_str().map(str::to_owned)).collect()).unwrap_or_default();
        Ok(Check { error, warnings, took })
    }

    /// Warns when loading the plugin (its module-level code) takes over
    /// half of a request's deadline: under the dev runtime it runs in every
    /// instance, within the deadline of the instance's first request.
    fn warn_if_slow(&self, took: Duration) {
        let settings = self.service.settings();
        let deadline = settings.tenants.get("default").map_or(settings.limits.call.deadline, |t| t.plugin_deadline);
        if took > deadline / 2 {
            tracing::warn!(
                "loading plugin {} took {} ms, and under wasmux dev it loads in every instance, within the {} ms deadline of a request: \
                 requests may time out. The built component runs its module-level code when it is built (`wasmux dev --build`)",
                self.project.name,
                took.as_millis(),
                deadline.as_millis()
            );
        }
    }
}

/// What the runtime reported of a source it loaded.
struct Check {
    /// Why it did not load: the exception and its traceback.
    error: Option<String>,
    /// Imports that will fail when they run (`app.py:3: importing socket will fail: …`).
    warnings: Vec<String>,
    /// How long the check took (an instance made, the plugin loaded).
    took: Duration,
}
