//! Entry points of the fuzz targets (`fuzz/`, `scripts/fuzz`): every parser
//! that takes untrusted input, fed raw bytes. Each must return (an error is
//! fine) and never panic, overflow its stack or hang.

use serde_json::Value;

pub use crate::sandbox::fuzzing::manifest;

/// Tool arguments against a tool's JSON Schema (`{"schema": ..,
/// "arguments": ..}`), as the sandbox and the MCP bridge validate them, and
/// the schema adapted for each vendor (the `$ref`s of MCP servers' schemas
/// inlined).
pub fn tool_arguments(data: &[u8]) {
    let Ok(input) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let (Some(schema), Some(arguments)) = (input.get("schema"), input.get("arguments")) else {
        return;
    };
    if let Ok(validator) = jsonschema::validator_for(schema) {
        let _ = validator.iter_errors(arguments).count();
    }
    let _ = crate::providers::schema::for_openai(schema);
    let _ = crate::providers::schema::for_anthropic(schema);
}

/// A `Last-Event-ID` header.
pub fn last_event_id(data: &[u8]) {
    let _ = crate::runs::routes::parse_last_event_id(data);
}

/// A JSON-RPC message as an MCP client sends it to `/mcp`, and as a bridged
/// server sends it to Orchestra.
pub fn mcp_message(data: &[u8]) {
    if let Ok(message) = serde_json::from_slice::<rmcp::model::ClientJsonRpcMessage>(data) {
        let _ = serde_json::to_vec(&message);
    }
    if let Ok(message) = serde_json::from_slice::<rmcp::model::ServerJsonRpcMessage>(data) {
        let _ = serde_json::to_vec(&message);
    }
}

/// A provider's stream chunk (OpenAI's `data:` JSON, Anthropic's events by
/// name) and error body.
pub fn provider_chunk(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::providers::openai::parse_error(400, text);
        let _ = crate::providers::anthropic::parse_error(400, text);
    }
    let Ok(chunk) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let _ = crate::providers::openai::chunk_events(&chunk);
    for event in [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "error",
        "ping",
    ] {
        let _ = crate::providers::anthropic::event_events(event, &chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The corpus seeds run once as unit tests: every entry point accepts
    /// good and bad input alike.
    #[test]
    fn entry_points_take_any_bytes() {
        let seeds: [&[u8]; 6] = [
            b"",
            b"\xff\xfe",
            br##"{"schema":{"type":"object","properties":{"a":{"$ref":"#/$defs/x"}},"$defs":{"x":{"$ref":"#/$defs/x"}}},"arguments":{"a":1}}"##,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{}}}"#,
            br#"{"choices":[{"delta":{"tool_calls":[{"index":99999999999,"function":{"arguments":"{"}}]}}]}"#,
            br#"{"name":"p","version":"1","description":"","tools":[{"name":"t","description":"","input_schema":"{\"type\":\"object\"}"}],"http_hosts":["*"],"key_value":false,"secrets":[],"directories":[],"arguments":{}}"#,
        ];
        for seed in seeds {
            manifest(seed);
            tool_arguments(seed);
            last_event_id(seed);
            mcp_message(seed);
            provider_chunk(seed);
        }
    }
}
