//! Where machines go in Azure: the AWS region -> Azure location table of `[azure] location = "auto"`.
//!
//! The first rows are the mapping Microsoft's multicloud connector publishes (its machines land there). Every
//! other AWS region gets the Azure location in the same country when Azure has one, else the nearest one;
//! `[azure.locations]` overrides any row. The README prints this table.

/// One row: AWS region, Azure location, and whether the row is the connector's own (else our choice).
pub struct Row {
    /// The AWS region name.
    pub aws: &'static str,
    /// The Azure location (short form, as `azcmagent connect --location` takes it).
    pub azure: &'static str,
    /// Whether Microsoft's connector maps the region so (else it is arc-onboard's nearest choice).
    pub connector: bool,
}

const fn row(aws: &'static str, azure: &'static str, connector: bool) -> Row {
    Row {
        aws,
        azure,
        connector,
    }
}

/// Every AWS region arc-onboard knows, with its Azure location. Also the list of region names
/// `[azure.locations]` accepts as keys.
pub const TABLE: &[Row] = &[
    // The connector's published mapping.
    row("us-east-1", "eastus", true),
    row("us-east-2", "eastus", true),
    row("us-west-1", "eastus", true),
    row("us-west-2", "eastus", true),
    row("ca-central-1", "eastus", true),
    row("ap-southeast-1", "southeastasia", true),
    row("ap-northeast-1", "southeastasia", true),
    row("ap-northeast-3", "southeastasia", true),
    row("ap-south-1", "southeastasia", true),
    row("ap-southeast-2", "australiaeast", true),
    row("eu-west-1", "westeurope", true),
    row("eu-central-1", "westeurope", true),
    row("eu-north-1", "westeurope", true),
    row("eu-west-2", "uksouth", true),
    row("sa-east-1", "brazilsouth", true),
    // Our choice: the same country where Azure has a region, else the nearest.
    row("ca-west-1", "canadacentral", false),
    row("mx-central-1", "mexicocentral", false),
    row("eu-west-3", "francecentral", false),
    row("eu-central-2", "switzerlandnorth", false),
    row("eu-south-1", "italynorth", false),
    row("eu-south-2", "spaincentral", false),
    row("af-south-1", "southafricanorth", false),
    row("me-south-1", "uaenorth", false),
    row("me-central-1", "uaenorth", false),
    row("il-central-1", "israelcentral", false),
    row("ap-south-2", "centralindia", false),
    row("ap-east-1", "eastasia", false),
    row("ap-east-2", "eastasia", false),
    row("ap-northeast-2", "koreacentral", false),
    row("ap-southeast-3", "indonesiacentral", false),
    row("ap-southeast-4", "australiasoutheast", false),
    row("ap-southeast-5", "malaysiawest", false),
    row("ap-southeast-6", "newzealandnorth", false),
    row("ap-southeast-7", "southeastasia", false),
    row("us-gov-west-1", "usgovarizona", false),
    row("us-gov-east-1", "usgovvirginia", false),
    row("cn-north-1", "chinanorth3", false),
    row("cn-northwest-1", "chinanorth3", false),
];

/// The table's Azure location for an AWS region; `None` for a region the table does not know.
pub fn auto_location(aws_region: &str) -> Option<&'static str> {
    TABLE.iter().find(|r| r.aws == aws_region).map(|r| r.azure)
}

/// Whether arc-onboard knows the AWS region (it has a row in [`TABLE`]).
pub fn is_known_aws_region(aws_region: &str) -> bool {
    auto_location(aws_region).is_some()
}

/// Azure's short location form: 1-40 lowercase letters and digits (`eastus`, `westeurope`).
pub fn is_location_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connectors_mapping_is_the_table_head() {
        for (aws, azure) in [
            ("us-east-1", "eastus"),
            ("us-east-2", "eastus"),
            ("us-west-1", "eastus"),
            ("us-west-2", "eastus"),
            ("ca-central-1", "eastus"),
            ("ap-southeast-1", "southeastasia"),
            ("ap-northeast-1", "southeastasia"),
            ("ap-northeast-3", "southeastasia"),
            ("ap-south-1", "southeastasia"),
            ("ap-southeast-2", "australiaeast"),
            ("eu-west-1", "westeurope"),
            ("eu-central-1", "westeurope"),
            ("eu-north-1", "westeurope"),
            ("eu-west-2", "uksouth"),
            ("sa-east-1", "brazilsouth"),
        ] {
            assert_eq!(auto_location(aws), Some(azure), "{aws}");
            assert!(TABLE.iter().any(|r| r.aws == aws && r.connector), "{aws}");
        }
        assert_eq!(TABLE.iter().filter(|r| r.connector).count(), 15);
        assert_eq!(auto_location("xx-nowhere-1"), None);
    }

    #[test]
    fn every_row_is_well_formed_and_unique() {
        for (i, r) in TABLE.iter().enumerate() {
            assert!(crate::config::is_region_name(r.aws), "{}", r.aws);
            assert!(is_location_name(r.azure), "{}", r.azure);
            assert!(TABLE[..i].iter().all(|o| o.aws != r.aws), "{} twice", r.aws);
        }
    }
}
