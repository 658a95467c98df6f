//! Every language of the table runs hello, stdin and a non-zero exit on the native backend.
//! A language whose toolchain is missing on this host is reported as skipped, or fails the
//! test when CI=true or LLM_SANDBOX_REQUIRE_ENGINES=1 (scripts/test installs them all).

use crate::common;

/// (lang, program that prints "hello <first stdin line>" and exits 3).
const PROGRAMS: &[(&str, &str)] = &[
    ("python", "import sys\nprint('hello ' + sys.stdin.readline().strip())\nsys.exit(3)\n"),
    ("javascript", "const l = require('fs').readFileSync(0, 'utf8').split('\\n')[0];\nconsole.log('hello ' + l);\nprocess.exit(3);\n"),
    ("typescript", "const l: string = require('fs').readFileSync(0, 'utf8').split('\\n')[0];\nconsole.log(`hello ${l}`);\nprocess.exit(3);\n"),
    ("java", "import java.util.Scanner;\npublic class Greeter {\n  public static void main(String[] a) {\n    Scanner s = new Scanner(System.in);\n    System.out.println(\"hello \" + s.nextLine());\n    System.exit(3);\n  }\n}\n"),
    ("c", "#include <stdio.h>\nint main(void) { char b[64]; if (!fgets(b, sizeof b, stdin)) return 1; for (char *p = b; *p; p++) if (*p == '\\n') *p = 0; printf(\"hello %s\\n\", b); return 3; }\n"),
    ("cpp", "#include <iostream>\n#include <string>\nint main() { std::string l; std::getline(std::cin, l); std::cout << \"hello \" << l << std::endl; return 3; }\n"),
    ("go", "package main\nimport (\"bufio\"; \"fmt\"; \"os\"; \"strings\")\nfunc main() { r := bufio.NewReader(os.Stdin); l, _ := r.ReadString('\\n'); fmt.Println(\"hello \" + strings.TrimSpace(l)); os.Exit(3) }\n"),
    ("ruby", "l = STDIN.gets.strip\nputs \"hello #{l}\"\nexit 3\n"),
    ("rust", "use std::io::BufRead;\nfn main() { let mut l = String::new(); std::io::stdin().lock().read_line(&mut l).unwrap(); println!(\"hello {}\", l.trim()); std::process::exit(3); }\n"),
    ("r", "l <- readLines(file('stdin'), n = 1)\ncat(paste0('hello ', l, '\\n'))\nquit(status = 3)\n"),
    ("bash", "read -r l\necho \"hello $l\"\nexit 3\n"),
];

#[test]
fn every_language_runs_on_the_native_backend() {
    let mut yaml = String::from("jobs:\n");
    for (lang, code) in PROGRAMS {
        yaml.push_str(&format!(
            "  - name: {lang}\n    lang: {lang}\n    stdin: \"world\\n\"\n    code: {}\n    expect: {{ stdout: hello world, exit_code: 3 }}\n",
            serde_json::to_string(code).unwrap()
        ));
    }
    let (_dir, r) = common::run_yaml(&yaml, &[]);
    assert_eq!(
        PROGRAMS.len(),
        11,
        "one program per language of the README (A job file)"
    );
    let mut skipped = Vec::new();
    for j in r.job_list() {
        let name = j["name"].as_str().unwrap();
        let msg = j["message"].as_str().unwrap_or("");
        if j["status"] == "error" && msg.contains("was not found on this host")
            || msg.contains("type definitions were not found")
        {
            assert!(
                common::strict().is_none(),
                "{name}: toolchain missing under CI: {msg}"
            );
            skipped.push(format!("{name} ({msg})"));
            continue;
        }
        assert_eq!(
            j["status"],
            "passed",
            "{name}: {}",
            serde_json::to_string_pretty(j).unwrap()
        );
        assert_eq!(j["exit_code"], 3, "{name}");
    }
    if !skipped.is_empty() {
        common::skipped(format!(
            "languages (toolchain missing on this host): {}",
            skipped.join("; ")
        ));
    }
}
