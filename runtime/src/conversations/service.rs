//! Business rules of conversations: a conversation belongs to its creator and
//! is bound to one of the creator's live agents (checked through the agents
//! service); messages are appended in order and read with a cursor.

use uuid::Uuid;

use super::model::*;
use super::repo::{
    ConversationRepo, ConversationRow, MessageRow, NewConversation, NewHistoryMessage,
};
use crate::agents::repo::AgentRow;
use crate::agents::AgentService;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::pagination::{Page, PageParams};
use crate::users::model::{Permission, Principal};
use serde_json::{Map, Value};

/// Conversations and messages.
#[derive(Clone, Debug)]
pub struct ConversationService {
    repo: ConversationRepo,
    agents: AgentService,
}

impl From<ConversationRow> for ConversationResponse {
    fn from(row: ConversationRow) -> Self {
        ConversationResponse {
            id: row.id,
            owner_id: row.user_id,
            agent_id: row.agent_id,
            title: row.title,
            metadata: row.metadata.0,
            message_count: row.message_count,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

impl From<MessageRow> for MessageResponse {
    fn from(row: MessageRow) -> Self {
        MessageResponse {
            id: row.id,
            conversation_id: row.conversation_id,
            seq: row.seq,
            // The CHECK constraint guarantees one of the four names.
            role: MessageRole::parse(&row.role).unwrap_or(MessageRole::User),
            content: row.content.0,
            metadata: row.metadata.0,
            created_at: row.created_at,
        }
    }
}

impl ConversationService {
    /// A service over `db`, checking agents through `agents`.
    pub fn new(db: Db, agents: AgentService) -> Self {
        ConversationService {
            repo: ConversationRepo::new(db),
            agents,
        }
    }

    async fn visible(&self, principal: &Principal, id: Uuid) -> Result<ConversationRow> {
        self.repo
            .get(id, principal.owner_scope())
            .await?
            .ok_or(Error::NotFound("conversation"))
    }

    /// Starts a conversation with one of the caller's agents.
    pub async fn create(
        &self,
        principal: &Principal,
        input: ConversationInput,
    ) -> Result<ConversationResponse> {
        self.create_with_id(principal, Uuid::now_v7(), input).await
    }

    /// [`Self::create`] with an id the caller chose (a schedule's firing,
    /// so that a retry after a crash finds the conversation it made).
    pub async fn create_with_id(
        &self,
        principal: &Principal,
        id: Uuid,
        input: ConversationInput,
    ) -> Result<ConversationResponse> {
        principal.require(Permission::ConversationWrite)?;
        let title = parse_title(input.title)?;
        check_metadata(&input.metadata)?;
        let agent = self.agents.visible(principal, input.agent_id).await?;
        let row = self
            .repo
            .insert(
                id,
                principal.user_id,
                agent.id,
                title.as_deref(),
                &input.metadata,
            )
            .await?;
        Ok(row.into())
    }

    /// Starts conversations for their owners in one transaction: each
    /// with its owner's principal (which must hold the right to write) and
    /// an agent the caller checked is the owner's and alive (a schedule's
    /// firings). Titles and metadata are the caller's own, not a user's
    /// input.
    pub async fn create_many(&self, items: &[(Principal, NewConversation)]) -> Result<()> {
        let mut rows = Vec::with_capacity(items.len());
        for (principal, row) in items {
            principal.require(Permission::ConversationWrite)?;
            rows.push(NewConversation {
                owner: principal.user_id,
                ..row.clone()
            });
        }
        self.repo.insert_many(&rows).await
    }

    /// Starts a conversation with `agent` (one of the caller's, as the
    /// caller already checked) and an imported history, in one transaction
    /// (the history was validated by the caller: it may hold tool calls and
    /// results, which posts may not).
    pub async fn import(
        &self,
        principal: &Principal,
        agent: &AgentRow,
        title: Option<String>,
        metadata: Map<String, Value>,
        history: &[NewHistoryMessage],
    ) -> Result<ConversationResponse> {
        principal.require(Permission::ConversationWrite)?;
        if principal
            .owner_scope()
            .is_some_and(|me| me != agent.user_id)
        {
            return Err(Error::NotFound("agent"));
        }
        let title = parse_title(title)?;
        check_metadata(&metadata)?;
        let row = self
            .repo
            .insert_with_history(
                principal.user_id,
                agent.id,
                title.as_deref(),
                &metadata,
                history,
            )
            .await?;
        Ok(row.into())
    }

    /// Appends an already validated history to one of the caller's
    /// conversations, in one transaction; returns the number of the
    /// conversation's last message before it.
    pub async fn append_history(
        &self,
        principal: &Principal,
        id: Uuid,
        history: &[NewHistoryMessage],
    ) -> Result<i64> {
        principal.require(Permission::ConversationWrite)?;
        self.visible(principal, id).await?;
        self.repo
            .append_many(id, history)
            .await?
            .ok_or(Error::NotFound("conversation"))
    }

    /// Takes back what [`ConversationService::append_history`] appended
    /// after `after_seq`, if nothing came after it.
    pub async fn take_back(&self, id: Uuid, after_seq: i64, count: usize) -> Result<bool> {
        self.repo.remove_appended(id, after_seq, count as i64).await
    }

    /// Every message of a conversation the caller may read, oldest first.
    pub async fn history(&self, principal: &Principal, id: Uuid) -> Result<Vec<MessageRow>> {
        principal.require(Permission::ConversationRead)?;
        self.visible(principal, id).await?;
        self.repo.messages(id, 0, i64::MAX).await
    }

    /// One conversation.
    pub async fn get(&self, principal: &Principal, id: Uuid) -> Result<ConversationResponse> {
        principal.require(Permission::ConversationRead)?;
        Ok(self.visible(principal, id).await?.into())
    }

    /// The caller's conversations (everyone's for admins), most recent first.
    pub async fn list(
        &self,
        principal: &Principal,
        filter: ConversationFilter,
        page: PageParams,
    ) -> Result<Page<ConversationResponse>> {
        principal.require(Permission::ConversationRead)?;
        let page = page.validate()?;
        let title = filter.title_pattern()?;
        let (rows, total) = self
            .repo
            .list(principal.owner_scope(), filter.agent_id, title, page)
            .await?;
        Ok(page.wrap(rows, total).map(ConversationResponse::from))
    }

    /// Renames a conversation or replaces its metadata.
    pub async fn update(
        &self,
        principal: &Principal,
        id: Uuid,
        patch: ConversationPatch,
    ) -> Result<ConversationResponse> {
        principal.require(Permission::ConversationWrite)?;
        let title = match patch.title {
            Some(t) => Some(parse_title(t)?),
            None => None,
        };
        if let Some(metadata) = &patch.metadata {
            check_metadata(metadata)?;
        }
        self.visible(principal, id).await?;
        let row = self
            .repo
            .update(
                id,
                title.as_ref().map(|t| t.as_deref()),
                patch.metadata.as_ref(),
            )
            .await?
            .ok_or(Error::NotFound("conversation"))?;
        Ok(row.into())
    }

    /// Deletes a conversation and its messages.
    pub async fn delete(&self, principal: &Principal, id: Uuid) -> Result<()> {
        principal.require(Permission::ConversationWrite)?;
        self.visible(principal, id).await?;
        if self.repo.delete(id).await? {
            Ok(())
        } else {
            Err(Error::NotFound("conversation"))
        }
    }

    /// Appends a message.
    pub async fn post_message(
        &self,
        principal: &Principal,
        id: Uuid,
        input: MessageInput,
    ) -> Result<MessageResponse> {
        principal.require(Permission::ConversationWrite)?;
        let (role, parts, metadata) = input.into_parts()?;
        self.visible(principal, id).await?;
        let row = self
            .repo
            .append(id, role.as_str(), &parts, &metadata)
            .await?
            .ok_or(Error::NotFound("conversation"))?;
        Ok(row.into())
    }

    /// Messages in order, one cursor page at a time.
    pub async fn messages(
        &self,
        principal: &Principal,
        id: Uuid,
        cursor: MessageCursor,
    ) -> Result<MessagePage> {
        principal.require(Permission::ConversationRead)?;
        let cursor = cursor.validate()?;
        self.visible(principal, id).await?;
        let limit = cursor.limit as usize;
        let (rows, has_more, next_cursor) = match cursor.before_seq {
            Some(before) => {
                let mut rows = self
                    .repo
                    .messages_before(id, before, limit as i64 + 1)
                    .await?;
                let has_more = rows.len() > limit;
                rows.truncate(limit);
                rows.reverse();
                let next = has_more
                    .then(|| rows.first().map(|m| m.seq.to_string()))
                    .flatten();
                (rows, has_more, next)
            }
            None => {
                let mut rows = self
                    .repo
                    .messages(id, cursor.after_seq, limit as i64 + 1)
                    .await?;
                let has_more = rows.len() > limit;
                rows.truncate(limit);
                let next = has_more
                    .then(|| rows.last().map(|m| m.seq.to_string()))
                    .flatten();
                (rows, has_more, next)
            }
        };
        Ok(MessagePage {
            items: rows.into_iter().map(MessageResponse::from).collect(),
            next_cursor,
            has_more,
        })
    }
}
