//! The `format` / `version` header every MoEScope JSON file starts with (selections, steering
//! specs): one check, one wording of its errors.

/// Checks that `value` carries `"format": format` and `"version": version`; the error says what
/// is wrong in words that name `what` (e.g. "selection"), for the caller to prefix with the path.
pub fn check_header(
    value: &serde_json::Value,
    format: &str,
    version: u32,
    what: &str,
) -> Result<(), String> {
    match value.get("format").and_then(|f| f.as_str()) {
        Some(f) if f == format => {}
        Some(other) => return Err(format!("format is '{other}', expected '{format}'")),
        None => return Err(format!("no \"format\": \"{format}\" tag")),
    }
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(version) => Ok(()),
        Some(v) => Err(format!(
            "{what} version {v} is not supported (this build reads version {version})"
        )),
        None => Err("no \"version\" number".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn header_errors() {
        let ok = json!({"format": "x", "version": 2});
        assert_eq!(check_header(&ok, "x", 2, "thing"), Ok(()));
        assert_eq!(
            check_header(&json!({"format": "y", "version": 2}), "x", 2, "thing"),
            Err("format is 'y', expected 'x'".into())
        );
        assert_eq!(
            check_header(&json!({"version": 2}), "x", 2, "thing"),
            Err("no \"format\": \"x\" tag".into())
        );
        assert_eq!(
            check_header(&json!({"format": "x", "version": 3}), "x", 2, "thing"),
            Err("thing version 3 is not supported (this build reads version 2)".into())
        );
        assert_eq!(
            check_header(&json!({"format": "x"}), "x", 2, "thing"),
            Err("no \"version\" number".into())
        );
    }
}
