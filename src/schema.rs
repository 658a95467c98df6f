//! JSON Schemas (2020-12) of the job file and the report, generated from the Rust types.
//! `schemas/*.schema.json` are these, checked in; a test fails when they drift.

use schemars::gen::SchemaSettings;
use serde_json::Value;

const DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

fn generate<T: schemars::JsonSchema>(id: &str, nullable_options: bool) -> Value {
    let mut settings = SchemaSettings::draft2019_09();
    // Job files never write `null`; reports do, for absent values.
    settings.option_add_null_type = nullable_options;
    let gen = settings.into_generator();
    let schema = gen.into_root_schema_for::<T>();
    let mut v = serde_json::to_value(schema).expect("schemas serialize");
    if let Value::Object(m) = &mut v {
        m.insert("$schema".into(), Value::String(DIALECT.into()));
        m.insert("$id".into(), Value::String(id.into()));
    }
    v
}

/// The job-file schema (`schemas/job.schema.json`).
pub fn job_schema() -> Value {
    generate::<crate::spec::types::JobFile>(
        "https://llm-sandbox.dev/schemas/job.schema.json",
        false,
    )
}

/// The JSON report schema (`schemas/report.schema.json`).
pub fn report_schema() -> Value {
    generate::<crate::report::model::Report>(
        "https://llm-sandbox.dev/schemas/report.schema.json",
        true,
    )
}

/// Pretty JSON with a final newline, as checked in.
pub fn to_pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("schemas serialize");
    s.push('\n');
    s
}
