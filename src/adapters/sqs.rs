//! The SQS adapter behind the [`Queue`] port: long polls and batch deletes on the one event queue.

use std::time::Duration;

use aws_config::{Region, SdkConfig};

use crate::adapters::aws::aws_error;
use crate::model::{AwsError, AwsErrorKind};
use crate::ports::{ApiCounter, MutationToken, Queue, QueueMessage};

/// The event queue, through `aws-sdk-sqs`. `AWS_ENDPOINT_URL` (read by aws-config) points it at an
/// emulator like every other client.
pub struct SdkQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SdkQueue {
    /// A client for `queue_url` in `region` (the region in the queue's host, else the home region).
    pub fn new(sdk: &SdkConfig, queue_url: &str, region: &str, counter: ApiCounter) -> SdkQueue {
        let conf = aws_sdk_sqs::config::Builder::from(sdk)
            .region(Region::new(region.to_string()))
            .interceptor(counter)
            .build();
        SdkQueue {
            client: aws_sdk_sqs::Client::from_conf(conf),
            queue_url: queue_url.to_string(),
        }
    }
}

impl Queue for SdkQueue {
    async fn receive(&self, wait: Duration, max: i32) -> Result<Vec<QueueMessage>, AwsError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .max_number_of_messages(max.clamp(1, 10))
            .send()
            .await
            .map_err(|e| aws_error("sqs:ReceiveMessage", e))?;
        Ok(out
            .messages()
            .iter()
            .filter_map(|m| {
                Some(QueueMessage {
                    message_id: m.message_id()?.to_string(),
                    receipt_handle: m.receipt_handle()?.to_string(),
                    body: m.body().unwrap_or_default().to_string(),
                })
            })
            .collect())
    }

    async fn delete(
        &self,
        _token: &MutationToken,
        receipt_handles: &[String],
    ) -> Result<Vec<String>, AwsError> {
        use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
        let mut failed = Vec::new();
        for chunk in receipt_handles.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(n, handle)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(n.to_string())
                        .receipt_handle(handle)
                        .build()
                        .map_err(|e| AwsError {
                            operation: "sqs:DeleteMessageBatch".into(),
                            kind: AwsErrorKind::Other,
                            code: "Client".into(),
                            message: e.to_string(),
                            origin: None,
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .client
                .delete_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| aws_error("sqs:DeleteMessageBatch", e))?;
            for f in out.failed() {
                if let Some(handle) = f.id().parse::<usize>().ok().and_then(|n| chunk.get(n)) {
                    failed.push(handle.clone());
                }
            }
        }
        Ok(failed)
    }
}
