"""The host side of the Functions language-worker protocol, as plain Python objects.

Microsoft's Python worker (`azure-functions-runtime`, the library Azure runs for Python
3.13) takes the protocol's messages from the host and answers with messages it builds
from the `protos` module the host hands it. On Azure those are the gRPC messages of the
public protocol (Azure/azure-functions-language-worker-protobuf, `FunctionRpc.proto`);
devhost calls the library in-process, so it defines the messages the library touches
here, with the protocol's message and field names and enum values, written for this
project (no generated code).

Like generated protobuf classes these are strict where the library could be sloppy: an
unknown field name is a `TypeError`, and an unset field reads as its default, so the
library sees exactly what a real host would send. `TypedData` and `ParameterBinding`
answer `WhichOneof` as protobuf does.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

# --- values ------------------------------------------------------------------------------


@dataclass
class RpcHttpCookie:
    """A response cookie (only built by the worker; devhost turns it back into Set-Cookie)."""

    class SameSite:
        Lax = 1
        Strict = 2
        ExplicitNone = 3

    name: str = ""
    value: str = ""
    domain: Any = None
    path: Any = None
    expires: Any = None
    secure: Any = None
    http_only: Any = None
    same_site: int = 0
    max_age: Any = None


setattr(RpcHttpCookie.SameSite, "None", 0)


@dataclass
class NullableString:
    value: str = ""


@dataclass
class NullableBool:
    value: bool = False


@dataclass
class NullableDouble:
    value: float = 0.0


@dataclass
class NullableTimestamp:
    value: datetime.datetime | None = None


@dataclass
class RpcHttp:
    """An HTTP request (host → worker) or response (worker → host)."""

    method: str = ""
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: TypedData = field(default_factory=lambda: TypedData())  # unset reads as empty, as in protobuf
    params: dict[str, str] = field(default_factory=dict)  # route parameters
    status_code: str = ""
    query: dict[str, str] = field(default_factory=dict)
    enable_content_negotiation: bool = False
    raw_body: TypedData = field(default_factory=lambda: TypedData())
    identities: list[Any] = field(default_factory=list)
    cookies: list[RpcHttpCookie] | None = field(default_factory=list)
    nullable_headers: dict[str, NullableString] = field(default_factory=dict)
    nullable_params: dict[str, NullableString] = field(default_factory=dict)
    nullable_query: dict[str, NullableString] = field(default_factory=dict)


_TYPED_DATA_ONEOF = (
    "string",
    "json",
    "bytes",
    "stream",
    "http",
    "int",
    "double",
    "collection_bytes",
    "collection_string",
    "collection_double",
    "collection_sint64",
    "model_binding_data",
    "collection_model_binding_data",
)


class TypedData:
    """One value of the `data` oneof: exactly one of string, json, bytes, http, int, double, … is set."""

    __slots__ = ("_kind", "_value")

    def __init__(self, **value: Any) -> None:
        unknown = set(value) - set(_TYPED_DATA_ONEOF)
        if unknown:
            raise TypeError(f"TypedData has no field {sorted(unknown)[0]!r}")
        if len(value) > 1:
            raise TypeError(f"TypedData sets one member of its oneof, not {sorted(value)}")
        self._kind, self._value = next(iter(value.items()), (None, None))

    def WhichOneof(self, group: str) -> str | None:
        if group != "data":
            raise ValueError(f"TypedData has no oneof {group!r}")
        return self._kind

    def __getattr__(self, name: str) -> Any:
        if name in _TYPED_DATA_ONEOF:
            return self._value if name == self._kind else None
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"TypedData({self._kind}=...)"


@dataclass
class ParameterBinding:
    """A named value: an input binding's data, or an output binding's result."""

    name: str = ""
    data: TypedData | None = None
    rpc_shared_memory: Any = None

    def WhichOneof(self, group: str) -> str | None:
        if group != "rpc_data":
            raise ValueError(f"ParameterBinding has no oneof {group!r}")
        if self.data is not None:
            return "data"
        return "rpc_shared_memory" if self.rpc_shared_memory is not None else None


@dataclass
class RpcException:
    source: str = ""
    stack_trace: str = ""
    message: str = ""
    is_user_exception: bool = False
    type: str = ""


@dataclass
class StatusResult:
    Failure = 0
    Success = 1
    Cancelled = 2

    status: int = 0
    result: str = ""
    exception: RpcException | None = None
    logs: list[Any] = field(default_factory=list)


@dataclass
class BindingInfo:
    # Direction and DataType enum values.
    out = 1
    inout = 2
    undefined = 0
    string = 1
    binary = 2
    stream = 3

    type: str = ""
    direction: int = 0
    data_type: int = 0
    properties: dict[str, str] = field(default_factory=dict)


setattr(BindingInfo, "in", 0)


@dataclass
class RpcRetryOptions:
    max_retry_count: int = 0
    delay_interval: datetime.timedelta | None = None
    minimum_interval: datetime.timedelta | None = None
    maximum_interval: datetime.timedelta | None = None
    retry_strategy: Any = None


@dataclass
class RpcFunctionMetadata:
    name: str = ""
    directory: str = ""
    script_file: str = ""
    entry_point: str = ""
    bindings: dict[str, BindingInfo] = field(default_factory=dict)
    is_proxy: bool = False
    status: StatusResult | None = None
    language: str = ""
    raw_bindings: list[str] = field(default_factory=list)
    function_id: str = ""
    managed_dependency_enabled: bool = False
    retry_options: RpcRetryOptions | None = None
    properties: dict[str, str] = field(default_factory=dict)


@dataclass
class WorkerMetadata:
    runtime_name: str = ""
    runtime_version: str = ""
    worker_version: str = ""
    worker_bitness: str = ""
    custom_properties: dict[str, str] = field(default_factory=dict)


@dataclass
class RpcTraceContext:
    trace_parent: str = ""
    trace_state: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass
class RetryContext:
    retry_count: int = 0
    max_retry_count: int = 0
    exception: RpcException = field(default_factory=RpcException)


# --- requests (host → worker) --------------------------------------------------------------


@dataclass
class WorkerInitRequest:
    host_version: str = ""
    capabilities: dict[str, str] = field(default_factory=dict)
    log_categories: dict[str, int] = field(default_factory=dict)
    worker_directory: str = ""
    function_app_directory: str = ""


@dataclass
class FunctionsMetadataRequest:
    function_app_directory: str = ""


@dataclass
class FunctionLoadRequest:
    function_id: str = ""
    metadata: RpcFunctionMetadata | None = None
    managed_dependency_enabled: bool = False


@dataclass
class InvocationRequest:
    invocation_id: str = ""
    function_id: str = ""
    input_data: list[ParameterBinding] = field(default_factory=list)
    trigger_metadata: dict[str, TypedData] = field(default_factory=dict)
    trace_context: RpcTraceContext = field(default_factory=RpcTraceContext)
    retry_context: RetryContext = field(default_factory=RetryContext)


@dataclass
class StreamingMessage:
    """The protocol's envelope: one request member is set."""

    request_id: str = ""
    worker_init_request: WorkerInitRequest | None = None
    functions_metadata_request: FunctionsMetadataRequest | None = None
    function_load_request: FunctionLoadRequest | None = None
    invocation_request: InvocationRequest | None = None


@dataclass
class HostRequest:
    """What the library's handlers take: the message and the host's properties (`host`, `protos`)."""

    request: StreamingMessage
    properties: dict[str, Any] = field(default_factory=dict)


# --- responses (worker → host) -------------------------------------------------------------


@dataclass
class WorkerInitResponse:
    worker_version: str = ""
    capabilities: dict[str, str] = field(default_factory=dict)
    result: StatusResult | None = None
    worker_metadata: WorkerMetadata | None = None


@dataclass
class FunctionMetadataResponse:
    function_metadata_results: list[RpcFunctionMetadata] | None = None
    result: StatusResult | None = None
    use_default_metadata_indexing: bool = False


@dataclass
class FunctionLoadResponse:
    function_id: str = ""
    result: StatusResult | None = None
    is_dependency_downloaded: bool = False


@dataclass
class InvocationResponse:
    invocation_id: str = ""
    output_data: list[ParameterBinding] = field(default_factory=list)
    return_value: TypedData | None = None
    result: StatusResult | None = None


@dataclass
class FunctionEnvironmentReloadResponse:
    worker_metadata: WorkerMetadata | None = None
    capabilities: dict[str, str] = field(default_factory=dict)
    result: StatusResult | None = None

