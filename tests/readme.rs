//! The README as a guide: its Contents lists every section, in order, with links that resolve; the guide
//! sections stand where a newcomer looks for them.

mod common;

/// GitHub's anchor of a heading: lower case, punctuation other than `-` and `_` dropped, spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The `## ` headings outside code blocks, in order.
fn sections(readme: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if let Some(h) = line.strip_prefix("## ").filter(|_| !fenced) {
            out.push(h.trim().to_string());
        }
    }
    out
}

#[test]
fn the_contents_list_every_section_in_order_with_working_links() {
    let readme = std::fs::read_to_string(common::repo_file("README.md")).unwrap();
    let all = sections(&readme);
    let start = readme.find("## Contents\n").expect("a Contents section");
    let body = &readme[start + "## Contents\n".len()..];
    let body = &body[..body.find("\n## ").unwrap()];
    let entries: Vec<(String, String)> = body
        .lines()
        .filter_map(|l| l.strip_prefix("- ["))
        .map(|l| {
            let (title, rest) = l.split_once("](#").expect("- [title](#anchor)");
            (title.to_string(), rest.trim_end_matches(')').to_string())
        })
        .collect();
    let expected: Vec<(String, String)> = all
        .iter()
        .filter(|h| *h != "Contents")
        .map(|h| (h.clone(), anchor(h)))
        .collect();
    assert_eq!(entries, expected);
    // The two developer commands first, then the guide, then the reference.
    let position = |h: &str| {
        all.iter()
            .position(|s| s == h)
            .unwrap_or_else(|| panic!("no {h}"))
    };
    let guide = [
        "The two commands",
        "Contents",
        "Install",
        "Quick start",
        "Deploy",
        "Troubleshooting",
    ];
    for (n, h) in guide.iter().enumerate() {
        assert_eq!(position(h), n, "{h}");
    }
}

#[test]
fn troubleshooting_gives_ten_failures_each_with_cause_and_fix() {
    let readme = std::fs::read_to_string(common::repo_file("README.md")).unwrap();
    let start = readme.find("## Troubleshooting\n").unwrap();
    let body = &readme[start + 3..];
    let body = &body[..body.find("\n## ").unwrap()];
    // Numbered items (`1. **Symptom**...`), each running until the next item or a blank line.
    let mut items: Vec<String> = Vec::new();
    for line in body.lines() {
        let numbered = line
            .split_once(". **")
            .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if numbered {
            items.push(line.to_string());
        } else if line.trim().is_empty() {
            items.push(String::new());
        } else if let Some(last) = items.last_mut().filter(|l| !l.is_empty()) {
            last.push(' ');
            last.push_str(line.trim());
        }
    }
    items.retain(|i| !i.is_empty());
    assert!(items.len() >= 10, "{} items", items.len());
    for item in &items {
        assert!(item.contains("*Cause*") && item.contains("*Fix*"), "{item}");
    }
}
