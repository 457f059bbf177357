//! The one table renderer of the human output (`plan`/`run` reports and `status`): columns padded to the
//! widest cell as a terminal shows it (display width, so a CJK or emoji `Name` tag keeps the columns
//! aligned); the last column is not padded.
//!
//! On a terminal a [`Layout`] fits the table to its width: columns give up width in a set order, cells
//! that no longer fit end in `…`, and a column may be painted (the status colours). Off a terminal
//! [`render`] writes every cell whole, as scripts expect.

use std::borrow::Cow;

use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// Columns between two cells.
const GAP: usize = 2;

/// Which ANSI style, if any, a cell's text is painted with.
pub type Painter = fn(&str) -> Option<&'static str>;

/// How a table is fitted and painted.
#[derive(Debug, Clone, Copy, Default)]
pub struct Layout<'a> {
    /// The width to fit, in terminal columns; `None`: every cell whole.
    pub width: Option<usize>,
    /// `(column, narrowest)` in the order columns give up width: each in turn shrinks to its narrowest
    /// until the table fits; after the list, any column may shrink to one column, last column first.
    pub shrink: &'a [(usize, usize)],
    /// `(column, paint)`: the cells of that column (not its header) are wrapped in the ANSI style
    /// `paint` returns for their text.
    pub paint: Option<(usize, Painter)>,
}

/// Renders a header line and the rows, two spaces between columns, one line each, every cell whole.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    render_with(headers, rows, &Layout::default())
}

/// Renders a header line and the rows as `layout` says: no line wider than `layout.width` (while the
/// table has at least one column per cell and the gaps), cut cells ending in `…`.
pub fn render_with(headers: &[&str], rows: &[Vec<String>], layout: &Layout<'_>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.width()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.width());
        }
    }
    if let Some(max) = layout.width {
        fit(&mut widths, max, layout.shrink);
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>, header: bool| {
        let cells: Vec<&str> = cells.collect();
        let last = cells.len().saturating_sub(1);
        for (n, cell) in cells.iter().enumerate() {
            let text = truncate(cell, widths[n]);
            let paint = match layout.paint {
                Some((col, paint)) if col == n && !header => paint(cell),
                _ => None,
            };
            match paint {
                Some(style) => {
                    out.push_str(style);
                    out.push_str(&text);
                    out.push_str(RESET);
                }
                None => out.push_str(&text),
            }
            if n < last {
                out.push_str(&" ".repeat(widths[n] - text.width() + GAP));
            }
        }
        out.push('\n');
    };
    line(&mut headers.iter().copied(), true);
    for row in rows {
        line(&mut row.iter().map(String::as_str), false);
    }
    out
}

/// Ends an ANSI style.
pub const RESET: &str = "\x1b[0m";

/// Shrinks `widths` until the line fits `max`: first as `shrink` says, then any column down to one.
fn fit(widths: &mut [usize], max: usize, shrink: &[(usize, usize)]) {
    let total = |w: &[usize]| w.iter().sum::<usize>() + GAP * w.len().saturating_sub(1);
    let last_resort: Vec<(usize, usize)> = (0..widths.len()).rev().map(|n| (n, 1)).collect();
    for &(col, narrowest) in shrink.iter().chain(&last_resort) {
        let now = total(widths);
        if now <= max {
            return;
        }
        let Some(w) = widths.get_mut(col) else {
            continue;
        };
        let floor = narrowest.max(1);
        if *w > floor {
            *w -= (now - max).min(*w - floor);
        }
    }
}

/// `text` cut to `width` terminal columns, ending in `…` when cut.
pub fn truncate(text: &str, width: usize) -> Cow<'_, str> {
    if text.width() <= width {
        return Cow::Borrowed(text);
    }
    let mut out = String::new();
    let mut used = 0;
    for ch in text.chars() {
        let w = ch.width().unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        out.push(ch);
        used += w;
    }
    if width > 0 {
        out.push('…');
    }
    Cow::Owned(out)
}

/// `text` wrapped at spaces into lines of at most `width` columns (a word longer than a line is cut
/// across lines); continuation lines start with `indent` spaces. Without a width, `text` as it is.
pub fn wrap(text: &str, width: Option<usize>, indent: usize) -> String {
    let Some(width) = width.filter(|w| *w > indent + 1) else {
        return text.to_string();
    };
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    let mut used = 0;
    // Whether `line` holds a word yet (beyond the indent).
    let mut filled = false;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let mut word: String = word.to_string();
        while !word.is_empty() {
            let w = word.width();
            let lead = usize::from(filled);
            if used + lead + w <= width {
                if filled {
                    line.push(' ');
                }
                line.push_str(&word);
                used += lead + w;
                filled = true;
                break;
            }
            if !filled {
                // A word wider than a whole line: as much as fits here, the rest on the next line.
                let mut head = String::new();
                let mut rest = String::new();
                let mut taken = 0;
                for ch in word.chars() {
                    let cw = ch.width().unwrap_or(0);
                    if rest.is_empty() && taken + cw <= width - used {
                        head.push(ch);
                        taken += cw;
                    } else {
                        rest.push(ch);
                    }
                }
                line.push_str(&head);
                word = rest;
            }
            lines.push(std::mem::replace(&mut line, " ".repeat(indent)));
            used = indent;
            filled = false;
        }
    }
    if filled || lines.is_empty() {
        lines.push(line);
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_characters_keep_the_columns_aligned() {
        let rows = vec![
            vec!["i-1".to_string(), "web-1".to_string(), "ok".to_string()],
            vec!["i-2".to_string(), "ウェブ".to_string(), "ok".to_string()],
            vec![
                "i-3".to_string(),
                "🦀".to_string(),
                "last column free".to_string(),
            ],
        ];
        let text = render(&["ID", "NAME", "STATUS"], &rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ID   NAME    STATUS");
        assert_eq!(lines[1], "i-1  web-1   ok");
        // ウェブ is 3 characters but 6 columns wide.
        assert_eq!(lines[2], "i-2  ウェブ  ok");
        assert_eq!(lines[3], "i-3  🦀      last column free");
        // Every STATUS cell starts in the same terminal column.
        for l in &lines {
            let at = l.find(['S', 'o', 'l']).unwrap();
            assert_eq!(l[..at].width(), 13, "{l}");
        }
    }

    fn rows() -> Vec<Vec<String>> {
        vec![
            vec![
                "i-0123456789abcdef0".to_string(),
                "a-rather-long-name-tag".to_string(),
                "no instance profile; AzureArcForServerSSMInstanceProfile will be associated; the agent is installed once the instance is Online in SSM".to_string(),
            ],
            vec!["i-2".to_string(), "ウェブウェブ".to_string(), "ok".to_string()],
        ]
    }

    #[test]
    fn a_fitted_table_never_passes_the_width_and_cuts_with_an_ellipsis() {
        let shrink = [(2, 10), (1, 6)];
        for max in [20, 40, 60, 80, 100, 200] {
            let layout = Layout {
                width: Some(max),
                shrink: &shrink,
                paint: None,
            };
            let text = render_with(&["INSTANCE", "NAME", "DETAIL"], &rows(), &layout);
            for l in text.lines() {
                assert!(l.width() <= max, "{max}: {l:?} is {} wide", l.width());
            }
            if max < 100 {
                assert!(text.contains('…'), "{max}: {text}");
            }
        }
        // DETAIL gives way first: at 80 columns NAME is still whole.
        let layout = Layout {
            width: Some(80),
            shrink: &shrink,
            paint: None,
        };
        let text = render_with(&["INSTANCE", "NAME", "DETAIL"], &rows(), &layout);
        assert!(
            text.contains("a-rather-long-name-tag  no instance"),
            "{text}"
        );
        assert!(text.lines().nth(1).unwrap().ends_with('…'));
    }

    #[test]
    fn paint_wraps_the_cell_and_keeps_the_padding() {
        let layout = Layout {
            width: None,
            shrink: &[],
            paint: Some((1, |s| (s == "failed").then_some("\x1b[31m"))),
        };
        let rows = vec![
            vec!["i-1".into(), "failed".into(), "x".into()],
            vec!["i-2".into(), "ok".into(), "y".into()],
        ];
        let text = render_with(&["ID", "STATUS", "DETAIL"], &rows, &layout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ID   STATUS  DETAIL", "headers are not painted");
        assert_eq!(lines[1], "i-1  \x1b[31mfailed\x1b[0m  x");
        assert_eq!(lines[2], "i-2  ok      y");
    }

    #[test]
    fn truncate_counts_display_columns() {
        assert_eq!(truncate("abcdef", 6), "abcdef");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("ウェブ", 4), "ウ…");
        assert_eq!(truncate("ウェブ", 4).width(), 3);
        assert_eq!(truncate("abc", 1), "…");
    }

    #[test]
    fn wrap_keeps_lines_within_the_width() {
        let text = "API calls: ec2:DescribeInstances=2 ec2:DescribeRegions=1 iam:GetInstanceProfile=3 a-very-long-word-that-is-wider-than-the-line-itself-by-far";
        let wrapped = wrap(text, Some(30), 2);
        for l in wrapped.lines() {
            assert!(l.width() <= 30, "{l:?}");
        }
        assert!(
            wrapped.lines().skip(1).all(|l| l.starts_with("  ")),
            "{wrapped}"
        );
        let words: String = wrapped.split_whitespace().collect::<Vec<_>>().join("");
        assert_eq!(words, text.split_whitespace().collect::<Vec<_>>().join(""));
        assert_eq!(wrap(text, None, 2), text);
        assert_eq!(wrap("short", Some(30), 2), "short");
    }
}
