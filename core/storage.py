"""Connecting to the app's storage account: Azurite locally, managed identity on Azure."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterable
from http.client import RemoteDisconnected
from typing import Any

import requests
from azure.core.exceptions import DecodeError, ServiceResponseError
from azure.core.pipeline.transport import RequestsTransport
from azure.core.pipeline.transport._requests_basic import BiggerBlockSizeHTTPAdapter
from azure.core.rest import HttpRequest
from azure.data.tables import TableClient, TableServiceClient, TableTransactionError
from azure.data.tables._error import RequestTooLargeError, _decode_error
from azure.data.tables._table_batch import TableBatchOperations
from urllib3.util.retry import Retry

from core.settings import Settings

# requests keeps 10 pooled connections per host by default; a billing fan-out makes ~50
# storage calls at once, so connections were dropped after use and opened again per call.
STORAGE_POOL_CONNECTIONS = 64


class PooledRequestsTransport(RequestsTransport):
    """azure-core's requests transport with a connection pool sized for a fan-out, and one
    retry when the server had already closed the pooled connection a request went out on.

    Storage servers close idle keep-alive connections (Azurite after 5 s). If that close
    races with a request reusing the connection, the request fails with "Remote end closed
    connection without response" although the server never read it, and azure-core does not
    retry POSTs (creates, `$batch`) on such errors: a billing activity's result was lost that
    way. Sending it once more on a fresh connection is safe here even if the server had read
    it, because every write this app makes is a create, an upsert, a delete or If-Match
    conditioned: a repeat is either harmless or refused (409/412), never applied twice.
    """

    def send(self, request: Any, **kwargs: Any) -> Any:
        try:
            return super().send(request, **kwargs)
        except ServiceResponseError as err:
            if not _closed_before_answer(err):
                raise
            return super().send(request, **kwargs)

    def _init_session(self, session: requests.Session) -> None:
        super()._init_session(session)
        adapter = BiggerBlockSizeHTTPAdapter(
            max_retries=Retry(total=False, redirect=False, raise_on_status=False),  # the pipeline retries
            pool_maxsize=STORAGE_POOL_CONNECTIONS,
        )
        for prefix in self._protocols:
            session.mount(prefix, adapter)


def _closed_before_answer(err: BaseException) -> bool:
    """Did the server close the connection without sending any response?"""
    seen: set[int] = set()
    todo: list[Any] = [err]
    while todo:
        exc = todo.pop()
        if not isinstance(exc, BaseException) or id(exc) in seen:
            continue
        seen.add(id(exc))
        if isinstance(exc, RemoteDisconnected | ConnectionResetError | BrokenPipeError):
            return True
        todo.extend([exc.__cause__, exc.__context__, getattr(exc, "inner_exception", None), *exc.args])
    return False


def table_service_from_connection_string(conn: str) -> TableServiceClient:
    """A TableServiceClient for a connection string, on the pooled transport."""
    return TableServiceClient.from_connection_string(conn, transport=PooledRequestsTransport())


def table_service(settings: Settings) -> TableServiceClient:
    """A TableServiceClient for the app's storage account.

    A connection string (Azurite, or a key-based account) wins; otherwise the account
    URL is used with DefaultAzureCredential, as on Azure where shared keys are disabled.
    """
    conn = settings.storage_connection_string
    if conn:
        if conn.strip() == "UseDevelopmentStorage=true":
            conn = DEVELOPMENT_STORAGE
        return table_service_from_connection_string(conn)
    from azure.identity import DefaultAzureCredential

    credential = DefaultAzureCredential(managed_identity_client_id=settings.storage_client_id)
    return TableServiceClient(
        endpoint=settings.table_endpoint, credential=credential, transport=PooledRequestsTransport()
    )


# Azurite's well-known development account on its default ports (Microsoft's Azurite docs).
DEVSTORE_ACCOUNT = "devstoreaccount1"
DEVSTORE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_connection_string(host: str = "127.0.0.1", blob: int = 10000, queue: int = 10001, table: int = 10002) -> str:
    """The connection string of an Azurite instance listening on the given ports."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={DEVSTORE_ACCOUNT};AccountKey={DEVSTORE_KEY};"
        f"BlobEndpoint=http://{host}:{blob}/{DEVSTORE_ACCOUNT};"
        f"QueueEndpoint=http://{host}:{queue}/{DEVSTORE_ACCOUNT};"
        f"TableEndpoint=http://{host}:{table}/{DEVSTORE_ACCOUNT};"
    )


DEVELOPMENT_STORAGE = azurite_connection_string()


# --- entity-group transactions -----------------------------------------------------------------
# azure-data-tables builds and parses a transaction's multipart body with the `email` package
# and a thread pool per level: ~5.7 ms of client CPU for a 1-operation transaction and ~17 ms
# for 20, against ~1.9 and ~3.6 ms here (measured on Azurite; docs/ledger.md). The ledger
# commits two transactions per charge and the durable engine one per episode, so this is on
# the hot path. Only the multipart framing is ours: each operation is still built by the SDK's
# own `TableBatchOperations` (entity serialization, If-Match, URLs), the request still goes
# through the table client's pipeline (authentication, retries, logging) and failures raise
# the SDK's own exceptions, so callers handle errors exactly as with `submit_transaction`.

TableOperation = tuple[Any, ...]  # ("create" | "update" | "upsert" | "delete", entity[, kwargs])

_CRLF = b"\r\n"


def submit_transaction(table: TableClient, operations: Iterable[TableOperation]) -> list[dict[str, Any]]:
    """Apply `operations` (one partition) atomically, like `TableClient.submit_transaction`.

    Returns each operation's response metadata (`{"etag": ...}` where the service sent one).
    Raises `TableTransactionError` (with `status_code`, `error_code` and the service's message,
    which starts with the failed operation's index) when an operation is refused, and the
    SDK's decoded `HttpResponseError` subclasses when the whole request is.
    """
    endpoint = f"{table.scheme}://{table._primary_hostname}"
    batch = TableBatchOperations(
        config=table._client._config,
        endpoint=endpoint,
        table_name=table.table_name,
        is_cosmos_endpoint=table._cosmos_endpoint,
    )
    for op in operations:
        batch.add_operation(op)
    if not batch.requests:
        return []
    changeset, outer = f"changeset_{uuid.uuid4()}", f"batch_{uuid.uuid4()}"
    body = bytearray(f"--{outer}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n".encode())
    for sub in batch.requests:
        content = sub.content if sub.content is not None else b""
        headers = "".join(f"{k}: {v}\r\n" for k, v in sub.headers.items())
        body += (
            f"--{changeset}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
            f"{sub.method} {sub.url} HTTP/1.1\r\n{headers}\r\n"
        ).encode()
        body += content.encode() if isinstance(content, str) else content
        body += _CRLF
    body += f"--{changeset}--\r\n--{outer}--\r\n".encode()
    request = HttpRequest(
        "POST",
        f"{endpoint}/$batch",
        headers={
            "x-ms-version": table.api_version,
            "DataServiceVersion": "3.0",
            "MaxDataServiceVersion": "3.0;NetFx",
            "Content-Type": f"multipart/mixed; boundary={outer}",
            "Accept": "application/json",
        },
        content=bytes(body),
    )
    response = table._client._client.send_request(request, stream=True)
    data = response.read()
    if response.status_code != 202:
        raise _decode_error(response)
    parts = _response_parts(data, response.headers.get("Content-Type", ""))
    for status, _headers, text in parts:
        if not 200 <= status < 300:
            raise _transaction_error(status, text)
    return [{"etag": headers["etag"]} if "etag" in headers else {} for _status, headers, _text in parts]


def _boundary(content_type: str) -> bytes:
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary":
            return value.strip('"').encode()
    raise DecodeError(f"no multipart boundary in {content_type!r}")


def _split(data: bytes, boundary: bytes) -> list[bytes]:
    """The parts of a multipart body (without preamble and epilogue)."""
    delimiter = b"--" + boundary
    chunks = data.split(delimiter)[1:]
    return [c[2:] if c.startswith(_CRLF) else c for c in chunks if not c.startswith(b"--")]


def _headers(block: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip().lower()] = value.strip()
    return out


def _response_parts(data: bytes, content_type: str) -> list[tuple[int, dict[str, str], str]]:
    """(status, lower-cased headers, body) of each operation's answer, in operation order."""
    answers: list[tuple[int, dict[str, str], str]] = []
    for part in _split(data, _boundary(content_type)):
        head, _, inner = part.partition(_CRLF + _CRLF)
        for sub in _split(inner, _boundary(_headers(head).get("content-type", ""))):
            _wrapper, _, message = sub.partition(_CRLF + _CRLF)
            status_line, _, rest = message.partition(_CRLF)
            fields, _, text = rest.partition(_CRLF + _CRLF)
            answers.append((int(status_line.split(b" ")[1]), _headers(fields), text.strip().decode("utf-8", "replace")))
    if not answers:
        raise DecodeError("the transaction's answer holds no operation responses")
    return answers


def _transaction_error(status: int, text: str) -> TableTransactionError:
    """The SDK's exception for a refused operation: same message ("<index>:…"), status and code."""
    code: str | None = None
    message = text
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        error = json.loads(text)["odata.error"]
        code, message = error.get("code"), (error.get("message") or {}).get("value", text)
    kind = RequestTooLargeError if status == 413 else TableTransactionError
    err = kind(message=f"{message}\nErrorCode:{code}")
    err.status_code, err.error_code = status, code
    return err
