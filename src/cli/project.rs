//! Function projects: `evoke new` writes one (Rust, Python or JavaScript,
//! with the WIT world and the language's SDK vendored so it builds on its
//! own), `evoke build` runs the language's toolchain on it and leaves
//! `NAME.wasm` in the project, ready for `evoke deploy`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::ValueEnum;

use crate::registry::spec::FunctionName;

/// The pinned toolchains `evoke build` runs (the versions CI builds with).
pub const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";
pub const COMPONENTIZE_JS: &str = "@bytecodealliance/componentize-js@0.23.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    Rust,
    Python,
    Js,
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
        })
    }
}

impl Lang {
    /// What a project of this language is recognized by.
    fn marker(self) -> &'static str {
        match self {
            Lang::Rust => "Cargo.toml",
            Lang::Python => "app.py",
            Lang::Js => "app.js",
        }
    }

    /// The memory a new project's function is deployed with: the
    /// interpreters need room (a Python instance uses about 30 MB of linear
    /// memory before it handles anything).
    fn memory(self) -> &'static str {
        match self {
            Lang::Rust => "64Mi",
            Lang::Python | Lang::Js => "128Mi",
        }
    }

    fn detect(dir: &Path) -> anyhow::Result<Lang> {
        let found: Vec<Lang> = [Lang::Rust, Lang::Python, Lang::Js]
            .into_iter()
            .filter(|l| dir.join(l.marker()).is_file())
            .collect();
        match found.as_slice() {
            [one] => Ok(*one),
            [] => bail!(
                "{} is not a function project: it has no Cargo.toml, app.py or app.js (create one with `evoke new NAME --lang rust|python|js`)",
                dir.display()
            ),
            _ => bail!(
                "{} has more than one of Cargo.toml, app.py and app.js: keep the one of your function's language",
                dir.display()
            ),
        }
    }
}

const WIT: &str = include_str!("../../wit/function.wit");
const RUST_SDK_LIB: &str = include_str!("../../sdk/src/lib.rs");
const RUST_SDK_HTTP: &str = include_str!("../../sdk/src/http.rs");
const RUST_SDK_MANIFEST: &str = include_str!("../../sdk/Cargo.toml");
const PYTHON_SDK: &str = include_str!("../../sdk/python/evoke/__init__.py");
const PYTHON_SDK_HTTP: &str = include_str!("../../sdk/python/evoke/http.py");
const JS_SDK: &str = include_str!("../../sdk/js/evoke.js");

const RUST_LIB: &str = r#"//! Greets the `name` in a JSON event: `{"name":"evoke"}` → `Hello, evoke!`.

use evoke_sdk::{Event, Function, Output};

#[derive(serde::Deserialize, Default)]
struct Input {
    name: Option<String>,
}

struct Handler;

impl Function for Handler {
    fn handle(event: Event) -> Result<Output, String> {
        let input: Input = if event.data.is_empty() { Input::default() } else { event.json()? };
        let name = input.name.unwrap_or_else(|| "world".to_string());
        evoke_sdk::info(format!("greeting {name} (attempt {})", event.attempt()));
        Ok(Output::text(format!("Hello, {name}!")))
    }
}

evoke_sdk::function!(Handler);
"#;

const PYTHON_APP: &str = r#""""Greets the `name` in a JSON event: {"name": "evoke"} -> Hello, evoke!"""

import evoke
from evoke import WitWorld  # noqa: F401 -- the entry point componentize-py looks for

# Module globals live as long as the instance: warm calls share them.
greeted = 0


@evoke.handler
def handle(event: evoke.Event):
    global greeted
    name = event.json().get("name", "world")
    greeted += 1
    evoke.log.info(f"greeting {name} (attempt {event.attempt}, greeting {greeted} of this instance)")
    return f"Hello, {name}!"
"#;

const JS_APP: &str = r#"// Greets the `name` in a JSON event: {"name": "evoke"} -> Hello, evoke!

import { handler, log } from './evoke.js';

// Module-scope state lives as long as the instance: warm calls share it.
let greeted = 0;

export const { init, handle } = handler((event) => {
  const name = event.json().name ?? 'world';
  greeted += 1;
  log.info(`greeting ${name} (attempt ${event.attempt}, greeting ${greeted} of this instance)`);
  return `Hello, ${name}!`;
});
"#;

/// `evoke new`: creates the project and says what to do next.
pub fn new_command(args: &super::NewArgs, json: bool) -> anyhow::Result<()> {
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(&args.name));
    let created = create(&args.name, args.lang, &dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&created)?);
        return Ok(());
    }
    println!("created {} ({}) in {}", created.name, created.lang, dir.display());
    for f in &created.files {
        println!("  {}", f.display());
    }
    println!(
        "\nnext:\n  evoke build {dir}\n  evoke deploy {name} {wasm} --memory {memory}\n\nor in evoke.toml:\n\n{manifest}",
        dir = dir.display(),
        name = created.name,
        wasm = created.wasm.display(),
        memory = created.lang.memory(),
        manifest = created.manifest,
    );
    Ok(())
}

/// `evoke build`: builds with progress on stderr, then says what it made.
pub fn build_command(dir: &Path, json: bool) -> anyhow::Result<()> {
    let built = build(dir, &mut |step| eprintln!("build: {step}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&built)?);
        return Ok(());
    }
    println!(
        "built {} ({}, {:.1} MB)\ndeploy it: evoke deploy {} {} --memory {}",
        built.wasm.display(),
        built.lang,
        built.bytes as f64 / 1e6,
        built.name,
        built.wasm.display(),
        built.lang.memory(),
    );
    Ok(())
}

/// What `evoke new` wrote.
#[derive(Debug, serde::Serialize)]
pub struct Created {
    pub name: String,
    pub lang: Lang,
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    /// Where `evoke build` leaves the component.
    pub wasm: PathBuf,
    /// The function's entry for an `evoke.toml` next to the project.
    pub manifest: String,
}

/// Writes a new function project `name` in `dir` (which must not exist or
/// be empty).
pub fn create(name: &str, lang: Lang, dir: &Path) -> anyhow::Result<Created> {
    let name: FunctionName = name.parse().map_err(anyhow::Error::msg)?;
    let name = name.as_str();
    if dir.exists() && dir.read_dir().map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!(
            "{} already exists and is not empty: pick another name or --dir",
            dir.display()
        );
    }
    let mut files: Vec<(&str, String)> = vec![("wit/function.wit", WIT.to_string()), ("README.md", readme(name, lang))];
    match lang {
        Lang::Rust => {
            files.push(("Cargo.toml", rust_manifest(name)));
            files.push(("src/lib.rs", RUST_LIB.to_string()));
            // A member of the project's workspace, not a root of its own.
            let sdk_manifest = RUST_SDK_MANIFEST
                .split("\n# Standalone")
                .next()
                .unwrap_or(RUST_SDK_MANIFEST);
            files.push(("evoke-sdk/Cargo.toml", sdk_manifest.to_string()));
            files.push(("evoke-sdk/src/lib.rs", RUST_SDK_LIB.to_string()));
            files.push(("evoke-sdk/src/http.rs", RUST_SDK_HTTP.to_string()));
            files.push((".gitignore", format!("/target\n/{name}.wasm\n")));
        }
        Lang::Python => {
            files.push(("app.py", PYTHON_APP.to_string()));
            files.push(("evoke/__init__.py", PYTHON_SDK.to_string()));
            files.push(("evoke/http.py", PYTHON_SDK_HTTP.to_string()));
            files.push((".gitignore", format!("__pycache__\n/{name}.wasm\n")));
        }
        Lang::Js => {
            files.push(("app.js", JS_APP.to_string()));
            files.push(("evoke.js", JS_SDK.to_string()));
            files.push((".gitignore", format!("node_modules\n/{name}.wasm\n")));
        }
    }
    let mut written = Vec::new();
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    let wasm = dir.join(format!("{name}.wasm"));
    Ok(Created {
        name: name.to_string(),
        lang,
        dir: dir.to_path_buf(),
        files: written,
        manifest: manifest_entry(name, lang, &wasm),
        wasm,
    })
}

fn manifest_entry(name: &str, lang: Lang, wasm: &Path) -> String {
    format!(
        "[functions.{name}]\ncode = \"{}\"\nmemory = \"{}\"\ntimeout = \"5s\"\n",
        wasm.display(),
        lang.memory()
    )
}

fn rust_manifest(name: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
evoke-sdk = {{ path = "evoke-sdk" }}
serde = {{ version = "1", features = ["derive"] }}

[profile.release]
opt-level = "s"
strip = true
lto = true

# A project of its own, even inside another Cargo workspace.
[workspace]
"#
    )
}

fn readme(name: &str, lang: Lang) -> String {
    let (edit, by_hand, needs) = match lang {
        Lang::Rust => (
            "src/lib.rs",
            "cargo build --release --target wasm32-wasip2".to_string(),
            "Rust and its wasm32-wasip2 target (`rustup target add wasm32-wasip2`)".to_string(),
        ),
        Lang::Python => (
            "app.py",
            format!("componentize-py -d wit -w function componentize app -o {name}.wasm"),
            format!("`pip install {COMPONENTIZE_PY}`"),
        ),
        Lang::Js => (
            "app.js",
            format!("componentize-js app.js -w wit -n function -d fetch-event -o {name}.wasm"),
            format!("Node.js and `npm install -g {COMPONENTIZE_JS}`"),
        ),
    };
    let memory = lang.memory();
    let language = match lang {
        Lang::Rust => "Rust",
        Lang::Python => "Python",
        Lang::Js => "JavaScript",
    };
    format!(
        r#"# {name}

An evoke function in {language}. Edit `{edit}`; `wit/` holds evoke's function
world and the SDK is vendored here, so the project builds on its own.

Build (needs {needs}):

    evoke build            # or by hand: {by_hand}

Deploy and try it:

    evoke deploy {name} {name}.wasm --memory {memory}
    evoke invoke {name} -d '{{"name":"evoke"}}'
    evoke logs {name}

Or add it to an `evoke.toml` and `evoke apply`:

{manifest}
See evoke's docs/functions.md for the event, outputs, logging, limits and
what a function can reach.
"#,
        manifest = manifest_entry(name, lang, Path::new(&format!("{name}.wasm")))
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>(),
    )
}

/// What `evoke build` made.
#[derive(Debug, serde::Serialize)]
pub struct Built {
    pub name: String,
    pub lang: Lang,
    pub wasm: PathBuf,
    pub bytes: u64,
}

/// Builds the project in `dir` into `dir/NAME.wasm` (NAME: the directory's
/// name), telling `progress` what it runs.
pub fn build(dir: &Path, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Built> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot open {}", dir.display()))?;
    let lang = Lang::detect(&dir)?;
    let name = project_name(&dir, lang)?;
    let wasm = dir.join(format!("{name}.wasm"));
    match lang {
        Lang::Rust => build_rust(&dir, &wasm, progress)?,
        Lang::Python => {
            let tool = find_tool("componentize-py", &dir)
                .with_context(|| format!("componentize-py is not installed: `pip install {COMPONENTIZE_PY}`"))?;
            progress("componentize-py: packing CPython, the SDK and app.py into a component (about 10 s)");
            let mut cmd = Command::new(tool);
            cmd.args(["-d", "wit", "-w", "function", "componentize", "app", "-p", ".", "-o"])
                .arg(&wasm);
            run(cmd, &dir, "componentize-py")?;
        }
        Lang::Js => {
            let tool = find_tool("componentize-js", &dir).with_context(|| {
                format!("componentize-js is not installed: `npm install -g {COMPONENTIZE_JS}` (or without -g in the project)")
            })?;
            progress("componentize-js: packing StarlingMonkey, the SDK and app.js into a component (about 20 s)");
            let mut cmd = Command::new(tool);
            cmd.args([
                "app.js",
                "-w",
                "wit",
                "-n",
                "function",
                "-d",
                "http",
                "fetch-event",
                "-o",
            ])
            .arg(&wasm);
            run(cmd, &dir, "componentize-js")?;
        }
    }
    let bytes = std::fs::metadata(&wasm)
        .with_context(|| format!("the build said it succeeded but left no {}", wasm.display()))?
        .len();
    Ok(Built {
        name,
        lang,
        wasm,
        bytes,
    })
}

/// The function's name: the package name of a Rust project, else the
/// directory's name.
fn project_name(dir: &Path, lang: Lang) -> anyhow::Result<String> {
    let name = if lang == Lang::Rust {
        let text = std::fs::read_to_string(dir.join("Cargo.toml"))?;
        let manifest: toml::Table = toml::from_str(&text).context("Cargo.toml is not valid TOML")?;
        manifest
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
            .context("Cargo.toml has no [package] name")?
            .to_string()
    } else {
        dir.file_name()
            .and_then(|n| n.to_str())
            .context("the project directory has no usable name")?
            .to_string()
    };
    Ok(name)
}

fn build_rust(dir: &Path, wasm: &Path, progress: &mut dyn FnMut(&str)) -> anyhow::Result<()> {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    if let Ok(out) = installed
        && out.status.success()
        && !String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == "wasm32-wasip2")
    {
        bail!("Rust's wasm32-wasip2 target is not installed: `rustup target add wasm32-wasip2`");
    }
    progress("cargo: building for wasm32-wasip2 (release; the first build takes a minute)");
    let out = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| missing_or(e, "cargo is not installed: install Rust from https://rustup.rs"))?;
    if !out.status.success() {
        bail!("cargo build failed (its errors are above)");
    }
    let artifact = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .flat_map(|m| {
            m["filenames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|f| f.as_str().map(PathBuf::from))
        })
        .rfind(|f| f.extension().is_some_and(|e| e == "wasm"))
        .context("cargo built no .wasm: is the crate a `cdylib` (see `[lib] crate-type`)?")?;
    std::fs::copy(&artifact, wasm)
        .with_context(|| format!("cannot copy {} to {}", artifact.display(), wasm.display()))?;
    Ok(())
}

/// `tool` from the project's `node_modules/.bin`, the PATH, or where
/// evoke's scripts/setup installs the JavaScript toolchain
/// (`~/.cache/evoke-tools/js`).
fn find_tool(tool: &str, dir: &Path) -> Option<PathBuf> {
    let local = dir.join("node_modules/.bin").join(tool);
    if local.is_file() {
        return Some(local);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let tools_cache =
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/evoke-tools/js/node_modules/.bin"));
    std::env::split_paths(&path)
        .chain(tools_cache)
        .map(|p| p.join(tool))
        .find(|p| p.is_file())
}

/// Runs a toolchain with its output on our stderr (stdout is for the
/// result, which `--json` keeps parseable).
fn run(mut cmd: Command, dir: &Path, what: &str) -> anyhow::Result<()> {
    use std::os::fd::AsFd;
    let stderr = std::io::stderr().as_fd().try_clone_to_owned()?;
    let status = cmd
        .current_dir(dir)
        .stdout(stderr)
        .status()
        .with_context(|| format!("cannot run {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status}); its errors are above");
    }
    Ok(())
}

fn missing_or(e: std::io::Error, missing: &str) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        anyhow::anyhow!("{missing}")
    } else {
        anyhow::Error::from(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_projects_vendor_the_world_and_sdk_and_are_recognized() {
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            let tmp = tempfile::TempDir::new().unwrap();
            let dir = tmp.path().join("greeter");
            let created = create("greeter", lang, &dir).unwrap();
            assert_eq!(std::fs::read_to_string(dir.join("wit/function.wit")).unwrap(), WIT);
            assert_eq!(Lang::detect(&dir).unwrap(), lang);
            assert_eq!(project_name(&dir, lang).unwrap(), "greeter");
            if lang == Lang::Rust {
                let sdk = std::fs::read_to_string(dir.join("evoke-sdk/Cargo.toml")).unwrap();
                assert!(sdk.contains("wit-bindgen") && !sdk.contains("[workspace]"), "{sdk}");
            }
            assert!(created.manifest.contains("[functions.greeter]"), "{}", created.manifest);
            // Never over a project that is there.
            let again = create("greeter", lang, &dir).unwrap_err().to_string();
            assert!(again.contains("not empty"), "{again}");
        }
    }

    #[test]
    fn bad_names_and_non_projects_are_refused_with_what_to_do() {
        let tmp = tempfile::TempDir::new().unwrap();
        let e = create("Bad_Name", Lang::Js, &tmp.path().join("x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a valid function name"), "{e}");
        let e = build(tmp.path(), &mut |_| {}).unwrap_err().to_string();
        assert!(e.contains("evoke new NAME"), "{e}");
    }
}
