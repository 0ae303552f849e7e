//! Writing and checking MoEScope's own files: atomic writes (a temporary file in the same
//! folder, then a rename) and the `format` / `version` header every MoEScope JSON file starts
//! with (profiles, selections, steering specs): one check, one wording of its errors.

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, then a rename, so a
/// failure never leaves a half-written file behind.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Checks that `value` carries `"format": format` and `"version": version`; the error says what
/// is wrong in words that name `what` (e.g. "selection"), for the caller to prefix with the path.
pub fn check_header(
    value: &serde_json::Value,
    format: &str,
    version: u32,
    what: &str,
) -> Result<(), String> {
    check_format_version(
        value.get("format").and_then(|f| f.as_str()),
        value.get("version").and_then(|v| v.as_u64()),
        format,
        version,
        what,
    )
}

/// The same check on a format tag and version already read (`None` where the file has none).
pub fn check_format_version(
    found_format: Option<&str>,
    found_version: Option<u64>,
    format: &str,
    version: u32,
    what: &str,
) -> Result<(), String> {
    match found_format {
        Some(f) if f == format => {}
        Some(other) => return Err(format!("format is '{other}', expected '{format}'")),
        None => return Err(format!("no \"format\": \"{format}\" tag")),
    }
    match found_version {
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
