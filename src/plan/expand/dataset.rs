//! Datasets: JSONL (one object per non-empty line), JSON (array of objects), CSV/TSV
//! (header row; values are strings). Rows become minijinja values once, shared by every
//! template of the job.

use crate::spec::error::{Source, SpecError};
use minijinja::value::{Value, ValueKind};
use rayon::prelude::*;
use std::path::Path;

/// A parsed dataset.
#[derive(Debug)]
pub struct Dataset {
    /// As shown in messages.
    pub name: String,
    pub rows: Vec<Value>,
    /// Field names of the first row (for help messages).
    pub fields: Vec<String>,
}

#[derive(Debug)]
pub enum DatasetError {
    /// The file cannot be read.
    Missing(std::io::Error),
    /// Unsupported extension.
    Format(String),
    /// A malformed row, pointing into the dataset file.
    Bad(SpecError),
}

/// Loads the dataset at `path`; `display` is the name used in messages.
pub fn load_dataset(path: &Path, display: &Path) -> Result<Dataset, DatasetError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !matches!(ext.as_str(), "jsonl" | "ndjson" | "json" | "csv" | "tsv") {
        return Err(DatasetError::Format(format!(
            "unsupported extension `.{ext}` (use .jsonl, .ndjson, .json, .csv or .tsv)"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(DatasetError::Missing)?;
    let source = Source::from_path(display, text);
    let name = display.display().to_string();
    let rows = match ext.as_str() {
        "jsonl" | "ndjson" => jsonl(&source)?,
        "json" => {
            if source.text().trim_start().starts_with('[') {
                json_array(&source)?
            } else {
                jsonl(&source)?
            }
        }
        "csv" => csv_rows(&source, b',')?,
        _ => csv_rows(&source, b'\t')?,
    };
    let fields = rows
        .first()
        .and_then(|r| r.try_iter().ok())
        .map(|it| it.map(|k| k.to_string()).collect())
        .unwrap_or_default();
    Ok(Dataset { name, rows, fields })
}

fn bad(source: &Source, offset: usize, len: usize, msg: String, label: &str) -> DatasetError {
    DatasetError::Bad(
        SpecError::at(source, Some(offset..offset + len), msg, Some(label.into())).with_help(
            "a dataset row is a JSON object ({\"field\": value, ...}); JSONL has one per line",
        ),
    )
}

fn jsonl(source: &Source) -> Result<Vec<Value>, DatasetError> {
    let text = source.text();
    let mut lines = vec![];
    let mut off = 0;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if !line.trim().is_empty() {
            lines.push((n + 1, off, line));
        }
        off += line.len();
    }
    let parsed: Vec<Result<Value, (usize, usize, String)>> = lines
        .par_iter()
        .map(
            |&(n, off, line)| match serde_json::from_str::<Value>(line) {
                Ok(v) if v.kind() == ValueKind::Map => Ok(v),
                Ok(v) => Err((
                    off,
                    line.trim_end().len(),
                    format!("line {n} is a {}, not a JSON object", v.kind()),
                )),
                Err(e) => Err((
                    off + e.column().saturating_sub(1),
                    1,
                    format!("line {n} is not valid JSON: {e}"),
                )),
            },
        )
        .collect();
    let nbad = parsed.iter().filter(|r| r.is_err()).count();
    let mut rows = Vec::with_capacity(parsed.len());
    for r in parsed {
        match r {
            Ok(v) => rows.push(v),
            Err((off, len, msg)) => {
                let more = if nbad > 1 {
                    format!(" ({} more bad lines)", nbad - 1)
                } else {
                    String::new()
                };
                return Err(bad(
                    source,
                    off,
                    len,
                    format!("malformed dataset: {msg}{more}"),
                    "bad row",
                ));
            }
        }
    }
    Ok(rows)
}

fn json_array(source: &Source) -> Result<Vec<Value>, DatasetError> {
    let text = source.text();
    let rows: Vec<Value> = serde_json::from_str(text).map_err(|e| {
        let off = source.offset_of(e.line(), e.column());
        bad(
            source,
            off,
            1,
            format!("malformed dataset: not a JSON array of objects: {e}"),
            "here",
        )
    })?;
    if let Some((i, v)) = rows
        .iter()
        .enumerate()
        .find(|(_, v)| v.kind() != ValueKind::Map)
    {
        let start = text.find('[').unwrap_or(0);
        return Err(bad(
            source,
            start,
            1,
            format!(
                "malformed dataset: element {i} of the array is a {}, not an object",
                v.kind()
            ),
            "array of rows",
        ));
    }
    Ok(rows)
}

fn csv_rows(source: &Source, delim: u8) -> Result<Vec<Value>, DatasetError> {
    let mut rd = csv::ReaderBuilder::new()
        .delimiter(delim)
        .has_headers(true)
        .from_reader(source.text().as_bytes());
    let csv_err = |e: csv::Error| {
        let (off, line) = match e.position() {
            Some(p) => (p.byte() as usize, p.line()),
            None => (0, 0),
        };
        let msg = match e.kind() {
            csv::ErrorKind::UnequalLengths {
                expected_len, len, ..
            } => format!("row at line {line} has {len} fields, the header has {expected_len}"),
            _ => format!("line {line}: {e}"),
        };
        bad(
            source,
            off,
            1,
            format!("malformed dataset: {msg}"),
            "bad row",
        )
    };
    let headers: Vec<Value> = rd
        .headers()
        .map_err(csv_err)?
        .iter()
        .map(|h| Value::from(h.trim()))
        .collect();
    if headers.is_empty() {
        return Err(bad(
            source,
            0,
            1,
            "malformed dataset: the CSV has no header row".into(),
            "header expected",
        ));
    }
    let mut rows = vec![];
    for rec in rd.records() {
        let rec = rec.map_err(csv_err)?;
        let v: Value = headers
            .iter()
            .cloned()
            .zip(rec.iter().map(Value::from))
            .collect();
        rows.push(v);
    }
    Ok(rows)
}
