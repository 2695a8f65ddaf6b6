"""Connecting to the app's storage account: Azurite locally, managed identity on Azure."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote, urlsplit

from azure.core.exceptions import (
    DecodeError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest import HttpRequest
from azure.core.rest._http_response_impl import HttpResponseImpl
from azure.core.utils import CaseInsensitiveDict
from azure.data.tables import TableClient, TableEntity, TableServiceClient, TableTransactionError
from azure.data.tables._error import RequestTooLargeError, _decode_error
from azure.data.tables._table_batch import TableBatchOperations

from core.settings import Settings

# A billing fan-out makes ~50 storage calls at once; connections beyond this many idle ones
# are closed after use instead of kept.
STORAGE_POOL_CONNECTIONS = 64
# Azurite closes a keep-alive connection after 5 s idle (Azure's front ends after minutes);
# one idle longer than this is closed here instead of risking a request on it.
IDLE_SECONDS = 4.0


class StorageTransport(HttpTransport):
    """azure-core's transport interface on the standard library's `http.client`, for Table Storage.

    Why not azure-core's default `RequestsTransport`: per storage call, `requests` and `urllib3`
    cost about as much client CPU again as the SDK and the azure-core pipeline together
    (session settings merged and the environment scanned for proxies on every request,
    urllib3's pool and retry bookkeeping); `make bench-storage` measures both, docs/ledger.md
    has the figures. The proxy and devhost's durable engine make several storage calls per
    charge, so this was the largest client cost on the hot path. Everything above the socket is
    unchanged: the SDK builds the requests and parses the answers, the pipeline signs,
    retries and logs. What it does not do: HTTP proxies from the environment, and streaming
    (table answers are read whole; they are at most a page of entities).

    Keep-alive connections are pooled per host. A request that fails because the server
    closed the connection without answering (Azurite closes idle connections; that close
    can race a request reusing one) is sent once more on a new connection. azure-core does
    not retry POSTs (creates, `$batch`) on such errors, and a lost write here was once a
    billing activity's result (docs/ledger.md). The resend never applies a write twice, even
    if the server had applied the first one, because every write this app makes is a create,
    an upsert, a delete or If-Match conditioned; in that rare case the repeat is refused
    (409/412) and the caller sees a conflict for a write that did land, which the ledger and
    the durable engine (`_commit_landed`) resolve by re-reading.
    """

    def __init__(
        self,
        *,
        pool_size: int = STORAGE_POOL_CONNECTIONS,
        connection_timeout: float = 10.0,
        read_timeout: float = 60.0,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self._pool_size = pool_size
        self._connection_timeout = connection_timeout
        self._read_timeout = read_timeout
        self._idle_seconds = idle_seconds
        self._idle: dict[tuple[str, str], list[tuple[float, http.client.HTTPConnection]]] = {}
        self._lock = threading.Lock()
        self._ssl: ssl.SSLContext | None = None

    def __enter__(self) -> StorageTransport:
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()

    def open(self) -> None:
        pass

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for _, conn in conns:
                conn.close()

    def send(self, request: Any, **kwargs: Any) -> HttpResponseImpl:
        """Send an `azure.core.rest.HttpRequest`; return its whole answer as a rest response."""
        if not isinstance(request, HttpRequest):
            raise TypeError(f"StorageTransport sends azure.core.rest.HttpRequest, not {type(request).__name__}")
        connect_timeout = float(kwargs.get("connection_timeout") or self._connection_timeout)
        read_timeout = float(kwargs.get("read_timeout") or self._read_timeout)
        url = urlsplit(request.url)
        target = url.path + (f"?{url.query}" if url.query else "")
        body = request.content.encode() if isinstance(request.content, str) else request.content
        key = (url.scheme, url.netloc)
        for attempt in (1, 2):
            conn = self._checkout(key, connect_timeout, reuse=attempt == 1)
            try:
                conn.sock.settimeout(read_timeout)  # connected: by `_checkout`, or when first pooled
                conn.request(request.method, target or "/", body=body, headers=dict(request.headers))
                answer = conn.getresponse()
                data = answer.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ssl.SSLEOFError) as err:
                conn.close()
                if attempt == 1:
                    continue  # the server closed the connection before answering: once more, fresh
                raise ServiceResponseError(f"storage connection closed without an answer: {err}", error=err) from err
            except TimeoutError as err:
                conn.close()
                raise ServiceResponseTimeoutError(f"no answer from storage in {read_timeout:.0f} s", error=err) from err
            except (OSError, http.client.HTTPException) as err:
                conn.close()
                raise ServiceResponseError(f"storage request failed: {err}", error=err) from err
            headers = CaseInsensitiveDict(answer.getheaders())
            if answer.will_close:
                conn.close()
            else:
                self._checkin(key, conn)
            response = _WholeResponse(request, answer.status, answer.reason, headers, data)
            if not kwargs.get("stream"):
                response.read()
            return response
        raise AssertionError("unreachable")

    def _checkout(self, key: tuple[str, str], connect_timeout: float, *, reuse: bool = True) -> http.client.HTTPConnection:
        """A pooled connection idle for less than `idle_seconds`, else (or if not `reuse`) a new one."""
        now = time.monotonic()
        stale: list[http.client.HTTPConnection] = []
        conn: http.client.HTTPConnection | None = None
        with self._lock:
            pooled = self._idle.get(key) if reuse else None
            while pooled:
                last_used, candidate = pooled.pop()
                if now - last_used < self._idle_seconds:
                    conn = candidate
                    break
                stale.append(candidate)
        for old in stale:
            old.close()
        if conn is not None:
            return conn
        scheme, netloc = key
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            conn = http.client.HTTPSConnection(netloc, timeout=connect_timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(netloc, timeout=connect_timeout)
        try:
            conn.connect()
        except TimeoutError as err:
            raise ServiceRequestTimeoutError(f"could not connect to storage at {netloc}", error=err) from err
        except OSError as err:
            raise ServiceRequestError(f"could not connect to storage at {netloc}: {err}", error=err) from err
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _checkin(self, key: tuple[str, str], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            pooled = self._idle.setdefault(key, [])
            if len(pooled) < self._pool_size:
                pooled.append((time.monotonic(), conn))
                return
        conn.close()


class _Closed:
    """The `internal_response` of a `_WholeResponse`: its body was read, nothing to release."""

    def close(self) -> None:
        pass


def _chunks(response: _WholeResponse, **_: Any) -> Iterator[bytes]:
    yield response.content


class _WholeResponse(HttpResponseImpl):
    """An azure-core rest response whose body was read in full by `StorageTransport`."""

    def __init__(self, request: HttpRequest, status: int, reason: str, headers: CaseInsensitiveDict, body: bytes):
        super().__init__(
            request=request,
            internal_response=_Closed(),
            status_code=status,
            reason=reason,
            content_type=headers.get("content-type"),
            headers=headers,
            stream_download_generator=_chunks,
        )
        self._content = body


def table_service_from_connection_string(conn: str) -> TableServiceClient:
    """A TableServiceClient for a connection string, on the app's storage transport."""
    return TableServiceClient.from_connection_string(conn, transport=StorageTransport())


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
        endpoint=settings.table_endpoint, credential=credential, transport=StorageTransport()
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


# --- partition range queries ---------------------------------------------------------------------
# azure-data-tables turns every entity of a query's answer into a `TableEntity` property by property
# (type annotations, EntityProperty wrappers, datetime parsing): ~6 ms of client CPU for the ~60
# rows of a key's lease range, against ~1 ms for a point read (measured on Azurite; docs/ledger.md,
# "The cap across many instances"). The lease ledger reads that range whenever an instance runs
# short, so here the answer is parsed with `json` alone. The request is the service's documented
# Query Entities GET (learn.microsoft.com/rest/api/storageservices/query-entities), sent through
# the table client's own pipeline (authentication, retries, logging); errors are the SDK's own.

_INT64 = "Edm.Int64"  # sent as a string (JSON numbers lose precision past 2**53); Int32 comes as a number


def query_rows(table: TableClient, flt: str) -> list[TableEntity]:
    """Every entity matching `flt` (an OData filter with its values already quoted), as
    `TableEntity` dicts: Int64 values as `int`, the ETag in `.metadata` (others left as JSON gives
    them: strings, numbers, booleans; this app stores its dates as ISO strings)."""
    endpoint = f"{table.scheme}://{table._primary_hostname}"
    base = f"{endpoint}/{quote(table.table_name)}()?$filter={quote(flt, safe='')}"
    rows: list[TableEntity] = []
    url = base
    while True:
        request = HttpRequest("GET", url, headers={
            "x-ms-version": table.api_version,
            "DataServiceVersion": "3.0",
            "MaxDataServiceVersion": "3.0;NetFx",
            "Accept": "application/json;odata=minimalmetadata",
        })
        response = table._client._client.send_request(request, stream=True)
        data = response.read()
        if response.status_code != 200:
            raise _decode_error(response)
        for raw in json.loads(data).get("value", []):
            rows.append(_entity(raw))
        next_pk = response.headers.get("x-ms-continuation-NextPartitionKey")
        next_rk = response.headers.get("x-ms-continuation-NextRowKey")
        if not next_pk:
            return rows
        url = f"{base}&NextPartitionKey={quote(next_pk, safe='')}" + (
            f"&NextRowKey={quote(next_rk, safe='')}" if next_rk else "")


def _entity(raw: dict[str, Any]) -> TableEntity:
    entity = TableEntity()
    etag = raw.pop("odata.etag", None)
    timestamp = raw.get("Timestamp")
    for name, value in raw.items():
        if "@odata." in name or name.startswith("odata."):
            continue
        if raw.get(f"{name}@odata.type") == _INT64:
            value = int(value)
        entity[name] = value
    entity._metadata = {"etag": etag, "timestamp": timestamp}
    return entity
