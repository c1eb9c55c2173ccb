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
