"""The Batch API's foundation: the file store (contents on a filesystem path named by owc's ids,
records per tenant), batch records and their state machine, input-line validation. Records live
in Redis (shared by every gateway process) or in process. Never imports the gateway: the
gateway's HTTP handlers (cluster.gateway.batches) call it, as admission calls cluster.tenancy."""
