"""Large payloads of the durable engine in blobs, as the Durable extension's Azure Storage provider keeps them.

A Table Storage string property holds at most 64 KiB counted in UTF-16 (Azurite enforces it) and
an entity at most 1 MiB. The Azure Storage provider (Azure/durabletask,
`src/DurableTask.AzureStorage/Tracking/AzureTableTrackingStore.cs`: `MaxTablePropertySizeInBytes =
60 * 1024`, and `MessageManager.cs`: gzip, `CompressAndUploadAsBytesAsync`, blob names under
`{instanceId}/`, `DeleteLargeMessageBlobs` on purge) moves any history or instance property
(Input, Result, Output, Reason, Details, ...) over 60 KiB into a gzip-compressed blob in the
container `{taskhub}-largemessages` and keeps only the blob's name in the row. devhost does the
same for every text it stores in a row (instance input/output/custom status, history events
and their bookkeeping, inbox events): over 60 KiB in UTF-16, the row holds `<Name>BlobName`.

The container is created on first use, so a devhost whose blob endpoint is down still starts;
a write that cannot reach it fails like any other storage fault.
"""

from __future__ import annotations

import contextlib
import gzip
import uuid
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient, LinearRetry

MAX_PROPERTY_BYTES = 60 * 1024  # the provider's limit: under Table Storage's 64 KiB, UTF-16


def utf16_bytes(text: str) -> int:
    """How many bytes Table Storage counts for a string property (UTF-16)."""
    return 2 * len(text) if text.isascii() else len(text.encode("utf-16-le"))


def container_name(task_hub: str) -> str:
    """`{taskhub}-largemessages`, lower case as container names must be."""
    return f"{task_hub.lower()}-largemessages"


class LargePayloads:
    """Uploads, reads and deletes the blobs of one task hub."""

    def __init__(self, connection_string: str, task_hub: str) -> None:
        # Two quick retries for a blip: the storage SDK's default waits 15 s, then longer, per attempt, and
        # the engine already retries a failed episode with its own backoff (then fails the instance).
        retry = LinearRetry(backoff=0.5, retry_total=2, random_jitter_range=0.25)
        service = BlobServiceClient.from_connection_string(connection_string, retry_policy=retry)
        self.container: ContainerClient = service.get_container_client(container_name(task_hub))
        self._created = False

    def _ensure_container(self) -> None:
        if not self._created:
            with contextlib.suppress(ResourceExistsError):
                self.container.create_container()
            self._created = True

    def put(self, props: dict[str, Any], name: str, text: str | None, instance_id: str) -> None:
        """Set `name` inline, or `<name>BlobName` when the text is too large for a property."""
        if text is None:
            return
        if utf16_bytes(text) <= MAX_PROPERTY_BYTES:
            props[name] = text
            return
        self._ensure_container()
        blob = f"{instance_id}/{name.lower()}-{uuid.uuid4().hex}.json.gz"
        self.container.upload_blob(blob, gzip.compress(text.encode("utf-8"), compresslevel=5), overwrite=True)
        props[f"{name}BlobName"] = blob

    def get(self, entity: Any, name: str) -> str | None:
        if name in entity and entity[name] is not None:
            return str(entity[name])
        blob = entity.get(f"{name}BlobName")
        if not blob:
            return None
        data = self.container.download_blob(blob).readall()
        return gzip.decompress(data).decode("utf-8")

    def delete_instance(self, instance_id: str) -> None:
        """Every blob of one instance (purge)."""
        try:
            names = [b.name for b in self.container.list_blobs(name_starts_with=f"{instance_id}/")]
        except ResourceNotFoundError:  # no large payload was ever stored
            return
        for blob in names:
            with contextlib.suppress(ResourceNotFoundError):
                self.container.delete_blob(blob)
