//! Logging: human-readable or JSON lines, filtered by `log.level` or `RUST_LOG`.
//!
//! Log fields carry outside text (what plugins log, which models and users
//! wrote; names; error messages). One event is one line in both formats:
//! in text, control characters in every field are escaped (`\n`, `\r`,
//! `\u{1b}`), so a plugin cannot start a well-formed line of its own; JSON
//! escapes them by its nature.

use std::borrow::Cow;

use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `log.level`.
pub fn init(config: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<EnvFilter>().ok())
        .unwrap_or_else(|| EnvFilter::new(&config.level));
    let _ = subscriber(config.format, filter, std::io::stderr).try_init();
}

/// The subscriber of `format`, writing to `writer`.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .finish(),
        ),
        LogFormat::Text => Box::new(
            builder
                .fmt_fields(
                    tracing_subscriber::fmt::format::debug_fn(|writer, field, value| {
                        let text = format!("{value:?}");
                        let text = escape_controls(&text);
                        if field.name() == "message" {
                            write!(writer, "{text}")
                        } else {
                            write!(writer, "{}={text}", field.name())
                        }
                    })
                    .delimited(" "),
                )
                .finish(),
        ),
    }
}

/// `text` with control characters escaped (`\n`, `\r`, `\t`, `\u{1b}`).
fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(format: LogFormat, log: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = subscriber(format, EnvFilter::new("info"), move || writer.clone());
        tracing::subscriber::with_default(subscriber, log);
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn outside_text_cannot_forge_log_lines() {
        let forged =
            "fetched\n2026-01-01T00:00:00Z  INFO orchestra::auth: admin logged in\r\n\u{1b}[2J";
        for format in [LogFormat::Text, LogFormat::Json] {
            let out = logged(format, || {
                tracing::info!(plugin = "evil", "{forged}");
                tracing::warn!(name = %forged, error = ?forged, "a field too");
            });
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(lines.len(), 2, "{format:?}: one line per event: {out}");
            assert!(!out.contains('\r') && !out.contains("\u{1b}[2J"), "{out}");
            assert!(lines[0].contains("admin logged in"), "kept, escaped: {out}");
            if matches!(format, LogFormat::Json) {
                for line in lines {
                    let value: serde_json::Value = serde_json::from_str(line).unwrap();
                    assert!(value["message"].is_string());
                }
            } else {
                assert!(lines[0].contains(r"fetched\n2026"), "{out}");
            }
        }
    }
}
