//! Message templates of schedules and triggers (minijinja, sandboxed: no
//! file access, no includes), checked when saved and rendered with a bound
//! on output and on work.

use minijinja::{Environment, UndefinedBehavior};

use crate::error::{Error, Result};

/// Longest template, in bytes.
pub const MAX_TEMPLATE_BYTES: usize = 16 << 10;
/// Longest rendered message, in bytes.
pub const MAX_RENDERED_BYTES: usize = 256 << 10;

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // A missing field is an empty string, not an error: a webhook body
    // without the field still starts a run.
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_fuel(Some(100_000));
    env
}

/// Checks that `source` is a template (`field` names it in the error).
pub fn check(field: &str, source: &str) -> Result<()> {
    if source.len() > MAX_TEMPLATE_BYTES {
        return Err(Error::invalid_field(
            field,
            format!("at most {MAX_TEMPLATE_BYTES} bytes"),
        ));
    }
    let env = environment();
    env.template_from_str(source)
        .map(|_| ())
        .map_err(|e| Error::invalid_field(field, format!("not a valid template: {e}")))
}

/// Renders `source` with `context`; errors are a message for the firing's
/// or the delivery's record.
pub fn render(source: &str, context: &serde_json::Value) -> std::result::Result<String, String> {
    let env = environment();
    let template = env
        .template_from_str(source)
        .map_err(|e| format!("the template is invalid: {e}"))?;
    let out = template
        .render(context)
        .map_err(|e| format!("the template failed: {e}"))?;
    if out.len() > MAX_RENDERED_BYTES {
        return Err(format!(
            "the rendered message is longer than {MAX_RENDERED_BYTES} bytes"
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_fields_and_json_and_tolerates_missing_ones() {
        let out = render(
            "At {{ fired_at }}: {{ body.action }} {{ body.missing }}|{{ body | tojson }}",
            &json!({"fired_at": "2026-01-01T00:00:00Z", "body": {"action": "opened"}}),
        )
        .unwrap();
        assert_eq!(
            out,
            "At 2026-01-01T00:00:00Z: opened |{\"action\":\"opened\"}"
        );
    }

    #[test]
    fn bad_templates_and_runaway_loops_fail_cleanly() {
        assert!(check("message", "{{ unclosed").is_err());
        // No loader: an include finds nothing.
        assert!(
            check("message", "{% include 'x' %}").is_err()
                || render("{% include 'x' %}", &json!({})).is_err()
        );
        let err = render(
            "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
            &json!({}),
        )
        .unwrap_err();
        assert!(err.contains("fuel") || err.contains("longer"), "{err}");
    }
}
