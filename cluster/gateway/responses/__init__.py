"""The Responses API's own machinery: tenant-bound response ids, conversations across
replicas (previous_response_id), its retrieval/delete routes."""
