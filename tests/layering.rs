//! The layers hold: every `crate::...` path in `src/` (use trees, inline paths, paths inside macro
//! calls; `super::` and `self::` resolved to the module they name) outside `#[cfg(test)]` code points
//! from a module's layer to a layer that layer may use, and only test code reaches the test kit.
//!
//! The layers, bottom to top, and what each may use (its own layer is always allowed):
//! `error`; `model`; `ports`; `config`; `install`; `reconcile` (the core); `adapters`; `output`;
//! `daemon`; `template`; `cli`. `fake` and `bench` are the test kit: they may use anything, and only
//! `#[cfg(test)]` code, `tests/` and `examples/` may use them. The table is [`LAYERS`]; a test checks it
//! has no circle, so a layer can only ever use layers below it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

#[macro_use]
mod source;
use source::test_item;

/// Each layer and the layers it may use, bottom to top.
const LAYERS: &[(&str, &[&str])] = &[
    ("error", &[]),
    ("model", &["error"]),
    ("ports", &["error", "model"]),
    ("config", &["error", "model"]),
    ("install", &["error", "model", "config"]),
    (
        "reconcile",
        &["error", "model", "ports", "config", "install"],
    ),
    (
        "adapters",
        &["error", "model", "ports", "config", "install"],
    ),
    (
        "output",
        &["error", "model", "ports", "config", "reconcile"],
    ),
    (
        "daemon",
        &["error", "model", "ports", "config", "install", "reconcile"],
    ),
    (
        "template",
        &["error", "model", "ports", "config", "install", "adapters"],
    ),
    (
        "cli",
        &[
            "error",
            "model",
            "ports",
            "config",
            "install",
            "reconcile",
            "adapters",
            "output",
            "daemon",
            "template",
        ],
    ),
];

/// The test kit: anything may be used from it, and only test code may use it.
const KIT: &[&str] = &["fake", "bench"];

/// Imports that break the rules today and that another branch removes; the lead deletes each entry when
/// that branch is merged. `(file, path prefix, owner)`.
///
/// Empty: the last entries (the core's use of the daemon's SQLite store) went when durable memory became a
/// port. A branch that must land before its fix lists its edge here, and the test fails once it is gone.
const KNOWN_VIOLATIONS: &[(&str, &str, &str)] = &[];

/// One wrong import.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Violation {
    file: String,
    line: usize,
    path: String,
    rule: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: {} ({})",
            self.file, self.line, self.path, self.rule
        )
    }
}

/// A source tree: file name (relative to `src/`) -> text. Read from disk, or written in a test.
type Sources = BTreeMap<String, String>;

fn read_tree(root: &Path) -> Sources {
    fn walk(dir: &Path, root: &Path, out: &mut Sources) {
        for entry in std::fs::read_dir(dir).expect("src/ is readable") {
            let path: PathBuf = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(root).expect("under src/");
                let text = std::fs::read_to_string(&path).expect("a source file");
                out.insert(rel.to_string_lossy().replace('\\', "/"), text);
            }
        }
    }
    let mut out = Sources::new();
    walk(root, root, &mut out);
    out
}

/// Collects the absolute module paths a file's code names, with their lines.
struct Collector {
    /// The module the code being visited is in (`["reconcile", "pass"]`).
    module: Vec<String>,
    /// `(line, absolute path)`.
    found: Vec<(usize, Vec<String>)>,
    /// Non-inline `mod x;` declared outside test code: (module path of the child).
    children: Vec<Vec<String>>,
}

impl Collector {
    /// Resolves a path that starts with `crate`, `super` or `self`; other paths name outside crates or
    /// items in scope, which the use trees already reported.
    fn resolve(&self, segments: &[String]) -> Option<Vec<String>> {
        let mut base = match segments.first()?.as_str() {
            "crate" => Vec::new(),
            "super" | "self" => self.module.clone(),
            _ => return None,
        };
        let mut rest = if segments[0] == "crate" {
            &segments[1..]
        } else {
            segments
        };
        while let Some(first) = rest.first() {
            match first.as_str() {
                "super" => {
                    base.pop();
                }
                "self" => {}
                _ => break,
            }
            rest = &rest[1..];
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }

    fn record(&mut self, line: usize, segments: &[String]) {
        if let Some(abs) = self.resolve(segments) {
            if !abs.is_empty() {
                self.found.push((line, abs));
            }
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(syn::UseName { ident })
            | syn::UseTree::Rename(syn::UseRename { ident, .. }) => {
                prefix.push(ident.to_string());
                let segs = prefix.clone();
                self.record(ident.span().start().line, &segs);
                prefix.pop();
            }
            syn::UseTree::Glob(g) => {
                let segs = prefix.clone();
                self.record(g.star_token.spans[0].start().line, &segs);
            }
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }

    /// `crate :: a :: b` (or `super ::` ...) sequences inside a macro call's tokens.
    fn tokens(&mut self, tokens: TokenStream) {
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < trees.len() {
            if let TokenTree::Group(g) = &trees[i] {
                self.tokens(g.stream());
                i += 1;
                continue;
            }
            let start = match &trees[i] {
                TokenTree::Ident(id) if id == "crate" || id == "super" => id.clone(),
                _ => {
                    i += 1;
                    continue;
                }
            };
            let mut segs = vec![start.to_string()];
            let mut j = i + 1;
            while j + 1 < trees.len() {
                match (&trees[j], &trees[j + 1], trees.get(j + 2)) {
                    (TokenTree::Punct(a), TokenTree::Punct(b), Some(TokenTree::Ident(id)))
                        if a.as_char() == ':' && b.as_char() == ':' =>
                    {
                        segs.push(id.to_string());
                        j += 3;
                    }
                    _ => break,
                }
            }
            if segs.len() > 1 {
                self.record(start.span().start().line, &segs);
            }
            i = j.max(i + 1);
        }
    }
}

impl<'ast> Visit<'ast> for Collector {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        if test_item(item) {
            return;
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        self.module.push(m.ident.to_string());
        match &m.content {
            Some((_, items)) => {
                for item in items {
                    self.visit_item(item);
                }
            }
            None => self.children.push(self.module.clone()),
        }
        self.module.pop();
    }

    skip_test_impl_items_and_stmts!('ast);

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segs: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        if let Some(first) = p.segments.first() {
            self.record(first.ident.span().start().line, &segs);
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.tokens(m.tokens.clone());
        syn::visit::visit_macro(self, m);
    }
}

/// The file of module `module` (`["reconcile", "pass"]`) in `sources`.
fn file_of(sources: &Sources, module: &[String]) -> Option<String> {
    let joined = module.join("/");
    [format!("{joined}.rs"), format!("{joined}/mod.rs")]
        .into_iter()
        .find(|f| sources.contains_key(f))
}

/// Every wrong import in `sources` (a crate rooted at `lib.rs`), known violations not left out.
fn check(sources: &Sources) -> Vec<Violation> {
    let allowed: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let mut out = Vec::new();
    // Walk the module tree from the root, so a file declared only under `#[cfg(test)]` is test code.
    let mut queue: Vec<(String, Vec<String>)> = vec![("lib.rs".to_string(), Vec::new())];
    let mut seen = BTreeSet::new();
    while let Some((file, module)) = queue.pop() {
        if !seen.insert(file.clone()) {
            continue;
        }
        let text = &sources[&file];
        let ast = syn::parse_file(text).unwrap_or_else(|e| panic!("src/{file} parses: {e}"));
        let mut c = Collector {
            module: module.clone(),
            found: Vec::new(),
            children: Vec::new(),
        };
        for item in &ast.items {
            c.visit_item(item);
        }
        for child in &c.children {
            match file_of(sources, child) {
                Some(f) => queue.push((f, child.clone())),
                None => panic!("src/{file}: no file for module {}", child.join("::")),
            }
        }
        let Some(layer) = module.first().map(String::as_str) else {
            continue; // the crate root only declares the layers
        };
        if KIT.contains(&layer) {
            continue;
        }
        let may = allowed
            .get(layer)
            .unwrap_or_else(|| panic!("src/{file}: module `{layer}` has no layer in LAYERS"));
        for (line, path) in c.found {
            let target = path[0].as_str();
            let shown = format!("crate::{}", path.join("::"));
            let rule = if target == layer {
                continue;
            } else if KIT.contains(&target) {
                format!("only test code may use the test kit (`{target}`)")
            } else if !allowed.contains_key(target) {
                continue; // an item of the crate root (none today), or a macro's own path
            } else if !may.contains(&target) {
                format!("`{layer}` may use only {}", may.join(", "))
            } else {
                continue;
            };
            out.push(Violation {
                file: format!("src/{file}"),
                line,
                path: shown,
                rule,
            });
        }
    }
    out.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    out
}

fn known(v: &Violation) -> bool {
    KNOWN_VIOLATIONS
        .iter()
        .any(|(file, prefix, _)| v.file == *file && v.path.starts_with(prefix))
}

#[test]
fn every_import_points_down_the_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = check(&read_tree(&root));
    let wrong: Vec<String> = found
        .iter()
        .filter(|v| !known(v))
        .map(|v| v.to_string())
        .collect();
    assert!(
        wrong.is_empty(),
        "imports against the layers (see tests/layering.rs):\n{}",
        wrong.join("\n")
    );
    // A known violation that is gone must leave the list, so the list stays exact.
    for (file, prefix, owner) in KNOWN_VIOLATIONS {
        assert!(
            found
                .iter()
                .any(|v| v.file == *file && v.path.starts_with(prefix)),
            "KNOWN_VIOLATIONS lists {file} -> {prefix} ({owner}), which no longer occurs: delete the entry"
        );
    }
}

#[test]
fn the_layer_table_has_no_circle() {
    // Every layer may use only layers listed before it, so the table is its own topological order.
    for (n, (layer, may)) in LAYERS.iter().enumerate() {
        for dep in *may {
            let at = LAYERS.iter().position(|(l, _)| l == dep);
            assert!(
                at.is_some_and(|at| at < n),
                "`{layer}` may use `{dep}`, which is not below it"
            );
        }
    }
}

fn tree(files: &[(&str, &str)]) -> Sources {
    files
        .iter()
        .map(|(f, t)| (f.to_string(), t.to_string()))
        .collect()
}

const ROOT: &str = "pub mod model; pub mod reconcile; pub mod output; pub mod fake; pub mod cli;";

#[test]
fn a_planted_upward_import_is_caught_with_file_line_and_rule() {
    let sources = tree(&[
        ("lib.rs", ROOT),
        ("model.rs", "pub struct Id;\n"),
        ("reconcile/mod.rs", "pub mod pass;\n"),
        (
            "reconcile/pass.rs",
            "use crate::model::Id;\n\nuse crate::{model::Id as I, output::report::Report};\n",
        ),
        ("output.rs", "use crate::reconcile::pass;\n"),
        ("fake.rs", "use crate::cli::Anything;\n"),
        ("cli.rs", "use crate::output;\n"),
    ]);
    let found = check(&sources);
    assert_eq!(
        found,
        vec![Violation {
            file: "src/reconcile/pass.rs".into(),
            line: 3,
            path: "crate::output::report::Report".into(),
            rule: "`reconcile` may use only error, model, ports, config, install".into(),
        }]
    );
}

#[test]
fn super_paths_inline_paths_and_macro_paths_are_resolved() {
    let sources = tree(&[
        ("lib.rs", ROOT),
        ("model.rs", "pub mod time;\n"),
        (
            "model/time.rs",
            "pub fn f() { let _ = super::super::reconcile::X; }\n",
        ),
        ("reconcile/mod.rs", "pub mod pass;\nmod inner { use super::super::cli::Y; }\n"),
        (
            "reconcile/pass.rs",
            "fn g() -> crate::output::Report { todo!() }\nfn h() { let _ = format!(\"{}\", crate::cli::Z); use super::pass as p; }\n",
        ),
        ("output.rs", ""),
        ("fake.rs", ""),
        ("cli.rs", ""),
    ]);
    let shown: Vec<String> = check(&sources)
        .iter()
        .map(|v| format!("{}:{} {}", v.file, v.line, v.path))
        .collect();
    assert_eq!(
        shown,
        vec![
            "src/model/time.rs:1 crate::reconcile::X",
            "src/reconcile/mod.rs:2 crate::cli::Y",
            "src/reconcile/pass.rs:1 crate::output::Report",
            "src/reconcile/pass.rs:2 crate::cli::Z",
        ]
    );
}

#[test]
fn the_test_kit_is_for_test_code_only() {
    let sources = tree(&[
        ("lib.rs", ROOT),
        ("model.rs", ""),
        (
            "reconcile/mod.rs",
            "#[cfg(test)]\nmod tests { use crate::fake::F; use crate::cli::C; }\n#[cfg(test)]\nmod more;\n#[cfg(any(test, feature = \"fakes\"))]\npub use crate::fake::G;\n",
        ),
        ("reconcile/more.rs", "use crate::cli::Whatever;\n"),
        ("output.rs", ""),
        ("fake.rs", "use crate::cli::Anything;\n"),
        ("cli.rs", "use crate::fake::F;\n"),
    ]);
    let shown: Vec<String> = check(&sources)
        .iter()
        .map(|v| format!("{}:{} {} ({})", v.file, v.line, v.path, v.rule))
        .collect();
    assert_eq!(
        shown,
        vec![
            "src/cli.rs:1 crate::fake::F (only test code may use the test kit (`fake`))",
            "src/reconcile/mod.rs:6 crate::fake::G (only test code may use the test kit (`fake`))",
        ]
    );
}
