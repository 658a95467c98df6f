use super::*;
use crate::spec::load::parse_source;

/// Writes `files` into a temp dir and plans `main`.
fn plan_in(files: &[(&str, &str)], main: &str, opts: &PlanOptions) -> Result<Plan, Vec<SpecError>> {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let p = dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let r = plan_paths_diag(&[dir.path().join(main)], opts);
    drop(dir);
    r
}

fn plan_ok(files: &[(&str, &str)], main: &str) -> Plan {
    match plan_in(files, main, &PlanOptions::default()) {
        Ok(p) => p,
        Err(e) => panic!("{}", render(&e)),
    }
}

fn plan_err(files: &[(&str, &str)], main: &str) -> String {
    match plan_in(files, main, &PlanOptions::default()) {
        Ok(p) => panic!("expected an error, planned {} jobs", p.jobs.len()),
        Err(e) => render(&e),
    }
}

fn render(errs: &[SpecError]) -> String {
    let mut out = String::new();
    for e in errs {
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .with_wrap_lines(false)
            .render_report(&mut out, e)
            .unwrap();
    }
    out
}

#[test]
fn defaults_merge() {
    let p = plan_ok(
        &[(
            "a.toml",
            r#"
[defaults]
lang = "python"
timeout = "10s"
env = { A = "1", B = "2" }
limits = { memory = "256MiB", pids = 64 }
expect = { exit_code = 3, stdout = "x" }
code = "print(1)"

[[jobs]]
name = "one"
env = { B = "b", C = "c" }
limits = { pids = 10 }
expect = { stdout = "y" }

[[jobs]]
name = "two"
lang = "bash"
template = "echo {{ job.lang }}"
timeout = "2m"
"#,
        )],
        "a.toml",
    );
    let one = &p.jobs[0];
    assert_eq!(one.lang, Lang::Python);
    assert_eq!(one.timeout, Duration::from_secs(10));
    assert_eq!(
        one.env,
        vec![
            ("A".into(), "1".into()),
            ("B".into(), "b".into()),
            ("C".into(), "c".into())
        ]
    );
    assert_eq!(one.limits.memory, 256 << 20);
    assert_eq!(one.limits.pids, 10);
    assert_eq!(one.limits.cpus, 1.0);
    assert_eq!(one.expect.exit_code, 3);
    assert_eq!(one.expect.stdout.as_deref(), Some("y"));
    assert_eq!(one.code, "print(1)");
    assert_eq!(one.backend, BackendKind::Native);
    let two = &p.jobs[1];
    assert_eq!(two.lang, Lang::Bash);
    // The job's own template replaces the default `code`.
    assert_eq!(two.code, "echo bash");
    assert_eq!(two.timeout, Duration::from_secs(120));
    assert_eq!(two.id, 1);
}

#[test]
fn matrix_order_last_key_fastest() {
    let p = plan_ok(
        &[(
            "m.yaml",
            "jobs:\n  - name: \"m-{{ matrix.a }}-{{ matrix.b }}-{{ index }}\"\n    lang: python\n    code: x\n    matrix:\n      a: [1, 2]\n      b: [x, y, z]\n",
        )],
        "m.yaml",
    );
    let names: Vec<_> = p.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(
        names,
        ["m-1-x-0", "m-1-y-1", "m-1-z-2", "m-2-x-3", "m-2-y-4", "m-2-z-5"]
    );
}

#[test]
fn dataset_formats() {
    let job = |ds: &str| {
        format!(
            "[[jobs]]\nname = \"r{{{{ index }}}}-{{{{ row.a }}}}\"\nlang = \"python\"\ntemplate = \"print({{{{ row.b }}}})\"\ndataset = \"{ds}\"\n"
        )
    };
    for (ds, text) in [
        (
            "d.jsonl",
            "{\"a\": \"x\", \"b\": 1}\n\n{\"a\": \"y\", \"b\": 2}\n",
        ),
        (
            "d.json",
            "[{\"a\": \"x\", \"b\": 1}, {\"a\": \"y\", \"b\": 2}]",
        ),
        ("d.csv", "a,b\nx,1\ny,2\n"),
    ] {
        let main = job(ds);
        let p = plan_ok(&[("j.toml", &main), (ds, text)], "j.toml");
        let got: Vec<_> = p
            .jobs
            .iter()
            .map(|j| (j.name.as_str(), j.code.as_str()))
            .collect();
        assert_eq!(got, [("r0-x", "print(1)"), ("r1-y", "print(2)")], "{ds}");
    }
}

#[test]
fn dataset_and_matrix_product() {
    let p = plan_ok(
        &[
            (
                "j.toml",
                "[[jobs]]\nname = \"{{ row.q }}-{{ matrix.t }}\"\nlang = \"python\"\ncode = \"pass\"\ndataset = \"d.jsonl\"\nmatrix = { t = [1, 2] }\n",
            ),
            ("d.jsonl", "{\"q\": \"a\"}\n{\"q\": \"b\"}\n"),
        ],
        "j.toml",
    );
    let names: Vec<_> = p.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["a-1", "a-2", "b-1", "b-2"]);
}

#[test]
fn literal_code_is_never_rendered() {
    let p = plan_ok(
        &[(
            "c.toml",
            "[[jobs]]\nname = \"c\"\nlang = \"python\"\ncode = \"print('{{ not_a_var }}')\\n\"\nexpect.stdout = \"{{ 'lit' }}\"\n",
        )],
        "c.toml",
    );
    assert_eq!(p.jobs[0].code, "print('{{ not_a_var }}')\n");
    // Other strings are rendered (and the trailing newline of templates is kept).
    assert_eq!(p.jobs[0].expect.stdout.as_deref(), Some("lit"));
}

#[test]
fn template_keeps_trailing_newline_and_no_escaping() {
    let p = plan_ok(
        &[(
            "t.toml",
            "[vars]\nx = \"<a & b>\"\n[[jobs]]\nname = \"t\"\nlang = \"python\"\ntemplate = \"print('{{ x }}')\\n\"\n",
        )],
        "t.toml",
    );
    assert_eq!(p.jobs[0].code, "print('<a & b>')\n");
}

#[test]
fn undefined_variable_is_an_error() {
    let out = plan_err(
        &[(
            "u.toml",
            "[[jobs]]\nname = \"u\"\nlang = \"python\"\ntemplate = \"print({{ nope }})\"\n",
        )],
        "u.toml",
    );
    assert!(out.contains("undefined variable `nope`"), "{out}");
    assert!(out.contains("u.toml:4:"), "{out}");
}

#[test]
fn index_only_with_matrix_or_dataset() {
    let out = plan_err(
        &[(
            "i.toml",
            "[[jobs]]\nname = \"i{{ index }}\"\nlang = \"python\"\ncode = \"x\"\n",
        )],
        "i.toml",
    );
    assert!(out.contains("undefined variable `index`"), "{out}");
    assert!(
        out.contains("only in jobs with a `matrix` or `dataset`"),
        "{out}"
    );
}

#[test]
fn cli_vars_override_file_vars() {
    let opts = PlanOptions {
        vars: vec![("who".into(), "cli".into())],
        ..Default::default()
    };
    let p = plan_in(
        &[(
            "v.toml",
            "[vars]\nwho = \"file\"\nn = 3\n[[jobs]]\nname = \"v\"\nlang = \"python\"\ntemplate = \"{{ who }} {{ n + 1 }} {{ job.name }} {{ job.backend }}\"\n",
        )],
        "v.toml",
        &opts,
    )
    .unwrap();
    assert_eq!(p.jobs[0].code, "cli 4 v native");
}

#[test]
fn filters_and_backend_override() {
    let text = "[[jobs]]\nname = \"add-1\"\nlang = \"python\"\ncode = \"x\"\ntags = [\"fast\"]\n[[jobs]]\nname = \"mul-1\"\nlang = \"python\"\ncode = \"x\"\n[[jobs]]\nname = \"add-2\"\nlang = \"python\"\ncode = \"x\"\nbackend = \"docker\"\n";
    let opts = PlanOptions {
        filters: vec!["tag:fast".into(), "mul-*".into()],
        backend_override: Some(BackendKind::Podman),
        ..Default::default()
    };
    let p = plan_in(&[("f.toml", text)], "f.toml", &opts).unwrap();
    let names: Vec<_> = p.jobs.iter().map(|j| (j.id, j.name.as_str())).collect();
    assert_eq!(names, [(0, "add-1"), (1, "mul-1")]);
    assert_eq!(p.total_before_filter, 3);
    assert!(p.jobs.iter().all(|j| j.backend == BackendKind::Podman));
}

#[test]
fn skip_and_setup_and_files() {
    let p = plan_ok(
        &[
            (
                "s.toml",
                "[[jobs]]\nname = \"s\"\nlang = \"python\"\ncode = \"x\"\nskip = \"\"\nsetup = \"echo hi\"\nfiles = [\"data/*.txt\", { src = \"data/a.txt\", dest = \"/sandbox/in/a.txt\" }, \"tree\"]\n[[jobs]]\nname = \"t\"\nlang = \"python\"\ncode = \"x\"\nskip = true\nsetup = [\"a\", \"b\"]\n[[jobs]]\nname = \"u\"\nlang = \"python\"\ncode = \"x\"\nskip = \"flaky\"\n",
            ),
            ("data/a.txt", "a"),
            ("data/b.txt", "b"),
            ("tree/x/y.txt", "y"),
        ],
        "s.toml",
    );
    let s = &p.jobs[0];
    assert_eq!(s.skip.as_deref(), Some("skipped"));
    assert_eq!(s.setup, ["echo hi"]);
    let dests: Vec<_> = s.files.iter().map(|f| f.dest.as_str()).collect();
    assert_eq!(
        dests,
        ["data/a.txt", "data/b.txt", "in/a.txt", "tree/x/y.txt"]
    );
    assert!(s.files.iter().all(|f| f.src.is_absolute()));
    assert_eq!(p.jobs[1].skip.as_deref(), Some("skipped"));
    assert_eq!(p.jobs[1].setup, ["a", "b"]);
    assert_eq!(p.jobs[2].skip.as_deref(), Some("flaky"));
}

#[test]
fn duplicate_names_across_files() {
    let out = plan_err(
        &[
            (
                "d/a.toml",
                "[[jobs]]\nname = \"same\"\nlang = \"python\"\ncode = \"x\"\n",
            ),
            (
                "d/b.yaml",
                "jobs:\n  - name: same\n    lang: python\n    code: x\n",
            ),
        ],
        "d",
    );
    assert!(out.contains("duplicate job name `same`"), "{out}");
    assert!(out.contains("a.toml:2:8"), "{out}");
    assert!(out.contains("b.yaml:2:11"), "{out}");
}

#[test]
fn parse_source_spans_for_jobs() {
    let lf = parse_source(
        Path::new("x.toml"),
        "[[jobs]]\nname = \"a\"\n\n[[jobs]]\nlang = \"python\"\n".into(),
    )
    .unwrap();
    let (plan, _, errs) = expand_file(&lf, &PlanOptions::default());
    assert!(plan.is_empty());
    let out = render(&errs);
    assert!(out.contains("x.toml:4:1: jobs[1]: missing `name`"), "{out}");
    assert!(out.contains("missing `name`"), "{out}");
}

#[test]
fn big_dataset_is_fast() {
    let mut data = String::new();
    for i in 0..20_000 {
        data.push_str(&format!("{{\"a\": {i}, \"b\": \"s{i}\"}}\n"));
    }
    let t = std::time::Instant::now();
    let p = plan_ok(
        &[
            (
                "b.toml",
                "[[jobs]]\nname = \"b-{{ index }}\"\nlang = \"python\"\ntemplate = \"print({{ row.a }} + 1)\"\ndataset = \"d.jsonl\"\nexpect.stdout = \"{{ row.a + 1 }}\"\n",
            ),
            ("d.jsonl", &data),
        ],
        "b.toml",
    );
    assert_eq!(p.jobs.len(), 20_000);
    assert_eq!(p.jobs[19_999].expect.stdout.as_deref(), Some("20000"));
    // Generous for debug builds; release is far faster.
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
}

#[test]
fn exclusions_and_shards() {
    let mut text = String::new();
    for i in 0..40 {
        let tag = if i % 4 == 0 {
            "tags = [\"slow\"]\n"
        } else {
            ""
        };
        text.push_str(&format!(
            "[[jobs]]\nname = \"job-{i}\"\nlang = \"bash\"\ncode = \"x\"\n{tag}"
        ));
    }
    let names = |filters: &[&str], shard: Option<&str>| -> Vec<String> {
        let opts = PlanOptions {
            filters: filters.iter().map(|f| f.to_string()).collect(),
            shard: shard.map(|s| crate::plan::Shard::parse(s).unwrap()),
            ..Default::default()
        };
        let p = plan_in(&[("s.toml", &text)], "s.toml", &opts).unwrap();
        p.jobs.iter().map(|j| j.name.clone()).collect()
    };
    // `!` excludes, alone or after an inclusion.
    assert_eq!(names(&["!tag:slow"], None).len(), 30);
    assert_eq!(
        names(&["job-1*", "!job-10", "!tag:slow"], None),
        ["job-1", "job-11", "job-13", "job-14", "job-15", "job-17", "job-18", "job-19"]
    );
    // Three shards: every job exactly once, none empty here, the same on every call.
    let parts: Vec<Vec<String>> = (1..=3)
        .map(|i| names(&[], Some(&format!("{i}/3"))))
        .collect();
    let mut all: Vec<String> = parts.concat();
    all.sort();
    let mut want = names(&[], None);
    want.sort();
    assert_eq!(all, want);
    assert!(parts.iter().all(|p| !p.is_empty()), "{parts:?}");
    assert_eq!(parts[1], names(&[], Some("2/3")));
    // A shard of a filtered selection.
    let slow: Vec<String> = (1..=2)
        .flat_map(|i| names(&["tag:slow"], Some(&format!("{i}/2"))))
        .collect();
    assert_eq!(slow.len(), 10);
}
