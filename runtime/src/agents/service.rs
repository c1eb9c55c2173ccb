//! Business rules of agents: permissions and tenancy, validation through
//! [`AgentSpec`], optimistic concurrency (`If-Match`), revisions, soft delete
//! and cloning.

use uuid::Uuid;

use super::model::*;
use super::repo::{AgentRepo, AgentRow, RevisionRow};
use crate::db::Db;
use crate::error::{Error, Result};
use crate::pagination::{Page, PageParams};
use crate::tools::ToolCatalogue;
use crate::users::model::{Permission, Principal};

/// How many times an update without `If-Match` retries after losing a race.
const MAX_UPDATE_ATTEMPTS: usize = 64;

/// Agents and their revisions.
#[derive(Clone, Debug)]
pub struct AgentService {
    repo: AgentRepo,
    tools: ToolCatalogue,
}

impl From<AgentRow> for AgentResponse {
    fn from(row: AgentRow) -> Self {
        AgentResponse {
            spec: row.spec(),
            id: row.id,
            owner_id: row.user_id,
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

impl From<RevisionRow> for RevisionResponse {
    fn from(row: RevisionRow) -> Self {
        RevisionResponse {
            agent_id: row.agent_id,
            version: row.version,
            spec: row.snapshot.0,
            created_by: row.created_by,
            created_at: row.created_at,
        }
    }
}

fn duplicate_name(name: &str) -> Error {
    Error::Conflict {
        message: format!("you already have an agent named {name:?}"),
        details: Some(serde_json::json!({ "field": "name" })),
    }
}

/// A change to apply to the current definition.
enum Change {
    Replace(AgentSpec),
    Patch(AgentPatch),
}

impl AgentService {
    /// A service over `db`.
    pub fn new(db: Db, tools: ToolCatalogue) -> Self {
        AgentService {
            repo: AgentRepo::new(db),
            tools,
        }
    }

    /// Refuses (422) a spec naming a tool the catalogue does not have.
    fn check_tools(&self, spec: &AgentSpec, owner: Uuid) -> Result<()> {
        let unknown: Vec<&str> = spec
            .tools
            .iter()
            .map(String::as_str)
            .filter(|name| !self.tools.contains(name, Some(owner)))
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(Error::unprocessable(
                "unknown_tool",
                format!("no such tool in the catalogue: {}", unknown.join(", ")),
            ))
        }
    }

    /// A live agent the caller may see, or 404.
    pub async fn visible(&self, principal: &Principal, id: Uuid) -> Result<AgentRow> {
        self.repo
            .get(id, principal.owner_scope())
            .await?
            .ok_or(Error::NotFound("agent"))
    }

    /// The caller's own live agent called `name`, or 404 (admins too
    /// address their own agents by name).
    pub async fn own_by_name(&self, principal: &Principal, name: &str) -> Result<AgentRow> {
        principal.require(Permission::AgentRead)?;
        self.repo
            .by_name(principal.user_id, name)
            .await?
            .ok_or(Error::NotFound("agent"))
    }

    /// The caller's own live agents (at most `limit`), oldest first.
    pub async fn own(&self, principal: &Principal, limit: i64) -> Result<Vec<AgentRow>> {
        principal.require(Permission::AgentRead)?;
        self.repo.of_owner(principal.user_id, limit).await
    }

    /// Creates an agent owned by the caller.
    pub async fn create(&self, principal: &Principal, input: AgentInput) -> Result<AgentResponse> {
        principal.require(Permission::AgentCreate)?;
        let spec = input.into_spec()?;
        self.check_tools(&spec, principal.user_id)?;
        match self.repo.insert(principal.user_id, &spec).await {
            Err(Error::Conflict { .. }) => Err(duplicate_name(&spec.name)),
            other => Ok(other?.into()),
        }
    }

    /// One agent.
    pub async fn get(&self, principal: &Principal, id: Uuid) -> Result<AgentResponse> {
        principal.require(Permission::AgentRead)?;
        Ok(self.visible(principal, id).await?.into())
    }

    /// The caller's agents (every agent for admins), filtered and paged.
    pub async fn list(
        &self,
        principal: &Principal,
        filter: AgentFilter,
        page: PageParams,
    ) -> Result<Page<AgentResponse>> {
        principal.require(Permission::AgentRead)?;
        let page = page.validate()?;
        let owner = match (principal.owner_scope(), filter.owner_id) {
            (Some(me), Some(other)) if me != other => return Ok(page.wrap(Vec::new(), 0)),
            (Some(me), _) => Some(me),
            (None, wanted) => wanted,
        };
        let (rows, total) = self.repo.list(owner, &filter, page).await?;
        Ok(page.wrap(rows, total).map(AgentResponse::from))
    }

    /// Replaces the whole definition.
    pub async fn replace(
        &self,
        principal: &Principal,
        id: Uuid,
        input: AgentInput,
        if_match: Option<i64>,
    ) -> Result<AgentResponse> {
        let spec = input.into_spec()?;
        self.change(principal, id, Change::Replace(spec), if_match)
            .await
    }

    /// Changes the fields present in `patch`.
    pub async fn patch(
        &self,
        principal: &Principal,
        id: Uuid,
        patch: AgentPatch,
        if_match: Option<i64>,
    ) -> Result<AgentResponse> {
        self.change(principal, id, Change::Patch(patch), if_match)
            .await
    }

    /// Applies a change as a new version. With `if_match`, the change applies
    /// only to that version (409 otherwise); without it, a change that loses a
    /// race to another is re-applied to the newer version.
    async fn change(
        &self,
        principal: &Principal,
        id: Uuid,
        change: Change,
        if_match: Option<i64>,
    ) -> Result<AgentResponse> {
        principal.require(Permission::AgentUpdate)?;
        for _ in 0..MAX_UPDATE_ATTEMPTS {
            let current = self.visible(principal, id).await?;
            if let Some(expected) = if_match {
                if expected != current.version {
                    return Err(version_conflict(current.version));
                }
            }
            let spec = match &change {
                Change::Replace(spec) => spec.clone(),
                Change::Patch(patch) => patch.clone().apply(current.spec())?,
            };
            if spec == current.spec() {
                return Ok(current.into());
            }
            if spec.tools != current.spec().tools {
                self.check_tools(&spec, current.user_id)?;
            }
            match self
                .repo
                .update(id, current.version, &spec, principal.user_id)
                .await
            {
                Ok(Some(row)) => return Ok(row.into()),
                Ok(None) if if_match.is_some() => {
                    return Err(version_conflict(current.version + 1));
                }
                Ok(None) => continue,
                Err(Error::Conflict { .. }) => return Err(duplicate_name(&spec.name)),
                Err(e) => return Err(e),
            }
        }
        Err(Error::conflict(
            "the agent is being changed by many clients at once; retry",
        ))
    }

    /// Soft-deletes an agent: it disappears from every read, its name is free
    /// again, its revisions stay.
    pub async fn delete(&self, principal: &Principal, id: Uuid) -> Result<()> {
        principal.require(Permission::AgentDelete)?;
        if self.repo.soft_delete(id, principal.owner_scope()).await? {
            Ok(())
        } else {
            Err(Error::NotFound("agent"))
        }
    }

    /// Copies an agent into a new one owned by the caller, at version 1.
    pub async fn clone_agent(
        &self,
        principal: &Principal,
        id: Uuid,
        request: CloneRequest,
    ) -> Result<AgentResponse> {
        principal.require(Permission::AgentCreate)?;
        let source = self.visible(principal, id).await?;
        let mut spec = source.spec();
        if let Some(name) = request.name {
            spec.name = parse_name(&name)?;
            return match self.repo.insert(principal.user_id, &spec).await {
                Err(Error::Conflict { .. }) => Err(duplicate_name(&spec.name)),
                other => Ok(other?.into()),
            };
        }
        for n in 1..=50 {
            let suffix = if n == 1 {
                " (copy)".to_owned()
            } else {
                format!(" (copy {n})")
            };
            let base: String = source
                .name
                .chars()
                .take(MAX_NAME_CHARS - suffix.chars().count())
                .collect();
            spec.name = format!("{base}{suffix}");
            match self.repo.insert(principal.user_id, &spec).await {
                Err(Error::Conflict { .. }) => continue,
                other => return Ok(other?.into()),
            }
        }
        Err(Error::conflict(
            "too many copies of this agent; name the clone explicitly",
        ))
    }

    /// An agent's revisions, newest first.
    pub async fn revisions(
        &self,
        principal: &Principal,
        id: Uuid,
        page: PageParams,
    ) -> Result<Page<RevisionResponse>> {
        principal.require(Permission::AgentRead)?;
        let page = page.validate()?;
        self.visible(principal, id).await?;
        let (rows, total) = self.repo.revisions(id, page).await?;
        Ok(page.wrap(rows, total).map(RevisionResponse::from))
    }

    /// One revision of an agent.
    pub async fn revision(
        &self,
        principal: &Principal,
        id: Uuid,
        version: i64,
    ) -> Result<RevisionResponse> {
        principal.require(Permission::AgentRead)?;
        self.visible(principal, id).await?;
        let row = self
            .repo
            .revision(id, version)
            .await?
            .ok_or(Error::NotFound("revision"))?;
        Ok(row.into())
    }
}

fn version_conflict(current: i64) -> Error {
    Error::Conflict {
        message: "the agent was changed since the version in If-Match".to_owned(),
        details: Some(serde_json::json!({ "current_version": current })),
    }
}
