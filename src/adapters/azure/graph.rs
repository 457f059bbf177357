//! Azure Resource Graph: the one read-only query that finds Arc machines for our instances anywhere the
//! identity can read (Defender for Cloud's, another tool's), its KQL built with every value quoted.
//!
//! The request names no `subscriptions`: Resource Graph then searches every subscription the identity can
//! read, which is exactly the scope asked for, without a `GET /subscriptions` call first.

use serde::Deserialize;
use serde_json::json;
use tracing::warn;

use super::{join, RestArm};
use crate::model::{AzureError, GraphMachine};

/// `api-version` of Resource Graph queries.
const GRAPH_API: &str = "2022-10-01";
/// Rows per page asked of Resource Graph (its maximum).
const GRAPH_PAGE: u32 = 1000;

/// A KQL single-quoted string literal holding exactly `value`: backslash, quotes, tab, newline and return
/// escaped as KQL documents; other control characters, which no resource name or tag we look for holds,
/// are dropped.
pub fn kql_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The query: Arc machines whose name, or whose `InstanceId` tag, is one of `instance_ids` (both compared
/// case-insensitively, as ARM compares names).
pub fn machines_query(instance_ids: &[String]) -> String {
    let list = instance_ids
        .iter()
        .map(|id| kql_string(id))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "resources | where type =~ 'microsoft.hybridcompute/machines' \
         | where name in~ ({list}) or tostring(tags.InstanceId) in~ ({list}) \
         | project id, name, resourceGroup, subscriptionId, \
         instanceId = tostring(tags.InstanceId), status = tostring(properties.status)"
    )
}

#[derive(Deserialize)]
struct GraphPage {
    #[serde(default)]
    data: Vec<GraphRow>,
    #[serde(rename = "$skipToken", default)]
    skip_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GraphRow {
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    resource_group: String,
    #[serde(default)]
    subscription_id: String,
    #[serde(default)]
    instance_id: Option<String>,
    #[serde(default)]
    status: Option<String>,
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

impl From<GraphRow> for GraphMachine {
    fn from(r: GraphRow) -> GraphMachine {
        GraphMachine {
            id: r.id,
            name: r.name,
            subscription_id: r.subscription_id,
            resource_group: r.resource_group,
            instance_id_tag: non_empty(r.instance_id),
            status: non_empty(r.status),
        }
    }
}

impl RestArm {
    /// One Resource Graph query, all pages. After a refusal (403, `AuthorizationFailed`) this adapter warns
    /// once and asks no more: every later call fails at once with the same error.
    pub(super) async fn graph_machines(
        &self,
        instance_ids: &[String],
    ) -> Result<Vec<GraphMachine>, AzureError> {
        let op = "arm:ResourceGraph";
        if let Some(denied) = self
            .graph_denied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Err(denied);
        }
        let url = format!(
            "{}?api-version={GRAPH_API}",
            join(
                &self.resource_manager,
                "providers/Microsoft.ResourceGraph/resources"
            )
        );
        let query = machines_query(instance_ids);
        let mut skip_token: Option<String> = None;
        let mut out = Vec::new();
        loop {
            let mut options = json!({"$top": GRAPH_PAGE, "resultFormat": "objectArray"});
            if let Some(t) = &skip_token {
                options["$skipToken"] = json!(t);
            }
            let req = self
                .authed(reqwest::Method::POST, &url)
                .await?
                .json(&json!({"query": query, "options": options}));
            let resp = self.send(op, req, &url).await?;
            if !resp.status().is_success() {
                let e = Self::arm_error(op, resp).await;
                if e.is_denied() {
                    let mut denied = self.graph_denied.lock().unwrap_or_else(|e| e.into_inner());
                    if denied.is_none() {
                        warn!(error = %e, "Azure Resource Graph is not permitted; duplicates in other resource groups and subscriptions are not detected before installs (grant Reader, or Microsoft.ResourceGraph/resources/read)");
                    }
                    *denied = Some(e.clone());
                }
                return Err(e);
            }
            let page: GraphPage = Self::parse(op, resp).await?;
            out.extend(page.data.into_iter().map(GraphMachine::from));
            match page.skip_token {
                Some(t) if !t.is_empty() => skip_token = Some(t),
                _ => return Ok(out),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_values_stay_inside_their_kql_literal() {
        assert_eq!(kql_string("i-0abc"), "'i-0abc'");
        assert_eq!(kql_string("x') or name != ('"), r"'x\') or name != (\''",);
        assert_eq!(kql_string(r"a\'b"), r"'a\\\'b'");
        assert_eq!(kql_string("a\nb\u{0}c\"d"), r#"'a\nbc\"d'"#);
        // Whatever the value, the literal's only unescaped quotes are its two ends.
        for hostile in [
            "'",
            "\\",
            "\\'",
            "'''",
            "a\\",
            "') | project secret //",
            "\u{1b}[0m",
        ] {
            let lit = kql_string(hostile);
            let inner = &lit[1..lit.len() - 1];
            let mut escaped = false;
            for c in inner.chars() {
                assert!(escaped || c != '\'', "{hostile:?} -> {lit}");
                escaped = !escaped && c == '\\';
            }
            assert!(!escaped, "{hostile:?} ends in a lone backslash: {lit}");
        }
    }

    #[test]
    fn the_query_names_each_id_for_the_name_and_the_tag() {
        let q = machines_query(&["i-01".into(), "i-02".into()]);
        assert!(
            q.contains("where type =~ 'microsoft.hybridcompute/machines'"),
            "{q}"
        );
        assert!(q.contains("name in~ ('i-01', 'i-02')"), "{q}");
        assert!(
            q.contains("tostring(tags.InstanceId) in~ ('i-01', 'i-02')"),
            "{q}"
        );
    }
}
