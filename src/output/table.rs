//! The one table renderer of the human output (`plan`/`run` reports and `status`): columns padded to the
//! widest cell as a terminal shows it (display width, so a CJK or emoji `Name` tag keeps the columns
//! aligned); the last column is not padded.

use unicode_width::UnicodeWidthStr;

/// Renders a header line and the rows, two spaces between columns, one line each.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.width()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.width());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let cells: Vec<&str> = cells.collect();
        let last = cells.len().saturating_sub(1);
        for (n, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if n < last {
                out.push_str(&" ".repeat(widths[n] - cell.width() + 2));
            }
        }
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
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
}
