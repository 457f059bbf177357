//! Error display shared by the commands and the daemon's logs: an error's message never repeats its
//! source, so whoever shows an error shows its whole chain.

/// An error and its chain of causes on one line, `outer: inner: innermost`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {0}")]
    struct Outer(&'static str, #[source] std::io::Error);

    #[test]
    fn the_chain_names_every_cause_once() {
        let e = Outer(
            "x.toml",
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        );
        assert_eq!(chain(&e), "cannot read x.toml: no such file");
    }
}
