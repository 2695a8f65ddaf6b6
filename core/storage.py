"""Connecting to the app's storage account: Azurite locally, managed identity on Azure."""

from __future__ import annotations

from azure.data.tables import TableServiceClient

from core.settings import Settings


def table_service(settings: Settings) -> TableServiceClient:
    """A TableServiceClient for the app's storage account.

    A connection string (Azurite, or a key-based account) wins; otherwise the account
    URL is used with DefaultAzureCredential, as on Azure where shared keys are disabled.
    """
    conn = settings.storage_connection_string
    if conn:
        if conn.strip() == "UseDevelopmentStorage=true":
            conn = DEVELOPMENT_STORAGE
        return TableServiceClient.from_connection_string(conn)
    from azure.identity import DefaultAzureCredential

    credential = DefaultAzureCredential(managed_identity_client_id=settings.storage_client_id)
    return TableServiceClient(endpoint=settings.table_endpoint, credential=credential)


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
