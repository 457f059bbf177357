//! `[aws.accounts]`: which AWS accounts a pass covers (the caller's, a list, or an organization), how the
//! other accounts are entered, and the `--shard INDEX/COUNT` selection over them.

use std::fmt;
use std::str::FromStr;

use toml::{Table, Value};

use super::validate::{describe, join, Validator};

/// Default role assumed in every account other than the caller's.
pub const DEFAULT_MEMBER_ROLE: &str = "AzureArcOnboardingMember";
/// Default number of accounts handled at once.
pub const DEFAULT_MAX_CONCURRENT_ACCOUNTS: usize = 16;
/// Bounds of `max_concurrent_accounts`.
pub const MAX_CONCURRENT_ACCOUNTS_LIMIT: usize = 256;

/// Where the accounts in scope come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AccountSource {
    /// Only the account of the credentials (the behaviour without `[aws.accounts]`).
    #[default]
    Caller,
    /// Exactly the accounts in `ids`.
    List,
    /// `organizations:ListAccounts`, or the accounts under `organizational_units`, recursively.
    Organization,
}

impl AccountSource {
    /// The spelling in the file.
    pub fn as_str(&self) -> &'static str {
        match self {
            AccountSource::Caller => "caller",
            AccountSource::List => "list",
            AccountSource::Organization => "organization",
        }
    }
}

/// The `[aws.accounts]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountsConfig {
    /// Where the accounts come from.
    pub source: AccountSource,
    /// `source = "list"`: exactly these 12-digit ids (non-empty).
    pub ids: Vec<String>,
    /// `source = "organization"`: only accounts under these OUs (or roots), recursively; empty: all.
    pub organizational_units: Vec<String>,
    /// Never these accounts, whatever the source says.
    pub exclude: Vec<String>,
    /// Role assumed in every account other than the caller's (a name, optionally with a path).
    pub member_role: String,
    /// Passed to `sts:AssumeRole` when set.
    pub external_id: Option<String>,
    /// Accounts handled at once (1..=256).
    pub max_concurrent_accounts: usize,
}

impl Default for AccountsConfig {
    fn default() -> Self {
        AccountsConfig {
            source: AccountSource::Caller,
            ids: Vec::new(),
            organizational_units: Vec::new(),
            exclude: Vec::new(),
            member_role: DEFAULT_MEMBER_ROLE.to_string(),
            external_id: None,
            max_concurrent_accounts: DEFAULT_MAX_CONCURRENT_ACCOUNTS,
        }
    }
}

impl AccountsConfig {
    /// The member role's ARN in `account_id` of `partition` (`aws`, `aws-us-gov`, `aws-cn`).
    pub fn member_role_arn(&self, partition: &str, account_id: &str) -> String {
        format!(
            "arn:{partition}:iam::{account_id}:role/{}",
            self.member_role
        )
    }

    /// The section as TOML, defaults filled in (for `validate`).
    pub(super) fn to_table(&self) -> Table {
        let mut t = Table::new();
        let strings = |v: &[String]| Value::Array(v.iter().cloned().map(Value::String).collect());
        t.insert("source".into(), Value::String(self.source.as_str().into()));
        if self.source == AccountSource::List {
            t.insert("ids".into(), strings(&self.ids));
        }
        if self.source == AccountSource::Organization {
            t.insert(
                "organizational_units".into(),
                strings(&self.organizational_units),
            );
        }
        t.insert("exclude".into(), strings(&self.exclude));
        t.insert(
            "member_role".into(),
            Value::String(self.member_role.clone()),
        );
        if let Some(id) = &self.external_id {
            t.insert("external_id".into(), Value::String(id.clone()));
        }
        t.insert(
            "max_concurrent_accounts".into(),
            Value::Integer(self.max_concurrent_accounts as i64),
        );
        t
    }
}

/// `--shard INDEX/COUNT`: the accounts whose id, read as an integer, modulo COUNT equals INDEX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 0..COUNT.
    pub index: u64,
    /// At least 1.
    pub count: u64,
}

impl Shard {
    /// Whether this shard handles `account_id` (a 12-digit id; anything else is never selected).
    pub fn selects(&self, account_id: &str) -> bool {
        account_id
            .parse::<u64>()
            .is_ok_and(|id| id % self.count == self.index)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Shard, String> {
        let (index, count) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not INDEX/COUNT (e.g. 2/8)"))?;
        let number = |what: &str, v: &str| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| format!("{what} {v:?} is not a non-negative integer"))
        };
        let (index, count) = (number("INDEX", index)?, number("COUNT", count)?);
        if count == 0 {
            return Err("COUNT must be at least 1".into());
        }
        if index >= count {
            return Err(format!(
                "INDEX must be less than COUNT (0..={} for COUNT {count})",
                count - 1
            ));
        }
        Ok(Shard { index, count })
    }
}

/// Twelve ASCII digits.
pub fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// `ou-` root-part `-` ou-part (`ou-[0-9a-z]{4,32}-[0-9a-z]{8,32}`), or a root id `r-[0-9a-z]{4,32}`.
pub fn is_ou_or_root_id(s: &str) -> bool {
    let part = |p: &str, min: usize| {
        (min..=32).contains(&p.len())
            && p.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    };
    if let Some(rest) = s.strip_prefix("ou-") {
        return rest
            .split_once('-')
            .is_some_and(|(root, ou)| part(root, 4) && part(ou, 8));
    }
    s.strip_prefix("r-").is_some_and(|root| part(root, 4))
}

/// A role name (`[\w+=,.@-]{1,64}`), optionally after a path of such segments (`team/arc/Name`), at most
/// 512 characters in all.
pub fn is_role_name_with_path(s: &str) -> bool {
    let ok = |seg: &str, max: usize| {
        !seg.is_empty()
            && seg.len() <= max
            && seg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
    };
    let mut segments: Vec<&str> = s.split('/').collect();
    let Some(name) = segments.pop() else {
        return false;
    };
    s.len() <= 512 && ok(name, 64) && segments.iter().all(|seg| ok(seg, 512))
}

/// `sts:AssumeRole`'s `ExternalId`: 2..=1224 characters of `[\w+=,.@:/-]`.
pub fn is_external_id(s: &str) -> bool {
    (2..=1224).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c))
}

impl Validator<'_> {
    /// A list of strings each passing `check`; `what` describes a valid item.
    fn id_list(
        &mut self,
        t: &Table,
        key: &str,
        check: fn(&str) -> bool,
        what: &str,
    ) -> Option<Vec<String>> {
        let path = join("aws.accounts", key);
        let items = match t.get(key)? {
            Value::Array(items) => items,
            other => {
                self.issue(
                    path,
                    format!("must be a list of {what}, found {}", describe(other)),
                );
                return Some(Vec::new());
            }
        };
        let mut list: Vec<String> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let key = format!("{path}[{i}]");
            match item {
                Value::String(s) if !check(s) => self.issue(key, format!("{s:?} is not {what}")),
                Value::String(s) if list.contains(s) => {
                    self.issue(key, format!("{s:?} is listed twice"))
                }
                Value::String(s) => list.push(s.clone()),
                other => self.issue(key, format!("must be a string, found {}", describe(other))),
            }
        }
        Some(list)
    }

    /// Validates `[aws.accounts]`.
    pub(super) fn accounts(&mut self, t: &Table) -> AccountsConfig {
        const PATH: &str = "aws.accounts";
        self.unknown_keys(
            t,
            PATH,
            &[
                "source",
                "ids",
                "organizational_units",
                "exclude",
                "member_role",
                "external_id",
                "max_concurrent_accounts",
            ],
        );
        let source = match self.string(t, PATH, "source") {
            None | Some("caller") => AccountSource::Caller,
            Some("list") => AccountSource::List,
            Some("organization") => AccountSource::Organization,
            Some(other) => {
                self.issue(
                    join(PATH, "source"),
                    format!("{other:?} is not one of: caller, list, organization"),
                );
                AccountSource::Caller
            }
        };
        let mut c = AccountsConfig {
            source,
            ..AccountsConfig::default()
        };
        const ACCOUNT: &str = "a 12-digit AWS account id";
        const OU: &str =
            "an organizational unit id (ou-xxxx-xxxxxxxx) or a root id (r-xxxx), in lowercase";
        let ids = self.id_list(t, "ids", is_account_id, ACCOUNT);
        let ous = self.id_list(t, "organizational_units", is_ou_or_root_id, OU);
        c.exclude = self
            .id_list(t, "exclude", is_account_id, ACCOUNT)
            .unwrap_or_default();
        match (&c.source, ids) {
            (AccountSource::List, Some(ids))
                if ids.is_empty() && !self.has_issue("aws.accounts.ids") =>
            {
                self.issue(
                    join(PATH, "ids"),
                    "must list at least one account id when source = \"list\"",
                )
            }
            (AccountSource::List, Some(ids)) => c.ids = ids,
            (AccountSource::List, None) => self.issue(
                join(PATH, "ids"),
                "is required when source = \"list\" (the 12-digit ids of the accounts to handle)",
            ),
            (other, Some(_)) => self.issue(
                join(PATH, "ids"),
                format!(
                    "is only used with source = \"list\" (source is {:?})",
                    other.as_str()
                ),
            ),
            (_, None) => {}
        }
        match (&c.source, ous) {
            (AccountSource::Organization, Some(ous)) => c.organizational_units = ous,
            (other, Some(_)) => self.issue(
                join(PATH, "organizational_units"),
                format!(
                    "is only used with source = \"organization\" (source is {:?})",
                    other.as_str()
                ),
            ),
            (_, None) => {}
        }
        if let Some(role) = self.string(t, PATH, "member_role") {
            if is_role_name_with_path(role) {
                c.member_role = role.to_string();
            } else {
                self.issue(
                    join(PATH, "member_role"),
                    format!("{role:?} is not an IAM role name (1 to 64 of letters, digits and +=,.@_-, optionally after a path like \"team/\")"),
                );
            }
        }
        if let Some(id) = self.string(t, PATH, "external_id") {
            if is_external_id(id) {
                c.external_id = Some(id.to_string());
            } else {
                self.issue(
                    join(PATH, "external_id"),
                    format!(
                        "must be 2 to 1224 of letters, digits and +=,.@:/_- ({} characters given)",
                        id.chars().count()
                    ),
                );
            }
        }
        match t.get("max_concurrent_accounts") {
            None => {}
            Some(Value::Integer(n)) if (1..=MAX_CONCURRENT_ACCOUNTS_LIMIT as i64).contains(n) => {
                c.max_concurrent_accounts = *n as usize
            }
            Some(other) => self.issue(
                join(PATH, "max_concurrent_accounts"),
                format!(
                    "must be an integer from 1 to {MAX_CONCURRENT_ACCOUNTS_LIMIT}, found {}",
                    describe(other)
                ),
            ),
        }
        c
    }

    fn has_issue(&self, prefix: &str) -> bool {
        self.issues.iter().any(|i| i.key.starts_with(prefix))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn parse(accounts: &str) -> Result<Config, Vec<String>> {
        let text = format!("[aws]\nregions = [\"us-east-1\"]\n[aws.accounts]\n{accounts}\n");
        Config::parse(&text, Path::new("t.toml"))
            .map_err(|e| e.issues().iter().map(|i| i.to_string()).collect::<Vec<_>>())
    }

    fn issue_keys(accounts: &str) -> Vec<String> {
        parse(accounts)
            .unwrap_err()
            .into_iter()
            .map(|i| i.split(':').next().unwrap().to_string())
            .collect()
    }

    #[test]
    fn without_the_section_only_the_caller_is_in_scope() {
        let c = Config::parse("[aws]\nall_regions = true\n", Path::new("t.toml")).unwrap();
        assert_eq!(c.aws.accounts, AccountsConfig::default());
        assert_eq!(c.aws.accounts.source, AccountSource::Caller);
        assert_eq!(c.aws.accounts.member_role, "AzureArcOnboardingMember");
        assert_eq!(c.aws.accounts.max_concurrent_accounts, 16);
    }

    #[test]
    fn the_interface_example_parses() {
        let c = parse(
            r#"source = "organization"
organizational_units = ["ou-ab12-cd34ef56", "r-ab12"]
exclude = ["333333333333"]
member_role = "AzureArcOnboardingMember"
external_id = "arc-onboard:tenant/42"
max_concurrent_accounts = 32"#,
        )
        .unwrap();
        let a = &c.aws.accounts;
        assert_eq!(a.source, AccountSource::Organization);
        assert_eq!(a.organizational_units, ["ou-ab12-cd34ef56", "r-ab12"]);
        assert_eq!(a.exclude, ["333333333333"]);
        assert_eq!(a.external_id.as_deref(), Some("arc-onboard:tenant/42"));
        assert_eq!(a.max_concurrent_accounts, 32);
        assert_eq!(
            a.member_role_arn("aws-us-gov", "111111111111"),
            "arn:aws-us-gov:iam::111111111111:role/AzureArcOnboardingMember"
        );
    }

    #[test]
    fn a_list_takes_exactly_its_ids() {
        let c = parse("source = \"list\"\nids = [\"111111111111\", \"222222222222\"]").unwrap();
        assert_eq!(c.aws.accounts.ids, ["111111111111", "222222222222"]);
    }

    #[test]
    fn every_rule_names_its_key() {
        let cases: &[(&str, &str)] = &[
            ("source = \"all\"", "aws.accounts.source"),
            ("source = \"list\"", "aws.accounts.ids"),
            ("source = \"list\"\nids = []", "aws.accounts.ids"),
            (
                "source = \"list\"\nids = [\"12345678901\"]",
                "aws.accounts.ids[0]",
            ),
            (
                "source = \"list\"\nids = [\"111111111111\", \"111111111111\"]",
                "aws.accounts.ids[1]",
            ),
            ("ids = [\"111111111111\"]", "aws.accounts.ids"),
            (
                "source = \"organization\"\nids = [\"111111111111\"]",
                "aws.accounts.ids",
            ),
            (
                "source = \"list\"\nids = [\"111111111111\"]\norganizational_units = [\"ou-ab12-cd34ef56\"]",
                "aws.accounts.organizational_units",
            ),
            (
                "source = \"organization\"\norganizational_units = [\"ou-AB12-cd34ef56\"]",
                "aws.accounts.organizational_units[0]",
            ),
            (
                "source = \"organization\"\norganizational_units = [\"ou-ab12-cd34\"]",
                "aws.accounts.organizational_units[0]",
            ),
            ("exclude = [\"abc\"]", "aws.accounts.exclude[0]"),
            ("member_role = \"has space\"", "aws.accounts.member_role"),
            ("member_role = \"\"", "aws.accounts.member_role"),
            (
                "member_role = \"arn:aws:iam::1:role/x\"",
                "aws.accounts.member_role",
            ),
            ("external_id = \"x\"", "aws.accounts.external_id"),
            ("external_id = \"has space\"", "aws.accounts.external_id"),
            ("max_concurrent_accounts = 0", "aws.accounts.max_concurrent_accounts"),
            ("max_concurrent_accounts = 257", "aws.accounts.max_concurrent_accounts"),
            ("max_concurrent_accounts = \"8\"", "aws.accounts.max_concurrent_accounts"),
            ("regions = [\"us-east-1\"]", "aws.accounts.regions"),
        ];
        for (text, key) in cases {
            let keys = issue_keys(text);
            assert_eq!(keys, [key.to_string()], "{text}");
        }
    }

    #[test]
    fn syntax_helpers() {
        assert!(is_account_id("012345678901"));
        assert!(!is_account_id("01234567890a"));
        assert!(is_ou_or_root_id("ou-ab12-cd34ef56"));
        assert!(is_ou_or_root_id("r-ab12"));
        assert!(!is_ou_or_root_id("ou-ab1-cd34ef56"));
        assert!(!is_ou_or_root_id("r-ab1"));
        assert!(is_role_name_with_path("team/arc/Member_Role+=,.@-"));
        assert!(!is_role_name_with_path("team//Member"));
        assert!(!is_role_name_with_path(&"a".repeat(65)));
        assert!(is_external_id("ab"));
        assert!(is_external_id(&"a".repeat(1224)));
        assert!(!is_external_id(&"a".repeat(1225)));
    }

    #[test]
    fn shards_select_by_id_modulo_count() {
        let s: Shard = "2/8".parse().unwrap();
        assert_eq!(s, Shard { index: 2, count: 8 });
        assert!(s.selects("000000000010"));
        assert!(!s.selects("000000000011"));
        assert!("0/1".parse::<Shard>().unwrap().selects("123456789012"));
        for bad in ["8/8", "1/0", "x/2", "2", "-1/2", "1/2/3"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_effective_section_round_trips() {
        let c =
            parse("source = \"list\"\nids = [\"111111111111\"]\nexternal_id = \"ext-1\"").unwrap();
        let text = c.to_effective_toml("none");
        assert!(text.contains("[aws.accounts]"), "{text}");
        let again = Config::parse(&text, Path::new("t.toml")).unwrap();
        assert_eq!(again.aws.accounts, c.aws.accounts);
    }
}
