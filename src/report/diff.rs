//! The unified line diff of an expected and an actual text, shown by the checks' messages,
//! the terminal reporter and JUnit.

/// Lines of context around each hunk of [`unified_diff`].
const DIFF_CONTEXT: usize = 3;
/// How long [`unified_diff`] may search for a minimal diff.
const DIFF_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(200);

/// Splits into lines; a final newline does not start an extra empty line.
pub(crate) fn split_lines(s: &str) -> Vec<&str> {
    if s.is_empty() {
        return Vec::new();
    }
    let s = s.strip_suffix('\n').unwrap_or(s);
    s.split('\n').collect()
}

/// A unified line diff (`--- expected` / `+++ actual`, 3 lines of context, Myers' algorithm
/// from `similar`) of two texts; empty when they are equal. A diff that would take long (huge
/// inputs) is cut short by a deadline and stays correct, only less minimal.
pub fn unified_diff(expected: &str, actual: &str) -> String {
    use std::fmt::Write;
    if expected == actual {
        return String::new();
    }
    let e = split_lines(expected);
    let a = split_lines(actual);
    let mut out = String::from("--- expected\n+++ actual\n");
    if e == a {
        // Same lines: only the final newline differs.
        let note = if expected.ends_with('\n') {
            "No newline at end of actual"
        } else {
            "No newline at end of expected"
        };
        out.push_str(&format!("\\ {note}\n"));
        return out;
    }
    let diff = similar::TextDiff::configure()
        .timeout(DIFF_TIMEOUT)
        .diff_slices(&e, &a);
    for group in diff.grouped_ops(DIFF_CONTEXT) {
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            continue;
        };
        let range = |start: usize, end: usize| {
            let len = end - start;
            match len {
                0 => format!("{start},0"),
                1 => format!("{}", start + 1),
                _ => format!("{},{len}", start + 1),
            }
        };
        let _ = writeln!(
            out,
            "@@ -{} +{} @@",
            range(first.old_range().start, last.old_range().end),
            range(first.new_range().start, last.new_range().end)
        );
        for op in &group {
            for change in diff.iter_changes(op) {
                let sign = match change.tag() {
                    similar::ChangeTag::Equal => ' ',
                    similar::ChangeTag::Delete => '-',
                    similar::ChangeTag::Insert => '+',
                };
                let _ = writeln!(out, "{sign}{}", show_cr(change.value()));
            }
        }
    }
    out
}

/// A trailing CR (a CRLF line ending) is invisible on a terminal: show it as `\r`.
fn show_cr(line: &str) -> std::borrow::Cow<'_, str> {
    match line.strip_suffix('\r') {
        Some(l) => format!("{l}\\r").into(),
        None => line.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_basic() {
        assert_eq!(unified_diff("a\nb\n", "a\nb\n"), "");
        let d = unified_diff("a\nb\nc\n", "a\nx\nc\n");
        assert_eq!(
            d,
            "--- expected\n+++ actual\n@@ -1,3 +1,3 @@\n a\n-b\n+x\n c\n"
        );
        let d = unified_diff("", "x\n");
        assert_eq!(d, "--- expected\n+++ actual\n@@ -0,0 +1 @@\n+x\n");
        let d = unified_diff("a\n", "a");
        assert_eq!(
            d,
            "--- expected\n+++ actual\n\\ No newline at end of actual\n"
        );
        let d = unified_diff("a\r\n", "a\n");
        assert_eq!(d, "--- expected\n+++ actual\n@@ -1 +1 @@\n-a\\r\n+a\n");
    }

    #[test]
    fn diff_hunks_and_context() {
        let exp: String = (1..=20).map(|i| format!("{i}\n")).collect();
        let act = exp
            .replace("\n3\n", "\nthree\n")
            .replace("\n18\n", "\neighteen\n");
        let d = unified_diff(&exp, &act);
        assert_eq!(
            d,
            "--- expected\n+++ actual\n\
             @@ -1,6 +1,6 @@\n 1\n 2\n-3\n+three\n 4\n 5\n 6\n\
             @@ -15,6 +15,6 @@\n 15\n 16\n 17\n-18\n+eighteen\n 19\n 20\n"
        );
        // Insertion and deletion.
        let d = unified_diff("a\nb\nc\nd\n", "a\nc\nd\ne\n");
        assert_eq!(
            d,
            "--- expected\n+++ actual\n@@ -1,4 +1,4 @@\n a\n-b\n c\n d\n+e\n"
        );
    }

    #[test]
    fn diff_of_large_texts_shows_the_change() {
        let exp: String = (0..3000).map(|i| format!("{i}\n")).collect();
        let act = exp.replace("\n1500\n", "\nX\n");
        let d = unified_diff(&exp, &act);
        assert!(d.contains("@@ -1498,7 +1498,7 @@"), "{d}");
        assert!(d.contains("-1500\n+X\n"), "{d}");
    }
}
