//! The checked-in JSON Schemas: they equal what `llm-sandbox schema job|report` prints
//! (drift test), and every job file shipped under jobs/ and examples/ validates against
//! `schemas/job.schema.json`.

use crate::common;

use serde_json::Value;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn printed_schema(kind: &str) -> String {
    let out = common::bin().args(["schema", kind]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    String::from_utf8(out.stdout).expect("UTF-8 schema")
}

fn assert_no_drift(kind: &str) {
    let rel = format!("schemas/{kind}.schema.json");
    let fix = format!("run `cargo run -- schema {kind} > {rel}` and commit the result");
    let printed = printed_schema(kind);
    let checked_in = std::fs::read_to_string(Path::new(ROOT).join(&rel))
        .unwrap_or_else(|e| panic!("cannot read {rel} ({e}): {fix}"));
    let printed_v: Value = serde_json::from_str(&printed).expect("printed schema is JSON");
    let checked_v: Value = serde_json::from_str(&checked_in)
        .unwrap_or_else(|e| panic!("{rel} is not JSON ({e}): {fix}"));
    assert!(
        printed_v == checked_v,
        "{rel} is out of date with the Rust types: {fix}"
    );
    assert!(
        printed == checked_in,
        "{rel} differs in formatting from what the binary prints: {fix}"
    );
    assert_eq!(
        checked_v["$schema"], "https://json-schema.org/draft/2020-12/schema",
        "{rel}: the README (A job file) says JSON Schema 2020-12"
    );
}

#[test]
fn job_schema_is_up_to_date() {
    assert_no_drift("job");
}

#[test]
fn report_schema_is_up_to_date() {
    assert_no_drift("report");
}

fn job_schema() -> jsonschema::JSONSchema {
    let text = std::fs::read_to_string(Path::new(ROOT).join("schemas/job.schema.json")).expect(
        "schemas/job.schema.json (run `cargo run -- schema job > schemas/job.schema.json`)",
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    jsonschema::JSONSchema::compile(&v).expect("the job schema compiles")
}

fn job_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if p.ends_with("examples/fake-apiserver") {
                continue;
            }
            job_files(&p, out);
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("toml" | "yaml" | "yml")
        ) {
            out.push(p);
        }
    }
}

/// A TOML or YAML file as JSON.
fn load(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    let shown = path.strip_prefix(ROOT).unwrap_or(path).display();
    match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => toml::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{shown}: {e}")),
        _ => serde_saphyr::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{shown}: {e}")),
    }
}

fn first_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn shipped_job_files_validate_against_the_job_schema() {
    let schema = job_schema();
    let mut files = Vec::new();
    job_files(&Path::new(ROOT).join("jobs"), &mut files);
    job_files(&Path::new(ROOT).join("examples"), &mut files);
    let mut checked = 0;
    let mut problems = Vec::new();
    for f in &files {
        let v = load(f);
        // Only job files: not Kubernetes manifests, CI configs, ...
        if v.get("jobs").is_none() {
            continue;
        }
        checked += 1;
        let shown = f.strip_prefix(ROOT).unwrap().display().to_string();
        if let Err(errors) = schema.validate(&v) {
            for e in errors {
                problems.push(format!("{shown}: {e} at {}", e.instance_path));
            }
        }
        // The editor hint on the first line points at the schema, relative to the file.
        let line = first_line(f);
        let hint = line
            .strip_prefix("#:schema ")
            .or_else(|| line.strip_prefix("# yaml-language-server: $schema="));
        match hint {
            Some(rel) => {
                let target = f.parent().unwrap().join(rel.trim());
                if !target.ends_with("schemas/job.schema.json") || !target.exists() {
                    problems.push(format!("{shown}: schema hint {rel:?} does not resolve"));
                }
            }
            None => problems.push(format!("{shown}: no schema hint on the first line")),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(checked >= 10, "only {checked} job files found");
}

#[test]
fn job_schema_rejects_unknown_keys_and_bad_values() {
    let schema = job_schema();
    let good: Value = toml::from_str(
        r#"
[defaults]
timeout = "10s"
limits = { memory = "256MiB", pids = 64 }

[[jobs]]
name = "x"
lang = "python"
code = "print(1)"
expect.files."out.json" = { json = { a = 1 }, exists = true }
"#,
    )
    .unwrap();
    assert!(schema.is_valid(&good));
    let mut typo = good.clone();
    typo["jobs"][0]["expcet"] = Value::from("1");
    assert!(!schema.is_valid(&typo), "unknown job key accepted");
    let mut lang = good.clone();
    lang["jobs"][0]["lang"] = Value::from("cobol");
    assert!(!schema.is_valid(&lang), "unknown language accepted");
    let mut top = good.clone();
    top["job"] = Value::Array(vec![]);
    assert!(!schema.is_valid(&top), "unknown top-level key accepted");
}
