//! The core reads no wall clock: no code under `src/reconcile/` outside `#[cfg(test)]` calls
//! `SystemTime::now` or `std::time::Instant::now`; the time comes from the `ClockPort` a pass is given.
//!
//! Allowed: `tokio::time::Instant::now` (named so, or as `Instant` in a file that imports
//! `tokio::time::Instant`). It measures only the core's waits (poll deadlines, the rate limiter), which
//! run on tokio's timer: tests drive them with tokio's paused time (`start_paused`), so they are already
//! as controllable as a fake clock, and they never reach a report, a record or a request.

use std::path::Path;

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

#[macro_use]
mod source;
use source::test_item;

/// Collects the wall-clock reads of one file's non-test code, and its non-test child module files.
#[derive(Default)]
struct Reads {
    /// The file imports `tokio::time::Instant`, so a bare `Instant` is tokio's.
    tokio_instant: bool,
    /// `(line, path)` of each read.
    found: Vec<(usize, String)>,
    /// `mod x;` declared outside test code.
    children: Vec<String>,
}

impl Reads {
    /// Whether the path `segs` (ending in `now`) reads the wall clock.
    fn wall_clock(&self, segs: &[String]) -> bool {
        let n = segs.len();
        if n < 2 || segs[n - 1] != "now" {
            return false;
        }
        match segs[n - 2].as_str() {
            "SystemTime" => true,
            "Instant" => {
                let qualified = &segs[..n - 2];
                if qualified.is_empty() {
                    !self.tokio_instant
                } else {
                    qualified != ["tokio", "time"]
                }
            }
            _ => false,
        }
    }

    fn record(&mut self, line: usize, segs: Vec<String>) {
        if self.wall_clock(&segs) {
            self.found.push((line, segs.join("::")));
        }
    }

    /// Paths inside macro calls (`format!("{:?}", SystemTime::now())`), as `a :: b :: now` token runs.
    fn tokens(&mut self, tokens: TokenStream) {
        let mut run: Vec<String> = Vec::new();
        let mut line = 0;
        let mut colons = 0;
        for t in tokens {
            match t {
                TokenTree::Ident(i) => {
                    if colons != 2 {
                        run.clear();
                        line = i.span().start().line;
                    }
                    run.push(i.to_string());
                    colons = 0;
                    self.record(line, run.clone());
                }
                TokenTree::Punct(p) if p.as_char() == ':' => colons += 1,
                TokenTree::Group(g) => {
                    self.tokens(g.stream());
                    run.clear();
                    colons = 0;
                }
                _ => {
                    run.clear();
                    colons = 0;
                }
            }
        }
    }
}

fn use_tree_names_tokio_instant(prefix: &mut Vec<String>, tree: &syn::UseTree) -> bool {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            let found = use_tree_names_tokio_instant(prefix, &p.tree);
            prefix.pop();
            found
        }
        syn::UseTree::Name(n) => n.ident == "Instant" && prefix == &["tokio", "time"],
        syn::UseTree::Group(g) => g
            .items
            .iter()
            .any(|t| use_tree_names_tokio_instant(prefix, t)),
        _ => false,
    }
}

impl<'ast> Visit<'ast> for Reads {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        if !test_item(item) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        match &m.content {
            Some(_) => syn::visit::visit_item_mod(self, m),
            None => self.children.push(m.ident.to_string()),
        }
    }

    skip_test_impl_items_and_stmts!('ast);

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        if use_tree_names_tokio_instant(&mut Vec::new(), &u.tree) {
            self.tokio_instant = true;
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segs: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        if let Some(first) = p.segments.first() {
            self.record(first.ident.span().start().line, segs);
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.tokens(m.tokens.clone());
        syn::visit::visit_macro(self, m);
    }
}

/// The wall-clock reads of one file's non-test code, and the child modules it declares outside test code.
fn reads_of(text: &str) -> Reads {
    let ast = syn::parse_file(text).expect("the file parses");
    let mut r = Reads::default();
    // Imports first, so a bare `Instant` used above its `use` is judged right.
    for item in &ast.items {
        if let syn::Item::Use(u) = item {
            if !test_item(item) {
                r.visit_item_use(u);
            }
        }
    }
    for item in &ast.items {
        r.visit_item(item);
    }
    r
}

#[test]
fn the_core_reads_no_wall_clock_outside_tests() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    // Walk the module tree from `reconcile/mod.rs`, so a file declared under `#[cfg(test)]` is test code.
    let mut queue = vec![src.join("reconcile/mod.rs")];
    let mut found = Vec::new();
    let mut files = 0;
    while let Some(file) = queue.pop() {
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file:?}: {e}"));
        let r = reads_of(&text);
        files += 1;
        let dir = if file.ends_with("mod.rs") {
            file.parent().unwrap().to_path_buf()
        } else {
            file.with_extension("")
        };
        for child in &r.children {
            let flat = dir.join(format!("{child}.rs"));
            queue.push(if flat.exists() {
                flat
            } else {
                dir.join(child).join("mod.rs")
            });
        }
        let shown = file.strip_prefix(&src).unwrap().display().to_string();
        found.extend(
            r.found
                .into_iter()
                .map(|(line, path)| format!("src/{shown}:{line}: {path}")),
        );
    }
    assert!(
        files > 10,
        "only {files} files under src/reconcile/ were read"
    );
    assert!(
        found.is_empty(),
        "the core reads the wall clock (take the time from the pass's ClockPort):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_finds_wall_clock_reads_and_leaves_test_code_and_tokio_waits_alone() {
    let text = r#"
use std::time::{Instant, SystemTime};
fn a() -> SystemTime { SystemTime::now() }
fn b() { let _ = std::time::SystemTime::now(); }
fn c() { tracing::info!(at = ?SystemTime::now(), "x"); }
fn d() { let _ = Instant::now(); }
fn e() -> Option<SystemTime> { None.or_else(|| Some(SystemTime::now())) }
fn f() { let _ = tokio::time::Instant::now(); }
fn g() -> SystemTime { SystemTime::UNIX_EPOCH }
#[cfg(test)]
mod tests { fn t() { let _ = std::time::SystemTime::now(); } }
#[cfg(test)]
fn t2() { let _ = SystemTime::now(); }
mod child;
#[cfg(test)]
mod test_child;
"#;
    let r = reads_of(text);
    let lines: Vec<usize> = r.found.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, [3, 4, 5, 6, 7], "{:?}", r.found);
    assert_eq!(r.children, ["child"]);

    let tokio = "use tokio::time::Instant;\nfn w() { let _ = Instant::now(); }\n";
    assert!(reads_of(tokio).found.is_empty());
}
