//! The notes plugin: a small per-user notebook on the key-value capability.
//! Each user of the server sees only their own notes (the host scopes the
//! store by plugin and calling user). A note is stored as JSON under
//! `note:<title>`; titles are unique per user.

use orchestra_plugin_sdk::prelude::*;

const PREFIX: &str = "note:";
/// Longest title, in characters.
const MAX_TITLE: usize = 200;
/// Longest body, in bytes (the host's value limit is 256 KiB).
const MAX_BODY: usize = 200_000;

#[derive(Serialize, Deserialize, JsonSchema, Clone)]
struct Note {
    /// The note's title, unique for its user.
    title: String,
    /// The text.
    body: String,
    /// Labels for grouping and search.
    #[serde(default)]
    tags: Vec<String>,
}

fn key(title: &str) -> Result<String, ToolError> {
    let title = title.trim();
    if title.is_empty() || title.chars().count() > MAX_TITLE {
        return Err(ToolError::InvalidArguments(format!(
            "a title is 1 to {MAX_TITLE} characters"
        )));
    }
    if title.chars().any(char::is_control) {
        return Err(ToolError::InvalidArguments(
            "a title may not contain control characters".to_owned(),
        ));
    }
    Ok(format!("{PREFIX}{title}"))
}

#[derive(Deserialize, JsonSchema)]
struct Save {
    /// Title of the note; saving under an existing title replaces that note.
    title: String,
    /// The text of the note.
    body: String,
    /// Optional labels.
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Serialize, JsonSchema)]
struct Saved {
    /// The title saved under.
    title: String,
    /// Whether an existing note was replaced.
    replaced: bool,
}

fn save(args: Save) -> Result<Saved, ToolError> {
    if args.body.len() > MAX_BODY {
        return Err(ToolError::InvalidArguments(format!(
            "a note's body is at most {MAX_BODY} bytes"
        )));
    }
    let key = key(&args.title)?;
    let replaced = kv::get(&key)?.is_some();
    let note = Note {
        title: args.title.trim().to_owned(),
        body: args.body,
        tags: args.tags,
    };
    kv::set_json(&key, &note)?;
    Ok(Saved {
        title: note.title,
        replaced,
    })
}

#[derive(Deserialize, JsonSchema)]
struct ByTitle {
    /// Title of the note.
    title: String,
}

fn read(args: ByTitle) -> Result<Note, ToolError> {
    kv::get_json::<Note>(&key(&args.title)?)?
        .ok_or_else(|| ToolError::Failed(format!("no note titled {:?}", args.title.trim())))
}

#[derive(Serialize, JsonSchema)]
struct Deleted {
    /// Whether a note was deleted.
    deleted: bool,
}

fn delete(args: ByTitle) -> Result<Deleted, ToolError> {
    Ok(Deleted {
        deleted: kv::delete(&key(&args.title)?)?,
    })
}

#[derive(Deserialize, JsonSchema)]
struct Search {
    /// Words to look for in titles, bodies and tags (case-insensitive;
    /// every word must appear). Empty lists every note.
    #[serde(default)]
    query: String,
    /// Only notes with this tag.
    #[serde(default)]
    tag: Option<String>,
    /// At most this many results (default 20, at most 100).
    #[serde(default)]
    limit: Option<u32>,
}

#[derive(Serialize, JsonSchema)]
struct Hit {
    /// The note's title.
    title: String,
    /// Its tags.
    tags: Vec<String>,
    /// The start of its body.
    preview: String,
}

#[derive(Serialize, JsonSchema)]
struct Hits {
    /// Matching notes, by title.
    notes: Vec<Hit>,
    /// How many notes were searched.
    searched: usize,
}

fn search(args: Search) -> Result<Hits, ToolError> {
    let limit = args.limit.unwrap_or(20).clamp(1, 100) as usize;
    let words: Vec<String> = args
        .query
        .split_whitespace()
        .map(str::to_lowercase)
        .collect();
    let keys = kv::list_keys(PREFIX, 1000)?;
    let mut notes = Vec::new();
    for key in &keys {
        let Some(note) = kv::get_json::<Note>(key)? else {
            continue;
        };
        if let Some(tag) = &args.tag {
            if !note.tags.iter().any(|t| t.eq_ignore_ascii_case(tag)) {
                continue;
            }
        }
        let haystack =
            format!("{} {} {}", note.title, note.body, note.tags.join(" ")).to_lowercase();
        if words.iter().all(|w| haystack.contains(w.as_str())) {
            notes.push(Hit {
                preview: note.body.chars().take(160).collect(),
                title: note.title,
                tags: note.tags,
            });
            if notes.len() == limit {
                break;
            }
        }
    }
    Ok(Hits {
        notes,
        searched: keys.len(),
    })
}

fn plugin() -> Plugin {
    Plugin::new(
        "notes",
        env!("CARGO_PKG_VERSION"),
        "A private notebook for each user: save, read, search and delete notes",
    )
    .key_value()
    .tool(
        Tool::new(
            "save",
            "Saves a note under a title (replacing any note with that title)",
            save,
        )
        .idempotent()
        .destructive(),
    )
    .tool(Tool::new("read", "Reads the note with this title", read).read_only())
    .tool(
        Tool::new(
            "search",
            "Finds notes whose title, body or tags contain every word of the query",
            search,
        )
        .read_only(),
    )
    .tool(
        Tool::new("delete", "Deletes the note with this title", delete)
            .idempotent()
            .destructive(),
    )
}

orchestra_plugin_sdk::export!(plugin);
