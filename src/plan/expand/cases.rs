//! `cases`, `compare` and `expect.stdout_file` (README, "Test cases"): resolved at plan
//! time, each mistake an error naming the field.

use super::{key, FileCx, JobRef};
use crate::plan::job::{Case, CaseExpect, Checker, Compare};
use crate::spec::error::SpecError;
use crate::spec::span::Seg;
use crate::spec::types::{CaseSpec, CheckerSpec, CompareSpec, Expect, JobSpec};
use std::path::{Path, PathBuf};

/// The valid values of `compare`, for messages.
const COMPARE_HELP: &str =
    "`compare` is \"lines\" (the default), \"exact\", \"tokens\", or { float = 1e-6 } (numeric tokens equal within that absolute or relative difference)";

impl FileCx<'_> {
    /// `compare`.
    pub(super) fn resolve_compare(
        &self,
        job: &JobRef,
        spec: Option<&CompareSpec>,
        errors: &mut Vec<SpecError>,
    ) -> Compare {
        match spec {
            None => Compare::Lines,
            Some(CompareSpec::Mode(m)) => match m.as_str() {
                "lines" => Compare::Lines,
                "exact" => Compare::Exact,
                "tokens" => Compare::Tokens,
                other => {
                    errors.push(
                        self.err(
                            job,
                            &[key("compare")],
                            format!("unknown `compare` value `{other}`"),
                            "not a comparison",
                        )
                        .with_help(COMPARE_HELP),
                    );
                    Compare::Lines
                }
            },
            Some(CompareSpec::Float(f)) => {
                if !(f.float.is_finite() && f.float >= 0.0) {
                    errors.push(
                        self.err(
                            job,
                            &[key("compare"), key("float")],
                            format!("`float` must be a number >= 0, got {}", f.float),
                            "must be >= 0",
                        )
                        .with_help(COMPARE_HELP),
                    );
                }
                Compare::Float(f.float)
            }
        }
    }

    /// `checker` or `interactor` (`field`): its program, from `code` or `code_file`.
    pub(super) fn resolve_checker(
        &self,
        job: &JobRef,
        field: &str,
        c: &CheckerSpec,
        errors: &mut Vec<SpecError>,
    ) -> Option<Checker> {
        let usage = if field == "interactor" {
            "run beside each case as `interactor INPUT OUTPUT [ANSWER]`, its stdout the program's stdin and the program's stdout its stdin; exit 0 accepted, 1 wrong answer, 2 presentation error"
        } else {
            "run as `checker INPUT OUTPUT ANSWER`, exit 0 accepted, 1 wrong answer, 2 presentation error"
        };
        let code = match (&c.code, &c.code_file) {
            (Some(code), None) => Some(code.clone()),
            (None, Some(f)) => self.read_named(job, &[key(field), key("code_file")], f, errors),
            (Some(_), Some(_)) => {
                errors.push(
                    self.err(job, &[key(field), key("code_file")], "`code` and `code_file` are both set", "second program")
                        .with_help(format!("give the {field}'s program inline (`code`) or in a file (`code_file`), not both")),
                );
                None
            }
            (None, None) => {
                errors.push(
                    self.err(
                        job,
                        &[key(field)],
                        format!("the {field} has no program"),
                        "no `code` or `code_file`",
                    )
                    .with_help(format!(
                        "e.g. {field} = {{ lang = \"cpp\", code_file = \"{}.cpp\" }}: {usage}",
                        &field[..field.len().min(5)]
                    )),
                );
                None
            }
        }?;
        Some(Checker { lang: c.lang, code })
    }

    /// What an `interactor` needs: test cases (each case's input is its INPUT file).
    pub(super) fn check_interactor(
        &self,
        job: &JobRef,
        spec: &JobSpec,
        errors: &mut Vec<SpecError>,
    ) {
        if spec.cases.is_none() {
            errors.push(
                self.err(job, &[key("interactor")], "an `interactor` talks with the program of each test case, and this job has none", "no `cases`")
                    .with_help("add `cases` (a glob of inputs, a list, or a template): each case's input is the interactor's INPUT file"),
            );
        }
    }

    /// A file named by a job field (relative to the job file), read as text.
    fn read_named(
        &self,
        job: &JobRef,
        sub: &[Seg],
        rel: &str,
        errors: &mut Vec<SpecError>,
    ) -> Option<String> {
        let p = self.resolve(rel);
        match std::fs::read_to_string(&p) {
            Ok(s) => Some(s),
            Err(e) => {
                errors.push(
                    self.err(
                        job,
                        sub,
                        format!("cannot read `{rel}` ({}): {e}", p.display()),
                        "cannot read this file",
                    )
                    .with_help("the path is relative to the job file's folder"),
                );
                None
            }
        }
    }

    /// `expect.stdout_file` read into `expect.stdout` (the two exclude each other).
    pub(super) fn resolve_stdout_file(
        &self,
        job: &JobRef,
        at: &[Seg],
        expect: &mut Expect,
        errors: &mut Vec<SpecError>,
    ) {
        let Some(f) = expect.stdout_file.take() else {
            return;
        };
        let mut sub = at.to_vec();
        sub.push(key("stdout_file"));
        if expect.stdout.is_some() {
            errors.push(
                self.err(
                    job,
                    &sub,
                    "`stdout` and `stdout_file` are both set",
                    "second expected stdout",
                )
                .with_help("give the expected output inline (`stdout`) or in a file (`stdout_file`), not both"),
            );
            return;
        }
        expect.stdout = self.read_named(job, &sub, &f, errors);
    }

    /// `cases` given as a glob of input files, or as a list.
    pub(super) fn resolve_cases_glob(
        &self,
        job: &JobRef,
        pattern: &str,
        answers_optional: bool,
        errors: &mut Vec<SpecError>,
    ) -> Vec<Case> {
        let sub = [key("cases")];
        let full = self.resolve(pattern);
        let mut found: Vec<PathBuf> = glob::glob(&full.to_string_lossy())
            .map(|it| it.filter_map(Result::ok).filter(|p| p.is_file()).collect())
            .unwrap_or_default();
        found.sort();
        if found.is_empty() {
            errors.push(
                self.err(
                    job,
                    &sub,
                    format!("`{pattern}` matches no file"),
                    "matches nothing",
                )
                .with_help(format!(
                    "`cases` is a glob of input files relative to the job file's folder ({}), each `X.in` with its expected output in `X.out` or `X.ans` beside it",
                    self.lf.dir.display()
                )),
            );
            return vec![];
        }
        // Paths are shown as written: relative to the job file's folder.
        let base = self.resolve(".");
        let mut cases = Vec::with_capacity(found.len());
        for input in found {
            let answer = ["out", "ans"]
                .iter()
                .map(|ext| input.with_extension(ext))
                .find(|p| p.is_file() && *p != input);
            let shown = shown_path(&input, &base);
            // An interactor's case needs no answer file (it gets one when there is).
            if answer.is_none() && !answers_optional {
                errors.push(
                    self.err(
                        job,
                        &sub,
                        format!(
                            "case input `{shown}` has no expected output (`{}` or `{}` beside it)",
                            shown_path(&input.with_extension("out"), &base),
                            shown_path(&input.with_extension("ans"), &base)
                        ),
                        "an input without its answer",
                    )
                    .with_help("every input matched by `cases` needs its expected output in a file of the same name ending in .out or .ans"),
                );
                continue;
            }
            let read = |p: &Path, errors: &mut Vec<SpecError>| match std::fs::read_to_string(p) {
                Ok(s) => Some(s),
                Err(e) => {
                    errors.push(self.err(
                        job,
                        &sub,
                        format!("cannot read `{}`: {e}", shown_path(p, &base)),
                        "cannot read this file",
                    ));
                    None
                }
            };
            let Some(stdin) = read(&input, errors) else {
                continue;
            };
            let out = match &answer {
                Some(a) => match read(a, errors) {
                    Some(o) => Some(o),
                    None => continue,
                },
                None => None,
            };
            cases.push(Case {
                name: input
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                stdin: Some(stdin),
                args: None,
                expect: CaseExpect {
                    stdout: out,
                    ..Default::default()
                },
            });
        }
        cases
    }

    pub(super) fn resolve_cases_list(
        &self,
        job: &JobRef,
        list: &[CaseSpec],
        errors: &mut Vec<SpecError>,
    ) -> Vec<Case> {
        let mut cases = Vec::with_capacity(list.len());
        for (i, c) in list.iter().enumerate() {
            let at = [key("cases"), Seg::Idx(i)];
            let field = |f: &str| {
                let mut s = at.to_vec();
                s.push(key(f));
                s
            };
            let stdin = match (&c.stdin, &c.stdin_file) {
                (Some(_), Some(_)) => {
                    errors.push(
                        self.err(job, &field("stdin_file"), "`stdin` and `stdin_file` are both set", "second input")
                            .with_help("give the case's input inline (`stdin`) or in a file (`stdin_file`), not both"),
                    );
                    None
                }
                (Some(s), None) => Some(s.clone()),
                (None, Some(f)) => self.read_named(job, &field("stdin_file"), f, errors),
                (None, None) => None,
            };
            let mut e = c.expect.clone().unwrap_or_default();
            let mut expect_at = at.to_vec();
            expect_at.push(key("expect"));
            self.resolve_stdout_file(job, &expect_at, &mut e, errors);
            if e.files.is_some() {
                let mut s = expect_at.clone();
                s.push(key("files"));
                errors.push(
                    self.err(
                        job,
                        &s,
                        "`expect.files` is not checked per case",
                        "not per case",
                    )
                    .with_help("check files in the job's own `expect.files`"),
                );
            }
            for (f, re) in [
                ("stdout_regex", &e.stdout_regex),
                ("stderr_regex", &e.stderr_regex),
            ] {
                if let Some(Err(err)) = re.as_deref().map(regex::Regex::new) {
                    let mut s = expect_at.clone();
                    s.push(key(f));
                    errors.push(self.err(
                        job,
                        &s,
                        format!("invalid regex: {err}"),
                        "invalid regular expression",
                    ));
                }
            }
            cases.push(Case {
                name: c.name.clone().unwrap_or_else(|| format!("case-{}", i + 1)),
                stdin,
                args: c.args.clone(),
                expect: CaseExpect {
                    exit_code: e.exit_code,
                    stdout: e.stdout,
                    stderr: e.stderr,
                    stdout_exact: e.stdout_exact,
                    stdout_contains: e.stdout_contains.map(|m| m.to_vec()).unwrap_or_default(),
                    stderr_contains: e.stderr_contains.map(|m| m.to_vec()).unwrap_or_default(),
                    stdout_regex: e.stdout_regex,
                    stderr_regex: e.stderr_regex,
                },
            });
        }
        self.check_case_names(job, &cases, errors);
        cases
    }

    /// Case names are unique within a job (they name its JUnit test cases).
    pub(super) fn check_case_names(
        &self,
        job: &JobRef,
        cases: &[Case],
        errors: &mut Vec<SpecError>,
    ) {
        let mut seen = std::collections::HashSet::new();
        for (i, c) in cases.iter().enumerate() {
            if c.name.is_empty() || !seen.insert(c.name.as_str()) {
                errors.push(
                    self.err(
                        job,
                        &[key("cases"), Seg::Idx(i)],
                        format!("case name `{}` is empty or used twice", c.name),
                        "duplicate case name",
                    )
                    .with_help("every case of a job needs a unique `name`"),
                );
            }
        }
    }
}

/// Cases rendered from a template (`cases = "{{ row.tests | tojson }}"`): a JSON list of
/// objects with `input` (a string) and `output` (a string, the expected stdout), and
/// optionally `name`. Err says what is wrong.
pub(super) fn parse_rendered(text: &str) -> Result<Vec<Case>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        format!("it rendered to text that is not JSON ({e}); render a list with `| tojson`")
    })?;
    let serde_json::Value::Array(items) = v else {
        return Err("it did not render to a JSON list".into());
    };
    let mut cases = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let serde_json::Value::Object(mut o) = item else {
            return Err(format!(
                "item {i} is not an object with `input` and `output`"
            ));
        };
        let text_of = |v: serde_json::Value, what: &str| match v {
            serde_json::Value::String(s) => Ok(s),
            other => Err(format!("item {i}: `{what}` is not a string but {other}")),
        };
        let input = match o.remove("input") {
            Some(v) => text_of(v, "input")?,
            None => return Err(format!("item {i} has no `input`")),
        };
        let output = o
            .remove("output")
            .map(|v| text_of(v, "output"))
            .transpose()?;
        let name = match o.remove("name") {
            Some(v) => text_of(v, "name")?,
            None => format!("case-{}", i + 1),
        };
        cases.push(Case {
            name,
            stdin: Some(input),
            args: None,
            expect: CaseExpect {
                stdout: output,
                ..Default::default()
            },
        });
    }
    if cases.is_empty() {
        return Err("it rendered to an empty list".into());
    }
    Ok(cases)
}

/// `p` relative to `base` when it is below it.
fn shown_path(p: &Path, base: &Path) -> String {
    p.strip_prefix(base).unwrap_or(p).display().to_string()
}
