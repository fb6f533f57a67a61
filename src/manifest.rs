//! `evoke.toml`: functions and triggers as code.
//!
//! ```toml
//! [functions.hello]
//! code = "examples/hello.wasm"   # relative to the manifest
//! memory = "64Mi"
//! timeout = "5s"
//!
//! [stores.local]                 # an S3-compatible object store
//! endpoint = "http://127.0.0.1:9000"
//! access_key_env = "S3_ACCESS_KEY"  # credentials by variable name
//! secret_key_env = "S3_SECRET_KEY"
//!
//! [connections.rabbit]           # a broker triggers and destinations name
//! url_env = "RABBIT_URL"          # secrets by variable name
//!
//! [triggers.tick]
//! function = "hello"
//! kind = "cron"
//! schedule = "*/2 * * * * *"
//! timezone = "Asia/Shanghai"
//! ```
//!
//! Parsing reports every problem at once, each with its path
//! (`triggers.tick.schedule: ...`); a manifest with any problem is applied
//! not at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use evoke_connectors::connection::ConnectionConfig;
use evoke_connectors::store::StoreConfig;
use evoke_connectors::trigger::{TriggerSpec, check_name};
use serde_json::Value;

use crate::registry::{FieldError, FunctionName, FunctionSpec};

/// One function of a manifest, with its code read from disk.
#[derive(Debug, Clone)]
pub struct ManifestFunction {
    pub code_path: PathBuf,
    pub code: Vec<u8>,
    pub spec: FunctionSpec,
}

#[derive(Debug, Clone, Default)]
pub struct Manifest {
    pub functions: BTreeMap<String, ManifestFunction>,
    pub triggers: BTreeMap<String, TriggerSpec>,
    pub stores: BTreeMap<String, StoreConfig>,
    pub connections: BTreeMap<String, ConnectionConfig>,
}

/// The largest code file a manifest may name (the server's default limit).
pub const MAX_CODE_FILE: u64 = 256 << 20;

/// Reads a code file: a regular file of at most [`MAX_CODE_FILE`] bytes (a
/// path such as `/dev/zero` is refused, not read forever).
fn read_code(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.len() > MAX_CODE_FILE {
        return Err(std::io::Error::other(format!(
            "{} bytes, more than the {MAX_CODE_FILE}-byte limit",
            meta.len()
        )));
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_CODE_FILE).read_to_end(&mut out)?;
    Ok(out)
}

fn problem(path: String, message: impl Into<String>) -> FieldError {
    FieldError {
        field: path,
        message: message.into(),
    }
}

fn under(prefix: &str, field: &str) -> String {
    if field.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

impl Manifest {
    /// Reads and validates a manifest file.
    pub fn load(path: &Path) -> Result<Manifest, Vec<FieldError>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![problem(path.display().to_string(), format!("cannot read: {e}"))])?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Manifest::parse(&text, &base)
    }

    /// Parses manifest text; code paths are relative to `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Manifest, Vec<FieldError>> {
        Manifest::parse_with(text, base, read_code)
    }

    /// Parses manifest text, reading code with `read` (tests and fuzzing
    /// read no files).
    pub fn parse_with(
        text: &str,
        base: &Path,
        read: impl Fn(&Path) -> std::io::Result<Vec<u8>>,
    ) -> Result<Manifest, Vec<FieldError>> {
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            vec![problem(
                "evoke.toml".into(),
                format!("not valid TOML: {}", e.to_string().trim()),
            )]
        })?;
        let root = serde_json::to_value(&table).map_err(|e| vec![problem("evoke.toml".into(), e.to_string())])?;
        let mut errors = Vec::new();
        let mut manifest = Manifest::default();
        let Value::Object(root) = root else {
            return Err(vec![problem("evoke.toml".into(), "must be a table")]);
        };
        for (key, value) in &root {
            match key.as_str() {
                "functions" => manifest.read_functions(value, base, &read, &mut errors),
                "triggers" => manifest.read_triggers(value, base, &mut errors),
                "stores" => read_named(value, "stores", "store", StoreConfig::parse, &mut manifest.stores, &mut errors),
                "connections" => read_named(
                    value,
                    "connections",
                    "connection",
                    ConnectionConfig::parse,
                    &mut manifest.connections,
                    &mut errors,
                ),
                other => errors.push(problem(
                    other.to_string(),
                    "unknown section; use [functions.<name>], [triggers.<name>], [stores.<name>] and [connections.<name>]",
                )),
            }
        }
        if errors.is_empty() { Ok(manifest) } else { Err(errors) }
    }

    fn read_functions(
        &mut self,
        value: &Value,
        base: &Path,
        read: &impl Fn(&Path) -> std::io::Result<Vec<u8>>,
        errors: &mut Vec<FieldError>,
    ) {
        let Value::Object(fns) = value else {
            errors.push(problem("functions".into(), "must be a table of [functions.<name>]"));
            return;
        };
        for (name, body) in fns {
            let path = format!("functions.{name}");
            if let Err(m) = name.parse::<FunctionName>() {
                errors.push(problem(path.clone(), m));
            }
            let Value::Object(fields) = body else {
                errors.push(problem(path, "must be a table"));
                continue;
            };
            let mut fields = fields.clone();
            let code = match fields.remove("code") {
                Some(Value::String(c)) => Some(base.join(c)),
                Some(_) => {
                    errors.push(problem(under(&path, "code"), "must be the path of a .wasm file"));
                    None
                }
                None => {
                    errors.push(problem(under(&path, "code"), "is required: the path of the .wasm file"));
                    None
                }
            };
            let spec = FunctionSpec::from_json(&Value::Object(fields)).map_err(|e| {
                errors.extend(e.into_iter().map(|f| problem(under(&path, &f.field), f.message)));
            });
            let bytes = code.as_ref().and_then(|c| match read(c) {
                Ok(b) => Some(b),
                Err(e) => {
                    errors.push(problem(
                        under(&path, "code"),
                        format!("cannot read {}: {e}", c.display()),
                    ));
                    None
                }
            });
            if let (Some(code_path), Some(code), Ok(spec)) = (code, bytes, spec) {
                self.functions
                    .insert(name.clone(), ManifestFunction { code_path, code, spec });
            }
        }
    }

    fn read_triggers(&mut self, value: &Value, base: &Path, errors: &mut Vec<FieldError>) {
        let Value::Object(triggers) = value else {
            errors.push(problem("triggers".into(), "must be a table of [triggers.<name>]"));
            return;
        };
        for (name, body) in triggers {
            let path = format!("triggers.{name}");
            if let Err(m) = check_name(name) {
                errors.push(problem(path.clone(), m));
            }
            match TriggerSpec::parse(&file_paths_from(body, base)) {
                Ok(t) => {
                    self.triggers.insert(name.clone(), t);
                }
                Err(problems) => errors.extend(problems.into_iter().map(|(f, m)| problem(under(&path, &f), m))),
            }
        }
    }
}

/// A `kind = "file"` trigger with its relative `paths` and `exclude`
/// made absolute from the manifest's directory (as code paths are), so a
/// manifest can tail logs beside it; other triggers as they are.
fn file_paths_from(body: &Value, base: &Path) -> Value {
    let mut body = body.clone();
    if body.get("kind").and_then(Value::as_str) != Some("file") {
        return body;
    }
    for field in ["paths", "exclude"] {
        if let Some(Value::Array(list)) = body.get_mut(field) {
            for p in list.iter_mut() {
                if let Some(s) = p.as_str().filter(|s| !s.starts_with('/')) {
                    let joined = base.join(s);
                    let abs = std::path::absolute(&joined).unwrap_or(joined);
                    *p = Value::String(abs.display().to_string());
                }
            }
        }
    }
    body
}

/// Reads a section of named tables (`[stores.NAME]`, `[connections.NAME]`)
/// with `parse`, every problem under its path.
fn read_named<T>(
    value: &Value,
    section: &str,
    what: &str,
    parse: impl Fn(&Value) -> Result<T, Vec<(String, String)>>,
    into: &mut BTreeMap<String, T>,
    errors: &mut Vec<FieldError>,
) {
    let Value::Object(entries) = value else {
        errors.push(problem(
            section.into(),
            format!("must be a table of [{section}.<name>]"),
        ));
        return;
    };
    for (name, body) in entries {
        let path = format!("{section}.{name}");
        if !crate::registry::valid_name(name) {
            errors.push(problem(
                path.clone(),
                format!("`{name}` is not a valid {what} name: use 1-63 characters, lower-case letters, digits and `-`, starting with a letter"),
            ));
        }
        match parse(body) {
            Ok(c) => {
                into.insert(name.clone(), c);
            }
            Err(problems) => errors.extend(problems.into_iter().map(|(f, m)| problem(under(&path, &f), m))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_listed_with_its_path() {
        let text = r#"
            [functions.hello]
            code = "missing.wasm"
            memory = "lots"

            [functions.Bad]
            code = "x.wasm"

            [triggers.tick]
            function = "hello"
            kind = "cron"
            schedule = "99 * * * *"
            timezone = "Asia/Shanghai"

            [triggers.gh]
            function = "hello"
            kind = "webhook"
            auth = { scheme = "github" }

            [extra]
        "#;
        let errors = Manifest::parse(text, Path::new("/nonexistent")).unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        for p in [
            "functions.hello.code",
            "functions.hello.memory",
            "functions.Bad",
            "triggers.tick.schedule",
            "triggers.gh.auth.secret_env",
            "extra",
        ] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
    }

    #[test]
    fn a_good_manifest_parses() {
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::write(dir.path().join("f.wasm"), b"\0asm").unwrap();
        let text = r#"
            [functions.hello]
            code = "f.wasm"
            timeout = "5s"
            [triggers.tick]
            function = "hello"
            kind = "cron"
            schedule = "@every 10s"
        "#;
        let m = Manifest::parse(text, dir.path()).unwrap();
        assert_eq!(m.functions["hello"].spec.timeout, std::time::Duration::from_secs(5));
        assert_eq!(m.triggers["tick"].function, "hello");
        assert!(
            Manifest::parse("not toml [", dir.path()).unwrap_err()[0]
                .message
                .contains("TOML")
        );
    }

    #[test]
    fn relative_file_tail_paths_are_from_the_manifest() {
        let text = r#"
            [triggers.logs]
            function = "cleanse"
            kind = "file"
            paths = ["logs/*.log", "/var/log/app.log"]
            exclude = ["logs/skip.log"]
        "#;
        let m = Manifest::parse(text, Path::new("/srv/site")).unwrap();
        let spec = serde_json::to_value(&m.triggers["logs"].source).unwrap();
        assert_eq!(
            spec["paths"],
            serde_json::json!(["/srv/site/logs/*.log", "/var/log/app.log"])
        );
        assert_eq!(spec["exclude"], serde_json::json!(["/srv/site/logs/skip.log"]));
    }

    #[test]
    fn code_paths_that_are_not_regular_files_are_refused() {
        let text = "[functions.hello]\ncode = \"/dev/zero\"\n";
        let errors = Manifest::parse(text, Path::new("/")).unwrap_err();
        assert_eq!(errors[0].field, "functions.hello.code");
        assert!(
            errors[0].message.contains("not a regular file"),
            "{}",
            errors[0].message
        );
    }
}
