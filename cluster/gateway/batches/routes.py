"""`/v1/files` and `/v1/batches`, tenant routes of the route table (so the auth matrix covers
them): each handler reads the request, calls cluster.batch's service for the caller's tenant and
answers OpenAI's object; a BatchApiError becomes the OpenAI-shaped error here, in one place."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Awaitable, Callable

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from cluster.batch.contents import CHUNK
from cluster.batch.errors import BatchApiError, invalid, no_such_file
from cluster.batch.lines import expiry_seconds
from cluster.batch.service import BatchService
from cluster.gateway.batches.upload import read_form
from cluster.gateway.errors import OpenAIError

MAX_JSON_BODY = 64 * 1024


def _json(obj: object) -> Response:
    return Response(orjson.dumps(obj), media_type="application/json")


def translated(handler: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """The batch store's refusals as OpenAI errors (a 503 carries Retry-After)."""
    @functools.wraps(handler)
    async def call(request: Request, **kwargs) -> Response:
        try:
            return await handler(request, **kwargs)
        except BatchApiError as e:
            headers = {"Retry-After": str(e.retry_after_s)} if e.retry_after_s else None
            raise OpenAIError(e.status, e.message, code=e.code, param=e.param, headers=headers) from None
    return call


def _limit(request: Request, default: int, most: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    try:
        n = int(raw)
    except ValueError:
        raise invalid("limit must be an integer", param="limit") from None
    if not 1 <= n <= most:
        raise invalid(f"limit must lie within 1 and {most}", param="limit")
    return n


async def _json_body(request: Request) -> object:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BODY:
            raise BatchApiError(413, f"request body exceeds {MAX_JSON_BODY} bytes", code="request_too_large")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise invalid("the request body is not valid JSON") from None


def add_batch_routes(table, *, service: BatchService) -> None:
    @table.add("POST", "/v1/files", "tenant")
    @translated
    async def create_file(request: Request) -> Response:
        tenant = request.state.tenant
        upload = await service.begin_upload(tenant)
        try:
            form = await read_form(request, upload)
            expires = expiry_seconds(form.fields.get("expires_after[anchor]"), form.fields.get("expires_after[seconds]"))
        except BaseException:
            upload.discard()
            raise
        rec = await service.finish_upload(tenant, upload, filename=form.filename, purpose=form.fields.get("purpose"),
                                          expires_after_s=expires)
        return _json(rec.openai())

    @table.add("GET", "/v1/files", "tenant")
    @translated
    async def list_files(request: Request) -> Response:
        q = request.query_params
        order = q.get("order", "desc")
        if order not in ("asc", "desc"):
            raise invalid("order must be asc or desc", param="order")
        return _json(await service.files(request.state.tenant, purpose=q.get("purpose"), after=q.get("after"),
                                         limit=_limit(request, 10000, 10000), ascending=order == "asc"))

    @table.add("GET", "/v1/files/{file_id}", "tenant")
    @translated
    async def retrieve_file(request: Request, file_id: str) -> Response:
        return _json((await service.file(request.state.tenant, file_id)).openai())

    @table.add("DELETE", "/v1/files/{file_id}", "tenant")
    @translated
    async def delete_file(request: Request, file_id: str) -> Response:
        return _json(await service.delete_file(request.state.tenant, file_id))

    @table.add("GET", "/v1/files/{file_id}/content", "tenant")
    @translated
    async def file_content(request: Request, file_id: str) -> Response:
        path = await service.content(request.state.tenant, file_id)
        try:  # opened before answering: a delete from now on does not cut the download short
            f = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            raise no_such_file(file_id) from None
        size = os.fstat(f.fileno()).st_size

        async def chunks():
            try:
                while data := await asyncio.to_thread(f.read, CHUNK):
                    yield data
            finally:
                f.close()

        return StreamingResponse(chunks(), media_type="application/octet-stream",
                                 headers={"Content-Length": str(size)})

    @table.add("POST", "/v1/batches", "tenant")
    @translated
    async def create_batch(request: Request) -> Response:
        return _json((await service.create_batch(request.state.tenant, await _json_body(request))).openai())

    @table.add("GET", "/v1/batches", "tenant")
    @translated
    async def list_batches(request: Request) -> Response:
        return _json(await service.batches(request.state.tenant, after=request.query_params.get("after"),
                                           limit=_limit(request, 20, 100)))

    @table.add("GET", "/v1/batches/{batch_id}", "tenant")
    @translated
    async def retrieve_batch(request: Request, batch_id: str) -> Response:
        return _json((await service.batch(request.state.tenant, batch_id)).openai())

    @table.add("POST", "/v1/batches/{batch_id}/cancel", "tenant")
    @translated
    async def cancel_batch(request: Request, batch_id: str) -> Response:
        return _json((await service.cancel(request.state.tenant, batch_id)).openai())
