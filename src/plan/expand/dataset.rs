//! Datasets: JSONL (one object per non-empty line), JSON (array of objects), CSV/TSV
//! (header row; values are strings). Rows become minijinja values once, shared by every
//! template of the job.

use crate::spec::error::{Source, SpecError};
use minijinja::value::{Value, ValueKind};
use rayon::prelude::*;
use std::path::Path;

/// A parsed dataset. Rows are kept compact (JSONL lines as text, CSV records) and turned
/// into template values one at a time while rendering, so a 100k-row dataset costs
/// little more than its file size.
#[derive(Debug)]
pub struct Dataset {
    /// As shown in messages.
    pub name: String,
    rows: RowStore,
    /// Field names of the first row (for help messages).
    pub fields: Vec<String>,
}

#[derive(Debug)]
enum RowStore {
    /// Validated JSON objects, as byte ranges of the text.
    Lines(Source, Vec<(usize, usize)>),
    Csv(Vec<Value>, Vec<csv::StringRecord>),
    Values(Vec<Value>),
}

impl Dataset {
    pub fn len(&self) -> usize {
        match &self.rows {
            RowStore::Lines(_, l) => l.len(),
            RowStore::Csv(_, r) => r.len(),
            RowStore::Values(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row `i` as a template value (a map).
    pub fn row(&self, i: usize) -> Value {
        match &self.rows {
            RowStore::Lines(src, lines) => {
                let (a, b) = lines[i];
                serde_json::from_str::<Value>(&src.text()[a..b]).unwrap_or_default()
            }
            RowStore::Csv(headers, records) => headers
                .iter()
                .cloned()
                .zip(records[i].iter().map(Value::from))
                .collect(),
            RowStore::Values(v) => v[i].clone(),
        }
    }
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
                RowStore::Values(json_array(&source)?)
            } else {
                jsonl(&source)?
            }
        }
        "csv" => csv_rows(&source, b',')?,
        _ => csv_rows(&source, b'\t')?,
    };
    let mut ds = Dataset {
        name,
        rows,
        fields: vec![],
    };
    if !ds.is_empty() {
        ds.fields = ds
            .row(0)
            .try_iter()
            .map(|it| it.map(|k| k.to_string()).collect())
            .unwrap_or_default();
    }
    Ok(ds)
}

fn bad(source: &Source, offset: usize, len: usize, msg: String, label: &str) -> DatasetError {
    DatasetError::Bad(
        SpecError::at(source, Some(offset..offset + len), msg, Some(label.into())).with_help(
            "a dataset row is a JSON object ({\"field\": value, ...}); JSONL has one per line",
        ),
    )
}

fn jsonl(source: &Source) -> Result<RowStore, DatasetError> {
    let text = source.text();
    let mut lines = vec![];
    let mut off = 0;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if !line.trim().is_empty() {
            lines.push((n + 1, off, line));
        }
        off += line.len();
    }
    // Validate every line (in parallel, without building values).
    let bad_lines: Vec<(usize, usize, String)> = lines
        .par_iter()
        .filter_map(
            |&(n, off, line)| match serde_json::from_str::<serde::de::IgnoredAny>(line) {
                Ok(_) if line.trim_start().starts_with('{') => None,
                Ok(_) => Some((
                    off,
                    line.trim_end().len(),
                    format!("line {n} is not a JSON object"),
                )),
                Err(e) => Some((
                    off + e.column().saturating_sub(1),
                    1,
                    format!("line {n} is not valid JSON: {e}"),
                )),
            },
        )
        .collect();
    if let Some((off, len, msg)) = bad_lines.first() {
        let more = if bad_lines.len() > 1 {
            format!(" ({} more bad lines)", bad_lines.len() - 1)
        } else {
            String::new()
        };
        return Err(bad(
            source,
            *off,
            *len,
            format!("malformed dataset: {msg}{more}"),
            "bad row",
        ));
    }
    Ok(RowStore::Lines(
        source.clone(),
        lines
            .into_iter()
            .map(|(_, off, line)| (off, off + line.len()))
            .collect(),
    ))
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

fn csv_rows(source: &Source, delim: u8) -> Result<RowStore, DatasetError> {
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
        rows.push(rec);
    }
    Ok(RowStore::Csv(headers, rows))
}
