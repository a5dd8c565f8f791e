"""What the Batch API refuses, with the HTTP status and OpenAI error code it answers; the gateway
turns one into its OpenAI-shaped error (cluster.gateway.batches.routes), so no HTTP library here."""

from __future__ import annotations


class BatchApiError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 retry_after_s: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.retry_after_s = retry_after_s


def invalid(message: str, *, param: str | None = None, code: str | None = "invalid_request") -> BatchApiError:
    return BatchApiError(400, message, code=code, param=param)


def no_such_file(file_id: str) -> BatchApiError:
    return BatchApiError(404, f"No such File object: {file_id}", code="file_not_found", param="file_id")


def no_such_batch(batch_id: str) -> BatchApiError:
    return BatchApiError(404, f"No such Batch object: {batch_id}", code="batch_not_found", param="batch_id")


def store_unavailable() -> BatchApiError:
    return BatchApiError(503, "the batch store is unavailable; retry", code="batch_store_unavailable", retry_after_s=1)
