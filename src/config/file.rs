//! `semcache serve --config FILE`: the TOML file under the flags and environment variables.
//!
//! serde reads the file into [`Document`]. The keys of `[server]` are clap's own (every flag of
//! [`ServeArgs`], flattened ones included), so a flag added later is settable from the file
//! with no code here; each value goes through the flag's own parser, so the file cannot accept
//! what the command line would refuse.

use super::ServeArgs;
use crate::cache::{validate, NamespaceUpdate};
use crate::grpc::auth::{self, TokenSpec};
use clap::{parser::ValueSource, Arg, ArgMatches, Args, FromArgMatches};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::{any::TypeId, ffi::OsString, fmt};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Why `semcache serve`'s settings were refused. Every refusal of the config file names the
/// file and the key, and where toml knows it, the line and column.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag or environment variable (clap's own message).
    #[error(transparent)]
    Cli(#[from] clap::Error),
    #[error("cannot read config file {}: {error}", .path.display())]
    Read { path: PathBuf, error: std::io::Error },
    #[error("config file {}: TOML syntax error at line {line}, column {column}: {message}", .path.display())]
    Syntax { path: PathBuf, line: usize, column: usize, message: String },
    #[error("config file {at}: unknown key {key}{hint}; known keys: {}", .known.join(", "))]
    UnknownKey {
        at: Place,
        /// The key with its tables, as in `server.max_qeue`.
        key: String,
        /// A suggestion, as in ` (did you mean max_queue?)`, or empty.
        hint: String,
        known: Vec<String>,
    },
    #[error("config file {at}: {key}: expected {expected}, found {found}")]
    WrongType { at: Place, key: String, expected: &'static str, found: &'static str },
    #[error("config file {at}: {key}: invalid value {value}: {reason}")]
    InvalidValue { at: Place, key: String, value: String, reason: String },
    /// A rule between two settings; the reason quotes both values.
    #[error("config file {at}: {key}: {reason}")]
    Refused { at: Place, key: String, reason: String },
    #[error("config file {at}: namespace name {name:?} {reason}")]
    Namespace { at: Place, name: String, reason: String },
}

/// The file, and where in it a refusal points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub path: PathBuf,
    /// From 1, the column in characters; `None` where toml gave no span.
    pub line_column: Option<(usize, usize)>,
}

/// `FILE:LINE:COLUMN`, which editors and terminals open at the place.
impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        match self.line_column {
            Some((line, column)) => write!(f, ":{line}:{column}"),
            None => Ok(()),
        }
    }
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

/// The whole file. The maps are sorted by key, so namespaces and tokens come out sorted by
/// name, as [`ServeArgs`] promises.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    /// Not a struct: clap knows the keys and checks the values.
    #[serde(default)]
    server: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(default)]
    namespaces: BTreeMap<Spanned<String>, NamespaceTable>,
    #[serde(default)]
    tokens: BTreeMap<Spanned<String>, Spanned<TokenTable>>,
}

/// [`Document`]'s fields.
const SECTIONS: [Key; 3] =
    [Key::new("server", Kind::Table), Key::new("namespaces", Kind::Table), Key::new("tokens", Kind::Table)];

/// `[namespaces.NAME]`. Each key may be spelt with `-` as well, like `[server]`'s.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespaceTable {
    #[serde(alias = "similarity-threshold")]
    similarity_threshold: Option<Spanned<f32>>,
    #[serde(alias = "ttl-seconds")]
    ttl_seconds: Option<u64>,
    #[serde(alias = "max-entries")]
    max_entries: Option<u64>,
    #[serde(alias = "threshold-floor")]
    threshold_floor: Option<Spanned<f32>>,
    #[serde(alias = "hit-guards")]
    hit_guards: Option<bool>,
    #[serde(alias = "error-bound")]
    error_bound: Option<Spanned<f32>>,
}

/// [`NamespaceTable`]'s fields.
const NAMESPACE_KEYS: [Key; 6] = [
    Key::new("similarity_threshold", Kind::Float),
    Key::new("ttl_seconds", Kind::Integer),
    Key::new("max_entries", Kind::Integer),
    Key::new("threshold_floor", Kind::Float),
    Key::new("hit_guards", Kind::Bool),
    Key::new("error_bound", Kind::Float),
];

/// `[tokens.NAME]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenTable {
    sha256: Spanned<String>,
    #[serde(default)]
    read: Vec<Spanned<String>>,
    #[serde(default)]
    write: Vec<Spanned<String>>,
    /// Any integer, so that 0, a negative number and one past `u32` get the same refusal.
    #[serde(alias = "requests-per-second")]
    requests_per_second: Option<Spanned<i64>>,
}

/// [`TokenTable`]'s fields.
const TOKEN_KEYS: [Key; 4] = [
    Key::new("sha256", Kind::Text).required("the SHA-256 of the token (`semcache token` makes one)"),
    Key::new("read", Kind::Names),
    Key::new("write", Kind::Names),
    Key::new("requests_per_second", Kind::Integer),
];

/// A field of one of the file's structs, for refusals: serde's own messages speak of Rust
/// types (`expected u64`), not of what the file must hold.
#[derive(Debug, Clone, Copy)]
struct Key {
    name: &'static str,
    kind: Kind,
    /// What it is, for a struct that cannot do without it; `None` when it may be left out.
    required: Option<&'static str>,
}

impl Key {
    const fn new(name: &'static str, kind: Kind) -> Key {
        Key { name, kind, required: None }
    }

    const fn required(self, what: &'static str) -> Key {
        Key { required: Some(what), ..self }
    }
}

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
    let src = Source { path: &path, text: &text };
    let tree = DeTable::parse(&text).map_err(|e| src.syntax(&e))?;
    // The tree stays to find what a refusal's span points at.
    let doc = Document::deserialize(toml::de::Deserializer::from(tree.clone()))
        .map_err(|e| src.refusal(tree.get_ref(), &e))?;

    // In the file's order, so that a setting given twice is refused where it comes again.
    let mut server: Vec<_> = doc.server.iter().collect();
    server.sort_by_key(|(key, _)| key.span().start);
    let mut set: Vec<(&str, &str)> = Vec::new();
    let mut file_argv: Vec<OsString> = Vec::new();
    for (key, value) in server {
        let full = format!("server.{}", toml_key(key.get_ref()));
        let arg = find_arg(&cmd, key.get_ref()).ok_or_else(|| src.unknown_server_key(&cmd, key))?;
        let id = arg.get_id().as_str();
        if let Some((_, first)) = set.iter().find(|(seen, _)| *seen == id) {
            let reason = format!("{id} is set twice (as `{first}` and `{}`)", key.get_ref());
            return Err(src.invalid(value.span(), full, reason));
        }
        let flag = flag_value(&src, &cmd, arg, &full, value)?;
        set.push((id, key.get_ref()));
        if matches!(matches.value_source(id), None | Some(ValueSource::DefaultValue)) {
            file_argv.extend(flag);
        }
    }
    let from_file: Vec<&str> = set.iter().map(|(id, _)| *id).collect();
    let namespaces =
        doc.namespaces.iter().map(|(name, table)| src.namespace(name, table)).collect::<Result<Vec<_>, _>>()?;
    let tokens = src.tokens(&doc.tokens)?;

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
            out.push_str(&format!("\n[namespaces.{}]\n", toml_key(&ns.name)));
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
            if let Some(d) = ns.error_bound {
                out.push_str(&format!("error_bound = {d}\n"));
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

/// What a TOML value must be: for a flag, from the type clap parses it into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Integer,
    Float,
    Text,
    Table,
    /// Namespace names (or `*`).
    Names,
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
            Kind::Table => "a table",
            Kind::Names => "an array of namespace names",
        }
    }

    /// Whether `value` has the type; an integer is a number too.
    fn fits(self, value: &DeValue<'_>) -> bool {
        match (self, value) {
            (Kind::Names, DeValue::Array(items)) => items.iter().all(|i| i.get_ref().is_str()),
            (Kind::Bool, DeValue::Boolean(_))
            | (Kind::Integer | Kind::Float, DeValue::Integer(_))
            | (Kind::Float, DeValue::Float(_))
            | (Kind::Text, DeValue::String(_))
            | (Kind::Table, DeValue::Table(_)) => true,
            _ => false,
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
    src: &Source,
    cmd: &clap::Command,
    arg: &Arg,
    key: &str,
    value: &Spanned<toml::Value>,
) -> Result<Option<OsString>, ConfigError> {
    use toml::Value;
    let kind = Kind::of(arg);
    let wrong_type = || src.wrong_type(value.span(), key.to_string(), kind, value.get_ref().type_str());
    if matches!(arg.get_action(), clap::ArgAction::SetTrue) {
        let long = arg.get_long().expect("file-settable flags are long");
        return match value.get_ref() {
            Value::Boolean(true) => Ok(Some(format!("--{long}").into())),
            Value::Boolean(false) => Ok(None),
            _ => Err(wrong_type()),
        };
    }
    let text = match (kind, value.get_ref()) {
        (Kind::Bool, Value::Boolean(b)) => b.to_string(),
        (Kind::Integer | Kind::Float, Value::Integer(i)) => i.to_string(),
        (Kind::Float, Value::Float(f)) => f.to_string(),
        (Kind::Text, Value::String(s)) => s.clone(),
        _ => return Err(wrong_type()),
    };
    let invalid = |reason: String| src.invalid(value.span(), key.to_string(), reason);
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

/// The config file's text, to say where a refusal points and quote what it refuses.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn place(&self, span: Option<Range<usize>>) -> Place {
        Place { path: self.path.to_path_buf(), line_column: span.map(|s| line_column(self.text, s.start)) }
    }

    /// What the file says at `span`, as written.
    fn quote(&self, span: Range<usize>) -> String {
        self.text.get(span).unwrap_or_default().to_string()
    }

    fn syntax(&self, e: &toml::de::Error) -> ConfigError {
        let (line, column) = line_column(self.text, e.span().map_or(0, |s| s.start));
        ConfigError::Syntax { path: self.path.to_path_buf(), line, column, message: e.message().trim().to_string() }
    }

    fn wrong_type(&self, span: Range<usize>, key: String, kind: Kind, found: &'static str) -> ConfigError {
        ConfigError::WrongType { at: self.place(Some(span)), key, expected: kind.expected(), found }
    }

    /// The value at `span` refused.
    fn invalid(&self, span: Range<usize>, key: String, reason: impl Into<String>) -> ConfigError {
        ConfigError::InvalidValue {
            at: self.place(Some(span.clone())),
            key,
            value: self.quote(span),
            reason: reason.into(),
        }
    }

    /// What serde refused, said again from what the file holds where the refusal points and
    /// what the struct there expects; serde's message is shown only where neither explains it.
    fn refusal(&self, tree: &DeTable<'_>, e: &toml::de::Error) -> ConfigError {
        let span = e.span().unwrap_or_default();
        let at = self.place(e.span());
        let Some((path, value)) = locate(tree, &span) else {
            return ConfigError::Refused { at, key: "(the whole file)".into(), reason: e.message().to_string() };
        };
        let key = path.iter().map(|k| toml_key(k)).collect::<Vec<_>>().join(".");
        let (name, parent) = path.split_last().expect("a located key");
        if let Some(known) = keys_of(parent).filter(|known| field(known, name).is_none()) {
            let hint = match parent {
                [ns, table] if ns == "namespaces" && value.get_ref().is_table() => {
                    format!(
                        " (a namespace name with '.' must be quoted: [namespaces.{}])",
                        toml_key(&format!("{table}.{name}"))
                    )
                }
                _ => suggest(name, known.iter().map(|k| k.name)),
            };
            return ConfigError::UnknownKey {
                at,
                key,
                hint,
                known: known.iter().map(|k| k.name.to_string()).collect(),
            };
        }
        let found = innermost(value, &span);
        let kind = match parent {
            [map] if map == "namespaces" || map == "tokens" => Some(Kind::Table),
            _ => keys_of(parent).and_then(|known| field(known, name)).map(|k| k.kind),
        };
        match (kind, found.get_ref()) {
            (Some(kind), v) if !kind.fits(v) => self.wrong_type(found.span(), key, kind, v.type_str()),
            // Of an integer of the right kind, only the range can be wrong.
            (Some(_), DeValue::Integer(_)) => {
                let negative = self.quote(found.span()).starts_with('-');
                self.invalid(found.span(), key, if negative { "must not be negative" } else { "is too large" })
            }
            (Some(_), DeValue::Table(table)) => self.table_refusal(&path, key, table, at, e),
            _ => self.invalid(found.span(), key, e.message().trim()),
        }
    }

    /// serde's refusal of a table of the right type: a key set twice, or one left out.
    fn table_refusal(
        &self,
        path: &[String],
        key: String,
        table: &DeTable<'_>,
        at: Place,
        e: &toml::de::Error,
    ) -> ConfigError {
        let mut keys: Vec<_> = table.iter().collect();
        keys.sort_by_key(|(k, _)| k.span().start);
        for (i, (first, _)) in keys.iter().enumerate() {
            let name = snake(first.get_ref());
            if let Some((second, value)) = keys[i + 1..].iter().find(|(k, _)| snake(k.get_ref()) == name) {
                let reason = format!("{name} is set twice (as `{}` and `{}`)", first.get_ref(), second.get_ref());
                return self.invalid(value.span(), format!("{key}.{name}"), reason);
            }
        }
        let missing = keys_of(path)
            .into_iter()
            .flatten()
            .find(|k| k.required.is_some() && !keys.iter().any(|(n, _)| snake(n.get_ref()) == k.name));
        match missing {
            Some(k) => ConfigError::InvalidValue {
                at,
                key: format!("{key}.{}", k.name),
                value: "(missing)".into(),
                reason: format!("is required: {}", k.required.unwrap_or_default()),
            },
            None => ConfigError::Refused { at, key, reason: e.message().trim().to_string() },
        }
    }

    fn unknown_server_key(&self, cmd: &clap::Command, key: &Spanned<String>) -> ConfigError {
        let known: Vec<String> =
            cmd.get_arguments().filter(|a| file_settable(a)).map(|a| a.get_id().to_string()).collect();
        let hint = match snake(key.get_ref()).as_str() {
            "config" | "print_config" => " (only a flag or environment variable can set it)".to_string(),
            _ => suggest(key.get_ref(), known.iter().map(String::as_str)),
        };
        ConfigError::UnknownKey {
            at: self.place(Some(key.span())),
            key: format!("server.{}", toml_key(key.get_ref())),
            hint,
            known,
        }
    }

    fn namespace(&self, name: &Spanned<String>, table: &NamespaceTable) -> Result<NamespaceUpdate, ConfigError> {
        validate::namespace(name.get_ref()).map_err(|e| ConfigError::Namespace {
            at: self.place(Some(name.span())),
            name: name.get_ref().clone(),
            reason: e.detail(),
        })?;
        let key = |field: &str| format!("namespaces.{}.{field}", toml_key(name.get_ref()));
        let invalid =
            |value: &Spanned<f32>, e: validate::ValidationError| self.invalid(value.span(), key(e.field), e.reason());
        let (threshold, floor) = (table.similarity_threshold.as_ref(), table.threshold_floor.as_ref());
        if let Some(t) = threshold {
            validate::threshold("similarity_threshold", *t.get_ref()).map_err(|e| invalid(t, e))?;
        }
        if let Some(f) = floor {
            validate::floor(*f.get_ref()).map_err(|e| invalid(f, e))?;
        }
        if let Some(d) = &table.error_bound {
            validate::error_bound(*d.get_ref()).map_err(|e| invalid(d, e))?;
        }
        if let (Some(t), Some(f)) = (threshold, floor) {
            validate::threshold_above_floor(name.get_ref(), *t.get_ref(), *f.get_ref(), false).map_err(|e| {
                let value = if e.field == "threshold_floor" { f } else { t };
                // The problem alone: the rule's advice is for a ConfigureNamespace call.
                ConfigError::Refused { at: self.place(Some(value.span())), key: key(e.field), reason: e.problem }
            })?;
        }
        Ok(NamespaceUpdate {
            name: name.get_ref().clone(),
            similarity_threshold: threshold.map(|t| *t.get_ref()),
            ttl_seconds: table.ttl_seconds,
            max_entries: table.max_entries,
            threshold_floor: floor.map(|f| *f.get_ref()),
            hit_guards: table.hit_guards,
            error_bound: table.error_bound.as_ref().map(|d| *d.get_ref()),
        })
    }

    fn tokens(&self, tables: &BTreeMap<Spanned<String>, Spanned<TokenTable>>) -> Result<Vec<TokenSpec>, ConfigError> {
        let mut tokens: Vec<TokenSpec> = Vec::new();
        for (name, table) in tables {
            let token = self.token(name.get_ref(), table)?;
            if let Some(twin) = tokens.iter().find(|t| t.sha256 == token.sha256) {
                return Err(self.invalid(
                    table.get_ref().sha256.span(),
                    format!("tokens.{}.sha256", toml_key(&token.name)),
                    format!("is also the digest of tokens.{}; each token must be distinct", toml_key(&twin.name)),
                ));
            }
            tokens.push(token);
        }
        Ok(tokens)
    }

    fn token(&self, name: &str, table: &Spanned<TokenTable>) -> Result<TokenSpec, ConfigError> {
        let key = |field: &str| format!("tokens.{}.{field}", toml_key(name));
        let t = table.get_ref();
        if !auth::is_digest(t.sha256.get_ref()) {
            return Err(self.invalid(
                t.sha256.span(),
                key("sha256"),
                "must be the token's SHA-256 as 64 lowercase hex digits (`semcache token` makes a token and its \
                 digest; `printf %s \"$TOKEN\" | sha256sum` digests one you have)",
            ));
        }
        let names = |field: &str, list: &[Spanned<String>]| -> Result<Vec<String>, ConfigError> {
            list.iter()
                .map(|n| {
                    if n.get_ref() != "*" {
                        validate::namespace(n.get_ref()).map_err(|e| {
                            self.invalid(n.span(), key(field), format!("namespace name {}", e.detail()))
                        })?;
                    }
                    Ok(n.get_ref().clone())
                })
                .collect()
        };
        let (read, write) = (names("read", &t.read)?, names("write", &t.write)?);
        if read.is_empty() && write.is_empty() {
            return Err(ConfigError::InvalidValue {
                at: self.place(Some(table.span())),
                key: key("read"),
                value: "(missing)".into(),
                reason: "the token grants nothing: give `read` and/or `write` a list of namespaces (\"*\" = all)"
                    .into(),
            });
        }
        let requests_per_second = t
            .requests_per_second
            .as_ref()
            .map(|n| {
                u32::try_from(*n.get_ref()).ok().and_then(NonZeroU32::new).ok_or_else(|| {
                    self.invalid(
                        n.span(),
                        key("requests_per_second"),
                        "must be a whole number from 1 up (omit it for no limit)",
                    )
                })
            })
            .transpose()?;
        Ok(TokenSpec { name: name.to_string(), sha256: t.sha256.get_ref().clone(), read, write, requests_per_second })
    }
}

/// The fields of the struct that serde reads the table at `path` into (`[]`: the top level).
fn keys_of(path: &[String]) -> Option<&'static [Key]> {
    match path {
        [] => Some(&SECTIONS),
        [map, _] if map == "namespaces" => Some(&NAMESPACE_KEYS),
        [map, _] if map == "tokens" => Some(&TOKEN_KEYS),
        _ => None,
    }
}

/// `name`'s field, in either spelling.
fn field<'k>(known: &'k [Key], name: &str) -> Option<&'k Key> {
    let name = snake(name);
    known.iter().find(|k| k.name == name)
}

fn snake(key: &str) -> String {
    key.replace('-', "_")
}

/// The key path in `table` to what `span` points at, and the value there: the innermost key
/// whose name or value holds the span.
fn locate<'t, 'i>(table: &'t DeTable<'i>, span: &Range<usize>) -> Option<(Vec<String>, &'t Spanned<DeValue<'i>>)> {
    table.iter().find_map(|(key, value)| {
        if within(span, &key.span()) {
            return Some((vec![key.get_ref().to_string()], value));
        }
        // A table's own span is only its header, or the key for one that a dotted key or header
        // makes, so what it holds is searched first.
        if let Some((mut path, found)) = value.get_ref().as_table().and_then(|t| locate(t, span)) {
            path.insert(0, key.get_ref().to_string());
            return Some((path, found));
        }
        within(span, &value.span()).then(|| (vec![key.get_ref().to_string()], value))
    })
}

/// The item of an array at `span`, or `value` itself.
fn innermost<'v, 'i>(value: &'v Spanned<DeValue<'i>>, span: &Range<usize>) -> &'v Spanned<DeValue<'i>> {
    match value.get_ref() {
        DeValue::Array(items) => {
            items.iter().find(|i| within(span, &i.span())).map_or(value, |item| innermost(item, span))
        }
        _ => value,
    }
}

fn within(inner: &Range<usize>, outer: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

/// A key as TOML writes it: bare where it can be, else quoted.
fn toml_key(name: &str) -> String {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        name.to_string()
    } else {
        toml::Value::String(name.to_string()).to_string()
    }
}

/// ` (did you mean KEY?)` for the known key closest to `key`, if one is close.
fn suggest<'a>(key: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    let key = snake(key);
    known
        .into_iter()
        .map(|k| (strsim::levenshtein(&key, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| format!(" (did you mean {k}?)"))
        .unwrap_or_default()
}

/// Line and column, from 1, of byte `at` of `text`; the column counts characters.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..text.floor_char_boundary(at.min(text.len()))];
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (before.matches('\n').count() + 1, column)
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
             threshold_floor = 0.8\nhit_guards = true\nerror_bound = 0.01\n\
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
        assert_eq!(support.error_bound, Some(0.01));
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
        assert!(
            m.contains("server.max-queue: invalid value 2: max_queue is set twice (as `max_queue` and `max-queue`)"),
            "{m}"
        );
        let (_, m) = refusal("[namespaces.support]\nsimilarity_threshold = 1.5");
        assert!(
            m.contains("namespaces.support.similarity_threshold: invalid value 1.5: it must be a number in (0, 1]"),
            "{m}"
        );
        let (_, m) = refusal("[namespaces.support]\nerror_bound = 0.5");
        assert!(m.contains("namespaces.support.error_bound") && m.contains("[0, 0.5)"), "{m}");
        let (_, m) = refusal("[namespaces.support]\nthreshold_floor = -0.5");
        assert!(m.contains("namespaces.support.threshold_floor: invalid value -0.5"), "{m}");
        let (_, m) = refusal("[namespaces.support]\nmax_entries = -3");
        assert!(m.contains("namespaces.support.max_entries: invalid value -3: must not be negative"), "{m}");
        let (_, m) = refusal("[namespaces.support]\nsimilarity_threshold = 0.7\nthreshold_floor = 0.8");
        assert!(
            m.contains(
                "namespaces.support.similarity_threshold: 0.7 is below namespace \"support\"'s threshold_floor 0.8"
            ),
            "{m}"
        );
        let (_, m) = refusal("[namespaces.support]\nttl_seconds = 99999999999999999999");
        assert!(m.contains("namespaces.support.ttl_seconds: invalid value 99999999999999999999: is too large"), "{m}");
        let (_, m) = refusal("[namespaces.support]\nsimilarity_threshold = 0.9\nsimilarity-threshold = 0.8");
        assert!(
            m.contains("similarity_threshold: invalid value 0.8: similarity_threshold is set twice (as `similarity_threshold` and `similarity-threshold`)"),
            "{m}"
        );
    }

    /// Where `e` points: line and column.
    fn line_column(e: &ConfigError) -> Option<(usize, usize)> {
        match e {
            ConfigError::UnknownKey { at, .. }
            | ConfigError::WrongType { at, .. }
            | ConfigError::InvalidValue { at, .. }
            | ConfigError::Refused { at, .. }
            | ConfigError::Namespace { at, .. } => at.line_column,
            _ => None,
        }
    }

    #[test]
    fn refusals_give_the_line_and_column() {
        let d = auth::hash_token("x");
        for (text, says, at) in [
            ("[server]\nmax_queue = \"x\"", "server.max_queue: expected", (2, 13)),
            ("[server]\n\n  max_qeue = 1", "unknown key server.max_qeue", (3, 3)),
            ("[server]\nmax_queue = -1", "server.max_queue: invalid value -1", (2, 13)),
            ("[serer]", "unknown key serer", (1, 2)),
            ("tokens = 5", "tokens: expected a table, found integer", (1, 10)),
            ("[namespaces.support]\nttl = 5", "namespaces.support.ttl", (2, 1)),
            ("[namespaces.support]\nttl_seconds = 1.5", "namespaces.support.ttl_seconds: expected", (2, 15)),
            ("[namespaces.support]\nmax-entries = -3", "namespaces.support.max-entries: invalid value -3", (2, 15)),
            ("[namespaces.support]\nsimilarity_threshold = 1.5", "similarity_threshold: invalid value 1.5", (2, 24)),
            ("\n[namespaces.\"a b\"]", "namespace name \"a b\"", (2, 13)),
            ("[namespaces.s]\nthreshold_floor = 0.9\nsimilarity_threshold = 0.5", "0.5 is below", (3, 24)),
            ("[tokens.a]\nread = [\"*\"]", "tokens.a.sha256: invalid value (missing)", (1, 1)),
            ("tokens.a.read = [\"*\"]", "tokens.a.sha256: invalid value (missing)", (1, 8)),
            (&format!("[tokens.a]\nsha256 = \"{d}\"\nread = [\"ok\", 5]"), "tokens.a.read: expected", (3, 15)),
            (&format!("[tokens.a]\nsha256 = \"{d}\"\nread = [\"ok\", \"n/a\"]"), "\"n/a\": namespace name", (3, 15)),
            (&format!("[tokens.a]\nsha256 = \"{d}\""), "the token grants nothing", (1, 1)),
            (
                &format!("[tokens.a]\nsha256 = \"{d}\"\nread = [\"*\"]\n[tokens.b]\nsha256 = \"{d}\"\nread = [\"x\"]"),
                "tokens.b.sha256",
                (5, 10),
            ),
        ] {
            let (e, m) = refusal(text);
            assert!(m.contains(says), "{text:?}: {m}");
            assert_eq!(line_column(&e), Some(at), "{text:?}: {m}");
            assert!(m.contains(&format!(".toml:{}:{}: ", at.0, at.1)), "{text:?}: {m}");
        }
    }

    /// The fields that serde's derive reads into `T`, aliases included.
    fn serde_fields<T: for<'de> Deserialize<'de>>() -> Vec<String> {
        struct Record(Option<&'static [&'static str]>);
        impl<'de> serde::Deserializer<'de> for &mut Record {
            type Error = serde::de::value::Error;
            fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
                Err(serde::de::Error::custom("not a struct"))
            }
            fn deserialize_struct<V: serde::de::Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Self::Error> {
                self.0 = Some(fields);
                Err(serde::de::Error::custom("recorded"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
                unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
            }
        }
        let mut record = Record(None);
        assert!(T::deserialize(&mut record).is_err());
        record.0.expect("a struct").iter().map(|f| f.to_string()).collect()
    }

    #[test]
    fn the_key_lists_are_the_structs_fields() {
        for (fields, keys) in [
            (serde_fields::<Document>(), &SECTIONS[..]),
            (serde_fields::<NamespaceTable>(), &NAMESPACE_KEYS[..]),
            (serde_fields::<TokenTable>(), &TOKEN_KEYS[..]),
        ] {
            let mut spelt: Vec<String> = fields.iter().map(|f| snake(f)).collect();
            spelt.sort();
            spelt.dedup();
            let mut names: Vec<String> = keys.iter().map(|k| k.name.to_string()).collect();
            names.sort();
            assert_eq!(spelt, names);
            for k in keys.iter().filter(|k| k.name.contains('_')) {
                assert!(fields.contains(&k.name.replace('_', "-")), "{} has no '-' spelling", k.name);
            }
        }
    }

    #[test]
    fn names_that_are_not_bare_keys_are_quoted() {
        assert_eq!(toml_key("support_v2-en"), "support_v2-en");
        assert_eq!(toml_key("faq.v2"), "\"faq.v2\"");
        assert_eq!(toml_key("my gateway"), "\"my gateway\"");
        let d = auth::hash_token("x");
        let r = resolve_with(&format!("[tokens.\"my gateway\"]\nsha256 = \"{d}\"\nread = [\"*\"]"), &[]).unwrap();
        let toml = r.to_toml();
        assert!(toml.contains("[tokens.\"my gateway\"]"), "{toml}");
        assert_eq!(resolve_with(&toml, &[]).unwrap().args.tokens, r.args.tokens);
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
