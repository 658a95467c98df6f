//! One diagnostic type for every job-file error: file, line:col (via miette labels), what
//! is wrong and what would be valid.

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceCode};
use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

/// The text of a file, shared by every diagnostic that points into it.
#[derive(Clone)]
pub struct Source {
    named: Arc<NamedSource<Arc<str>>>,
    text: Arc<str>,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("name", &self.named.name())
            .finish()
    }
}

impl Source {
    pub fn new(name: impl AsRef<str>, text: impl Into<Arc<str>>) -> Source {
        let text: Arc<str> = text.into();
        Source {
            named: Arc::new(NamedSource::new(name, text.clone())),
            text,
        }
    }

    pub fn from_path(path: &Path, text: impl Into<Arc<str>>) -> Source {
        Source::new(path.display().to_string(), text)
    }

    pub fn name(&self) -> &str {
        self.named.name()
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut off = offset.min(self.text.len());
        while off > 0 && !self.text.is_char_boundary(off) {
            off -= 1;
        }
        let before = &self.text[..off];
        let line = before.bytes().filter(|b| *b == b'\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }

    /// `name:line:col` of a byte offset.
    pub fn location(&self, offset: usize) -> String {
        let (l, c) = self.line_col(offset);
        format!("{}:{l}:{c}", self.name())
    }

    /// Byte offset of the start of 1-based `line`, plus a 1-based char `col`.
    pub fn offset_of(&self, line: usize, col: usize) -> usize {
        let mut off = 0;
        for _ in 1..line.max(1) {
            match self.text[off..].find('\n') {
                Some(i) => off += i + 1,
                None => return self.text.len(),
            }
        }
        let rest = &self.text[off..];
        let line_end = rest.find('\n').unwrap_or(rest.len());
        let c = rest[..line_end]
            .char_indices()
            .nth(col.saturating_sub(1))
            .map(|(i, _)| i)
            .unwrap_or(line_end);
        off + c
    }

    /// A non-empty span for labels: an empty span is widened to the rest of its token.
    pub fn widen(&self, span: Range<usize>) -> Range<usize> {
        let start = span.start.min(self.text.len());
        if span.end > start {
            return start..span.end.min(self.text.len());
        }
        let rest = &self.text[start..];
        let len = rest
            .find(|c: char| c.is_whitespace() || c == ',' || c == '}' || c == ']')
            .unwrap_or(rest.len());
        start..start + len.max(usize::from(!rest.is_empty()))
    }
}

/// An error in a job file (or in a file it refers to).
#[derive(Debug, Clone)]
pub struct SpecError {
    pub message: String,
    pub source: Option<Source>,
    pub labels: Vec<(Range<usize>, Option<String>)>,
    pub help: Option<String>,
    pub related: Vec<SpecError>,
}

impl SpecError {
    /// An error without a location.
    pub fn msg(message: impl Into<String>) -> SpecError {
        SpecError {
            message: message.into(),
            source: None,
            labels: vec![],
            help: None,
            related: vec![],
        }
    }

    /// An error in `source`; the message is prefixed with `file:line:col` of `span`
    /// (or just the file name when there is no span).
    pub fn at(
        source: &Source,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        label: Option<String>,
    ) -> SpecError {
        let message = message.into();
        match span {
            Some(span) => {
                let span = source.widen(span);
                SpecError {
                    message: format!("{}: {message}", source.location(span.start)),
                    source: Some(source.clone()),
                    labels: vec![(span, label)],
                    help: None,
                    related: vec![],
                }
            }
            None => SpecError {
                message: format!("{}: {message}", source.name()),
                source: Some(source.clone()),
                labels: vec![],
                help: None,
                related: vec![],
            },
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> SpecError {
        self.help = Some(help.into());
        self
    }

    pub fn with_related(mut self, other: SpecError) -> SpecError {
        self.related.push(other);
        self
    }

    pub fn into_report(self) -> miette::Report {
        miette::Report::new(self)
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SpecError {}

impl Diagnostic for SpecError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        None
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        if self.labels.is_empty() {
            return None;
        }
        self.source.as_ref().map(|s| &*s.named as &dyn SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.labels.is_empty() || self.source.is_none() {
            return None;
        }
        Some(Box::new(self.labels.iter().map(|(span, label)| {
            LabeledSpan::new_with_span(label.clone(), span.start..span.end)
        })))
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        if self.related.is_empty() {
            return None;
        }
        Some(Box::new(self.related.iter().map(|d| d as &dyn Diagnostic)))
    }
}

/// Converts collected errors into reports.
pub fn into_reports(errors: Vec<SpecError>) -> Vec<miette::Report> {
    errors.into_iter().map(SpecError::into_report).collect()
}

/// The closest candidate to `word` (for "did you mean").
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.75)
        .max_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal))
        .map(|(_, c)| c)
}
