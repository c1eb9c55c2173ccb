//! SQL for conversations and messages. A message's `seq` is one more than
//! the conversation's last (messages are never removed one by one, so the
//! last `seq` is also the message count); the unique `(conversation_id, seq)`
//! index refuses a second message with the same number, and a post that
//! meets one retries with the next.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::types::Json;
use uuid::Uuid;

use super::model::ContentPart;
use crate::db::{self, Db};
use crate::error::Result;
use crate::on_db;
use crate::pagination::PageRequest;

/// A row of `conversations`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConversationRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub agent_id: Uuid,
    pub title: Option<String>,
    pub metadata: Json<Map<String, Value>>,
    pub message_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A row of `messages`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MessageRow {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub seq: i64,
    pub role: String,
    pub content: Json<Vec<ContentPart>>,
    pub metadata: Json<Map<String, Value>>,
    pub created_at: DateTime<Utc>,
}

/// A message of a history imported with its conversation.
#[derive(Debug, Clone)]
pub struct NewHistoryMessage {
    pub role: &'static str,
    pub content: Vec<ContentPart>,
    pub metadata: Map<String, Value>,
}

/// The columns of a [`ConversationRow`], its message count included.
const COLUMNS: &str = "id, user_id, agent_id, title, metadata, \
     (SELECT COALESCE(MAX(m.seq), 0) FROM messages m WHERE m.conversation_id = conversations.id) AS message_count, \
     created_at, updated_at";
/// A conversation to insert with others.
#[derive(Debug, Clone)]
pub struct NewConversation {
    /// Its id.
    pub id: Uuid,
    /// Its owner.
    pub owner: Uuid,
    /// Its agent.
    pub agent: Uuid,
    /// Its title.
    pub title: String,
    /// Its metadata.
    pub metadata: Map<String, Value>,
}

const INSERT_COLUMNS: &str = "id, user_id, agent_id, title, metadata, created_at, updated_at";
const MESSAGE_COLUMNS: &str = "id, conversation_id, seq, role, content, metadata, created_at";

/// Queries over conversations and messages.
#[derive(Clone, Debug)]
pub struct ConversationRepo {
    db: Db,
}

impl ConversationRepo {
    /// A repository over `db`.
    pub fn new(db: Db) -> Self {
        ConversationRepo { db }
    }

    /// Inserts a conversation.
    pub async fn insert(
        &self,
        id: Uuid,
        owner: Uuid,
        agent: Uuid,
        title: Option<&str>,
        metadata: &Map<String, Value>,
    ) -> Result<ConversationRow> {
        let sql = format!(
            "INSERT INTO conversations ({INSERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING {COLUMNS}"
        );
        Ok(on_db!(&self.db, pool => sqlx::query_as(&sql)
            .bind(id)
            .bind(owner)
            .bind(agent)
            .bind(title)
            .bind(Json(metadata))
            .bind(db::now())
            .fetch_one(pool)
            .await?))
    }

    /// Inserts conversations in one transaction; ids that exist already
    /// are left as they are.
    pub async fn insert_many(&self, rows: &[NewConversation]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO conversations ({INSERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $6)
             ON CONFLICT (id) DO NOTHING"
        );
        let now = db::now();
        on_db!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            for row in rows {
                sqlx::query(&sql)
                    .bind(row.id)
                    .bind(row.owner)
                    .bind(row.agent)
                    .bind(&row.title)
                    .bind(Json(&row.metadata))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Inserts a conversation with its history (numbered from 1) in one
    /// transaction: an imported history is all there, or not at all.
    pub async fn insert_with_history(
        &self,
        owner: Uuid,
        agent: Uuid,
        title: Option<&str>,
        metadata: &Map<String, Value>,
        history: &[NewHistoryMessage],
    ) -> Result<ConversationRow> {
        if history.is_empty() {
            // One statement, no transaction.
            return self
                .insert(Uuid::now_v7(), owner, agent, title, metadata)
                .await;
        }
        let sql = format!(
            "INSERT INTO conversations ({INSERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $6)"
        );
        let id = Uuid::now_v7();
        let now = db::now();
        on_db!(&self.db, pool, D => {
            let mut tx = pool.begin().await?;
            sqlx::query(&sql)
                .bind(id)
                .bind(owner)
                .bind(agent)
                .bind(title)
                .bind(Json(metadata))
                .bind(now)
                .execute(&mut *tx)
                .await?;
            // Bounded by the body limit; a few hundred rows per statement.
            for (chunk_no, chunk) in history.chunks(200).enumerate() {
                let mut qb = sqlx::QueryBuilder::<D>::new(format!("INSERT INTO messages ({MESSAGE_COLUMNS}) "));
                qb.push_values(chunk.iter().enumerate(), |mut b, (i, m)| {
                    b.push_bind(Uuid::now_v7())
                        .push_bind(id)
                        .push_bind((chunk_no * 200 + i + 1) as i64)
                        .push_bind(m.role)
                        .push_bind(Json(&m.content))
                        .push_bind(Json(&m.metadata))
                        .push_bind(now);
                });
                qb.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok::<_, crate::error::Error>(())
        })?;
        // What was written, without reading it back.
        Ok(ConversationRow {
            id,
            user_id: owner,
            agent_id: agent,
            title: title.map(str::to_owned),
            metadata: Json(metadata.clone()),
            message_count: history.len() as i64,
            created_at: now,
            updated_at: now,
        })
    }

    /// A conversation, if `owner` (when given) owns it.
    pub async fn get(&self, id: Uuid, owner: Option<Uuid>) -> Result<Option<ConversationRow>> {
        on_db!(&self.db, pool, D => {
            let mut qb = sqlx::QueryBuilder::<D>::new(format!("SELECT {COLUMNS} FROM conversations WHERE id = "));
            qb.push_bind(id);
            if let Some(owner) = owner {
                qb.push(" AND user_id = ").push_bind(owner);
            }
            Ok(qb.build_query_as().fetch_optional(pool).await?)
        })
    }

    /// One page of conversations, most recently active first, and the total.
    pub async fn list(
        &self,
        owner: Option<Uuid>,
        agent: Option<Uuid>,
        title: Option<String>,
        page: PageRequest,
    ) -> Result<(Vec<ConversationRow>, i64)> {
        on_db!(&self.db, pool, D => {
            let mut count = sqlx::QueryBuilder::<D>::new("SELECT COUNT(*) FROM conversations WHERE 1=1");
            let mut select = sqlx::QueryBuilder::<D>::new(format!("SELECT {COLUMNS} FROM conversations WHERE 1=1"));
            for qb in [&mut count, &mut select] {
                if let Some(owner) = owner {
                    qb.push(" AND user_id = ").push_bind(owner);
                }
                if let Some(agent) = agent {
                    qb.push(" AND agent_id = ").push_bind(agent);
                }
                if let Some(title) = &title {
                    qb.push(" AND LOWER(title) LIKE ")
                        .push_bind(title.clone())
                        .push(" ESCAPE '\\'");
                }
            }
            select
                .push(" ORDER BY updated_at DESC, id DESC LIMIT ")
                .push_bind(page.limit())
                .push(" OFFSET ")
                .push_bind(page.offset());
            let total: i64 = count.build_query_scalar().fetch_one(pool).await?;
            let rows: Vec<ConversationRow> = select.build_query_as().fetch_all(pool).await?;
            Ok((rows, total))
        })
    }

    /// Sets the title and/or metadata.
    pub async fn update(
        &self,
        id: Uuid,
        title: Option<Option<&str>>,
        metadata: Option<&Map<String, Value>>,
    ) -> Result<Option<ConversationRow>> {
        let sql = format!(
            "UPDATE conversations SET
                title = CASE WHEN $2 THEN $3 ELSE title END,
                metadata = COALESCE($4, metadata),
                updated_at = $5
             WHERE id = $1 RETURNING {COLUMNS}"
        );
        Ok(on_db!(&self.db, pool => sqlx::query_as(&sql)
            .bind(id)
            .bind(title.is_some())
            .bind(title.flatten())
            .bind(metadata.map(Json))
            .bind(db::now())
            .fetch_optional(pool)
            .await?))
    }

    /// Deletes a conversation with its messages and runs. The usage of its
    /// runs is settled in the usage ledger first, in the same transaction:
    /// usage reports and quotas do not forget what was spent.
    pub async fn delete(&self, id: Uuid) -> Result<bool> {
        Ok(on_db!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO usage_ledger (run_id, user_id, agent_id, provider, model, created_at,
                                           reserved_tokens, input_tokens, output_tokens, settled)
                 SELECT id, user_id, agent_id, provider, model, created_at, 0,
                        input_tokens, output_tokens, TRUE
                 FROM runs WHERE conversation_id = $1
                 ON CONFLICT (run_id) DO UPDATE SET created_at = excluded.created_at,
                     reserved_tokens = 0, input_tokens = excluded.input_tokens,
                     output_tokens = excluded.output_tokens, settled = TRUE",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            let deleted = sqlx::query("DELETE FROM conversations WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            deleted == 1
        }))
    }

    /// Appends a message at the next sequence number.
    pub async fn append(
        &self,
        conversation: Uuid,
        role: &str,
        content: &[ContentPart],
        metadata: &Map<String, Value>,
    ) -> Result<Option<MessageRow>> {
        let insert = format!(
            "INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {MESSAGE_COLUMNS}"
        );
        let now = db::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let stored: std::result::Result<Option<MessageRow>, sqlx::Error> = on_db!(&self.db, pool => async {
                let mut tx = pool.begin().await?;
                // Posts to one conversation wait for each other here (the
                // row's lock); a run's writer may still take a number first.
                let touched = sqlx::query("UPDATE conversations SET updated_at = $2 WHERE id = $1")
                    .bind(conversation)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if touched == 0 {
                    return Ok(None);
                }
                let seq: i64 = sqlx::query_scalar(
                    "SELECT COALESCE(MAX(seq), 0) + 1 FROM messages WHERE conversation_id = $1",
                )
                .bind(conversation)
                .fetch_one(&mut *tx)
                .await?;
                let row: MessageRow = sqlx::query_as(&insert)
                    .bind(Uuid::now_v7())
                    .bind(conversation)
                    .bind(seq)
                    .bind(role)
                    .bind(Json(content))
                    .bind(Json(metadata))
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(Some(row))
            }.await);
            match stored {
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() && attempt < 5 => continue,
                other => return Ok(other?),
            }
        }
    }

    /// Appends messages at the next sequence numbers, in one transaction.
    /// Returns the number the conversation's last message had before, or
    /// `None` if there is no such conversation.
    pub async fn append_many(
        &self,
        conversation: Uuid,
        history: &[NewHistoryMessage],
    ) -> Result<Option<i64>> {
        let now = db::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let stored: std::result::Result<Option<i64>, sqlx::Error> = on_db!(&self.db, pool, D => async {
                let mut tx = pool.begin().await?;
                let touched = sqlx::query("UPDATE conversations SET updated_at = $2 WHERE id = $1")
                    .bind(conversation)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if touched == 0 {
                    return Ok(None);
                }
                let last: i64 = sqlx::query_scalar(
                    "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE conversation_id = $1",
                )
                .bind(conversation)
                .fetch_one(&mut *tx)
                .await?;
                if !history.is_empty() {
                    let mut qb = sqlx::QueryBuilder::<D>::new(format!("INSERT INTO messages ({MESSAGE_COLUMNS}) "));
                    qb.push_values(history.iter().enumerate(), |mut b, (i, m)| {
                        b.push_bind(Uuid::now_v7())
                            .push_bind(conversation)
                            .push_bind(last + i as i64 + 1)
                            .push_bind(m.role)
                            .push_bind(Json(&m.content))
                            .push_bind(Json(&m.metadata))
                            .push_bind(now);
                    });
                    qb.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(Some(last))
            }.await);
            match stored {
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() && attempt < 5 => continue,
                other => return Ok(other?),
            }
        }
    }

    /// Takes back `count` messages appended after `after_seq`, if nothing
    /// came after them (numbers stay without gaps); returns whether it did.
    pub async fn remove_appended(
        &self,
        conversation: Uuid,
        after_seq: i64,
        count: i64,
    ) -> Result<bool> {
        let removed = on_db!(&self.db, pool => sqlx::query(
            "DELETE FROM messages WHERE conversation_id = $1 AND seq > $2 AND seq <= $2 + $3
               AND NOT EXISTS (SELECT 1 FROM messages later WHERE later.conversation_id = $1 AND later.seq > $2 + $3)",
        )
        .bind(conversation)
        .bind(after_seq)
        .bind(count)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(removed == count as u64)
    }

    /// Up to `limit` messages after `after_seq`, oldest first.
    pub async fn messages(
        &self,
        conversation: Uuid,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<MessageRow>> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 AND seq > $2 ORDER BY seq ASC LIMIT $3"
        );
        Ok(on_db!(&self.db, pool => sqlx::query_as(&sql)
            .bind(conversation)
            .bind(after_seq)
            .bind(limit)
            .fetch_all(pool)
            .await?))
    }

    /// The `limit` messages before `before_seq`, newest first.
    pub async fn messages_before(
        &self,
        conversation: Uuid,
        before_seq: i64,
        limit: i64,
    ) -> Result<Vec<MessageRow>> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
        );
        Ok(on_db!(&self.db, pool => sqlx::query_as(&sql)
            .bind(conversation)
            .bind(before_seq)
            .bind(limit)
            .fetch_all(pool)
            .await?))
    }
}
