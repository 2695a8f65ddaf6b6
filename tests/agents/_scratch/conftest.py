from pathlib import Path
import pytest
from devhost.services import start_devhost
from tests.conftest import AppStack, app_settings

@pytest.fixture(scope="session")
def app_stack(azurite, localstripe, artifacts_dir):
    settings = app_settings(azurite, localstripe)
    svc = start_devhost(Path("/tmp/agscratch/app"), settings, log_path=Path("/tmp/agscratch/devhost.log"), ready_path="/api/health")
    yield AppStack(svc, azurite, localstripe, settings)
    svc.stop()
