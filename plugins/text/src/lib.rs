//! The text toolkit plugin: regex search and replace, statistics, hashing,
//! base64 and JSON formatting. Pure functions over the arguments; the regex
//! engine guarantees linear time, so no pattern can hang a call.

use base64::Engine;
use orchestra_plugin_sdk::prelude::*;
use sha2::Digest;

/// Longest pattern accepted, in bytes.
const MAX_PATTERN: usize = 1_000;

fn compile(pattern: &str, case_insensitive: bool) -> Result<regex::Regex, ToolError> {
    if pattern.len() > MAX_PATTERN {
        return Err(ToolError::InvalidArguments(format!(
            "pattern longer than {MAX_PATTERN} bytes"
        )));
    }
    regex::RegexBuilder::new(pattern)
        .case_insensitive(case_insensitive)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| ToolError::InvalidArguments(format!("invalid pattern: {e}")))
}

#[derive(Deserialize, JsonSchema)]
struct Search {
    /// The text to search.
    text: String,
    /// A regular expression (Rust `regex` syntax, no look-around).
    pattern: String,
    /// Ignore case.
    #[serde(default)]
    case_insensitive: bool,
    /// Most matches to return (default 100, at most 1000).
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Serialize, JsonSchema)]
struct Match {
    /// The matched text.
    text: String,
    /// Byte offset of the match.
    start: usize,
    /// Byte offset after the match.
    end: usize,
    /// Capture groups, by position (absent groups are null).
    groups: Vec<Option<String>>,
}

#[derive(Serialize, JsonSchema)]
struct SearchResult {
    /// The matches, in order.
    matches: Vec<Match>,
    /// Whether more matches exist than were returned.
    truncated: bool,
}

fn search(args: Search) -> Result<SearchResult, ToolError> {
    let re = compile(&args.pattern, args.case_insensitive)?;
    let limit = args.limit.unwrap_or(100).clamp(1, 1000);
    let mut matches = Vec::new();
    let mut truncated = false;
    for caps in re.captures_iter(&args.text) {
        if matches.len() == limit {
            truncated = true;
            break;
        }
        let whole = caps.get(0).expect("group 0 always matches");
        matches.push(Match {
            text: whole.as_str().to_owned(),
            start: whole.start(),
            end: whole.end(),
            groups: caps
                .iter()
                .skip(1)
                .map(|g| g.map(|m| m.as_str().to_owned()))
                .collect(),
        });
    }
    Ok(SearchResult { matches, truncated })
}

#[derive(Deserialize, JsonSchema)]
struct Replace {
    /// The text to change.
    text: String,
    /// A regular expression.
    pattern: String,
    /// The replacement; `$1` or `${name}` insert capture groups.
    replacement: String,
    /// Ignore case.
    #[serde(default)]
    case_insensitive: bool,
}

#[derive(Serialize, JsonSchema)]
struct Replaced {
    /// The changed text.
    text: String,
    /// How many matches were replaced.
    replacements: usize,
}

fn replace(args: Replace) -> Result<Replaced, ToolError> {
    let re = compile(&args.pattern, args.case_insensitive)?;
    let replacements = re.find_iter(&args.text).count();
    let text = re
        .replace_all(&args.text, args.replacement.as_str())
        .into_owned();
    Ok(Replaced { text, replacements })
}

#[derive(Deserialize, JsonSchema)]
struct Text {
    /// The text.
    text: String,
}

#[derive(Serialize, JsonSchema)]
struct Stats {
    /// Whitespace-separated words.
    words: usize,
    /// Unicode scalar values.
    characters: usize,
    /// UTF-8 bytes.
    bytes: usize,
    /// Lines.
    lines: usize,
    /// Sentences (ends of `.`, `!` or `?` followed by space or the end).
    sentences: usize,
}

fn stats(args: Text) -> Result<Stats, ToolError> {
    let t = &args.text;
    let chars: Vec<char> = t.chars().collect();
    let sentences = chars
        .iter()
        .enumerate()
        .filter(|(i, c)| {
            matches!(c, '.' | '!' | '?') && chars.get(i + 1).is_none_or(|n| n.is_whitespace())
        })
        .count();
    Ok(Stats {
        words: t.split_whitespace().count(),
        characters: chars.len(),
        bytes: t.len(),
        lines: t.lines().count(),
        sentences,
    })
}

#[derive(Deserialize, JsonSchema)]
struct Hash {
    /// The text to hash (as UTF-8).
    text: String,
}

#[derive(Serialize, JsonSchema)]
struct Hashed {
    /// SHA-256, lowercase hex.
    sha256: String,
}

fn hash(args: Hash) -> Result<Hashed, ToolError> {
    let digest = sha2::Sha256::digest(args.text.as_bytes());
    Ok(Hashed {
        sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
    })
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Direction {
    /// Text to base64.
    Encode,
    /// Base64 to text.
    Decode,
}

#[derive(Deserialize, JsonSchema)]
struct Base64 {
    /// `encode` or `decode`.
    direction: Direction,
    /// The input.
    text: String,
}

#[derive(Serialize, JsonSchema)]
struct Output {
    /// The result.
    text: String,
}

fn base64(args: Base64) -> Result<Output, ToolError> {
    let engine = base64::engine::general_purpose::STANDARD;
    let text = match args.direction {
        Direction::Encode => engine.encode(args.text.as_bytes()),
        Direction::Decode => {
            let bytes = engine
                .decode(args.text.trim())
                .map_err(|e| ToolError::InvalidArguments(format!("not base64: {e}")))?;
            String::from_utf8(bytes).map_err(|_| {
                ToolError::InvalidArguments("decodes to bytes that are not UTF-8 text".into())
            })?
        }
    };
    Ok(Output { text })
}

#[derive(Deserialize, JsonSchema)]
struct FormatJson {
    /// JSON text to reformat.
    json: String,
    /// Pretty-print with indentation (default) or minify.
    #[serde(default = "yes")]
    pretty: bool,
}

fn yes() -> bool {
    true
}

fn format_json(args: FormatJson) -> Result<Output, ToolError> {
    let value: serde_json::Value = serde_json::from_str(&args.json)
        .map_err(|e| ToolError::InvalidArguments(format!("not JSON: {e}")))?;
    let text = if args.pretty {
        serde_json::to_string_pretty(&value)
    } else {
        serde_json::to_string(&value)
    }
    .map_err(|e| ToolError::Failed(e.to_string()))?;
    Ok(Output { text })
}

fn plugin() -> Plugin {
    Plugin::new(
        "text",
        env!("CARGO_PKG_VERSION"),
        "Text utilities: regex, statistics, hashing, base64, JSON.",
    )
    .tool(
        Tool::new(
            "regex_search",
            "Finds the matches of a regular expression in a text, with capture groups.",
            search,
        )
        .read_only(),
    )
    .tool(
        Tool::new(
            "regex_replace",
            "Replaces every match of a regular expression in a text.",
            replace,
        )
        .read_only(),
    )
    .tool(
        Tool::new(
            "stats",
            "Counts the words, characters, bytes, lines and sentences of a text.",
            stats,
        )
        .read_only(),
    )
    .tool(Tool::new("sha256", "Computes the SHA-256 digest of a text.", hash).read_only())
    .tool(
        Tool::new(
            "base64",
            "Encodes text to base64 or decodes base64 to text.",
            base64,
        )
        .read_only(),
    )
    .tool(
        Tool::new(
            "format_json",
            "Pretty-prints or minifies JSON.",
            format_json,
        )
        .read_only(),
    )
}

orchestra_plugin_sdk::export!(plugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_and_replace() {
        let found = search(Search {
            text: "a1 b22 c333".into(),
            pattern: r"([a-z])(\d+)".into(),
            case_insensitive: false,
            limit: Some(2),
        })
        .unwrap();
        assert_eq!(found.matches.len(), 2);
        assert!(found.truncated);
        assert_eq!(
            found.matches[1].groups,
            vec![Some("b".to_owned()), Some("22".to_owned())]
        );
        let replaced = replace(Replace {
            text: "Hello World".into(),
            pattern: "o".into(),
            replacement: "0".into(),
            case_insensitive: false,
        })
        .unwrap();
        assert_eq!(
            (replaced.text.as_str(), replaced.replacements),
            ("Hell0 W0rld", 2)
        );
        assert!(search(Search {
            text: String::new(),
            pattern: "(".into(),
            case_insensitive: false,
            limit: None
        })
        .is_err());
    }

    #[test]
    fn stats_hash_base64_json() {
        let s = stats(Text {
            text: "One two. Three!\nFour".into(),
        })
        .unwrap();
        assert_eq!((s.words, s.lines, s.sentences), (4, 2, 2));
        assert_eq!(
            hash(Hash { text: "abc".into() }).unwrap().sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let enc = base64(Base64 {
            direction: Direction::Encode,
            text: "hi".into(),
        })
        .unwrap()
        .text;
        assert_eq!(enc, "aGk=");
        assert_eq!(
            base64(Base64 {
                direction: Direction::Decode,
                text: enc
            })
            .unwrap()
            .text,
            "hi"
        );
        assert!(base64(Base64 {
            direction: Direction::Decode,
            text: "@@".into()
        })
        .is_err());
        assert_eq!(
            format_json(FormatJson {
                json: "{ \"a\" : [1, 2] }".into(),
                pretty: false
            })
            .unwrap()
            .text,
            "{\"a\":[1,2]}"
        );
    }
}
