//! Business rules of accounts and credentials: registration and the first
//! admin, login, refresh-token rotation with reuse detection, authentication
//! of every request, admin user management and API keys.

use chrono::{DateTime, Duration, SubsecRound, Utc};
use serde_json::json;
use uuid::Uuid;

use super::cache::AuthCache;
use super::credentials::{self, JwtKeys, API_KEY_PREFIX};
use super::model::*;
use super::repo::{ApiKeyRow, NewRefresh, NewUser, UserRepo, UserRow};
use crate::audit::AuditService;
use crate::db::{self, Db};
use crate::error::{Error, Result};
use crate::pagination::{Page, PageParams};
use crate::settings::{RegistrationMode, SettingsService};

/// Lifetimes of the tokens this service issues.
#[derive(Debug, Clone, Copy)]
pub struct TokenPolicy {
    /// Access token lifetime in seconds.
    pub access_ttl_secs: u64,
    /// Refresh token lifetime in seconds.
    pub refresh_ttl_secs: u64,
    /// How long a checked API key or token holder is trusted without reading
    /// the database again, in milliseconds (0: never).
    pub credential_cache_ms: u64,
    /// Delays after failed logins.
    pub login_throttle: super::throttle::ThrottleConfig,
}

/// Accounts, sessions and API keys.
#[derive(Clone)]
pub struct UserService {
    repo: UserRepo,
    audit: AuditService,
    settings: SettingsService,
    jwt: JwtKeys,
    policy: TokenPolicy,
    cache: AuthCache,
    throttle: super::throttle::LoginThrottle,
}

impl UserRow {
    fn role(&self) -> Role {
        // The CHECK constraint guarantees one of the three names.
        Role::parse(&self.role).unwrap_or(Role::Viewer)
    }

    fn into_response(self) -> UserResponse {
        UserResponse {
            role: self.role(),
            id: self.id,
            email: self.email,
            display_name: self.display_name,
            is_active: self.is_active,
            created_at: self.created_at,
            updated_at: self.updated_at,
            last_login_at: self.last_login_at,
        }
    }
}

impl From<ApiKeyRow> for ApiKeyResponse {
    fn from(row: ApiKeyRow) -> Self {
        ApiKeyResponse {
            id: row.id,
            name: row.name,
            prefix: row.prefix,
            created_at: row.created_at,
            expires_at: row.expires_at,
            last_used_at: row.last_used_at,
        }
    }
}

fn invalid_refresh() -> Error {
    Error::Unauthorized("the refresh token is invalid or expired".to_owned())
}

fn registration_closed() -> Error {
    Error::Forbidden {
        code: "registration_closed",
        message: "registration is closed; ask an admin to create your account".to_owned(),
    }
}

impl UserService {
    /// A service over `db`.
    pub fn new(
        db: Db,
        audit: AuditService,
        settings: SettingsService,
        jwt: JwtKeys,
        policy: TokenPolicy,
    ) -> Self {
        UserService {
            repo: UserRepo::new(db),
            audit,
            settings,
            jwt,
            cache: AuthCache::new(std::time::Duration::from_millis(policy.credential_cache_ms)),
            throttle: super::throttle::LoginThrottle::new(policy.login_throttle),
            policy,
        }
    }

    /// Whether any account exists.
    pub async fn any_user(&self) -> Result<bool> {
        self.repo.any_user().await
    }

    /// Self-registration. The very first user becomes admin; afterwards the
    /// registration setting decides, and new users get the `user` role.
    pub async fn register(&self, request: RegisterRequest) -> Result<TokenResponse> {
        let email = Email::parse(&request.email)?;
        let password = Password::parse(request.password, "password")?;
        let display_name = parse_display_name(request.display_name)?;
        let open = self.settings.registration().await? == RegistrationMode::Open;
        // Refused before the (deliberately slow) hash: closed registration
        // costs an anonymous caller's request nothing. The insert checks
        // again, atomically, for the race with the first user.
        if !open && self.repo.any_user().await? {
            return Err(registration_closed());
        }
        let hash = credentials::hash_password(password.expose().to_owned()).await?;
        let (row, first) = self
            .insert_user(
                &email,
                display_name.as_deref(),
                &hash,
                Role::User,
                Some(Role::Admin),
                !open,
            )
            .await?;
        self.audit
            .record(
                Some(row.id),
                "user.registered",
                Some(("user", row.id)),
                json!({ "email": row.email, "role": row.role, "first_user": first }),
            )
            .await;
        self.issue_tokens(row, None).await
    }

    /// Inserts a user; with `closed`, only the first-ever user may be inserted.
    async fn insert_user(
        &self,
        email: &Email,
        display_name: Option<&str>,
        hash: &str,
        role: Role,
        first_role: Option<Role>,
        closed: bool,
    ) -> Result<(UserRow, bool)> {
        let id = Uuid::now_v7();
        let new = NewUser {
            id,
            email: email.as_str(),
            display_name,
            password_hash: hash,
            role: role.as_str(),
            now: db::now(),
        };
        self.repo
            .insert(new, first_role.map(Role::as_str), closed)
            .await
            .map_err(|e| match e {
                Error::Conflict { .. } => Error::conflict("a user with this email already exists"),
                other => other,
            })?
            .ok_or_else(registration_closed)
    }

    /// Creates a user on an admin's behalf.
    pub async fn create_user(
        &self,
        principal: &Principal,
        request: CreateUserRequest,
    ) -> Result<UserResponse> {
        principal.require(Permission::UserManage)?;
        let role = request.role.unwrap_or(Role::User);
        self.create_account(
            Some(principal.user_id),
            &request.email,
            request.password,
            request.display_name,
            role,
            "api",
        )
        .await
    }

    /// Creates a user from the command line (no caller to check).
    pub async fn create_user_offline(
        &self,
        email: &str,
        password: String,
        role: Role,
        display_name: Option<String>,
    ) -> Result<UserResponse> {
        self.create_account(None, email, password, display_name, role, "cli")
            .await
    }

    /// Validates, hashes, stores and audits a new account whatever the
    /// registration setting; `via` records where the request came from.
    async fn create_account(
        &self,
        actor: Option<Uuid>,
        email: &str,
        password: String,
        display_name: Option<String>,
        role: Role,
        via: &str,
    ) -> Result<UserResponse> {
        let email = Email::parse(email)?;
        let password = Password::parse(password, "password")?;
        let display_name = parse_display_name(display_name)?;
        let hash = credentials::hash_password(password.expose().to_owned()).await?;
        let (row, _) = self
            .insert_user(&email, display_name.as_deref(), &hash, role, None, false)
            .await?;
        self.audit
            .record(
                actor,
                "user.created",
                Some(("user", row.id)),
                json!({ "email": row.email, "role": row.role, "via": via }),
            )
            .await;
        Ok(row.into_response())
    }

    /// Sets a new password from the command line and ends every session.
    pub async fn reset_password_offline(&self, email: &str, password: String) -> Result<()> {
        let email = Email::parse(email)?;
        let password = Password::parse(password, "password")?;
        let row = self
            .repo
            .get_by_email(email.as_str())
            .await?
            .ok_or(Error::NotFound("user"))?;
        self.set_password_of(row.id, password, None, "cli").await
    }

    /// An admin sets a user's password; every session of the user ends, and
    /// every MCP client they approved is revoked.
    pub async fn reset_password(
        &self,
        principal: &Principal,
        id: Uuid,
        request: ResetPasswordRequest,
    ) -> Result<()> {
        principal.require(Permission::UserManage)?;
        let password = Password::parse(request.password, "password")?;
        let row = self.repo.get(id).await?.ok_or(Error::NotFound("user"))?;
        self.set_password_of(row.id, password, Some(principal.user_id), "api")
            .await
    }

    async fn set_password_of(
        &self,
        user: Uuid,
        password: Password,
        actor: Option<Uuid>,
        via: &str,
    ) -> Result<()> {
        let hash = credentials::hash_password(password.expose().to_owned()).await?;
        let now = db::now();
        self.repo.set_password(user, &hash, now).await?;
        self.repo.revoke_user_tokens(user, now).await?;
        // A reset answers a compromised account: the MCP clients approved
        // with it lose their tokens too.
        self.repo.revoke_oauth_grants(user, now).await?;
        self.cache.clear();
        self.audit
            .record(
                actor,
                "user.password_reset",
                Some(("user", user)),
                json!({ "via": via }),
            )
            .await;
        Ok(())
    }

    /// Password login from `address` (the client's, if known). Failures
    /// slow down further attempts on the account and from the address
    /// ([`super::throttle`]).
    pub async fn login(
        &self,
        request: LoginRequest,
        address: Option<std::net::IpAddr>,
    ) -> Result<TokenResponse> {
        let now = std::time::Instant::now();
        let account = request.email.trim().to_owned();
        if let Some(wait) = self.throttle.wait(&account, address, now) {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            return Err(Error::TooManyRequests {
                code: "too_many_attempts",
                message: format!("too many failed logins; try again in {secs} s"),
                details: Some(json!({ "retry_after_secs": secs })),
            });
        }
        let failed = || {
            self.throttle.failed(&account, address, now);
            Error::Unauthorized("invalid email or password".to_owned())
        };
        let Ok(email) = Email::parse(&request.email) else {
            return Err(failed());
        };
        let row = self.repo.get_by_email(email.as_str()).await?;
        let ok = credentials::verify_password(
            row.as_ref().map(|r| r.password_hash.clone()),
            request.password,
        )
        .await?;
        // A disabled account answers as a wrong password does, so that the
        // answer does not confirm the password.
        let row = match row {
            Some(row) if ok && row.is_active => row,
            other => {
                let disabled = ok && other.as_ref().is_some_and(|r| !r.is_active);
                self.audit
                    .record(
                        other.map(|r| r.id),
                        "auth.login_failed",
                        None,
                        json!({ "email": email.as_str(), "account_disabled": disabled }),
                    )
                    .await;
                return Err(failed());
            }
        };
        self.throttle.succeeded(&account);
        self.repo.touch_login(row.id, db::now()).await?;
        self.audit
            .record(
                Some(row.id),
                "auth.login",
                Some(("user", row.id)),
                json!({}),
            )
            .await;
        self.issue_tokens(row, None).await
    }

    /// Exchanges a refresh token for a new pair. Presenting a token that was
    /// already rotated revokes its whole family: one of the two holders is
    /// not the user.
    pub async fn refresh(&self, request: RefreshRequest) -> Result<TokenResponse> {
        let hash = credentials::token_digest(&request.refresh_token);
        let token = self
            .repo
            .find_refresh(&hash)
            .await?
            .ok_or_else(invalid_refresh)?;
        let now = db::now();
        if token.used_at.is_some() {
            return Err(self
                .reuse_detected(&token.family_id, token.user_id, now)
                .await);
        }
        if token.revoked_at.is_some() || token.expires_at <= now {
            return Err(invalid_refresh());
        }
        let user = self
            .repo
            .get(token.user_id)
            .await?
            .ok_or_else(invalid_refresh)?;
        if !user.is_active {
            return Err(invalid_refresh());
        }
        let (secret, new) = self.new_refresh(user.id, token.family_id, now);
        if !self.repo.rotate_refresh(token.id, new.as_new()).await? {
            // Lost a race with another use of the same token: also a reuse.
            return Err(self
                .reuse_detected(&token.family_id, token.user_id, now)
                .await);
        }
        self.issue_tokens(user, Some(secret)).await
    }

    async fn reuse_detected(&self, family: &Uuid, user: Uuid, now: DateTime<Utc>) -> Error {
        match self.repo.revoke_family(*family, now).await {
            Ok(revoked) => {
                self.audit
                    .record(
                        Some(user),
                        "auth.refresh_reuse_detected",
                        Some(("user", user)),
                        json!({ "family_id": family, "revoked": revoked }),
                    )
                    .await;
                invalid_refresh()
            }
            Err(e) => e,
        }
    }

    /// Ends the session of a refresh token (its whole family).
    pub async fn logout(&self, request: RefreshRequest) -> Result<()> {
        let hash = credentials::token_digest(&request.refresh_token);
        let token = self
            .repo
            .find_refresh(&hash)
            .await?
            .ok_or_else(invalid_refresh)?;
        self.repo.revoke_family(token.family_id, db::now()).await?;
        self.audit
            .record(
                Some(token.user_id),
                "auth.logout",
                Some(("user", token.user_id)),
                json!({}),
            )
            .await;
        Ok(())
    }

    fn new_refresh(
        &self,
        user_id: Uuid,
        family_id: Uuid,
        now: DateTime<Utc>,
    ) -> (String, PendingRefresh) {
        let secret = credentials::random_token(32);
        let pending = PendingRefresh {
            id: Uuid::now_v7(),
            user_id,
            family_id,
            hash: credentials::token_digest(&secret),
            created_at: now,
            expires_at: now + Duration::seconds(self.policy.refresh_ttl_secs as i64),
        };
        (secret, pending)
    }

    /// Signs an access token and, unless `refresh` is already stored, starts a
    /// new refresh-token family.
    async fn issue_tokens(&self, user: UserRow, refresh: Option<String>) -> Result<TokenResponse> {
        let access_token =
            self.jwt
                .issue(user.id, user.token_generation, self.policy.access_ttl_secs)?;
        let refresh_token = match refresh {
            Some(secret) => secret,
            None => {
                let (secret, pending) = self.new_refresh(user.id, Uuid::now_v7(), db::now());
                self.repo.insert_refresh(pending.as_new()).await?;
                secret
            }
        };
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer".to_owned(),
            expires_in: self.policy.access_ttl_secs,
            refresh_token,
            user: user.into_response(),
        })
    }

    /// Resolves an `Authorization: Bearer` credential (JWT or API key) to the
    /// caller, checking that the account is active right now.
    pub async fn authenticate(&self, bearer: &str) -> Result<Principal> {
        let now = db::now();
        if bearer.starts_with(crate::oauth::TOKEN_PREFIX) {
            return Err(Error::Unauthorized(
                "this token was issued to an MCP client and is valid at /mcp only".to_owned(),
            ));
        }
        if !bearer.starts_with(API_KEY_PREFIX) {
            let claims = self.jwt.verify(bearer)?;
            let user_id = claims.sub;
            let (role, is_active, generation) = match self.cache.user(user_id) {
                Some(cached) => cached,
                None => {
                    let read_at = std::time::Instant::now();
                    let user = self.repo.get(user_id).await?.ok_or_else(|| {
                        Error::Unauthorized("the account no longer exists".to_owned())
                    })?;
                    self.cache.put_user(
                        user_id,
                        (user.role.clone(), user.is_active, user.token_generation),
                        read_at,
                    );
                    (user.role, user.is_active, user.token_generation)
                }
            };
            if claims.gen != generation {
                return Err(Error::Unauthorized(
                    "the session has ended (the password was changed); sign in again".to_owned(),
                ));
            }
            return Self::principal(user_id, &role, is_active, AuthMethod::AccessToken);
        }
        let digest = credentials::token_digest(bearer);
        let key = match self.cache.api_key(&digest) {
            Some(key) => key,
            None => {
                let read_at = std::time::Instant::now();
                let key = self
                    .repo
                    .find_api_key_holder(&digest)
                    .await?
                    .ok_or_else(|| Error::Unauthorized("the API key is invalid".to_owned()))?;
                self.cache.put_api_key(&digest, key.clone(), read_at);
                key
            }
        };
        if key.expires_at.is_some_and(|at| at <= now) {
            return Err(Error::Unauthorized("the API key has expired".to_owned()));
        }
        let principal = Self::principal(
            key.user_id,
            &key.role,
            key.is_active,
            AuthMethod::ApiKey(key.id),
        )?;
        // `last_used_at` is kept to the minute: most requests write nothing.
        let stale_before = now - Duration::seconds(60);
        if key.last_used_at.is_none_or(|at| at < stale_before) {
            self.repo.touch_api_key(key.id, now, stale_before).await?;
            self.cache.touched(&digest, now);
        }
        Ok(principal)
    }

    /// The principal of user `id` acting on their own (a schedule or a
    /// trigger starting a run for its owner): their role now, refused when
    /// the account is disabled or gone.
    pub async fn acting_as(&self, id: Uuid) -> Result<Principal> {
        let user = self
            .repo
            .get(id)
            .await?
            .ok_or_else(|| Error::Unauthorized("the account no longer exists".to_owned()))?;
        Self::principal(id, &user.role, user.is_active, AuthMethod::Owner)
    }

    /// The principal of user `id` through their OAuth grant `grant` (an MCP
    /// client's access token): their role now, refused when the account is
    /// disabled or gone.
    pub async fn through_grant(&self, id: Uuid, grant: Uuid) -> Result<Principal> {
        let user = self
            .repo
            .get(id)
            .await?
            .ok_or_else(|| Error::Unauthorized("the account no longer exists".to_owned()))?;
        Self::principal(id, &user.role, user.is_active, AuthMethod::OAuth(grant))
    }

    fn principal(
        user_id: Uuid,
        role: &str,
        is_active: bool,
        method: AuthMethod,
    ) -> Result<Principal> {
        if !is_active {
            return Err(Error::Unauthorized(
                "this account has been disabled".to_owned(),
            ));
        }
        Ok(Principal {
            user_id,
            // The CHECK constraint guarantees one of the three names.
            role: Role::parse(role).unwrap_or(Role::Viewer),
            method,
        })
    }

    /// The caller's own account.
    pub async fn me(&self, principal: &Principal) -> Result<UserResponse> {
        let row = self
            .repo
            .get(principal.user_id)
            .await?
            .ok_or(Error::NotFound("user"))?;
        Ok(row.into_response())
    }

    /// Changes the caller's password and ends every other session.
    pub async fn change_password(
        &self,
        principal: &Principal,
        request: ChangePasswordRequest,
    ) -> Result<()> {
        let row = self
            .repo
            .get(principal.user_id)
            .await?
            .ok_or(Error::NotFound("user"))?;
        let new = Password::parse(request.new_password, "new_password")?;
        if !credentials::verify_password(Some(row.password_hash), request.current_password).await? {
            return Err(Error::invalid_field("current_password", "is not correct"));
        }
        let hash = credentials::hash_password(new.expose().to_owned()).await?;
        let now = db::now();
        self.repo.set_password(row.id, &hash, now).await?;
        self.repo.revoke_user_tokens(row.id, now).await?;
        self.cache.clear();
        self.audit
            .record(
                Some(row.id),
                "user.password_changed",
                Some(("user", row.id)),
                json!({}),
            )
            .await;
        Ok(())
    }

    /// Every user (admins only).
    pub async fn list_users(
        &self,
        principal: &Principal,
        page: PageParams,
    ) -> Result<Page<UserResponse>> {
        principal.require(Permission::UserManage)?;
        let page = page.validate()?;
        let (rows, total) = self.repo.list(page).await?;
        Ok(page.wrap(rows, total).map(UserRow::into_response))
    }

    /// One user (admins only).
    pub async fn get_user(&self, principal: &Principal, id: Uuid) -> Result<UserResponse> {
        principal.require(Permission::UserManage)?;
        let row = self.repo.get(id).await?.ok_or(Error::NotFound("user"))?;
        Ok(row.into_response())
    }

    /// Changes a user's role, status or name (admins only). Disabling ends the
    /// user's sessions at once; the last active admin cannot be demoted or
    /// disabled.
    pub async fn update_user(
        &self,
        principal: &Principal,
        id: Uuid,
        request: UpdateUserRequest,
    ) -> Result<UserResponse> {
        principal.require(Permission::UserManage)?;
        let display_name = match request.display_name {
            Some(name) => Some(parse_display_name(Some(name))?),
            None => None,
        };
        let current = self.repo.get(id).await?.ok_or(Error::NotFound("user"))?;
        let loses_admin = current.role() == Role::Admin
            && current.is_active
            && (request.role.is_some_and(|r| r != Role::Admin) || request.is_active == Some(false));
        let now = db::now();
        let Some(row) = self
            .repo
            .update(
                id,
                request.role.map(Role::as_str),
                request.is_active,
                display_name.as_ref().map(|n| n.as_deref()),
                now,
                loses_admin,
            )
            .await?
        else {
            // The check and the change are one step: refused, or gone.
            return Err(if loses_admin && self.repo.get(id).await?.is_some() {
                Error::unprocessable(
                    "last_admin",
                    "the last active admin cannot be demoted or disabled",
                )
            } else {
                Error::NotFound("user")
            });
        };
        self.cache.clear();
        if let Some(role) = request.role.filter(|r| *r != current.role()) {
            self.audit
                .record(
                    Some(principal.user_id),
                    "user.role_changed",
                    Some(("user", id)),
                    json!({ "from": current.role, "to": role }),
                )
                .await;
        }
        if let Some(active) = request.is_active.filter(|a| *a != current.is_active) {
            if !active {
                self.repo.revoke_user_tokens(id, now).await?;
            }
            let action = if active {
                "user.enabled"
            } else {
                "user.disabled"
            };
            self.audit
                .record(
                    Some(principal.user_id),
                    action,
                    Some(("user", id)),
                    json!({}),
                )
                .await;
        }
        Ok(row.into_response())
    }

    /// Creates an API key for the caller; the secret is in this answer only.
    pub async fn create_api_key(
        &self,
        principal: &Principal,
        request: CreateApiKeyRequest,
    ) -> Result<CreatedApiKeyResponse> {
        principal.require(Permission::ApiKeyManage)?;
        let name = request.name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(Error::invalid_field("name", "must be 1 to 100 characters"));
        }
        let now = db::now();
        if request.expires_at.is_some_and(|at| at <= now) {
            return Err(Error::invalid_field("expires_at", "must be in the future"));
        }
        let key = credentials::new_api_key();
        let row = ApiKeyRow {
            id: Uuid::now_v7(),
            user_id: principal.user_id,
            name,
            prefix: key[..API_KEY_PREFIX.len() + 8].to_owned(),
            created_at: now,
            expires_at: request.expires_at.map(|at| at.trunc_subsecs(6)),
            last_used_at: None,
        };
        self.repo
            .insert_api_key(&row, &credentials::token_digest(&key))
            .await?;
        self.audit
            .record(
                Some(principal.user_id),
                "api_key.created",
                Some(("api_key", row.id)),
                json!({ "name": row.name, "prefix": row.prefix }),
            )
            .await;
        Ok(CreatedApiKeyResponse {
            api_key: row.into(),
            key,
        })
    }

    /// The caller's API keys.
    pub async fn list_api_keys(
        &self,
        principal: &Principal,
        page: PageParams,
    ) -> Result<Page<ApiKeyResponse>> {
        principal.require(Permission::ApiKeyManage)?;
        let page = page.validate()?;
        let (rows, total) = self.repo.list_api_keys(principal.user_id, page).await?;
        Ok(page.wrap(rows, total).map(ApiKeyResponse::from))
    }

    /// Deletes one of the caller's API keys.
    pub async fn delete_api_key(&self, principal: &Principal, id: Uuid) -> Result<()> {
        principal.require(Permission::ApiKeyManage)?;
        if !self.repo.delete_api_key(principal.user_id, id).await? {
            return Err(Error::NotFound("api key"));
        }
        self.cache.clear();
        self.audit
            .record(
                Some(principal.user_id),
                "api_key.deleted",
                Some(("api_key", id)),
                json!({}),
            )
            .await;
        Ok(())
    }
}

/// A refresh token generated but not yet stored.
struct PendingRefresh {
    id: Uuid,
    user_id: Uuid,
    family_id: Uuid,
    hash: String,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

impl PendingRefresh {
    fn as_new(&self) -> NewRefresh<'_> {
        NewRefresh {
            id: self.id,
            user_id: self.user_id,
            family_id: self.family_id,
            token_hash: &self.hash,
            created_at: self.created_at,
            expires_at: self.expires_at,
        }
    }
}
