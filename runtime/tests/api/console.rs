//! The web console in a real Chromium (Debian's `chromium` and
//! `chromium-driver`), driven through WebDriver, against the real server and
//! a local server that speaks the OpenAI wire format (streaming included).
//!
//! Without chromedriver these tests are skipped with a notice, except under
//! `CI=true`, where they fail (`scripts/test` installs it). They run one at a
//! time: a browser is heavy on a 2-core machine. With
//! `ORCHESTRA_UPDATE_SCREENSHOTS=1`, the screenshots they take are written
//! to `docs/screenshots` (the README shows them); otherwise to the target
//! directory.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::common::{spawn_app_with, Backend, Session, TestApp};
use crate::runs::with_vendor;

const PASSWORD: &str = "correct horse battery";

/// One browser at a time.
static BROWSER_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Browser {
    client: Client,
    driver: Child,
    base: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn chromedriver() -> Option<String> {
    for path in ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"] {
        if std::path::Path::new(path).exists() {
            return Some(path.to_owned());
        }
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true: chromedriver is required for the console tests (apt-get install chromium chromium-driver)");
    }
    eprintln!("skipping the console tests: chromedriver is not installed (apt-get install chromium chromium-driver)");
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    /// A headless Chromium at `width` x `height`, or `None` without one.
    async fn open(base: &str, width: u32, height: u32) -> Option<Browser> {
        Self::open_with(base, width, height, false).await
    }

    /// As `open`, with the system's dark theme when `dark`.
    async fn open_with(base: &str, width: u32, height: u32, dark: bool) -> Option<Browser> {
        let driver_path = chromedriver()?;
        let port = free_port();
        let driver = Command::new(driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let mut caps = serde_json::Map::new();
        let binary = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("/usr/bin/chromium");
        let mut options = json!({
            "binary": binary,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-extensions", "--no-first-run", "--force-color-profile=srgb",
                     format!("--window-size={width},{height}")],
        });
        if dark {
            options["args"]
                .as_array_mut()
                .unwrap()
                .push(json!("--force-dark-mode"));
        }
        if width < 500 {
            // A phone: headless windows are at least 500 px wide, so the
            // viewport is emulated (as a browser's device mode does).
            options["mobileEmulation"] = json!({
                "deviceMetrics": { "width": width, "height": height, "pixelRatio": 2.0, "touch": true, "mobile": true }
            });
        }
        caps.insert("goog:chromeOptions".into(), options);
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            match ClientBuilder::new(connector.clone())
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("connect to chromedriver: {e}"),
            }
        };
        Some(Browser {
            client,
            driver,
            base: base.to_owned(),
        })
    }

    async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .expect("navigate");
    }

    async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits (up to 20 s) until `script` returns something truthy.
    async fn until(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.js(script).await;
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!("") && v != json!(0);
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                let body = self.js("return document.body.innerText").await;
                panic!("timed out waiting for {what}; the page says:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for an element matching `css`.
    async fn css(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
    }

    /// Waits for a button (or link) whose text is `text`, and clicks it.
    async fn click(&self, text: &str) {
        let xpath = format!(
            "//*[(self::button or self::a) and normalize-space()='{text}' and not(@disabled)]"
        );
        let el = match self
            .client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::XPath(&xpath))
            .await
        {
            Ok(el) => el,
            Err(e) => panic!(
                "no button {text}: {e}; the page says:\n{}",
                self.text().await
            ),
        };
        el.click()
            .await
            .unwrap_or_else(|e| panic!("click {text}: {e}"));
    }

    /// Types into the field labelled `label`.
    async fn fill(&self, label: &str, text: &str) {
        let xpath = format!("//label[normalize-space()='{label}']");
        let l = self
            .client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::XPath(&xpath))
            .await
            .unwrap_or_else(|e| panic!("no field {label}: {e}"));
        let id = l.attr("for").await.unwrap().expect("label for");
        let field = self.css(&format!("[id='{id}']")).await;
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    async fn text(&self) -> String {
        self.js("return document.body.innerText")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn wait_text(&self, text: &str) {
        let script = format!(
            "return document.body.innerText.includes({})",
            serde_json::to_string(text).unwrap()
        );
        self.until(&format!("the text {text:?}"), &script).await;
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        let dir = if std::env::var("ORCHESTRA_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots")
        } else {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/console-screenshots")
        };
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    async fn sign_in(&self, email: &str) {
        self.goto("/").await;
        self.fill("Email", email).await;
        self.fill("Password", PASSWORD).await;
        self.click("Sign in").await;
        self.css("nav.sidebar").await;
    }

    /// Runs axe-core on the page: the serious and critical violations.
    async fn accessibility_violations(&self) -> Vec<Value> {
        let axe = include_str!("../fixtures/console/axe.min.js");
        self.js(&format!("{axe}\nreturn true;")).await;
        let result = self
            .client
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, { resultTypes: ['violations'] })
                    .then(r => done(r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')
                        .map(v => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 3).map(n => n.target) }))))
                    .catch(e => done([{ id: 'axe-error', help: String(e) }]));",
                vec![],
            )
            .await
            .expect("axe runs");
        result.as_array().cloned().unwrap_or_default()
    }
}

async fn app() -> TestApp {
    spawn_app_with(Backend::Sqlite, |config| {
        with_vendor(config);
    })
    .await
    .expect("SQLite app")
}

/// An agent of `session` that may call the calculator and the text tools.
async fn agent_with(app: &TestApp, session: &Session, name: &str, config: Value) -> String {
    let (status, body) = app
        .post(
            "/api/v1/agents",
            &session.token,
            json!({
                "name": name,
                "instructions": "Be helpful.",
                "model": { "provider": "openai", "model": "gpt-4o-mini" },
                "tools": ["calculator__evaluate", "text__regex_replace"],
                "config": config,
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// Opens a new conversation with `agent` in the browser and sends `text`.
async fn chat(b: &Browser, app: &TestApp, session: &Session, agent: &str, text: &str) -> String {
    let id = app.conversation(session, agent).await;
    b.goto(&format!("/chat/{id}")).await;
    let input = b.css("#composer-input").await;
    input.send_keys(text).await.unwrap();
    input.send_keys("\u{E007}").await.unwrap(); // Enter sends
    id
}

async fn last_run(app: &TestApp, session: &Session, conversation: &str) -> Value {
    let (_, runs) = app
        .get(
            &format!("/api/v1/conversations/{conversation}/runs"),
            &session.token,
        )
        .await;
    runs["items"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_first_run_creates_the_admin_and_the_session_survives_a_reload() {
    let _one = BROWSER_LOCK.lock().await;
    let app = app().await;
    let Some(b) = Browser::open(&app.base, 1280, 860).await else {
        return;
    };
    b.goto("/").await;
    b.wait_text("Create the admin account").await;
    b.screenshot("first-run").await;
    b.fill("Name (optional)", "Ada").await;
    b.fill("Email", "ada@example.com").await;
    b.fill("Password", PASSWORD).await;
    b.click("Create account").await;
    b.css("nav.sidebar").await;
    b.wait_text("Admin").await;

    // Nothing of the session is in the page's reach: no token in storage,
    // the cookie is HttpOnly.
    let exposed = b
        .js("return [Object.keys(localStorage).length, Object.keys(sessionStorage).length, document.cookie]")
        .await;
    assert_eq!(exposed, json!([0, 0, ""]));

    b.client.refresh().await.unwrap();
    b.css("nav.sidebar").await;
    assert!(
        b.text().await.contains("Ada"),
        "still signed in after a reload"
    );

    b.click("Sign out").await;
    b.wait_text("Sign in to Orchestra").await;
    b.client.refresh().await.unwrap();
    b.wait_text("Sign in to Orchestra").await;
    b.screenshot("sign-in").await;

    // Wrong password: the API's message, and no session.
    b.fill("Email", "ada@example.com").await;
    b.fill("Password", "not the password").await;
    b.click("Sign in").await;
    b.wait_text("invalid email or password").await;

    b.fill("Password", PASSWORD).await;
    b.click("Sign in").await;
    b.css("nav.sidebar").await;
    let violations = b.accessibility_violations().await;
    assert!(violations.is_empty(), "chat page: {violations:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_builds_an_agent_and_chats_with_streaming_tool_cards_and_inert_markup() {
    let _one = BROWSER_LOCK.lock().await;
    let app = app().await;
    let admin = app.register("admin@example.com").await;
    let Some(b) = Browser::open(&app.base, 1280, 860).await else {
        return;
    };
    b.sign_in("admin@example.com").await;

    // An agent with a tool, from the editor.
    b.goto("/agents/new").await;
    b.fill("Name", "Calculator helper").await;
    b.until(
        "the model list",
        "return [...document.querySelectorAll('option')].some(o => o.textContent === 'openai/gpt-4o-mini')",
    )
    .await;
    b.js("const s = [...document.querySelectorAll('select')].find(s => [...s.options].some(o => o.textContent === 'openai/gpt-4o-mini'));
          s.value = [...s.options].find(o => o.textContent === 'openai/gpt-4o-mini').value;
          s.dispatchEvent(new Event('change', { bubbles: true })); return true;")
        .await;
    b.css(".tools-picker input[type=checkbox]").await;
    b.js("const li = [...document.querySelectorAll('.tools-picker li')].find(l => l.textContent.includes('calculator__evaluate'));
          li.querySelector('input').click(); return true;")
        .await;
    // A text-only model: images are described to it instead.
    b.client
        .find(Locator::XPath(
            "//label[contains(., 'The model sees images')]/input",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.screenshot("agent-editor").await;
    b.click("Create agent").await;
    b.until(
        "the saved agent",
        "return location.pathname.startsWith('/agents/') && !location.pathname.endsWith('/new')",
    )
    .await;
    let (_, agents) = app.get("/api/v1/agents", &admin.token).await;
    let agent = &agents["items"][0];
    assert_eq!(agents["total"], 1, "{agents}");
    assert_eq!(agent["name"], "Calculator helper");
    assert_eq!(agent["tools"], json!(["calculator__evaluate"]));
    assert_eq!(agent["model"]["model"], "gpt-4o-mini");
    assert_eq!(agent["config"]["vision"], false, "{agent}");
    let agent = agent["id"].as_str().unwrap().to_owned();

    // Text appears while the run is still going (the vendor pauses 100 ms
    // between 40 words).
    let conversation = chat(&b, &app, &admin, &agent, "slow").await;
    b.until(
        "streamed text",
        "return document.querySelector('.live .md')?.textContent.includes('tick')",
    )
    .await;
    let run = last_run(&app, &admin, &conversation).await;
    assert_eq!(
        run["status"], "running",
        "text shown before the run completed"
    );
    b.screenshot("chat-streaming").await;
    b.until("the completed answer", "return !document.querySelector('.live') && document.querySelectorAll('.message.assistant .md').length === 1").await;
    let words = b.js("return document.querySelector('.message.assistant .md').textContent.trim().split(/\\s+/).length").await;
    assert_eq!(words, json!(40), "every word exactly once");
    b.wait_text("5 out tokens").await;

    // Tool cards, two parallel calls, with their results.
    chat(&b, &app, &admin, &agent, "calc").await;
    b.until("the answer", r#"return /The answers are \{"result":42(\.0)?\} and \{"result":4(\.0)?\}/.test(document.body.innerText)"#).await;
    let cards = b.js("return [...document.querySelectorAll('.tool-card')].map(c => c.querySelector('.tool-name').textContent + ' ' + c.querySelector('.badge').textContent)").await;
    assert_eq!(
        cards,
        json!(["calculator__evaluate done", "calculator__evaluate done"])
    );
    b.js("document.querySelector('.tool-head').click(); return true")
        .await;
    b.until(
        "the card's result",
        "return document.querySelector('.tool-body')?.textContent.includes('42')",
    )
    .await;
    b.screenshot("chat-tools").await;

    // Hostile markup from the model and from a tool's result runs nothing.
    let hostile = agent_with(&app, &admin, "Hostile", json!({})).await;
    chat(&b, &app, &admin, &hostile, "xss").await;
    b.wait_text("End of payloads.").await;
    let payload = crate::vendor::XSS_ANSWER.replace('"', "'");
    let call = format!(
        "call text__regex_replace {}",
        json!({ "text": payload, "pattern": "zzz", "replacement": "" })
    );
    chat(&b, &app, &admin, &hostile, &call).await;
    b.wait_text("tool said:").await;
    // Click every link the answers hold.
    b.js("document.querySelectorAll('.md a').forEach(a => { try { a.click(); } catch (e) {} }); return true").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let state = b
        .js("return { xss: window.__xss ?? null, scripts: document.querySelectorAll('.md script, .md iframe, .md svg, .md [onerror], .md [onload], .md [ontoggle]').length,
                      js_links: [...document.querySelectorAll('.md a')].filter(a => (a.getAttribute('href') || '').trim().toLowerCase().startsWith('javascript')).length,
                      remote_images: document.querySelectorAll('.md img').length, covers: document.querySelectorAll('.md .modal, .md [style]').length,
                      entity: document.body.innerText.includes(\"<script>window.__xss='entity'</script>\") }")
        .await;
    assert_eq!(
        state,
        json!({ "xss": null, "scripts": 0, "js_links": 0, "remote_images": 0, "covers": 0, "entity": true }),
        "markup stays inert and entities show as text"
    );
    let violations = b.accessibility_violations().await;
    assert!(violations.is_empty(), "chat page: {violations:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_approvals_accept_edit_reject_stop_and_resume_after_a_reload() {
    let _one = BROWSER_LOCK.lock().await;
    let app = app().await;
    let admin = app.register("admin@example.com").await;
    let careful = agent_with(
        &app,
        &admin,
        "Careful",
        json!({ "require_approval": ["calculator__evaluate", "text__regex_replace"] }),
    )
    .await;
    let Some(b) = Browser::open_with(&app.base, 1280, 860, true).await else {
        return;
    };
    b.sign_in("admin@example.com").await;

    // Accept one call, edit the other's arguments.
    chat(&b, &app, &admin, &careful, "calc").await;
    b.wait_text("The agent wants to call 2 tools").await;
    b.screenshot("chat-approval").await;
    b.js("document.querySelectorAll('.approval')[0].querySelector('button').click(); return true")
        .await;
    b.js("[...document.querySelectorAll('.approval')[1].querySelectorAll('button')].find(x => x.textContent === 'Edit arguments').click(); return true").await;
    let editor = b.css("dialog[open] textarea").await;
    editor.clear().await.unwrap();
    editor
        .send_keys(r#"{"expression": "10*10"}"#)
        .await
        .unwrap();
    b.click("Use this").await;
    b.click("Send decisions").await;
    b.until("the answer", r#"return /The answers are \{"result":42(\.0)?\} and \{"result":100(\.0)?\}/.test(document.body.innerText)"#).await;

    // Reject with a reason: the model is told.
    chat(
        &b,
        &app,
        &admin,
        &careful,
        r#"call calculator__evaluate {"expression":"1+1"}"#,
    )
    .await;
    b.wait_text("The agent wants to call a tool").await;
    b.click("Reject").await;
    b.fill("Reason (the model sees it)", "not today").await;
    b.js("document.querySelector('dialog[open] button.primary').click(); return true")
        .await;
    b.click("Send decisions").await;
    b.wait_text("tool said:").await;
    b.wait_text("not today").await;

    // Stop: the run is cancelled and says so.
    let conversation = chat(&b, &app, &admin, &careful, "slow").await;
    b.until(
        "streamed text",
        "return document.querySelector('.live .md')?.textContent.includes('tick')",
    )
    .await;
    b.click("Stop").await;
    b.wait_text("The run was stopped.").await;
    assert_eq!(
        last_run(&app, &admin, &conversation).await["status"],
        "cancelled"
    );

    // Closing the page mid-run and coming back: the run goes on, and its
    // text shows once, complete (events resume where the page left them).
    let conversation = chat(&b, &app, &admin, &careful, "slow").await;
    b.until(
        "streamed text",
        "return document.querySelector('.live .md')?.textContent.includes('tick')",
    )
    .await;
    b.goto("/account").await;
    b.goto(&format!("/chat/{conversation}")).await;
    b.until("the completed answer", "return !document.querySelector('.live') && document.querySelectorAll('.message.assistant .md').length === 1").await;
    let words = b.js("return document.querySelector('.message.assistant .md').textContent.trim().split(/\\s+/).length").await;
    assert_eq!(words, json!(40));
    assert_eq!(
        last_run(&app, &admin, &conversation).await["status"],
        "completed"
    );

    // A dropped event stream: the page's fetch of the events is cut after a
    // few chunks; the console reconnects with the last event it saw.
    let id = app.conversation(&admin, &careful).await;
    b.goto(&format!("/chat/{id}")).await;
    let input = b.css("#composer-input").await;
    b.js(r#"window.__asked = []; const real = window.fetch;
        window.fetch = async (url, options) => {
          const response = await real(url, options);
          if (!String(url).includes('/events')) return response;
          window.__asked.push((options.headers || {})['Last-Event-ID']);
          if (window.__asked.length > 1) return response;
          const reader = response.body.getReader();
          let chunks = 0;
          const cut = new ReadableStream({ async pull(c) {
            const { value, done } = await reader.read();
            if (done || ++chunks > 6) { reader.cancel(); c.error(new TypeError('network error')); return; }
            c.enqueue(value);
          } });
          return new Response(cut, { status: response.status, headers: response.headers });
        }; return true"#).await;
    input.send_keys("slow").await.unwrap();
    input.send_keys("\u{E007}").await.unwrap();
    b.until("the completed answer", "return !document.querySelector('.live') && document.querySelectorAll('.message.assistant .md').length === 1").await;
    let words = b.js("return document.querySelector('.message.assistant .md').textContent.trim().split(/\\s+/).length").await;
    assert_eq!(words, json!(40), "every word once after the resume");
    let asked = b.js("return window.__asked").await;
    let asked: Vec<i64> = asked
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        asked.len() >= 2 && asked[0] == 0 && asked[1] > 0,
        "resumed after the last event seen: {asked:?}"
    );

    b.goto("/usage").await;
    b.wait_text("Per model").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    b.screenshot("usage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_admin_pages_plugins_mcp_keys_and_a_viewer_without_write_controls() {
    let _one = BROWSER_LOCK.lock().await;
    let app = app().await;
    let admin = app.register("admin@example.com").await;
    let viewer = app.add_user(&admin, "viewer@example.com", "viewer").await;
    let agent = agent_with(&app, &admin, "Shared", json!({})).await;
    let Some(b) = Browser::open(&app.base, 1280, 860).await else {
        return;
    };
    b.sign_in("admin@example.com").await;

    // A concurrent change to an agent open in the editor: shown as such,
    // with a way to reload it.
    b.goto(&format!("/agents/{agent}")).await;
    b.css("textarea.instructions").await;
    let (status, _) = app
        .patch(
            &format!("/api/v1/agents/{agent}"),
            &admin.token,
            json!({ "name": "Renamed elsewhere" }),
        )
        .await;
    assert_eq!(status, 200);
    b.css("textarea.instructions")
        .await
        .send_keys(" Be brief.")
        .await
        .unwrap();
    b.click("Save").await;
    b.wait_text("Someone else changed this agent").await;
    b.click("Reload their version").await;
    b.until(
        "the other version",
        "return document.querySelector('main h1').textContent === 'Renamed elsewhere'",
    )
    .await;
    let (_, stored) = app
        .get(&format!("/api/v1/agents/{agent}"), &admin.token)
        .await;
    assert_eq!(
        stored["instructions"], "Be helpful.",
        "the stale edit was not saved"
    );

    // A provider added from the console, and its connection tested.
    let vendor_url = app.config.env_providers[0].base_url.clone();
    b.goto("/models").await;
    b.click("Add a provider").await;
    b.fill("Name", "local").await;
    b.fill("Base URL", &vendor_url).await;
    b.fill("API key", "sk-local").await;
    b.js("document.querySelector('dialog[open] button[type=submit]').click(); return true")
        .await;
    b.until("the new provider", "return !document.querySelector('dialog[open]') && [...document.querySelectorAll('.card h2')].some(h => h.textContent.startsWith('local'))").await;
    b.js("const card = [...document.querySelectorAll('.card')].find(c => c.querySelector('h2')?.textContent.startsWith('local'));
          [...card.querySelectorAll('button')].find(x => x.textContent === 'Test connection').click(); return true").await;
    b.wait_text("Reachable: 2 models: gpt-4o, gpt-4o-mini")
        .await;
    let (_, providers) = app.get("/api/v1/providers", &admin.token).await;
    let local = providers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "local")
        .unwrap()
        .clone();
    assert_eq!(
        (local["has_api_key"].clone(), local.get("api_key").is_none()),
        (json!(true), true)
    );

    // A plugin uploaded from a file.
    let wasm = crate::support::template_wasm();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("template.wasm");
    std::fs::write(&file, wasm).unwrap();
    b.goto("/tools/plugins").await;
    b.click("Install a plugin").await;
    b.css("dialog[open] input[type=file]")
        .await
        .send_keys(file.to_str().unwrap())
        .await
        .unwrap();
    b.js("document.querySelector('dialog[open] button[type=submit]').click(); return true")
        .await;
    b.until(
        "the installed plugin",
        "return !document.querySelector('dialog[open]')",
    )
    .await;
    let (_, plugins) = app.get("/api/v1/plugins", &admin.token).await;
    let installed: Vec<&str> = plugins
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["bundled"] == false)
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(installed.len(), 1, "{plugins}");
    b.wait_text(installed[0]).await;
    b.screenshot("plugins").await;

    // An MCP server that cannot start: its state and error are shown.
    b.goto("/mcp-servers").await;
    b.click("Add a server").await;
    b.fill("Name", "broken").await;
    b.fill("Command", "orchestra-no-such-program").await;
    b.js("document.querySelector('dialog[open] button[type=submit]').click(); return true")
        .await;
    b.until(
        "the server's row",
        "return document.querySelector('.mcp-table tbody tr')?.textContent.includes('broken')",
    )
    .await;
    b.js("[...document.querySelectorAll('button')].find(x => x.textContent === 'Restart').click(); return true").await;
    b.until("its failure", "return /backoff|stopped/.test(document.querySelector('.mcp-table tbody tr .badge')?.textContent || '') && document.querySelector('.mcp-table .bad')").await;
    b.screenshot("mcp-servers").await;

    // An API key: shown once, works, then revoked.
    b.goto("/account").await;
    b.fill("Name of a new key", "laptop").await;
    b.click("Create key").await;
    let key = b
        .css("[data-testid=new-api-key]")
        .await
        .text()
        .await
        .unwrap();
    assert!(key.starts_with("orc_"), "{key}");
    let (status, _) = app.get("/api/v1/users/me", &key).await;
    assert_eq!(status, 200);
    b.screenshot("account").await;
    b.click("Done").await;
    b.js("window.confirm = () => true; return true").await;
    b.click("Revoke").await;
    b.wait_text("No key yet.").await;
    let (status, _) = app.get("/api/v1/users/me", &key).await;
    assert_eq!(status, 401, "the revoked key stops working");

    for (path, name) in [
        ("/agents", "agents"),
        ("/tools", "tools"),
        ("/models", "models"),
        ("/usage", ""),
        ("/admin/users", "admin"),
        ("/admin/audit", "audit"),
        ("/admin/settings", ""),
        ("/account", ""),
        ("/mcp-servers", ""),
        ("/tools/secrets", ""),
    ] {
        b.goto(path).await;
        b.css("main h1").await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        if !name.is_empty() {
            // Pages without a name here are shown elsewhere (usage with runs).
            b.screenshot(name).await;
        }
        let violations = b.accessibility_violations().await;
        assert!(violations.is_empty(), "{path}: {violations:#?}");
    }

    // A viewer: no write control anywhere, and a forced write fails clearly.
    b.click("Sign out").await;
    b.sign_in("viewer@example.com").await;
    b.goto("/chat").await;
    b.css("input[type=search]").await;
    let text = b.text().await;
    assert!(!text.contains("New chat"), "{text}");
    b.goto("/agents").await;
    b.css("main h1").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = b.text().await;
    assert!(
        !text.contains("New agent") && !text.contains("Delete"),
        "{text}"
    );
    let forced = b
        .client
        .execute_async(
            "const done = arguments[0];
             import('/assets/lib/api.js').then(api => api.post('/api/v1/agents', { name: 'x', instructions: 'x', model: { provider: 'openai', model: 'gpt-4o-mini' } }))
               .then(() => done('written'), e => done(e.status + ' ' + e.message));",
            vec![],
        )
        .await
        .unwrap();
    assert!(forced.as_str().unwrap().starts_with("403 "), "{forced}");
    let _ = viewer;

    // The phone layout: the menu folds away, the page fits the width.
    drop(b);
    let Some(phone) = Browser::open(&app.base, 390, 844).await else {
        return;
    };
    phone.sign_in("admin@example.com").await;
    let id = app
        .conversation(&admin, &agent_with(&app, &admin, "Phone", json!({})).await)
        .await;
    phone.goto(&format!("/chat/{id}")).await;
    let input = phone.css("#composer-input").await;
    input.send_keys("calc").await.unwrap();
    input.send_keys("\u{E007}").await.unwrap();
    phone.until("the answer", r#"return /The answers are \{"result":42(\.0)?\} and \{"result":4(\.0)?\}/.test(document.body.innerText)"#).await;
    let layout = phone
        .js("return { menu: getComputedStyle(document.querySelector('.menu-button')).display !== 'none',
                      sidebar: getComputedStyle(document.querySelector('.sidebar')).display,
                      overflow: document.documentElement.scrollWidth > window.innerWidth }")
        .await;
    assert_eq!(
        layout,
        json!({ "menu": true, "sidebar": "none", "overflow": false })
    );
    phone.screenshot("phone-chat").await;
    phone
        .js("document.querySelector('.menu-button').click(); return true")
        .await;
    phone
        .until(
            "the open menu",
            "return getComputedStyle(document.querySelector('.sidebar')).display !== 'none'",
        )
        .await;
    phone.screenshot("phone-menu").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_long_conversations_are_read_in_a_window_of_pages() {
    let _one = BROWSER_LOCK.lock().await;
    let app = app().await;
    let admin = app.register("admin@example.com").await;
    let agent = agent_with(&app, &admin, "Archive", json!({})).await;
    let id = app.conversation(&admin, &agent).await;
    for i in 1..=420 {
        let (status, _) = app
            .post(
                &format!("/api/v1/conversations/{id}/messages"),
                &admin.token,
                json!({ "role": if i % 2 == 1 { "user" } else { "assistant" }, "content": format!("Message {i}") }),
            )
            .await;
        assert_eq!(status, 201);
    }
    let Some(b) = Browser::open(&app.base, 1280, 860).await else {
        return;
    };
    b.sign_in("admin@example.com").await;
    b.goto(&format!("/chat/{id}")).await;
    b.wait_text("Message 420").await;
    let shown = "return document.querySelectorAll('.message').length";
    assert_eq!(b.js(shown).await, json!(50), "the newest page first");

    // Up to the first message: never more than the window in the page.
    let mut most = 0;
    for _ in 0..40 {
        b.js("const m = document.querySelector('.messages'); m.scrollTop = 0; m.dispatchEvent(new Event('scroll')); return true").await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        most = most.max(b.js(shown).await.as_i64().unwrap());
        if b.text().await.contains("Message 1\n") {
            break;
        }
    }
    b.wait_text("Message 1\n").await;
    assert!(most <= 300, "at most 300 messages in the page, saw {most}");
    assert!(
        !b.text().await.contains("Message 420"),
        "the newest left the window"
    );

    // And back down to the newest.
    for _ in 0..40 {
        b.js("const m = document.querySelector('.messages'); m.scrollTop = m.scrollHeight; m.dispatchEvent(new Event('scroll')); return true").await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        if b.text().await.contains("Message 420") {
            break;
        }
    }
    b.wait_text("Message 420").await;
    assert!(b.js(shown).await.as_i64().unwrap() <= 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_consent_page_approves_an_mcp_client_and_the_account_page_revokes_it() {
    let _one = BROWSER_LOCK.lock().await;
    let app = app().await;
    let user = app.register("owner@example.com").await;
    // A client registers itself and sends the user's browser to authorize,
    // coming back to a loopback page (the console's own "not found").
    let redirect = format!("{}/oauth-callback", app.base);
    let (status, client) = app
        .call(
            reqwest::Method::POST,
            "/oauth/register",
            None,
            Some(
                json!({ "redirect_uris": [redirect], "client_name": "Desk Assistant",
                         "client_uri": "https://assistant.example" }),
            ),
        )
        .await;
    assert_eq!(status, 201, "{client}");
    let client_id = client["client_id"].as_str().unwrap();
    let verifier = "a-verifier-of-enough-length-0123456789-abcdefghijklmnop";
    let challenge = {
        use base64::Engine as _;
        use sha2::Digest as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(verifier.as_bytes()))
    };
    let authorize = format!(
        "/oauth/authorize?response_type=code&client_id={client_id}&redirect_uri={}&state=xyz\
         &code_challenge={challenge}&code_challenge_method=S256&scope=tools%3Aread%20tools%3Acall%20agents%3Arun",
        url::form_urlencoded::byte_serialize(redirect.as_bytes()).collect::<String>()
    );

    for (width, height, name) in [(390, 844, "consent-phone"), (1280, 860, "consent")] {
        let Some(b) = Browser::open(&app.base, width, height).await else {
            return;
        };
        // Not signed in: the sign-in page first, then the request.
        b.goto(&authorize).await;
        b.fill("Email", "owner@example.com").await;
        b.fill("Password", PASSWORD).await;
        b.click("Sign in").await;
        b.wait_text("Desk Assistant wants to use Orchestra as you")
            .await;
        assert!(b.text().await.contains("cannot verify the name"));
        let shown = b
            .css("[data-testid=consent-redirect]")
            .await
            .text()
            .await
            .unwrap();
        assert_eq!(shown, app.base.trim_start_matches("http://"));
        b.screenshot(name).await;
        if width < 500 {
            let overflow = b
                .js("return document.documentElement.scrollWidth > window.innerWidth")
                .await;
            assert_eq!(overflow, json!(false), "no horizontal scrolling on a phone");
            // Deny on the phone: back to the client with access_denied.
            b.click("Deny").await;
            b.until(
                "the redirect",
                "return location.pathname === '/oauth-callback' && location.search",
            )
            .await;
            let url = b.js("return location.href").await;
            assert!(
                url.as_str().unwrap().contains("error=access_denied"),
                "{url}"
            );
            continue;
        }
        let violations = b.accessibility_violations().await;
        assert!(violations.is_empty(), "consent page: {violations:?}");
        // Grant less than asked: no agents.
        b.css("input[name='agents:run']")
            .await
            .click()
            .await
            .unwrap();
        b.click("Approve").await;
        let url = b
            .until(
                "the redirect with the code",
                "return location.pathname === '/oauth-callback' && location.href",
            )
            .await;
        let back: std::collections::HashMap<String, String> =
            url::Url::parse(url.as_str().unwrap())
                .unwrap()
                .query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
        assert_eq!(back["state"], "xyz");
        let response = app
            .client
            .post(format!("{}/oauth/token", app.base))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", back["code"].as_str()),
                ("redirect_uri", redirect.as_str()),
                ("client_id", client_id),
                ("code_verifier", verifier),
            ])
            .send()
            .await
            .unwrap();
        let tokens: Value = response.json().await.unwrap();
        assert_eq!(tokens["scope"], "tools:read tools:call", "{tokens}");

        // The account page lists it; revoking it there ends its tokens.
        b.goto("/account").await;
        b.wait_text("Desk Assistant").await;
        b.screenshot("account-connected-apps").await;
        b.js("window.confirm = () => true; return true").await;
        b.css("button[aria-label='Revoke Desk Assistant']")
            .await
            .click()
            .await
            .unwrap();
        b.wait_text("No application yet").await;
        let (status, _) = app
            .call(
                reqwest::Method::POST,
                "/mcp",
                Some(tokens["access_token"].as_str().unwrap()),
                Some(json!({ "jsonrpc": "2.0", "id": 1, "method": "ping" })),
            )
            .await;
        assert_eq!(status, 401);
    }
    let (_, grants) = app.get("/api/v1/oauth/grants", &user.token).await;
    assert_eq!(grants, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_connects_an_oauth_protected_mcp_server_in_one_click() {
    let _one = BROWSER_LOCK.lock().await;
    let Some(python) = crate::mcp::python() else {
        return;
    };
    let app = spawn_app_with(Backend::Sqlite, |config| {
        with_vendor(config);
        // The provider listens on loopback, which users' endpoints may
        // reach only where the operator allows it.
        config.egress.allow_private_user_endpoints = true;
    })
    .await
    .unwrap();
    let admin = app.register("admin@example.com").await;
    let user = app.add_user(&admin, "user@example.com", "user").await;
    let (_provider, port) = crate::mcp::oauth_fixture(&python, 3600).await;
    let Some(b) = Browser::open(&app.base, 1280, 860).await else {
        return;
    };
    b.sign_in("user@example.com").await;
    b.goto("/mcp-servers").await;
    b.click("Add a server").await;
    b.fill("Name", "files").await;
    b.fill("URL", &format!("http://127.0.0.1:{port}/mcp")).await;
    b.client
        .find(Locator::XPath(
            "//label[contains(., 'Sign in with OAuth')]/input",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.click("Add").await;
    b.wait_text("not signed in").await;
    // One click: to the provider, which approves, and back.
    b.css("button[aria-label='Connect files']")
        .await
        .click()
        .await
        .unwrap();
    b.wait_text("Connected files").await;
    b.until(
        "the signed-in badge",
        "return document.querySelector('[data-testid=oauth-state]')?.textContent === 'signed in'",
    )
    .await;
    b.screenshot("mcp-oauth-connected").await;
    drop(b);
    let Some(phone) = Browser::open(&app.base, 390, 844).await else {
        return;
    };
    phone.sign_in("user@example.com").await;
    phone.goto("/mcp-servers").await;
    phone.wait_text("signed in").await;
    let overflow = phone
        .js("return document.documentElement.scrollWidth > window.innerWidth")
        .await;
    assert_eq!(overflow, json!(false), "no horizontal scrolling on a phone");
    phone.screenshot("mcp-oauth-connected-phone").await;
    let (status, result) = app
        .post(
            "/api/v1/tools/files__whoami/invoke",
            &user.token,
            json!({ "arguments": {} }),
        )
        .await;
    assert_eq!(status, 200, "{result}");
    assert!(result["result"].to_string().contains("alice"), "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_answers_a_question_an_mcp_server_asks_during_a_run() {
    let _one = BROWSER_LOCK.lock().await;
    let Some(python) = crate::mcp::python() else {
        return;
    };
    let app = app().await;
    let admin = app.register("admin@example.com").await;
    let (status, server) = app
        .post(
            "/api/v1/mcp-servers",
            &admin.token,
            crate::mcp::stdio_server(&python, "diner"),
        )
        .await;
    assert_eq!(status, 201, "{server}");
    let (status, agent) = app
        .post(
            "/api/v1/agents",
            &admin.token,
            json!({ "name": "Host", "instructions": "Book tables.",
                    "model": { "provider": "openai", "model": "gpt-4o-mini" },
                    "tools": ["diner__book"] }),
        )
        .await;
    assert_eq!(status, 201, "{agent}");
    let agent = agent["id"].as_str().unwrap().to_owned();
    let Some(b) = Browser::open(&app.base, 1280, 860).await else {
        return;
    };
    b.sign_in("admin@example.com").await;
    let conversation = chat(
        &b,
        &app,
        &admin,
        &agent,
        r#"call diner__book {"place":"Chez Anna"}"#,
    )
    .await;
    b.wait_text("How many seats at Chez Anna?").await;
    b.wait_text("waiting for your answer").await;
    b.screenshot("chat-question").await;
    // Out of range: the server's bounds hold the form back.
    b.fill("Seats *", "12").await;
    b.click("Send").await;
    let overflow = b
        .js("return document.querySelector('.question input[type=number]').validity.rangeOverflow")
        .await;
    assert_eq!(overflow, json!(true));
    assert_eq!(
        last_run(&app, &admin, &conversation).await["status"],
        "requires_action"
    );
    b.fill("Seats *", "4").await;
    b.client
        .find(Locator::XPath("//label[contains(., 'Window')]/input"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.click("Send").await;
    b.wait_text("booked 4 seats at Chez Anna (window: True")
        .await;
    assert_eq!(
        last_run(&app, &admin, &conversation).await["status"],
        "completed"
    );
    let violations = b.accessibility_violations().await;
    assert!(violations.is_empty(), "question form: {violations:#?}");
    drop(b);

    // On a phone, the form fits the width.
    let Some(phone) = Browser::open(&app.base, 390, 844).await else {
        return;
    };
    phone.sign_in("admin@example.com").await;
    chat(
        &phone,
        &app,
        &admin,
        &agent,
        r#"call diner__book {"place":"Da Mario"}"#,
    )
    .await;
    phone.wait_text("How many seats at Da Mario?").await;
    let overflow = phone
        .js("return document.documentElement.scrollWidth > window.innerWidth")
        .await;
    assert_eq!(overflow, json!(false), "no horizontal scrolling on a phone");
    phone.screenshot("chat-question-phone").await;
    phone.click("Decline").await;
    phone.wait_text("not booked: the user chose decline").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_users_connect_their_own_account_to_a_server_wide_server() {
    let _one = BROWSER_LOCK.lock().await;
    let Some(python) = crate::mcp::python() else {
        return;
    };
    let app = app().await;
    let admin = app.register("admin@example.com").await;
    let user = app.add_user(&admin, "user@example.com", "user").await;
    let (_provider, port) = crate::mcp::oauth_fixture(&python, 3600).await;
    let (status, server) = app
        .post(
            "/api/v1/mcp-servers",
            &admin.token,
            json!({ "name": "drive", "transport": "http", "url": format!("http://127.0.0.1:{port}/mcp"),
                    "oauth": true, "oauth_per_user": true }),
        )
        .await;
    assert_eq!(status, 201, "{server}");
    let Some(b) = Browser::open(&app.base, 1280, 860).await else {
        return;
    };
    b.sign_in("user@example.com").await;
    b.goto("/mcp-servers").await;
    b.wait_text("each user signs in").await;
    b.css("button[aria-label='Connect drive']")
        .await
        .click()
        .await
        .unwrap();
    b.wait_text("Connected drive").await;
    b.until(
        "the signed-in badge",
        "return document.querySelector('[data-testid=oauth-state]')?.textContent === 'signed in'",
    )
    .await;
    b.css("button[aria-label='Sign out of drive']").await;
    b.screenshot("mcp-own-account").await;
    let (status, result) = app
        .post(
            "/api/v1/tools/drive__whoami/invoke",
            &user.token,
            json!({ "arguments": {} }),
        )
        .await;
    assert_eq!(status, 200, "{result}");
    // The admin has not connected theirs.
    let (_, theirs) = app
        .get(
            &format!("/api/v1/mcp-servers/{}", server["id"].as_str().unwrap()),
            &admin.token,
        )
        .await;
    assert_eq!(
        theirs["oauth_connection"]["state"], "not_connected",
        "{theirs}"
    );
    drop(b);
    let Some(phone) = Browser::open(&app.base, 390, 844).await else {
        return;
    };
    phone.sign_in("user@example.com").await;
    phone.goto("/mcp-servers").await;
    phone.wait_text("signed in").await;
    let overflow = phone
        .js("return document.documentElement.scrollWidth > window.innerWidth")
        .await;
    assert_eq!(overflow, json!(false), "no horizontal scrolling on a phone");
    phone.screenshot("mcp-own-account-phone").await;
    phone
        .css("button[aria-label='Sign out of drive']")
        .await
        .click()
        .await
        .unwrap();
    phone.wait_text("not signed in").await;
}
