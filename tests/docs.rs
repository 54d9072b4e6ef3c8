//! The documents hold to the code: the README's and docs/design.md's exit-code tables to
//! `exit::TABLE`, the README's module map to the files in `src/`, docs/design.md's table of
//! where each rule lives to real files and items, and every citation of docs/design.md in a
//! code comment to a section or rule that exists. Plain file reads: no store, no network.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use pipeline_lock::exit;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// The text of the section under the heading line `heading`, up to the next heading of the
/// same or a higher level.
fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let level = heading.chars().take_while(|c| *c == '#').count();
    let start = doc
        .lines()
        .position(|l| l.trim_end() == heading)
        .unwrap_or_else(|| panic!("no heading {heading:?}"));
    let lines: Vec<&str> = doc.lines().collect();
    let end = lines[start + 1..]
        .iter()
        .position(|l| {
            let hashes = l.chars().take_while(|c| *c == '#').count();
            hashes > 0 && hashes <= level && l[hashes..].starts_with(' ')
        })
        .map_or(lines.len(), |i| start + 1 + i);
    // Byte offsets of those lines in `doc`.
    let offset = |i: usize| -> usize { lines[..i].iter().map(|l| l.len() + 1).sum() };
    &doc[offset(start + 1)..offset(end).min(doc.len())]
}

/// The rows of the first Markdown table in `text`, header and separator left out, each split
/// into trimmed cells.
fn table_rows(text: &str) -> Vec<Vec<String>> {
    let rows: Vec<Vec<String>> = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with('|'))
        .take_while(|l| l.trim_start().starts_with('|'))
        .map(|l| {
            let inner = l.trim().trim_start_matches('|').trim_end_matches('|');
            inner.split('|').map(|c| c.trim().to_string()).collect()
        })
        .collect();
    assert!(rows.len() >= 2, "no table in:\n{text}");
    assert!(
        rows[1].iter().all(|c| c.chars().all(|ch| ch == '-' || ch == ':')),
        "no separator row: {:?}",
        rows[1]
    );
    rows.into_iter().skip(2).collect()
}

/// Rows that are not a plain code: the shell's and `run`'s codes, which `exit::TABLE` does not
/// list because they are not ours to choose.
const EXTRA_ROWS: &[&str] = &["128+N", "other"];

fn check_exit_table(doc_name: &str, doc: &str) {
    let rows = table_rows(section(doc, "## Exit codes"));
    let mut documented = BTreeSet::new();
    let mut extras = BTreeSet::new();
    for row in &rows {
        assert_eq!(row.len(), 2, "{doc_name}: exit-code row {row:?} should have two cells");
        let (code, meaning) = (&row[0], &row[1]);
        assert!(!meaning.is_empty(), "{doc_name}: exit code {code} has no meaning");
        match code.parse::<u8>() {
            Ok(c) => assert!(documented.insert(c), "{doc_name}: exit code {c} appears twice"),
            Err(_) => {
                assert!(
                    EXTRA_ROWS.contains(&code.as_str()),
                    "{doc_name}: exit-code row {code:?} is neither a code nor one of {EXTRA_ROWS:?}"
                );
                extras.insert(code.as_str());
            }
        }
    }
    let defined: BTreeSet<u8> = exit::TABLE.iter().map(|(c, _)| *c).collect();
    assert_eq!(defined.len(), exit::TABLE.len(), "exit::TABLE lists a code twice");
    let missing: Vec<_> = defined.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&defined).collect();
    assert!(missing.is_empty(), "{doc_name}'s exit-code table lacks {missing:?} from exit::TABLE");
    assert!(
        unknown.is_empty(),
        "{doc_name}'s exit-code table has {unknown:?}, which exit::TABLE does not define"
    );
    assert_eq!(extras.len(), EXTRA_ROWS.len(), "{doc_name}: expected the rows {EXTRA_ROWS:?}");
}

#[test]
fn the_readme_exit_codes_are_exactly_those_of_exit_table() {
    check_exit_table("README.md", &read("README.md"));
}

#[test]
fn the_design_exit_codes_are_exactly_those_of_exit_table() {
    check_exit_table("docs/design.md", &read("docs/design.md"));
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src_files() -> Vec<(String, PathBuf)> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut named: Vec<_> = files
        .into_iter()
        .map(|p| (p.strip_prefix(root().join("src")).unwrap().to_string_lossy().into_owned(), p))
        .collect();
    named.sort();
    named
}

#[test]
fn the_readme_development_map_names_every_module() {
    let readme = read("README.md");
    let map = section(&readme, "## Development");
    let missing: Vec<String> = src_files()
        .into_iter()
        .map(|(rel, _)| rel)
        // A module's unit tests in their own file (`record/tests.rs`) go with the module.
        .filter(|rel| !rel.ends_with("/tests.rs"))
        .filter(|rel| !map.contains(&format!("`{rel}`")))
        .collect();
    assert!(missing.is_empty(), "README.md's Development map does not name {missing:?}");
    assert!(map.contains("(docs/design.md)"), "README.md's Development map should link docs/design.md");
}

/// Does `text` contain `word` as a whole identifier?
fn has_ident(text: &str, word: &str) -> bool {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

/// Does `text` define `name` (a function, type, constant, module, field or variant), rather than only
/// use or import it?
fn defines(text: &str, name: &str) -> bool {
    let keyword = ["fn", "struct", "enum", "trait", "const", "type", "mod", "static"]
        .iter()
        .any(|k| has_ident(text, &format!("{k} {name}")));
    let field = text.lines().any(|l| {
        let l = l.trim_start();
        let l = l.strip_prefix("pub(crate) ").or_else(|| l.strip_prefix("pub ")).unwrap_or(l);
        // A field, or an enum variant.
        l.starts_with(&format!("{name}:")) || [" {", "(", ","].iter().any(|end| l.starts_with(&format!("{name}{end}")))
    });
    keyword || field
}

#[test]
fn every_rule_in_the_design_points_at_code_that_exists() {
    let design = read("docs/design.md");
    let rows = table_rows(section(&design, "## Where each rule lives"));
    assert!(rows.len() >= 8, "the rule table has only {} rows", rows.len());
    for row in &rows {
        assert_eq!(row.len(), 4, "rule row {row:?} should be | rule | what | file | item |");
        let file = row[2].trim_matches('`');
        let item = row[3].trim_matches('`');
        let text = std::fs::read_to_string(root().join(file)).unwrap_or_else(|e| panic!("rule {:?}: {file}: {e}", row[0]));
        for part in item.split("::") {
            assert!(has_ident(&text, part), "rule {:?} ({}): {file} has no {part:?}", row[0], row[1]);
        }
        let last = item.rsplit("::").next().unwrap_or(item);
        assert!(defines(&text, last), "rule {:?} ({}): {last:?} is not defined in {file}", row[0], row[1]);
    }
    let rules: BTreeSet<u32> = rows.iter().filter_map(|r| r[0].parse().ok()).collect();
    assert_eq!(rules, (1..=8).collect(), "every numbered rule has a place in the table");
}

#[test]
fn code_comments_cite_sections_and_rules_that_exist() {
    let design = read("docs/design.md");
    let headings: BTreeSet<&str> = design.lines().filter_map(|l| l.strip_prefix("## ")).map(str::trim).collect();
    let mut cited = 0;
    for (rel, path) in src_files() {
        let source = std::fs::read_to_string(&path).unwrap();
        assert!(
            !source.contains("DESIGN"),
            "src/{rel} cites DESIGN, a file that is not in the repo; cite docs/design.md"
        );
        // Comment text joined across lines, so that a citation may wrap.
        let comments: String = source
            .lines()
            .filter_map(|l| {
                let t = l.trim_start();
                ["//!", "///", "//"].iter().find_map(|m| t.strip_prefix(m))
            })
            .collect::<Vec<_>>()
            .join(" ");
        for (at, _) in comments.match_indices("docs/design.md") {
            let rest = comments[at + "docs/design.md".len()..].trim_start_matches(['\'', 's', ',', ' ', '(']);
            if let Some(quoted) = rest.strip_prefix('"') {
                let name = &quoted[..quoted.find('"').expect("an unterminated section name")];
                assert!(
                    headings.contains(name),
                    "src/{rel} cites docs/design.md section {name:?}; sections: {headings:?}"
                );
                cited += 1;
            } else if let Some(r) = rest.strip_prefix("rule") {
                let span = &r[..r.find([')', '.', ':', ';']).unwrap_or(r.len())];
                let numbers: Vec<u32> = span
                    .split(|c: char| !c.is_ascii_digit())
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().unwrap())
                    .collect();
                assert!(
                    !numbers.is_empty() && numbers.iter().all(|n| (1..=8).contains(n)),
                    "src/{rel} cites docs/design.md rule(s) {span:?}; the rules are 1 to 8"
                );
                cited += 1;
            }
        }
    }
    assert!(cited >= 10, "only {cited} citations of docs/design.md found in src/");
}
