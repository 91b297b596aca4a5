//! The layout of `src/`, checked on the source text (std only, no parser crate):
//!
//! 1. No import circle between top-level modules. A top-level module `X` is `src/X.rs` and
//!    everything under `src/X/`; `lib.rs` and the binary (`src/bin/`) are roots, not modules (the binary is
//!    ignored: it reaches the library as `meshage::`). `X -> Y` when the code of `X` outside its
//!    `#[cfg(test)] mod tests` names a path from the crate root through `Y`: `crate::Y...`
//!    (also `$crate::`), grouped `use crate::{Y, Z::w}` over any number of lines, or `super::`
//!    climbing out of `X` (`super::` inside `src/X/` stays in `X`). A root item re-exported by
//!    `lib.rs` (`crate::Node`) counts as the module it comes from. Comments and string
//!    literals are not code.
//! 2. No file in `src/` has more than 600 lines before its tests (lines as `wc -l` counts them).
//! 3. `src/lib.rs` forbids unsafe code and warns about (or denies) `unreachable_pub`.
//!
//! The last tests check the checker on small fixtures, so that a parser that finds nothing
//! cannot pass the checks above.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The most lines a file of `src/` may have before its tests.
const MAX_LINES: usize = 600;

/// One `.rs` file of `src/`.
struct Source {
    /// Relative to the package, with `/`: `src/api/routes.rs`.
    name: String,
    /// Module path below the crate root: `["api", "routes"]`; empty for `lib.rs` and `main.rs`.
    module: Vec<String>,
    text: String,
}

fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    collect_rs(&root.join("src"), &mut files);
    files.sort();
    let sources: Vec<Source> = files
        .into_iter()
        .map(|path| {
            let relative = path.strip_prefix(root).unwrap();
            let name = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            Source {
                module: module_path(&name),
                name,
                text,
            }
        })
        .collect();
    assert!(
        sources.iter().any(|s| s.name == "src/lib.rs"),
        "src/lib.rs is among the files read"
    );
    sources
}

fn collect_rs(dir: &Path, into: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_rs(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// `src/X.rs` -> `[X]`, `src/X/a.rs` -> `[X, a]`, `src/X/mod.rs` -> `[X]`, the roots -> `[]`.
fn module_path(name: &str) -> Vec<String> {
    let below = name.strip_prefix("src/").unwrap_or(name);
    // The binary's files (`src/bin/`) import the library as `meshage::`, never as `crate::`.
    if below == "lib.rs" || below == "main.rs" || below.starts_with("bin/") {
        return Vec::new();
    }
    let mut parts: Vec<String> = below
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_owned)
        .collect();
    if parts.len() > 1 && parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The 0-based index of the line where a file's tests start: a line `#[cfg(test)]` whose next
/// non-blank line starts with `mod tests`.
fn tests_start(text: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    (0..lines.len()).find(|&i| {
        lines[i].trim() == "#[cfg(test)]"
            && lines[i + 1..]
                .iter()
                .map(|l| l.trim())
                .find(|l| !l.is_empty())
                .is_some_and(|l| l.starts_with("mod tests"))
    })
}

/// The file without its tests: everything before [`tests_start`].
fn code_before_tests(text: &str) -> String {
    match tests_start(text) {
        Some(start) => text.lines().take(start).collect::<Vec<_>>().join("\n"),
        None => text.to_owned(),
    }
}

/// Lines before the tests, counted as `wc -l` counts them (newline characters).
fn lines_before_tests(text: &str) -> usize {
    match tests_start(text) {
        Some(start) => start,
        None => text.matches('\n').count(),
    }
}

/// `code` with comments, string literals and char literals turned into spaces; newlines are
/// kept, so that line numbers stay as they were.
fn blank_comments_and_strings(code: &str) -> String {
    let c: Vec<char> = code.chars().collect();
    let mut out = String::with_capacity(code.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if c[i] == 'r'
            && (i == 0 || !ident(c[i - 1]) || (c[i - 1] == 'b' && (i < 2 || !ident(c[i - 2]))))
            && matches!(next, Some('"' | '#'))
            && {
                let hashes = c[i + 1..].iter().take_while(|&&h| h == '#').count();
                c.get(i + 1 + hashes) == Some(&'"')
            }
        {
            // A raw string: r"..." or r#"..."#, perhaps after a `b`.
            let hashes = c[i + 1..].iter().take_while(|&&h| h == '#').count();
            let body = i + 2 + hashes;
            out.extend(std::iter::repeat_n(' ', body - i));
            i = body;
            while i < c.len() {
                if c[i] == '"'
                    && c[i + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&h| h == '#')
                        .count()
                        == hashes
                {
                    out.extend(std::iter::repeat_n(' ', 1 + hashes));
                    i += 1 + hashes;
                    break;
                }
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if c[i] == '"' {
            out.push(' ');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' && i + 1 < c.len() {
                    blank(&mut out, c[i]);
                    i += 1;
                }
                blank(&mut out, c[i]);
                i += 1;
            }
            out.push(' ');
            i += 1;
        } else if c[i] == '\'' && next == Some('\\') {
            // An escaped char literal: '\n', '\'', '\u{..}'.
            out.push_str("   ");
            i += 3;
            while i < c.len() && c[i] != '\'' {
                blank(&mut out, c[i]);
                i += 1;
            }
            out.push(' ');
            i += 1;
        } else if c[i] == '\'' && next.is_some() && c.get(i + 2) == Some(&'\'') {
            out.push_str("   ");
            i += 3;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn skip_space(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

fn ident_at(b: &[u8], i: usize) -> Option<&str> {
    let end = (i..b.len())
        .find(|&j| !is_ident_byte(b[j]))
        .unwrap_or(b.len());
    (end > i && !b[i].is_ascii_digit()).then(|| std::str::from_utf8(&b[i..end]).unwrap())
}

/// After `i`, optional whitespace and `::`: the index past them.
fn path_sep(b: &[u8], i: usize) -> Option<usize> {
    let i = skip_space(b, i);
    b[i..].starts_with(b"::").then(|| skip_space(b, i + 2))
}

/// Every first segment of a path from the crate root in `code` (comments and strings already
/// blanked), with its 1-based line: `crate::Y`, `$crate::Y`, each item of `crate::{Y, Z::w}`,
/// and `super::` chains that climb `depth` levels (a file's module depth) or more.
fn root_paths(code: &str, depth: usize) -> Vec<(usize, String)> {
    let b = code.as_bytes();
    let line_of = |at: usize| 1 + b[..at].iter().filter(|&&c| c == b'\n').count();
    let mut found = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !is_ident_byte(b[i]) || (i > 0 && is_ident_byte(b[i - 1])) {
            i += 1;
            continue;
        }
        let word = ident_at(b, i).unwrap_or("");
        let word_end = i + word.len().max(1);
        let after_root = match word {
            "crate" => path_sep(b, word_end),
            "super" => {
                let mut climbs = 0;
                let mut at = word_end;
                let mut after = None;
                while let Some(next) = path_sep(b, at) {
                    climbs += 1;
                    after = Some(next);
                    if ident_at(b, next) == Some("super") {
                        at = next + "super".len();
                    } else {
                        break;
                    }
                }
                i = at;
                after.filter(|_| climbs >= depth)
            }
            _ => None,
        };
        let Some(start) = after_root else {
            i = i.max(word_end);
            continue;
        };
        if b.get(start) == Some(&b'{') {
            let mut level = 0;
            let mut item_start = start + 1;
            let mut j = start;
            while j < b.len() {
                match b[j] {
                    b'{' => level += 1,
                    b'}' | b',' if level == 1 => {
                        let item = skip_space(b, item_start);
                        if let Some(name) = ident_at(b, item) {
                            if name != "self" {
                                found.push((line_of(item), name.to_owned()));
                            }
                        }
                        item_start = j + 1;
                        if b[j] == b'}' {
                            break;
                        }
                    }
                    b'}' => level -= 1,
                    _ => {}
                }
                j += 1;
            }
            i = j;
        } else if let Some(name) = ident_at(b, start) {
            found.push((line_of(start), name.to_owned()));
            i = start + name.len();
        } else {
            i = start;
        }
    }
    found
}

/// The names `lib.rs` imports (`pub use x::{A, B as C}`), each with the module it comes from.
fn root_imports(lib_code: &str, modules: &BTreeSet<String>) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for statement in lib_code.split(';') {
        let Some(at) = statement.find("use ") else {
            continue;
        };
        if at > 0 && is_ident_byte(statement.as_bytes()[at - 1]) {
            continue;
        }
        let words: Vec<&str> = statement[at + 4..].split_whitespace().collect();
        let tree = words.join(" ").replace(" ::", "::").replace(":: ", "::");
        let tree = tree.trim_start_matches("::");
        let tree = tree
            .strip_prefix("crate::")
            .or_else(|| tree.strip_prefix("self::"))
            .unwrap_or(tree);
        let top = tree.split("::").next().unwrap_or("");
        if !modules.contains(top) {
            continue;
        }
        for fragment in tree.split(['{', '}', ',']).map(str::trim) {
            if fragment.is_empty() || fragment.ends_with("::") {
                continue;
            }
            let leaf = match fragment.split_once(" as ") {
                Some((_, alias)) => alias.trim(),
                None => fragment.rsplit("::").next().unwrap(),
            };
            if !leaf.is_empty() && leaf != "self" && leaf != "*" {
                names.insert(leaf.to_owned(), top.to_owned());
            }
        }
    }
    names
}

/// Where an edge comes from: a file and a line.
type Evidence = (String, usize);
/// `from -> to`, with the first place that makes it.
type Graph = BTreeMap<String, BTreeMap<String, Evidence>>;

/// The import graph between the top-level modules of `sources`.
fn import_graph(sources: &[Source]) -> Graph {
    let modules: BTreeSet<String> = sources
        .iter()
        .filter_map(|s| s.module.first().cloned())
        .collect();
    let lib = sources.iter().find(|s| s.name == "src/lib.rs");
    let imports = lib
        .map(|l| {
            root_imports(
                &blank_comments_and_strings(&code_before_tests(&l.text)),
                &modules,
            )
        })
        .unwrap_or_default();
    let mut graph: Graph = modules
        .iter()
        .map(|m| (m.clone(), BTreeMap::new()))
        .collect();
    for source in sources {
        let Some(from) = source.module.first() else {
            continue;
        };
        let code = blank_comments_and_strings(&code_before_tests(&source.text));
        for (line, name) in root_paths(&code, source.module.len()) {
            let to = if modules.contains(&name) {
                Some(&name)
            } else {
                imports.get(&name)
            };
            if let Some(to) = to.filter(|to| *to != from) {
                graph
                    .get_mut(from)
                    .unwrap()
                    .entry(to.clone())
                    .or_insert_with(|| (source.name.clone(), line));
            }
        }
    }
    graph
}

/// The strongly connected components of more than one module (Tarjan), each sorted.
fn circles(graph: &Graph) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            let graph = self.graph;
            for w in graph.get(v).into_iter().flat_map(|e| e.keys()) {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                loop {
                    let w = self.stack.pop().unwrap();
                    self.on_stack.remove(w);
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut tarjan = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !tarjan.index.contains_key(v.as_str()) {
            tarjan.visit(v);
        }
    }
    tarjan.found.sort();
    tarjan.found
}

/// A shortest cycle through the first module of `component`: `[a, b, c, a]`.
fn one_cycle(graph: &Graph, component: &[String]) -> Vec<String> {
    let start = &component[0];
    let mut came_from: BTreeMap<&String, &String> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for w in graph[v].keys().filter(|w| component.contains(w)) {
            if w == start {
                let mut cycle = vec![start.clone()];
                let mut at = v;
                while at != start {
                    cycle.push(at.clone());
                    at = came_from[at];
                }
                cycle.push(start.clone());
                cycle.reverse();
                return cycle;
            }
            if !came_from.contains_key(w) {
                came_from.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    unreachable!("a strongly connected component has a cycle through each of its modules")
}

/// What the circles are, for a failure message: the modules, one cycle, and every edge
/// between them with where it comes from.
fn describe_circles(graph: &Graph) -> Option<String> {
    let found = circles(graph);
    if found.is_empty() {
        return None;
    }
    let mut message = String::from("import circles between top-level modules of src/:\n");
    for component in &found {
        writeln!(
            message,
            "\n  {} modules in one circle: {}",
            component.len(),
            component.join(", ")
        )
        .unwrap();
        writeln!(
            message,
            "  a cycle: {}",
            one_cycle(graph, component).join(" -> ")
        )
        .unwrap();
        writeln!(message, "  its edges, each with one place that makes it:").unwrap();
        for from in component {
            for (to, (file, line)) in &graph[from] {
                if component.contains(to) {
                    writeln!(message, "    {from} -> {to}  ({file}:{line})").unwrap();
                }
            }
        }
    }
    Some(message)
}

#[test]
fn no_import_circle_between_top_level_modules() {
    let graph = import_graph(&sources());
    assert!(
        graph.len() > 1,
        "the top-level modules of src/ are found: {graph:?}"
    );
    if let Some(message) = describe_circles(&graph) {
        panic!("{message}");
    }
}

#[test]
fn no_file_is_long_before_its_tests() {
    let long: Vec<String> = sources()
        .iter()
        .map(|s| (lines_before_tests(&s.text), &s.name))
        .filter(|(lines, _)| *lines > MAX_LINES)
        .map(|(lines, name)| format!("  {name}: {lines} lines"))
        .collect();
    assert!(
        long.is_empty(),
        "files of src/ with more than {MAX_LINES} lines before their tests:\n{}",
        long.join("\n")
    );
}

#[test]
fn lib_rs_forbids_unsafe_code_and_checks_unreachable_pub() {
    let lib = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/lib.rs")).unwrap();
    let lints = crate_lints(&blank_comments_and_strings(&lib));
    let mut missing = Vec::new();
    if !lints.contains(&("forbid".to_owned(), "unsafe_code".to_owned())) {
        missing.push("#![forbid(unsafe_code)]");
    }
    if !["warn", "deny", "forbid"]
        .iter()
        .any(|level| lints.contains(&(level.to_string(), "unreachable_pub".to_owned())))
    {
        missing.push("#![warn(unreachable_pub)] (or deny)");
    }
    assert!(
        missing.is_empty(),
        "src/lib.rs lacks {} (crate-level lints found: {lints:?})",
        missing.join(" and ")
    );
}

/// The crate-level lint attributes of `code`: `#![deny(a, b)]` -> `(deny, a), (deny, b)`.
fn crate_lints(code: &str) -> BTreeSet<(String, String)> {
    let flat: String = code.split_whitespace().collect();
    let mut lints = BTreeSet::new();
    for attribute in flat.split("#![").skip(1) {
        let Some((level, rest)) = attribute.split_once('(') else {
            continue;
        };
        let Some((list, _)) = rest.split_once(')') else {
            continue;
        };
        for lint in list.split(',').filter(|l| !l.is_empty()) {
            lints.insert((level.to_owned(), lint.to_owned()));
        }
    }
    lints
}

// The checker, checked.

/// A file of module `a::inner` (depth 2) with every form of path the parser must see, and
/// some it must not.
const FIXTURE: &str = r##"//! Mentions crate::commented in a comment.
use std::fmt;
use crate::{
    alpha,
    beta::{Thing, other::Deep},
    self,
    gamma as g,
};
use super::sibling;
use super::super::delta::Item;

pub(crate) fn f() -> u32 {
    let _ = "crate::quoted";
    let _ = r#"crate::raw"#;
    let _c = '"';
    /* crate::blocked */
    crate::epsilon::call() + crate :: zeta ::x
}

#[cfg(test)]
mod tests {
    use crate::tested;
}
"##;

fn names(found: &[(usize, String)]) -> Vec<&str> {
    found.iter().map(|(_, name)| name.as_str()).collect()
}

#[test]
fn the_parser_finds_grouped_inline_and_climbing_paths() {
    let code = blank_comments_and_strings(&code_before_tests(FIXTURE));
    let found = root_paths(&code, 2);
    assert_eq!(
        found,
        [
            (4, "alpha".to_owned()),
            (5, "beta".to_owned()),
            (7, "gamma".to_owned()),
            (10, "delta".to_owned()),
            (17, "epsilon".to_owned()),
            (17, "zeta".to_owned()),
        ]
    );
    // In `src/a.rs` (depth 1) a single `super::` climbs to the root.
    assert_eq!(
        names(&root_paths(&code, 1)),
        ["alpha", "beta", "gamma", "sibling", "delta", "epsilon", "zeta"]
    );
}

#[test]
fn the_parser_skips_tests_comments_and_strings() {
    assert_eq!(tests_start(FIXTURE), Some(19));
    assert_eq!(lines_before_tests(FIXTURE), 19);
    assert_eq!(lines_before_tests("a\nb\n"), 2, "as wc -l counts");
    let code = blank_comments_and_strings(FIXTURE);
    assert_eq!(code.lines().count(), FIXTURE.lines().count());
    for hidden in ["commented", "quoted", "raw", "blocked"] {
        assert!(!code.contains(hidden), "{hidden} is blanked:\n{code}");
    }
    assert!(code.contains("tested"), "blanking keeps code");
    assert!(!blank_comments_and_strings(&code_before_tests(FIXTURE)).contains("tested"));
}

#[test]
fn root_imports_map_reexported_names_to_their_module() {
    let modules: BTreeSet<String> = ["node", "router"].map(String::from).into();
    let lib =
        "mod node;\npub use node::{init, Node as N,\n  NodeConfig};\npub use router::Router;\n\
               pub(crate) type FastMap = ();\npub use std::fmt;\n";
    let imports = root_imports(lib, &modules);
    let expected: BTreeMap<String, String> = [
        ("init", "node"),
        ("N", "node"),
        ("NodeConfig", "node"),
        ("Router", "router"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .into();
    assert_eq!(imports, expected);
}

fn graph(edges: &[(&str, &str)]) -> Graph {
    let mut graph = Graph::new();
    for (i, (from, to)) in edges.iter().enumerate() {
        graph.entry(to.to_string()).or_default();
        graph
            .entry(from.to_string())
            .or_default()
            .insert(to.to_string(), (format!("src/{from}.rs"), i + 1));
    }
    graph
}

#[test]
fn a_three_module_circle_is_found_and_described() {
    let g = graph(&[
        ("api", "router"),
        ("router", "link"),
        ("link", "api"),
        ("api", "ring"),
        ("node", "api"),
    ]);
    assert_eq!(circles(&g), [["api", "link", "router"]]);
    assert_eq!(
        one_cycle(&g, &circles(&g)[0]),
        ["api", "router", "link", "api"]
    );
    let message = describe_circles(&g).expect("a circle");
    for edge in [
        "api -> router  (src/api.rs:1)",
        "router -> link  (src/router.rs:2)",
        "link -> api  (src/link.rs:3)",
    ] {
        assert!(message.contains(edge), "{edge} in:\n{message}");
    }
    assert!(!message.contains("ring"), "{message}");
}

#[test]
fn an_acyclic_graph_passes() {
    let g = graph(&[
        ("node", "api"),
        ("api", "router"),
        ("router", "ring"),
        ("api", "ring"),
        ("node", "ring"),
    ]);
    assert!(circles(&g).is_empty());
    assert_eq!(describe_circles(&g), None);
}

#[test]
fn the_graph_of_a_small_tree_has_its_edges() {
    let source = |name: &str, text: &str| Source {
        name: name.to_owned(),
        module: module_path(name),
        text: text.to_owned(),
    };
    let sources = [
        source("src/lib.rs", "mod a;\nmod b;\npub use b::Thing;\n"),
        source("src/a.rs", "use crate::Thing;\nuse super::c;\n"),
        source(
            "src/a/inner.rs",
            "use super::sibling;\nfn f() { crate::c::g() }\n",
        ),
        source("src/b.rs", "use crate::{a,\n  b::x};\n"),
        source("src/c/mod.rs", "use self::d;\n"),
        source(
            "src/main.rs",
            "use meshage::a;\nfn main() { crate::b::f() }\n",
        ),
    ];
    assert_eq!(module_path("src/c/mod.rs"), ["c"]);
    let g = import_graph(&sources);
    let edges: Vec<(&str, &str, &Evidence)> = g
        .iter()
        .flat_map(|(from, to)| {
            to.iter()
                .map(move |(to, at)| (from.as_str(), to.as_str(), at))
        })
        .collect();
    assert_eq!(
        edges,
        [
            ("a", "b", &("src/a.rs".to_owned(), 1)),
            ("a", "c", &("src/a.rs".to_owned(), 2)),
            ("b", "a", &("src/b.rs".to_owned(), 1)),
        ]
    );
    assert_eq!(circles(&g), [["a", "b"]]);
}
