//! What people read: the report, the tables, and the progress of long waits.

pub mod progress;
pub mod report;
pub mod table;
