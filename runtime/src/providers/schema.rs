//! Tool schemas adapted to what each vendor accepts. Schemas derived by
//! schemars carry `$schema`, `title` and, for nested types, `$defs` with
//! `$ref`s; some vendors and most OpenAI-compatible servers reject or ignore
//! references, so they are inlined (recursion is cut at a fixed depth).

use serde_json::{Map, Value};

/// How deep a recursive `$ref` is expanded before it becomes `{}`.
const MAX_DEPTH: usize = 8;

/// For OpenAI-compatible servers: references inlined, `$schema` dropped.
pub fn for_openai(schema: &Value) -> Value {
    object_root(inline_refs(schema))
}

/// For Anthropic: references inlined, `$schema` dropped, root an object.
pub fn for_anthropic(schema: &Value) -> Value {
    object_root(inline_refs(schema))
}

fn object_root(mut schema: Value) -> Value {
    if let Some(map) = schema.as_object_mut() {
        map.remove("$schema");
        map.remove("title");
        if !map.contains_key("type") {
            map.insert("type".into(), Value::String("object".into()));
        }
        if map.get("type") == Some(&Value::String("object".into()))
            && !map.contains_key("properties")
        {
            map.insert("properties".into(), Value::Object(Map::new()));
        }
    }
    schema
}

/// Replaces every local `$ref` (`#/$defs/X`, `#/definitions/X`) by the
/// definition it names and drops the definitions.
pub fn inline_refs(schema: &Value) -> Value {
    let mut defs = Map::new();
    for key in ["$defs", "definitions"] {
        if let Some(Value::Object(d)) = schema.get(key) {
            for (name, def) in d {
                defs.insert(format!("#/{key}/{name}"), def.clone());
            }
        }
    }
    expand(schema, &defs, 0, true)
}

fn expand(value: &Value, defs: &Map<String, Value>, depth: usize, root: bool) -> Value {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get("$ref") {
                let Some(def) = defs.get(target) else {
                    return value.clone();
                };
                if depth >= MAX_DEPTH {
                    return Value::Object(Map::new());
                }
                let mut expanded = expand(def, defs, depth + 1, false);
                // Siblings of `$ref` (a description, say) win over the definition's.
                if let Value::Object(out) = &mut expanded {
                    for (k, v) in map {
                        if k != "$ref" {
                            out.insert(k.clone(), expand(v, defs, depth, false));
                        }
                    }
                }
                return expanded;
            }
            let mut out = Map::new();
            for (k, v) in map {
                if root && (k == "$defs" || k == "definitions") {
                    continue;
                }
                out.insert(k.clone(), expand(v, defs, depth, false));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| expand(v, defs, depth, false))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_are_inlined_and_definitions_dropped() {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "Args",
            "type": "object",
            "properties": {
                "point": { "$ref": "#/$defs/Point", "description": "Where" },
                "list": { "type": "array", "items": { "$ref": "#/$defs/Point" } }
            },
            "$defs": { "Point": { "type": "object", "properties": { "x": { "type": "number" } } } }
        });
        let out = for_openai(&schema);
        assert_eq!(
            out,
            json!({
                "type": "object",
                "properties": {
                    "point": { "type": "object", "properties": { "x": { "type": "number" } }, "description": "Where" },
                    "list": { "type": "array", "items": { "type": "object", "properties": { "x": { "type": "number" } } } }
                }
            })
        );
    }

    #[test]
    fn recursion_is_cut_and_an_empty_schema_becomes_an_object() {
        let schema = json!({
            "type": "object",
            "properties": { "node": { "$ref": "#/$defs/Node" } },
            "$defs": { "Node": { "type": "object", "properties": { "next": { "$ref": "#/$defs/Node" } } } }
        });
        let out = for_anthropic(&schema);
        let mut node = &out["properties"]["node"];
        let mut depth = 0;
        while node.get("properties").is_some() {
            node = &node["properties"]["next"];
            depth += 1;
        }
        assert_eq!(depth, MAX_DEPTH);
        assert_eq!(
            for_anthropic(&json!({})),
            json!({ "type": "object", "properties": {} })
        );
    }
}
