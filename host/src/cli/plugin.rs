//! `tidegate plugin new` and `tidegate plugin check`: start a plugin crate that builds and
//! tests on its own, outside this repository; and say, before a gateway refuses it,
//! whether a component loads, what it declares and what it costs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::{Config, PluginConfig, PluginRuntimeConfig};
use crate::plugins::bindings::tidegate::plugin::types::Hooks;
use crate::plugins::chain::LoadedPlugin;
use crate::plugins::engine::{self, PluginEngine};
use crate::plugins::services::HostServices;

/// The template's source, as it is in `examples/plugin-template/` (its unit tests included).
const TEMPLATE_LIB: &str = include_str!("../../../examples/plugin-template/src/lib.rs");
/// The template's manifest: its dependencies are the scaffold's.
const TEMPLATE_MANIFEST: &str = include_str!("../../../examples/plugin-template/Cargo.toml");
/// The workspace manifest: its `[profile.plugin]` becomes the scaffold's release profile.
const WORKSPACE_MANIFEST: &str = include_str!("../../../Cargo.toml");
/// The workspace's cargo configuration: the WebAssembly target's flags (SIMD).
const CARGO_CONFIG: &str = include_str!("../../../.cargo/config.toml");
/// Where the SDK was when this binary was built.
const BUILT_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-sdk");

/// Where the scaffold's crate finds the SDK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sdk {
    /// A directory holding `plugin-sdk/` (absolute).
    Path(PathBuf),
    /// A git repository holding it (cargo finds the crate in it).
    Git(String),
}

impl Sdk {
    /// The SDK next to the sources this binary was built from, if it is still there.
    pub fn built_in() -> Option<Sdk> {
        let path = Path::new(BUILT_SDK).canonicalize().ok()?;
        is_sdk(&path).then_some(Sdk::Path(path))
    }

    /// `--sdk PATH`: a copy of `plugin-sdk/`, checked.
    pub fn at(path: &Path) -> anyhow::Result<Sdk> {
        let path = path
            .canonicalize()
            .with_context(|| format!("--sdk {}", path.display()))?;
        anyhow::ensure!(
            is_sdk(&path),
            "--sdk {}: no Cargo.toml of tidegate-plugin-sdk there (give the plugin-sdk/ directory)",
            path.display()
        );
        Ok(Sdk::Path(path))
    }

    fn dependency(&self) -> String {
        match self {
            Sdk::Path(path) => format!("{{ path = {} }}", toml::Value::from(path_text(path))),
            Sdk::Git(url) => format!("{{ git = {} }}", toml::Value::from(url.as_str())),
        }
    }
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn is_sdk(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml"))
        .is_ok_and(|text| text.contains("name = \"tidegate-plugin-sdk\""))
}

/// The names a plugin crate called `name` gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The package: `my-filter`.
    pub package: String,
    /// The library, and the component's file stem: `my_filter`.
    pub lib: String,
    /// The `Plugin` type: `MyFilter`.
    pub type_name: String,
    /// The header the template adds at DATA: `X-My-Filter`.
    pub header: String,
}

/// Names a plugin must not take: Rust keywords, crates every build links, the crates the
/// template depends on.
const RESERVED_CRATES: &[&str] = &[
    "as",
    "async",
    "await",
    "break",
    "const",
    "continue",
    "crate",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "match",
    "mod",
    "move",
    "mut",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "type",
    "unsafe",
    "use",
    "where",
    "while",
    "abstract",
    "become",
    "box",
    "do",
    "final",
    "macro",
    "override",
    "priv",
    "typeof",
    "unsized",
    "virtual",
    "yield",
    "try",
    "std",
    "core",
    "alloc",
    "test",
    "proc_macro",
    "serde",
    "serde_json",
    "tidegate_plugin_sdk",
];

/// Type names the template's source already uses (its own and the SDK prelude's).
const TAKEN_TYPES: &[&str] = &[
    "Attachment",
    "AuthInfo",
    "AuthMethod",
    "AuthResult",
    "AuthVerdict",
    "Config",
    "ConnectInfo",
    "DeliveryInfo",
    "DeliveryStatus",
    "Deserialize",
    "DnsError",
    "Edit",
    "Envelope",
    "Harness",
    "HeloInfo",
    "Hooks",
    "Host",
    "KvError",
    "Level",
    "MailFromInfo",
    "Message",
    "Param",
    "Plugin",
    "RcptToInfo",
    "RecordType",
    "Reply",
    "Response",
    "Route",
    "SessionInfo",
    "SessionSummary",
    "TestHost",
    "TlsInfo",
    "Verdict",
];

impl Names {
    /// Checks `name` as a crate name and derives the others from it.
    pub fn new(name: &str) -> anyhow::Result<Names> {
        let valid = name.len() <= 64
            && name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        anyhow::ensure!(
            valid,
            "`{name}` is not a crate name: ASCII letters, digits, `-` and `_`, starting with a \
             letter, at most 64 characters (e.g. `my-filter`)"
        );
        let lib = name.replace('-', "_");
        anyhow::ensure!(
            !RESERVED_CRATES.contains(&lib.to_ascii_lowercase().as_str()),
            "`{name}` cannot be a plugin's crate name (a Rust keyword or a crate it depends on)"
        );
        let words: Vec<&str> = lib.split('_').filter(|w| !w.is_empty()).collect();
        let capitalised = |w: &str| {
            let mut chars = w.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        };
        let mut type_name: String = words.iter().map(|w| capitalised(w)).collect();
        if TAKEN_TYPES.contains(&type_name.as_str()) {
            type_name.push_str("Plugin");
        }
        let header = std::iter::once("X".to_owned())
            .chain(words.iter().map(|w| capitalised(w)))
            .collect::<Vec<_>>()
            .join("-");
        Ok(Names {
            package: name.to_owned(),
            lib,
            type_name,
            header,
        })
    }
}

/// One file of a new plugin crate.
#[derive(Debug)]
pub struct ScaffoldFile {
    /// Relative to the crate's directory.
    pub path: &'static str,
    /// Its contents.
    pub text: String,
}

/// The files of a new plugin crate named `names`, depending on `sdk`.
pub fn scaffold(names: &Names, sdk: &Sdk) -> anyhow::Result<Vec<ScaffoldFile>> {
    Ok(vec![
        ScaffoldFile {
            path: "Cargo.toml",
            text: manifest(names, sdk)?,
        },
        ScaffoldFile {
            path: ".cargo/config.toml",
            text: CARGO_CONFIG.to_owned(),
        },
        ScaffoldFile {
            path: "src/lib.rs",
            text: source(names),
        },
        ScaffoldFile {
            path: "README.md",
            text: readme(names),
        },
        ScaffoldFile {
            path: ".gitignore",
            text: "/target\n".to_owned(),
        },
    ])
}

/// The template's source with its names replaced.
fn source(names: &Names) -> String {
    let text = TEMPLATE_LIB
        .replace("X-Plugin-Template", &names.header)
        .replace("plugin-template", &names.package)
        .replace("plugin_template", &names.lib);
    replace_word(&text, "Template", &names.type_name)
}

/// Replaces `from` where it stands as a whole identifier.
fn replace_word(text: &str, from: &str, to: &str) -> String {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(from) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + from.len()..].chars().next();
        out.push_str(&rest[..at]);
        if before.is_some_and(is_ident) || after.is_some_and(is_ident) {
            out.push_str(from);
        } else {
            out.push_str(to);
        }
        rest = &rest[at + from.len()..];
    }
    out.push_str(rest);
    out
}

/// `key = value` lines of a table, values inline.
fn table_lines(table: &toml::Table) -> String {
    table
        .iter()
        .map(|(key, value)| format!("{key} = {value}\n"))
        .collect()
}

fn manifest(names: &Names, sdk: &Sdk) -> anyhow::Result<String> {
    let template: toml::Table =
        toml::from_str(TEMPLATE_MANIFEST).context("the template's Cargo.toml")?;
    let workspace: toml::Table =
        toml::from_str(WORKSPACE_MANIFEST).context("the workspace's Cargo.toml")?;
    let section = |table: &toml::Table, key: &str| -> anyhow::Result<toml::Table> {
        table
            .get(key)
            .and_then(toml::Value::as_table)
            .cloned()
            .with_context(|| format!("the template has no [{key}]"))
    };
    let package = section(&template, "package")?;
    let edition = package
        .get("edition")
        .cloned()
        .unwrap_or_else(|| "2024".into());
    let lib = section(&template, "lib")?;
    let mut dependencies = section(&template, "dependencies")?;
    dependencies.remove("tidegate-plugin-sdk");
    let dev_dependencies = section(&template, "dev-dependencies")?;
    let mut profile = workspace
        .get("profile")
        .and_then(|p| p.get("plugin"))
        .and_then(toml::Value::as_table)
        .cloned()
        .context("the workspace has no [profile.plugin]")?;
    profile.remove("inherits");
    Ok(format!(
        "# A Tidegate plugin, made by `tidegate plugin new`. See README.md for the commands.\n\
         [package]\n\
         name = {name}\n\
         version = \"0.1.0\"\n\
         edition = {edition}\n\
         publish = false\n\
         \n\
         [lib]\n\
         # cdylib: the WebAssembly component; rlib: lets `cargo test` run the logic natively.\n\
         {lib}\
         \n\
         [dependencies]\n\
         tidegate-plugin-sdk = {sdk}\n\
         {dependencies}\
         \n\
         [dev-dependencies]\n\
         {dev_dependencies}\
         \n\
         # The component: `cargo build --release --target wasm32-wasip2` makes a small, fast one\n\
         # (what the Tidegate repository builds its own plugins with). `cargo test` is unaffected.\n\
         [profile.release]\n\
         {profile}\
         \n\
         # A crate of its own, even when made inside another workspace's directory.\n\
         [workspace]\n",
        name = toml::Value::from(names.package.as_str()),
        lib = table_lines(&lib),
        sdk = sdk.dependency(),
        dependencies = table_lines(&dependencies),
        dev_dependencies = table_lines(&dev_dependencies),
        profile = table_lines(&profile),
    ))
}

fn readme(names: &Names) -> String {
    let Names {
        package,
        lib,
        type_name,
        ..
    } = names;
    format!(
        "# {package}\n\
         \n\
         A Tidegate plugin (made by `tidegate plugin new`). The logic is in `src/lib.rs`: `{type_name}`\n\
         implements `tidegate_plugin_sdk::Plugin`; its configuration is the `Config` struct.\n\
         \n\
         ```sh\n\
         cargo test                                      # natively, no WebAssembly involved\n\
         rustup target add wasm32-wasip2                 # once\n\
         cargo build --release --target wasm32-wasip2    # the component\n\
         tidegate plugin check target/wasm32-wasip2/release/{lib}.wasm\n\
         ```\n\
         \n\
         `tidegate plugin check` loads the component as the gateway would (compile, link, `init`)\n\
         and prints its contract version, hooks, size, load times and memory; with\n\
         `--config config.json` it is initialised with that configuration (the JSON form of\n\
         `[plugin.config]`). Then, in the gateway's configuration:\n\
         \n\
         ```toml\n\
         [[plugin]]\n\
         name = \"{package}\"\n\
         path = \"/path/to/{lib}.wasm\"\n\
         [plugin.config]\n\
         refuse_local_parts = [\"noreply\"]\n\
         ```\n\
         \n\
         Rebuild and copy the new `.wasm` over the configured file: the gateway reloads it, new\n\
         sessions get the new version, and a build that does not load leaves the old one running.\n\
         \n\
         `.cargo/config.toml` turns on WebAssembly SIMD for the target (byte loops over message\n\
         text run several times faster); `Cargo.toml`'s `[profile.release]` makes the component\n\
         small and fast.\n"
    )
}

/// Writes a new plugin crate into `dir`, which must not exist or be empty.
pub fn new(name: &str, dir: &Path, sdk: &Sdk) -> anyhow::Result<Names> {
    let names = Names::new(name)?;
    if let Ok(mut entries) = std::fs::read_dir(dir) {
        anyhow::ensure!(
            entries.next().is_none(),
            "{} exists and is not empty: give a new directory with --dir",
            dir.display()
        );
    } else if dir.exists() {
        anyhow::bail!("{} exists and is not a directory", dir.display());
    }
    for file in scaffold(&names, sdk)? {
        let path = dir.join(file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, file.text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(names)
}

/// What `tidegate plugin check` found.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// The component file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// SHA-256 of its bytes.
    pub hash: String,
    /// The contract version it was built against.
    pub contract: &'static str,
    /// The hooks it declared, by their contract names.
    pub hooks: Vec<&'static str>,
    /// Compiling it (never from the cache).
    pub compile: Duration,
    /// Instantiating it and running `init`.
    pub instantiate: Duration,
    /// Its linear memory after `init`.
    pub memory: usize,
    /// The memory limit it ran under.
    pub memory_limit_mib: u64,
}

/// The hooks in `hooks`, by their names in the contract.
pub fn hook_names(hooks: Hooks) -> Vec<&'static str> {
    [
        (Hooks::CONNECT, "on-connect"),
        (Hooks::HELO, "on-helo"),
        (Hooks::AUTH, "on-auth"),
        (Hooks::MAIL_FROM, "on-mail-from"),
        (Hooks::RCPT_TO, "on-rcpt-to"),
        (Hooks::DATA, "on-data"),
        (Hooks::ROUTE, "on-route"),
        (Hooks::DELIVERY, "on-delivery"),
        (Hooks::DISCONNECT, "on-disconnect"),
    ]
    .into_iter()
    .filter(|(flag, _)| hooks.contains(*flag))
    .map(|(_, name)| name)
    .collect()
}

/// Where `plugin check` takes the plugin's settings from.
#[derive(Debug, Default)]
pub struct CheckSettings {
    /// The plugin's configuration as JSON (`--config`): replaces any `[plugin.config]`.
    pub config_json: Option<PathBuf>,
    /// A gateway configuration whose `[[plugin]]` entry gives the limits and config.
    pub gateway: Option<PathBuf>,
    /// That entry's name (needed when the file has several).
    pub name: Option<String>,
}

/// The `[[plugin]]` settings to check `file` with.
pub(crate) fn plugin_settings(
    file: &Path,
    settings: &CheckSettings,
) -> anyhow::Result<(PluginConfig, PluginRuntimeConfig)> {
    let (mut plugin, runtime) = match &settings.gateway {
        Some(path) => {
            let config = Config::load(path)?;
            let entry = match &settings.name {
                Some(name) => config.plugin_list.iter().find(|p| &p.name == name),
                None if config.plugin_list.len() == 1 => config.plugin_list.first(),
                None => anyhow::bail!(
                    "{} has {} [[plugin]] entries: name one with --name",
                    path.display(),
                    config.plugin_list.len()
                ),
            }
            .with_context(|| {
                format!(
                    "{}: no [[plugin]] named `{}`",
                    path.display(),
                    settings.name.as_deref().unwrap_or_default()
                )
            })?
            .clone();
            (entry, config.plugins.clone())
        }
        None => {
            anyhow::ensure!(
                settings.name.is_none(),
                "--name names a [[plugin]] of the gateway configuration given with -c"
            );
            let name = file
                .file_stem()
                .map_or_else(|| "plugin".into(), |s| s.to_string_lossy().into_owned());
            // The defaults of a `[[plugin]]` table with just a name and a path.
            let plugin: PluginConfig = serde_json::from_value(serde_json::json!({
                "name": name,
                "path": file,
            }))
            .context("the default plugin settings")?;
            (plugin, PluginRuntimeConfig::default())
        }
    };
    plugin.path = file.to_owned();
    if let Some(path) = &settings.config_json {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
        plugin.config = serde_json::from_value(value).with_context(|| {
            format!(
                "{}: a plugin's configuration is a JSON object that TOML can hold (no nulls)",
                path.display()
            )
        })?;
    }
    Ok((plugin, runtime))
}

/// Loads `file` as the gateway would (its engine, linker and validation; compiled from its
/// bytes, not from a cache), runs `init`, and measures it. An error is what the gateway
/// would refuse it for.
pub async fn check(file: &Path, settings: &CheckSettings) -> anyhow::Result<CheckReport> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let size = bytes.len() as u64;
    if let Some(problem) = not_a_component(&bytes) {
        anyhow::bail!("{}: the gateway would refuse it: {problem}", file.display());
    }
    drop(bytes);
    let (plugin, runtime) = plugin_settings(file, settings)?;
    anyhow::ensure!(
        (1..=4096).contains(&plugin.memory_limit_mib),
        "memory_limit_mib must be between 1 and 4096"
    );
    let limit = usize::try_from(plugin.memory_limit_mib)
        .unwrap_or(usize::MAX)
        .saturating_mul(1024 * 1024);
    let engine: Arc<PluginEngine> =
        PluginEngine::new_uncached(&runtime, 4, engine::memory_slot(limit))
            .map_err(|e| anyhow::anyhow!("plugin engine: {e:#}"))?;
    let services = Arc::new(HostServices::new(
        Default::default(),
        Default::default(),
        Default::default(),
    ));
    let (loaded, measured) = LoadedPlugin::load_measured(&engine, &plugin, &services)
        .await
        .map_err(|e| anyhow::anyhow!("{}: the gateway would refuse it: {e}", file.display()))?;
    Ok(CheckReport {
        path: file.to_owned(),
        size,
        hash: loaded.hash.clone(),
        contract: loaded.contract,
        hooks: hook_names(loaded.hooks),
        compile: measured.compile,
        instantiate: measured.instantiate,
        memory: measured.memory,
        memory_limit_mib: plugin.memory_limit_mib,
    })
}

/// Why these bytes are plainly not a component, said more clearly than the compiler would.
fn not_a_component(bytes: &[u8]) -> Option<&'static str> {
    if !bytes.starts_with(b"\0asm") || bytes.len() < 8 {
        return Some("not a WebAssembly file");
    }
    match bytes[4..8] {
        [0x0d, 0x00, 0x01, 0x00] => None,
        [0x01, 0x00, 0x00, 0x00] => Some(
            "a core WebAssembly module, not a component: build it with \
             `--target wasm32-wasip2` (not wasm32-unknown-unknown or wasm32-wasip1)",
        ),
        // Another version of the binary format: the compiler says which.
        _ => None,
    }
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn size_text(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MiB", bytes as f64 / 1_048_576.0),
    }
}

impl CheckReport {
    /// The report for people.
    pub fn render(&self) -> String {
        let hooks = if self.hooks.is_empty() {
            "none (it will never be called)".to_owned()
        } else {
            self.hooks.join(", ")
        };
        format!(
            "{}: loads\n\
             contract     tidegate:plugin@{}\n\
             hooks        {hooks}\n\
             size         {} ({} bytes), sha256 {}\n\
             compile      {}\n\
             instantiate  {} (instantiation and init)\n\
             memory       {} after init (limit {} MiB)\n",
            self.path.display(),
            self.contract,
            size_text(self.size),
            self.size,
            &self.hash[..self.hash.len().min(12)],
            millis(self.compile),
            millis(self.instantiate),
            size_text(self.memory as u64),
            self.memory_limit_mib,
        )
    }

    /// The report as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "path": self.path,
            "size": self.size,
            "sha256": self.hash,
            "contract": self.contract,
            "hooks": self.hooks,
            "compile_ms": self.compile.as_secs_f64() * 1000.0,
            "instantiate_ms": self.instantiate.as_secs_f64() * 1000.0,
            "memory_bytes": self.memory,
            "memory_limit_mib": self.memory_limit_mib,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdk() -> Sdk {
        Sdk::built_in().expect("the SDK beside the sources")
    }

    #[test]
    fn names_are_derived_and_checked() {
        let names = Names::new("my-filter").unwrap();
        assert_eq!(names.lib, "my_filter");
        assert_eq!(names.type_name, "MyFilter");
        assert_eq!(names.header, "X-My-Filter");
        assert_eq!(Names::new("config").unwrap().type_name, "ConfigPlugin");
        for bad in [
            "",
            "1abc",
            "my filter",
            "a/b",
            "self",
            "serde",
            "tidegate-plugin-sdk",
        ] {
            assert!(Names::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_source_is_the_template_renamed() {
        let names = Names::new("spam-trap").unwrap();
        let text = source(&names);
        assert!(text.contains("pub struct SpamTrap {"));
        assert!(text.contains("Harness::<SpamTrap>"));
        assert!(text.contains("tidegate_plugin_sdk::export!(SpamTrap);"));
        assert!(text.contains("\"X-Spam-Trap\""));
        assert!(!text.contains("Template"), "{text}");
        assert!(!text.contains("plugin-template") && !text.contains("plugin_template"));
        assert!(text.contains("spam_trap.wasm"));
    }

    #[test]
    fn the_manifest_has_the_templates_dependencies_and_the_plugin_profile() {
        let names = Names::new("my-filter").unwrap();
        let text = manifest(&names, &sdk()).unwrap();
        let manifest: toml::Table = toml::from_str(&text).unwrap();
        let template: toml::Table = toml::from_str(TEMPLATE_MANIFEST).unwrap();
        assert_eq!(manifest["package"]["name"].as_str(), Some("my-filter"));
        assert!(manifest["workspace"].as_table().unwrap().is_empty());
        assert_eq!(manifest["lib"], template["lib"]);
        assert_eq!(manifest["dev-dependencies"], template["dev-dependencies"]);
        let deps = manifest["dependencies"].as_table().unwrap();
        let template_deps = template["dependencies"].as_table().unwrap();
        assert_eq!(
            deps.keys().collect::<Vec<_>>(),
            template_deps.keys().collect::<Vec<_>>()
        );
        assert_eq!(deps["serde"], template_deps["serde"]);
        let sdk_path = deps["tidegate-plugin-sdk"]["path"].as_str().unwrap();
        assert!(Path::new(sdk_path).join("wit/tidegate.wit").exists());
        let workspace: toml::Table = toml::from_str(WORKSPACE_MANIFEST).unwrap();
        let mut plugin = workspace["profile"]["plugin"].as_table().unwrap().clone();
        plugin.remove("inherits");
        assert_eq!(manifest["profile"]["release"].as_table(), Some(&plugin));
        assert_eq!(
            manifest["profile"]["release"]["panic"].as_str(),
            Some("abort")
        );

        let git = manifest_for_git();
        assert_eq!(
            git["dependencies"]["tidegate-plugin-sdk"]["git"].as_str(),
            Some("https://example.test/tidegate.git")
        );
    }

    fn manifest_for_git() -> toml::Table {
        let names = Names::new("x").unwrap();
        let sdk = Sdk::Git("https://example.test/tidegate.git".into());
        toml::from_str(&manifest(&names, &sdk).unwrap()).unwrap()
    }

    #[test]
    fn the_cargo_config_turns_on_simd_for_the_target() {
        let config: toml::Table = toml::from_str(CARGO_CONFIG).unwrap();
        let flags = config["target"]["wasm32-wasip2"]["rustflags"]
            .as_array()
            .unwrap();
        assert!(
            flags
                .iter()
                .any(|f| f.as_str() == Some("target-feature=+simd128"))
        );
    }

    #[test]
    fn new_writes_the_crate_and_refuses_a_directory_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let crate_dir = dir.path().join("my-filter");
        new("my-filter", &crate_dir, &sdk()).unwrap();
        for file in [
            "Cargo.toml",
            ".cargo/config.toml",
            "src/lib.rs",
            "README.md",
            ".gitignore",
        ] {
            assert!(crate_dir.join(file).exists(), "{file} missing");
        }
        let readme = std::fs::read_to_string(crate_dir.join("README.md")).unwrap();
        assert!(
            readme.contains("tidegate plugin check target/wasm32-wasip2/release/my_filter.wasm")
        );
        let error = new("my-filter", &crate_dir, &sdk()).unwrap_err();
        assert!(error.to_string().contains("not empty"), "{error}");
        // An empty directory is fine.
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        new("other", &empty, &sdk()).unwrap();
    }

    #[test]
    fn files_that_are_no_component_are_named_so() {
        assert_eq!(
            not_a_component(b"[package]\n"),
            Some("not a WebAssembly file")
        );
        assert!(
            not_a_component(b"\0asm\x01\0\0\0")
                .unwrap()
                .contains("core WebAssembly module")
        );
        assert_eq!(not_a_component(b"\0asm\x0d\0\x01\0"), None);
    }

    #[test]
    fn settings_come_from_defaults_json_or_the_gateway_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.wasm");
        let (plugin, _) = plugin_settings(&file, &CheckSettings::default()).unwrap();
        assert_eq!(plugin.memory_limit_mib, 64);
        assert_eq!(plugin.name, "x");
        assert!(plugin.config.is_empty());

        let json = dir.path().join("config.json");
        std::fs::write(&json, r#"{"refuse_local_parts": ["noreply"], "n": 3}"#).unwrap();
        let settings = CheckSettings {
            config_json: Some(json.clone()),
            ..Default::default()
        };
        let (plugin, _) = plugin_settings(&file, &settings).unwrap();
        assert_eq!(plugin.config["n"].as_integer(), Some(3));
        assert_eq!(
            plugin.config["refuse_local_parts"][0].as_str(),
            Some("noreply")
        );

        std::fs::write(&json, r#"{"a": null}"#).unwrap();
        let settings = CheckSettings {
            config_json: Some(json),
            ..Default::default()
        };
        assert!(plugin_settings(&file, &settings).is_err());
    }
}
