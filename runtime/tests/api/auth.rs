//! Registration, login, refresh rotation and reuse, logout, disabled users,
//! expired and tampered tokens, API keys, roles and the audit log.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::*;
use crate::dual_test;

fn audit_actions(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

dual_test!(
    first_user_is_admin_then_registration_follows_the_setting,
    |app: TestApp| async move {
        let admin = app.register("first@example.com").await;
        let (_, me) = app.get("/api/v1/users/me", &admin.token).await;
        assert_eq!(me["role"], "admin");
        assert_eq!(me["email"], "first@example.com");

        // Closed by default: a second registration is refused and stores nothing.
        let body = json!({ "email": "second@example.com", "password": "another password" });
        let refused = app
            .call(
                Method::POST,
                "/api/v1/auth/register",
                None,
                Some(body.clone()),
            )
            .await;
        assert_error(&refused, StatusCode::FORBIDDEN, "registration_closed");
        let (_, users) = app.get("/api/v1/users", &admin.token).await;
        assert_eq!(users["total"], 1);

        let (status, settings) = app
            .patch(
                "/api/v1/admin/settings",
                &admin.token,
                json!({ "registration": "open" }),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(settings["registration"], "open");
        let (status, second) = app
            .call(Method::POST, "/api/v1/auth/register", None, Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{second}");
        assert_eq!(second["user"]["role"], "user");

        // The same email twice is a conflict, case-insensitively.
        let dup = app
            .call(
                Method::POST,
                "/api/v1/auth/register",
                None,
                Some(json!({ "email": "Second@Example.com", "password": "another password" })),
            )
            .await;
        assert_error(&dup, StatusCode::CONFLICT, "conflict");

        // Only admins see or change settings.
        let user = app
            .login_with("second@example.com", "another password")
            .await;
        let denied = app.get("/api/v1/admin/settings", &user.token).await;
        assert_error(&denied, StatusCode::FORBIDDEN, "forbidden");
    }
);

dual_test!(
    login_checks_the_password_and_is_audited,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let wrong = app
            .call(
                Method::POST,
                "/api/v1/auth/login",
                None,
                Some(json!({ "email": "admin@example.com", "password": "not the password" })),
            )
            .await;
        assert_error(&wrong, StatusCode::UNAUTHORIZED, "unauthorized");
        let unknown = app
            .call(
                Method::POST,
                "/api/v1/auth/login",
                None,
                Some(json!({ "email": "nobody@example.com", "password": "not the password" })),
            )
            .await;
        assert_error(&unknown, StatusCode::UNAUTHORIZED, "unauthorized");
        assert_eq!(
            wrong.1["message"], unknown.1["message"],
            "no account enumeration"
        );

        let session = app.login("admin@example.com").await;
        let (_, me) = app.get("/api/v1/users/me", &session.token).await;
        assert!(me["last_login_at"].is_string());
        let (_, log) = app
            .get("/api/v1/audit-log?action=auth.login_failed", &admin.token)
            .await;
        assert_eq!(log["total"], 2);
        let (_, log) = app.get("/api/v1/audit-log", &admin.token).await;
        let actions = audit_actions(&log);
        assert!(actions.contains(&"auth.login".to_owned()), "{actions:?}");
        assert!(
            actions.contains(&"user.registered".to_owned()),
            "{actions:?}"
        );
    }
);

dual_test!(
    refresh_rotates_and_reuse_revokes_the_family,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let refresh = |token: String| {
            let app = &app;
            async move {
                app.call(
                    Method::POST,
                    "/api/v1/auth/refresh",
                    None,
                    Some(json!({ "refresh_token": token })),
                )
                .await
            }
        };
        let (status, second) = refresh(admin.refresh.clone()).await;
        assert_eq!(status, StatusCode::OK, "{second}");
        let r2 = second["refresh_token"].as_str().unwrap().to_owned();
        assert_ne!(r2, admin.refresh);
        let (status, _) = app
            .get("/api/v1/users/me", second["access_token"].as_str().unwrap())
            .await;
        assert_eq!(status, StatusCode::OK);

        // Replaying the spent token fails and revokes the whole family...
        assert_error(
            &refresh(admin.refresh.clone()).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        // ...so the legitimate newer token is dead too.
        assert_error(&refresh(r2).await, StatusCode::UNAUTHORIZED, "unauthorized");
        let (_, log) = app
            .get(
                "/api/v1/audit-log?action=auth.refresh_reuse_detected",
                &admin.token,
            )
            .await;
        assert_eq!(log["total"], 1);

        // Another session of the same user is unaffected; logout ends it.
        let other = app.login("admin@example.com").await;
        let (status, _) = refresh(other.refresh.clone()).await;
        assert_eq!(status, StatusCode::OK);
        let fresh = app.login("admin@example.com").await;
        let (status, _) = app
            .call(
                Method::POST,
                "/api/v1/auth/logout",
                None,
                Some(json!({ "refresh_token": fresh.refresh })),
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_error(
            &refresh(fresh.refresh).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        assert_error(
            &refresh("made-up".to_owned()).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
    }
);

dual_test!(
    concurrent_refreshes_of_one_token_yield_at_most_one_winner,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let body = json!({ "refresh_token": admin.refresh });
        let attempts = (0..6).map(|_| {
            app.call(
                Method::POST,
                "/api/v1/auth/refresh",
                None,
                Some(body.clone()),
            )
        });
        let results = futures_util::future::join_all(attempts).await;
        let winners = results.iter().filter(|r| r.0 == StatusCode::OK).count();
        assert!(winners <= 1, "{winners} concurrent refreshes succeeded");
        for r in results.iter().filter(|r| r.0 != StatusCode::OK) {
            assert_error(r, StatusCode::UNAUTHORIZED, "unauthorized");
        }
    }
);

dual_test!(
    a_disabled_user_is_locked_out_at_once,
    |app: TestApp| async move {
        let (admin, user) = app.admin_and_user().await;
        let (_, key) = app.api_key(&user, "laptop").await;
        assert_eq!(app.get("/api/v1/users/me", &key).await.0, StatusCode::OK);

        let (status, updated) = app
            .patch(
                &format!("/api/v1/users/{}", user.user_id),
                &admin.token,
                json!({ "is_active": false }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{updated}");
        assert_eq!(updated["is_active"], false);

        assert_error(
            &app.get("/api/v1/users/me", &user.token).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        assert_error(
            &app.get("/api/v1/users/me", &key).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        let refreshed = app
            .call(
                Method::POST,
                "/api/v1/auth/refresh",
                None,
                Some(json!({ "refresh_token": user.refresh })),
            )
            .await;
        assert_error(&refreshed, StatusCode::UNAUTHORIZED, "unauthorized");
        let login = app
            .call(
                Method::POST,
                "/api/v1/auth/login",
                None,
                Some(json!({ "email": "user@example.com", "password": "correct horse battery" })),
            )
            .await;
        // The same answer as a wrong password: it confirms nothing.
        assert_error(&login, StatusCode::UNAUTHORIZED, "unauthorized");
        let wrong = app
            .call(
                Method::POST,
                "/api/v1/auth/login",
                None,
                Some(json!({ "email": "user@example.com", "password": "not the password" })),
            )
            .await;
        assert_eq!(wrong, login);

        // Re-enabled, the account works again (with a fresh login).
        app.patch(
            &format!("/api/v1/users/{}", user.user_id),
            &admin.token,
            json!({ "is_active": true }),
        )
        .await;
        let again = app.login("user@example.com").await;
        assert_eq!(
            app.get("/api/v1/users/me", &again.token).await.0,
            StatusCode::OK
        );
        let (_, log) = app.get("/api/v1/audit-log", &admin.token).await;
        let actions = audit_actions(&log);
        assert!(
            actions.contains(&"user.disabled".to_owned())
                && actions.contains(&"user.enabled".to_owned())
        );
    }
);

// Each node trusts a checked credential for `auth.credential_cache_ms`;
// a change made on another node is seen once that time has passed.
dual_test!(
    credentials_changed_on_another_node_are_refused_after_the_cache_time,
    |config: &mut orchestra::config::Config| config.auth.credential_cache_ms = 300,
    |app: TestApp| async move {
        let (admin, user) = app.admin_and_user().await;
        let other = app.second_node(|_| {}).await;
        let (id, key) = app.api_key(&user, "script").await;
        let (_, admin_key) = app.api_key(&admin, "ops").await;
        // The other node checks (and remembers) the key and the user's token.
        assert_eq!(other.get("/api/v1/users/me", &key).await.0, StatusCode::OK);
        assert_eq!(
            other.get("/api/v1/users/me", &user.token).await.0,
            StatusCode::OK
        );
        assert_eq!(
            other.get("/api/v1/users/me", &admin_key).await.0,
            StatusCode::OK
        );

        // The first node deletes the key and disables the user.
        assert_eq!(
            app.delete(&format!("/api/v1/api-keys/{id}"), &user.token)
                .await
                .0,
            StatusCode::NO_CONTENT
        );
        let (status, _) = app
            .patch(
                &format!("/api/v1/users/{}", user.user_id),
                &admin.token,
                json!({ "is_active": false }),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        tokio::time::sleep(std::time::Duration::from_millis(450)).await;
        for credential in [&key, &user.token] {
            assert_error(
                &other.get("/api/v1/users/me", credential).await,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            );
        }
        // Untouched credentials keep working on both nodes.
        assert_eq!(
            other.get("/api/v1/users/me", &admin_key).await.0,
            StatusCode::OK
        );
        assert_eq!(
            app.get("/api/v1/users/me", &admin_key).await.0,
            StatusCode::OK
        );
    }
);

dual_test!(
    expired_access_tokens_are_refused,
    |config: &mut orchestra::config::Config| config.auth.access_token_ttl_secs = 1,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
        let expired = app.get("/api/v1/users/me", &admin.token).await;
        assert_error(&expired, StatusCode::UNAUTHORIZED, "unauthorized");
        assert!(expired.1["message"].as_str().unwrap().contains("expired"));
        // The refresh token still works and yields a working access token.
        let (status, body) = app
            .call(
                Method::POST,
                "/api/v1/auth/refresh",
                None,
                Some(json!({ "refresh_token": admin.refresh })),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = app
            .get("/api/v1/users/me", body["access_token"].as_str().unwrap())
            .await;
        assert_eq!(status, StatusCode::OK);
    }
);

dual_test!(
    tampered_and_malformed_credentials_are_refused,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let mut parts: Vec<String> = admin.token.split('.').map(str::to_owned).collect();
        // Flip the last signature character.
        let sig = parts[2].clone();
        let last = if sig.ends_with('A') { "B" } else { "A" };
        parts[2] = format!("{}{}", &sig[..sig.len() - 1], last);
        let tampered = parts.join(".");
        for token in [tampered.as_str(), "not-a-jwt", "orc_notakey", "a.b.c"] {
            assert_error(
                &app.get("/api/v1/users/me", token).await,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            );
        }
        let missing = app.call(Method::GET, "/api/v1/users/me", None, None).await;
        assert_error(&missing, StatusCode::UNAUTHORIZED, "unauthorized");
        let basic = app
            .client
            .get(format!("{}/api/v1/users/me", app.base))
            .header("Authorization", "Basic YTpi")
            .send()
            .await
            .unwrap();
        assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
    }
);

dual_test!(
    api_keys_are_shown_once_usable_and_deletable,
    |app: TestApp| async move {
        let (admin, user) = app.admin_and_user().await;
        let (status, created) = app
            .post(
                "/api/v1/api-keys",
                &user.token,
                json!({ "name": "ci", "expires_at": "2099-01-01T00:00:00Z" }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let key = created["key"].as_str().unwrap();
        assert!(key.starts_with("orc_"));
        assert!(key.starts_with(created["prefix"].as_str().unwrap()));

        let (status, me) = app.get("/api/v1/users/me", key).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(me["id"], user.user_id.as_str());

        let (_, list) = app.get("/api/v1/api-keys", &user.token).await;
        assert_eq!(list["total"], 1);
        let listed = &list["items"][0];
        assert!(
            listed.get("key").is_none(),
            "the secret is never listed: {listed}"
        );
        assert!(listed["last_used_at"].is_string());

        // Another user cannot see or delete it: 404, and it keeps working.
        let id = created["id"].as_str().unwrap();
        assert_error(
            &app.delete(&format!("/api/v1/api-keys/{id}"), &admin.token)
                .await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
        assert_eq!(
            app.get("/api/v1/api-keys", &admin.token).await.1["total"],
            0
        );
        assert_eq!(app.get("/api/v1/users/me", key).await.0, StatusCode::OK);

        let (status, _) = app
            .delete(&format!("/api/v1/api-keys/{id}"), &user.token)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_error(
            &app.get("/api/v1/users/me", key).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );

        let past = app
            .post(
                "/api/v1/api-keys",
                &user.token,
                json!({ "name": "old", "expires_at": "2001-01-01T00:00:00Z" }),
            )
            .await;
        assert_error(&past, StatusCode::BAD_REQUEST, "validation_error");
        let (_, log) = app.get("/api/v1/audit-log", &admin.token).await;
        let actions = audit_actions(&log);
        assert!(
            actions.contains(&"api_key.created".to_owned())
                && actions.contains(&"api_key.deleted".to_owned())
        );
    }
);

dual_test!(
    roles_are_enforced_and_the_last_admin_is_kept,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let viewer = app.add_user(&admin, "viewer@example.com", "viewer").await;
        let user = app.add_user(&admin, "user@example.com", "user").await;

        // A viewer reads but never writes.
        assert_eq!(
            app.get("/api/v1/agents", &viewer.token).await.0,
            StatusCode::OK
        );
        assert_eq!(
            app.get("/api/v1/conversations", &viewer.token).await.0,
            StatusCode::OK
        );
        let agent = json!({ "name": "x", "model": { "provider": "openai", "model": "m" } });
        assert_error(
            &app.post("/api/v1/agents", &viewer.token, agent).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
        assert_error(
            &app.post("/api/v1/api-keys", &viewer.token, json!({ "name": "k" }))
                .await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
        assert_eq!(
            app.get("/api/v1/agents", &viewer.token).await.1["total"],
            0,
            "nothing stored"
        );

        // Plain users cannot manage users or read the audit log.
        assert_error(
            &app.get("/api/v1/users", &user.token).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
        assert_error(
            &app.get("/api/v1/audit-log", &user.token).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
        let promote = app
            .patch(
                &format!("/api/v1/users/{}", user.user_id),
                &user.token,
                json!({ "role": "admin" }),
            )
            .await;
        assert_error(&promote, StatusCode::FORBIDDEN, "forbidden");

        // The only admin cannot demote or disable themself.
        let demote = app
            .patch(
                &format!("/api/v1/users/{}", admin.user_id),
                &admin.token,
                json!({ "role": "user" }),
            )
            .await;
        assert_error(&demote, StatusCode::UNPROCESSABLE_ENTITY, "last_admin");
        let disable = app
            .patch(
                &format!("/api/v1/users/{}", admin.user_id),
                &admin.token,
                json!({ "is_active": false }),
            )
            .await;
        assert_error(&disable, StatusCode::UNPROCESSABLE_ENTITY, "last_admin");

        // Promotion takes effect on the next request, and is audited.
        let (status, body) = app
            .patch(
                &format!("/api/v1/users/{}", viewer.user_id),
                &admin.token,
                json!({ "role": "user" }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let agent =
            json!({ "name": "now allowed", "model": { "provider": "openai", "model": "m" } });
        assert_eq!(
            app.post("/api/v1/agents", &viewer.token, agent).await.0,
            StatusCode::CREATED
        );
        let (_, log) = app
            .get("/api/v1/audit-log?action=user.role_changed", &admin.token)
            .await;
        assert_eq!(log["total"], 1);
        assert_eq!(log["items"][0]["details"]["to"], "user");
        assert_eq!(log["items"][0]["actor_id"], admin.user_id.as_str());

        let (_, users) = app.get("/api/v1/users?page_size=2", &admin.token).await;
        assert_eq!(users["total"], 3);
        assert_eq!(users["has_more"], true);
    }
);

dual_test!(
    changing_the_password_ends_other_sessions,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        // A session elsewhere (a stolen token, say), in use right up to the change.
        let elsewhere = app.login("admin@example.com").await;
        assert_eq!(
            app.get("/api/v1/users/me", &elsewhere.token).await.0,
            StatusCode::OK
        );
        let wrong = app
        .post(
            "/api/v1/users/me/password",
            &admin.token,
            json!({ "current_password": "nope nope nope", "new_password": "a brand new password" }),
        )
        .await;
        assert_error(&wrong, StatusCode::BAD_REQUEST, "validation_error");
        let short = app
            .post(
                "/api/v1/users/me/password",
                &admin.token,
                json!({ "current_password": "correct horse battery", "new_password": "short" }),
            )
            .await;
        assert_error(&short, StatusCode::BAD_REQUEST, "validation_error");
        let (status, _) = app
        .post(
            "/api/v1/users/me/password",
            &admin.token,
            json!({ "current_password": "correct horse battery", "new_password": "a brand new password" }),
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let refreshed = app
            .call(
                Method::POST,
                "/api/v1/auth/refresh",
                None,
                Some(json!({ "refresh_token": admin.refresh })),
            )
            .await;
        assert_error(&refreshed, StatusCode::UNAUTHORIZED, "unauthorized");
        // Access tokens issued before the change end with it, not 15 minutes later.
        for old in [&admin.token, &elsewhere.token] {
            assert_error(
                &app.get("/api/v1/users/me", old).await,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            );
        }
        let fresh = app
            .login_with("admin@example.com", "a brand new password")
            .await;
        assert_eq!(
            app.get("/api/v1/users/me", &fresh.token).await.0,
            StatusCode::OK
        );
    }
);

/// The console's session: `POST /api/v1/auth/session` with the CSRF header.
async fn session_call(
    app: &TestApp,
    method: Method,
    path: &str,
    cookie: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (StatusCode, Option<String>, Value) {
    let mut request = app.client.request(method, format!("{}{path}", app.base));
    if let Some(cookie) = cookie {
        request = request.header("cookie", format!("orchestra_session={cookie}"));
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let set_cookie = response
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, set_cookie, body)
}

fn cookie_value(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("orchestra_session=")
        .to_owned()
}

dual_test!(
    console_sessions_keep_the_refresh_token_in_an_httponly_cookie,
    |app: TestApp| async move {
        let csrf = [("x-orchestra-csrf", "1")];
        let (_, _, setup) =
            session_call(&app, Method::GET, "/api/v1/auth/setup", None, &[], None).await;
        assert_eq!(
            setup,
            json!({ "needs_admin": true, "registration": "closed" })
        );

        let credentials =
            json!({ "email": "first@example.com", "password": "correct horse battery" });
        // Without the CSRF header, or from another origin: refused, nothing stored.
        let (status, cookie, body) = session_call(
            &app,
            Method::POST,
            "/api/v1/auth/session/register",
            None,
            &[],
            Some(credentials.clone()),
        )
        .await;
        assert_eq!(
            (status, cookie, body["error"].clone()),
            (StatusCode::FORBIDDEN, None, json!("csrf"))
        );
        let evil = [
            ("x-orchestra-csrf", "1"),
            ("origin", "https://evil.example"),
        ];
        let (status, _, _) = session_call(
            &app,
            Method::POST,
            "/api/v1/auth/session/register",
            None,
            &evil,
            Some(credentials.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (_, _, setup) =
            session_call(&app, Method::GET, "/api/v1/auth/setup", None, &[], None).await;
        assert_eq!(
            setup["needs_admin"], true,
            "a refused request created no account"
        );

        // The first account, from the console: the admin, signed in.
        let (status, set_cookie, body) = session_call(
            &app,
            Method::POST,
            "/api/v1/auth/session/register",
            None,
            &csrf,
            Some(credentials.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["user"]["role"], "admin");
        assert!(
            body.get("refresh_token").is_none(),
            "the page never sees the refresh token"
        );
        let set_cookie = set_cookie.expect("a cookie");
        for attribute in [
            "HttpOnly",
            "SameSite=Strict",
            "Path=/api/v1/auth/session",
            "Max-Age=",
        ] {
            assert!(set_cookie.contains(attribute), "{set_cookie}");
        }
        assert!(!set_cookie.contains("Secure"), "plain HTTP: {set_cookie}");
        let first = cookie_value(&set_cookie);
        let (status, _) = app
            .get("/api/v1/users/me", body["access_token"].as_str().unwrap())
            .await;
        assert_eq!(status, StatusCode::OK);

        // Behind a TLS proxy the cookie is Secure.
        let tls = [("x-orchestra-csrf", "1"), ("x-forwarded-proto", "https")];
        let (status, set_cookie, _) = session_call(
            &app,
            Method::POST,
            "/api/v1/auth/session",
            None,
            &tls,
            Some(credentials.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(set_cookie.unwrap().ends_with("; Secure"));

        // Refresh: a new access token and a rotated cookie; the old cookie,
        // replayed, ends the session.
        let (status, _, _) = session_call(
            &app,
            Method::POST,
            "/api/v1/auth/session/refresh",
            Some(&first),
            &[],
            None,
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "the CSRF header is required");
        let (status, set_cookie, body) = session_call(
            &app,
            Method::POST,
            "/api/v1/auth/session/refresh",
            Some(&first),
            &csrf,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let second = cookie_value(&set_cookie.unwrap());
        assert_ne!(first, second);
        assert!(body["access_token"].is_string());
        let (status, set_cookie, _) = session_call(
            &app,
            Method::POST,
            "/api/v1/auth/session/refresh",
            Some(&first),
            &csrf,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(
            set_cookie.unwrap().contains("Max-Age=0"),
            "a dead session's cookie is cleared"
        );
        let (status, _, _) = session_call(
            &app,
            Method::POST,
            "/api/v1/auth/session/refresh",
            Some(&second),
            &csrf,
            None,
        )
        .await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "the replay revoked the whole session"
        );

        // Sign out: the session's tokens are revoked and the cookie cleared.
        let (_, set_cookie, _) = session_call(
            &app,
            Method::POST,
            "/api/v1/auth/session",
            None,
            &csrf,
            Some(credentials),
        )
        .await;
        let third = cookie_value(&set_cookie.unwrap());
        let (status, set_cookie, _) = session_call(
            &app,
            Method::DELETE,
            "/api/v1/auth/session",
            Some(&third),
            &csrf,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert!(set_cookie.unwrap().contains("Max-Age=0"));
        let (status, _, _) = session_call(
            &app,
            Method::POST,
            "/api/v1/auth/session/refresh",
            Some(&third),
            &csrf,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _, _) = session_call(
            &app,
            Method::POST,
            "/api/v1/auth/session/refresh",
            None,
            &csrf,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "no cookie, no session");
    }
);

dual_test!(
    the_console_is_served_at_the_root_with_its_security_headers,
    |app: TestApp| async move {
        for path in ["/", "/chat/123", "/agents"] {
            let response = app
                .client
                .get(format!("{}{path}", app.base))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let h = response.headers().clone();
            let csp = h["content-security-policy"].to_str().unwrap();
            assert!(
                csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
                "{csp}"
            );
            assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
            assert_eq!(h["x-content-type-options"], "nosniff");
            assert_eq!(h["referrer-policy"], "no-referrer");
            let text = response.text().await.unwrap();
            assert!(
                text.contains("/assets/app.js") && !text.contains("<script>"),
                "no inline script"
            );
        }
        // Compressed when the browser accepts it; revalidated by ETag.
        let response = app
            .client
            .get(format!("{}/assets/vendor/marked.js", app.base))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["content-encoding"], "gzip");
        let etag = response.headers()["etag"].clone();
        let again = app
            .client
            .get(format!("{}/assets/vendor/marked.js", app.base))
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        // The API's paths keep their JSON 404.
        let (status, body) = app
            .call(Method::GET, "/api/v1/nothing-here", None, None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "not_found");
        let response = app
            .client
            .get(format!("{}/assets/missing.js", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
);

dual_test!(
    admins_reset_a_users_password_and_end_its_sessions,
    |app: TestApp| async move {
        let (admin, user) = app.admin_and_user().await;
        let path = format!("/api/v1/users/{}/password", user.user_id);
        // Not for users, not too short, not for a missing account.
        assert_error(
            &app.post(&path, &user.token, json!({ "password": "a new password" }))
                .await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
        assert_error(
            &app.post(&path, &admin.token, json!({ "password": "short" }))
                .await,
            StatusCode::BAD_REQUEST,
            "validation_error",
        );
        assert_error(
            &app.post(
                &format!("/api/v1/users/{}/password", uuid::Uuid::new_v4()),
                &admin.token,
                json!({ "password": "a new password" }),
            )
            .await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
        let (status, _) = app
            .post(&path, &admin.token, json!({ "password": "a new password" }))
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        // The user's tokens stop working; the old password too; the new one works.
        let (status, _) = app.get("/api/v1/users/me", &user.token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = app
            .call(
                Method::POST,
                "/api/v1/auth/refresh",
                None,
                Some(json!({ "refresh_token": user.refresh })),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = app
            .call(
                Method::POST,
                "/api/v1/auth/login",
                None,
                Some(json!({ "email": "user@example.com", "password": "correct horse battery" })),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let session = app.login_with("user@example.com", "a new password").await;
        assert!(!session.token.is_empty());
        let (_, log) = app
            .get("/api/v1/audit-log?action=user.password_reset", &admin.token)
            .await;
        assert_eq!(log["items"][0]["actor_id"], admin.user_id.as_str());
        assert_eq!(log["items"][0]["details"]["via"], "api");
    }
);
