//! Orchestra as the OAuth authorization server of `/mcp`, over raw HTTP:
//! discovery, registration, PKCE, consent, codes, refresh rotation, scopes,
//! resource binding, revocation, audit. The official SDK's full flow is in
//! `mcp.rs`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::{Session, TestApp};
use crate::dual_test;

const REDIRECT: &str = "http://127.0.0.1:9/callback";

/// A client that does not follow redirects.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn pkce() -> (String, String) {
    let verifier = format!("verifier-{}-{}", uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

async fn register(app: &TestApp, body: Value) -> (StatusCode, Value) {
    let response = app
        .client
        .post(format!("{}/oauth/register", app.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

/// `GET /oauth/authorize` with `params`: the status and `Location`.
async fn authorize(app: &TestApp, params: &[(&str, &str)]) -> (StatusCode, String) {
    let response = browser()
        .get(format!("{}/oauth/authorize", app.base))
        .query(params)
        .send()
        .await
        .unwrap();
    let location = response
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (response.status(), location)
}

async fn token(app: &TestApp, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let response = app
        .client
        .post(format!("{}/oauth/token", app.base))
        .form(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["cache-control"], "no-store");
    (response.status(), response.json().await.unwrap())
}

fn query_of(url: &str) -> std::collections::HashMap<String, String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The whole flow for `user`: authorize, approve `scopes`, exchange.
async fn connect(app: &TestApp, user: &Session, client_id: &str, scopes: &[&str]) -> Value {
    let (verifier, challenge) = pkce();
    let resource = format!("{}/mcp", app.base);
    let (status, location) = authorize(
        app,
        &[
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", REDIRECT),
            ("state", "st4te"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("resource", &resource),
            ("scope", "tools:read tools:call agents:run"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{location}");
    let request = location
        .strip_prefix("/oauth/consent?request=")
        .unwrap_or_else(|| panic!("{location}"));
    let (status, outcome) = app
        .post(
            &format!("/api/v1/oauth/requests/{request}"),
            &user.token,
            json!({ "approve": true, "scopes": scopes }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{outcome}");
    let back = query_of(outcome["redirect_to"].as_str().unwrap());
    assert_eq!(back["state"], "st4te");
    let (status, tokens) = token(
        app,
        &[
            ("grant_type", "authorization_code"),
            ("code", &back["code"]),
            ("redirect_uri", REDIRECT),
            ("client_id", client_id),
            ("code_verifier", &verifier),
            ("resource", &resource),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    tokens
}

/// A JSON-RPC request to `/mcp` with `token`, as a header-less (stand-alone)
/// client of revision 2025-06-18 sends it; `host` overrides the Host.
async fn mcp(app: &TestApp, token: &str, host: Option<&str>, body: Value) -> reqwest::Response {
    let mut request = app
        .client
        .post(format!("{}/mcp", app.base))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&body);
    if let Some(host) = host {
        request = request.header("host", host);
    }
    request.send().await.unwrap()
}

/// The status of a `ping` to `/mcp` with `token`.
async fn ping(app: &TestApp, token: &str) -> StatusCode {
    let ping = json!({ "jsonrpc": "2.0", "id": 1, "method": "ping" });
    mcp(app, token, None, ping).await.status()
}

fn call(name: &str, arguments: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": { "name": name, "arguments": arguments } })
}

dual_test!(
    mcp_clients_are_authorized_by_users_with_pkce_scopes_and_resource_bound_tokens,
    |app: TestApp| async move {
        let (admin, user) = app.admin_and_user().await;
        app.agent(&user, "Helper").await;
        let base = app.base.clone();
        let resource = format!("{base}/mcp");

        // Discovery: the challenge points at the resource's metadata, which
        // names this server as its authorization server.
        let response = app
            .client
            .post(&resource)
            .header("accept", "application/json, text/event-stream")
            .json(&json!({ "jsonrpc": "2.0", "id": 1, "method": "ping" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let challenge = response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        let metadata_url = format!("{base}/.well-known/oauth-protected-resource/mcp");
        assert!(
            challenge.contains(&format!("resource_metadata=\"{metadata_url}\"")),
            "{challenge}"
        );
        let prm: Value = app
            .client
            .get(&metadata_url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(prm["resource"], resource.as_str());
        assert_eq!(prm["authorization_servers"], json!([base]));
        let asm: Value = app
            .client
            .get(format!("{base}/.well-known/oauth-authorization-server"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(asm["issuer"], base.as_str());
        assert_eq!(asm["code_challenge_methods_supported"], json!(["S256"]));
        assert_eq!(
            asm["registration_endpoint"],
            format!("{base}/oauth/register")
        );

        // Registration: redirect URIs are https, loopback http or an app's
        // own scheme.
        for bad in [
            "http://evil.example/cb",
            "javascript:alert(1)",
            "https://x.example/cb#f",
        ] {
            let (status, body) = register(&app, json!({ "redirect_uris": [bad] })).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
            assert_eq!(body["error"], "invalid_redirect_uri");
        }
        let (status, body) = register(&app, json!({ "client_name": "x" })).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_redirect_uri"))
        );
        let (status, client) = register(
            &app,
            json!({ "redirect_uris": [REDIRECT], "client_name": "Test Client",
                    "token_endpoint_auth_method": "none" }),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{client}");
        let client_id = client["client_id"].as_str().unwrap().to_owned();
        assert!(client.get("client_secret").is_none());

        // Authorization requests that cannot go back are stopped on a page;
        // the others go back with the error and the state.
        let (verifier, challenge) = pkce();
        let good = |redirect: &'static str| {
            vec![
                ("response_type", "code"),
                ("client_id", client_id.as_str()),
                ("redirect_uri", redirect),
                ("state", "s1"),
                ("code_challenge_method", "S256"),
            ]
        };
        let (status, _) = authorize(&app, &good("http://127.0.0.1:9/other")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) =
            authorize(&app, &[("client_id", "nobody"), ("redirect_uri", REDIRECT)]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, location) = authorize(&app, &good(REDIRECT)).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let back = query_of(&location);
        assert_eq!(
            (back["error"].as_str(), back["state"].as_str()),
            ("invalid_request", "s1"),
            "{location}"
        );
        let mut plain = good(REDIRECT);
        plain.retain(|(k, _)| *k != "code_challenge_method");
        plain.push(("code_challenge_method", "plain"));
        plain.push(("code_challenge", &challenge));
        let (_, location) = authorize(&app, &plain).await;
        assert_eq!(query_of(&location)["error"], "invalid_request");
        let mut elsewhere = good(REDIRECT);
        elsewhere.push(("code_challenge", &challenge));
        elsewhere.push(("resource", "https://other.example/mcp"));
        let (_, location) = authorize(&app, &elsewhere).await;
        assert_eq!(query_of(&location)["error"], "invalid_target");

        // A well-formed request waits for the signed-in user's decision.
        let mut ok = good(REDIRECT);
        ok.push(("code_challenge", &challenge));
        ok.push(("resource", &resource));
        ok.push(("scope", "tools:read tools:call"));
        let (status, location) = authorize(&app, &ok).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let request = location
            .strip_prefix("/oauth/consent?request=")
            .unwrap()
            .to_owned();
        let (status, pending) = app
            .get(&format!("/api/v1/oauth/requests/{request}"), &user.token)
            .await;
        assert_eq!(status, StatusCode::OK, "{pending}");
        assert_eq!(pending["client"]["name"], "Test Client");
        assert_eq!(pending["client"]["kind"], "registered");
        assert_eq!(pending["redirect_uri"], REDIRECT);
        assert_eq!(pending["scopes"].as_array().unwrap().len(), 2);
        // An API key cannot approve; nor can anyone widen the scopes.
        let (_, key) = app.api_key(&user, "k").await;
        let (status, _) = app
            .post(
                &format!("/api/v1/oauth/requests/{request}"),
                &key,
                json!({ "approve": true }),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = app
            .post(
                &format!("/api/v1/oauth/requests/{request}"),
                &user.token,
                json!({ "approve": true, "scopes": ["agents:run"] }),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, outcome) = app
            .post(
                &format!("/api/v1/oauth/requests/{request}"),
                &user.token,
                json!({ "approve": true }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{outcome}");
        let code = query_of(outcome["redirect_to"].as_str().unwrap())["code"].clone();
        // Decided once.
        let (status, _) = app
            .post(
                &format!("/api/v1/oauth/requests/{request}"),
                &user.token,
                json!({ "approve": true }),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // The code: right verifier, redirect URI and client only.
        let exchange = |verifier: String, redirect: &'static str, client: String| {
            let code = code.clone();
            let app = &app;
            async move {
                token(
                    app,
                    &[
                        ("grant_type", "authorization_code"),
                        ("code", &code),
                        ("redirect_uri", redirect),
                        ("client_id", &client),
                        ("code_verifier", &verifier),
                    ],
                )
                .await
            }
        };
        let (status, body) = exchange(pkce().0, REDIRECT, client_id.clone()).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_grant"))
        );
        let (status, _) = exchange(
            verifier.clone(),
            "http://127.0.0.1:9/other",
            client_id.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (_, other) = register(&app, json!({ "redirect_uris": [REDIRECT] })).await;
        let (status, _) = exchange(
            verifier.clone(),
            REDIRECT,
            other["client_id"].as_str().unwrap().into(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, tokens) = exchange(verifier.clone(), REDIRECT, client_id.clone()).await;
        assert_eq!(status, StatusCode::OK, "{tokens}");
        assert_eq!(tokens["token_type"], "Bearer");
        assert_eq!(tokens["scope"], "tools:read tools:call");
        let access = tokens["access_token"].as_str().unwrap().to_owned();

        // The token works at /mcp, within its scopes.
        let listed: Value = mcp(
            &app,
            &access,
            None,
            json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list" }),
        )
        .await
        .json()
        .await
        .unwrap();
        let names: Vec<&str> = listed["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"calculator__evaluate"), "{names:?}");
        assert!(!names.iter().any(|n| n.starts_with("agent__")), "{names:?}");
        let answer: Value = mcp(
            &app,
            &access,
            None,
            call("calculator__evaluate", json!({ "expression": "6*7" })),
        )
        .await
        .json()
        .await
        .unwrap();
        assert!(
            answer["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("42"),
            "{answer}"
        );
        let refused = mcp(
            &app,
            &access,
            None,
            call("agent__helper", json!({ "message": "hi" })),
        )
        .await;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        let challenge = refused.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            challenge.contains("error=\"insufficient_scope\""),
            "{challenge}"
        );
        assert!(challenge.contains("agents:run"), "{challenge}");
        // Not at the REST API, and not at this /mcp under another name.
        let (status, body) = app.get("/api/v1/agents", &access).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        let port = app.base.rsplit(':').next().unwrap().to_owned();
        let other_host = mcp(
            &app,
            &access,
            Some(&format!("localhost:{port}")),
            json!({ "jsonrpc": "2.0", "id": 1, "method": "ping" }),
        )
        .await;
        assert_eq!(other_host.status(), StatusCode::UNAUTHORIZED);
        assert!(other_host.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token"));

        // The code is single-use: a second exchange revokes what it gave.
        let (status, _) = exchange(verifier, REDIRECT, client_id.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(ping(&app, &access).await, StatusCode::UNAUTHORIZED);

        // Refresh tokens rotate; a replayed one ends the grant.
        let tokens = connect(&app, &user, &client_id, &["tools:read", "agents:run"]).await;
        let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
        let (status, body) = token(
            &app,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh),
                ("client_id", &client_id),
                ("scope", "tools:call"),
            ],
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_scope")),
            "cannot widen"
        );
        let (status, renewed) = token(
            &app,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh),
                ("client_id", &client_id),
                ("resource", &resource),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{renewed}");
        assert_ne!(renewed["refresh_token"], refresh.as_str());
        let access = renewed["access_token"].as_str().unwrap().to_owned();
        let ran: Value = mcp(
            &app,
            &access,
            None,
            call("agent__helper", json!({ "message": "hello" })),
        )
        .await
        .json()
        .await
        .unwrap();
        assert!(ran["result"].is_object(), "{ran}");
        let (status, _) = token(
            &app,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh),
                ("client_id", &client_id),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(ping(&app, &access).await, StatusCode::UNAUTHORIZED);

        // Users see and revoke the clients they approved, and only theirs.
        let tokens = connect(&app, &user, &client_id, &["tools:read"]).await;
        let access = tokens["access_token"].as_str().unwrap().to_owned();
        assert_eq!(ping(&app, &access).await, StatusCode::OK);
        let (status, grants) = app.get("/api/v1/oauth/grants", &user.token).await;
        assert_eq!(status, StatusCode::OK);
        let grants = grants.as_array().unwrap();
        assert_eq!(grants.len(), 1, "revoked grants are not listed: {grants:?}");
        assert_eq!(grants[0]["client"]["name"], "Test Client");
        assert_eq!(grants[0]["scopes"], json!(["tools:read"]));
        let grant = grants[0]["id"].as_str().unwrap().to_owned();
        let (_, theirs) = app.get("/api/v1/oauth/grants", &admin.token).await;
        assert_eq!(theirs, json!([]));
        let (status, _) = app
            .delete(&format!("/api/v1/oauth/grants/{grant}"), &admin.token)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = app
            .delete(&format!("/api/v1/oauth/grants/{grant}"), &user.token)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(ping(&app, &access).await, StatusCode::UNAUTHORIZED);
        let (status, body) = token(
            &app,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
                ("client_id", &client_id),
            ],
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_grant"))
        );

        // A denial goes back to the client as access_denied.
        let (_, challenge) = pkce();
        let mut ask = good(REDIRECT);
        ask.push(("code_challenge", &challenge));
        let (_, location) = authorize(&app, &ask).await;
        let request = location.strip_prefix("/oauth/consent?request=").unwrap();
        let (_, outcome) = app
            .post(
                &format!("/api/v1/oauth/requests/{request}"),
                &user.token,
                json!({ "approve": false }),
            )
            .await;
        assert_eq!(
            query_of(outcome["redirect_to"].as_str().unwrap())["error"],
            "access_denied"
        );

        // Everything is in the audit log.
        let (_, audit) = app
            .get("/api/v1/audit-log?page_size=100", &admin.token)
            .await;
        let actions: Vec<&str> = audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        for action in [
            "oauth.client.register",
            "oauth.consent.approve",
            "oauth.consent.deny",
            "oauth.token.issue",
            "oauth.code.replay",
            "oauth.token.refresh",
            "oauth.refresh.replay",
            "oauth.grant.revoke",
        ] {
            assert!(
                actions.contains(&action),
                "{action} missing from {actions:?}"
            );
        }
    }
);

dual_test!(
    protocol_endpoints_answer_bad_input_with_oauth_errors,
    |app: TestApp| async move {
        // Not a form, unknown grant, unknown client, a confidential client
        // without its secret, garbage registration: 4xx with both shapes.
        let response = app
            .client
            .post(format!("{}/oauth/token", app.base))
            .body("%%%")
            .header("content-type", "application/x-www-form-urlencoded")
            .send()
            .await
            .unwrap();
        assert!(response.status().is_client_error());
        let (status, body) =
            token(&app, &[("grant_type", "password"), ("client_id", "nobody")]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"], "invalid_client");
        assert!(body["message"].is_string());
        let (status, client) = register(&app, json!({ "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "client_secret_basic" })).await;
        assert_eq!(status, StatusCode::CREATED);
        let secret = client["client_secret"].as_str().unwrap();
        let id = client["client_id"].as_str().unwrap();
        let (status, _) = token(
            &app,
            &[
                ("grant_type", "refresh_token"),
                ("client_id", id),
                ("refresh_token", "x"),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "the secret is required");
        let response = app
            .client
            .post(format!("{}/oauth/token", app.base))
            .basic_auth(id, Some(secret))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", "omcp_rt_nope"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_grant");
        let (status, body) = token(
            &app,
            &[
                ("grant_type", "password"),
                ("client_id", id),
                ("client_secret", secret),
            ],
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("unsupported_grant_type"))
        );
        let response = app
            .client
            .post(format!("{}/oauth/register", app.base))
            .body("[1,2")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let response = browser()
            .get(format!("{}/oauth/authorize?client_id=%ZZ&&&", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(response.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'"));
        let (status, _) = app
            .get(
                &format!("/api/v1/oauth/requests/{}", uuid::Uuid::new_v4()),
                &app.register("u@example.com").await.token,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
);

dual_test!(
    dynamic_registration_can_be_turned_off,
    |config: &mut orchestra::config::Config| {
        config.oauth.dynamic_registration = false;
    },
    |app: TestApp| async move {
        let (status, body) = register(&app, json!({ "redirect_uris": [REDIRECT] })).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "access_denied");
        // Plain-http client metadata documents are refused by default.
        let (_, challenge) = pkce();
        let (status, _) = authorize(
            &app,
            &[
                ("response_type", "code"),
                ("client_id", "http://127.0.0.1:9/client.json"),
                ("redirect_uri", REDIRECT),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let asm: Value = app
            .client
            .get(format!(
                "{}/.well-known/oauth-authorization-server",
                app.base
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(asm.get("registration_endpoint").is_none());
    }
);

/// Serves `documents` (path → JSON) on a loopback port: client metadata
/// documents, as a client's own web site would.
async fn document_server(documents: Vec<(&'static str, Value)>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut router = axum::Router::new();
    for (path, document) in documents {
        let document =
            serde_json::from_str::<Value>(&document.to_string().replace("{base}", &base)).unwrap();
        router = router.route(
            path,
            axum::routing::get(move || async move { axum::Json(document) }),
        );
    }
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
}

dual_test!(
    clients_identified_by_their_metadata_document_url_are_authorized,
    |config: &mut orchestra::config::Config| {
        // The documents are served over http on loopback in this test.
        config.oauth.allow_http_metadata_documents = true;
        config.egress.allow_private_user_endpoints = true;
    },
    |app: TestApp| async move {
        let user = app.register("doc@example.com").await;
        let docs = document_server(vec![
            ("/client.json", json!({ "client_id": "{base}/client.json", "client_name": "Doc Client",
                                     "client_uri": "https://doc.example", "redirect_uris": [REDIRECT] })),
            ("/impostor.json", json!({ "client_id": "{base}/client.json", "redirect_uris": [REDIRECT] })),
            ("/evil.json", json!({ "client_id": "{base}/evil.json", "redirect_uris": ["javascript:alert(1)"] })),
            ("/secret.json", json!({ "client_id": "{base}/secret.json", "redirect_uris": [REDIRECT],
                                     "token_endpoint_auth_method": "client_secret_basic" })),
        ])
        .await;
        let asm: Value = app
            .client
            .get(format!(
                "{}/.well-known/oauth-authorization-server",
                app.base
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(asm["client_id_metadata_document_supported"], true);

        // Documents that are not their own, or unsafe, stop the request.
        for bad in ["impostor", "evil", "secret", "missing"] {
            let (_, challenge) = pkce();
            let (status, _) = authorize(
                &app,
                &[
                    ("response_type", "code"),
                    ("client_id", &format!("{docs}/{bad}.json")),
                    ("redirect_uri", REDIRECT),
                    ("code_challenge", &challenge),
                    ("code_challenge_method", "S256"),
                ],
            )
            .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        }

        // The client's URL is its id; no registration.
        let client_id = format!("{docs}/client.json");
        let (verifier, challenge) = pkce();
        let (status, location) = authorize(
            &app,
            &[
                ("response_type", "code"),
                ("client_id", &client_id),
                ("redirect_uri", REDIRECT),
                ("state", "s"),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{location}");
        let request = location.strip_prefix("/oauth/consent?request=").unwrap();
        let (_, pending) = app
            .get(&format!("/api/v1/oauth/requests/{request}"), &user.token)
            .await;
        assert_eq!(pending["client"]["kind"], "metadata_document", "{pending}");
        assert_eq!(pending["client"]["name"], "Doc Client");
        assert_eq!(pending["client"]["id"], client_id.as_str());
        let (_, outcome) = app
            .post(
                &format!("/api/v1/oauth/requests/{request}"),
                &user.token,
                json!({ "approve": true }),
            )
            .await;
        let code = query_of(outcome["redirect_to"].as_str().unwrap())["code"].clone();
        let (status, tokens) = token(
            &app,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("client_id", &client_id),
                ("code_verifier", &verifier),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{tokens}");
        assert!(tokens["access_token"]
            .as_str()
            .unwrap()
            .starts_with("omcp_at_"));
    }
);

dual_test!(
    an_admin_password_reset_revokes_the_mcp_clients_the_user_approved,
    |app: TestApp| async move {
        let (admin, user) = app.admin_and_user().await;
        let (_, client) = register(&app, json!({ "redirect_uris": [REDIRECT] })).await;
        let client_id = client["client_id"].as_str().unwrap();
        let tokens = connect(&app, &user, client_id, &["tools:read"]).await;
        let access = tokens["access_token"].as_str().unwrap();
        assert_eq!(ping(&app, access).await, StatusCode::OK);
        // The user's own password change keeps them (as API keys stay).
        let (status, body) = app
            .post(
                "/api/v1/users/me/password",
                &user.token,
                json!({ "current_password": "correct horse battery", "new_password": "another good password" }),
            )
            .await;
        assert!(status.is_success(), "{body}");
        assert_eq!(ping(&app, access).await, StatusCode::OK);
        // An admin's reset answers a compromised account: they are revoked.
        let (status, body) = app
            .post(
                &format!("/api/v1/users/{}/password", user.user_id),
                &admin.token,
                json!({ "password": "a brand new password" }),
            )
            .await;
        assert!(status.is_success(), "{body}");
        assert_eq!(ping(&app, access).await, StatusCode::UNAUTHORIZED);
        let (status, body) = token(
            &app,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
                ("client_id", client_id),
            ],
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_grant"))
        );
    }
);

/// A JSON-RPC request of revision 2025-11-25 to `/mcp`: (status, answer).
async fn mcp_2025_11_25(app: &TestApp, token: &str, body: Value) -> (StatusCode, Value) {
    let response = app
        .client
        .post(format!("{}/mcp", app.base))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

dual_test!(
    an_mcp_clients_tasks_are_its_own_and_need_the_agents_scope,
    crate::mcp::with_vendor_only,
    |app: TestApp| async move {
        let (_, user) = app.admin_and_user().await;
        let (status, agent) = app
            .post(
                "/api/v1/agents",
                &user.token,
                json!({ "name": "Helper", "instructions": "Help.",
                        "model": { "provider": "openai", "model": "gpt-test" } }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{agent}");
        let mut clients = Vec::new();
        for _ in 0..2 {
            let (_, client) = register(&app, json!({ "redirect_uris": [REDIRECT] })).await;
            clients.push(client["client_id"].as_str().unwrap().to_owned());
        }
        let first = connect(&app, &user, &clients[0], &["tools:read", "agents:run"]).await;
        let first = first["access_token"].as_str().unwrap().to_owned();
        let second = connect(&app, &user, &clients[1], &["tools:read", "agents:run"]).await;
        let second = second["access_token"].as_str().unwrap().to_owned();
        let narrow = {
            let (_, client) = register(&app, json!({ "redirect_uris": [REDIRECT] })).await;
            let id = client["client_id"].as_str().unwrap().to_owned();
            connect(&app, &user, &id, &["tools:read"]).await["access_token"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let mut start = call("agent__helper", json!({ "message": "hello" }));
        start["params"]["task"] = json!({});
        let (status, created) = mcp_2025_11_25(&app, &first, start.clone()).await;
        assert_eq!(status, StatusCode::OK, "{created}");
        let task = created["result"]["task"]["taskId"]
            .as_str()
            .unwrap()
            .to_owned();
        let get = json!({ "jsonrpc": "2.0", "id": 2, "method": "tasks/get",
                          "params": { "taskId": task } });
        let (_, got) = mcp_2025_11_25(&app, &first, get.clone()).await;
        assert!(got["result"]["status"].is_string(), "{got}");
        // Another client of the same user neither reads, lists nor cancels it.
        let (_, got) = mcp_2025_11_25(&app, &second, get.clone()).await;
        assert_eq!(got["error"]["code"], -32602, "{got}");
        let cancel = json!({ "jsonrpc": "2.0", "id": 3, "method": "tasks/cancel",
                             "params": { "taskId": task } });
        let (_, refused) = mcp_2025_11_25(&app, &second, cancel).await;
        assert_eq!(refused["error"]["code"], -32602, "{refused}");
        let list = json!({ "jsonrpc": "2.0", "id": 4, "method": "tasks/list" });
        let (_, listed) = mcp_2025_11_25(&app, &second, list.clone()).await;
        assert_eq!(listed["result"]["tasks"], json!([]), "{listed}");
        let (_, listed) = mcp_2025_11_25(&app, &first, list).await;
        assert_eq!(listed["result"]["tasks"][0]["taskId"], task, "{listed}");
        // Without agents:run, no task starts and none is read.
        let (status, _) = mcp_2025_11_25(&app, &narrow, start).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = mcp_2025_11_25(&app, &narrow, get).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
);

dual_test!(
    an_address_that_floods_registration_or_authorization_is_told_to_wait,
    |config: &mut orchestra::config::Config| {
        config.oauth.register_per_hour = 2;
        config.oauth.authorize_per_minute = 3;
    },
    |app: TestApp| async move {
        let mut clients = Vec::new();
        for _ in 0..2 {
            let (status, client) = register(&app, json!({ "redirect_uris": [REDIRECT] })).await;
            assert_eq!(status, StatusCode::CREATED, "{client}");
            clients.push(client["client_id"].as_str().unwrap().to_owned());
        }
        // The third within the hour waits; nothing is stored for it.
        let (status, refused) = register(&app, json!({ "redirect_uris": [REDIRECT] })).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{refused}");
        assert_eq!(refused["error"], "temporarily_unavailable");
        let response = app
            .client
            .post(format!("{}/oauth/register", app.base))
            .json(&json!({ "redirect_uris": [REDIRECT] }))
            .send()
            .await
            .unwrap();
        let wait: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=3600).contains(&wait), "{wait}");

        // Authorization requests likewise; the clients registered before
        // keep working up to the limit.
        let (_, challenge) = pkce();
        let resource = format!("{}/mcp", app.base);
        let params = [
            ("response_type", "code"),
            ("client_id", clients[0].as_str()),
            ("redirect_uri", REDIRECT),
            ("state", "s"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("resource", resource.as_str()),
        ];
        for _ in 0..3 {
            let (status, page) = authorize(&app, &params).await;
            assert_eq!(status, StatusCode::SEE_OTHER, "{page}");
        }
        let (status, location) = authorize(&app, &params).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(location, "", "nothing is redirected");
    }
);
