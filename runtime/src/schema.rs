//! Helpers shared by the request schemas of every domain.

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// For `Option<Option<T>>` fields with `#[serde(default, deserialize_with = "present")]`:
/// tells a field sent as `null` (`Some(None)`) from a field left out (`None`).
pub fn present<'de, D, T>(deserializer: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// The first character of `text` that changes how it reads without being
/// seen: bidirectional overrides, embeddings and isolates (which can make
/// `gpt-4 Helper` display as something else), and zero-width characters
/// (which make two names look alike). Names that other people see must
/// not contain them.
pub fn hidden_char(text: &str) -> Option<char> {
    text.chars().find(|c| {
        matches!(
            *c,
            '\u{061C}' // Arabic letter mark
                | '\u{180E}' // Mongolian vowel separator
                | '\u{200B}'..='\u{200F}' // zero-width space, (non-)joiner, LRM, RLM
                | '\u{202A}'..='\u{202E}' // embeddings and overrides
                | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
                | '\u{2066}'..='\u{2069}' // isolates
                | '\u{FEFF}' // zero-width no-break space
        )
    })
}

/// 400 naming `field` when `text` holds a [`hidden_char`].
pub fn check_visible(field: &str, text: &str) -> Result<()> {
    match hidden_char(text) {
        Some(c) => Err(Error::invalid_field(
            field,
            format!(
                "must not contain invisible or direction-changing characters (U+{:04X})",
                c as u32
            ),
        )),
        None => Ok(()),
    }
}

/// A label of one's own (a schedule's or a trigger's name), trimmed: 1 to
/// 200 characters, no control or invisible characters; 400 naming `name`
/// otherwise.
pub fn label(raw: &str) -> Result<String> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(Error::invalid_field(
            "name",
            "1 to 200 characters, no control characters",
        ));
    }
    check_visible("name", name)?;
    Ok(name.to_owned())
}

/// Fails with 400 naming `field` when `object` serialises to more than `max` bytes.
pub fn check_object_size(field: &str, object: &Map<String, Value>, max: usize) -> Result<()> {
    let size = serde_json::to_vec(object)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > max {
        return Err(Error::invalid_field(
            field,
            format!("must serialise to at most {max} bytes"),
        ));
    }
    Ok(())
}
