"""core.storage against Azurite: the SDK through StorageTransport, transactions (the same answers and
errors as the SDK's own), and the transport's pooling, resend and failure modes."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import (
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.rest import HttpRequest
from azure.data.tables import (
    EdmType,
    EntityProperty,
    TableClient,
    TableTransactionError,
    UpdateMode,
)

from core.storage import StorageTransport, query_rows, submit_transaction, table_service_from_connection_string
from devhost.services import Service


@pytest.fixture(scope="module")
def table(azurite: Service) -> Iterator[TableClient]:
    service = table_service_from_connection_string(azurite.extra["connection_string"])  # on StorageTransport
    name = f"txn{uuid.uuid4().hex[:10]}"
    client = service.create_table(name)
    yield client
    service.delete_table(name)


def _pk() -> str:
    return uuid.uuid4().hex


def test_the_sdk_works_through_the_transport(table: TableClient) -> None:
    pk = _pk()
    assert isinstance(table._client._client._pipeline._transport._transport, StorageTransport)
    created = table.create_entity({"PartitionKey": pk, "RowKey": "a", "text": "ünï", "n": 1})
    with pytest.raises(ResourceExistsError):
        table.create_entity({"PartitionKey": pk, "RowKey": "a"})
    got = table.get_entity(pk, "a")
    assert (got["text"], got["n"], got.metadata["etag"]) == ("ünï", 1, created["etag"])
    table.update_entity({"PartitionKey": pk, "RowKey": "a", "n": 2}, mode=UpdateMode.MERGE)
    with pytest.raises(ResourceModifiedError):
        table.update_entity({"PartitionKey": pk, "RowKey": "a", "n": 3}, etag=created["etag"],
                            match_condition=MatchConditions.IfNotModified)
    with pytest.raises(ResourceNotFoundError):
        table.get_entity(pk, "missing")
    for i in range(5):
        table.upsert_entity({"PartitionKey": pk, "RowKey": f"r{i}"})
    pages = table.query_entities(f"PartitionKey eq '{pk}'", results_per_page=2).by_page()
    seen = [[e["RowKey"] for e in page] for page in pages]  # continuation tokens come back in headers
    assert seen == [["a", "r0"], ["r1", "r2"], ["r3", "r4"]]
    table.delete_entity(pk, "a")
    assert [e["RowKey"] for e in table.query_entities(f"PartitionKey eq '{pk}'")] == [f"r{i}" for i in range(5)]
    assert table.get_entity(pk, "r0")["RowKey"] == "r0"


def test_every_operation_kind_commits_and_returns_the_stored_etags(table: TableClient) -> None:
    pk = _pk()
    old = table.create_entity({"PartitionKey": pk, "RowKey": "old", "n": 1})
    gone = table.create_entity({"PartitionKey": pk, "RowKey": "gone"})
    tricky = 'HTTP/1.1 500 Oops\r\n--changesetresponse_x\r\n{"odata.error": 1} ünïcödé ' + "x" * 5000
    results = submit_transaction(
        table,
        [
            ("create", {"PartitionKey": pk, "RowKey": "new", "text": tricky, "big": EntityProperty(2**40, EdmType.INT64)}),
            ("upsert", {"PartitionKey": pk, "RowKey": "up", "v": 1}, {"mode": UpdateMode.REPLACE}),
            (
                "update",
                {"PartitionKey": pk, "RowKey": "old", "n": 2},
                {"mode": UpdateMode.MERGE, "etag": old["etag"], "match_condition": MatchConditions.IfNotModified},
            ),
            (
                "delete",
                {"PartitionKey": pk, "RowKey": "gone"},
                {"etag": gone["etag"], "match_condition": MatchConditions.IfNotModified},
            ),
        ],
    )
    assert len(results) == 4
    stored = {e["RowKey"]: e for e in table.query_entities(f"PartitionKey eq '{pk}'")}
    assert set(stored) == {"new", "up", "old"}
    assert stored["new"]["text"] == tricky and stored["new"]["big"].value == 2**40
    assert stored["old"]["n"] == 2
    for i, row in enumerate(("new", "up", "old")):
        assert results[i]["etag"] == stored[row].metadata["etag"]
    assert "etag" not in results[3]  # a delete has no new version


def test_a_refused_operation_fails_the_whole_transaction_and_names_its_index(table: TableClient) -> None:
    pk = _pk()
    table.create_entity({"PartitionKey": pk, "RowKey": "taken"})
    ops: list[Any] = [("create", {"PartitionKey": pk, "RowKey": "a"}), ("create", {"PartitionKey": pk, "RowKey": "taken"})]
    with pytest.raises(TableTransactionError) as ours:
        submit_transaction(table, ops)
    with pytest.raises(TableTransactionError) as sdk:
        table.submit_transaction(ops)
    assert ours.value.status_code == sdk.value.status_code == 409
    assert str(ours.value.error_code) == str(sdk.value.error_code) == "EntityAlreadyExists"
    assert ours.value.message.split(":", 1)[0] == sdk.value.message.split(":", 1)[0] == "1"
    assert [e["RowKey"] for e in table.query_entities(f"PartitionKey eq '{pk}'")] == ["taken"]


def test_a_stale_etag_is_412_and_changes_nothing(table: TableClient) -> None:
    pk = _pk()
    first = table.create_entity({"PartitionKey": pk, "RowKey": "row", "n": 1})
    table.update_entity({"PartitionKey": pk, "RowKey": "row", "n": 2})
    time.sleep(0.01)
    stale = {"mode": UpdateMode.REPLACE, "etag": first["etag"], "match_condition": MatchConditions.IfNotModified}
    with pytest.raises(TableTransactionError) as err:
        submit_transaction(table, [("update", {"PartitionKey": pk, "RowKey": "row", "n": 3}, stale)])
    assert err.value.status_code == 412
    assert err.value.message.startswith("0:")
    assert table.get_entity(pk, "row")["n"] == 2


def test_a_full_transaction_of_100_operations(table: TableClient) -> None:
    pk = _pk()
    ops = [("upsert", {"PartitionKey": pk, "RowKey": f"r{i:03d}", "i": i}) for i in range(100)]
    assert len(submit_transaction(table, ops)) == 100
    assert len(list(table.query_entities(f"PartitionKey eq '{pk}'"))) == 100
    assert submit_transaction(table, []) == []


def test_query_rows_answers_as_the_sdk_does_across_pages(table: TableClient) -> None:
    """The lean query parse: the same rows, values and ETags as the SDK's `query_entities`, Int64
    as int, and every page (Azurite, like the service, answers at most 1,000 rows per request)."""
    pk = _pk()
    for start in range(0, 1_050, 100):
        submit_transaction(table, [("create", {"PartitionKey": pk, "RowKey": f"r{i:04d}", "n": i, "name": f"it's {i}",
                                               "big": EntityProperty(2**40 + i, EdmType.INT64), "flag": i % 2 == 0})
                                   for i in range(start, min(start + 100, 1_050))])
    flt = f"PartitionKey eq '{pk}'"
    sdk = list(table.query_entities(flt))
    lean = query_rows(table, flt)
    assert len(lean) == len(sdk) == 1_050
    for ours, theirs in zip(lean, sdk, strict=True):
        assert ours.metadata["etag"] == theirs.metadata["etag"]
        assert (ours["RowKey"], ours["n"], ours["name"], ours["flag"]) == (theirs["RowKey"], theirs["n"], theirs["name"],
                                                                           theirs["flag"])
        assert ours["big"] == theirs["big"].value and isinstance(ours["big"], int)
    assert [r["RowKey"] for r in query_rows(table, f"{flt} and RowKey ge 'r1040' and RowKey lt 'r1042'")] == ["r1040",
                                                                                                               "r1041"]
    assert query_rows(table, "PartitionKey eq 'nothing-here'") == []


NO_CONTENT = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"


class _Server:
    """A local HTTP/1.1 server; each accepted connection is counted and handed to `talk`
    (number, socket) on a thread of its own."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._talk_then_close, args=(self.connections, conn), daemon=True).start()

    def _talk_then_close(self, number: int, conn: socket.socket) -> None:
        with conn:
            self.talk(number, conn)

    def talk(self, number: int, conn: socket.socket) -> None:
        raise NotImplementedError

    def read_request(self, conn: socket.socket, data: bytes) -> bytes | None:
        """Read one request (head and Content-Length body) after `data`; what follows it, or
        None when the client closed the connection."""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(data) < length:
            data += conn.recv(65536)
        self.requests += 1
        return data[length:]


class _ClosingServer(_Server):
    """Answers 204 on connection number `answer_from` onwards; closes earlier ones unanswered."""

    def __init__(self, answer_from: int) -> None:
        self.answer_from = answer_from
        super().__init__()

    def talk(self, number: int, conn: socket.socket) -> None:
        if self.read_request(conn, b"") is not None and number >= self.answer_from:
            conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def test_a_request_on_a_connection_the_server_closed_is_sent_once_more() -> None:
    server = _ClosingServer(answer_from=2)
    with StorageTransport() as transport:
        response = transport.send(HttpRequest("POST", f"http://127.0.0.1:{server.port}/t", content=b"{}"))
    assert response.status_code == 204
    assert server.connections == 2
    server.sock.close()


def test_only_once_more() -> None:
    server = _ClosingServer(answer_from=99)
    with StorageTransport() as transport, pytest.raises(ServiceResponseError):
        transport.send(HttpRequest("POST", f"http://127.0.0.1:{server.port}/t", content=b"{}"))
    assert server.connections == 2
    server.sock.close()


class _KeepAliveServer(_Server):
    """Answers every request with 204 and keeps the connection open (or, with `answer=False`,
    never answers)."""

    def __init__(self, answer: bool = True) -> None:
        self.answer = answer
        super().__init__()

    def talk(self, number: int, conn: socket.socket) -> None:
        data: bytes | None = b""
        while (data := self.read_request(conn, data)) is not None:
            if not self.answer:
                time.sleep(5)
                return
            conn.sendall(NO_CONTENT)


def test_connections_are_kept_alive_and_reused() -> None:
    server = _KeepAliveServer()
    with StorageTransport() as transport:
        for _ in range(5):
            assert transport.send(HttpRequest("PUT", f"http://127.0.0.1:{server.port}/t", content=b"{}")).status_code == 204
    assert (server.requests, server.connections) == (5, 1)
    server.sock.close()


def test_a_connection_idle_too_long_is_not_reused() -> None:
    server = _KeepAliveServer()
    with StorageTransport(idle_seconds=0.05) as transport:
        transport.send(HttpRequest("GET", f"http://127.0.0.1:{server.port}/t"))
        time.sleep(0.1)
        transport.send(HttpRequest("GET", f"http://127.0.0.1:{server.port}/t"))
    assert (server.requests, server.connections) == (2, 2)
    server.sock.close()


def test_no_answer_in_time_is_a_response_timeout() -> None:
    server = _KeepAliveServer(answer=False)
    with StorageTransport(read_timeout=0.3) as transport, pytest.raises(ServiceResponseTimeoutError):
        transport.send(HttpRequest("GET", f"http://127.0.0.1:{server.port}/t"))
    server.sock.close()


def test_nothing_listening_is_a_request_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed again: nothing listens there now
    with StorageTransport() as transport, pytest.raises(ServiceRequestError):
        transport.send(HttpRequest("GET", f"http://127.0.0.1:{port}/t"))


class _OneAnswerServer(_Server):
    """Answers one request per connection (keep-alive, as far as the client can tell), then
    drops the connection unannounced, the way a storage front end closes idle connections."""

    def talk(self, number: int, conn: socket.socket) -> None:
        if self.read_request(conn, b"") is not None:
            time.sleep(0.2)  # both first requests are in flight at once: two pooled connections
            conn.sendall(NO_CONTENT)


def test_the_resend_goes_out_on_a_new_connection_not_another_pooled_one() -> None:
    server = _OneAnswerServer()
    url = f"http://127.0.0.1:{server.port}/t"
    with StorageTransport() as transport:
        threads = [threading.Thread(target=transport.send, args=(HttpRequest("GET", url),)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert server.connections == 2  # both now pooled, both already closed by the server
        time.sleep(0.1)
        assert transport.send(HttpRequest("POST", url, content=b"{}")).status_code == 204
    assert server.connections == 3  # one pooled (dead) connection tried, then a new one
    server.sock.close()
