//! Checks on names and paths that reach package managers and the sandbox filesystem.

use regex::Regex;
use std::sync::OnceLock;

/// A package spec as understood by pip, npm, gem, go, cargo, maven, R: a name (optionally
/// `@scope/`, path-like for Go, `group:artifact` for Maven), optional `[extras]`, optional
/// version constraint(s). No whitespace and no shell syntax.
fn library_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(
            r"^(@[A-Za-z0-9][A-Za-z0-9._\-]*/)?[A-Za-z0-9][A-Za-z0-9._+\-/:]*(\[[A-Za-z0-9,._\-]+\])?((@|[<>=!~^]{1,3})[A-Za-z0-9.*+_\-^~]+(,[<>=!~]{1,2}[A-Za-z0-9.*+_\-]+)*)?$",
        )
        .expect("static regex")
    })
}

/// Ok when `name` is a plain package spec (`numpy`, `requests==2.31.0`, `lodash@4`,
/// `@types/node@20`, `github.com/pkg/errors@v0.9.1`); otherwise why not.
pub fn check_library_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.starts_with('-') {
        return Err("it starts with `-` and would be read as an option".into());
    }
    if let Some(c) = name.chars().find(|c| c.is_whitespace()) {
        return Err(if c == '\n' || c == '\r' {
            "it contains a line break".into()
        } else {
            "it contains whitespace".into()
        });
    }
    if let Some(c) = name.chars().find(|c| {
        matches!(
            c,
            ';' | '|'
                | '&'
                | '$'
                | '`'
                | '\''
                | '"'
                | '\\'
                | '('
                | ')'
                | '{'
                | '}'
                | '#'
                | '?'
                | '\0'
        )
    }) {
        return Err(format!("it contains shell syntax `{c}`"));
    }
    if name.len() > 256 {
        return Err("it is longer than 256 characters".into());
    }
    if !library_re().is_match(name) {
        return Err("it is not a package name with an optional version".into());
    }
    Ok(())
}

/// Normalizes a path inside the workdir: relative, or absolute under `/sandbox`; no `..`.
/// Returns the path relative to `/sandbox`.
pub fn check_workdir_path(p: &str) -> Result<String, String> {
    let rel = if let Some(rest) = p.strip_prefix("/sandbox") {
        if rest.is_empty() || rest.starts_with('/') {
            rest.trim_start_matches('/')
        } else {
            return Err("is absolute and outside /sandbox".into());
        }
    } else if p.starts_with('/') {
        return Err("is absolute and outside /sandbox".into());
    } else {
        p
    };
    let mut parts = vec![];
    for c in rel.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("leaves the workdir (`..`)".into()),
            c if c.contains('\0') => return Err("contains a NUL byte".into()),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err("does not name a path under /sandbox".into());
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libraries() {
        for ok in [
            "numpy",
            "requests==2.31.0",
            "numpy>=1.20,<2",
            "pandas[excel]",
            "uvicorn[standard]>=0.20",
            "lodash@4.17.21",
            "lodash@^4",
            "@types/node@20",
            "@scope/pkg",
            "github.com/pkg/errors@v0.9.1",
            "golang.org/x/text",
            "serde@1.0",
            "data.table",
            "org.apache.commons:commons-lang3:3.14.0",
            "rails~>7",
        ] {
            assert!(
                check_library_name(ok).is_ok(),
                "{ok}: {:?}",
                check_library_name(ok)
            );
        }
        for bad in [
            "",
            "numpy; rm -rf /",
            "a b",
            "-e git+https://x",
            "x|y",
            "x&&y",
            "$(id)",
            "`id`",
            "a'b",
            "a\"b",
            "a\nb",
            "--index-url=http://evil",
        ] {
            assert!(check_library_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn workdir_paths() {
        assert_eq!(check_workdir_path("a/b.txt").unwrap(), "a/b.txt");
        assert_eq!(check_workdir_path("./a//b").unwrap(), "a/b");
        assert_eq!(check_workdir_path("/sandbox/x").unwrap(), "x");
        assert!(check_workdir_path("../x").is_err());
        assert!(check_workdir_path("a/../../x").is_err());
        assert!(check_workdir_path("/etc/passwd").is_err());
        assert!(check_workdir_path("/sandboxes/x").is_err());
        assert!(check_workdir_path("/sandbox").is_err());
    }
}
