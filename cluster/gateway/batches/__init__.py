"""The Files and Batches routes of OpenAI's Batch API: HTTP in and out only (multipart upload,
query parameters, OpenAI-shaped errors); the store, its checks and the state machine are
cluster.batch's."""
