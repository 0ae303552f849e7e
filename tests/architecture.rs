//! The module boundaries of ARCHITECTURE.md, checked on the source tree:
//!
//! - no import cycles between files: a file's dependencies are the files that *define* what it
//!   names through `crate::`, `super::` or `self::` paths (a `mod.rs` that only re-exports its
//!   children is a facade, not a dependency);
//! - `analysis/`, `selection/` and `profile/` touch no tensors;
//! - `gui/` and `render/` touch no tensors and reach the model only through `worker/`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

type ModPath = Vec<String>;

/// One source file: its module path and its text without comments, string literals and tests.
struct SourceFile {
    file: PathBuf,
    code: String,
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn module_path(src: &Path, file: &Path) -> Option<ModPath> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut segs: ModPath = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    match segs.as_slice() {
        [only] if only == "main" => return None,
        [only] if only == "lib" => return Some(Vec::new()),
        _ => {}
    }
    if segs.last().is_some_and(|s| s == "mod") {
        segs.pop();
    }
    Some(segs)
}

/// Removes comments, string and char literals, and everything from the first `#[cfg(test)]` on
/// (unit tests sit at the end of their file).
fn strip(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == b'r'
            && matches!(b.get(i + 1), Some(b'"') | Some(b'#'))
            && !ident_before(b, i)
        {
            // raw string r"..." or r#"..."#
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(c as char);
                i += 1;
                continue;
            }
            j += 1;
            let closing: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            while j < b.len() && !b[j..].starts_with(&closing) {
                j += 1;
            }
            out.push_str("\"\"");
            i = j + closing.len();
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            out.push_str("\"\"");
            i += 1;
        } else if c == b'\'' {
            // a char literal ('a', '\n', '\u{..}') or a lifetime ('a)
            let close = if b.get(i + 1) == Some(&b'\\') {
                b[i + 2..]
                    .iter()
                    .position(|&x| x == b'\'')
                    .map(|p| i + 2 + p)
            } else if b.get(i + 2) == Some(&b'\'') {
                Some(i + 2)
            } else {
                None
            };
            match close {
                Some(end) => {
                    out.push_str("' '");
                    i = end + 1;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            out.push(c as char);
            i += 1;
        }
    }
    out
}

fn ident_before(b: &[u8], i: usize) -> bool {
    i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
}

/// `use` statements: (is `pub use`, the use tree text).
fn use_statements(code: &str) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(pos) = find_word(rest, "use") {
        let before = rest[..pos].trim_end();
        let is_pub = before.ends_with("pub") || before.ends_with(')') && before.contains("pub(");
        let after = &rest[pos + 3..];
        let Some(end) = after.find(';') else { break };
        let tree: String = after[..end]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        out.push((is_pub, tree));
        rest = &after[end + 1..];
    }
    out
}

/// The code with its `use` statements blanked out.
fn without_uses(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(pos) = find_word(rest, "use") {
        out.push_str(&rest[..pos]);
        match rest[pos..].find(';') {
            Some(end) => rest = &rest[pos + end + 1..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Paths written inline that start with `crate::`, `super::` or `self::`.
fn inline_paths(code: &str) -> Vec<String> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    for head in ["crate::", "super::", "self::"] {
        for (at, _) in code.match_indices(head) {
            if ident_before(b, at) || (at > 0 && b[at - 1] == b':') {
                continue;
            }
            let end = code[at..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |p| at + p);
            out.push(code[at..end].trim_end_matches(':').to_string());
        }
    }
    out
}

fn find_word(text: &str, word: &str) -> Option<usize> {
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(p) = text[from..].find(word) {
        let at = from + p;
        let end = at + word.len();
        let left_ok = at == 0 || !(b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_');
        let right_ok = end < b.len() && b[end].is_ascii_whitespace();
        if left_ok && right_ok {
            return Some(at);
        }
        from = end;
    }
    None
}

/// Expands a use tree (`a::{b, c::{d as e}}`) into (path, alias) pairs.
fn expand_use(tree: &str) -> Vec<(String, Option<String>)> {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let prefix = tree[..open].trim_end_matches("::").trim();
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let mut parts = Vec::new();
        let (mut depth, mut cur) = (0, String::new());
        for ch in inner.chars() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            if ch == ',' && depth == 0 {
                parts.push(std::mem::take(&mut cur));
            } else {
                cur.push(ch);
            }
        }
        parts.push(cur);
        let mut out = Vec::new();
        for part in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            for (sub, alias) in expand_use(part) {
                let full = match (prefix.is_empty(), sub.is_empty()) {
                    (true, _) => sub,
                    (false, true) => prefix.to_string(),
                    (false, false) => format!("{prefix}::{sub}"),
                };
                out.push((full, alias));
            }
        }
        return out;
    }
    match tree.split_once(" as ") {
        Some((path, alias)) => vec![(path.trim().to_string(), Some(alias.trim().to_string()))],
        None => vec![(tree.to_string(), None)],
    }
}

struct Tree {
    files: BTreeMap<ModPath, SourceFile>,
    reexports: HashMap<ModPath, HashMap<String, ModPath>>,
}

impl Tree {
    fn load(src: &Path) -> Self {
        let mut paths = Vec::new();
        collect(src, &mut paths);
        let mut files = BTreeMap::new();
        for file in paths {
            if let Some(m) = module_path(src, &file) {
                let code = strip(&std::fs::read_to_string(&file).unwrap());
                files.insert(m, SourceFile { file, code });
            }
        }
        let mut tree = Tree {
            files,
            reexports: HashMap::new(),
        };
        let mut reexports: HashMap<ModPath, HashMap<String, ModPath>> = HashMap::new();
        for (m, f) in &tree.files {
            for (is_pub, use_tree) in use_statements(&f.code) {
                if !is_pub {
                    continue;
                }
                for (path, alias) in expand_use(&use_tree) {
                    let Some(mut abs) = tree.absolutize(m, &path) else {
                        continue;
                    };
                    if abs.last().is_some_and(|s| s == "self") {
                        abs.pop();
                    }
                    let Some(name) = alias.or_else(|| abs.last().cloned()) else {
                        continue;
                    };
                    reexports.entry(m.clone()).or_default().insert(name, abs);
                }
            }
        }
        tree.reexports = reexports;
        tree
    }

    fn absolutize(&self, module: &ModPath, path: &str) -> Option<ModPath> {
        let segs: Vec<&str> = path.split("::").map(str::trim).collect();
        let mut out: ModPath;
        let mut rest = &segs[..];
        match segs.first()? {
            &"crate" | &"moescope" => {
                out = Vec::new();
                rest = &segs[1..];
            }
            &"self" => {
                out = module.clone();
                rest = &segs[1..];
            }
            &"super" => {
                out = module.clone();
                while rest.first() == Some(&"super") {
                    out.pop();
                    rest = &rest[1..];
                }
            }
            first => {
                let mut child = module.clone();
                child.push(first.to_string());
                if !self.files.contains_key(&child) {
                    return None;
                }
                out = module.clone();
            }
        }
        out.extend(rest.iter().map(|s| s.to_string()));
        Some(out)
    }

    /// The file that defines what `path` names, following re-exports.
    fn defining_file(&self, path: &ModPath, depth: usize) -> Option<ModPath> {
        if depth > 32 {
            return None;
        }
        for k in (0..=path.len()).rev() {
            let module = path[..k].to_vec();
            if self.files.contains_key(&module) {
                let Some(name) = path.get(k) else {
                    return Some(module);
                };
                if let Some(target) = self.reexports.get(&module).and_then(|r| r.get(name)) {
                    let mut next = target.clone();
                    next.extend(path[k + 1..].iter().cloned());
                    if &next != path {
                        return self.defining_file(&next, depth + 1);
                    }
                }
                return Some(module);
            }
        }
        None
    }

    /// Each file's dependencies on other files of the crate.
    fn dependencies(&self) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
        let mut deps: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
        for (m, f) in &self.files {
            let entry = deps.entry(m.clone()).or_default();
            let mut paths = Vec::new();
            for (is_pub, use_tree) in use_statements(&f.code) {
                for (path, _) in expand_use(&use_tree) {
                    let Some(mut abs) = self.absolutize(m, &path) else {
                        continue;
                    };
                    // `pub use child::X` in a parent is a facade, not a dependency.
                    if is_pub && abs.len() > m.len() && abs[..m.len()] == m[..] {
                        continue;
                    }
                    if abs.last().is_some_and(|s| s == "self") {
                        abs.pop();
                    }
                    paths.push(abs);
                }
            }
            for text in inline_paths(&without_uses(&f.code)) {
                if let Some(abs) = self.absolutize(m, &text) {
                    paths.push(abs);
                }
            }
            for abs in paths {
                if let Some(d) = self.defining_file(&abs, 0)
                    && &d != m
                    && !d.is_empty()
                {
                    entry.insert(d);
                }
            }
        }
        deps
    }
}

fn name(m: &ModPath) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// Strongly connected components with more than one file (Tarjan).
fn cycles(deps: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    struct State<'a> {
        deps: &'a BTreeMap<ModPath, BTreeSet<ModPath>>,
        index: HashMap<&'a ModPath, usize>,
        low: HashMap<&'a ModPath, usize>,
        stack: Vec<&'a ModPath>,
        on_stack: BTreeSet<&'a ModPath>,
        out: Vec<Vec<ModPath>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a ModPath) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.deps.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(w);
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        deps,
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in deps.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

fn src_tree() -> Tree {
    Tree::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

#[test]
fn no_import_cycles_between_files() {
    let tree = src_tree();
    let deps = tree.dependencies();
    let found = cycles(&deps);
    let mut report = String::new();
    for comp in &found {
        report.push_str(&format!(
            "cycle: {}\n",
            comp.iter().map(name).collect::<Vec<_>>().join(", ")
        ));
        for a in comp {
            for b in deps[a].iter().filter(|b| comp.contains(b)) {
                report.push_str(&format!("  {} -> {}\n", name(a), name(b)));
            }
        }
    }
    assert!(found.is_empty(), "import cycles between files:\n{report}");
}

#[test]
fn the_checker_sees_a_cycle_and_a_facade() {
    let src = tempfile::tempdir().unwrap();
    let write = |rel: &str, text: &str| {
        let p = src.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write("lib.rs", "pub mod a;\npub mod b;\n");
    write("a/mod.rs", "pub mod x;\npub use x::Thing;\n");
    write(
        "a/x.rs",
        "pub struct Thing;\npub fn f() { crate::b::g(); }\n",
    );
    write(
        "b.rs",
        "// crate::a::comment_only\nuse crate::a::Thing;\npub fn g() -> Option<Thing> { None }\n",
    );
    let tree = Tree::load(src.path());
    let deps = tree.dependencies();
    let a_x = vec!["a".to_string(), "x".to_string()];
    let b = vec!["b".to_string()];
    assert_eq!(
        deps[&b],
        BTreeSet::from([a_x.clone()]),
        "through the facade"
    );
    assert_eq!(deps[&vec!["a".to_string()]], BTreeSet::new(), "a facade");
    assert_eq!(cycles(&deps), vec![vec![a_x, b]]);
}

/// Files of `dir` (relative to `src/`) whose code mentions any of `needles`.
fn files_mentioning(tree: &Tree, dir: &str, needles: &[&str]) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir);
    tree.files
        .values()
        .filter(|f| f.file.starts_with(&src))
        .filter_map(|f| {
            let hits: Vec<&str> = needles
                .iter()
                .copied()
                .filter(|n| f.code.contains(n))
                .collect();
            (!hits.is_empty()).then(|| format!("{} ({})", f.file.display(), hits.join(", ")))
        })
        .collect()
}

#[test]
fn pure_modules_touch_no_tensors() {
    let tree = src_tree();
    for dir in ["analysis", "selection", "profile"] {
        let hits = files_mentioning(&tree, dir, &["candle_core", "candle_nn", "Tensor"]);
        assert!(hits.is_empty(), "{dir}/ touches tensors: {hits:?}");
    }
}

#[test]
fn the_gui_reaches_the_model_only_through_the_worker() {
    let tree = src_tree();
    let model_running = [
        "candle_core",
        "candle_nn",
        "Tensor",
        "MoeModel",
        "crate::model::load_model",
        "crate::model::loader",
    ];
    for dir in ["gui", "render"] {
        let hits = files_mentioning(&tree, dir, &model_running);
        assert!(hits.is_empty(), "{dir}/ runs the model itself: {hits:?}");
    }
}
