//! What people read: the report, the tables, the progress of long waits, and stdout itself.

pub mod progress;
pub mod report;
pub mod stdout;
pub mod table;

use std::io::IsTerminal;

/// How the human (table) output is shaped: for a terminal, or as it always was for files and pipes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableStyle {
    /// The terminal's width to fit; `None`: every cell whole (off a terminal, or `--wide`).
    pub width: Option<usize>,
    /// The narrow default columns (on a terminal without `--wide`); `false`: every column.
    pub narrow: bool,
    /// Status cells in colour (red failed, yellow waiting, green done).
    pub colour: bool,
}

impl TableStyle {
    /// Every column, every cell whole, no colour: the output scripts read.
    pub fn plain() -> TableStyle {
        TableStyle::default()
    }

    /// The style for stdout as it is now: on a terminal narrow and fitted to its width (every column and
    /// whole cells with `wide`), in colour unless `NO_COLOR` is set; off a terminal [`TableStyle::plain`].
    pub fn for_stdout(wide: bool) -> TableStyle {
        let stdout = std::io::stdout();
        if !stdout.is_terminal() {
            return TableStyle::plain();
        }
        let width = terminal_size::terminal_size_of(&stdout)
            .map(|(w, _)| usize::from(w.0))
            .filter(|w| *w > 0)
            .unwrap_or(80);
        TableStyle::on_terminal(width, wide, colour_allowed(|k| std::env::var_os(k)))
    }

    /// The style on a terminal `width` columns wide.
    pub fn on_terminal(width: usize, wide: bool, colour: bool) -> TableStyle {
        TableStyle {
            width: (!wide).then_some(width),
            narrow: !wide,
            colour,
        }
    }
}

impl TableStyle {
    /// Renders a table of a report (`STATUS` painted when in colour): `order` names the columns in the
    /// order they give up width, with the narrowest each may become (columns not in `headers` skipped).
    pub fn render(
        &self,
        headers: &[&str],
        rows: &[Vec<String>],
        order: &[(&str, usize)],
    ) -> String {
        let at = |name: &str| headers.iter().position(|h| *h == name);
        let shrink: Vec<(usize, usize)> = order
            .iter()
            .filter_map(|(name, min)| at(name).map(|n| (n, *min)))
            .collect();
        let paint = at("STATUS")
            .filter(|_| self.colour)
            .map(|n| (n, status_paint as fn(&str) -> Option<&'static str>));
        let layout = table::Layout {
            width: self.width,
            shrink: &shrink,
            paint,
        };
        table::render_with(headers, rows, &layout)
    }
}

/// Whether colour may be used on a terminal: not when `NO_COLOR` is set to anything but the empty string
/// (<https://no-color.org>), nor when `TERM` is `dumb`.
pub fn colour_allowed(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> bool {
    let no_color = env("NO_COLOR").is_some_and(|v| !v.is_empty());
    let dumb = env("TERM").is_some_and(|t| t == "dumb");
    !no_color && !dumb
}

/// The ANSI style of a status cell: red for `failed`, yellow for what waits or needs a person, green for
/// what is done; other statuses plain.
pub fn status_paint(status: &str) -> Option<&'static str> {
    match status {
        "failed" => Some("\x1b[31m"),
        "waiting-for-ssm" | "in-progress" | "needs-manual-iam" | "unverified" => Some("\x1b[33m"),
        "onboarded" | "already-onboarded" | "offboarded" => Some("\x1b[32m"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_color_and_dumb_terminals_turn_colour_off() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        assert!(colour_allowed(env(&[])));
        assert!(colour_allowed(env(&[("TERM", "xterm-256color")])));
        assert!(!colour_allowed(env(&[("NO_COLOR", "1")])));
        assert!(
            colour_allowed(env(&[("NO_COLOR", "")])),
            "empty means unset"
        );
        assert!(!colour_allowed(env(&[("TERM", "dumb")])));
    }

    #[test]
    fn wide_keeps_every_column_and_whole_cells() {
        let s = TableStyle::on_terminal(100, true, true);
        assert_eq!(s.width, None);
        assert!(!s.narrow && s.colour);
        let s = TableStyle::on_terminal(100, false, false);
        assert_eq!(s.width, Some(100));
        assert!(s.narrow && !s.colour);
    }
}
