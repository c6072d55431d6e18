//! `semcache serve --config FILE`: the TOML file under the flags and environment variables.
//!
//! The keys are clap's own (every flag of [`ServeArgs`], flattened ones included), so a flag
//! added later is settable from the file with no code here; each value goes through the flag's
//! own parser, so the file cannot accept what the command line would refuse.

use super::ServeArgs;
use crate::cache::{validate, NamespaceUpdate};
use crate::grpc::auth::{self, TokenSpec};
use clap::{parser::ValueSource, Arg, ArgMatches, Args, FromArgMatches};
use std::{any::TypeId, ffi::OsString, path::PathBuf};

/// Why `semcache serve`'s settings were refused. Every refusal of the config file names the
/// file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag or environment variable (clap's own message).
    #[error(transparent)]
    Cli(#[from] clap::Error),
    #[error("cannot read config file {}: {error}", .path.display())]
    Read { path: PathBuf, error: std::io::Error },
    #[error("config file {}: TOML syntax error at line {line}, column {column}: {message}", .path.display())]
    Syntax { path: PathBuf, line: usize, column: usize, message: String },
    #[error("config file {}: unknown key {key}{hint}; known keys: {}", .path.display(), .known.join(", "))]
    UnknownKey {
        path: PathBuf,
        /// The key with its tables, as in `server.max_qeue`.
        key: String,
        /// A suggestion, as in ` (did you mean max_queue?)`, or empty.
        hint: String,
        known: Vec<String>,
    },
    #[error("config file {}: {key}: expected {expected}, found {found}", .path.display())]
    WrongType { path: PathBuf, key: String, expected: &'static str, found: &'static str },
    #[error("config file {}: {key}: invalid value {value}: {reason}", .path.display())]
    InvalidValue { path: PathBuf, key: String, value: String, reason: String },
    #[error("config file {}: namespace name {name:?} {reason}", .path.display())]
    Namespace { path: PathBuf, name: String, reason: String },
}

/// `semcache serve`'s settings after the config file, and where each came from.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub args: ServeArgs,
    settings: Vec<Setting>,
}

#[derive(Debug, Clone)]
struct Setting {
    key: String,
    /// As TOML; `None` when unset.
    value: Option<String>,
    source: String,
}

/// Keys of `[tokens.NAME]`.
const TOKEN_KEYS: [&str; 4] = ["sha256", "read", "write", "requests_per_second"];

/// Top-level tables.
const SECTIONS: [&str; 3] = ["server", "namespaces", "tokens"];

/// Keys of `[namespaces.NAME]`.
const NAMESPACE_KEYS: [&str; 5] =
    ["similarity_threshold", "ttl_seconds", "max_entries", "threshold_floor", "hit_guards"];

/// Flags of `semcache serve` that the file cannot set.
fn file_settable(arg: &Arg) -> bool {
    !matches!(arg.get_id().as_str(), "config" | "print_config" | "help" | "version") && arg.get_long().is_some()
}

/// The `serve` command alone, as clap builds it from [`ServeArgs`].
fn serve_command() -> clap::Command {
    ServeArgs::augment_args(clap::Command::new("semcache serve"))
}

/// `semcache serve`'s settings: `matches` (from the `serve` subcommand, or any command that
/// flattens [`ServeArgs`]) with the `--config` file, if any, filling what neither a flag nor an
/// environment variable set. The file is checked whole, even keys that a flag overrides.
pub fn resolve(matches: &ArgMatches) -> Result<Resolved, ConfigError> {
    let base = ServeArgs::from_arg_matches(matches)?;
    let cmd = serve_command();
    let Some(path) = base.config.clone() else {
        let settings = describe(&cmd, matches, matches, &[]);
        return Ok(Resolved { args: base, settings });
    };
    let text = std::fs::read_to_string(&path).map_err(|error| ConfigError::Read { path: path.clone(), error })?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| syntax_error(&path, &text, &e))?;

    let mut from_file: Vec<&str> = Vec::new();
    let mut file_argv: Vec<OsString> = Vec::new();
    let mut namespaces = Vec::new();
    let mut tokens = Vec::new();
    for (section, value) in &table {
        match section.as_str() {
            "server" => {
                let server = value.as_table().ok_or_else(|| wrong_type(&path, "server", "a table", value))?;
                for (key, value) in server {
                    let full = format!("server.{key}");
                    let arg = find_arg(&cmd, key).ok_or_else(|| unknown_server_key(&path, &cmd, key))?;
                    let id = arg.get_id().as_str();
                    if from_file.contains(&id) {
                        return Err(ConfigError::InvalidValue {
                            path,
                            key: full,
                            value: value.to_string(),
                            reason: format!("{id} is set twice (as `{}` and `{}`)", id, id.replace('_', "-")),
                        });
                    }
                    let flag = flag_value(&path, &cmd, arg, &full, value)?;
                    from_file.push(id);
                    if matches!(matches.value_source(id), None | Some(ValueSource::DefaultValue)) {
                        file_argv.extend(flag);
                    }
                }
            }
            "namespaces" => {
                let tables = value.as_table().ok_or_else(|| wrong_type(&path, "namespaces", "a table", value))?;
                for (name, value) in tables {
                    namespaces.push(namespace_update(&path, name, value)?);
                }
            }
            "tokens" => {
                let tables = value.as_table().ok_or_else(|| wrong_type(&path, "tokens", "a table", value))?;
                for (name, value) in tables {
                    let token = token_spec(&path, name, value)?;
                    if let Some(twin) = tokens.iter().find(|t: &&TokenSpec| t.sha256 == token.sha256) {
                        return Err(ConfigError::InvalidValue {
                            path,
                            key: format!("tokens.{}.sha256", toml_key(name)),
                            value: format!("{:?}", token.sha256),
                            reason: format!("is also the digest of tokens.{}; each token must be distinct", twin.name),
                        });
                    }
                    tokens.push(token);
                }
            }
            other => {
                return Err(ConfigError::UnknownKey {
                    path,
                    key: other.to_string(),
                    hint: suggest(other, SECTIONS),
                    known: SECTIONS.iter().map(|s| s.to_string()).collect(),
                })
            }
        }
    }
    namespaces.sort_by(|a, b| a.name.cmp(&b.name));
    tokens.sort_by(|a, b| a.name.cmp(&b.name));

    // Parse again with the file's values as flags after the command line's own; environment
    // variables are read again by clap, and only fill what neither sets.
    let (args, final_matches) = if file_argv.is_empty() {
        (base, matches.clone())
    } else {
        let mut argv = vec![OsString::from("semcache serve")];
        argv.extend(command_line_flags(&cmd, matches));
        argv.extend(file_argv);
        let final_matches = cmd.clone().try_get_matches_from(argv)?;
        (ServeArgs::from_arg_matches(&final_matches)?, final_matches)
    };
    let settings = describe(&cmd, &final_matches, matches, &from_file);
    let mut args = args;
    args.namespaces = namespaces;
    args.tokens = tokens;
    Ok(Resolved { args, settings })
}

/// [`resolve`]'s settings alone.
pub fn serve_args(matches: &ArgMatches) -> Result<ServeArgs, ConfigError> {
    resolve(matches).map(|r| r.args)
}

impl Resolved {
    /// The effective settings as a config file, each with where it came from.
    pub fn to_toml(&self) -> String {
        let mut out = String::from("# Effective settings of `semcache serve`\n");
        if let Some(path) = &self.args.config {
            out.push_str(&format!("# config file: {}\n", path.display()));
        }
        out.push_str("\n[server]\n");
        let width = self.settings.iter().filter_map(|s| s.value.as_ref().map(|v| s.key.len() + v.len())).max();
        for s in &self.settings {
            match &s.value {
                Some(v) => {
                    let pad = width.unwrap_or(0).saturating_sub(s.key.len() + v.len());
                    out.push_str(&format!("{} = {v}{}  # {}\n", s.key, " ".repeat(pad), s.source));
                }
                None => out.push_str(&format!("# {} is unset ({})\n", s.key, s.source)),
            }
        }
        for ns in &self.args.namespaces {
            let name = if ns.name.contains('.') { format!("{:?}", ns.name) } else { ns.name.clone() };
            out.push_str(&format!("\n[namespaces.{name}]\n"));
            if let Some(t) = ns.similarity_threshold {
                out.push_str(&format!("similarity_threshold = {t}\n"));
            }
            if let Some(t) = ns.ttl_seconds {
                out.push_str(&format!("ttl_seconds = {t}\n"));
            }
            if let Some(m) = ns.max_entries {
                out.push_str(&format!("max_entries = {m}\n"));
            }
            if let Some(f) = ns.threshold_floor {
                out.push_str(&format!("threshold_floor = {f}\n"));
            }
            if let Some(g) = ns.hit_guards {
                out.push_str(&format!("hit_guards = {g}\n"));
            }
        }
        let list = |l: &[String]| l.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ");
        for t in &self.args.tokens {
            out.push_str(&format!("\n[tokens.{}]\n", toml_key(&t.name)));
            out.push_str(&format!(
                "sha256 = {:?}\nread = [{}]\nwrite = [{}]\n",
                t.sha256,
                list(&t.read),
                list(&t.write)
            ));
            if let Some(rps) = t.requests_per_second {
                out.push_str(&format!("requests_per_second = {rps}\n"));
            }
        }
        out
    }
}

/// What a TOML value must be for a flag, from the type clap parses it into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Integer,
    Float,
    Text,
}

impl Kind {
    fn of(arg: &Arg) -> Kind {
        let id = arg.get_value_parser().type_id();
        let is = |t: TypeId| id == t;
        if is(TypeId::of::<bool>()) {
            Kind::Bool
        } else if [
            TypeId::of::<u8>(),
            TypeId::of::<u16>(),
            TypeId::of::<u32>(),
            TypeId::of::<u64>(),
            TypeId::of::<usize>(),
            TypeId::of::<i8>(),
            TypeId::of::<i16>(),
            TypeId::of::<i32>(),
            TypeId::of::<i64>(),
            TypeId::of::<isize>(),
        ]
        .into_iter()
        .any(is)
        {
            Kind::Integer
        } else if is(TypeId::of::<f32>()) || is(TypeId::of::<f64>()) {
            Kind::Float
        } else {
            Kind::Text
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Kind::Bool => "a boolean (true or false)",
            Kind::Integer => "an integer",
            Kind::Float => "a number",
            Kind::Text => "a string",
        }
    }
}

fn find_arg<'c>(cmd: &'c clap::Command, key: &str) -> Option<&'c Arg> {
    let long = key.replace('_', "-");
    cmd.get_arguments().find(|a| file_settable(a) && a.get_long() == Some(long.as_str()))
}

/// The file's value as the flag `--long=value`, checked by the flag's own parser; a switch
/// (`--insecure-listen-any`) is `--long` when true and nothing when false.
fn flag_value(
    path: &std::path::Path,
    cmd: &clap::Command,
    arg: &Arg,
    key: &str,
    value: &toml::Value,
) -> Result<Option<OsString>, ConfigError> {
    use toml::Value;
    let kind = Kind::of(arg);
    if matches!(arg.get_action(), clap::ArgAction::SetTrue) {
        let long = arg.get_long().expect("file-settable flags are long");
        return match value {
            Value::Boolean(true) => Ok(Some(format!("--{long}").into())),
            Value::Boolean(false) => Ok(None),
            _ => Err(wrong_type(path, key, kind.expected(), value)),
        };
    }
    let text = match (kind, value) {
        (Kind::Bool, Value::Boolean(b)) => b.to_string(),
        (Kind::Integer | Kind::Float, Value::Integer(i)) => i.to_string(),
        (Kind::Float, Value::Float(f)) => f.to_string(),
        (Kind::Text, Value::String(s)) => s.clone(),
        _ => return Err(wrong_type(path, key, kind.expected(), value)),
    };
    let invalid = |reason: String| ConfigError::InvalidValue {
        path: path.to_path_buf(),
        key: key.to_string(),
        value: value.to_string(),
        reason,
    };
    if kind == Kind::Integer && text.starts_with('-') {
        return Err(invalid("must not be negative".into()));
    }
    let long = arg.get_long().expect("file-settable flags are long");
    let flag = OsString::from(format!("--{long}={text}"));
    if let Err(e) = cmd.clone().try_get_matches_from([OsString::from("semcache serve"), flag.clone()]) {
        let possible: Vec<String> = arg.get_possible_values().iter().map(|p| p.get_name().to_string()).collect();
        let reason = match std::error::Error::source(&e) {
            Some(source) => source.to_string(),
            None if !possible.is_empty() => format!("expected one of {}", possible.join(", ")),
            None => e.to_string().lines().next().unwrap_or_default().trim_start_matches("error: ").to_string(),
        };
        return Err(invalid(reason));
    }
    Ok(Some(flag))
}

/// The flags that `matches` got from the command line, to parse again.
fn command_line_flags(cmd: &clap::Command, matches: &ArgMatches) -> Vec<OsString> {
    let mut argv = Vec::new();
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if matches.value_source(id) != Some(ValueSource::CommandLine) {
            continue;
        }
        let Some(long) = arg.get_long() else { continue };
        if arg.get_action().takes_values() {
            for raw in matches.get_raw(id).into_iter().flatten() {
                let mut flag = OsString::from(format!("--{long}="));
                flag.push(raw);
                argv.push(flag);
            }
        } else {
            argv.push(format!("--{long}").into());
        }
    }
    argv
}

/// Each file-settable setting's value (from `effective`) and source (from `given`, the
/// command line and environment before the file).
fn describe(cmd: &clap::Command, effective: &ArgMatches, given: &ArgMatches, from_file: &[&str]) -> Vec<Setting> {
    cmd.get_arguments()
        .filter(|a| file_settable(a))
        .map(|arg| {
            let id = arg.get_id().as_str();
            let source = match given.value_source(id) {
                Some(ValueSource::CommandLine) => "command line".to_string(),
                Some(ValueSource::EnvVariable) => {
                    format!("environment: {}", arg.get_env().map(|e| e.to_string_lossy()).unwrap_or_default())
                }
                _ if from_file.contains(&id) => "config file".to_string(),
                _ => "default".to_string(),
            };
            let value = effective.get_raw(id).and_then(|mut v| v.next()).map(|raw| {
                let raw = raw.to_string_lossy().into_owned();
                match Kind::of(arg) {
                    Kind::Text => toml::Value::String(raw).to_string(),
                    _ => raw,
                }
            });
            Setting { key: id.to_string(), value, source }
        })
        .collect()
}

fn namespace_update(path: &std::path::Path, name: &str, value: &toml::Value) -> Result<NamespaceUpdate, ConfigError> {
    validate::namespace(name).map_err(|e| ConfigError::Namespace {
        path: path.to_path_buf(),
        name: name.to_string(),
        reason: e.detail(),
    })?;
    let table = value.as_table().ok_or_else(|| wrong_type(path, &format!("namespaces.{name}"), "a table", value))?;
    let mut update = NamespaceUpdate { name: name.to_string(), ..Default::default() };
    for (key, value) in table {
        let full = format!("namespaces.{}.{key}", toml_key(name));
        let invalid = |reason: String| ConfigError::InvalidValue {
            path: path.to_path_buf(),
            key: full.clone(),
            value: value.to_string(),
            reason,
        };
        let number = || match value {
            toml::Value::Float(f) => Ok(*f as f32),
            toml::Value::Integer(i) => Ok(*i as f32),
            _ => Err(wrong_type(path, &full, "a number", value)),
        };
        let count = || match value {
            toml::Value::Integer(i) => u64::try_from(*i).map_err(|_| invalid("must not be negative".into())),
            _ => Err(wrong_type(path, &full, "an integer", value)),
        };
        match key.replace('-', "_").as_str() {
            "similarity_threshold" => {
                let t = number()?;
                validate::threshold("similarity_threshold", t).map_err(|e| invalid(e.reason().to_string()))?;
                update.similarity_threshold = Some(t);
            }
            "threshold_floor" => {
                let f = number()?;
                validate::floor(f).map_err(|e| invalid(e.reason().to_string()))?;
                update.threshold_floor = Some(f);
            }
            "ttl_seconds" => update.ttl_seconds = Some(count()?),
            "max_entries" => update.max_entries = Some(count()?),
            "hit_guards" => match value {
                toml::Value::Boolean(b) => update.hit_guards = Some(*b),
                _ => return Err(wrong_type(path, &full, Kind::Bool.expected(), value)),
            },
            _ => {
                let hint = if value.is_table() {
                    format!(" (a namespace name with '.' must be quoted: [namespaces.\"{name}.{key}\"])")
                } else {
                    suggest(key, NAMESPACE_KEYS)
                };
                return Err(ConfigError::UnknownKey {
                    path: path.to_path_buf(),
                    key: full,
                    hint,
                    known: NAMESPACE_KEYS.iter().map(|k| k.to_string()).collect(),
                });
            }
        }
    }
    if let (Some(t), Some(f)) = (update.similarity_threshold, update.threshold_floor) {
        if t < f {
            return Err(ConfigError::InvalidValue {
                path: path.to_path_buf(),
                key: format!("namespaces.{}.similarity_threshold", toml_key(name)),
                value: t.to_string(),
                reason: format!("is below the namespace's threshold_floor {f}"),
            });
        }
    }
    Ok(update)
}

fn token_spec(path: &std::path::Path, name: &str, value: &toml::Value) -> Result<TokenSpec, ConfigError> {
    let at = |key: &str| format!("tokens.{}.{key}", toml_key(name));
    let table =
        value.as_table().ok_or_else(|| wrong_type(path, &format!("tokens.{}", toml_key(name)), "a table", value))?;
    let invalid = |key: &str, value: &toml::Value, reason: String| ConfigError::InvalidValue {
        path: path.to_path_buf(),
        key: at(key),
        value: value.to_string(),
        reason,
    };
    let mut spec = TokenSpec {
        name: name.to_string(),
        sha256: String::new(),
        read: Vec::new(),
        write: Vec::new(),
        requests_per_second: None,
    };
    for (key, value) in table {
        match key.replace('-', "_").as_str() {
            "sha256" => {
                let digest = value.as_str().ok_or_else(|| wrong_type(path, &at(key), "a string", value))?;
                if !auth::is_digest(digest) {
                    return Err(invalid(
                        key,
                        value,
                        "must be the token's SHA-256 as 64 lowercase hex digits (`semcache token` makes a token \
                         and its digest; `printf %s \"$TOKEN\" | sha256sum` digests one you have)"
                            .into(),
                    ));
                }
                spec.sha256 = digest.to_string();
            }
            right @ ("read" | "write") => {
                let list =
                    value.as_array().ok_or_else(|| wrong_type(path, &at(key), "an array of namespace names", value))?;
                let mut names = Vec::new();
                for item in list {
                    let n = item
                        .as_str()
                        .ok_or_else(|| wrong_type(path, &at(key), "an array of namespace names", value))?;
                    if n != "*" {
                        validate::namespace(n)
                            .map_err(|e| invalid(key, item, format!("namespace name {}", e.detail())))?;
                    }
                    names.push(n.to_string());
                }
                if right == "read" {
                    spec.read = names;
                } else {
                    spec.write = names;
                }
            }
            "requests_per_second" => {
                let n = value.as_integer().ok_or_else(|| wrong_type(path, &at(key), "an integer", value))?;
                let n = u32::try_from(n).ok().and_then(std::num::NonZeroU32::new).ok_or_else(|| {
                    invalid(key, value, "must be a whole number from 1 up (omit it for no limit)".into())
                })?;
                spec.requests_per_second = Some(n);
            }
            _ => {
                return Err(ConfigError::UnknownKey {
                    path: path.to_path_buf(),
                    key: at(key),
                    hint: suggest(key, TOKEN_KEYS),
                    known: TOKEN_KEYS.iter().map(|k| k.to_string()).collect(),
                })
            }
        }
    }
    if spec.sha256.is_empty() {
        return Err(ConfigError::InvalidValue {
            path: path.to_path_buf(),
            key: at("sha256"),
            value: "(missing)".into(),
            reason: "is required: the SHA-256 of the token (`semcache token` makes one)".into(),
        });
    }
    if spec.read.is_empty() && spec.write.is_empty() {
        return Err(ConfigError::InvalidValue {
            path: path.to_path_buf(),
            key: at("read"),
            value: "(missing)".into(),
            reason: "the token grants nothing: give `read` and/or `write` a list of namespaces (\"*\" = all)".into(),
        });
    }
    Ok(spec)
}

/// A namespace name as a TOML key.
fn toml_key(name: &str) -> String {
    if name.contains('.') {
        format!("{name:?}")
    } else {
        name.to_string()
    }
}

fn wrong_type(path: &std::path::Path, key: &str, expected: &'static str, value: &toml::Value) -> ConfigError {
    ConfigError::WrongType { path: path.to_path_buf(), key: key.to_string(), expected, found: value.type_str() }
}

fn unknown_server_key(path: &std::path::Path, cmd: &clap::Command, key: &str) -> ConfigError {
    let known: Vec<String> = cmd.get_arguments().filter(|a| file_settable(a)).map(|a| a.get_id().to_string()).collect();
    let why = match key.replace('-', "_").as_str() {
        "config" | "print_config" => " (only a flag or environment variable can set it)".to_string(),
        _ => suggest(key, known.iter().map(String::as_str)),
    };
    ConfigError::UnknownKey { path: path.to_path_buf(), key: format!("server.{key}"), hint: why, known }
}

/// ` (did you mean KEY?)` for the known key closest to `key`, if one is close.
fn suggest<'a>(key: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    let key = key.replace('-', "_");
    known
        .into_iter()
        .map(|k| (strsim::levenshtein(&key, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| format!(" (did you mean {k}?)"))
        .unwrap_or_default()
}

fn syntax_error(path: &std::path::Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let at = e.span().map_or(0, |s| s.start).min(text.len());
    let before = &text[..text.floor_char_boundary(at)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    ConfigError::Syntax { path: path.to_path_buf(), line, column, message: e.message().trim().to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A config file holding `text`, kept until the end of the test.
    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    /// `semcache serve` with `flags` and the config file, resolved. The environment variables
    /// that these tests read are set by no test, so that they can run in parallel.
    fn resolve_with(text: &str, flags: &[&str]) -> Result<Resolved, ConfigError> {
        let f = file(text);
        let mut argv = vec!["semcache serve".to_string(), format!("--config={}", f.path().display())];
        argv.extend(flags.iter().map(|s| s.to_string()));
        let matches = serve_command().try_get_matches_from(argv).unwrap();
        resolve(&matches)
    }

    fn refusal(text: &str) -> (ConfigError, String) {
        let e = resolve_with(text, &[]).unwrap_err();
        let message = e.to_string();
        (e, message)
    }

    #[test]
    fn the_file_fills_what_flags_do_not_set() {
        let r = resolve_with(
            "[server]\nmax_queue = 2048\nmax-batch = 8\ndata_dir = \"/srv/cache\"\nhit_guards = false\n\
             default_threshold = 0.9\nmodel_dir = \"/models/x\"\ndevice = \"cpu\"\nmetrics_listen = \"127.0.0.1:9100\"",
            &["--max-batch", "16"],
        )
        .unwrap();
        let a = &r.args;
        assert_eq!(a.max_queue, 2048);
        assert_eq!(a.max_batch, 16, "a flag beats the file");
        assert_eq!(a.data_dir, PathBuf::from("/srv/cache"));
        assert!(!a.hit_guards);
        assert_eq!(a.default_threshold, 0.9);
        assert_eq!(a.model.model_dir, PathBuf::from("/models/x"), "flattened ModelArgs");
        assert_eq!(a.metrics_listen, Some("127.0.0.1:9100".parse().unwrap()), "an option without default");
        assert_eq!(a.max_batch_tokens, 2048, "untouched settings keep their default");
        let toml = r.to_toml();
        assert!(toml.contains("max_queue = 2048") && toml.contains("# config file"), "{toml}");
        assert!(toml.contains("max_batch = 16") && toml.contains("# command line"), "{toml}");
        assert!(toml.contains("# default"), "{toml}");
    }

    #[test]
    fn a_flag_beats_the_file_even_at_its_default_value() {
        let r = resolve_with("[server]\nmax_queue = 2048", &["--max-queue", "1024"]).unwrap();
        assert_eq!(r.args.max_queue, 1024);
        let r = resolve_with("[server]\nhit_guards = false", &["--hit-guards=true"]).unwrap();
        assert!(r.args.hit_guards);
    }

    #[test]
    fn the_environment_beats_the_file() {
        // SEMCACHE_EF_SEARCH is read by this test alone.
        std::env::set_var("SEMCACHE_EF_SEARCH", "99");
        let r = resolve_with("[server]\nef_search = 12", &[]);
        std::env::remove_var("SEMCACHE_EF_SEARCH");
        let r = r.unwrap();
        assert_eq!(r.args.ef_search, 99);
        assert!(r.to_toml().contains("environment: SEMCACHE_EF_SEARCH"), "{}", r.to_toml());
    }

    #[test]
    fn without_a_file_nothing_changes() {
        let matches = serve_command().try_get_matches_from(["semcache serve", "--max-queue=5"]).unwrap();
        let args = serve_args(&matches).unwrap();
        assert_eq!(args.max_queue, 5);
        assert!(args.namespaces.is_empty());
        assert!(ServeArgs::with_dirs("d", "m").namespaces.is_empty());
    }

    #[test]
    fn namespaces_are_read_sorted_by_name() {
        let r = resolve_with(
            "[namespaces.support]\nsimilarity_threshold = 0.9\nttl_seconds = 3600\nmax_entries = 100000\n\
             threshold_floor = 0.8\nhit_guards = true\n\
             [namespaces.\"faq.v2\"]\nsimilarity-threshold = 1\n[namespaces.billing]\n",
            &[],
        )
        .unwrap();
        let names: Vec<_> = r.args.namespaces.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["billing", "faq.v2", "support"]);
        let support = &r.args.namespaces[2];
        assert_eq!(support.similarity_threshold, Some(0.9));
        assert_eq!(support.ttl_seconds, Some(3600));
        assert_eq!(support.max_entries, Some(100_000));
        assert_eq!(support.threshold_floor, Some(0.8));
        assert_eq!(support.hit_guards, Some(true));
        assert_eq!(r.args.namespaces[1].similarity_threshold, Some(1.0), "an integer is a number");
        assert!(r.args.namespaces[0].similarity_threshold.is_none());
        let toml = r.to_toml();
        assert!(toml.contains("[namespaces.\"faq.v2\"]"), "{toml}");
        // What --print-config prints reads back as the same settings.
        let again = resolve_with(&toml, &[]).unwrap();
        assert_eq!(again.args.namespaces.len(), 3);
        assert_eq!(again.args.max_queue, r.args.max_queue);
    }

    #[test]
    fn unknown_keys_are_refused_with_a_suggestion() {
        let (e, m) = refusal("[server]\nmax_qeue = 1");
        assert!(matches!(e, ConfigError::UnknownKey { .. }), "{e:?}");
        assert!(m.contains("server.max_qeue") && m.contains("did you mean max_queue?"), "{m}");
        assert!(m.contains("known keys: ") && m.contains("data_dir") && m.contains("model_dir"), "{m}");
        let (_, m) = refusal("[serer]\nlisten = \"x\"");
        assert!(m.contains("unknown key serer (did you mean server?)"), "{m}");
        let (_, m) = refusal("[server]\nconfig = \"other.toml\"");
        assert!(m.contains("server.config") && m.contains("only a flag"), "{m}");
        let (_, m) = refusal("[namespaces.support]\nttl = 5");
        assert!(m.contains("namespaces.support.ttl") && m.contains("similarity_threshold"), "{m}");
        let (_, m) = refusal("[namespaces.support.v2]\nttl_seconds = 5");
        assert!(m.contains("[namespaces.\"support.v2\"]"), "{m}");
    }

    #[test]
    fn values_of_the_wrong_type_are_refused() {
        let (e, m) = refusal("[server]\nmax_queue = \"2048\"");
        assert!(matches!(e, ConfigError::WrongType { .. }), "{e:?}");
        assert!(m.contains("server.max_queue: expected an integer, found string"), "{m}");
        let (_, m) = refusal("[server]\nlisten = 50051");
        assert!(m.contains("server.listen: expected a string, found integer"), "{m}");
        let (_, m) = refusal("[server]\nhit_guards = \"yes\"");
        assert!(m.contains("server.hit_guards: expected a boolean"), "{m}");
        let (_, m) = refusal("server = 1");
        assert!(m.contains("server: expected a table, found integer"), "{m}");
        let (_, m) = refusal("[namespaces.support]\nhit_guards = 1");
        assert!(m.contains("namespaces.support.hit_guards: expected a boolean"), "{m}");
        let (_, m) = refusal("[namespaces.support]\nttl_seconds = 1.5");
        assert!(m.contains("namespaces.support.ttl_seconds: expected an integer, found float"), "{m}");
    }

    #[test]
    fn invalid_values_are_refused_with_the_reason() {
        let (e, m) = refusal("[server]\nlisten = \"nowhere\"");
        assert!(matches!(e, ConfigError::InvalidValue { .. }), "{e:?}");
        assert!(m.contains("server.listen: invalid value \"nowhere\": invalid socket address"), "{m}");
        let (_, m) = refusal("[server]\ndevice = \"tpu\"");
        assert!(m.contains("server.device: invalid value \"tpu\": expected one of cpu, cuda"), "{m}");
        let (_, m) = refusal("[server]\nmax_queue = -1");
        assert!(m.contains("server.max_queue: invalid value -1: must not be negative"), "{m}");
        let (_, m) = refusal("[server]\nmax_queue = 1\nmax-queue = 2");
        assert!(m.contains("set twice"), "{m}");
        let (_, m) = refusal("[namespaces.support]\nsimilarity_threshold = 1.5");
        assert!(
            m.contains("namespaces.support.similarity_threshold: invalid value 1.5: it must be a number in (0, 1]"),
            "{m}"
        );
        let (_, m) = refusal("[namespaces.support]\nthreshold_floor = -0.5");
        assert!(m.contains("namespaces.support.threshold_floor: invalid value -0.5"), "{m}");
        let (_, m) = refusal("[namespaces.support]\nmax_entries = -3");
        assert!(m.contains("namespaces.support.max_entries: invalid value -3: must not be negative"), "{m}");
        let (_, m) = refusal("[namespaces.support]\nsimilarity_threshold = 0.7\nthreshold_floor = 0.8");
        assert!(m.contains("below the namespace's threshold_floor 0.8"), "{m}");
    }

    #[test]
    fn values_are_checked_even_when_a_flag_overrides_them() {
        let e = resolve_with("[server]\nmax_queue = \"x\"", &["--max-queue", "3"]).unwrap_err();
        assert!(e.to_string().contains("server.max_queue"), "{e}");
    }

    #[test]
    fn bad_namespace_names_are_refused() {
        let (e, m) = refusal("[namespaces.\"a b\"]\nttl_seconds = 1");
        assert!(matches!(e, ConfigError::Namespace { .. }), "{e:?}");
        assert!(m.contains("namespace name \"a b\" contains ' '"), "{m}");
        let (_, m) = refusal(&format!("[namespaces.{}]\n", "n".repeat(129)));
        assert!(m.contains("129 characters"), "{m}");
        let (_, m) = refusal("[namespaces]\nsupport = 1");
        assert!(m.contains("namespaces.support: expected a table, found integer"), "{m}");
    }

    #[test]
    fn syntax_errors_give_the_line() {
        let (e, m) = refusal("[server]\nmax_queue = 1\nlisten = \n");
        assert!(matches!(e, ConfigError::Syntax { line: 3, .. }), "{e:?}");
        assert!(m.contains("TOML syntax error at line 3"), "{m}");
    }

    #[test]
    fn unreadable_files_are_refused() {
        let matches =
            serve_command().try_get_matches_from(["semcache serve", "--config", "/no/such/semcache.toml"]).unwrap();
        let e = resolve(&matches).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
        assert!(e.to_string().contains("cannot read config file /no/such/semcache.toml"), "{e}");
    }

    #[test]
    fn tokens_and_switches_come_from_the_file() {
        let digest = auth::hash_token("s3cret");
        let r = resolve_with(
            &format!(
                "[server]\ninsecure_listen_any = true\ncache_incomplete = false\n\
                 [tokens.gateway]\nsha256 = \"{digest}\"\nread = [\"support\", \"docs\"]\nwrite = [\"support\"]\n\
                 requests_per_second = 50\n[tokens.admin]\nsha256 = \"{}\"\nread = [\"*\"]\nwrite = [\"*\"]\n",
                auth::hash_token("root")
            ),
            &[],
        )
        .unwrap();
        assert!(r.args.insecure_listen_any && !r.args.cache_incomplete);
        let names: Vec<_> = r.args.tokens.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["admin", "gateway"]);
        let gw = &r.args.tokens[1];
        assert_eq!((gw.sha256.as_str(), gw.read.len(), gw.write.len()), (digest.as_str(), 2, 1));
        assert_eq!(gw.requests_per_second.map(|n| n.get()), Some(50));
        // The printed config reads back the same.
        let again = resolve_with(&r.to_toml(), &[]).unwrap();
        assert_eq!(again.args.tokens, r.args.tokens);
        assert!(again.args.insecure_listen_any);
    }

    #[test]
    fn bad_tokens_are_refused_naming_the_key() {
        let d = auth::hash_token("x");
        for (text, says) in [
            (
                "[tokens.a]\nsha256 = \"abc\"\nread = [\"*\"]",
                "tokens.a.sha256: invalid value \"abc\": must be the token's SHA-256",
            ),
            (&format!("[tokens.a]\nsha256 = \"{d}\""), "the token grants nothing"),
            ("[tokens.a]\nread = [\"*\"]", "tokens.a.sha256: invalid value (missing)"),
            (
                &format!("[tokens.a]\nsha256 = \"{d}\"\nread = [\"bad name\"]"),
                "tokens.a.read: invalid value \"bad name\": namespace name contains ' '",
            ),
            (
                &format!("[tokens.a]\nsha256 = \"{d}\"\nread = \"*\""),
                "tokens.a.read: expected an array of namespace names",
            ),
            (
                &format!("[tokens.a]\nsha256 = \"{d}\"\nwrite = [\"*\"]\nrequests_per_second = 0"),
                "must be a whole number from 1 up",
            ),
            (
                &format!("[tokens.a]\nsha256 = \"{d}\"\nwrites = [\"*\"]"),
                "unknown key tokens.a.writes (did you mean write?)",
            ),
            (
                &format!("[tokens.a]\nsha256 = \"{d}\"\nread = [\"*\"]\n[tokens.b]\nsha256 = \"{d}\"\nread = [\"*\"]"),
                "also the digest of tokens.a",
            ),
            ("[token.a]\nsha256 = \"x\"", "unknown key token (did you mean tokens?)"),
            ("[server]\ninsecure_listen_any = \"yes\"", "expected a boolean"),
        ] {
            let (_, m) = refusal(text);
            assert!(m.contains(says), "{text:?}: {m}");
        }
    }

    #[test]
    fn suggestions_only_for_close_keys() {
        assert_eq!(suggest("max_qeue", ["max_queue", "listen"]), " (did you mean max_queue?)");
        assert_eq!(suggest("data-dir", ["data_dir"]), " (did you mean data_dir?)");
        assert_eq!(suggest("zzz", ["max_queue", "listen"]), "");
    }
}
