//! Conversations and messages: lifecycle, ordering, cursor pagination and
//! concurrent posts.

use reqwest::StatusCode;
use serde_json::json;

use crate::common::*;
use crate::dual_test;

dual_test!(
    conversations_live_and_die_with_their_messages,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let agent = app.agent(&admin, "chat").await;
        let other_agent = app.agent(&admin, "other").await;
        let id = app.conversation(&admin, &agent).await;
        app.conversation(&admin, &other_agent).await;
        let path = format!("/api/v1/conversations/{id}");

        let (_, conv) = app.get(&path, &admin.token).await;
        assert_eq!(conv["agent_id"], agent.as_str());
        assert_eq!(conv["title"], "chat");
        assert_eq!(conv["message_count"], 0);

        let (status, renamed) = app
            .patch(&path, &admin.token, json!({ "title": "  Trip planning " }))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(renamed["title"], "Trip planning");
        let (_, cleared) = app
            .patch(&path, &admin.token, json!({ "title": null }))
            .await;
        assert_eq!(cleared["title"], serde_json::Value::Null);

        let (_, all) = app.get("/api/v1/conversations", &admin.token).await;
        assert_eq!(all["total"], 2);
        let (_, filtered) = app
            .get(
                &format!("/api/v1/conversations?agent_id={agent}"),
                &admin.token,
            )
            .await;
        assert_eq!(filtered["total"], 1);
        assert_eq!(filtered["items"][0]["id"], id.as_str());

        let (status, msg) = app
            .post(
                &format!("{path}/messages"),
                &admin.token,
                json!({ "content": "hello" }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{msg}");
        assert_eq!(msg["seq"], 1);
        assert_eq!(msg["role"], "user");
        assert_eq!(msg["content"], json!([{ "type": "text", "text": "hello" }]));

        let (status, _) = app.delete(&path, &admin.token).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_error(
            &app.get(&path, &admin.token).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
        assert_error(
            &app.get(&format!("{path}/messages"), &admin.token).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );

        // A conversation needs a live agent the caller can see.
        app.delete(&format!("/api/v1/agents/{other_agent}"), &admin.token)
            .await;
        let gone = app
            .post(
                "/api/v1/conversations",
                &admin.token,
                json!({ "agent_id": other_agent }),
            )
            .await;
        assert_error(&gone, StatusCode::NOT_FOUND, "not_found");
        let missing = app
            .post(
                "/api/v1/conversations",
                &admin.token,
                json!({ "agent_id": uuid::Uuid::new_v4() }),
            )
            .await;
        assert_error(&missing, StatusCode::NOT_FOUND, "not_found");
    }
);

dual_test!(
    messages_are_ordered_and_paged_by_cursor,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let agent = app.agent(&admin, "chat").await;
        let id = app.conversation(&admin, &agent).await;
        let path = format!("/api/v1/conversations/{id}/messages");
        for i in 1..=5 {
            let body = if i % 2 == 0 {
                json!({ "role": "assistant", "content": [{ "type": "text", "text": format!("m{i}") }], "metadata": { "i": i } })
            } else {
                json!({ "content": format!("m{i}") })
            };
            let (status, _) = app.post(&path, &admin.token, body).await;
            assert_eq!(status, StatusCode::CREATED);
        }
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let url = match &cursor {
                Some(c) => format!("{path}?limit=2&after={c}"),
                None => format!("{path}?limit=2"),
            };
            let (status, page) = app.get(&url, &admin.token).await;
            assert_eq!(status, StatusCode::OK);
            for m in page["items"].as_array().unwrap() {
                seen.push(m["content"][0]["text"].as_str().unwrap().to_owned());
            }
            assert_eq!(
                page["has_more"].as_bool().unwrap(),
                page["next_cursor"].is_string()
            );
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen, vec!["m1", "m2", "m3", "m4", "m5"]);
        let (_, conv) = app
            .get(&format!("/api/v1/conversations/{id}"), &admin.token)
            .await;
        assert_eq!(conv["message_count"], 5);

        let (_, page) = app.get(&format!("{path}?limit=200"), &admin.token).await;
        assert_eq!(page["items"][1]["role"], "assistant");
        assert_eq!(page["items"][1]["metadata"]["i"], 2);
        for bad in ["limit=0", "limit=201", "after=abc", "after=-3"] {
            assert_error(
                &app.get(&format!("{path}?{bad}"), &admin.token).await,
                StatusCode::BAD_REQUEST,
                "validation_error",
            );
        }
    }
);

dual_test!(
    concurrent_posts_get_distinct_gapless_sequence_numbers,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let agent = app.agent(&admin, "chat").await;
        let id = app.conversation(&admin, &agent).await;
        let path = format!("/api/v1/conversations/{id}/messages");
        let posts = (0..12).map(|i| {
            let app = &app;
            let path = path.clone();
            let token = admin.token.clone();
            async move {
                app.post(&path, &token, json!({ "content": format!("p{i}") }))
                    .await
            }
        });
        let mut seqs: Vec<i64> = futures_util::future::join_all(posts)
            .await
            .into_iter()
            .map(|(status, body)| {
                assert_eq!(status, StatusCode::CREATED, "{body}");
                body["seq"].as_i64().unwrap()
            })
            .collect();
        seqs.sort();
        assert_eq!(seqs, (1..=12).collect::<Vec<_>>());
    }
);

dual_test!(
    invalid_messages_are_refused_and_nothing_is_stored,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let agent = app.agent(&admin, "chat").await;
        let id = app.conversation(&admin, &agent).await;
        let path = format!("/api/v1/conversations/{id}/messages");
        let cases = [
            json!({ "content": "" }),
            json!({ "content": [] }),
            json!({ "role": "tool", "content": "x" }),
            json!({ "role": "robot", "content": "x" }),
            json!({ "content": [{ "type": "video", "url": "x" }] }),
            json!({ "content": [{ "type": "image", "url": "javascript:alert(1)" }] }),
            json!({ "content": 42 }),
            json!({ "content": "x", "metadata": "not an object" }),
            json!({ "content": "x", "metadata": { "big": "y".repeat(20_000) } }),
        ];
        for case in cases {
            let result = app.post(&path, &admin.token, case.clone()).await;
            assert_error(&result, StatusCode::BAD_REQUEST, "validation_error");
        }
        let (_, page) = app.get(&path, &admin.token).await;
        assert_eq!(page["items"], json!([]));
        let long_title = app
            .patch(
                &format!("/api/v1/conversations/{id}"),
                &admin.token,
                json!({ "title": "t".repeat(301) }),
            )
            .await;
        assert_error(&long_title, StatusCode::BAD_REQUEST, "validation_error");
    }
);

dual_test!(
    conversations_are_searched_by_title_and_messages_read_backwards,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let other = app.add_user(&admin, "other@example.com", "user").await;
        let agent = app.agent(&admin, "chat").await;
        for title in [
            "Trip to Lyon",
            "Budget 100% done",
            "lyon again",
            "under_score",
        ] {
            let (status, _) = app
                .post(
                    "/api/v1/conversations",
                    &admin.token,
                    json!({ "agent_id": agent, "title": title }),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED);
        }
        let titles = |page: &serde_json::Value| -> Vec<String> {
            let mut t: Vec<String> = page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["title"].as_str().unwrap().to_owned())
                .collect();
            t.sort();
            t
        };
        let (_, page) = app.get("/api/v1/conversations?q=LYON", &admin.token).await;
        assert_eq!(titles(&page), ["Trip to Lyon", "lyon again"]);
        assert_eq!(page["total"], 2);
        // LIKE's wildcards are plain characters here.
        let (_, page) = app
            .get("/api/v1/conversations?q=100%25", &admin.token)
            .await;
        assert_eq!(titles(&page), ["Budget 100% done"]);
        let (_, page) = app.get("/api/v1/conversations?q=_", &admin.token).await;
        assert_eq!(titles(&page), ["under_score"]);
        let (_, page) = app.get("/api/v1/conversations?q=lyon", &other.token).await;
        assert_eq!(page["total"], 0, "another user's titles are not searched");
        let long = "x".repeat(201);
        assert_error(
            &app.get(&format!("/api/v1/conversations?q={long}"), &admin.token)
                .await,
            StatusCode::BAD_REQUEST,
            "validation_error",
        );

        // 7 messages read backwards 3 at a time: 5-7, 2-4, 1.
        let id = app.conversation(&admin, &agent).await;
        for i in 1..=7 {
            let (status, _) = app
                .post(
                    &format!("/api/v1/conversations/{id}/messages"),
                    &admin.token,
                    json!({ "role": "user", "content": format!("m{i}") }),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED);
        }
        let seqs = |page: &serde_json::Value| -> Vec<i64> {
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["seq"].as_i64().unwrap())
                .collect()
        };
        let path = format!("/api/v1/conversations/{id}/messages");
        let (_, page) = app
            .get(&format!("{path}?before=latest&limit=3"), &admin.token)
            .await;
        assert_eq!(seqs(&page), [5, 6, 7]);
        assert_eq!(
            (page["has_more"].clone(), page["next_cursor"].clone()),
            (json!(true), json!("5"))
        );
        let (_, page) = app
            .get(&format!("{path}?before=5&limit=3"), &admin.token)
            .await;
        assert_eq!(seqs(&page), [2, 3, 4]);
        let (_, page) = app
            .get(&format!("{path}?before=2&limit=3"), &admin.token)
            .await;
        assert_eq!(seqs(&page), [1]);
        assert_eq!(
            (page["has_more"].clone(), page["next_cursor"].clone()),
            (json!(false), json!(null))
        );
        assert_error(
            &app.get(&format!("{path}?before=3&after=1"), &admin.token)
                .await,
            StatusCode::BAD_REQUEST,
            "validation_error",
        );
        assert_error(
            &app.get(&format!("{path}?before=soon"), &admin.token).await,
            StatusCode::BAD_REQUEST,
            "validation_error",
        );
    }
);
