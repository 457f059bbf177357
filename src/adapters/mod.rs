//! The real systems behind the ports: the AWS SDK, Azure Resource Manager and the Azure credentials.

pub mod aws;
pub mod azure;
pub mod credential;
pub mod organizations;
pub mod sqs;
