//! Plugin administration: installing components (an upload, a path on the
//! server, or an https URL pinned by SHA-256), granting and revoking
//! capabilities, per-plugin limits, upgrading and removing. Every installed
//! plugin and every grant is stored in the `plugins` table and loaded again
//! at start; the bundled plugins get a row (holding their grants) on first
//! start. The catalogue (`tools`) is what calls go through.

pub mod host;
pub mod routes;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::audit::AuditService;
use crate::config::SandboxConfig;
use crate::crypto::sha256_hex;
use crate::db::{self, Db};
use crate::error::{Error, Result};
use crate::on_db;
use crate::sandbox::{CallLimits, Capabilities, Grants, LoadedPlugin, Sandbox};
use crate::tools::{Entry, ToolCatalogue, ToolInfo, BUNDLED};
use crate::users::model::{Permission, Principal};

/// A plugin as the API shows it: tools, requested, granted and effective
/// capabilities, limits and provenance.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PluginInfo {
    /// Its name: the prefix of its tools' catalogue names.
    pub name: String,
    /// Its version.
    pub version: String,
    /// What it is for.
    pub description: String,
    /// SHA-256 of the component (hex).
    pub digest: String,
    /// Whether it ships with Orchestra (bundled plugins upgrade with the
    /// server and cannot be removed).
    pub bundled: bool,
    /// Where it came from: `bundled`, `upload`, `path:<path>` or `url:<url>`.
    pub source: String,
    /// Its tools.
    pub tools: Vec<ToolInfo>,
    /// What it asks for in its manifest.
    pub requested: Capabilities,
    /// What an admin granted.
    pub granted: Grants,
    /// What it may use: requested AND granted.
    pub effective: Grants,
    /// Limits of each call.
    #[schema(value_type = Object)]
    pub limits: CallLimits,
    /// Whether `limits` were set for this plugin (otherwise the server's defaults).
    pub custom_limits: bool,
    /// Who installed it.
    pub installed_by: Option<Uuid>,
    /// When it was installed.
    pub created_at: DateTime<Utc>,
    /// When it was last changed (upgrade, grants, limits).
    pub updated_at: DateTime<Utc>,
}

/// `POST /api/v1/plugins` (JSON form) and `POST /api/v1/plugins/{name}/upgrade`.
/// Exactly one of `path` and `url`. To upload the component instead, send
/// its bytes with `Content-Type: application/wasm`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallRequest {
    /// A `.wasm` file on the server's filesystem.
    pub path: Option<String>,
    /// An https URL to download the component from; needs `sha256`.
    pub url: Option<String>,
    /// The component's expected SHA-256 (hex). Required with `url`, checked
    /// whenever given.
    pub sha256: Option<String>,
    /// Capabilities to grant at once (install only; default none).
    pub grants: Option<Grants>,
    /// Per-call limits for this plugin (install only; default the server's).
    #[schema(value_type = Option<Object>)]
    pub limits: Option<CallLimits>,
}

/// `PATCH /api/v1/plugins/{name}`: grant or revoke capabilities, set limits.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePluginRequest {
    /// The complete new grant set (replaces the old one).
    pub grants: Option<Grants>,
    /// New per-call limits; `null` returns to the server's defaults.
    #[serde(default, deserialize_with = "crate::schema::present")]
    #[schema(value_type = Option<Object>)]
    pub limits: Option<Option<CallLimits>>,
}

/// Where a component comes from.
#[derive(Debug)]
pub enum Source {
    /// Bytes sent in the request.
    Upload(Vec<u8>),
    /// The JSON form (boxed: grants make it large).
    Request(Box<InstallRequest>),
}

type Row = (
    String,
    Option<Vec<u8>>,
    bool,
    String,
    sqlx::types::Json<Grants>,
    Option<sqlx::types::Json<CallLimits>>,
    Option<Uuid>,
    DateTime<Utc>,
    DateTime<Utc>,
);

const ROW_COLUMNS: &str =
    "name, wasm, bundled, source, grants, limits, installed_by, created_at, updated_at";

/// What the service keeps about a plugin besides the catalogue entry.
struct Stored {
    source: String,
    limits: Option<CallLimits>,
    installed_by: Option<Uuid>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// Installs and administers plugins.
#[derive(Clone)]
pub struct PluginService {
    db: Db,
    sandbox: Arc<Sandbox>,
    catalogue: ToolCatalogue,
    audit: AuditService,
    config: SandboxConfig,
    client: reqwest::Client,
}

impl std::fmt::Debug for PluginService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PluginService { .. }")
    }
}

fn invalid_plugin(e: anyhow::Error) -> Error {
    Error::unprocessable("invalid_plugin", format!("{e:#}"))
}

fn check_limits(limits: &CallLimits, fuel_metered: bool) -> Result<()> {
    if limits.max_concurrent_calls == Some(0) {
        return Err(Error::invalid_field(
            "limits.max_concurrent_calls",
            "must be at least 1",
        ));
    }
    match limits.max_fuel {
        Some(0) => {
            return Err(Error::invalid_field(
                "limits.max_fuel",
                "must be at least 1",
            ))
        }
        Some(_) if !fuel_metered => {
            return Err(Error::invalid_field(
                "limits.max_fuel",
                "fuel is not metered on this server (set sandbox.fuel = true)",
            ))
        }
        _ => {}
    }
    if limits.timeout_ms == 0 || limits.timeout_ms > 600_000 {
        return Err(Error::invalid_field(
            "limits.timeout_ms",
            "must be 1 to 600000",
        ));
    }
    if limits.max_memory_bytes < (1 << 20) {
        return Err(Error::invalid_field(
            "limits.max_memory_bytes",
            "must be at least 1 MiB",
        ));
    }
    if limits.max_output_bytes == 0 {
        return Err(Error::invalid_field(
            "limits.max_output_bytes",
            "must be at least 1",
        ));
    }
    Ok(())
}

/// Checks grants; a granted directory must exist on the server, and is
/// stored by its canonical path.
fn normalise(grants: Grants) -> Result<Grants> {
    let mut grants = grants
        .normalised()
        .map_err(|m| Error::invalid_field("grants", m))?;
    for dir in &mut grants.directories {
        let canonical = std::fs::canonicalize(&dir.host)
            .ok()
            .filter(|p| p.is_dir())
            .ok_or_else(|| {
                Error::invalid_field(
                    "grants.directories",
                    format!("{:?} is not a directory of the server", dir.host),
                )
            })?;
        dir.host = canonical.display().to_string();
    }
    Ok(grants)
}

impl PluginService {
    /// A service loading plugins into `catalogue` through `sandbox`.
    pub fn new(
        db: Db,
        sandbox: Arc<Sandbox>,
        catalogue: ToolCatalogue,
        audit: AuditService,
        config: SandboxConfig,
    ) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .expect("an HTTP client with rustls");
        PluginService {
            db,
            sandbox,
            catalogue,
            audit,
            config,
            client,
        }
    }

    fn effective_limits(&self, custom: Option<CallLimits>) -> CallLimits {
        custom.unwrap_or(self.config.call)
    }

    async fn row(&self, name: &str) -> Result<Option<Row>> {
        let sql = format!("SELECT {ROW_COLUMNS} FROM plugins WHERE name = $1");
        Ok(on_db!(&self.db, pool => sqlx::query_as(&sql)
            .bind(name)
            .fetch_optional(pool)
            .await?))
    }

    /// Loads the bundled plugins (creating their rows, with the key-value
    /// store granted if they ask for it) and every installed plugin. An
    /// installed plugin that no longer loads is logged and skipped: one
    /// broken plugin does not keep the server down.
    pub async fn load_all(&self) -> anyhow::Result<()> {
        for (dir, wasm) in BUNDLED {
            let probe = self
                .sandbox
                .load(wasm.to_vec(), self.config.call)
                .await
                .map_err(|e| anyhow::anyhow!("bundled plugin {dir}: {e:#}"))?;
            let name = probe.manifest().name.clone();
            let row = self.row(&name).await?;
            let (grants, limits) = match row {
                Some((_, _, true, _, grants, limits, ..)) => (grants.0, limits.map(|l| l.0)),
                Some(_) => anyhow::bail!(
                    "an installed plugin is named {name:?} like a bundled one; remove it first"
                ),
                None => {
                    let grants = Grants {
                        key_value: probe.manifest().capabilities.key_value,
                        ..Grants::default()
                    };
                    let now = db::now();
                    on_db!(&self.db, pool => sqlx::query(
                        "INSERT INTO plugins (name, version, digest, wasm, bundled, source, grants, limits, installed_by, created_at, updated_at)
                         VALUES ($1, $2, $3, NULL, TRUE, 'bundled', $4, NULL, NULL, $5, $5)
                         ON CONFLICT (name) DO NOTHING",
                    )
                    .bind(&name)
                    .bind(&probe.manifest().version)
                    .bind(probe.digest())
                    .bind(sqlx::types::Json(&grants))
                    .bind(now)
                    .execute(pool)
                    .await
                    .map(|_| ())?);
                    (grants, None)
                }
            };
            on_db!(&self.db, pool => sqlx::query(
                "UPDATE plugins SET version = $2, digest = $3 WHERE name = $1 AND (version <> $2 OR digest <> $3)",
            )
            .bind(&name)
            .bind(&probe.manifest().version)
            .bind(probe.digest())
            .execute(pool)
            .await
            .map(|_| ())?);
            let plugin = match limits {
                Some(limits) => self.sandbox.load(wasm.to_vec(), limits).await?,
                None => probe,
            };
            self.catalogue.add(Entry {
                plugin: Arc::new(plugin),
                bundled: true,
                grants: Arc::new(grants),
            });
        }
        let sql = format!("SELECT {ROW_COLUMNS} FROM plugins WHERE bundled = FALSE ORDER BY name");
        let rows: Vec<Row> = on_db!(&self.db, pool => sqlx::query_as(&sql).fetch_all(pool).await?);
        for (name, wasm, _, _, grants, limits, ..) in rows {
            let Some(wasm) = wasm else { continue };
            let limits = self.effective_limits(limits.map(|l| l.0));
            match self.sandbox.load(wasm, limits).await {
                Ok(plugin) if plugin.manifest().name == name => self.catalogue.add(Entry {
                    plugin: Arc::new(plugin),
                    bundled: false,
                    grants: Arc::new(grants.0),
                }),
                Ok(plugin) => tracing::error!(
                    plugin = %name,
                    manifest_name = %plugin.manifest().name,
                    "an installed plugin now calls itself by another name; skipped"
                ),
                Err(e) => {
                    tracing::error!(plugin = %name, error = %format!("{e:#}"), "an installed plugin failed to load; skipped")
                }
            }
        }
        Ok(())
    }

    /// Brings the catalogue in line with the `plugins` table: plugins
    /// installed, upgraded, re-granted, re-limited or removed through another
    /// node sharing the database. Returns how many plugins changed.
    pub async fn refresh(&self) -> anyhow::Result<usize> {
        type Brief = (
            String,
            bool,
            String,
            sqlx::types::Json<Grants>,
            Option<sqlx::types::Json<CallLimits>>,
        );
        let rows: Vec<Brief> = on_db!(&self.db, pool => sqlx::query_as(
            "SELECT name, bundled, digest, grants, limits FROM plugins",
        )
        .fetch_all(pool)
        .await?);
        let mut changed = 0;
        for (name, bundled, digest, grants, limits) in &rows {
            let limits = self.effective_limits(limits.as_ref().map(|l| l.0));
            let current = self.catalogue.entry(name);
            let reload = match &current {
                None => !bundled,
                Some(e) => (!bundled && e.plugin.digest() != digest) || e.plugin.limits() != limits,
            };
            let plugin = if reload {
                let wasm = match self.component_bytes(name).await {
                    Ok(wasm) => wasm,
                    Err(e) => {
                        tracing::error!(plugin = %name, error = %e, "refreshing a plugin");
                        continue;
                    }
                };
                match self.sandbox.load(wasm, limits).await {
                    Ok(p) => Arc::new(p),
                    Err(e) => {
                        tracing::error!(plugin = %name, error = %format!("{e:#}"), "refreshing a plugin");
                        continue;
                    }
                }
            } else if let Some(e) = &current {
                if *e.grants == grants.0 {
                    continue;
                }
                e.plugin.clone()
            } else {
                continue;
            };
            self.catalogue.add(Entry {
                plugin,
                bundled: *bundled,
                grants: Arc::new(grants.0.clone()),
            });
            changed += 1;
        }
        for entry in self.catalogue.entries() {
            let name = &entry.plugin.manifest().name;
            if !entry.bundled && !rows.iter().any(|r| &r.0 == name) {
                self.catalogue.remove(name);
                changed += 1;
            }
        }
        if changed > 0 {
            tracing::info!(changed, "plugins refreshed from the database");
        }
        Ok(changed)
    }

    /// Refreshes the catalogue from the database every `every` (for
    /// several nodes sharing one database), until the runtime stops.
    pub fn spawn_refresh(&self, every: Duration) {
        let service = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = service.refresh().await {
                    tracing::warn!(error = %format!("{e:#}"), "refreshing plugins from the database");
                }
            }
        });
    }

    fn info(&self, entry: &Entry, stored: Stored) -> PluginInfo {
        let manifest = entry.plugin.manifest();
        PluginInfo {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            description: manifest.description.clone(),
            digest: entry.plugin.digest().to_owned(),
            bundled: entry.bundled,
            source: stored.source,
            tools: ToolCatalogue::tools_of(&entry.plugin),
            requested: manifest.capabilities.clone(),
            granted: (*entry.grants).clone(),
            effective: entry.grants.effective(&manifest.capabilities),
            limits: entry.plugin.limits(),
            custom_limits: stored.limits.is_some(),
            installed_by: stored.installed_by,
            created_at: stored.created_at,
            updated_at: stored.updated_at,
        }
    }

    async fn stored(&self, name: &str) -> Result<Stored> {
        let (_, _, _, source, _, limits, installed_by, created_at, updated_at) =
            self.row(name).await?.ok_or(Error::NotFound("plugin"))?;
        Ok(Stored {
            source,
            limits: limits.map(|l| l.0),
            installed_by,
            created_at,
            updated_at,
        })
    }

    /// Every plugin.
    pub async fn list(&self, principal: &Principal) -> Result<Vec<PluginInfo>> {
        principal.require(Permission::ToolRead)?;
        let mut out = Vec::new();
        for entry in self.catalogue.entries() {
            let name = entry.plugin.manifest().name.clone();
            // A plugin removed concurrently has no row any more: skip it.
            if let Ok(stored) = self.stored(&name).await {
                out.push(self.info(&entry, stored));
            }
        }
        Ok(out)
    }

    /// One plugin.
    pub async fn get(&self, principal: &Principal, name: &str) -> Result<PluginInfo> {
        principal.require(Permission::ToolRead)?;
        let entry = self
            .catalogue
            .entry(name)
            .ok_or(Error::NotFound("plugin"))?;
        let stored = self.stored(name).await?;
        Ok(self.info(&entry, stored))
    }

    /// The component's bytes and a description of its source.
    async fn fetch(&self, source: &Source) -> Result<(Vec<u8>, String)> {
        let max = self.config.max_plugin_bytes;
        let (bytes, label, pin) = match source {
            Source::Upload(bytes) => (bytes.clone(), "upload".to_owned(), None),
            Source::Request(request) => match (&request.path, &request.url) {
                (Some(path), None) => {
                    let meta = tokio::fs::metadata(path).await.map_err(|e| {
                        Error::invalid_field("path", format!("cannot read {path:?}: {e}"))
                    })?;
                    if !meta.is_file() {
                        return Err(Error::invalid_field("path", format!("{path:?} is not a file")));
                    }
                    if meta.len() > max as u64 {
                        return Err(Error::invalid_field(
                            "path",
                            format!("{} bytes, more than the limit of {max}", meta.len()),
                        ));
                    }
                    let bytes = tokio::fs::read(path).await.map_err(|e| {
                        Error::invalid_field("path", format!("cannot read {path:?}: {e}"))
                    })?;
                    (bytes, format!("path:{path}"), request.sha256.clone())
                }
                (None, Some(url)) => {
                    let Some(pin) = &request.sha256 else {
                        return Err(Error::invalid_field(
                            "sha256",
                            "required with url: the component is pinned by its digest",
                        ));
                    };
                    (self.download(url).await?, format!("url:{url}"), Some(pin.clone()))
                }
                _ => {
                    return Err(Error::validation(
                        "give exactly one of `path` and `url`, or upload the component with Content-Type: application/wasm",
                    ))
                }
            },
        };
        if bytes.len() > max {
            return Err(Error::PayloadTooLarge);
        }
        if let Some(pin) = pin {
            let pin = pin.trim().to_ascii_lowercase();
            if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::invalid_field("sha256", "64 hexadecimal digits"));
            }
            let actual = sha256_hex(&bytes);
            if actual != pin {
                return Err(Error::Validation {
                    message: format!("sha256: the component's digest is {actual}, not {pin}"),
                    details: Some(json!({ "field": "sha256", "expected": pin, "actual": actual })),
                });
            }
        }
        Ok((bytes, label))
    }

    async fn download(&self, url: &str) -> Result<Vec<u8>> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| Error::invalid_field("url", format!("not a URL: {e}")))?;
        match parsed.scheme() {
            "https" => {}
            "http" if self.config.allow_http_plugin_urls => {}
            "http" => {
                return Err(Error::invalid_field(
                    "url",
                    "must be https (sandbox.allow_http_plugin_urls allows http)",
                ))
            }
            other => {
                return Err(Error::invalid_field(
                    "url",
                    format!("scheme {other:?} is not https"),
                ))
            }
        }
        let fail = |m: String| Error::unprocessable("download_failed", m);
        let mut response = self
            .client
            .get(parsed)
            .send()
            .await
            .map_err(|e| fail(format!("downloading {url}: {e}")))?;
        if !response.status().is_success() {
            return Err(fail(format!(
                "downloading {url}: the server answered {}",
                response.status()
            )));
        }
        let max = self.config.max_plugin_bytes;
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| fail(format!("downloading {url}: {e}")))?
        {
            if bytes.len() + chunk.len() > max {
                return Err(fail(format!(
                    "{url} is larger than the limit of {max} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }

    async fn load(&self, wasm: Vec<u8>, limits: CallLimits) -> Result<LoadedPlugin> {
        self.sandbox
            .load(wasm, limits)
            .await
            .map_err(invalid_plugin)
    }

    /// Installs a new plugin (admins only).
    pub async fn install(&self, principal: &Principal, source: Source) -> Result<PluginInfo> {
        principal.require(Permission::PluginManage)?;
        let (grants, limits) = match &source {
            Source::Request(r) => (r.grants.clone(), r.limits),
            Source::Upload(_) => (None, None),
        };
        let grants = normalise(grants.unwrap_or_default())?;
        if let Some(limits) = &limits {
            check_limits(limits, self.config.fuel)?;
        }
        let (wasm, label) = self.fetch(&source).await?;
        let plugin = self
            .load(wasm.clone(), self.effective_limits(limits))
            .await?;
        let name = plugin.manifest().name.clone();
        let now = db::now();
        let inserted = on_db!(&self.db, pool => sqlx::query(
            "INSERT INTO plugins (name, version, digest, wasm, bundled, source, grants, limits, installed_by, created_at, updated_at)
             VALUES ($1, $2, $3, $4, FALSE, $5, $6, $7, $8, $9, $9)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&name)
        .bind(&plugin.manifest().version)
        .bind(plugin.digest())
        .bind(&wasm)
        .bind(&label)
        .bind(sqlx::types::Json(&grants))
        .bind(limits.map(sqlx::types::Json))
        .bind(principal.user_id)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected());
        if inserted == 0 {
            return Err(Error::Conflict {
                message: format!(
                    "a plugin named {name:?} is already installed; upgrade it with POST /api/v1/plugins/{name}/upgrade"
                ),
                details: Some(json!({ "name": name })),
            });
        }
        let entry = Entry {
            plugin: Arc::new(plugin),
            bundled: false,
            grants: Arc::new(grants),
        };
        self.catalogue.add(entry.clone());
        self.audit
            .record(
                Some(principal.user_id),
                "plugin.installed",
                None,
                json!({ "name": name, "version": entry.plugin.manifest().version,
                        "digest": entry.plugin.digest(), "source": label }),
            )
            .await;
        tracing::info!(plugin = %name, source = %label, "plugin installed");
        self.get(principal, &name).await
    }

    /// Replaces an installed plugin's component, keeping its grants and
    /// limits (admins only). The new manifest must carry the same name.
    pub async fn upgrade(
        &self,
        principal: &Principal,
        name: &str,
        source: Source,
    ) -> Result<PluginInfo> {
        principal.require(Permission::PluginManage)?;
        if let Source::Request(r) = &source {
            if r.grants.is_some() || r.limits.is_some() {
                return Err(Error::validation(
                    "an upgrade keeps grants and limits; change them with PATCH /api/v1/plugins/{name}",
                ));
            }
        }
        let current = self
            .catalogue
            .entry(name)
            .ok_or(Error::NotFound("plugin"))?;
        if current.bundled {
            return Err(Error::conflict(
                "a bundled plugin is upgraded with the server, not over the API",
            ));
        }
        let stored = self.stored(name).await?;
        let (wasm, label) = self.fetch(&source).await?;
        let plugin = self
            .load(wasm.clone(), self.effective_limits(stored.limits))
            .await?;
        if plugin.manifest().name != name {
            return Err(Error::unprocessable(
                "invalid_plugin",
                format!(
                    "the component is the plugin {:?}, not {name:?}",
                    plugin.manifest().name
                ),
            ));
        }
        let previous = current.plugin.manifest().version.clone();
        on_db!(&self.db, pool => sqlx::query(
            "UPDATE plugins SET version = $2, digest = $3, wasm = $4, source = $5, updated_at = $6 WHERE name = $1",
        )
        .bind(name)
        .bind(&plugin.manifest().version)
        .bind(plugin.digest())
        .bind(&wasm)
        .bind(&label)
        .bind(db::now())
        .execute(pool)
        .await
        .map(|_| ())?);
        let version = plugin.manifest().version.clone();
        let digest = plugin.digest().to_owned();
        self.catalogue.add(Entry {
            plugin: Arc::new(plugin),
            bundled: false,
            grants: current.grants.clone(),
        });
        self.audit
            .record(
                Some(principal.user_id),
                "plugin.upgraded",
                None,
                json!({ "name": name, "from": previous, "to": version, "digest": digest, "source": label }),
            )
            .await;
        self.get(principal, name).await
    }

    /// Grants or revokes capabilities and sets limits (admins only). Takes
    /// effect at the plugin's next call.
    pub async fn update(
        &self,
        principal: &Principal,
        name: &str,
        request: UpdatePluginRequest,
    ) -> Result<PluginInfo> {
        principal.require(Permission::PluginManage)?;
        let current = self
            .catalogue
            .entry(name)
            .ok_or(Error::NotFound("plugin"))?;
        let grants = match request.grants {
            Some(grants) => normalise(grants)?,
            None => (*current.grants).clone(),
        };
        if let Some(Some(limits)) = &request.limits {
            check_limits(limits, self.config.fuel)?;
        }
        let mut plugin = current.plugin.clone();
        if let Some(limits) = request.limits {
            let wasm = self.component_bytes(name).await?;
            plugin = Arc::new(self.load(wasm, self.effective_limits(limits)).await?);
            on_db!(&self.db, pool => sqlx::query("UPDATE plugins SET limits = $2 WHERE name = $1")
                .bind(name)
                .bind(limits.map(sqlx::types::Json))
                .execute(pool)
                .await
                .map(|_| ())?);
        }
        on_db!(&self.db, pool => sqlx::query("UPDATE plugins SET grants = $2, updated_at = $3 WHERE name = $1")
            .bind(name)
            .bind(sqlx::types::Json(&grants))
            .bind(db::now())
            .execute(pool)
            .await
            .map(|_| ())?);
        self.catalogue.add(Entry {
            plugin: plugin.clone(),
            bundled: current.bundled,
            grants: Arc::new(grants.clone()),
        });
        self.audit
            .record(
                Some(principal.user_id),
                "plugin.updated",
                None,
                json!({ "name": name, "grants": grants, "limits": plugin.limits() }),
            )
            .await;
        self.get(principal, name).await
    }

    /// The component of `name`: stored for installed plugins, built in for
    /// bundled ones.
    async fn component_bytes(&self, name: &str) -> Result<Vec<u8>> {
        let (_, wasm, bundled, ..) = self.row(name).await?.ok_or(Error::NotFound("plugin"))?;
        if let Some(wasm) = wasm {
            return Ok(wasm);
        }
        if bundled {
            let digest = self
                .catalogue
                .entry(name)
                .map(|e| e.plugin.digest().to_owned());
            for (_, wasm) in BUNDLED {
                if Some(sha256_hex(wasm)) == digest {
                    return Ok(wasm.to_vec());
                }
            }
        }
        Err(Error::Internal(anyhow::anyhow!(
            "the component of plugin {name:?} is missing"
        )))
    }

    /// Removes an installed plugin (admins only); with `purge`, also every
    /// user's key-value data of it.
    pub async fn remove(&self, principal: &Principal, name: &str, purge: bool) -> Result<()> {
        principal.require(Permission::PluginManage)?;
        let entry = self
            .catalogue
            .entry(name)
            .ok_or(Error::NotFound("plugin"))?;
        if entry.bundled {
            return Err(Error::conflict(
                "a bundled plugin cannot be removed; revoke its grants instead",
            ));
        }
        on_db!(&self.db, pool => sqlx::query("DELETE FROM plugins WHERE name = $1 AND bundled = FALSE")
            .bind(name)
            .execute(pool)
            .await
            .map(|_| ())?);
        if purge {
            on_db!(&self.db, pool => sqlx::query("DELETE FROM plugin_kv WHERE plugin = $1")
                .bind(name)
                .execute(pool)
                .await
                .map(|_| ())?);
        }
        self.catalogue.remove(name);
        self.audit
            .record(
                Some(principal.user_id),
                "plugin.removed",
                None,
                json!({ "name": name, "version": entry.plugin.manifest().version, "purged": purge }),
            )
            .await;
        Ok(())
    }
}
