"""Settings for the whole test run (pytest session scope).

huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_HUB_DISABLE_XET when it is imported, so they are set
here, before anything imports transformers: every Hub call of the suite goes to a loopback server
(tests/hub_server.py) and nothing can reach the real Hub.
"""

import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


HUB_PORT = _free_port()
_HF_HOME = tempfile.mkdtemp(prefix="minivlm-test-hfhome-")
os.environ.update(
    {
        "HF_ENDPOINT": f"http://127.0.0.1:{HUB_PORT}",
        "HF_HOME": _HF_HOME,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }
)



def pytest_sessionfinish(session, exitstatus):
    """The run's private HF_HOME (caches of the loopback Hub's files) goes with the run."""
    shutil.rmtree(_HF_HOME, ignore_errors=True)


TESTS_DIR = Path(__file__).parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory):
    """A Hub-protocol server on 127.0.0.1 (see tests/hub_server.py); yields the server object."""
    from hub_server import start_server

    server = start_server(port=HUB_PORT, storage_dir=tmp_path_factory.mktemp("hub-storage"))
    yield server
    server.shutdown()
