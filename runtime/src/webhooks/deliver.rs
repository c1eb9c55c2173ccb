//! The delivery worker: every node may run one. A node leases due
//! deliveries (`FOR UPDATE SKIP LOCKED` on PostgreSQL), sends each, and
//! records the attempt and what comes next in writes fenced by its lease,
//! so two nodes never send one attempt. A failed attempt is retried after
//! the next wait of `webhooks.retry_ms` (with jitter); after the last the
//! delivery fails. A subscription whose attempts failed
//! `webhooks.disable_after_failures` times in a row is disabled, with a
//! note.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{
    message_id, DeliveryRow, SubscriptionRow, WebhookService, DELIVERY_COLUMNS, SUB_COLUMNS,
};
use crate::error::Result;
use crate::on_db;

/// Deliveries a node leases per look, at most.
const BATCH: i64 = 200;
/// Due deliveries a look considers (the oldest of those with room).
const CANDIDATES: i64 = 2000;
/// Attempts of one subscription in flight at once, across nodes.
const PER_SUBSCRIPTION: i64 = 8;
/// Attempts of one owner's subscriptions (or of all server-wide ones) in
/// flight at once, across nodes.
const PER_OWNER: i64 = 16;
/// Bytes of a receiver's answer kept in the log on failure.
const MAX_ERROR_BODY: usize = 300;

/// What an attempt came to.
struct Outcome {
    status_code: Option<i64>,
    duration_ms: i64,
    error: Option<String>,
}

impl Outcome {
    fn delivered(&self) -> bool {
        self.status_code.is_some_and(|c| (200..300).contains(&c))
    }
}

/// An attempt's result, waiting to be recorded.
struct Record {
    delivery: Uuid,
    subscription: Uuid,
    /// Whether it counts in the subscription's run of failures (it was
    /// enabled).
    counts: bool,
    attempt: i64,
    status: &'static str,
    next: i64,
    payload: String,
    outcome: Outcome,
    at_ms: i64,
}

/// Attempts recorded per transaction, at most.
const RECORD_BATCH: usize = 256;

/// The HTTP clients of deliveries: users' (public addresses only, unless
/// the operator allows more) and server-wide ones; neither follows
/// redirects or uses a proxy.
#[derive(Clone)]
struct Clients {
    restricted: reqwest::Client,
    open: reqwest::Client,
}

impl Clients {
    fn new(timeout: Duration) -> Clients {
        let base = || {
            reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(10)))
                .user_agent(concat!("Orchestra-Webhooks/", env!("CARGO_PKG_VERSION")))
        };
        Clients {
            restricted: base()
                .dns_resolver(Arc::new(crate::egress::PublicOnly::default()))
                .build()
                .expect("a client without custom TLS builds"),
            open: base().build().expect("a client without custom TLS builds"),
        }
    }
}

impl WebhookService {
    /// Starts this node's delivery worker; it stops when `shutdown` fires.
    pub fn start_delivery(&self, shutdown: tokio_util::sync::CancellationToken) {
        let this = self.clone();
        let node = Uuid::now_v7();
        let clients = Clients::new(Duration::from_secs(self.config.timeout_secs));
        let slots = Arc::new(tokio::sync::Semaphore::new(self.config.concurrency));
        let freed = Arc::new(tokio::sync::Notify::new());
        // Results are recorded in groups (one transaction for whatever
        // finished meanwhile), by one task; a slot is free once its
        // result is recorded.
        let (results, mut queue) =
            tokio::sync::mpsc::unbounded_channel::<(Record, tokio::sync::OwnedSemaphorePermit)>();
        let recorder = self.clone();
        let recorder_freed = freed.clone();
        tokio::spawn(async move {
            while let Some(first) = queue.recv().await {
                let mut batch = vec![first];
                while batch.len() < RECORD_BATCH {
                    match queue.try_recv() {
                        Ok(more) => batch.push(more),
                        Err(_) => break,
                    }
                }
                let (records, permits): (Vec<Record>, Vec<_>) = batch.into_iter().unzip();
                if let Err(e) = recorder.record(node, &records).await {
                    // The leases expire and the deliveries are tried again.
                    tracing::warn!(error = %e, "recording webhook attempts failed");
                }
                drop(permits);
                recorder_freed.notify_one();
            }
        });
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(this.config.poll_ms));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                    // An attempt ended: its subscription may have more.
                    _ = freed.notified() => {}
                }
                if let Err(e) = this.deliver_due(node, &clients, &slots, &results).await {
                    tracing::warn!(error = %e, "the webhook worker's look for due deliveries failed");
                }
            }
        });
    }

    fn lease_ms(&self) -> i64 {
        (self.config.timeout_secs as i64 + 30) * 1000
    }

    /// Leases as many due deliveries as this node has free slots and
    /// starts an attempt of each. Fair to every subscription and user: one
    /// subscription has at most [`PER_SUBSCRIPTION`] attempts in flight
    /// (on all nodes), one owner at most [`PER_OWNER`]; a slow or dead
    /// receiver holds back its own deliveries, not others'.
    async fn deliver_due(
        &self,
        node: Uuid,
        clients: &Clients,
        slots: &Arc<tokio::sync::Semaphore>,
        results: &tokio::sync::mpsc::UnboundedSender<(Record, tokio::sync::OwnedSemaphorePermit)>,
    ) -> Result<()> {
        let free = slots.available_permits().min(BATCH as usize) as i64;
        if free == 0 {
            return Ok(());
        }
        let now = Utc::now().timestamp_millis();
        let due_now = "status = 'pending' AND next_attempt_ms <= $1 AND (lease_until IS NULL OR lease_until < $1)";
        // First a read, which holds no lock while it looks: what is in
        // flight (on any node), and from it the subscriptions with no room
        // (their own, or their owner's); the candidates are the oldest due
        // deliveries of the others (from the covering index alone), ranked
        // so that one subscription or owner takes only its share.
        let pick = format!(
            "
                 WITH busy_subs AS (
                   SELECT subscription_id, COUNT(*) AS n FROM webhook_deliveries
                   WHERE status = 'pending' AND lease_until >= $1 GROUP BY subscription_id
                 ),
                 busy_owners AS (
                   SELECT COALESCE(s.owner_id, $3) AS owner, SUM(b.n) AS n
                   FROM busy_subs b JOIN webhook_subscriptions s ON s.id = b.subscription_id
                   GROUP BY COALESCE(s.owner_id, $3)
                 ),
                 closed AS (
                   SELECT subscription_id AS id FROM busy_subs WHERE n >= {PER_SUBSCRIPTION}
                   UNION
                   SELECT s.id FROM webhook_subscriptions s
                   WHERE COALESCE(s.owner_id, $3) IN (SELECT owner FROM busy_owners WHERE n >= {PER_OWNER})
                 ),
                 due AS (
                   SELECT d.id, d.subscription_id, d.next_attempt_ms FROM webhook_deliveries d
                   WHERE d.{due_now} AND d.subscription_id NOT IN (SELECT id FROM closed)
                   ORDER BY d.next_attempt_ms LIMIT {CANDIDATES}
                 ),
                 ranked AS (
                   SELECT due.id, due.next_attempt_ms,
                          row_number() OVER (PARTITION BY due.subscription_id ORDER BY due.next_attempt_ms, due.id)
                              + COALESCE(bs.n, 0) AS per_sub,
                          row_number() OVER (PARTITION BY COALESCE(s.owner_id, $3) ORDER BY due.next_attempt_ms, due.id)
                              + COALESCE(bo.n, 0) AS per_owner
                   FROM due
                   JOIN webhook_subscriptions s ON s.id = due.subscription_id
                   LEFT JOIN busy_subs bs ON bs.subscription_id = due.subscription_id
                   LEFT JOIN busy_owners bo ON bo.owner = COALESCE(s.owner_id, $3)
                 )
                 SELECT id FROM ranked WHERE per_sub <= {PER_SUBSCRIPTION} AND per_owner <= {PER_OWNER}
                 ORDER BY next_attempt_ms LIMIT $2"
        );
        let picked: Vec<Uuid> = on_db!(&self.db, pool => sqlx::query_scalar(&pick)
            .bind(now)
            .bind(free)
            .bind(Uuid::nil())
            .fetch_all(pool)
            .await?);
        if picked.is_empty() {
            return Ok(());
        }
        // Then a short write by id: each lease is taken only if the
        // delivery is still due and free (another node may have taken it
        // since the read).
        let due: Vec<DeliveryRow> = on_db!(&self.db, pool => {
            let mut qb = sqlx::QueryBuilder::new("UPDATE webhook_deliveries SET lease_owner = ");
            qb.push_bind(node)
                .push(", lease_until = ")
                .push_bind(now + self.lease_ms())
                .push(" WHERE status = 'pending' AND (lease_until IS NULL OR lease_until < ")
                .push_bind(now)
                .push(") AND id IN ");
            crate::db::push_ids(&mut qb, &picked);
            qb.push(format!(" RETURNING {DELIVERY_COLUMNS}"));
            qb.build_query_as().fetch_all(pool).await?
        });
        for d in due {
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                // Unreachable (only this task takes slots); the lease
                // expires and the delivery is tried again.
                break;
            };
            let this = self.clone();
            let clients = clients.clone();
            let results = results.clone();
            tokio::spawn(async move {
                let id = d.id;
                match this.attempt(&clients, d).await {
                    Ok(Some(record)) => {
                        let _ = results.send((record, permit));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(delivery = %id, error = %e, "a webhook attempt failed");
                    }
                }
            });
        }
        Ok(())
    }

    /// The body of a delivery: built at its first attempt, then kept.
    async fn payload(&self, d: &DeliveryRow) -> Result<String> {
        if let Some(p) = &d.payload {
            return Ok(p.clone());
        }
        let mut data = d.data.as_ref().map(|j| j.0.clone()).unwrap_or(json!({}));
        if let Some(run) = d.run_id {
            type RunFacts = (
                Uuid,
                Uuid,
                Uuid,
                Option<sqlx::types::Json<Value>>,
                i64,
                i64,
                i64,
            );
            let facts: Option<RunFacts> = on_db!(&self.db, pool => sqlx::query_as(
                "SELECT conversation_id, agent_id, user_id, error, step_count, input_tokens, output_tokens
                 FROM runs WHERE id = $1",
            )
            .bind(run)
            .fetch_optional(pool)
            .await?);
            data = json!({
                "run_id": run,
                "status": d.event_type.strip_prefix("run.").unwrap_or(&d.event_type),
            });
            if let Some((conversation, agent, user, error, steps, input, output)) = facts {
                data["conversation_id"] = json!(conversation);
                data["agent_id"] = json!(agent);
                data["user_id"] = json!(user);
                data["steps"] = json!(steps);
                data["usage"] = json!({ "input_tokens": input, "output_tokens": output });
                if let Some(error) = error {
                    data["error"] = error.0;
                }
            }
        }
        let occurred = super::to_time(d.occurred_ms);
        Ok(json!({
            "type": d.event_type,
            "timestamp": occurred.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "data": data,
        })
        .to_string())
    }

    /// Makes one attempt of `d`; what came of it, for [`Self::record`].
    async fn attempt(&self, clients: &Clients, d: DeliveryRow) -> Result<Option<Record>> {
        let sub: Option<SubscriptionRow> = on_db!(&self.db, pool => sqlx::query_as(&format!(
            "SELECT {SUB_COLUMNS} FROM webhook_subscriptions WHERE id = $1"
        ))
        .bind(d.subscription_id)
        .fetch_optional(pool)
        .await?);
        let Some(sub) = sub else {
            return Ok(None); // Deleted with its deliveries.
        };
        let payload = self.payload(&d).await?;
        let now_ms = Utc::now().timestamp_millis();
        let outcome = if !sub.enabled {
            Outcome {
                status_code: None,
                duration_ms: 0,
                error: Some("the webhook is disabled".into()),
            }
        } else {
            let secrets = self.secrets(&sub, now_ms)?;
            self.send(clients, &sub, &d, &payload, &secrets).await
        };
        let attempt = d.attempts + 1;
        let delivered = outcome.delivered();
        let exhausted = !sub.enabled || attempt as usize > self.config.retry_ms.len();
        let (status, next) = if delivered {
            ("delivered", now_ms)
        } else if exhausted {
            ("failed", now_ms)
        } else {
            let wait = self.config.retry_ms[attempt as usize - 1] as i64;
            ("pending", now_ms + jittered(wait))
        };
        Ok(Some(Record {
            delivery: d.id,
            subscription: sub.id,
            counts: sub.enabled,
            attempt,
            status,
            next,
            payload,
            outcome,
            at_ms: now_ms,
        }))
    }

    /// Records attempts `node` made, in one transaction: each fenced by
    /// the delivery's lease (an attempt that outlived its lease records
    /// nothing; the node that took the delivery over owns it), with its
    /// log row and the subscription's run of failures.
    async fn record(&self, node: Uuid, records: &[Record]) -> Result<()> {
        on_db!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            for r in records {
                let finished = (r.status != "pending").then_some(r.at_ms);
                let fenced = sqlx::query(
                    "UPDATE webhook_deliveries SET status = $3, attempts = $4, next_attempt_ms = $5,
                         payload = $6, last_status_code = $7, last_duration_ms = $8, last_error = $9,
                         finished_ms = $10, lease_owner = NULL, lease_until = NULL
                     WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
                )
                .bind(r.delivery)
                .bind(node)
                .bind(r.status)
                .bind(r.attempt)
                .bind(r.next)
                .bind(&r.payload)
                .bind(r.outcome.status_code)
                .bind(r.outcome.duration_ms)
                .bind(&r.outcome.error)
                .bind(finished)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if fenced == 0 {
                    continue;
                }
                sqlx::query(
                    "INSERT INTO webhook_attempts (delivery_id, attempt, status_code, duration_ms, error, at_ms)
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (delivery_id, attempt) DO NOTHING",
                )
                .bind(r.delivery)
                .bind(r.attempt)
                .bind(r.outcome.status_code)
                .bind(r.outcome.duration_ms)
                .bind(&r.outcome.error)
                .bind(r.at_ms)
                .execute(&mut *tx)
                .await?;
                if !r.counts {
                    continue;
                }
                if r.outcome.delivered() {
                    sqlx::query("UPDATE webhook_subscriptions SET failures = 0 WHERE id = $1 AND failures <> 0")
                        .bind(r.subscription)
                        .execute(&mut *tx)
                        .await?;
                } else {
                    let reason = format!(
                        "disabled after {} failed attempts in a row; the last: {}",
                        self.config.disable_after_failures,
                        r.outcome.error.as_deref().unwrap_or("no answer")
                    );
                    sqlx::query(
                        "UPDATE webhook_subscriptions SET failures = failures + 1,
                             enabled = CASE WHEN failures + 1 >= $2 THEN FALSE ELSE enabled END,
                             disabled_reason = CASE WHEN failures + 1 >= $2 THEN $3 ELSE disabled_reason END
                         WHERE id = $1",
                    )
                    .bind(r.subscription)
                    .bind(self.config.disable_after_failures)
                    .bind(&reason)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await?;
        });
        Ok(())
    }

    async fn send(
        &self,
        clients: &Clients,
        sub: &SubscriptionRow,
        d: &DeliveryRow,
        payload: &str,
        secrets: &[String],
    ) -> Outcome {
        let id = message_id(d.id);
        let timestamp = Utc::now().timestamp();
        let signature = secrets
            .iter()
            .map(|s| super::signing::sign(s, &id, timestamp, payload.as_bytes()))
            .collect::<Vec<_>>()
            .join(" ");
        let client = if self.egress.restricts(sub.owner_id) {
            if let Err(e) = crate::egress::check_user_url_str(&sub.url) {
                return Outcome {
                    status_code: None,
                    duration_ms: 0,
                    error: Some(e),
                };
            }
            &clients.restricted
        } else {
            &clients.open
        };
        let started = Instant::now();
        let result = client
            .post(&sub.url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(payload.to_owned())
            .send()
            .await;
        let mut outcome = match result {
            Ok(response) => {
                let code = response.status().as_u16() as i64;
                let error = if response.status().is_success() {
                    None
                } else {
                    Some(format!("HTTP {code}: {}", head_of(response).await))
                };
                Outcome {
                    status_code: Some(code),
                    duration_ms: 0,
                    error,
                }
            }
            Err(e) => Outcome {
                status_code: None,
                duration_ms: 0,
                error: Some(describe(&e)),
            },
        };
        outcome.duration_ms = started.elapsed().as_millis() as i64;
        outcome
    }
}

/// The first [`MAX_ERROR_BODY`] bytes of a receiver's answer, read no
/// further (a receiver may answer with an endless body).
async fn head_of(mut response: reqwest::Response) -> String {
    let mut head = Vec::new();
    let mut more = false;
    while let Ok(Some(chunk)) = response.chunk().await {
        head.extend_from_slice(&chunk);
        if head.len() > MAX_ERROR_BODY {
            more = true;
            break;
        }
    }
    let mut text: String = String::from_utf8_lossy(&head)
        .chars()
        .take(MAX_ERROR_BODY)
        .collect();
    if more {
        text.push('…');
    }
    text
}

/// `wait` with up to a fifth added or taken away at random.
fn jittered(wait: i64) -> i64 {
    let mut byte = [0u8; 2];
    let _ = getrandom::fill(&mut byte);
    let unit = u16::from_le_bytes(byte) as f64 / u16::MAX as f64; // 0..1
    (wait as f64 * (0.8 + 0.4 * unit)) as i64
}

fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
