//! The tool sandbox: runs plugins, WebAssembly components targeting the
//! `orchestra:plugin` world (`plugin-sdk/wit`), under wasmtime.
//!
//! A plugin is compiled once (and the compiled artifact cached on disk, keyed
//! by the plugin's SHA-256 and the engine's compatibility hash), linked once
//! into an `InstancePre`, and instantiated afresh for every call from the
//! pooling allocator. Calls run asynchronously (wasmtime's async support: the
//! guest runs on a pooled fiber stack) with a memory cap (`StoreLimits`), a
//! bounded wasm stack, an output cap and a wall-clock deadline that covers
//! both busy loops (epoch interruption makes the guest yield every tick) and
//! host calls that block (a sleeping guest): the call's future is dropped when
//! the deadline passes, which stops the guest. WASI is linked deny-by-default: no preopened
//! directories, no environment, no arguments, no sockets, no name lookup,
//! stdin closed, stdout discarded, stderr captured (bounded) to explain a
//! crash. A trap, a timeout or garbage output fails only that call.
//!
//! The sandbox never sees the database or HTTP types: it takes bytes and JSON
//! and returns JSON or a [`ToolError`].

pub mod host;
pub mod limits;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimitsBuilder, Trap,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::WasiCtx;

use host::HostState;
pub use host::{CallContext, DirectoryGrant, Grants, HostServices, KvFailure, KvScope};
pub use limits::{CallLimits, EngineLimits};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../plugin-sdk/wit",
        world: "plugin",
        imports: { default: async },
        exports: { default: async },
    });
}

use bindings::orchestra::plugin::types;

/// Why a tool call failed. The variants map to what the caller can do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum ToolError {
    /// The arguments do not satisfy the tool's input schema or its checks.
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    /// No such tool.
    #[error("unknown tool: {0}")]
    UnknownTool(String),
    /// The tool ran and reported a failure.
    #[error("the tool failed: {0}")]
    Failed(String),
    /// The call ran past its deadline and was stopped.
    #[error("the tool did not finish within {0} ms")]
    Timeout(u64),
    /// The plugin crashed (trap, memory limit, stack overflow, panic).
    #[error("the plugin crashed: {0}")]
    Crashed(String),
    /// The result broke a limit or the output schema.
    #[error("the tool returned an invalid result: {0}")]
    InvalidOutput(String),
    /// The tool's source cannot answer now (an MCP server that is down or
    /// restarting); the call failed fast and may be retried later.
    #[error("the tool is unavailable: {0}")]
    Unavailable(String),
}

/// A tool as its plugin declares it, with compiled validators.
#[derive(Debug, Clone, Serialize)]
pub struct ToolSpec {
    /// Name within the plugin.
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of the arguments.
    pub input_schema: Value,
    /// JSON Schema of the result, if declared.
    pub output_schema: Option<Value>,
    /// Only reads.
    pub read_only: bool,
    /// May destroy data.
    pub destructive: bool,
    /// Safe to repeat.
    pub idempotent: bool,
}

/// Capabilities a plugin asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Capabilities {
    /// Outbound HTTPS hosts.
    pub http_hosts: Vec<String>,
    /// A private key-value store.
    pub key_value: bool,
    /// Secrets by name.
    pub secrets: Vec<String>,
    /// Directories, by the absolute path the plugin uses.
    #[serde(default)]
    pub directories: Vec<String>,
}

/// What a plugin says about itself, checked.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    /// Plugin name.
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// What it is for.
    pub description: String,
    /// Its tools.
    pub tools: Vec<ToolSpec>,
    /// What it asks for.
    pub capabilities: Capabilities,
}

/// The engine, the linker and the epoch ticker, shared by every plugin.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<HostState>,
    slots: Arc<Semaphore>,
    limits: EngineLimits,
    cache_dir: Option<PathBuf>,
    ticker_stop: Arc<AtomicBool>,
    /// Where guest code runs: threads of their own, at a lower priority
    /// than the threads that serve requests, so that plugins spinning on
    /// every core leave the API responsive.
    guests: Option<tokio::runtime::Runtime>,
    /// Calls in flight per user (`EngineLimits::max_calls_per_user`).
    user_slots: std::sync::Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
        // Dropping a runtime waits for its threads, which may not happen
        // inside another runtime's task.
        if let Some(guests) = self.guests.take() {
            guests.shutdown_background();
        }
    }
}

/// Lowers the calling thread's scheduling priority (Linux: per thread).
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread's own id.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

/// A task on the guests' runtime, aborted when its caller stops waiting
/// (a cancelled run, a dropped request).
struct GuestTask<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for GuestTask<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for GuestTask<T> {
    type Output = Result<T, tokio::task::JoinError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("limits", &self.limits)
            .finish()
    }
}

impl Sandbox {
    /// An engine with the pooling allocator sized by `limits`, caching
    /// compiled plugins in `cache_dir` (if given).
    pub fn new(limits: EngineLimits, cache_dir: Option<PathBuf>) -> anyhow::Result<Sandbox> {
        let mut pool = PoolingAllocationConfig::new();
        let instances = limits.max_concurrent_instances;
        // A component built by `cargo build --target wasm32-wasip2` holds a
        // handful of core instances (the module and WASI shims): room for 8 each.
        pool.total_component_instances(instances)
            .total_core_instances(instances * 8)
            .total_memories(instances * 2)
            .total_tables(instances * 4)
            .total_stacks(instances)
            .max_core_instances_per_component(16)
            .max_memories_per_component(4)
            .max_tables_per_component(8)
            .max_memory_size(limits.max_memory_bytes)
            .linear_memory_keep_resident(limits.memory_keep_resident)
            .decommit_batch_size(limits.decommit_batch_size.max(1))
            .pagemap_scan(if limits.pagemap_scan {
                wasmtime::Enabled::Auto
            } else {
                wasmtime::Enabled::No
            })
            .table_keep_resident(64 << 10);
        let mut config = wasmtime::Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(limits.fuel)
            .max_wasm_stack(limits.max_wasm_stack)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine =
            Engine::new(&config).map_err(|e| anyhow::anyhow!("creating the wasm engine: {e:#}"))?;

        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("linking WASI: {e:#}"))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("linking wasi:http: {e:#}"))?;
        bindings::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("linking the plugin world: {e:#}"))?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = ticker_stop.clone();
            let tick = limits.epoch_tick;
            std::thread::Builder::new()
                .name("orchestra-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })
                .context("starting the epoch ticker")?;
        }
        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let threads = match limits.guest_threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let guests = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("orchestra-guest")
            .on_thread_start(lower_thread_priority)
            .enable_all()
            .build()
            .context("starting the plugins' threads")?;
        Ok(Sandbox {
            engine,
            linker,
            slots: Arc::new(Semaphore::new(instances as usize)),
            limits,
            cache_dir,
            ticker_stop,
            guests: Some(guests),
            user_slots: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The engine-wide limits.
    pub fn limits(&self) -> EngineLimits {
        self.limits
    }

    /// The semaphore bounding `user`'s calls in flight.
    fn user_slots(&self, user: &str) -> Arc<Semaphore> {
        let mut slots = self.user_slots.lock().unwrap_or_else(|e| e.into_inner());
        // Forget users with nothing in flight, so the map stays small.
        if slots.len() > 1024 {
            let full = self.limits.max_calls_per_user.max(1) as usize;
            slots.retain(|_, s| s.available_permits() < full || Arc::strong_count(s) > 1);
        }
        slots
            .entry(user.to_owned())
            .or_insert_with(|| {
                Arc::new(Semaphore::new(
                    self.limits.max_calls_per_user.max(1) as usize
                ))
            })
            .clone()
    }

    /// Compiles (or loads from the cache) and links a plugin, reads and
    /// checks its manifest. Compilation runs on the blocking pool.
    pub async fn load(
        self: &Arc<Self>,
        wasm: Vec<u8>,
        limits: CallLimits,
    ) -> anyhow::Result<LoadedPlugin> {
        let started = Instant::now();
        let digest = crate::crypto::sha256_hex(&wasm);
        let (component, from_cache) = {
            let sandbox = self.clone();
            let digest = digest.clone();
            tokio::task::spawn_blocking(move || sandbox.compile(&wasm, &digest)).await??
        };
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            anyhow::anyhow!("the plugin needs imports the sandbox does not grant: {e:#}")
        })?;
        let pre = bindings::PluginPre::new(pre)
            .map_err(|e| anyhow::anyhow!("the component is not an Orchestra plugin: {e:#}"))?;
        let limits = CallLimits {
            max_memory_bytes: limits.max_memory_bytes.min(self.limits.max_memory_bytes),
            ..limits
        };
        let mut plugin = LoadedPlugin {
            sandbox: self.clone(),
            pre,
            digest,
            limits,
            manifest: Manifest {
                name: String::new(),
                version: String::new(),
                description: String::new(),
                tools: Vec::new(),
                capabilities: Capabilities::default(),
            },
            validators: HashMap::new(),
            own_slots: limits
                .max_concurrent_calls
                .or(Some(self.limits.max_calls_per_plugin))
                .map(|n| Arc::new(Semaphore::new(n.max(1) as usize))),
        };
        let raw = plugin.read_manifest().await?;
        let (manifest, validators) = check_manifest(raw)?;
        plugin.manifest = manifest;
        plugin.validators = validators;
        tracing::info!(
            plugin = %plugin.manifest.name,
            version = %plugin.manifest.version,
            tools = plugin.manifest.tools.len(),
            cached = from_cache,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "plugin loaded"
        );
        Ok(plugin)
    }

    fn cache_path(&self, digest: &str) -> Option<PathBuf> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        let engine = hasher.finish();
        self.cache_dir
            .as_ref()
            .map(|dir| dir.join(format!("{digest}-{engine:016x}.cwasm")))
    }

    /// The compiled component, from the cache when possible. Returns whether
    /// it came from the cache.
    fn compile(&self, wasm: &[u8], digest: &str) -> anyhow::Result<(Component, bool)> {
        let path = self.cache_path(digest);
        if let Some(path) = path.as_deref().filter(|p| p.exists()) {
            // SAFETY: the file was written by `Component::serialize` of this
            // engine configuration (the name carries the engine's compatibility
            // hash) into the server's private data directory; wasmtime checks
            // the header and refuses artifacts from another engine version.
            match unsafe { Component::deserialize_file(&self.engine, path) } {
                Ok(component) => return Ok((component, true)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable compiled plugin")
                }
            }
        }
        let component = Component::new(&self.engine, wasm)
            .map_err(|e| anyhow::anyhow!("not a valid WebAssembly component: {e:#}"))?;
        if let Some(path) = path {
            if let Err(e) = write_atomically(
                &path,
                &component
                    .serialize()
                    .map_err(|e| anyhow::anyhow!("{e:#}"))?,
            ) {
                tracing::warn!(path = %path.display(), error = %e, "could not cache a compiled plugin");
            }
        }
        Ok((component, false))
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Checks names and schemas of a manifest and compiles the validators.
fn check_manifest(raw: types::Manifest) -> anyhow::Result<(Manifest, HashMap<String, Validators>)> {
    if !is_plugin_name(&raw.name) {
        bail!("plugin name {:?} must be 1 to 24 of a-z 0-9 _ -, start with a letter, and not contain \"__\"", raw.name);
    }
    let mut tools = Vec::new();
    let mut validators = HashMap::new();
    for tool in raw.tools {
        if !is_tool_name(&tool.name) {
            bail!(
                "tool name {:?} must be 1 to 38 of a-z A-Z 0-9 _ -",
                tool.name
            );
        }
        if validators.contains_key(&tool.name) {
            bail!("tool {:?} is declared twice", tool.name);
        }
        let input: Value = serde_json::from_str(&tool.input_schema)
            .with_context(|| format!("tool {:?}: input schema is not JSON", tool.name))?;
        if input.get("type").and_then(Value::as_str) != Some("object") {
            bail!(
                "tool {:?}: the input schema must describe an object",
                tool.name
            );
        }
        let output: Option<Value> = match &tool.output_schema {
            Some(s) => Some(
                serde_json::from_str(s)
                    .with_context(|| format!("tool {:?}: output schema is not JSON", tool.name))?,
            ),
            None => None,
        };
        let input_validator = jsonschema::validator_for(&input)
            .map_err(|e| anyhow::anyhow!("tool {:?}: invalid input schema: {e}", tool.name))?;
        let output_validator = match &output {
            Some(schema) => Some(jsonschema::validator_for(schema).map_err(|e| {
                anyhow::anyhow!("tool {:?}: invalid output schema: {e}", tool.name)
            })?),
            None => None,
        };
        validators.insert(
            tool.name.clone(),
            Validators {
                input: Arc::new(input_validator),
                output: output_validator.map(Arc::new),
            },
        );
        tools.push(ToolSpec {
            name: tool.name,
            description: tool.description,
            input_schema: input,
            output_schema: output,
            read_only: tool.read_only,
            destructive: tool.destructive,
            idempotent: tool.idempotent || tool.read_only,
        });
    }
    for host in &raw.capabilities.http_hosts {
        host::check_host_pattern(&host.to_ascii_lowercase())
            .map_err(|e| anyhow::anyhow!("requested HTTP host: {e}"))?;
    }
    for path in &raw.capabilities.directories {
        host::check_guest_path(path).map_err(|e| anyhow::anyhow!("requested directory: {e}"))?;
    }
    for name in &raw.capabilities.secrets {
        if !host::is_secret_name(name) {
            bail!("requested secret {name:?} must be 1 to 64 of A-Z a-z 0-9 _ - .");
        }
    }
    Ok((
        Manifest {
            name: raw.name,
            version: raw.version,
            description: raw.description,
            tools,
            capabilities: Capabilities {
                http_hosts: raw.capabilities.http_hosts,
                key_value: raw.capabilities.key_value,
                secrets: raw.capabilities.secrets,
                directories: raw.capabilities.directories,
            },
        },
        validators,
    ))
}

/// Entry points of the fuzz targets (`fuzz/`) into the sandbox's parsers.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    #[derive(serde::Deserialize)]
    struct RawTool {
        name: String,
        description: String,
        input_schema: String,
        output_schema: Option<String>,
        #[serde(default)]
        read_only: bool,
        #[serde(default)]
        destructive: bool,
        #[serde(default)]
        idempotent: bool,
    }

    #[derive(serde::Deserialize)]
    struct RawManifest {
        name: String,
        version: String,
        description: String,
        tools: Vec<RawTool>,
        http_hosts: Vec<String>,
        key_value: bool,
        secrets: Vec<String>,
        directories: Vec<String>,
        /// Validated against each tool's input schema, as a call's would be.
        arguments: Value,
    }

    /// A manifest as a plugin declares it (its fields as JSON), checked as
    /// at load; when it passes, `arguments` is validated against every
    /// tool's input schema, as before a call.
    pub fn manifest(data: &[u8]) {
        let Ok(raw) = serde_json::from_slice::<RawManifest>(data) else {
            return;
        };
        let manifest = types::Manifest {
            name: raw.name,
            version: raw.version,
            description: raw.description,
            tools: raw
                .tools
                .into_iter()
                .map(|t| types::Tool {
                    name: t.name,
                    description: t.description,
                    input_schema: t.input_schema,
                    output_schema: t.output_schema,
                    read_only: t.read_only,
                    destructive: t.destructive,
                    idempotent: t.idempotent,
                })
                .collect(),
            capabilities: types::Capabilities {
                http_hosts: raw.http_hosts,
                key_value: raw.key_value,
                secrets: raw.secrets,
                directories: raw.directories,
            },
        };
        if let Ok((_, validators)) = check_manifest(manifest) {
            for v in validators.values() {
                let _ = v.input.iter_errors(&raw.arguments).count();
            }
        }
    }
}

/// `^[a-z][a-z0-9_-]{0,23}$` without `__` (the namespace separator).
pub fn is_plugin_name(name: &str) -> bool {
    (1..=24).contains(&name.len())
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && !name.contains("__")
}

/// `^[a-zA-Z0-9_-]{1,38}$`: with a plugin name and `__`, at most 64 characters.
pub fn is_tool_name(name: &str) -> bool {
    (1..=38).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[derive(Clone)]
struct Validators {
    input: Arc<jsonschema::Validator>,
    output: Option<Arc<jsonschema::Validator>>,
}

/// A plugin ready to run: compiled, linked, its manifest checked.
pub struct LoadedPlugin {
    sandbox: Arc<Sandbox>,
    pre: bindings::PluginPre<HostState>,
    digest: String,
    limits: CallLimits,
    manifest: Manifest,
    validators: HashMap<String, Validators>,
    /// This plugin's own cap on calls at once (`CallLimits::max_concurrent_calls`).
    own_slots: Option<Arc<Semaphore>>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.manifest.name)
            .field("digest", &self.digest)
            .finish()
    }
}

impl LoadedPlugin {
    /// The checked manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// SHA-256 of the plugin's bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The limits every call gets.
    pub fn limits(&self) -> CallLimits {
        self.limits
    }

    /// A fresh store with this plugin's limits, and its captured stderr.
    fn new_store(
        &self,
        ctx: &CallContext,
    ) -> Result<(Store<HostState>, MemoryOutputPipe), ToolError> {
        let stderr = MemoryOutputPipe::new(limits::STDERR_CAPTURE_BYTES);
        let mut builder = WasiCtx::builder();
        builder
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        // What the plugin may use: requested AND granted, computed once per call.
        let effective = ctx.grants.effective(&self.manifest.capabilities);
        for dir in &effective.directories {
            let perms = if dir.writable {
                wasmtime_wasi::FsPerms::ReadWrite
            } else {
                wasmtime_wasi::FsPerms::ReadOnly
            };
            builder
                .preopened_dir(&dir.host, &dir.path, perms)
                .map_err(|e| {
                    ToolError::Failed(format!(
                        "the directory granted as {} cannot be opened: {e}",
                        dir.path
                    ))
                })?;
        }
        let wasi = builder.build();
        let state = HostState::new(
            wasi,
            StoreLimitsBuilder::new()
                .memory_size(self.limits.max_memory_bytes)
                .trap_on_grow_failure(true)
                .build(),
            Arc::from(self.manifest.name.as_str()),
            effective,
            ctx,
            &self.limits,
        );
        let mut store = Store::new(&self.sandbox.engine, state);
        store.limiter(|s| &mut s.limits);
        // Yield to the executor at every epoch tick: a busy guest cannot hold
        // a runtime thread, and the deadline in `call` can drop it.
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        if self.sandbox.limits.fuel {
            store
                .set_fuel(self.limits.max_fuel.unwrap_or(u64::MAX))
                .expect("the engine meters fuel");
        }
        Ok((store, stderr))
    }

    fn log_dropped(&self, store: &Store<HostState>) {
        let dropped = store.data().log_lines_dropped;
        if dropped > 0 {
            tracing::warn!(plugin = %self.manifest.name, dropped, "plugin log lines over the limit were dropped");
        }
    }

    async fn read_manifest(&self) -> anyhow::Result<types::Manifest> {
        let (mut store, stderr) = self
            .new_store(&CallContext::default())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let run = async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            instance.call_manifest(&mut store).await
        };
        match tokio::time::timeout(self.limits.timeout(), run).await {
            Err(_) => bail!(
                "the plugin did not describe itself within {} ms",
                self.limits.timeout_ms
            ),
            Ok(Ok(manifest)) => Ok(manifest),
            Ok(Err(e)) => {
                let stderr = String::from_utf8_lossy(&stderr.contents()).into_owned();
                bail!(
                    "the plugin failed to describe itself: {}",
                    self.explain(&e, &stderr)
                )
            }
        }
    }

    /// Explains a failed instance: deadline, memory, stack, or the trap and
    /// whatever the guest printed (a panic message).
    fn explain(&self, error: &wasmtime::Error, stderr: &str) -> String {
        let trap = error.downcast_ref::<Trap>();
        let mut text = match trap {
            Some(Trap::Interrupt) => format!("did not finish within {} ms", self.limits.timeout_ms),
            Some(Trap::StackOverflow) => "stack overflow (recursion too deep)".to_owned(),
            Some(Trap::OutOfFuel) => format!(
                "ran out of fuel ({} units)",
                self.limits.max_fuel.unwrap_or(u64::MAX)
            ),
            // A Rust guest keeps its own stack in linear memory: overflowing it
            // runs off the bottom of memory.
            Some(Trap::MemoryOutOfBounds) => {
                "out-of-bounds memory access (a stack overflow inside the plugin, or a bug)"
                    .to_owned()
            }
            Some(trap) => format!("trapped: {trap}"),
            None => {
                let message = format!("{error:#}");
                if message.contains("memory") && message.contains("limit")
                    || message.contains("forcing trap when growing memory")
                {
                    format!(
                        "exceeded its memory limit of {} bytes",
                        self.limits.max_memory_bytes
                    )
                } else {
                    message
                }
            }
        };
        let stderr = stderr.trim();
        if !stderr.is_empty() {
            let tail: String = stderr
                .chars()
                .rev()
                .take(500)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            text.push_str(&format!(" (stderr: {tail})"));
        }
        text
    }

    /// For the benchmark: `n` instances, each having run `tool` once, kept
    /// alive (as concurrent calls would be) until the returned value drops.
    #[doc(hidden)]
    pub async fn hold_instances(
        self: &Arc<Self>,
        n: usize,
        tool: &str,
        arguments: &Value,
    ) -> anyhow::Result<Vec<Box<dyn std::any::Any + Send>>> {
        let arguments = arguments.to_string();
        let mut held: Vec<Box<dyn std::any::Any + Send>> = Vec::with_capacity(n);
        for _ in 0..n {
            let (mut store, _) = self
                .new_store(&CallContext::default())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let instance = self.pre.instantiate_async(&mut store).await?;
            instance
                .call_call(&mut store, tool, &arguments)
                .await?
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            held.push(Box::new((store, instance)));
        }
        Ok(held)
    }

    /// [`LoadedPlugin::call_with`] with no user and no grants: pure computation.
    pub async fn call(self: &Arc<Self>, tool: &str, arguments: &Value) -> Result<Value, ToolError> {
        self.call_with(tool, arguments, &CallContext::default())
            .await
    }

    /// Validates `arguments`, calls `tool` in a fresh instance for
    /// `ctx.user` with the rights `ctx.grants` leaves it, checks the
    /// result. Waits for a free instance slot.
    pub async fn call_with(
        self: &Arc<Self>,
        tool: &str,
        arguments: &Value,
        ctx: &CallContext,
    ) -> Result<Value, ToolError> {
        let validators = self
            .validators
            .get(tool)
            .cloned()
            .ok_or_else(|| ToolError::UnknownTool(tool.to_owned()))?;
        if let Some(error) = validators.input.iter_errors(arguments).next() {
            let path = error.instance_path().to_string();
            let at = if path.is_empty() {
                "arguments".to_owned()
            } else {
                format!("arguments{path}")
            };
            return Err(ToolError::InvalidArguments(format!("{at}: {error}")));
        }
        let closed = || ToolError::Crashed("the sandbox is shutting down".to_owned());
        // The user's cap, then the plugin's own, so that a busy user or
        // plugin waits on its own slots without holding any of the engine's.
        let _user = match &ctx.user {
            Some(user) => Some(
                self.sandbox
                    .user_slots(user)
                    .acquire_owned()
                    .await
                    .map_err(|_| closed())?,
            ),
            None => None,
        };
        let _own = match &self.own_slots {
            Some(slots) => Some(
                slots
                    .acquire()
                    .await
                    .map_err(|_| ToolError::Crashed("the sandbox is shutting down".to_owned()))?,
            ),
            None => None,
        };
        let _permit = self
            .sandbox
            .slots
            .acquire()
            .await
            .map_err(|_| ToolError::Crashed("the sandbox is shutting down".to_owned()))?;
        let arguments = arguments.to_string();
        let (store, stderr) = self.new_store(ctx)?;
        let this = self.clone();
        let tool_name = tool.to_owned();
        let guests = self.sandbox.guests.as_ref().ok_or_else(closed)?;
        let task = GuestTask(guests.spawn(async move {
            let mut store = store;
            let run = async {
                let instance = this.pre.instantiate_async(&mut store).await?;
                instance.call_call(&mut store, &tool_name, &arguments).await
            };
            let result = tokio::time::timeout(this.limits.timeout(), run).await;
            (result, store)
        }));
        let (result, store) = task
            .await
            .map_err(|e| ToolError::Crashed(format!("the call's task ended: {e}")))?;
        let result = match result {
            Ok(result) => result,
            Err(_) => return Err(ToolError::Timeout(self.limits.timeout_ms)),
        };
        self.log_dropped(&store);
        drop(store);
        let output = match result {
            Ok(Ok(output)) => output,
            Ok(Err(types::ToolError::InvalidArguments(m))) => {
                return Err(ToolError::InvalidArguments(m))
            }
            Ok(Err(types::ToolError::UnknownTool(m))) => return Err(ToolError::UnknownTool(m)),
            Ok(Err(types::ToolError::Failed(m))) => return Err(ToolError::Failed(m)),
            Err(e) => {
                let stderr = String::from_utf8_lossy(&stderr.contents()).into_owned();
                return Err(ToolError::Crashed(self.explain(&e, &stderr)));
            }
        };
        if output.len() > self.limits.max_output_bytes {
            return Err(ToolError::InvalidOutput(format!(
                "{} bytes, more than the limit of {}",
                output.len(),
                self.limits.max_output_bytes
            )));
        }
        let value: Value = serde_json::from_str(&output)
            .map_err(|e| ToolError::InvalidOutput(format!("not JSON: {e}")))?;
        if let Some(validator) = &validators.output {
            if let Some(error) = validator.iter_errors(&value).next() {
                return Err(ToolError::InvalidOutput(format!(
                    "does not match the output schema: {error}"
                )));
            }
        }
        Ok(value)
    }
}
