//! A run's events as the pieces an OpenAI answer is made of: text, the
//! client's tool calls as they stream, the end of each model answer, usage,
//! and the end of the run. Chat Completions and Responses both read runs
//! through it, streamed or not, so both tell the same story. Calls of the
//! agent's own tools run on the server and are not shown to the client.

use std::collections::HashMap;

use serde_json::Value;

use crate::conversations::model::ContentPart;
use crate::runs::model::{RunError, RunEvent, RunOptions, RunStatus};

/// A call of one of the client's tools, as the model made it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientCall {
    /// The model's id of the call.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

/// One piece of a run's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// More text of model answer number `step` (from 0).
    Text { step: usize, text: String },
    /// A call of a client tool begins (`index` counts the client's calls of
    /// this answer, from 0).
    CallStart {
        step: usize,
        index: usize,
        id: String,
        name: String,
    },
    /// More of a client call's JSON arguments.
    CallArgs {
        step: usize,
        index: usize,
        fragment: String,
    },
    /// Model answer `step` is complete: its whole text and client calls.
    StepEnd {
        step: usize,
        text: String,
        calls: Vec<ClientCall>,
    },
    /// Token counts of the run so far, and why the last answer stopped.
    Usage {
        input_tokens: i64,
        output_tokens: i64,
        finish_reason: Option<String>,
    },
    /// The run waits for a person to approve tool calls.
    Parked,
    /// The run ended.
    Done {
        status: RunStatus,
        error: Option<RunError>,
    },
}

/// Turns one run's events into [`Piece`]s.
#[derive(Debug, Default)]
pub struct Translator {
    client_tools: Vec<String>,
    step: usize,
    /// The model's call index in this answer -> the client call index, for
    /// calls of client tools.
    calls: HashMap<u64, usize>,
}

impl Translator {
    /// A translator for a run with `options`.
    pub fn new(options: Option<&RunOptions>) -> Self {
        Translator {
            client_tools: options
                .map(|o| o.client_tools.iter().map(|t| t.name.clone()).collect())
                .unwrap_or_default(),
            ..Translator::default()
        }
    }

    fn is_client(&self, name: &str) -> bool {
        self.client_tools.iter().any(|t| t == name)
    }

    /// The pieces of one event.
    pub fn push(&mut self, event: &RunEvent) -> Vec<Piece> {
        let data = &event.data;
        let mut out = Vec::new();
        match event.kind.as_str() {
            "message.delta" => {
                if let Some(text) = data.get("text").and_then(Value::as_str) {
                    if !text.is_empty() {
                        out.push(Piece::Text {
                            step: self.step,
                            text: text.to_owned(),
                        });
                    }
                }
            }
            "tool_call.delta" => {
                let Some(model_index) = data.get("index").and_then(Value::as_u64) else {
                    return out;
                };
                if let Some(name) = data.get("name").and_then(Value::as_str) {
                    if self.is_client(name) {
                        let index = self.calls.len();
                        self.calls.insert(model_index, index);
                        out.push(Piece::CallStart {
                            step: self.step,
                            index,
                            id: data
                                .get("id")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_owned(),
                            name: name.to_owned(),
                        });
                    }
                }
                let fragment = data
                    .get("arguments")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if let Some(index) = self.calls.get(&model_index) {
                    if !fragment.is_empty() {
                        out.push(Piece::CallArgs {
                            step: self.step,
                            index: *index,
                            fragment: fragment.to_owned(),
                        });
                    }
                }
            }
            "message.completed" => {
                let message = &data["message"];
                if message.get("role").and_then(Value::as_str) != Some("assistant") {
                    return out;
                }
                let parts: Vec<ContentPart> =
                    serde_json::from_value(message["content"].clone()).unwrap_or_default();
                let mut text = String::new();
                let mut calls = Vec::new();
                for part in parts {
                    match part {
                        ContentPart::Text { text: t } => text.push_str(&t),
                        ContentPart::ToolCall {
                            id,
                            name,
                            arguments,
                        } if self.is_client(&name) => calls.push(ClientCall {
                            id,
                            name,
                            arguments: arguments.to_string(),
                        }),
                        _ => {}
                    }
                }
                out.push(Piece::StepEnd {
                    step: self.step,
                    text,
                    calls,
                });
                self.step += 1;
                self.calls.clear();
            }
            "usage" => {
                let run = &data["run"];
                out.push(Piece::Usage {
                    input_tokens: run["input_tokens"].as_i64().unwrap_or(0),
                    output_tokens: run["output_tokens"].as_i64().unwrap_or(0),
                    finish_reason: data
                        .get("finish_reason")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                });
            }
            "run.status"
                if data.get("status").and_then(Value::as_str) == Some("requires_action") =>
            {
                out.push(Piece::Parked);
            }
            "done" => {
                let status = data
                    .get("status")
                    .and_then(Value::as_str)
                    .and_then(RunStatus::parse)
                    .unwrap_or(RunStatus::Failed);
                let error = data
                    .get("error")
                    .and_then(|e| serde_json::from_value(e.clone()).ok());
                out.push(Piece::Done { status, error });
            }
            _ => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ToolDefinition;
    use serde_json::json;

    fn event(seq: i64, kind: &str, data: Value) -> RunEvent {
        RunEvent {
            seq,
            kind: kind.into(),
            data,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn only_the_clients_calls_are_shown() {
        let options = RunOptions {
            client_tools: vec![ToolDefinition {
                name: "get_weather".into(),
                description: String::new(),
                parameters: json!({"type": "object"}),
            }],
            ..RunOptions::default()
        };
        let mut t = Translator::new(Some(&options));
        let mut pieces = Vec::new();
        for e in [
            event(1, "message.delta", json!({"text": "Hi"})),
            event(
                2,
                "tool_call.delta",
                json!({"index": 0, "id": "c0", "name": "time__now", "arguments": "{}"}),
            ),
            event(
                3,
                "tool_call.delta",
                json!({"index": 1, "id": "c1", "name": "get_weather", "arguments": "{\"ci"}),
            ),
            event(
                4,
                "tool_call.delta",
                json!({"index": 1, "arguments": "ty\":\"Paris\"}"}),
            ),
            event(
                5,
                "message.completed",
                json!({"message": {"role": "assistant", "content": [
                {"type": "text", "text": "Hi"},
                {"type": "tool_call", "id": "c0", "name": "time__now", "arguments": {}},
                {"type": "tool_call", "id": "c1", "name": "get_weather", "arguments": {"city": "Paris"}}]}}),
            ),
            event(6, "done", json!({"status": "completed"})),
        ] {
            pieces.extend(t.push(&e));
        }
        assert_eq!(
            pieces,
            vec![
                Piece::Text {
                    step: 0,
                    text: "Hi".into()
                },
                Piece::CallStart {
                    step: 0,
                    index: 0,
                    id: "c1".into(),
                    name: "get_weather".into()
                },
                Piece::CallArgs {
                    step: 0,
                    index: 0,
                    fragment: "{\"ci".into()
                },
                Piece::CallArgs {
                    step: 0,
                    index: 0,
                    fragment: "ty\":\"Paris\"}".into()
                },
                Piece::StepEnd {
                    step: 0,
                    text: "Hi".into(),
                    calls: vec![ClientCall {
                        id: "c1".into(),
                        name: "get_weather".into(),
                        arguments: "{\"city\":\"Paris\"}".into()
                    }]
                },
                Piece::Done {
                    status: RunStatus::Completed,
                    error: None
                },
            ]
        );
    }
}
