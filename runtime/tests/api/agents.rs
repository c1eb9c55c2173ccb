//! Agents: CRUD, revisions, soft delete, clone, filters, pagination edges and
//! concurrent updates.

use reqwest::StatusCode;
use serde_json::json;

use crate::common::*;
use crate::dual_test;

dual_test!(
    every_change_is_a_new_version_with_its_revision,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let id = app.agent(&admin, "researcher").await;
        let path = format!("/api/v1/agents/{id}");

        let (status, v1) = app.get(&path, &admin.token).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v1["version"], 1);
        assert_eq!(v1["model"]["parameters"]["temperature"], 0.2);

        let (status, v2) = app
            .patch(
                &path,
                &admin.token,
                json!({ "description": "finds things", "tools": [] }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{v2}");
        assert_eq!(v2["version"], 2);
        assert_eq!(
            v2["instructions"], "Be helpful.",
            "PATCH keeps absent fields"
        );
        assert_eq!(v2["tools"], json!([]));
        let unknown = app
            .patch(
                &path,
                &admin.token,
                json!({ "tools": ["calculator__evaluate", "nope__nothing"] }),
            )
            .await;
        assert_error(&unknown, StatusCode::UNPROCESSABLE_ENTITY, "unknown_tool");
        assert!(unknown.1["message"]
            .as_str()
            .unwrap()
            .contains("nope__nothing"));

        let (status, v3) = app
        .put(
            &path,
            &admin.token,
            json!({ "name": "researcher", "model": { "provider": "anthropic", "model": "claude-sonnet" } }),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v3}");
        assert_eq!(v3["version"], 3);
        assert_eq!(
            v3["description"],
            serde_json::Value::Null,
            "PUT replaces everything"
        );
        assert_eq!(v3["tools"], json!([]));

        // A no-op change is not a new version.
        let (_, same) = app
            .patch(&path, &admin.token, json!({ "name": "researcher" }))
            .await;
        assert_eq!(same["version"], 3);

        let (_, revisions) = app.get(&format!("{path}/revisions"), &admin.token).await;
        assert_eq!(revisions["total"], 3);
        let versions: Vec<i64> = revisions["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["version"].as_i64().unwrap())
            .collect();
        assert_eq!(versions, vec![3, 2, 1]);
        let (status, first) = app.get(&format!("{path}/revisions/1"), &admin.token).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(first["spec"]["model"]["provider"], "openai");
        assert_eq!(first["spec"]["instructions"], "Be helpful.");
        assert_eq!(first["created_by"], admin.user_id.as_str());
        assert_error(
            &app.get(&format!("{path}/revisions/9"), &admin.token).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );

        // PATCH with null clears the description.
        app.patch(&path, &admin.token, json!({ "description": "x" }))
            .await;
        let (_, cleared) = app
            .patch(&path, &admin.token, json!({ "description": null }))
            .await;
        assert_eq!(cleared["description"], serde_json::Value::Null);
        assert_eq!(cleared["version"], 5);
    }
);

dual_test!(
    names_are_unique_until_deleted_and_delete_is_soft,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let id = app.agent(&admin, "writer").await;
        let dup = app
            .post(
                "/api/v1/agents",
                &admin.token,
                json!({ "name": "writer", "model": { "provider": "openai", "model": "m" } }),
            )
            .await;
        assert_error(&dup, StatusCode::CONFLICT, "conflict");
        let other = app.agent(&admin, "editor").await;
        let rename = app
            .patch(
                &format!("/api/v1/agents/{other}"),
                &admin.token,
                json!({ "name": "writer" }),
            )
            .await;
        assert_error(&rename, StatusCode::CONFLICT, "conflict");

        let (status, _) = app
            .delete(&format!("/api/v1/agents/{id}"), &admin.token)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_error(
            &app.get(&format!("/api/v1/agents/{id}"), &admin.token).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
        assert_error(
            &app.delete(&format!("/api/v1/agents/{id}"), &admin.token)
                .await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
        assert_error(
            &app.patch(
                &format!("/api/v1/agents/{id}"),
                &admin.token,
                json!({ "name": "z" }),
            )
            .await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
        let (_, list) = app.get("/api/v1/agents", &admin.token).await;
        assert_eq!(list["total"], 1);
        // The name is free again.
        app.agent(&admin, "writer").await;
    }
);

dual_test!(
    clones_are_new_agents_with_fresh_history,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let id = app.agent(&admin, "base").await;
        app.patch(
            &format!("/api/v1/agents/{id}"),
            &admin.token,
            json!({ "instructions": "v2" }),
        )
        .await;

        let (status, copy) = app
            .post(
                &format!("/api/v1/agents/{id}/clone"),
                &admin.token,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{copy}");
        assert_eq!(copy["name"], "base (copy)");
        assert_eq!(copy["version"], 1);
        assert_eq!(copy["instructions"], "v2");
        assert_ne!(copy["id"], id.as_str());

        let resp = app
            .client
            .post(format!("{}/api/v1/agents/{id}/clone", app.base))
            .bearer_auth(&admin.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED, "a clone needs no body");
        let second: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(second["name"], "base (copy 2)");

        let (status, named) = app
            .post(
                &format!("/api/v1/agents/{id}/clone"),
                &admin.token,
                json!({ "name": "fork" }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(named["name"], "fork");
        let taken = app
            .post(
                &format!("/api/v1/agents/{id}/clone"),
                &admin.token,
                json!({ "name": "fork" }),
            )
            .await;
        assert_error(&taken, StatusCode::CONFLICT, "conflict");
    }
);

dual_test!(
    lists_filter_sort_and_page_exactly,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        for name in ["alpha", "bravo", "charlie", "delta", "echo"] {
            app.agent(&admin, name).await;
        }
        app.post(
            "/api/v1/agents",
            &admin.token,
            json!({ "name": "100%_sure", "model": { "provider": "anthropic", "model": "claude" } }),
        )
        .await;

        let page = |q: &str| {
            let app = &app;
            let token = admin.token.clone();
            let q = q.to_owned();
            async move { app.get(&format!("/api/v1/agents?{q}"), &token).await }
        };
        let names = |body: &serde_json::Value| -> Vec<String> {
            body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["name"].as_str().unwrap().to_owned())
                .collect()
        };

        let (_, p1) = page("sort=name&page_size=2").await;
        assert_eq!(
            (p1["total"].as_u64(), p1["has_more"].as_bool()),
            (Some(6), Some(true))
        );
        assert_eq!(names(&p1), vec!["100%_sure", "alpha"]);
        let (_, p3) = page("sort=name&page_size=2&page=3").await;
        assert_eq!(names(&p3), vec!["delta", "echo"]);
        assert_eq!(p3["has_more"], false);
        let (_, p4) = page("sort=name&page_size=2&page=4").await;
        assert_eq!(names(&p4), Vec::<String>::new());
        assert_eq!(
            (p4["total"].as_u64(), p4["has_more"].as_bool()),
            (Some(6), Some(false))
        );
        let (_, desc) = page("sort=-name&page_size=1").await;
        assert_eq!(names(&desc), vec!["echo"]);
        let (_, newest) = page("page_size=1").await;
        assert_eq!(names(&newest), vec!["100%_sure"], "newest first by default");

        // LIKE wildcards in the search are literal.
        let (_, pct) = page("q=%25_").await;
        assert_eq!(names(&pct), vec!["100%_sure"]);
        let (_, ci) = page("q=ALP").await;
        assert_eq!(names(&ci), vec!["alpha"]);
        let (_, by_provider) = page("provider=anthropic").await;
        assert_eq!(names(&by_provider), vec!["100%_sure"]);
        let (_, by_tool) = page("tool=calculator__evaluate").await;
        assert_eq!(by_tool["total"], 5);
        assert!(!names(&by_tool).contains(&"100%_sure".to_owned()));
        let (_, by_tool) = page("tool=nothing__here").await;
        assert_eq!(by_tool["total"], 0);

        for bad in [
            "page=0",
            "page_size=0",
            "page_size=101",
            "page=abc",
            "sort=price",
            "owner_id=nope",
        ] {
            assert_error(
                &page(bad).await,
                StatusCode::BAD_REQUEST,
                "validation_error",
            );
        }
    }
);

dual_test!(concurrent_updates_lose_nothing, |app: TestApp| async move {
    let admin = app.register("admin@example.com").await;
    let id = app.agent(&admin, "busy").await;
    let path = format!("/api/v1/agents/{id}");

    // Ten blind PATCHes at once: each becomes its own version.
    let writes = (0..10).map(|i| {
        let app = &app;
        let path = path.clone();
        let token = admin.token.clone();
        async move {
            app.patch(
                &path,
                &token,
                json!({ "instructions": format!("take {i}") }),
            )
            .await
        }
    });
    for (status, body) in futures_util::future::join_all(writes).await {
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (_, agent) = app.get(&path, &admin.token).await;
    assert_eq!(agent["version"], 11);
    let (_, revisions) = app
        .get(&format!("{path}/revisions?page_size=100"), &admin.token)
        .await;
    let mut versions: Vec<i64> = revisions["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["version"].as_i64().unwrap())
        .collect();
    versions.sort();
    assert_eq!(versions, (1..=11).collect::<Vec<_>>());
    let mut takes: Vec<String> = revisions["items"].as_array().unwrap()[..10]
        .iter()
        .map(|r| r["spec"]["instructions"].as_str().unwrap().to_owned())
        .collect();
    takes.sort();
    takes.dedup();
    assert_eq!(takes.len(), 10, "every write is recorded once");

    // Five conditional writes against the same version: exactly one wins.
    let writes = (0..5).map(|i| {
        let app = &app;
        let url = format!("{}{path}", app.base);
        let token = admin.token.clone();
        async move {
            app.client
                .patch(url)
                .bearer_auth(token)
                .header("If-Match", "\"11\"")
                .json(&json!({ "instructions": format!("guarded {i}") }))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    let statuses = futures_util::future::join_all(writes).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CONFLICT)
            .count(),
        4,
        "{statuses:?}"
    );
    let (_, agent) = app.get(&path, &admin.token).await;
    assert_eq!(agent["version"], 12);

    let stale = app
        .client
        .put(format!("{}{path}", app.base))
        .bearer_auth(&admin.token)
        .header("If-Match", "\"3\"")
        .json(&json!({ "name": "busy", "model": { "provider": "openai", "model": "m" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::CONFLICT);
    let body: serde_json::Value = stale.json().await.unwrap();
    assert_eq!(body["details"]["current_version"], 12);
    let etag = app
        .client
        .get(format!("{}{path}", app.base))
        .bearer_auth(&admin.token)
        .send()
        .await
        .unwrap();
    assert_eq!(etag.headers()["etag"], "\"12\"");
});

dual_test!(
    invalid_agents_are_refused_and_nothing_is_stored,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let model = json!({ "provider": "openai", "model": "m" });
        let cases = [
            json!({ "name": "", "model": model }),
            json!({ "name": "x".repeat(201), "model": model }),
            json!({ "name": "ok", "model": { "provider": "Open AI", "model": "m" } }),
            json!({ "name": "ok", "model": { "provider": "openai", "model": "" } }),
            json!({ "name": "ok", "model": model, "tools": ["a", "a"] }),
            json!({ "name": "ok", "model": model, "tools": ["has space"] }),
            json!({ "name": "ok", "model": model, "config": [] }),
            json!({ "name": "ok", "model": model, "unknown": 1 }),
            json!({ "name": 5, "model": model }),
            json!({ "model": model }),
        ];
        for case in cases {
            let result = app.post("/api/v1/agents", &admin.token, case.clone()).await;
            assert_error(&result, StatusCode::BAD_REQUEST, "validation_error");
        }
        let unknown = app
            .post(
                "/api/v1/agents",
                &admin.token,
                json!({ "name": "ok", "model": model, "tools": ["ghost__tool"] }),
            )
            .await;
        assert_error(&unknown, StatusCode::UNPROCESSABLE_ENTITY, "unknown_tool");
        assert_eq!(app.get("/api/v1/agents", &admin.token).await.1["total"], 0);
        let id = app.agent(&admin, "kept").await;
        let bad = app
            .patch(
                &format!("/api/v1/agents/{id}"),
                &admin.token,
                json!({ "tools": ["a", "a"] }),
            )
            .await;
        assert_error(&bad, StatusCode::BAD_REQUEST, "validation_error");
        let (_, agent) = app.get(&format!("/api/v1/agents/{id}"), &admin.token).await;
        assert_eq!(agent["version"], 1);
        assert_eq!(agent["tools"], json!(["calculator__evaluate"]));
    }
);
