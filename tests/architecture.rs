//! The module structure as docs/ARCHITECTURE.md states it, checked on the source: no dependency
//! cycle between top-level modules, `unsafe` only in `sys`, and every SPEC rule id the code cites
//! resolves in the repository's own docs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Top-level modules declared in lib.rs.
fn top_modules() -> Vec<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l
                .strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("pub(crate) mod "))
                .or_else(|| l.strip_prefix("mod "))?;
            Some(rest.trim_end_matches(';').to_owned())
        })
        .collect()
}

/// The top-level modules each top-level module names as `crate::<module>` (tests included: a test
/// that reaches up is a dependency too), with the file that does.
fn dependencies() -> BTreeMap<String, BTreeMap<String, PathBuf>> {
    let mods = top_modules();
    let mut deps: BTreeMap<String, BTreeMap<String, PathBuf>> = BTreeMap::new();
    for m in &mods {
        let mut files = Vec::new();
        let file = src().join(format!("{m}.rs"));
        if file.exists() {
            files.push(file);
        }
        let dir = src().join(m);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        }
        let entry = deps.entry(m.clone()).or_default();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for (i, _) in text.match_indices("crate::") {
                let name: String = text[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name != *m && mods.contains(&name) {
                    entry.entry(name).or_insert_with(|| f.clone());
                }
            }
        }
    }
    deps
}

#[test]
fn no_dependency_cycle_between_top_level_modules() {
    let deps = dependencies();
    assert!(deps.len() > 10, "lib.rs lists the modules: {deps:?}");
    // Depth-first search for a back edge; report the whole cycle with the files that close it.
    fn visit(
        m: &str,
        deps: &BTreeMap<String, BTreeMap<String, PathBuf>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut cycle = path[at..].to_vec();
            cycle.push(m.to_owned());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_owned());
        for d in deps.get(m).into_iter().flat_map(|d| d.keys()) {
            if let Some(c) = visit(d, deps, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for m in deps.keys() {
        if let Some(cycle) = visit(m, &deps, &mut Vec::new(), &mut done) {
            let edges: Vec<String> = cycle
                .windows(2)
                .map(|w| format!("{} -> {} ({})", w[0], w[1], deps[&w[0]][&w[1]].display()))
                .collect();
            panic!(
                "module cycle: {}\n  {}",
                cycle.join(" -> "),
                edges.join("\n  ")
            );
        }
    }
}

#[test]
fn unsafe_code_only_in_sys() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let sys = src().join("sys");
    let mut offenders = Vec::new();
    for f in files {
        if f.starts_with(&sys) || f == src().join("sys.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains("unsafe ") || code.contains("unsafe{") {
                offenders.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "unsafe outside src/sys:\n{}",
        offenders.join("\n")
    );
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    assert!(
        lib.contains("#![deny(unsafe_code)]"),
        "lib.rs denies unsafe code"
    );
}

#[test]
fn every_rule_id_cited_in_the_code_resolves_in_the_docs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let docs = std::fs::read_to_string(root.join("docs/SPEC.md")).unwrap()
        + &std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    // Rule families are what SPEC.md defines as list items: "- X5-3 KeyUsage ...".
    let defined: BTreeSet<String> = docs
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("- "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|id| {
            id.split_once('-').is_some_and(|(p, n)| {
                (2..=3).contains(&p.len())
                    && p.bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
                    && !n.is_empty()
                    && n.bytes().all(|b| b.is_ascii_digit())
            })
        })
        .map(str::to_owned)
        .collect();
    let families: BTreeSet<&str> = defined
        .iter()
        .filter_map(|id| id.split_once('-').map(|(p, _)| p))
        .collect();
    assert!(
        families.len() >= 5,
        "SPEC.md defines rule families: {families:?}"
    );
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut missing = BTreeSet::new();
    let mut cited = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let bytes = text.as_bytes();
        for i in 0..bytes.len() {
            // A rule id: two or three capitals, '-', digits (X5-3, JW-7, EP-5), not inside a word.
            let starts = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
            if !starts {
                continue;
            }
            let caps = bytes[i..]
                .iter()
                .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
                .count();
            if !(2..=3).contains(&caps) || !bytes[i].is_ascii_uppercase() {
                continue;
            }
            if bytes.get(i + caps) != Some(&b'-') {
                continue;
            }
            let digits = bytes[i + caps + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if digits == 0
                || bytes
                    .get(i + caps + 1 + digits)
                    .is_some_and(u8::is_ascii_alphanumeric)
            {
                continue;
            }
            let id = &text[i..i + caps + 1 + digits];
            if !families.contains(&text[i..i + caps]) {
                continue; // SHA-256, UTF-8: not a rule id
            }
            cited += 1;
            if !defined.contains(id) {
                missing.insert(format!("{id} ({})", f.display()));
            }
        }
    }
    assert!(cited > 10, "the code cites rule ids");
    assert!(missing.is_empty(), "rule ids not in docs/: {missing:?}");
}
