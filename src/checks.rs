//! `expect` checks (README, "A job file"): pure functions from a job's outcome to [`CheckResult`]s.
//!
//! Conventions (documented in the README as well):
//!
//! * `stdout` / `stderr` compare after [`judge_normalize`]: CRLF becomes LF, trailing
//!   whitespace of every line and trailing blank lines are dropped (the judge convention).
//!   Leading whitespace and leading blank lines still matter.
//! * `stdout_exact` and `files.*.equals` are byte-exact comparisons.
//! * `*_contains` and `files.*.contains` are plain substring searches (one check per string).
//! * `*_regex` and `files.*.regex` use the `regex` crate and search anywhere in the text
//!   (unanchored). Multi-line mode is off: `^` and `$` match at the start and end of the
//!   whole text; write `(?m)` at the start of the pattern to match per line.
//! * `files.*.json` parses the file as JSON and compares it structurally: object key order
//!   does not matter, numbers compare by value (`1` equals `1.0`).
//! * `files.*.sha256` compares the hex digest case-insensitively.
//! * A file entry with no check at all means "the file must exist".
//! * Files are read from the directory where the runner copied them; a symlink or anything
//!   that is not a regular file counts as missing (never followed).

use crate::plan::job::{Compare, FileCheck, ResolvedExpect};
use crate::report::diff::split_lines;
use crate::report::model::CheckResult;
use regex::Regex;
use sha2::{Digest, Sha256};
use std::path::{Component, Path};

/// Longest snippet of a line quoted in a check message.
const SNIPPET: usize = 80;

/// Evaluates every check of `expect`; the job passes when all results pass.
///
/// `files_dir` is the host directory holding the copies of the workdir files named in
/// `expect.files` (same relative paths). `None` means no file could be collected: every
/// file is treated as missing.
pub fn evaluate(
    expect: &ResolvedExpect,
    exit_code: Option<i32>,
    stdout: &str,
    stderr: &str,
    files_dir: Option<&Path>,
) -> Vec<CheckResult> {
    let mut out = Vec::new();

    out.push(match exit_code {
        Some(code) if code == expect.exit_code => pass("exit_code", format!("exit code {code}")),
        Some(code) => fail(
            "exit_code",
            format!("exit code {code}, expected {}", expect.exit_code),
        ),
        None => fail(
            "exit_code",
            format!(
                "no exit code (the program was killed), expected {}",
                expect.exit_code
            ),
        ),
    });

    if let Some(want) = &expect.stdout {
        out.push(match expect.compare {
            Compare::Lines => judge_check("stdout", "stdout", want, stdout),
            Compare::Exact => exact_check("stdout", "stdout", want, stdout),
            Compare::Tokens => tokens_check("stdout", want, stdout, None),
            Compare::Float(eps) => tokens_check("stdout", want, stdout, Some(eps)),
        });
    }
    if let Some(want) = &expect.stdout_exact {
        out.push(exact_check("stdout_exact", "stdout", want, stdout));
    }
    for needle in &expect.stdout_contains {
        out.push(contains_check("stdout_contains", "stdout", needle, stdout));
    }
    if let Some(re) = &expect.stdout_regex {
        out.push(regex_check("stdout_regex", "stdout", re, stdout));
    }
    if let Some(want) = &expect.stderr {
        out.push(judge_check("stderr", "stderr", want, stderr));
    }
    for needle in &expect.stderr_contains {
        out.push(contains_check("stderr_contains", "stderr", needle, stderr));
    }
    if let Some(re) = &expect.stderr_regex {
        out.push(regex_check("stderr_regex", "stderr", re, stderr));
    }

    for fc in &expect.files {
        file_checks(fc, files_dir, &mut out);
    }
    out
}

/// The judge convention: CRLF → LF, trailing whitespace of each line removed, trailing
/// blank lines removed. The result has no trailing newline.
pub fn judge_normalize(s: &str) -> String {
    let s = s.replace("\r\n", "\n");
    let mut lines: Vec<&str> = s.split('\n').map(str::trim_end).collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines.join("\n")
}

fn pass(kind: &str, message: String) -> CheckResult {
    CheckResult {
        kind: kind.to_string(),
        passed: true,
        message,
        expected: None,
        actual: None,
    }
}

fn fail(kind: &str, message: String) -> CheckResult {
    CheckResult {
        kind: kind.to_string(),
        passed: false,
        message,
        expected: None,
        actual: None,
    }
}

fn fail_diff(kind: &str, message: String, expected: String, actual: String) -> CheckResult {
    CheckResult {
        kind: kind.to_string(),
        passed: false,
        message,
        expected: Some(expected),
        actual: Some(actual),
    }
}

/// Quotes a snippet for a message: at most [`SNIPPET`] chars, control chars escaped.
fn snippet(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i >= SNIPPET {
            out.push('…');
            break;
        }
        match c {
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&c.escape_default().to_string()),
            c => out.push(c),
        }
    }
    format!("`{out}`")
}

/// "differs at line N: expected `a`, got `b`" (1-based), or None when the lines are equal.
fn first_difference(expected: &str, actual: &str) -> Option<String> {
    let e = split_lines(expected);
    let a = split_lines(actual);
    let n = e.len().max(a.len());
    for i in 0..n {
        match (e.get(i), a.get(i)) {
            (Some(x), Some(y)) if x == y => continue,
            (Some(x), Some(y)) => {
                return Some(format!(
                    "differs at line {}: expected {}, got {}",
                    i + 1,
                    snippet(x),
                    snippet(y)
                ))
            }
            (Some(x), None) => {
                return Some(format!(
                    "ends early at line {}: expected {}",
                    i + 1,
                    snippet(x)
                ))
            }
            (None, Some(y)) => {
                return Some(format!(
                    "has extra output at line {}: got {}",
                    i + 1,
                    snippet(y)
                ))
            }
            (None, None) => unreachable!(),
        }
    }
    None
}

/// When two texts have the same lines, they differ only in the final newline.
fn newline_difference(want: &str) -> String {
    if want.ends_with('\n') {
        "differs only in the trailing newline: expected one, got none".to_string()
    } else {
        "differs only in the trailing newline: expected none, got one".to_string()
    }
}

fn judge_check(kind: &str, stream: &str, want: &str, got: &str) -> CheckResult {
    let want = judge_normalize(want);
    let got = judge_normalize(got);
    if want == got {
        return pass(kind, format!("{stream} matches"));
    }
    let what = first_difference(&want, &got).unwrap_or_else(|| "differs".to_string());
    let message = if got.is_empty() {
        format!("{stream} is empty, expected {}", snippet(&want))
    } else {
        format!("{stream} {what}")
    };
    fail_diff(kind, message, want, got)
}

/// `compare = "tokens"` / `{ float = EPS }`: the same whitespace-separated tokens; with
/// `eps`, two tokens that both read as numbers are equal when their absolute or relative
/// difference is at most `eps` (testlib's `doubleCompare`).
fn tokens_check(kind: &str, want: &str, got: &str, eps: Option<f64>) -> CheckResult {
    let (w, g): (Vec<&str>, Vec<&str>) = (
        want.split_ascii_whitespace().collect(),
        got.split_ascii_whitespace().collect(),
    );
    let same = |a: &str, b: &str| {
        a == b
            || eps.is_some_and(|eps| match (a.parse::<f64>(), b.parse::<f64>()) {
                (Ok(x), Ok(y)) if x.is_finite() && y.is_finite() => {
                    let d = (x - y).abs();
                    d <= eps || d <= eps * x.abs().max(y.abs())
                }
                (Ok(x), Ok(y)) => x == y || (x.is_nan() && y.is_nan()),
                _ => false,
            })
    };
    let how = match eps {
        Some(e) => format!("tokens (numbers within {e})"),
        None => "tokens".to_string(),
    };
    let first = w.iter().zip(&g).position(|(a, b)| !same(a, b));
    let message = match first {
        Some(i) => format!(
            "stdout token {} differs: expected {}, got {}",
            i + 1,
            snippet(w[i]),
            snippet(g[i])
        ),
        None if w.len() == g.len() => return pass(kind, format!("stdout {how} match")),
        None if w.len() > g.len() => format!(
            "stdout has {} tokens, expected {} (the next would be {})",
            g.len(),
            w.len(),
            snippet(w[g.len()])
        ),
        None => format!(
            "stdout has {} tokens, expected {} (extra: {})",
            g.len(),
            w.len(),
            snippet(g[w.len()])
        ),
    };
    fail_diff(kind, message, want.to_string(), got.to_string())
}

fn exact_check(kind: &str, stream: &str, want: &str, got: &str) -> CheckResult {
    if want == got {
        return pass(kind, format!("{stream} matches exactly"));
    }
    let what = first_difference(want, got).unwrap_or_else(|| newline_difference(want));
    fail_diff(
        kind,
        format!("{stream} {what}"),
        want.to_string(),
        got.to_string(),
    )
}

fn contains_check(kind: &str, stream: &str, needle: &str, hay: &str) -> CheckResult {
    if hay.contains(needle) {
        pass(kind, format!("{stream} contains {}", snippet(needle)))
    } else {
        fail(
            kind,
            format!("{stream} does not contain {}", snippet(needle)),
        )
    }
}

fn regex_check(kind: &str, stream: &str, pattern: &str, hay: &str) -> CheckResult {
    match Regex::new(pattern) {
        Ok(re) if re.is_match(hay) => pass(kind, format!("{stream} matches /{pattern}/")),
        Ok(_) => fail(kind, format!("{stream} does not match /{pattern}/")),
        Err(e) => fail(kind, format!("invalid regex /{pattern}/: {e}")),
    }
}

/// A relative path without `..`, root or prefix components.
fn safe_relative(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Reads a collected file: Some(bytes) only for a regular file (symlinks are not followed).
fn read_collected(dir: Option<&Path>, rel: &str) -> Option<Vec<u8>> {
    let dir = dir?;
    if !safe_relative(rel) {
        return None;
    }
    let full = dir.join(rel);
    // Refuse symlinks anywhere below `dir`.
    let mut cur = dir.to_path_buf();
    for c in Path::new(rel).components() {
        if let Component::Normal(part) = c {
            cur.push(part);
            let md = std::fs::symlink_metadata(&cur).ok()?;
            if md.file_type().is_symlink() {
                return None;
            }
        }
    }
    let md = std::fs::symlink_metadata(&full).ok()?;
    if !md.file_type().is_file() {
        return None;
    }
    std::fs::read(&full).ok()
}

fn file_checks(fc: &FileCheck, files_dir: Option<&Path>, out: &mut Vec<CheckResult>) {
    let path = &fc.path;
    let content = read_collected(files_dir, path);
    let has_content_checks = fc.equals.is_some()
        || !fc.contains.is_empty()
        || fc.regex.is_some()
        || fc.json.is_some()
        || fc.sha256.is_some();

    let want_exists = fc
        .exists
        .or(if has_content_checks { None } else { Some(true) });
    if let Some(want) = want_exists {
        let kind = "file.exists";
        out.push(match (want, content.is_some()) {
            (true, true) => pass(kind, format!("file `{path}` exists")),
            (false, false) => pass(kind, format!("file `{path}` does not exist")),
            (true, false) => fail(kind, format!("file `{path}` does not exist")),
            (false, true) => fail(kind, format!("file `{path}` exists, expected it not to")),
        });
    }

    let missing = |kind: &str| fail(kind, format!("file `{path}` does not exist"));

    if let Some(want) = &fc.equals {
        let kind = "file.equals";
        out.push(match &content {
            None => missing(kind),
            Some(bytes) if bytes.as_slice() == want.as_bytes() => {
                pass(kind, format!("file `{path}` has the expected content"))
            }
            Some(bytes) => {
                let got = String::from_utf8_lossy(bytes).into_owned();
                let what = first_difference(want, &got).unwrap_or_else(|| newline_difference(want));
                fail_diff(kind, format!("file `{path}` {what}"), want.clone(), got)
            }
        });
    }

    for needle in &fc.contains {
        let kind = "file.contains";
        out.push(match &content {
            None => missing(kind),
            Some(bytes) => {
                let text = String::from_utf8_lossy(bytes);
                if text.contains(needle.as_str()) {
                    pass(kind, format!("file `{path}` contains {}", snippet(needle)))
                } else {
                    fail(
                        kind,
                        format!("file `{path}` does not contain {}", snippet(needle)),
                    )
                }
            }
        });
    }

    if let Some(pattern) = &fc.regex {
        let kind = "file.regex";
        out.push(match &content {
            None => missing(kind),
            Some(bytes) => {
                let text = String::from_utf8_lossy(bytes);
                match Regex::new(pattern) {
                    Ok(re) if re.is_match(&text) => {
                        pass(kind, format!("file `{path}` matches /{pattern}/"))
                    }
                    Ok(_) => fail(kind, format!("file `{path}` does not match /{pattern}/")),
                    Err(e) => fail(kind, format!("invalid regex /{pattern}/: {e}")),
                }
            }
        });
    }

    if let Some(want) = &fc.json {
        let kind = "file.json";
        out.push(match &content {
            None => missing(kind),
            Some(bytes) => match serde_json::from_slice::<serde_json::Value>(bytes) {
                Err(e) => fail(kind, format!("file `{path}` is not valid JSON: {e}")),
                Ok(got) => match json_difference(want, &got, "$") {
                    None => pass(kind, format!("file `{path}` has the expected JSON")),
                    Some(msg) => fail_diff(
                        kind,
                        format!("file `{path}`: JSON {msg}"),
                        pretty(want),
                        pretty(&got),
                    ),
                },
            },
        });
    }

    if let Some(want) = &fc.sha256 {
        let kind = "file.sha256";
        out.push(match &content {
            None => missing(kind),
            Some(bytes) => {
                let got = hex(&Sha256::digest(bytes));
                if got.eq_ignore_ascii_case(want.trim()) {
                    pass(kind, format!("file `{path}` has sha256 {got}"))
                } else {
                    fail(
                        kind,
                        format!(
                            "file `{path}` has sha256 {got}, expected {}",
                            want.trim().to_ascii_lowercase()
                        ),
                    )
                }
            }
        });
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn pretty(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

fn compact(v: &serde_json::Value) -> String {
    let s = serde_json::to_string(v).unwrap_or_default();
    snippet(&s)
}

/// The first structural difference between two JSON values, as "differs at `$.a[1]`: …".
fn json_difference(want: &serde_json::Value, got: &serde_json::Value, at: &str) -> Option<String> {
    use serde_json::Value;
    let differ = || {
        Some(format!(
            "differs at `{at}`: expected {}, got {}",
            compact(want),
            compact(got)
        ))
    };
    match (want, got) {
        (Value::Number(a), Value::Number(b)) => {
            let equal = a == b
                || match (a.as_f64(), b.as_f64()) {
                    (Some(x), Some(y)) => x == y,
                    _ => false,
                };
            if equal {
                None
            } else {
                differ()
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
                if let Some(d) = json_difference(x, y, &format!("{at}[{i}]")) {
                    return Some(d);
                }
            }
            if a.len() != b.len() {
                Some(format!(
                    "differs at `{at}`: expected {} elements, got {}",
                    a.len(),
                    b.len()
                ))
            } else {
                None
            }
        }
        (Value::Object(a), Value::Object(b)) => {
            for (k, x) in a {
                let sub = json_key_path(at, k);
                match b.get(k) {
                    None => return Some(format!("is missing key `{sub}`")),
                    Some(y) => {
                        if let Some(d) = json_difference(x, y, &sub) {
                            return Some(d);
                        }
                    }
                }
            }
            b.keys()
                .find(|k| !a.contains_key(*k))
                .map(|k| format!("has unexpected key `{}`", json_key_path(at, k)))
        }
        _ if want == got => None,
        _ => differ(),
    }
}

fn json_key_path(at: &str, key: &str) -> String {
    let simple = !key.is_empty()
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !key.starts_with(|c: char| c.is_ascii_digit());
    if simple {
        format!("{at}.{key}")
    } else {
        format!("{at}[{}]", serde_json::Value::String(key.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn expect() -> ResolvedExpect {
        ResolvedExpect::default()
    }

    fn only(results: Vec<CheckResult>, kind: &str) -> Vec<CheckResult> {
        results.into_iter().filter(|r| r.kind == kind).collect()
    }

    fn one(results: Vec<CheckResult>, kind: &str) -> CheckResult {
        let mut v = only(results, kind);
        assert_eq!(v.len(), 1, "expected exactly one {kind} check");
        v.remove(0)
    }

    #[test]
    fn exit_code_default_zero() {
        let r = evaluate(&expect(), Some(0), "", "", None);
        assert_eq!(r.len(), 1);
        assert!(r[0].passed);
        assert_eq!(r[0].kind, "exit_code");

        let r = one(evaluate(&expect(), Some(3), "", "", None), "exit_code");
        assert!(!r.passed);
        assert_eq!(r.message, "exit code 3, expected 0");

        let r = one(evaluate(&expect(), None, "", "", None), "exit_code");
        assert!(!r.passed);
        assert!(r.message.contains("killed"));

        let mut e = expect();
        e.exit_code = 2;
        assert!(one(evaluate(&e, Some(2), "", "", None), "exit_code").passed);
        assert!(!one(evaluate(&e, Some(0), "", "", None), "exit_code").passed);
    }

    #[test]
    fn normalize() {
        assert_eq!(judge_normalize("a  \r\nb\t\n\n \n"), "a\nb");
        assert_eq!(judge_normalize("\n a\n"), "\n a");
        assert_eq!(judge_normalize(""), "");
        assert_eq!(judge_normalize("\n\n"), "");
    }

    #[test]
    fn stdout_judge() {
        let mut e = expect();
        e.stdout = Some("Hello\n5\n".into());
        assert!(
            one(
                evaluate(&e, Some(0), "Hello  \r\n5\n\n\n", "", None),
                "stdout"
            )
            .passed
        );

        let r = one(evaluate(&e, Some(0), "Hello\n6\n", "", None), "stdout");
        assert!(!r.passed);
        assert_eq!(r.message, "stdout differs at line 2: expected `5`, got `6`");
        assert_eq!(r.expected.as_deref(), Some("Hello\n5"));
        assert_eq!(r.actual.as_deref(), Some("Hello\n6"));

        let r = one(
            evaluate(&e, Some(0), "Hello\n5\nmore\n", "", None),
            "stdout",
        );
        assert!(!r.passed);
        assert!(
            r.message.contains("extra output at line 3"),
            "{}",
            r.message
        );

        let r = one(evaluate(&e, Some(0), "", "", None), "stdout");
        assert!(r.message.starts_with("stdout is empty"), "{}", r.message);

        // Leading whitespace matters.
        assert!(!one(evaluate(&e, Some(0), " Hello\n5", "", None), "stdout").passed);
    }

    #[test]
    fn stderr_judge() {
        let mut e = expect();
        e.stderr = Some("warn".into());
        assert!(one(evaluate(&e, Some(0), "", "warn \n", None), "stderr").passed);
        let r = one(evaluate(&e, Some(0), "warn", "", None), "stderr");
        assert!(!r.passed);
    }

    #[test]
    fn stdout_exact() {
        let mut e = expect();
        e.stdout_exact = Some("a\n".into());
        assert!(one(evaluate(&e, Some(0), "a\n", "", None), "stdout_exact").passed);
        let r = one(evaluate(&e, Some(0), "a", "", None), "stdout_exact");
        assert!(!r.passed);
        assert_eq!(
            r.message,
            "stdout differs only in the trailing newline: expected one, got none"
        );
        let r = one(evaluate(&e, Some(0), "a \n", "", None), "stdout_exact");
        assert!(!r.passed);
        assert_eq!(
            r.message,
            "stdout differs at line 1: expected `a`, got `a `"
        );
        assert_eq!(r.actual.as_deref(), Some("a \n"));
        let r = one(evaluate(&e, Some(0), "a\r\n", "", None), "stdout_exact");
        assert!(!r.passed);
        assert!(r.message.contains("\\r"), "{}", r.message);
    }

    #[test]
    fn contains_checks() {
        let mut e = expect();
        e.stdout_contains = vec!["foo".into(), "bar".into()];
        e.stderr_contains = vec!["oops".into()];
        let r = evaluate(&e, Some(0), "foo baz", "big oops", None);
        let so = only(r.clone(), "stdout_contains");
        assert_eq!(so.len(), 2);
        assert!(so[0].passed);
        assert!(!so[1].passed);
        assert_eq!(so[1].message, "stdout does not contain `bar`");
        assert!(one(r, "stderr_contains").passed);
        assert!(!one(evaluate(&e, Some(0), "", "", None), "stderr_contains").passed);
    }

    #[test]
    fn regex_checks() {
        let mut e = expect();
        e.stdout_regex = Some(r"result: \d+".into());
        e.stderr_regex = Some(r"^warn$".into());
        let r = evaluate(&e, Some(0), "x\nresult: 42\n", "warn", None);
        assert!(one(r.clone(), "stdout_regex").passed);
        assert!(one(r, "stderr_regex").passed);
        // Multi-line mode is off by default: ^ and $ anchor the whole text.
        let r = evaluate(&e, Some(0), "result: x", "a\nwarn\n", None);
        assert!(!one(r.clone(), "stdout_regex").passed);
        assert!(!one(r, "stderr_regex").passed);
        e.stderr_regex = Some(r"(?m)^warn$".into());
        assert!(one(evaluate(&e, Some(0), "", "a\nwarn\n", None), "stderr_regex").passed);
        e.stdout_regex = Some("(".into());
        let r = one(evaluate(&e, Some(0), "", "", None), "stdout_regex");
        assert!(!r.passed);
        assert!(r.message.starts_with("invalid regex"));
    }

    fn files_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("out.txt"), "hello world\n").unwrap();
        std::fs::write(
            d.path().join("sub/data.json"),
            r#"{"b": [1, 2.0], "a": "x"}"#,
        )
        .unwrap();
        std::fs::write(d.path().join("bad.json"), "{nope").unwrap();
        std::fs::create_dir_all(d.path().join("adir")).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(d.path().join("out.txt"), d.path().join("link.txt")).unwrap();
        d
    }

    fn with_file(fc: FileCheck) -> ResolvedExpect {
        let mut e = expect();
        e.files = vec![fc];
        e
    }

    #[test]
    fn file_exists() {
        let d = files_dir();
        let dir = Some(d.path());
        let check = |path: &str, exists: Option<bool>| {
            let e = with_file(FileCheck {
                path: path.into(),
                exists,
                ..Default::default()
            });
            one(evaluate(&e, Some(0), "", "", dir), "file.exists")
        };
        assert!(check("out.txt", Some(true)).passed);
        assert!(check("out.txt", None).passed);
        assert!(check("sub/data.json", Some(true)).passed);
        let r = check("missing.txt", Some(true));
        assert!(!r.passed);
        assert_eq!(r.message, "file `missing.txt` does not exist");
        assert!(check("missing.txt", Some(false)).passed);
        assert!(!check("out.txt", Some(false)).passed);
        // Directories and symlinks are not regular files.
        assert!(!check("adir", Some(true)).passed);
        #[cfg(unix)]
        assert!(!check("link.txt", Some(true)).passed);
        // No escaping the directory.
        assert!(!check("../out.txt", Some(true)).passed);
        assert!(!check("/etc/passwd", Some(true)).passed);
        // No files collected at all.
        let e = with_file(FileCheck {
            path: "out.txt".into(),
            exists: Some(true),
            ..Default::default()
        });
        assert!(!one(evaluate(&e, Some(0), "", "", None), "file.exists").passed);
    }

    #[test]
    fn file_equals() {
        let d = files_dir();
        let run = |want: &str| {
            let e = with_file(FileCheck {
                path: "out.txt".into(),
                equals: Some(want.into()),
                ..Default::default()
            });
            let r = evaluate(&e, Some(0), "", "", Some(d.path()));
            assert!(only(r.clone(), "file.exists").is_empty());
            one(r, "file.equals")
        };
        assert!(run("hello world\n").passed);
        let r = run("hello world");
        assert!(!r.passed);
        assert!(r.message.contains("out.txt"));
        let r = run("hello there\n");
        assert!(!r.passed);
        assert_eq!(
            r.message,
            "file `out.txt` differs at line 1: expected `hello there`, got `hello world`"
        );
        assert_eq!(r.actual.as_deref(), Some("hello world\n"));
        let e = with_file(FileCheck {
            path: "nope".into(),
            equals: Some("x".into()),
            ..Default::default()
        });
        let r = one(evaluate(&e, Some(0), "", "", Some(d.path())), "file.equals");
        assert!(!r.passed);
        assert!(r.message.contains("does not exist"));
    }

    #[test]
    fn file_contains_and_regex() {
        let d = files_dir();
        let e = with_file(FileCheck {
            path: "out.txt".into(),
            contains: vec!["world".into(), "moon".into()],
            regex: Some(r"^hello \w+$".into()),
            ..Default::default()
        });
        let r = evaluate(&e, Some(0), "", "", Some(d.path()));
        let c = only(r.clone(), "file.contains");
        assert!(c[0].passed);
        assert!(!c[1].passed);
        assert_eq!(c[1].message, "file `out.txt` does not contain `moon`");
        // `$` matches only at the very end: "hello world\n" ends with a newline.
        assert!(!one(r, "file.regex").passed);
        let e = with_file(FileCheck {
            path: "out.txt".into(),
            regex: Some(r"(?m)^hello \w+$".into()),
            ..Default::default()
        });
        assert!(one(evaluate(&e, Some(0), "", "", Some(d.path())), "file.regex").passed);
    }

    #[test]
    fn file_json() {
        let d = files_dir();
        let run = |path: &str, want: serde_json::Value| {
            let e = with_file(FileCheck {
                path: path.into(),
                json: Some(want),
                ..Default::default()
            });
            one(evaluate(&e, Some(0), "", "", Some(d.path())), "file.json")
        };
        // Key order and 2 vs 2.0 don't matter.
        assert!(run("sub/data.json", json!({"a": "x", "b": [1, 2]})).passed);
        let r = run("sub/data.json", json!({"a": "x", "b": [1, 3]}));
        assert!(!r.passed);
        assert_eq!(
            r.message,
            "file `sub/data.json`: JSON differs at `$.b[1]`: expected `3`, got `2.0`"
        );
        assert!(r.expected.is_some() && r.actual.is_some());
        let r = run("sub/data.json", json!({"a": "x"}));
        assert!(r.message.contains("unexpected key `$.b`"), "{}", r.message);
        let r = run("sub/data.json", json!({"a": "x", "b": [1, 2], "my key": 1}));
        assert!(
            r.message.contains(r#"missing key `$["my key"]`"#),
            "{}",
            r.message
        );
        let r = run("bad.json", json!({}));
        assert!(!r.passed);
        assert!(r.message.contains("not valid JSON"));
        assert!(!run("missing.json", json!({})).passed);
    }

    #[test]
    fn file_sha256() {
        let d = files_dir();
        let run = |want: &str| {
            let e = with_file(FileCheck {
                path: "out.txt".into(),
                sha256: Some(want.into()),
                ..Default::default()
            });
            one(evaluate(&e, Some(0), "", "", Some(d.path())), "file.sha256")
        };
        let digest = hex(&Sha256::digest(b"hello world\n"));
        assert!(run(&digest).passed);
        assert!(run(&digest.to_uppercase()).passed);
        let r = run(&"0".repeat(64));
        assert!(!r.passed);
        assert!(r.message.contains(&digest));
    }

    #[test]
    fn stdout_compare_modes() {
        let check = |compare, want: &str, got: &str| {
            let e = ResolvedExpect {
                stdout: Some(want.into()),
                compare,
                ..Default::default()
            };
            one(evaluate(&e, Some(0), got, "", None), "stdout")
        };
        // lines (default): trailing spaces and blank lines do not count, inner ones do.
        assert!(check(Compare::Lines, "1 2\n", "1 2  \n\n").passed);
        assert!(!check(Compare::Lines, "1 2", "1  2").passed);
        // exact: byte for byte.
        assert!(check(Compare::Exact, "1\n", "1\n").passed);
        assert!(!check(Compare::Exact, "1\n", "1").passed);
        // tokens: any whitespace between them.
        assert!(check(Compare::Tokens, "1 2\n3", "1\n2   3\n").passed);
        let r = check(Compare::Tokens, "1 2 3", "1 2 4");
        assert!(!r.passed && r.message.contains("token 3"), "{}", r.message);
        let r = check(Compare::Tokens, "1 2 3", "1 2");
        assert!(
            !r.passed && r.message.contains("2 tokens, expected 3"),
            "{}",
            r.message
        );
        // float: absolute or relative difference.
        assert!(check(Compare::Float(1e-6), "0.3333333", "0.33333331").passed);
        assert!(check(Compare::Float(1e-6), "1000000000", "1000000001").passed);
        assert!(!check(Compare::Float(1e-6), "0.5", "0.501").passed);
        assert!(!check(Compare::Float(1e-6), "abc 1", "abd 1").passed);
        assert!(check(Compare::Float(1e-6), "YES 2.0", "YES 2").passed);
    }
}
