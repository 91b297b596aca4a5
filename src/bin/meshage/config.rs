//! `meshage node --config FILE`: a TOML file of settings keyed by the node's long flags
//! (`http-port = 8080`, `seeds = ["10.0.0.1:9742"]`), beneath flags and environment variables;
//! and `--print-config`, the effective settings in the same form.
//!
//! Nothing here knows the flags: the keys, their checks and which ones are secret all come from
//! clap's description of `meshage node`, so a new flag is a new key with no change here. A
//! setting from the file is checked by its flag's own value parser, then passed to a second
//! parse of the command line as that flag, after the flags given.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Args, Command};

/// The flags of `meshage node` about its configuration file.
#[derive(Args)]
pub(crate) struct ConfigArgs {
    /// A TOML file of settings, keyed by the long names of these flags (`http-port = 8080`,
    /// `seeds = ["10.0.0.1:9742"]`, `echo = ["echo"]`). Flags and environment variables
    /// override it.
    #[arg(long, env = "MESHAGE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML (secrets masked), and exit.
    #[arg(long)]
    pub(crate) print_config: bool,
}

/// The subcommand whose flags a configuration file holds.
const NODE: &str = "node";

/// The flags that are no settings: they cannot be keys of the file.
const NOT_SETTINGS: &[&str] = &["config", "print-config", "help", "version"];

/// A configuration file this big is a mistake, not a configuration.
const FILE_LIMIT: u64 = 1024 * 1024;

/// Environment variables the node reads as a second name of a flag's own variable (the
/// original's `SEED` for `SEEDS`): `(flag id, variable)`.
pub(crate) const ENV_ALIASES: &[(&str, &str)] = &[("seeds", "SEED"), ("http_port", "SERVICE_PORT")];

/// Why the command line was not taken.
pub(crate) enum Refused {
    /// clap's own: a bad flag, or `--help` and `--version`.
    Usage(clap::Error),
    /// The configuration file: one line naming it (and the key).
    File(String),
}

/// The settings a configuration file gave: the file and the ids of the flags it set.
pub(crate) struct FromFile {
    path: PathBuf,
    ids: BTreeSet<String>,
    /// Whether it holds a secret that users other than its owner may read.
    exposed: bool,
}

impl FromFile {
    /// A warning for the log when the file shows a secret to other users.
    pub(crate) fn warning(&self) -> Option<String> {
        self.exposed.then(|| {
            format!(
                "the config file {} holds a secret and other users may read it: chmod 600 it",
                self.path.display()
            )
        })
    }
}

/// Parses `args` by `command`; if they run `meshage node` with a configuration file, parses
/// them again with the file's settings beneath the flags and environment variables.
pub(crate) fn parse(
    command: &Command,
    args: Vec<OsString>,
) -> Result<(ArgMatches, Option<FromFile>), Refused> {
    let first = command
        .clone()
        .try_get_matches_from(&args)
        .map_err(Refused::Usage)?;
    let Some((NODE, node)) = first.subcommand() else {
        return Ok((first, None));
    };
    let Some(path) = node.get_one::<PathBuf>("config").cloned() else {
        return Ok((first, None));
    };
    let node_command = command.find_subcommand(NODE).expect("the node subcommand");
    let table = read(&path)?;
    // Every setting of the file as flags, and those that no flag or variable overrides.
    let mut every = Vec::new();
    let mut extra = Vec::new();
    let mut ids = BTreeSet::new();
    let mut secret = false;
    for (key, value) in &table {
        let arg = setting(node_command, key).ok_or_else(|| {
            refuse(
                &path,
                key,
                "unknown key: the keys are the long flags of `meshage node` (see --help)",
            )
        })?;
        let values = values(arg, value).map_err(|why| refuse(&path, key, &why))?;
        secret |= is_secret(arg);
        let flags: Vec<OsString> = if matches!(arg.get_action(), ArgAction::SetTrue) {
            let on = values.iter().any(|v| v == "true");
            on.then(|| OsString::from(format!("--{key}")))
                .into_iter()
                .collect()
        } else {
            values
                .iter()
                .map(|v| OsString::from(format!("--{key}={v}")))
                .collect()
        };
        if set_outside_the_file(node, arg) {
            every.extend(flags);
        } else if !conflicts_with_one_set(node_command, node, arg) {
            every.extend(flags.iter().cloned());
            ids.insert(arg.get_id().to_string());
            extra.extend(flags);
        }
    }
    // Each value meets its flag's own parser, overridden or not: after the flags given, where
    // a flag given twice takes the last value.
    command
        .clone()
        .mut_subcommand(NODE, |node| node.args_override_self(true))
        .try_get_matches_from(args.iter().cloned().chain(every))
        .map_err(|e| file_error(node_command, &path, &e))?;
    // The first parse took the flags and the environment, so what fails now is the file's.
    let matches = command
        .clone()
        .try_get_matches_from(args.into_iter().chain(extra))
        .map_err(|e| file_error(node_command, &path, &e))?;
    let exposed = secret && others_may_read(&path);
    Ok((matches, Some(FromFile { path, ids, exposed })))
}

/// clap's error about a setting of the file, on one line naming the key; a secret's value
/// is not quoted.
fn file_error(node: &Command, path: &Path, e: &clap::Error) -> Refused {
    // clap names the flag as `--key <VALUE>`.
    let arg = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(flag)) => flag
            .strip_prefix("--")
            .and_then(|f| f.split([' ', '=']).next())
            .and_then(|key| setting(node, key)),
        _ => None,
    };
    match arg {
        Some(arg)
            if is_secret(arg)
                && matches!(
                    e.kind(),
                    ErrorKind::InvalidValue | ErrorKind::ValueValidation
                ) =>
        {
            refuse(
                path,
                arg.get_long().unwrap_or("?"),
                "invalid value (a secret: not shown)",
            )
        }
        Some(arg) => refuse(
            path,
            arg.get_long().unwrap_or("?"),
            &one_line(&e.render().to_string()),
        ),
        None => Refused::File(format!(
            "config file {}: {}",
            path.display(),
            one_line(&e.render().to_string())
        )),
    }
}

/// `meshage node --print-config`: every setting of `node` as TOML, with where it came from;
/// secrets masked.
pub(crate) fn print(command: &Command, matches: &ArgMatches, file: Option<&FromFile>) -> String {
    let node_command = command.find_subcommand(NODE).expect("the node subcommand");
    let node = matches.subcommand_matches(NODE).expect("meshage node runs");
    let mut out = String::from(
        "# meshage node: the effective configuration (flags > environment > config file > defaults)\n",
    );
    if let Some(file) = file {
        let _ = writeln!(out, "# config file: {}", file.path.display());
    }
    for arg in node_command.get_arguments() {
        let Some(key) = arg.get_long().filter(|k| !NOT_SETTINGS.contains(k)) else {
            continue;
        };
        let id = arg.get_id().as_str();
        let from_file = file.is_some_and(|f| f.ids.contains(id));
        let mut values: Vec<String> = node
            .get_raw(id)
            .map(|raw| raw.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let mut source = match node.value_source(id) {
            _ if from_file => "config file".to_owned(),
            Some(ValueSource::CommandLine) => format!("--{key}"),
            Some(ValueSource::EnvVariable) => env_name(arg),
            _ => "default".to_owned(),
        };
        if !from_file
            && !matches!(
                node.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        {
            if let Some((var, value)) = alias_set(id) {
                values = value.split(',').map(str::to_owned).collect();
                source = var.to_owned();
            }
        }
        if values.is_empty() && !is_list(arg) {
            let _ = writeln!(out, "# {key}: not set");
            continue;
        }
        let value = if is_secret(arg) {
            toml_string("***")
        } else if is_list(arg) {
            let items: Vec<String> = values.iter().map(|v| toml_string(v)).collect();
            format!("[{}]", items.join(", "))
        } else {
            toml_scalar(&values[0])
        };
        let _ = writeln!(out, "{key} = {value}  # {source}");
    }
    out
}

/// The flag of `node` that `key` names, if it is a setting.
fn setting<'a>(node: &'a Command, key: &str) -> Option<&'a Arg> {
    if NOT_SETTINGS.contains(&key) {
        return None;
    }
    node.get_arguments()
        .find(|a| a.get_long() == Some(key) && !a.is_positional())
}

/// Whether the flag's value came from the command line or the environment, which beat the file.
fn set_outside_the_file(node: &ArgMatches, arg: &Arg) -> bool {
    let id = arg.get_id().as_str();
    matches!(
        node.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    ) || alias_set(id).is_some()
}

/// Whether a flag that conflicts with `arg` (`--keyring` and `--cluster-key`) was set by the
/// command line or the environment: then the file's `arg` gives way to it.
fn conflicts_with_one_set(node_command: &Command, node: &ArgMatches, arg: &Arg) -> bool {
    let conflicts = |a: &Arg, b: &Arg| {
        node_command
            .get_arg_conflicts_with(a)
            .iter()
            .any(|c| c.get_id() == b.get_id())
    };
    node_command.get_arguments().any(|other| {
        (conflicts(arg, other) || conflicts(other, arg)) && set_outside_the_file(node, other)
    })
}

/// The second variable of flag `id`, if it is set and not empty.
fn alias_set(id: &str) -> Option<(&'static str, String)> {
    ENV_ALIASES
        .iter()
        .filter(|(flag, _)| *flag == id)
        .find_map(|(_, var)| {
            std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| (*var, v))
        })
}

fn env_name(arg: &Arg) -> String {
    arg.get_env().map_or_else(
        || "environment".to_owned(),
        |v| v.to_string_lossy().into_owned(),
    )
}

/// Secrets are the flags whose environment values `--help` hides.
fn is_secret(arg: &Arg) -> bool {
    arg.is_hide_env_values_set()
}

/// Whether the flag takes many values (repeatable, or a list with commas).
fn is_list(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
}

/// The file's value for `arg` as the texts a command line would give it.
fn values(arg: &Arg, value: &toml::Value) -> Result<Vec<String>, String> {
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        return match value {
            toml::Value::Boolean(b) => Ok(vec![b.to_string()]),
            _ => Err("takes true or false".to_owned()),
        };
    }
    match value {
        toml::Value::Array(items) if is_list(arg) => items.iter().map(scalar).collect(),
        toml::Value::Array(_) => Err("takes one value, not a list".to_owned()),
        other => scalar(other).map(|v| vec![v]),
    }
}

fn scalar(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Datetime(_) => Err("takes no date".to_owned()),
        toml::Value::Array(_) => Err("takes no nested list".to_owned()),
        toml::Value::Table(_) => {
            Err("takes no table: the file's keys are flags, not sections".to_owned())
        }
    }
}

/// Reads and parses the file, at most [`FILE_LIMIT`] bytes of it.
fn read(path: &Path) -> Result<toml::Table, Refused> {
    let cannot = |why: String| Refused::File(format!("config file {}: {why}", path.display()));
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(FILE_LIMIT + 1).read_to_string(&mut text))
        .map_err(|e| cannot(format!("cannot read it: {e}")))?;
    if text.len() as u64 > FILE_LIMIT {
        return Err(cannot(format!("larger than {FILE_LIMIT} bytes")));
    }
    text.parse::<toml::Table>().map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
            .map_or(String::new(), |l| format!("line {l}: "));
        cannot(format!("{line}not TOML: {}", one_line(e.message())))
    })
}

/// Whether the file's mode lets its group or other users read it.
fn others_may_read(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o044 != 0)
}

fn refuse(path: &Path, key: &str, why: &str) -> Refused {
    Refused::File(format!(
        "config file {}: key `{key}`: {why}",
        path.display()
    ))
}

/// clap's rendered error on one line: its message and tips, without the usage; a line that
/// ends in `:` runs on into the next.
pub(crate) fn one_line(rendered: &str) -> String {
    let mut line = String::new();
    for part in rendered
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Usage:"))
        .filter(|l| !l.starts_with("For more information"))
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
    {
        if !line.is_empty() {
            line.push_str(if line.ends_with(':') { " " } else { "; " });
        }
        line.push_str(part);
    }
    line
}

/// A TOML value for a flag's text: a number or boolean as such, anything else a string.
fn toml_scalar(text: &str) -> String {
    let numeric = text.parse::<i64>().is_ok()
        || (text.parse::<f64>().is_ok_and(f64::is_finite)
            && text.chars().all(|c| c.is_ascii_digit() || c == '.'));
    if numeric || text == "true" || text == "false" {
        text.to_owned()
    } else {
        toml_string(text)
    }
}

/// A TOML basic string (JSON's escapes are TOML's, but for DEL).
fn toml_string(text: &str) -> String {
    serde_json::to_string(text)
        .expect("a string serializes")
        .replace('\u{7f}', "\\u007F")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_values_read_back_as_they_were() {
        for text in [
            "8080",
            "1.5",
            "find",
            "127.0.0.1",
            "a \"quoted\"\\ \u{7f}\n",
            "true",
            "-3",
            "1e5",
        ] {
            let line = format!("k = {}", toml_scalar(text));
            let table: toml::Table = line.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(scalar(&table["k"]).unwrap(), text, "{line}");
        }
    }

    #[test]
    fn clap_errors_fold_onto_one_line() {
        let rendered = "error: unexpected argument '--ech' found\n\n  tip: a similar argument exists: '--echo'\n\nUsage: meshage node --echo <STREAM>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line(rendered),
            "unexpected argument '--ech' found; tip: a similar argument exists: '--echo'"
        );
        let rendered = "error: the following required arguments were not provided:\n  <STREAM>\n  <KEY>\n\nUsage: meshage send <STREAM> <KEY>\n";
        assert_eq!(
            one_line(rendered),
            "the following required arguments were not provided: <STREAM>; <KEY>"
        );
    }
}
