//! Loading job files (TOML and YAML) with spans and miette diagnostics.
//!
//! [`load_file`] reads and deserializes one file into a [`LoadedFile`]: the typed
//! [`JobFile`], its text (for diagnostics) and a [`SpanNode`] tree so that later,
//! semantic errors point at the right line. Syntax and type errors come from the parser
//! with their exact span; messages are rewritten to say what would be valid.

use super::error::{did_you_mean, into_reports, Source, SpecError};
use super::span::{path_string, toml_spans, yaml_spans, Seg, SpanNode};
use super::types::{BackendKind, JobFile, Lang};
use std::path::{Path, PathBuf};

/// The syntax of a job file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Yaml,
}

impl Format {
    /// By extension: `.toml`, `.yaml`, `.yml`.
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "toml" => Some(Format::Toml),
            "yaml" | "yml" => Some(Format::Yaml),
            _ => None,
        }
    }
}

/// Whether `path` has a job-file extension.
pub fn is_job_file(path: &Path) -> bool {
    Format::from_path(path).is_some()
}

/// A parsed job file with everything needed to report errors into it.
#[derive(Debug, Clone)]
pub struct LoadedFile {
    /// As given (relative when it was relative).
    pub path: PathBuf,
    /// The folder relative paths in the file are resolved against.
    pub dir: PathBuf,
    pub format: Format,
    pub source: Source,
    pub spec: JobFile,
    pub spans: SpanNode,
}

impl LoadedFile {
    /// The span of the node at `path` (value span, or key span when `key`).
    pub fn span_of(&self, path: &[Seg], key: bool) -> Option<std::ops::Range<usize>> {
        let n = self.spans.lookup(path)?;
        if key {
            n.key_span.clone().or_else(|| Some(n.span.clone()))
        } else {
            Some(n.span.clone())
        }
    }
}

/// Reads and parses one job file. Errors are rendered diagnostics (file:line:col).
pub fn load_file(path: &Path) -> Result<LoadedFile, Vec<miette::Report>> {
    load_file_diag(path).map_err(|e| into_reports(vec![e]))
}

/// Like [`load_file`], with the typed error.
pub fn load_file_diag(path: &Path) -> Result<LoadedFile, SpecError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SpecError::msg(format!("{}: cannot read job file: {e}", path.display())))?;
    parse_source(path, text)
}

/// Parses job-file text that was read from `path` (the extension picks the format).
pub fn parse_source(path: &Path, text: String) -> Result<LoadedFile, SpecError> {
    let format = Format::from_path(path).ok_or_else(|| {
        SpecError::msg(format!(
            "{}: not a job file: the extension must be .toml, .yaml or .yml",
            path.display()
        ))
    })?;
    let source = Source::from_path(path, text);
    let text = source.text();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (spec, spans) = match format {
        Format::Toml => parse_toml(&source, text)?,
        Format::Yaml => parse_yaml(&source, text)?,
    };
    Ok(LoadedFile {
        path: path.to_path_buf(),
        dir,
        format,
        source,
        spec,
        spans,
    })
}

fn parse_toml(source: &Source, text: &str) -> Result<(JobFile, SpanNode), SpecError> {
    match toml::from_str::<JobFile>(text) {
        Ok(spec) => {
            let spans = toml_spans(text).unwrap_or_default();
            Ok((spec, spans))
        }
        Err(e) => {
            let span = e.span();
            match toml_spans(text) {
                None => Err(SpecError::at(
                    source,
                    span,
                    format!("TOML syntax error: {}", e.message().trim()),
                    Some("here".into()),
                )
                .with_help("see https://toml.io for the syntax; strings need quotes, tables are [name], lists of jobs are [[jobs]]")),
                Some(tree) => {
                    let path = span
                        .as_ref()
                        .map(|s| tree.path_at(s.start))
                        .unwrap_or_default();
                    Err(data_error(source, span, e.message(), &path))
                }
            }
        }
    }
}

/// YAML 1.2 semantics (only `true`/`false` are booleans: `y`, `no`, `on` stay strings),
/// duplicate keys rejected, errors without pre-rendered snippets (miette renders them).
pub fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::Options {
        with_snippet: false,
        strict_booleans: true,
        ..Default::default()
    }
}

fn yaml_is_empty(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t == "---" || t == "..."
    })
}

fn parse_yaml(source: &Source, text: &str) -> Result<(JobFile, SpanNode), SpecError> {
    if yaml_is_empty(text) {
        return Ok((JobFile::default(), SpanNode::default()));
    }
    match serde_saphyr::from_str_with_options::<JobFile>(text, yaml_options()) {
        Ok(spec) => {
            let spans = yaml_spans(text).unwrap_or_default();
            Ok((spec, spans))
        }
        Err(e) => {
            let e = e.without_snippet();
            let span = e.location().map(|l| {
                let s = l.span();
                if s.offset() == 0 && s.len() == 0 && (l.line() > 1 || l.column() > 1) {
                    let o = source.offset_of(l.line() as usize, l.column() as usize);
                    o..o
                } else {
                    s.offset()..s.offset() + s.len()
                }
            });
            let msg = yaml_message(e);
            if let Some(key) = msg.strip_prefix("duplicate mapping key: ") {
                return Err(SpecError::at(
                    source,
                    span,
                    format!("duplicate key `{key}`: a YAML mapping may set each key only once"),
                    Some("set again here".into()),
                )
                .with_help(format!("remove one of the `{key}` entries")));
            }
            match yaml_spans(text) {
                None => Err(SpecError::at(
                    source,
                    span,
                    format!("YAML syntax error: {msg}"),
                    Some("here".into()),
                )
                .with_help("check indentation (spaces only) and quoting; a list of jobs is `jobs:` followed by `- name: ...` items")),
                Some(tree) => {
                    // serde-saphyr's custom errors (unknown field/variant, units) carry
                    // no location: find the offending key or value in the tree.
                    let span = span.or_else(|| locate(&tree, text, &msg));
                    let path = span
                        .as_ref()
                        .map(|s| tree.path_at(s.start))
                        .unwrap_or_default();
                    Err(data_error(source, span, &msg, &path))
                }
            }
        }
    }
}

/// The span of the key (for "unknown field") or value the message quotes.
fn locate(tree: &SpanNode, text: &str, msg: &str) -> Option<std::ops::Range<usize>> {
    let (token, key) = if let Some(rest) = msg.strip_prefix("unknown field ") {
        (backticked(rest).into_iter().next()?, true)
    } else if let Some(rest) = msg.strip_prefix("unknown variant ") {
        (backticked(rest).into_iter().next()?, false)
    } else {
        // The first "quoted" value of the message (units errors quote the value), else the
        // first `backticked` one (the value a custom check names first, e.g. a module name).
        let mut parts = msg.split('"');
        parts.next();
        match parts.next() {
            Some(quoted) => (quoted.to_string(), false),
            None => (backticked(msg).into_iter().next()?, false),
        }
    };
    if token.is_empty() {
        return None;
    }
    find_node(tree, text, &token, key)
}

fn find_node(n: &SpanNode, text: &str, token: &str, key: bool) -> Option<std::ops::Range<usize>> {
    use super::span::Children;
    match &n.children {
        Children::Leaf => {
            if key {
                return None;
            }
            let all = text.get(n.span.start..)?;
            let rest = all.strip_prefix(['"', '\'']).unwrap_or(all);
            // (past the opening quote of a quoted value)
            let start = n.span.start + (all.len() - rest.len());
            rest.starts_with(token).then(|| start..start + token.len())
        }
        Children::Map(m) => m.iter().find_map(|(k, v)| {
            if key && k == token {
                if let Some(ks) = &v.key_span {
                    return Some(ks.start..ks.start + k.len());
                }
            }
            find_node(v, text, token, key)
        }),
        Children::Seq(v) => v.iter().find_map(|c| find_node(c, text, token, key)),
    }
}

fn yaml_message(e: &serde_saphyr::Error) -> String {
    use serde_saphyr::Error as E;
    match e {
        E::Message { msg, .. } | E::HookError { msg, .. } => msg.clone(),
        E::Eof { .. } => "unexpected end of input".into(),
        E::Unexpected { expected, .. } => format!("unexpected value: expected {expected}"),
        E::ContainerEndMismatch { .. } => "list or mapping end with no start".into(),
        E::UnknownAnchor { id, .. } => format!("alias references unknown anchor id {id}"),
        E::QuotingRequired { value, .. } => format!("the string value `{value}` must be quoted"),
        other => {
            // Strip the " at line X, column Y" suffix: the label shows the location.
            let s = other.to_string();
            match s.rfind(" at line ") {
                Some(i) => s[..i].to_string(),
                None => s,
            }
        }
    }
}

/// Whether `key` is one of `expect`'s keys, asked of its own deserializer (its keys are
/// listed once, in `Expect`): only a key it does not know gives "unknown field".
fn is_expect_key(key: &str) -> bool {
    let one = serde_json::json!({ key: null });
    match serde_json::from_value::<crate::spec::types::Expect>(one) {
        Ok(_) => true,
        Err(e) => !e.to_string().starts_with("unknown field"),
    }
}

/// Words in backticks: "expected one of `a`, `b`" → [a, b].
fn backticked(s: &str) -> Vec<String> {
    s.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, w)| w.to_string())
        .collect()
}

/// A help line per field: what would be valid.
pub fn field_help(field: &str) -> Option<String> {
    let langs = Lang::ALL.map(|l| l.as_str()).join(", ");
    let backends = BackendKind::ALL.map(|b| b.as_str()).join(", ");
    Some(match field {
        "lang" => format!("valid languages: {langs}"),
        "backend" => format!("valid backends: {backends}"),
        "matrix" => "`matrix` is a table of non-empty lists, e.g. matrix = { n = [1, 2], mode = [\"a\", \"b\"] }".into(),
        "files" => "`files` is a list of paths (globs allowed) or { src = \"...\", dest = \"...\" } tables".into(),
        "libraries" | "artifacts" | "args" | "tags" => format!("`{field}` is a list of strings"),
        "setup" => "`setup` is a shell command or a list of commands".into(),
        "skip" => "`skip` is true, false or a reason string".into(),
        "env" => "`env` is a table of string values, e.g. env = { MODE = \"fast\" }".into(),
        "stdout_contains" | "stderr_contains" | "contains" => format!("`{field}` is a string or a list of strings"),
        "timeout" | "cpu_time" => "a duration such as \"500ms\", \"10s\", \"2m\"".into(),
        "memory" | "output" | "disk" => "a size such as \"512MiB\", \"64MB\" or a number of bytes".into(),
        "pod_manifest" => "a path to a YAML/JSON Pod manifest, or the manifest inline".into(),
        "exit_code" => "an integer exit code".into(),
        "network" | "keep_template" | "exists" => format!("`{field}` is true or false"),
        "cpus" => "a number of CPUs, e.g. 1.0 or 0.5".into(),
        "pids" | "open_files" => format!("`{field}` is a positive integer"),
        "vars" => "`vars` is a table of template variables".into(),
        "jobs" => "`jobs` is a list of tables: [[jobs]] in TOML, `jobs:` with `- name: ...` items in YAML".into(),
        _ => return None,
    })
}

fn last_key(path: &[Seg]) -> Option<&str> {
    path.iter().rev().find_map(|s| match s {
        Seg::Key(k) => Some(k.as_str()),
        Seg::Idx(_) => None,
    })
}

/// Describes the job a path points into: "jobs[2]".
fn where_(path: &[Seg]) -> String {
    if path.is_empty() {
        "the top level".into()
    } else {
        format!("`{}`", path_string(path))
    }
}

/// A deserialization error (valid syntax, wrong data) rewritten to say what is valid.
fn data_error(
    source: &Source,
    span: Option<std::ops::Range<usize>>,
    msg: &str,
    path: &[Seg],
) -> SpecError {
    let msg = msg.trim();
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        let words = backticked(rest);
        let unknown = words.first().cloned().unwrap_or_default();
        let known: Vec<&str> = words.iter().skip(1).map(|s| s.as_str()).collect();
        // The path may end at the unknown key itself.
        let parent = match path.last() {
            Some(Seg::Key(k)) if *k == unknown => &path[..path.len() - 1],
            _ => path,
        };
        let label = match did_you_mean(&unknown, known.iter().copied()) {
            // A check written beside `expect` instead of in it (`stdout = "3"` in a case).
            _ if known.contains(&"expect") && is_expect_key(&unknown) => {
                format!("did you mean `expect.{unknown}`?")
            }
            Some(s) => format!("did you mean `{s}`?"),
            None => "unknown key".into(),
        };
        let help = if known.is_empty() {
            "this table takes no keys".to_string()
        } else {
            format!("known keys: {}", known.join(", "))
        };
        return SpecError::at(
            source,
            span,
            format!("unknown key `{unknown}` in {}", where_(parent)),
            Some(label),
        )
        .with_help(help);
    }
    if let Some(rest) = msg.strip_prefix("unknown variant ") {
        let words = backticked(rest);
        let unknown = words.first().cloned().unwrap_or_default();
        let known: Vec<&str> = words.iter().skip(1).map(|s| s.as_str()).collect();
        let what = match last_key(path) {
            Some("lang") => "language",
            Some("backend") => "backend",
            _ => "value",
        };
        let label = match did_you_mean(&unknown, known.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("unknown {what}"),
        };
        return SpecError::at(
            source,
            span,
            format!("unknown {what} `{unknown}` in {}", where_(path)),
            Some(label),
        )
        .with_help(format!("valid {what}s: {}", known.join(", ")));
    }
    let field = last_key(path).unwrap_or("");
    let mut text = msg.to_string();
    if let Some(name) = msg.strip_prefix("data did not match any variant of untagged enum ") {
        text = match name.trim() {
            "FileSpec" => {
                "expected a path string or a table { src = \"...\", dest = \"...\" }".into()
            }
            "OneOrMany" => "expected a string or a list of strings".into(),
            "Skip" => "expected true, false or a reason string".into(),
            "PodManifest" => "expected a path string or an inline Pod manifest (a table)".into(),
            other => format!("unexpected value (expected {other})"),
        };
    }
    if let Some(f) = msg.strip_prefix("missing field ") {
        text = format!("missing required key {f}");
    }
    let mut err = SpecError::at(
        source,
        span,
        format!("invalid value for {}: {text}", where_(path)),
        Some(
            text.lines()
                .next()
                .unwrap_or("")
                .split("; expected")
                .next()
                .unwrap_or("")
                .to_string(),
        ),
    );
    if let Some(h) = field_help(field) {
        err = err.with_help(h);
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(name: &str, text: &str) -> String {
        let e = parse_source(Path::new(name), text.to_string()).unwrap_err();
        let mut out = String::new();
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .with_wrap_lines(false)
            .render_report(&mut out, &e)
            .unwrap();
        out
    }

    #[test]
    fn toml_unknown_key() {
        let out = err(
            "a.toml",
            "[[jobs]]\nname = \"x\"\nlang = \"python\"\nnmae = \"y\"\n",
        );
        assert!(out.contains("a.toml:4:1"), "{out}");
        assert!(out.contains("did you mean `name`?"), "{out}");
        assert!(out.contains("known keys"), "{out}");
    }

    #[test]
    fn yaml_unknown_lang() {
        let out = err("a.yaml", "jobs:\n  - name: x\n    lang: pyhton\n");
        assert!(out.contains("a.yaml:3:11"), "{out}");
        assert!(out.contains("did you mean `python`?"), "{out}");
        assert!(out.contains("unknown language"), "{out}");
    }

    #[test]
    fn yaml_duplicate_key() {
        let out = err("d.yaml", "jobs:\n  - name: x\n    name: y\n");
        assert!(out.contains("duplicate key `name`"), "{out}");
        assert!(out.contains("d.yaml:3:"), "{out}");
    }

    #[test]
    fn yaml_bad_module_name_is_located() {
        let out = err(
            "m.yaml",
            "backends:\n  native:\n    preload:\n      modules: [typing, bad-name]\njobs: []\n",
        );
        assert!(out.contains("m.yaml:4:"), "{out}");
        assert!(out.contains("backends.native.preload.modules"), "{out}");
        assert!(
            out.contains("`bad-name` is not a Python module name"),
            "{out}"
        );
    }

    #[test]
    fn yaml_unknown_key() {
        let out = err(
            "u.yml",
            "jobs:\n  - name: x\n    lang: python\n    cde: y\n",
        );
        assert!(out.contains("u.yml:4:5"), "{out}");
        assert!(out.contains("did you mean `code`?"), "{out}");
    }

    #[test]
    fn schema_comments() {
        parse_source(
            Path::new("s.yaml"),
            "# yaml-language-server: $schema=../schemas/job.schema.json\njobs: []\n".into(),
        )
        .unwrap();
        parse_source(
            Path::new("s.toml"),
            "#:schema ../schemas/job.schema.json\njobs = []\n".into(),
        )
        .unwrap();
    }
}
