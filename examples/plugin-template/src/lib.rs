use orchestra_plugin_sdk::prelude::*;

#[derive(Deserialize, JsonSchema)]
struct Text {
    /// The text to measure.
    text: String,
}

#[derive(Serialize, JsonSchema)]
struct Stats {
    words: usize,
    characters: usize,
    lines: usize,
}

fn stats(args: Text) -> Result<Stats, ToolError> {
    log::debug("counting");
    Ok(Stats {
        words: args.text.split_whitespace().count(),
        characters: args.text.chars().count(),
        lines: args.text.lines().count(),
    })
}

fn plugin() -> Plugin {
    Plugin::new(
        "word-stats",
        env!("CARGO_PKG_VERSION"),
        "Counts words, characters and lines",
    )
    .tool(
        Tool::new(
            "stats",
            "Counts the words, characters and lines of a text",
            stats,
        )
        .read_only(),
    )
}

orchestra_plugin_sdk::export!(plugin);
