//! The `[events]` section: the SQS queue of event-driven onboarding, and the shape checks of its URL.

use url::Url;

/// The `[events]` section (daemon only): where EventBridge delivers instance events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsConfig {
    /// The queue URL as SQS gives it (`https://sqs.REGION.amazonaws.com/ACCOUNT/NAME`), or an emulator's
    /// `http://` URL on a loopback host.
    pub queue_url: String,
}

impl EventsConfig {
    /// The queue's region when its host names one (`sqs.us-east-1.amazonaws.com`,
    /// `us-east-1.queue.amazonaws.com`, VPC endpoint hosts); `None` for loopback emulator URLs, which
    /// use the home region.
    pub fn region(&self) -> Option<String> {
        let url = Url::parse(&self.queue_url).ok()?;
        region_of_host(url.host_str()?)
    }

    /// The account id in the queue URL's path.
    pub fn queue_account(&self) -> Option<String> {
        let url = Url::parse(&self.queue_url).ok()?;
        url.path_segments()?.next().map(str::to_string)
    }
}

/// The region named by an SQS host: the first label that reads as a region name.
fn region_of_host(host: &str) -> Option<String> {
    host.split('.')
        .find(|label| super::is_region_name(label))
        .map(str::to_string)
}

/// Whether a host is an AWS SQS endpoint: `sqs[-fips].REGION.amazonaws.com[.cn]`, the legacy
/// `REGION.queue.amazonaws.com[.cn]`, or an interface VPC endpoint (`vpce-....sqs.REGION.vpce.amazonaws.com`).
fn is_sqs_host(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let base = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"));
    let Some(base) = base else {
        return false;
    };
    let labels: Vec<&str> = base.split('.').collect();
    let has_region = labels.iter().any(|l| super::is_region_name(l));
    let names_sqs = labels
        .iter()
        .any(|l| matches!(*l, "sqs" | "sqs-fips" | "queue"));
    has_region && names_sqs
}

/// A queue name: 1 to 80 of `A-Z a-z 0-9 - _`, FIFO queues ending in `.fifo`.
fn is_queue_name(name: &str) -> bool {
    let stem = name.strip_suffix(".fifo").unwrap_or(name);
    (1..=80).contains(&name.len())
        && !stem.is_empty()
        && stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks a queue URL's shape: `https://` on an SQS host (plain `http://` only on a loopback host, for
/// emulators), path `/ACCOUNT/NAME` with a 12-digit account and a valid queue name, no credentials,
/// query or fragment.
pub fn check_queue_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    let loopback = super::is_loopback_host(&url);
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(format!(
            "{s:?} must use https (plain http is accepted only on loopback hosts, for emulators)"
        ))
        }
        other => return Err(format!("{s:?} must use https, not {other}")),
    }
    let host = url.host_str().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    if !loopback && !is_sqs_host(host) {
        return Err(format!(
            "{s:?} is not an SQS queue URL (expected https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials (user:password@)".to_string());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{s:?} must not have a ?query or #fragment"));
    }
    let segments: Vec<&str> = url.path_segments().map_or(Vec::new(), |s| s.collect());
    match segments.as_slice() {
        [account, name]
            if account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()) =>
        {
            if !is_queue_name(name) {
                return Err(format!(
                    "{s:?}: {name:?} is not a queue name (1 to 80 of A-Z a-z 0-9 - _, FIFO queues end in .fifo)"
                ));
            }
        }
        _ => {
            return Err(format!(
                "{s:?} must have the path /ACCOUNT/QUEUE_NAME (a 12-digit account id, then the queue name)"
            ))
        }
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_urls_sqs_gives_are_accepted_with_their_region() {
        for (url, region) in [
            (
                "https://sqs.us-east-1.amazonaws.com/123456789012/arc-onboard-events",
                Some("us-east-1"),
            ),
            (
                "https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q_1",
                Some("cn-north-1"),
            ),
            (
                "https://eu-west-1.queue.amazonaws.com/123456789012/q.fifo",
                Some("eu-west-1"),
            ),
            (
                "https://sqs-fips.us-gov-west-1.amazonaws.com/123456789012/q",
                Some("us-gov-west-1"),
            ),
            (
                "https://vpce-0abc-xyz.sqs.us-west-2.vpce.amazonaws.com/123456789012/q",
                Some("us-west-2"),
            ),
            ("http://127.0.0.1:4566/123456789012/q", None),
            ("http://localhost:4566/123456789012/q", None),
        ] {
            assert!(
                check_queue_url(url).is_ok(),
                "{url}: {:?}",
                check_queue_url(url)
            );
            let events = EventsConfig {
                queue_url: url.into(),
            };
            assert_eq!(events.region().as_deref(), region, "{url}");
            assert_eq!(events.queue_account().as_deref(), Some("123456789012"));
        }
    }

    #[test]
    fn malformed_queue_urls_say_what_is_wrong() {
        for (url, says) in [
            ("sqs.us-east-1.amazonaws.com/123456789012/q", "not a URL"),
            (
                "http://sqs.us-east-1.amazonaws.com/123456789012/q",
                "must use https",
            ),
            ("ftp://127.0.0.1/123456789012/q", "must use https"),
            ("https://example.com/123456789012/q", "not an SQS queue URL"),
            (
                "https://sqs.us-east-1.amazonaws.com/q",
                "/ACCOUNT/QUEUE_NAME",
            ),
            (
                "https://sqs.us-east-1.amazonaws.com/12345/q",
                "/ACCOUNT/QUEUE_NAME",
            ),
            (
                "https://sqs.us-east-1.amazonaws.com/123456789012/q/extra",
                "/ACCOUNT/QUEUE_NAME",
            ),
            (
                "https://sqs.us-east-1.amazonaws.com/123456789012/bad%20name",
                "is not a queue name",
            ),
            (
                "https://sqs.us-east-1.amazonaws.com/123456789012/q?x=1",
                "?query",
            ),
            (
                "https://user:pw@sqs.us-east-1.amazonaws.com/123456789012/q",
                "credentials",
            ),
        ] {
            let err = check_queue_url(url).unwrap_err();
            assert!(err.contains(says), "{url}: {err}");
        }
    }
}
