import pytest


@pytest.fixture(scope="session")
def forkserver():
    "Fresh `python ARGS` processes without re-importing torch and spconv each time (tests/forkserver.py)"
    from forkserver import ForkServer
    server = ForkServer()
    yield server
    server.close()
