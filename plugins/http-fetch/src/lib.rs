//! The http-fetch plugin: GETs a URL and returns readable text. HTML is
//! rendered to plain text (links kept as references); JSON and text are
//! returned as they are. It asks for every host (`*`), so it reaches only
//! the hosts an admin grants it; redirects are followed here, one hop at a
//! time, so each hop is checked by the host against the same grants.

use orchestra_plugin_sdk::prelude::*;

/// Redirects followed at most.
const MAX_REDIRECTS: usize = 5;
/// Largest body downloaded: 4 MiB.
const MAX_BODY: usize = 4 << 20;

#[derive(Deserialize, JsonSchema)]
struct Fetch {
    /// The http(s) URL to fetch.
    url: String,
    /// At most this many characters of text are returned (default 20000).
    #[serde(default)]
    max_chars: Option<usize>,
    /// Follow redirects (default true, at most 5).
    #[serde(default)]
    follow_redirects: Option<bool>,
}

#[derive(Serialize, JsonSchema)]
struct Page {
    /// The URL the text came from, after redirects.
    url: String,
    /// HTTP status code.
    status: u16,
    /// The Content-Type of the response.
    content_type: Option<String>,
    /// The HTML title, if any.
    title: Option<String>,
    /// The readable text.
    text: String,
    /// Whether `text` was cut at `max_chars`.
    truncated: bool,
}

/// Resolves a `Location` against the URL it came from.
fn resolve(base: &str, location: &str) -> String {
    let location = location.trim();
    if location.contains("://") {
        return location.to_owned();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("https", base));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{scheme}://{rest}");
    }
    if location.starts_with('/') {
        return format!("{scheme}://{authority}{location}");
    }
    let path = &rest[authority.len()..];
    let path = path.split(['?', '#']).next().unwrap_or("");
    let dir = match path.rfind('/') {
        Some(i) => &path[..=i],
        None => "/",
    };
    format!("{scheme}://{authority}{dir}{location}")
}

fn title_of(html: &str) -> Option<String> {
    let lower = html.to_ascii_lowercase();
    let start = lower.find("<title")?;
    let open_end = start + lower[start..].find('>')? + 1;
    let close = open_end + lower[open_end..].find("</title")?;
    let title = html[open_end..close]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    (!title.is_empty()).then_some(title)
}

fn fetch(args: Fetch) -> Result<Page, ToolError> {
    let max_chars = args.max_chars.unwrap_or(20_000).clamp(100, 500_000);
    let follow = args.follow_redirects.unwrap_or(true);
    let mut url = args.url.trim().to_owned();
    let mut hops = 0;
    let response = loop {
        let response = http::Request::new("GET", &url)
            .header(
                "accept",
                "text/html, application/json;q=0.9, text/*;q=0.8, */*;q=0.5",
            )
            .header("user-agent", "Orchestra-http-fetch/0.1")
            .max_response_bytes(MAX_BODY)
            .send()
            .map_err(|e| match e {
                http::HttpError::InvalidUrl(m) => ToolError::InvalidArguments(m),
                other => ToolError::Failed(format!("{url}: {other}")),
            })?;
        let redirect = matches!(response.status, 301 | 302 | 303 | 307 | 308);
        match response.header("location") {
            Some(location) if redirect && follow => {
                hops += 1;
                if hops > MAX_REDIRECTS {
                    return Err(ToolError::Failed(format!(
                        "more than {MAX_REDIRECTS} redirects"
                    )));
                }
                url = resolve(&url, location);
                log::debug(&format!("following a redirect to {url}"));
            }
            _ => break response,
        }
    };
    let content_type = response.header("content-type").map(str::to_owned);
    let is_html = content_type
        .as_deref()
        .map(|c| c.to_ascii_lowercase().contains("html"))
        .unwrap_or_else(|| response.body.starts_with(b"<"));
    let raw = response.text();
    let (title, text) = if is_html {
        let text = html2text::config::plain_no_decorate()
            .link_footnotes(true)
            .no_table_borders()
            .string_from_read(raw.as_bytes(), 100)
            .map_err(|e| ToolError::Failed(format!("rendering the page: {e}")))?;
        (title_of(&raw), text)
    } else {
        (None, raw)
    };
    let truncated = text.chars().count() > max_chars;
    let text = if truncated {
        text.chars().take(max_chars).collect()
    } else {
        text
    };
    Ok(Page {
        url,
        status: response.status,
        content_type,
        title,
        text,
        truncated,
    })
}

fn plugin() -> Plugin {
    Plugin::new(
        "http-fetch",
        env!("CARGO_PKG_VERSION"),
        "Fetches web pages and APIs from the hosts an admin granted, as readable text",
    )
    .http_host("*")
    .tool(
        Tool::new(
            "fetch",
            "Fetches a URL (GET) and returns its readable text: HTML rendered as plain text, JSON and text as they are",
            fetch,
        )
        .read_only(),
    )
}

orchestra_plugin_sdk::export!(plugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_resolve_against_the_current_url() {
        assert_eq!(resolve("https://a.test/x/y?q", "/z"), "https://a.test/z");
        assert_eq!(resolve("https://a.test/x/y", "z"), "https://a.test/x/z");
        assert_eq!(resolve("https://a.test", "z"), "https://a.test/z");
        assert_eq!(
            resolve("http://a.test/x", "https://b.test/"),
            "https://b.test/"
        );
        assert_eq!(resolve("http://a.test/x", "//b.test/p"), "http://b.test/p");
    }

    #[test]
    fn titles_are_found_and_collapsed() {
        assert_eq!(
            title_of("<html><head><TITLE>\n Hello  world </title>").as_deref(),
            Some("Hello world")
        );
        assert_eq!(title_of("<p>no title</p>"), None);
    }
}
