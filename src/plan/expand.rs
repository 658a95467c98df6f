//! From job files to [`Plan`]: path resolution, defaults merge, validation, matrix and
//! dataset expansion, minijinja rendering, name uniqueness and `--filter`.
//!
//! Every error is a [`SpecError`] naming the file, the job (index and name), the field,
//! and the line:col where one exists; all errors of all files are collected.

mod cases;
mod dataset;
mod validate;

use super::job::{
    FileCheck, InputFile, PlannedJob, ResolvedExpect, ResolvedLimits, SharedBackends,
};
use super::{Plan, PlanOptions};
use crate::spec::error::{did_you_mean, into_reports, Source, SpecError};
use crate::spec::load::{is_job_file, load_file_diag, LoadedFile};
use crate::spec::span::{path_string, Seg};
use crate::spec::types::{
    BackendKind, CasesSpec, Expect, FileExpect, JobSpec, Lang, Limits, OneOrMany, PodManifest, Skip,
};
use minijinja::value::{merge_maps, Value};
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use rayon::prelude::*;
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use dataset::load_dataset;
pub use validate::{check_library_name, check_workdir_path};

/// Plans every job file found under `paths` (files, or directories searched
/// recursively). All errors of all files are returned, each a rendered diagnostic.
pub fn plan_paths(paths: &[PathBuf], opts: &PlanOptions) -> Result<Plan, Vec<miette::Report>> {
    plan_paths_diag(paths, opts).map_err(into_reports)
}

/// Plans a single job file on its own (for `watch`).
pub fn plan_file(path: &Path, opts: &PlanOptions) -> Result<Plan, Vec<miette::Report>> {
    plan_paths(&[path.to_path_buf()], opts)
}

/// [`plan_paths`] with typed errors.
pub fn plan_paths_diag(paths: &[PathBuf], opts: &PlanOptions) -> Result<Plan, Vec<SpecError>> {
    let files = resolve_paths(paths)?;
    let results: Vec<Result<LoadedFile, SpecError>> =
        files.par_iter().map(|p| load_file_diag(p)).collect();
    let mut errors = vec![];
    let mut loaded = vec![];
    for r in results {
        match r {
            Ok(f) => loaded.push(f),
            Err(e) => errors.push(e),
        }
    }
    match plan_loaded(&loaded, opts) {
        Ok(mut plan) if errors.is_empty() => {
            plan.files = files;
            plan.warnings = unused_vars(&loaded, opts);
            Ok(plan)
        }
        Ok(_) => Err(errors),
        Err(mut e) => {
            errors.append(&mut e);
            Err(errors)
        }
    }
}

/// `--var` names no job file uses: defined in no file's `[vars]` and written in no job
/// file or template file (a typo would otherwise be silently ignored).
fn unused_vars(loaded: &[LoadedFile], opts: &PlanOptions) -> Vec<String> {
    if opts.vars.is_empty() {
        return Vec::new();
    }
    let mut texts: Vec<String> = Vec::new();
    for lf in loaded {
        texts.push(lf.source.text().to_string());
        for j in lf.spec.jobs.iter().chain(lf.spec.defaults.iter()) {
            if let Some(t) = &j.template_file {
                texts.extend(std::fs::read_to_string(lf.dir.join(t)).ok());
            }
        }
    }
    let defined: std::collections::BTreeSet<&String> =
        loaded.iter().flat_map(|lf| lf.spec.vars.keys()).collect();
    let used = |name: &str| {
        texts.iter().any(|t| {
            t.match_indices(name).any(|(i, _)| {
                let word = |c: char| c.is_alphanumeric() || c == '_';
                !t[..i].chars().next_back().is_some_and(word)
                    && !t[i + name.len()..].chars().next().is_some_and(word)
            })
        })
    };
    opts.vars
        .iter()
        .filter(|(k, _)| !defined.contains(k) && !used(k))
        .map(|(k, _)| {
            format!(
                "--var {k}: no job file uses a variable `{k}` (the variables they define: {})",
                if defined.is_empty() {
                    "none".to_string()
                } else {
                    defined
                        .iter()
                        .map(|d| d.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )
        })
        .collect()
}

/// The job files named by `paths`: files as given, directories walked recursively in
/// sorted order (hidden folders and `target/` skipped). Duplicates are dropped.
pub fn resolve_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Vec<SpecError>> {
    let mut out: Vec<PathBuf> = vec![];
    let mut errors = vec![];
    for p in paths {
        let meta = match std::fs::metadata(p) {
            Ok(m) => m,
            Err(e) => {
                errors.push(
                    SpecError::msg(match e.kind() {
                        std::io::ErrorKind::NotFound => format!("{}: no such file or directory", p.display()),
                        _ => format!("{}: cannot read it: {e}", p.display()),
                    })
                        .with_help("give job files (.toml, .yaml, .yml) or directories containing them; the default is ./jobs"),
                );
                continue;
            }
        };
        if meta.is_dir() {
            let mut found = vec![];
            if let Err(e) = walk_dir(p, &mut found) {
                errors.push(SpecError::msg(format!(
                    "{}: cannot read directory: {e}",
                    p.display()
                )));
                continue;
            }
            if found.is_empty() {
                errors.push(
                    SpecError::msg(format!("{}: directory contains no job files", p.display()))
                        .with_help("job files end in .toml, .yaml or .yml"),
                );
            }
            found.sort();
            for f in found {
                if !out.contains(&f) {
                    out.push(f);
                }
            }
        } else if is_job_file(p) {
            if !out.contains(p) {
                out.push(p.clone());
            }
        } else {
            errors.push(SpecError::msg(format!(
                "{}: not a job file: the extension must be .toml, .yaml or .yml",
                p.display()
            )));
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn walk_dir(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let ft = e.file_type()?;
        let path = e.path();
        if ft.is_dir() {
            if name.starts_with('.') || name == "target" {
                continue;
            }
            walk_dir(&path, out)?;
        } else if (ft.is_file() || ft.is_symlink()) && is_job_file(&path) && path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// Where a planned job came from (for duplicate-name errors).
#[derive(Debug, Clone, Copy)]
struct Origin {
    file: usize,
    job: usize,
}

/// Plans already-loaded files: expansion, rendering, uniqueness and filters.
pub fn plan_loaded(files: &[LoadedFile], opts: &PlanOptions) -> Result<Plan, Vec<SpecError>> {
    let mut errors = vec![];
    let mut jobs: Vec<PlannedJob> = vec![];
    let mut origins: Vec<Origin> = vec![];
    let filters = match Filters::new(&opts.filters) {
        Ok(f) => Some(f),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    for (fi, lf) in files.iter().enumerate() {
        let (mut js, jis, mut errs) = expand_file(lf, opts);
        errors.append(&mut errs);
        origins.extend(jis.into_iter().map(|ji| Origin { file: fi, job: ji }));
        if jobs.is_empty() {
            jobs = js;
        } else {
            jobs.append(&mut js);
        }
    }
    errors.extend(duplicate_names(files, &jobs, &origins));
    if !errors.is_empty() {
        return Err(errors);
    }
    let total = jobs.len();
    let filters = filters.expect("no filter error");
    let mut selected: Vec<PlannedJob> = jobs.into_iter().filter(|j| filters.matches(j)).collect();
    if total > 0 && selected.is_empty() && !opts.filters.is_empty() {
        let shown: Vec<String> = opts.filters.iter().map(|f| format!("`{f}`")).collect();
        return Err(vec![SpecError::msg(format!(
            "no job matches the filters {} ({total} jobs in the files)",
            shown.join(", ")
        ))
        .with_help("a filter is a glob on job names (`add-*`) or `tag:NAME`, any of which selects; `!GLOB` and `!tag:NAME` exclude; `llm-sandbox plan` lists the names")]);
    }
    let job_set = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for j in &selected {
            h.update(j.name.as_bytes());
            h.update([0]);
        }
        h.finalize()
            .iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    if let Some(shard) = opts.shard {
        selected.retain(|j| shard.holds(&j.name));
    }
    for (i, j) in selected.iter_mut().enumerate() {
        j.id = i;
    }
    Ok(Plan {
        jobs: selected,
        files: files.iter().map(|f| f.path.clone()).collect(),
        total_before_filter: total,
        warnings: Vec::new(),
        job_set,
        shard: opts.shard,
    })
}

/// `--filter`: `tag:NAME` or a glob on the job name; any match selects (every job when
/// there is none); `!EXPR` excludes what it matches.
struct Filters {
    include: Selector,
    exclude: Selector,
}

struct Selector {
    tags: Vec<String>,
    globs: Option<globset::GlobSet>,
    empty: bool,
}

impl Filters {
    fn new(exprs: &[String]) -> Result<Filters, SpecError> {
        let (ex, inc): (Vec<String>, Vec<String>) =
            exprs.iter().cloned().partition(|e| e.starts_with('!'));
        let ex: Vec<String> = ex.iter().map(|e| e[1..].to_string()).collect();
        Ok(Filters {
            include: Selector::new(&inc)?,
            exclude: Selector::new(&ex)?,
        })
    }

    fn matches(&self, j: &PlannedJob) -> bool {
        (self.include.empty || self.include.matches(j))
            && (self.exclude.empty || !self.exclude.matches(j))
    }
}

impl Selector {
    fn new(exprs: &[String]) -> Result<Selector, SpecError> {
        let mut tags = vec![];
        let mut b = globset::GlobSetBuilder::new();
        let mut any_glob = false;
        for e in exprs {
            if let Some(t) = e.strip_prefix("tag:") {
                tags.push(t.to_string());
            } else {
                let g = globset::GlobBuilder::new(e)
                    .literal_separator(false)
                    .build()
                    .map_err(|err| {
                        SpecError::msg(format!("invalid --filter `{e}`: {err}")).with_help(
                            "a filter is a glob on job names (e.g. `add-*`) or `tag:NAME`; `!` before one excludes",
                        )
                    })?;
                b.add(g);
                any_glob = true;
            }
        }
        let globs = if any_glob {
            Some(
                b.build()
                    .map_err(|e| SpecError::msg(format!("invalid --filter: {e}")))?,
            )
        } else {
            None
        };
        Ok(Selector {
            empty: exprs.is_empty(),
            tags,
            globs,
        })
    }

    fn matches(&self, j: &PlannedJob) -> bool {
        self.tags.iter().any(|t| j.tags.contains(t))
            || self.globs.as_ref().is_some_and(|g| g.is_match(&j.name))
    }
}

fn duplicate_names(
    files: &[LoadedFile],
    jobs: &[PlannedJob],
    origins: &[Origin],
) -> Vec<SpecError> {
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(jobs.len());
    // (file, job) of the duplicate → (first duplicate, count)
    let mut dups: indexmap::IndexMap<(usize, usize), (usize, usize, usize)> = Default::default();
    for (i, j) in jobs.iter().enumerate() {
        if let Some(&first) = seen.get(j.name.as_str()) {
            let o = origins[i];
            dups.entry((o.file, o.job))
                .and_modify(|e| e.2 += 1)
                .or_insert((i, first, 1));
        } else {
            seen.insert(&j.name, i);
        }
    }
    dups.into_iter()
        .map(|((fi, ji), (i, first, count))| {
            let lf = &files[fi];
            let of = origins[first];
            let flf = &files[of.file];
            let (span, _) = name_span(lf, ji);
            let (fspan, _) = name_span(flf, of.job);
            let first_loc = match &fspan {
                Some(s) => flf.source.location(s.start),
                None => flf.path.display().to_string(),
            };
            let more = if count > 1 {
                format!(" ({} more duplicate names from this job)", count - 1)
            } else {
                String::new()
            };
            if of.file == fi && of.job == ji {
                return SpecError::at(
                    &lf.source,
                    span,
                    format!(
                        "duplicate job name `{}`: jobs[{ji}] expands to it more than once{more}",
                        jobs[i].name
                    ),
                    Some("not unique across rows/combinations".into()),
                )
                .with_help("job names must be unique after expansion; put {{ index }} or every matrix key in the name");
            }
            let mut e = SpecError::at(
                &lf.source,
                span,
                format!(
                    "duplicate job name `{}` (jobs[{ji}]): already used by jobs[{}] at {first_loc}{more}",
                    jobs[i].name, of.job
                ),
                Some("duplicate name".into()),
            )
            .with_help("job names must be unique after expansion; put {{ index }} or matrix/row values in the name");
            // In the same file, the first use is shown beside it (in another, the message
            // names its place: a second report of its own would read as a second error).
            if of.file == fi {
                if let Some(fspan) = fspan {
                    e.labels
                        .push((flf.source.widen(fspan), Some("first used here".into())));
                }
            }
            e
        })
        .collect()
}

fn name_span(lf: &LoadedFile, ji: usize) -> (Option<Range<usize>>, bool) {
    let jp = [
        Seg::Key("jobs".into()),
        Seg::Idx(ji),
        Seg::Key("name".into()),
    ];
    if let Some(s) = lf.span_of(&jp, false) {
        return (Some(s), true);
    }
    if let Some(s) = lf.span_of(
        &[Seg::Key("defaults".into()), Seg::Key("name".into())],
        false,
    ) {
        return (Some(s), false);
    }
    (lf.span_of(&jp[..2], false), false)
}

/// Expands one file: its planned jobs, the index of each one's `[[jobs]]` entry, and errors.
pub fn expand_file(
    lf: &LoadedFile,
    opts: &PlanOptions,
) -> (Vec<PlannedJob>, Vec<usize>, Vec<SpecError>) {
    let cx = FileCx::new(lf, opts);
    let mut errors = vec![];
    let mut out: Vec<PlannedJob> = vec![];
    let mut origins = vec![];
    if lf.spec.jobs.is_empty() {
        errors.push(
            SpecError::at(&lf.source, None, "no jobs in this file", None).with_help(
                "add jobs: [[jobs]] tables in TOML, or `jobs:` with `- name: ...` items in YAML",
            ),
        );
    }
    let defaults = lf.spec.defaults.clone().unwrap_or_default();
    for (ji, job) in lf.spec.jobs.iter().enumerate() {
        let merged = merge(&defaults, job);
        let (mut jobs, mut errs) = cx.expand_job(ji, &merged);
        errors.append(&mut errs);
        origins.resize(origins.len() + jobs.len(), ji);
        if out.is_empty() {
            out = jobs;
        } else {
            out.append(&mut jobs);
        }
    }
    (out, origins, errors)
}

/// `[defaults]` merged into a job, field by field; `env`, `limits`, `expect` one level deep.
pub fn merge(d: &JobSpec, j: &JobSpec) -> JobSpec {
    macro_rules! pick {
        ($f:ident) => {
            j.$f.clone().or_else(|| d.$f.clone())
        };
    }
    let env = match (&d.env, &j.env) {
        (Some(a), Some(b)) => {
            let mut m = a.clone();
            for (k, v) in b {
                m.insert(k.clone(), v.clone());
            }
            Some(m)
        }
        _ => pick!(env),
    };
    let limits = match (&d.limits, &j.limits) {
        (Some(a), Some(b)) => Some(Limits {
            memory: b.memory.or(a.memory),
            cpus: b.cpus.or(a.cpus),
            pids: b.pids.or(a.pids),
            output: b.output.or(a.output),
            disk: b.disk.or(a.disk),
            open_files: b.open_files.or(a.open_files),
            cpu_time: b.cpu_time.or(a.cpu_time),
        }),
        _ => pick!(limits),
    };
    let expect = match (&d.expect, &j.expect) {
        (Some(a), Some(b)) => Some(Expect {
            exit_code: b.exit_code.or(a.exit_code),
            stdout: b.stdout.clone().or_else(|| a.stdout.clone()),
            stdout_file: b.stdout_file.clone().or_else(|| a.stdout_file.clone()),
            stderr: b.stderr.clone().or_else(|| a.stderr.clone()),
            stdout_exact: b.stdout_exact.clone().or_else(|| a.stdout_exact.clone()),
            stdout_contains: b
                .stdout_contains
                .clone()
                .or_else(|| a.stdout_contains.clone()),
            stderr_contains: b
                .stderr_contains
                .clone()
                .or_else(|| a.stderr_contains.clone()),
            stdout_regex: b.stdout_regex.clone().or_else(|| a.stdout_regex.clone()),
            stderr_regex: b.stderr_regex.clone().or_else(|| a.stderr_regex.clone()),
            files: b.files.clone().or_else(|| a.files.clone()),
        }),
        _ => pick!(expect),
    };
    // A job's own program replaces the default's, whichever of the four it uses.
    let own_code = j.code.is_some()
        || j.code_file.is_some()
        || j.template.is_some()
        || j.template_file.is_some();
    let code_pick = |a: &Option<String>, b: &Option<String>| {
        if own_code {
            b.clone()
        } else {
            a.clone()
        }
    };
    // Likewise `image` and `dockerfile` exclude each other.
    let own_image = j.image.is_some() || j.dockerfile.is_some();
    let image_pick = |a: &Option<String>, b: &Option<String>| {
        if own_image {
            b.clone()
        } else {
            a.clone()
        }
    };
    JobSpec {
        name: pick!(name),
        lang: pick!(lang),
        backend: pick!(backend),
        image: image_pick(&d.image, &j.image),
        dockerfile: image_pick(&d.dockerfile, &j.dockerfile),
        keep_template: pick!(keep_template),
        libraries: pick!(libraries),
        setup: pick!(setup),
        files: pick!(files),
        code: code_pick(&d.code, &j.code),
        code_file: code_pick(&d.code_file, &j.code_file),
        template: code_pick(&d.template, &j.template),
        template_file: code_pick(&d.template_file, &j.template_file),
        args: pick!(args),
        stdin: pick!(stdin),
        env,
        timeout: pick!(timeout),
        limits,
        network: pick!(network),
        artifacts: pick!(artifacts),
        expect,
        matrix: pick!(matrix),
        dataset: pick!(dataset),
        group: pick!(group),
        tags: pick!(tags),
        skip: pick!(skip),
        pod_manifest: pick!(pod_manifest),
        cases: pick!(cases),
        compare: pick!(compare),
        cases_stop: pick!(cases_stop),
        checker: pick!(checker),
        interactor: pick!(interactor),
    }
}

/// Whether a string uses template syntax at all (literal strings are not rendered).
fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

fn new_env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_keep_trailing_newline(true);
    env.set_debug(false);
    env
}

/// Where a template string lives, for errors.
#[derive(Debug, Clone)]
enum TplLoc {
    /// A field of the job (relative path under `jobs[i]`, falling back to `defaults`).
    Field(Vec<Seg>),
    /// A whole file (`template_file`).
    File(Source),
}

/// A string field: literal or a compiled template.
#[derive(Debug, Clone)]
enum TStr {
    Lit(String),
    Tpl(usize),
}

struct Templates {
    env: Environment<'static>,
    /// Per template: (its source text, location, display name of the field).
    info: Vec<(String, TplLoc, String)>,
}

impl Templates {
    fn render(&self, t: &TStr, ctx: &Value) -> Result<String, (usize, minijinja::Error)> {
        match t {
            TStr::Lit(s) => Ok(s.clone()),
            TStr::Tpl(i) => {
                let tpl = self
                    .env
                    .get_template(&format!("t{i}"))
                    .map_err(|e| (*i, e))?;
                tpl.render(ctx).map_err(|e| (*i, e))
            }
        }
    }

    fn render_opt(
        &self,
        t: &Option<TStr>,
        ctx: &Value,
    ) -> Result<Option<String>, (usize, minijinja::Error)> {
        t.as_ref().map(|t| self.render(t, ctx)).transpose()
    }

    fn render_vec(
        &self,
        t: &[TStr],
        ctx: &Value,
    ) -> Result<Vec<String>, (usize, minijinja::Error)> {
        t.iter().map(|t| self.render(t, ctx)).collect()
    }
}

/// Templated `expect`.
#[derive(Debug, Clone, Default)]
struct ExpectT {
    exit_code: i32,
    stdout: Option<TStr>,
    stderr: Option<TStr>,
    stdout_exact: Option<TStr>,
    stdout_contains: Vec<TStr>,
    stderr_contains: Vec<TStr>,
    stdout_regex: Option<TStr>,
    stderr_regex: Option<TStr>,
    files: Vec<FileT>,
}

#[derive(Debug, Clone)]
struct FileT {
    path: TStr,
    exists: Option<bool>,
    equals: Option<TStr>,
    contains: Vec<TStr>,
    regex: Option<TStr>,
    json: Option<serde_json::Value>,
    sha256: Option<TStr>,
}

/// Everything rendered per row.
struct JobT {
    tpls: Templates,
    name: TStr,
    code: TStr,
    group: Option<TStr>,
    stdin: Option<TStr>,
    args: Vec<TStr>,
    env: Vec<(String, TStr)>,
    expect: ExpectT,
    /// `cases` as a template rendering to a JSON list of `{ input, output }`.
    cases: Option<TStr>,
}

/// `(index, (combination, matrix), (row number, row))` of one expanded job.
type RowVars = (usize, Option<(usize, Value)>, Option<(usize, Value)>);

/// Per-row variables.
struct Rows {
    matrix_keys: Vec<String>,
    matrix_vals: Vec<Vec<Value>>,
    dataset: Option<Arc<dataset::Dataset>>,
}

impl Rows {
    fn combos(&self) -> Option<usize> {
        if self.matrix_keys.is_empty() {
            None
        } else {
            Some(self.matrix_vals.iter().map(|v| v.len()).product())
        }
    }

    fn total(&self) -> usize {
        match (self.combos(), &self.dataset) {
            (None, None) => 1,
            (c, d) => c.unwrap_or(1) * d.as_ref().map(|d| d.len()).unwrap_or(1),
        }
    }

    fn expanded(&self) -> bool {
        self.combos().is_some() || self.dataset.is_some()
    }

    /// (index, matrix value, row value) of expanded position `k`; dataset rows outer,
    /// matrix combinations inner (last key fastest).
    fn at(&self, k: usize) -> RowVars {
        let combos = self.combos();
        let m = combos.unwrap_or(1);
        let (r, c) = (k / m, k % m);
        let matrix = combos.map(|_| {
            let mut rest = c;
            let mut vals = vec![Value::UNDEFINED; self.matrix_keys.len()];
            for i in (0..self.matrix_keys.len()).rev() {
                let n = self.matrix_vals[i].len();
                vals[i] = self.matrix_vals[i][rest % n].clone();
                rest /= n;
            }
            let v: Value = self
                .matrix_keys
                .iter()
                .map(|k| Value::from(k.as_str()))
                .zip(vals)
                .collect();
            (c, v)
        });
        let row = self.dataset.as_ref().map(|d| (r, d.row(r)));
        let index = if self.dataset.is_some() { r } else { c };
        (index, matrix, row)
    }

    fn describe(&self, k: usize) -> String {
        let (_, m, r) = self.at(k);
        let mut parts = vec![];
        if let (Some((ri, _)), Some(d)) = (&r, &self.dataset) {
            parts.push(format!("{} row {ri}", d.name));
        }
        if let Some((c, v)) = &m {
            parts.push(format!("matrix combination {c} {v}"));
        }
        parts.join(", ")
    }
}

/// Per-file state shared by its jobs.
struct FileCx<'a> {
    lf: &'a LoadedFile,
    opts: &'a PlanOptions,
    vars: Value,
    var_names: Vec<String>,
    backends: SharedBackends,
}

/// What a job's errors are labelled with.
struct JobRef<'a> {
    ji: usize,
    name: Option<&'a str>,
}

impl JobRef<'_> {
    fn describe(&self) -> String {
        match self.name {
            Some(n) => format!("jobs[{}] (`{n}`)", self.ji),
            None => format!("jobs[{}]", self.ji),
        }
    }
}

fn key(s: &str) -> Seg {
    Seg::Key(s.to_string())
}

/// Static parts of a job, validated.
struct Prepared {
    lang: Lang,
    backend: BackendKind,
    proto: PlannedJob,
}

impl<'a> FileCx<'a> {
    fn new(lf: &'a LoadedFile, opts: &'a PlanOptions) -> FileCx<'a> {
        let mut vars = lf.spec.vars.clone();
        for (k, v) in &opts.vars {
            vars.insert(k.clone(), serde_json::Value::String(v.clone()));
        }
        let var_names = vars.keys().cloned().collect();
        FileCx {
            lf,
            opts,
            vars: Value::from_serialize(&vars),
            var_names,
            backends: Arc::new(lf.spec.backends.clone().unwrap_or_default()),
        }
    }

    /// Span of a job field: the job's own, else `[defaults]`'s, else the nearest parent.
    fn span(&self, ji: usize, sub: &[Seg]) -> Option<Range<usize>> {
        self.span_kv(ji, sub, false)
    }

    fn span_kv(&self, ji: usize, sub: &[Seg], key_: bool) -> Option<Range<usize>> {
        for n in (1..=sub.len()).rev() {
            let mut jp = vec![key("jobs"), Seg::Idx(ji)];
            jp.extend_from_slice(&sub[..n]);
            if let Some(s) = self.lf.span_of(&jp, key_) {
                return Some(s);
            }
            let mut dp = vec![key("defaults")];
            dp.extend_from_slice(&sub[..n]);
            if let Some(s) = self.lf.span_of(&dp, key_) {
                return Some(s);
            }
        }
        let jp = [key("jobs"), Seg::Idx(ji)];
        let node = self.lf.spans.lookup(&jp)?;
        // The job's first line (`[[jobs]]` or `- name: ...`), not the whole table.
        let text = self.lf.source.text();
        let start = node.span.start.min(text.len());
        let eol = text[start..]
            .find('\n')
            .map(|i| start + i)
            .unwrap_or(text.len());
        Some(start..node.span.end.clamp(start, eol))
    }

    fn err(
        &self,
        job: &JobRef,
        sub: &[Seg],
        msg: impl AsRef<str>,
        label: impl Into<String>,
    ) -> SpecError {
        let field = if sub.is_empty() {
            String::new()
        } else {
            format!(" `{}`", path_string(sub))
        };
        SpecError::at(
            &self.lf.source,
            self.span(job.ji, sub),
            format!("{}{field}: {}", job.describe(), msg.as_ref()),
            Some(label.into()),
        )
    }

    fn resolve(&self, p: &str) -> PathBuf {
        super::deps::resolve_in(&self.lf.dir, p)
    }

    fn expand_job(&self, ji: usize, spec: &JobSpec) -> (Vec<PlannedJob>, Vec<SpecError>) {
        let mut errors = vec![];
        let job = JobRef {
            ji,
            name: spec.name.as_deref(),
        };
        // `expect.stdout_file`: the expected stdout read from its file.
        let read_expect;
        let spec = match spec.expect.as_ref().filter(|e| e.stdout_file.is_some()) {
            Some(e) => {
                let mut e = e.clone();
                self.resolve_stdout_file(&job, &[key("expect")], &mut e, &mut errors);
                read_expect = JobSpec {
                    expect: Some(e),
                    ..spec.clone()
                };
                &read_expect
            }
            None => spec,
        };
        let prepared = self.prepare(&job, spec, &mut errors);
        let rows = self.rows(&job, spec, &mut errors);
        let (Some(prepared), Some(rows)) = (prepared, rows) else {
            return (vec![], errors);
        };
        let Some(jt) = self.compile(&job, spec, &rows, &mut errors) else {
            return (vec![], errors);
        };
        let jobs = self.render_all(&job, &prepared, &rows, &jt, &mut errors);
        (jobs, errors)
    }

    /// Validates and resolves everything that is not rendered.
    fn prepare(
        &self,
        job: &JobRef,
        spec: &JobSpec,
        errors: &mut Vec<SpecError>,
    ) -> Option<Prepared> {
        let n0 = errors.len();
        if spec.name.is_none() {
            errors.push(
                self.err(job, &[], "missing `name`", "this job has no `name`")
                    .with_help("every job needs a unique `name`; it may be a template, e.g. name = \"add-{{ index }}\""),
            );
        }
        let langs = Lang::ALL.map(|l| l.as_str()).join(", ");
        if spec.lang.is_none() {
            errors.push(
                self.err(
                    job,
                    &[],
                    "missing `lang`",
                    "no `lang` here or in [defaults]",
                )
                .with_help(format!(
                    "set `lang` on the job or in [defaults]; valid languages: {langs}"
                )),
            );
        }
        let sources: Vec<&str> = [
            ("code", spec.code.is_some()),
            ("code_file", spec.code_file.is_some()),
            ("template", spec.template.is_some()),
            ("template_file", spec.template_file.is_some()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(n, _)| n)
        .collect();
        if sources.is_empty() {
            errors.push(
                self.err(
                    job,
                    &[],
                    "no program",
                    "none of `code`, `code_file`, `template`, `template_file`",
                )
                .with_help("set exactly one of `code`, `code_file`, `template` or `template_file`"),
            );
        } else if sources.len() > 1 {
            errors.push(
                self.err(
                    job,
                    &[key(sources[1])],
                    format!("`{}` and `{}` are both set", sources[0], sources[1]),
                    "second program source",
                )
                .with_help("set exactly one of `code`, `code_file`, `template` or `template_file`"),
            );
        }
        if spec.image.is_some() && spec.dockerfile.is_some() {
            errors.push(
                self.err(job, &[key("dockerfile")], "`image` and `dockerfile` are both set", "conflicts with `image`")
                    .with_help("use either a ready image (`image`) or a Dockerfile to build one (`dockerfile`), not both"),
            );
        }
        let dockerfile = spec.dockerfile.as_ref().and_then(|d| {
            let p = self.resolve(d);
            if p.is_file() {
                Some(p)
            } else {
                errors.push(
                    self.err(
                        job,
                        &[key("dockerfile")],
                        format!("Dockerfile `{d}` not found ({})", p.display()),
                        "no such file",
                    )
                    .with_help("the path is relative to the job file's folder"),
                );
                None
            }
        });
        for (i, lib) in spec.libraries.iter().flatten().enumerate() {
            if let Err(why) = check_library_name(lib) {
                errors.push(
                    self.err(job, &[key("libraries"), Seg::Idx(i)], format!("invalid library name `{}`: {why}", lib.escape_debug()), "invalid package name")
                        .with_help("a library is a package name with an optional version, e.g. \"numpy\", \"requests==2.31.0\", \"lodash@4\", \"@types/node@20\", \"github.com/pkg/errors@v0.9.1\"; shell syntax (spaces, ; | & $ ` quotes) is not allowed"),
                );
            }
        }
        let files = match &spec.files {
            Some(f) => self.resolve_files(job, f, errors),
            None => vec![],
        };
        let code = if let Some(cf) = &spec.code_file {
            let p = self.resolve(cf);
            match std::fs::read_to_string(&p) {
                Ok(s) => s,
                Err(e) => {
                    errors.push(
                        self.err(
                            job,
                            &[key("code_file")],
                            format!("cannot read `{cf}` ({}): {e}", p.display()),
                            "cannot read this file",
                        )
                        .with_help("the path is relative to the job file's folder"),
                    );
                    String::new()
                }
            }
        } else {
            spec.code.clone().unwrap_or_default()
        };
        let mut timeout = Duration::from_secs(30);
        if let Some(t) = spec.timeout {
            timeout = t.0;
        }
        let mut limits = ResolvedLimits::default();
        if let Some(l) = &spec.limits {
            if let Some(v) = l.memory {
                limits.memory = v.0;
            }
            if let Some(v) = l.cpus {
                if !(v.is_finite() && v > 0.0) {
                    errors.push(self.err(
                        job,
                        &[key("limits"), key("cpus")],
                        format!("`cpus` must be greater than 0, got {v}"),
                        "must be > 0",
                    ));
                }
                limits.cpus = v;
            }
            if let Some(v) = l.pids {
                if v == 0 {
                    errors.push(self.err(
                        job,
                        &[key("limits"), key("pids")],
                        "`pids` must be at least 1",
                        "must be >= 1",
                    ));
                }
                limits.pids = v;
            }
            if let Some(v) = l.output {
                limits.output = v.0;
            }
            if let Some(v) = l.disk {
                limits.disk = v.0;
            }
            if let Some(v) = l.open_files {
                limits.open_files = v;
            }
            if let Some(v) = l.cpu_time {
                if v.0.is_zero() {
                    errors.push(self.err(
                        job,
                        &[key("limits"), key("cpu_time")],
                        "`cpu_time` must be greater than 0",
                        "must be > 0",
                    ));
                }
                limits.cpu_time = Some(v.0);
            }
        }
        let artifacts = spec.artifacts.clone().unwrap_or_default();
        for (i, a) in artifacts.iter().enumerate() {
            let sub = [key("artifacts"), Seg::Idx(i)];
            if let Err(why) = check_workdir_path(a) {
                errors.push(self.err(
                    job,
                    &sub,
                    format!("artifact pattern `{a}` {why}"),
                    "outside the workdir",
                ));
            } else if let Err(e) = globset::Glob::new(a) {
                errors.push(self.err(
                    job,
                    &sub,
                    format!("invalid artifact glob `{a}`: {e}"),
                    "invalid glob",
                ));
            }
        }
        for (i, (k, _)) in spec.env.iter().flatten().enumerate() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                let _ = i;
                errors.push(
                    self.err(
                        job,
                        &[key("env"), key(k)],
                        format!("invalid environment variable name `{k}`"),
                        "invalid name",
                    )
                    .with_help("names are non-empty and contain no `=`"),
                );
            }
        }
        let pod_manifest = match &spec.pod_manifest {
            None => None,
            Some(PodManifest::Inline(m)) => Some(serde_json::Value::Object(m.clone())),
            Some(PodManifest::Path(p)) => {
                let path = self.resolve(p);
                match std::fs::read_to_string(&path) {
                    Err(e) => {
                        errors.push(self.err(
                            job,
                            &[key("pod_manifest")],
                            format!("cannot read Pod manifest `{p}` ({}): {e}", path.display()),
                            "cannot read this file",
                        ));
                        None
                    }
                    Ok(text) => match serde_saphyr::from_str_with_options::<serde_json::Value>(
                        &text,
                        crate::spec::load::yaml_options(),
                    ) {
                        Ok(v @ serde_json::Value::Object(_)) => Some(v),
                        Ok(_) => {
                            errors.push(self.err(
                                job,
                                &[key("pod_manifest")],
                                format!("Pod manifest `{p}` is not a mapping"),
                                "not a Pod manifest",
                            ));
                            None
                        }
                        Err(e) => {
                            errors.push(self.err(
                                job,
                                &[key("pod_manifest")],
                                format!("Pod manifest `{p}` does not parse: {e}"),
                                "invalid YAML/JSON",
                            ));
                            None
                        }
                    },
                }
            }
        };
        if errors.len() > n0 {
            return None;
        }
        let lang = spec.lang?;
        let backend = self
            .opts
            .backend_override
            .or(spec.backend)
            .unwrap_or_default();
        let skip = match &spec.skip {
            None | Some(Skip::Flag(false)) => None,
            Some(Skip::Flag(true)) => Some("skipped".to_string()),
            Some(Skip::Reason(r)) if r.trim().is_empty() => Some("skipped".to_string()),
            Some(Skip::Reason(r)) => Some(r.clone()),
        };
        let compare = self.resolve_compare(job, spec.compare.as_ref(), errors);
        let checker = spec
            .checker
            .as_ref()
            .and_then(|c| self.resolve_checker(job, "checker", c, errors));
        if checker.is_some() && spec.cases.is_none() {
            errors.push(
                self.err(job, &[key("checker")], "a `checker` judges test cases, and this job has none", "no `cases`")
                    .with_help("add `cases` (a glob of inputs, a list, or a template): the checker runs after each case as `checker INPUT OUTPUT ANSWER`"),
            );
        }
        let interactor = spec
            .interactor
            .as_ref()
            .and_then(|c| self.resolve_checker(job, "interactor", c, errors));
        if spec.interactor.is_some() {
            self.check_interactor(job, spec, errors);
        }
        let cases = match &spec.cases {
            Some(CasesSpec::Pattern(p)) if !is_template(p) => {
                self.resolve_cases_glob(job, p, spec.interactor.is_some(), errors)
            }
            Some(CasesSpec::List(l)) if l.is_empty() => {
                errors.push(
                    self.err(job, &[key("cases")], "`cases` is an empty list", "no case")
                        .with_help("list at least one case, or remove `cases` to run the job once"),
                );
                vec![]
            }
            Some(CasesSpec::List(l)) => self.resolve_cases_list(job, l, errors),
            _ => vec![],
        };
        let line = name_span(self.lf, job.ji)
            .0
            .map(|r| line_of(self.lf.source.text(), r.start).0 + 1);
        let proto = PlannedJob {
            id: 0,
            name: String::new(),
            file: self.lf.path.clone(),
            line,
            lang,
            backend,
            image: spec.image.clone(),
            dockerfile,
            keep_template: spec.keep_template.unwrap_or(false),
            libraries: spec.libraries.clone().unwrap_or_default(),
            setup: spec
                .setup
                .as_ref()
                .map(OneOrMany::to_vec)
                .unwrap_or_default(),
            files,
            code,
            args: vec![],
            stdin: None,
            env: vec![],
            timeout,
            limits,
            network: spec.network.unwrap_or(false),
            artifacts,
            expect: ResolvedExpect {
                compare,
                ..Default::default()
            },
            group: None,
            tags: spec.tags.clone().unwrap_or_default(),
            skip,
            pod_manifest,
            cases,
            cases_stop: spec.cases_stop.unwrap_or_default(),
            checker,
            interactor,
            part: Default::default(),
            backends: self.backends.clone(),
            deps: Arc::new(super::deps::job_deps(&self.lf.path, &self.lf.dir, spec)),
        };
        Some(Prepared {
            lang,
            backend,
            proto,
        })
    }

    fn resolve_files(
        &self,
        job: &JobRef,
        specs: &[crate::spec::types::FileSpec],
        errors: &mut Vec<SpecError>,
    ) -> Vec<InputFile> {
        use crate::spec::types::FileSpec;
        let mut out = vec![];
        for (i, fs) in specs.iter().enumerate() {
            let sub = [key("files"), Seg::Idx(i)];
            let (src, dest) = match fs {
                FileSpec::Path(p) => (p.as_str(), None),
                FileSpec::Mapped(m) => (m.src.as_str(), Some(m.dest.as_str())),
            };
            let dest = match dest.map(check_workdir_path).transpose() {
                Ok(d) => d,
                Err(why) => {
                    let mut s = sub.to_vec();
                    s.push(key("dest"));
                    errors.push(
                        self.err(job, &s, format!("destination `{}` {why}", dest.unwrap_or("")), "escapes the workdir")
                            .with_help("`dest` is relative to the workdir /sandbox (or absolute under /sandbox), without `..`"),
                    );
                    continue;
                }
            };
            let is_glob = super::deps::is_glob(src);
            let matches: Vec<PathBuf> = if is_glob {
                let pattern = self.resolve(src);
                let found: Vec<PathBuf> = glob::glob(&pattern.to_string_lossy())
                    .map(|it| it.filter_map(Result::ok).collect())
                    .unwrap_or_default();
                if found.is_empty() {
                    errors.push(
                        self.err(
                            job,
                            &sub,
                            format!("`{src}` matches no file"),
                            "matches nothing",
                        )
                        .with_help(format!(
                            "globs are relative to the job file's folder ({})",
                            self.lf.dir.display()
                        )),
                    );
                    continue;
                }
                found
            } else {
                let p = self.resolve(src);
                if !p.exists() {
                    errors.push(
                        self.err(
                            job,
                            &sub,
                            format!("input file `{src}` not found ({})", p.display()),
                            "no such file",
                        )
                        .with_help("paths are relative to the job file's folder"),
                    );
                    continue;
                }
                vec![p]
            };
            let base = self.resolve(".");
            for m in matches {
                // Where it goes: under `dest`, else its path relative to the job file's folder.
                let target = match dest {
                    // A glob with a `dest`: `dest` is the folder of the matches.
                    Some(ref d) if is_glob => {
                        format!(
                            "{d}/{}",
                            m.file_name().unwrap_or_default().to_string_lossy()
                        )
                    }
                    Some(ref d) => d.clone(),
                    None => {
                        if Path::new(src).is_absolute() && !is_glob {
                            m.file_name()
                                .unwrap_or_default()
                                .to_string_lossy()
                                .into_owned()
                        } else {
                            match m.strip_prefix(&base) {
                                Ok(rel) => rel.to_string_lossy().into_owned(),
                                Err(_) => {
                                    errors.push(
                                        self.err(job, &sub, format!("input `{src}` lies outside the job file's folder, so it has no place in the workdir"), "outside the job's folder")
                                            .with_help(format!("map it explicitly: {{ src = \"{src}\", dest = \"name\" }}")),
                                    );
                                    continue;
                                }
                            }
                        }
                    }
                };
                let target = match check_workdir_path(&target) {
                    Ok(t) => t,
                    Err(why) => {
                        errors.push(self.err(
                            job,
                            &sub,
                            format!("destination `{target}` {why}"),
                            "escapes the workdir",
                        ));
                        continue;
                    }
                };
                if m.is_dir() {
                    if let Err(e) = collect_dir(&m, &target, &mut out) {
                        errors.push(self.err(
                            job,
                            &sub,
                            format!("cannot read directory `{}`: {e}", m.display()),
                            "unreadable",
                        ));
                    }
                } else if m.is_file() {
                    out.push(InputFile {
                        src: m,
                        dest: target,
                    });
                } else {
                    errors.push(self.err(
                        job,
                        &sub,
                        format!("`{}` is not a regular file", m.display()),
                        "not a regular file",
                    ));
                }
            }
        }
        out
    }

    /// Matrix and dataset of a job.
    fn rows(&self, job: &JobRef, spec: &JobSpec, errors: &mut Vec<SpecError>) -> Option<Rows> {
        let n0 = errors.len();
        let mut rows = Rows {
            matrix_keys: vec![],
            matrix_vals: vec![],
            dataset: None,
        };
        if let Some(m) = &spec.matrix {
            if m.is_empty() {
                errors.push(
                    self.err(job, &[key("matrix")], "`matrix` has no keys", "empty matrix")
                        .with_help("`matrix` is a table of non-empty lists, e.g. matrix = { n = [1, 2], mode = [\"a\", \"b\"] }"),
                );
            }
            for (k, vals) in m {
                if vals.is_empty() {
                    errors.push(
                        self.err(
                            job,
                            &[key("matrix"), key(k)],
                            format!("matrix key `{k}` has an empty list"),
                            "empty list",
                        )
                        .with_help("every matrix key needs at least one value"),
                    );
                }
                rows.matrix_keys.push(k.clone());
                rows.matrix_vals
                    .push(vals.iter().map(Value::from_serialize).collect());
            }
        }
        if let Some(d) = &spec.dataset {
            let p = self.resolve(d);
            match load_dataset(&p, &self.display_rel(d)) {
                Ok(ds) => {
                    if ds.is_empty() {
                        errors.push(self.err(
                            job,
                            &[key("dataset")],
                            format!("dataset `{d}` has no rows"),
                            "empty dataset",
                        ));
                    }
                    rows.dataset = Some(Arc::new(ds));
                }
                Err(dataset::DatasetError::Missing(e)) => {
                    errors.push(
                        self.err(job, &[key("dataset")], format!("cannot read dataset `{d}` ({}): {e}", p.display()), "cannot read this file")
                            .with_help("the path is relative to the job file's folder; formats: .jsonl, .json (array of objects), .csv"),
                    );
                }
                Err(dataset::DatasetError::Format(e)) => {
                    errors.push(self.err(job, &[key("dataset")], format!("dataset `{d}`: {e}"), "unsupported dataset")
                        .with_help("formats: .jsonl / .ndjson (one object per line), .json (array of objects), .csv / .tsv (header row)"));
                }
                Err(dataset::DatasetError::Bad(e)) => {
                    let e = e.with_related(self.err(
                        job,
                        &[key("dataset")],
                        "dataset used here",
                        "used here",
                    ));
                    errors.push(e);
                }
            }
        }
        (errors.len() == n0).then_some(rows)
    }

    /// Compiles every templated string of a job (once; rendered per row).
    fn compile(
        &self,
        job: &JobRef,
        spec: &JobSpec,
        rows: &Rows,
        errors: &mut Vec<SpecError>,
    ) -> Option<JobT> {
        let n0 = errors.len();
        let mut tpls = Templates {
            env: new_env(),
            info: vec![],
        };
        let mut add = |src: &str,
                       loc: TplLoc,
                       field: String,
                       force: bool,
                       errors: &mut Vec<SpecError>|
         -> TStr {
            if !force && !is_template(src) {
                return TStr::Lit(src.to_string());
            }
            let i = tpls.info.len();
            if let Err(e) = tpls
                .env
                .add_template_owned(format!("t{i}"), src.to_string())
            {
                errors.push(self.template_error(job, src, &loc, &field, &e, None, rows));
            }
            tpls.info.push((src.to_string(), loc, field));
            TStr::Tpl(i)
        };
        let f = |parts: &[Seg]| TplLoc::Field(parts.to_vec());
        let name = add(
            spec.name.as_deref().unwrap_or(""),
            f(&[key("name")]),
            "name".into(),
            false,
            errors,
        );
        let code = if let Some(t) = &spec.template {
            add(t, f(&[key("template")]), "template".into(), true, errors)
        } else if let Some(tf) = &spec.template_file {
            let p = self.resolve(tf);
            match std::fs::read_to_string(&p) {
                Ok(text) => {
                    let src = Source::from_path(&self.display_rel(tf), text.clone());
                    add(
                        &text,
                        TplLoc::File(src),
                        "template_file".into(),
                        true,
                        errors,
                    )
                }
                Err(e) => {
                    errors.push(
                        self.err(
                            job,
                            &[key("template_file")],
                            format!("cannot read `{tf}` ({}): {e}", p.display()),
                            "cannot read this file",
                        )
                        .with_help("the path is relative to the job file's folder"),
                    );
                    TStr::Lit(String::new())
                }
            }
        } else {
            TStr::Lit(String::new())
        };
        let group = spec
            .group
            .as_ref()
            .map(|g| add(g, f(&[key("group")]), "group".into(), false, errors));
        let stdin = spec
            .stdin
            .as_ref()
            .map(|s| add(s, f(&[key("stdin")]), "stdin".into(), false, errors));
        let cases = match &spec.cases {
            Some(CasesSpec::Pattern(p)) if is_template(p) => {
                Some(add(p, f(&[key("cases")]), "cases".into(), true, errors))
            }
            _ => None,
        };
        let args = spec
            .args
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, a)| {
                add(
                    a,
                    f(&[key("args"), Seg::Idx(i)]),
                    format!("args[{i}]"),
                    false,
                    errors,
                )
            })
            .collect();
        let env = spec
            .env
            .iter()
            .flatten()
            .map(|(k, v)| {
                (
                    k.clone(),
                    add(
                        v,
                        f(&[key("env"), key(k)]),
                        format!("env.{k}"),
                        false,
                        errors,
                    ),
                )
            })
            .collect();
        let mut expect = ExpectT::default();
        if let Some(e) = &spec.expect {
            let ek = |k: &str| vec![key("expect"), key(k)];
            let mut one = |v: &Option<String>, k: &str, errors: &mut Vec<SpecError>| {
                v.as_ref()
                    .map(|s| add(s, f(&ek(k)), format!("expect.{k}"), false, errors))
            };
            expect.exit_code = e.exit_code.unwrap_or(0);
            expect.stdout = one(&e.stdout, "stdout", errors);
            expect.stderr = one(&e.stderr, "stderr", errors);
            expect.stdout_exact = one(&e.stdout_exact, "stdout_exact", errors);
            expect.stdout_regex = one(&e.stdout_regex, "stdout_regex", errors);
            expect.stderr_regex = one(&e.stderr_regex, "stderr_regex", errors);
            let mut many =
                |v: &Option<OneOrMany>, k: &str, errors: &mut Vec<SpecError>| -> Vec<TStr> {
                    match v {
                        None => vec![],
                        Some(OneOrMany::One(s)) => {
                            vec![add(s, f(&ek(k)), format!("expect.{k}"), false, errors)]
                        }
                        Some(OneOrMany::Many(l)) => l
                            .iter()
                            .enumerate()
                            .map(|(i, s)| {
                                let mut p = ek(k);
                                p.push(Seg::Idx(i));
                                add(s, f(&p), format!("expect.{k}[{i}]"), false, errors)
                            })
                            .collect(),
                    }
                };
            expect.stdout_contains = many(&e.stdout_contains, "stdout_contains", errors);
            expect.stderr_contains = many(&e.stderr_contains, "stderr_contains", errors);
            for (path, fe) in e.files.iter().flatten() {
                let base = vec![key("expect"), key("files"), key(path)];
                let fk = |k: &str| {
                    let mut p = base.clone();
                    p.push(key(k));
                    p
                };
                let FileExpect {
                    exists,
                    equals,
                    contains,
                    regex,
                    json,
                    sha256,
                } = fe;
                let ft = FileT {
                    path: add(
                        path,
                        f(&base),
                        format!("expect.files key `{path}`"),
                        false,
                        errors,
                    ),
                    exists: *exists,
                    equals: equals.as_ref().map(|s| {
                        add(
                            s,
                            f(&fk("equals")),
                            format!("expect.files.{path}.equals"),
                            false,
                            errors,
                        )
                    }),
                    contains: match contains {
                        None => vec![],
                        Some(c) => c
                            .to_vec()
                            .iter()
                            .map(|s| {
                                add(
                                    s,
                                    f(&fk("contains")),
                                    format!("expect.files.{path}.contains"),
                                    false,
                                    errors,
                                )
                            })
                            .collect(),
                    },
                    regex: regex.as_ref().map(|s| {
                        add(
                            s,
                            f(&fk("regex")),
                            format!("expect.files.{path}.regex"),
                            false,
                            errors,
                        )
                    }),
                    json: json.clone(),
                    sha256: sha256.as_ref().map(|s| {
                        add(
                            s,
                            f(&fk("sha256")),
                            format!("expect.files.{path}.sha256"),
                            false,
                            errors,
                        )
                    }),
                };
                expect.files.push(ft);
            }
        }
        // Literal regexes and paths are checked once here; rendered ones per row.
        let mut statics: Vec<(&Option<TStr>, Vec<Seg>)> = vec![
            (
                &expect.stdout_regex,
                vec![key("expect"), key("stdout_regex")],
            ),
            (
                &expect.stderr_regex,
                vec![key("expect"), key("stderr_regex")],
            ),
        ];
        for ft in &expect.files {
            if let TStr::Lit(p) = &ft.path {
                statics.push((
                    &ft.regex,
                    vec![key("expect"), key("files"), key(p), key("regex")],
                ));
                if let Err(why) = check_workdir_path(p) {
                    errors.push(self.err(
                        job,
                        &[key("expect"), key("files"), key(p)],
                        format!("checked file `{p}` {why}"),
                        "outside the workdir",
                    ));
                }
            }
        }
        for (t, sub) in statics {
            if let Some(TStr::Lit(re)) = t {
                if let Err(e) = regex::Regex::new(re) {
                    errors.push(
                        self.err(job, &sub, format!("invalid regex: {}", regex_msg(&e)), "invalid regular expression")
                            .with_help("regexes use Rust `regex` syntax (https://docs.rs/regex); escape literal characters like ( [ . with a backslash"),
                    );
                }
            }
        }
        if errors.len() > n0 {
            return None;
        }
        Some(JobT {
            tpls,
            name,
            code,
            group,
            stdin,
            args,
            env,
            expect,
            cases,
        })
    }

    /// A path relative to the job file's folder, shown as the user would see it.
    fn display_rel(&self, p: &str) -> PathBuf {
        if Path::new(p).is_absolute() || self.lf.dir == Path::new(".") {
            PathBuf::from(p)
        } else {
            self.lf.dir.join(p)
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn template_error(
        &self,
        job: &JobRef,
        src: &str,
        loc: &TplLoc,
        field: &str,
        e: &minijinja::Error,
        row: Option<(usize, usize)>,
        rows: &Rows,
    ) -> SpecError {
        let kind = e.kind();
        let snippet = e.range().and_then(|r| src.get(r)).map(str::to_string);
        let what = match (kind, &snippet) {
            (minijinja::ErrorKind::UndefinedError, Some(s)) => format!("undefined variable `{s}`"),
            _ => match e.detail() {
                Some(d) => format!("{kind}: {d}"),
                None => kind.to_string(),
            },
        };
        let row_desc = match row {
            Some((k, more)) if rows.expanded() => {
                let extra = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                format!(" (in {}{extra})", rows.describe(k))
            }
            Some((_, more)) if more > 0 => format!(" (and {more} more)"),
            _ => String::new(),
        };
        let msg = format!(
            "{}: template error in `{field}`{row_desc}: {what}",
            job.describe()
        );
        let mut err = match loc {
            TplLoc::File(source) => {
                let span = e.range().or_else(|| {
                    e.line().map(|l| {
                        let o = source.offset_of(l, 1);
                        o..o
                    })
                });
                SpecError::at(source, span, msg, Some(what.clone())).with_related(self.err(
                    job,
                    &[key("template_file")],
                    "the template file is used here",
                    "template_file",
                ))
            }
            TplLoc::Field(sub) => {
                let vs = self.span(job.ji, sub);
                let span = match (&vs, e.range()) {
                    (Some(vs), Some(r)) => {
                        map_template_range(self.lf.source.text(), vs.start, src, r)
                            .or_else(|| Some(vs.clone()))
                    }
                    (vs, _) => vs.clone(),
                };
                SpecError::at(&self.lf.source, span, msg, Some(what.clone()))
            }
        };
        let mut avail: Vec<String> = self.var_names.clone();
        if !rows.matrix_keys.is_empty() {
            avail.extend(rows.matrix_keys.iter().map(|k| format!("matrix.{k}")));
        }
        if let Some(d) = &rows.dataset {
            avail.extend(d.fields.iter().map(|k| format!("row.{k}")));
        }
        if rows.expanded() {
            avail.push("index".into());
        }
        avail.extend(["job.lang", "job.backend", "job.file", "job.tags"].map(String::from));
        if field != "name" {
            avail.push("job.name".into());
        }
        if kind == minijinja::ErrorKind::UndefinedError {
            let mut help = format!("available variables: {}", avail.join(", "));
            if let Some(s) = &snippet {
                if avail.iter().any(|a| a == s) {
                    help = format!("`{s}` is missing in some rows; {help}");
                } else if let Some(sug) = did_you_mean(s, avail.iter().map(String::as_str)) {
                    help = format!("did you mean `{sug}`? {help}");
                }
                if !rows.expanded()
                    && (s.starts_with("index") || s.starts_with("row") || s.starts_with("matrix"))
                {
                    help.push_str("; `index`, `row` and `matrix` exist only in jobs with a `matrix` or `dataset`");
                }
            }
            help.push_str(". Use `code` instead of `template` for literal code containing {{");
            err = err.with_help(help);
        } else if kind == minijinja::ErrorKind::SyntaxError {
            err = err.with_help("templates use minijinja (Jinja2) syntax: {{ expr }}, {% if %}...{% endif %}; use `code` for literal code containing {{ or {%");
        }
        err
    }

    fn render_all(
        &self,
        job: &JobRef,
        p: &Prepared,
        rows: &Rows,
        jt: &JobT,
        errors: &mut Vec<SpecError>,
    ) -> Vec<PlannedJob> {
        enum Fail {
            Tpl(usize, minijinja::Error),
            Regex(Vec<Seg>, String, String),
            Path(Vec<Seg>, String, String),
            Cases(String),
        }
        let mut job_obj: Vec<(&str, Value)> = vec![
            ("lang", Value::from(p.lang.as_str())),
            ("backend", Value::from(p.backend.as_str())),
            (
                "file",
                Value::from(self.lf.path.to_string_lossy().into_owned()),
            ),
            ("tags", Value::from_serialize(&p.proto.tags)),
        ];
        let job_base: Value = job_obj.iter().cloned().collect();
        let expanded = rows.expanded();
        let render_row = |k: usize| -> Result<PlannedJob, Fail> {
            let t = &jt.tpls;
            let (index, matrix, row) = rows.at(k);
            let mut extra: Vec<(&str, Value)> = Vec::with_capacity(4);
            if expanded {
                extra.push(("index", Value::from(index)));
            }
            if let Some((_, m)) = matrix {
                extra.push(("matrix", m));
            }
            if let Some((_, r)) = row {
                extra.push(("row", r));
            }
            let with_job = |job: Value| -> Value {
                let mut e = extra.clone();
                e.push(("job", job));
                let e: Value = e.into_iter().collect();
                merge_maps([e, self.vars.clone()])
            };
            let ctx = with_job(job_base.clone());
            let name = t.render(&jt.name, &ctx).map_err(|(i, e)| Fail::Tpl(i, e))?;
            let job_named = merge_maps([
                Value::from_iter([("name", Value::from(name.as_str()))]),
                job_base.clone(),
            ]);
            let ctx = with_job(job_named);
            let r = |x: &TStr| t.render(x, &ctx);
            let ro = |x: &Option<TStr>| t.render_opt(x, &ctx);
            let rv = |x: &[TStr]| t.render_vec(x, &ctx);
            let tf = |(i, e)| Fail::Tpl(i, e);
            let mut j = p.proto.clone();
            j.name = name;
            if !matches!(jt.code, TStr::Lit(_)) {
                j.code = r(&jt.code).map_err(tf)?;
            }
            j.group = ro(&jt.group).map_err(tf)?;
            j.stdin = ro(&jt.stdin).map_err(tf)?;
            if let Some(c) = &jt.cases {
                j.cases = cases::parse_rendered(&r(c).map_err(tf)?).map_err(Fail::Cases)?;
            }
            j.args = rv(&jt.args).map_err(tf)?;
            j.env = jt
                .env
                .iter()
                .map(|(k, v)| Ok((k.clone(), r(v)?)))
                .collect::<Result<_, _>>()
                .map_err(tf)?;
            let e = &jt.expect;
            let check_re = |x: &Option<TStr>,
                            v: Option<String>,
                            sub: Vec<Seg>|
             -> Result<Option<String>, Fail> {
                if let (Some(TStr::Tpl(_)), Some(s)) = (x, &v) {
                    // Syntax only (per row; compiling 100k regexes would dominate planning).
                    if let Err(err) = regex_syntax::Parser::new().parse(s) {
                        return Err(Fail::Regex(sub, s.clone(), regex_syntax_msg(&err)));
                    }
                }
                Ok(v)
            };
            let mut files = Vec::with_capacity(e.files.len());
            for ft in &e.files {
                let path = r(&ft.path).map_err(tf)?;
                let sub = vec![key("expect"), key("files")];
                if matches!(ft.path, TStr::Tpl(_)) {
                    if let Err(why) = check_workdir_path(&path) {
                        return Err(Fail::Path(sub.clone(), path, why));
                    }
                }
                let regex = check_re(&ft.regex, ro(&ft.regex).map_err(tf)?, sub)?;
                files.push(FileCheck {
                    path,
                    exists: ft.exists,
                    equals: ro(&ft.equals).map_err(tf)?,
                    contains: rv(&ft.contains).map_err(tf)?,
                    regex,
                    json: ft.json.clone(),
                    sha256: ro(&ft.sha256).map_err(tf)?,
                });
            }
            j.expect = ResolvedExpect {
                exit_code: e.exit_code,
                stdout: ro(&e.stdout).map_err(tf)?,
                stderr: ro(&e.stderr).map_err(tf)?,
                stdout_exact: ro(&e.stdout_exact).map_err(tf)?,
                stdout_contains: rv(&e.stdout_contains).map_err(tf)?,
                stderr_contains: rv(&e.stderr_contains).map_err(tf)?,
                stdout_regex: check_re(
                    &e.stdout_regex,
                    ro(&e.stdout_regex).map_err(tf)?,
                    vec![key("expect"), key("stdout_regex")],
                )?,
                stderr_regex: check_re(
                    &e.stderr_regex,
                    ro(&e.stderr_regex).map_err(tf)?,
                    vec![key("expect"), key("stderr_regex")],
                )?,
                files,
                compare: p.proto.expect.compare,
            };
            Ok(j)
        };
        let total = rows.total();
        let par = total > 64;
        let all: Result<Vec<PlannedJob>, Fail> = if par {
            (0..total).into_par_iter().map(render_row).collect()
        } else {
            (0..total).map(render_row).collect()
        };
        job_obj.clear();
        let failures: Vec<(usize, Fail)> = match all {
            Ok(jobs) => return jobs,
            // Again, to report the first failure of each kind and count the others.
            Err(_) if par => (0..total)
                .into_par_iter()
                .filter_map(|k| render_row(k).err().map(|f| (k, f)))
                .collect(),
            Err(_) => (0..total)
                .filter_map(|k| render_row(k).err().map(|f| (k, f)))
                .collect(),
        };
        let mut fails: indexmap::IndexMap<String, (usize, Fail, usize)> = Default::default();
        for (k, f) in failures {
            let id = match &f {
                Fail::Tpl(i, e) => format!("t{i}{:?}", e.kind()),
                Fail::Regex(s, _, _) | Fail::Path(s, _, _) => path_string(s),
                Fail::Cases(_) => "cases".into(),
            };
            fails
                .entry(id)
                .and_modify(|e| e.2 += 1)
                .or_insert((k, f, 0));
        }
        for (_, (k, f, more)) in fails {
            let row_desc = || {
                if expanded {
                    let m = if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    };
                    format!(" (in {}{m})", rows.describe(k))
                } else {
                    String::new()
                }
            };
            errors.push(match f {
                Fail::Tpl(i, e) => {
                    let (src, loc, field) = &jt.tpls.info[i];
                    self.template_error(job, src, loc, field, &e, Some((k, more)), rows)
                }
                Fail::Regex(sub, re, why) => self
                    .err(job, &sub, format!("invalid regex `{re}` after rendering{}: {why}", row_desc()), "invalid regular expression")
                    .with_help("regexes use Rust `regex` syntax; when inserting data into a regex, escape it"),
                Fail::Path(sub, p, why) => self.err(job, &sub, format!("checked file `{p}`{} {why}", row_desc()), "outside the workdir"),
                Fail::Cases(why) => self
                    .err(job, &[key("cases")], format!("`cases`{}: {why}", row_desc()), "not a list of cases")
                    .with_help("a `cases` template renders to a JSON list of objects with `input` and `output` strings, e.g. cases = \"{{ row.tests | tojson }}\""),
            });
        }
        vec![]
    }
}

fn regex_msg(e: &regex::Error) -> String {
    error_gist(e.to_string())
}

fn regex_syntax_msg(e: &regex_syntax::Error) -> String {
    error_gist(e.to_string())
}

/// The regex crates' messages are multi-line with their own caret drawing; keep the gist.
fn error_gist(s: String) -> String {
    s.lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .map(|l| l.trim_start_matches("error:").trim().to_string())
        .unwrap_or(s)
}

fn line_of(s: &str, off: usize) -> (usize, usize) {
    let before = &s[..off.min(s.len())];
    (
        before.matches('\n').count(),
        before.rfind('\n').map(|i| off - i - 1).unwrap_or(off),
    )
}

/// Maps a byte range `r` of a template's text `src` into the job file's `text`, where
/// the template is the string value starting at `value_start` (basic or multi-line
/// string, YAML plain or block scalar). None when the mapping is not certain.
fn map_template_range(
    text: &str,
    value_start: usize,
    src: &str,
    r: Range<usize>,
) -> Option<Range<usize>> {
    let bad = src.get(r.clone())?;
    if bad.trim().is_empty() {
        return None;
    }
    let (line, col) = line_of(src, r.start);
    // Anchor: the template's first non-empty line, found after the value's start.
    let (first_idx, first_line) = src
        .lines()
        .enumerate()
        .find(|(_, l)| !l.trim().is_empty())?;
    if line < first_idx {
        return None;
    }
    let first_trim = first_line.trim();
    let first_col = first_line.len() - first_line.trim_start().len();
    let window = text.get(value_start..(value_start + src.len() * 2 + 64).min(text.len()))?;
    let anchor = value_start + window.find(first_trim)?;
    let anchor_line_start = text[..anchor].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let mut ls = anchor_line_start;
    for _ in 0..(line - first_idx) {
        ls += text[ls..].find('\n')? + 1;
    }
    let le = text[ls..].find('\n').map(|i| ls + i).unwrap_or(text.len());
    // Where the token should be: same column, shifted by the block's indentation.
    let indent_delta = (anchor - anchor_line_start) as isize - first_col as isize;
    let expected = ls as isize + col as isize + indent_delta;
    let from = if line == first_idx { anchor } else { ls };
    text.get(from..le)?
        .match_indices(bad)
        .map(|(i, _)| from + i)
        .min_by_key(|o| (*o as isize - expected).abs())
        .map(|o| o..o + bad.len())
}

fn collect_dir(dir: &Path, dest: &str, out: &mut Vec<InputFile>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let ft = e.file_type()?;
        let name = e.file_name().to_string_lossy().into_owned();
        let d = if dest.is_empty() {
            name
        } else {
            format!("{dest}/{name}")
        };
        if ft.is_dir() {
            collect_dir(&e.path(), &d, out)?;
        } else if ft.is_file() {
            out.push(InputFile {
                src: e.path(),
                dest: d,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
