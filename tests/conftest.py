import pytest

# threadpoolctl sets KMP_DUPLICATE_LIB_OK in os.environ when it is imported (sonata_nb.trainer imports it), and that
# variable is one the fork server's preloaded libraries read at import: imported here, before any test starts the
# server, so the server and every later run see the same environment whatever the tests imported in between
try: import threadpoolctl  # noqa: F401
except ImportError: pass


@pytest.fixture(scope="session")
def forkserver():
    "Fresh `python ARGS` processes without re-importing torch and spconv each time (tests/forkserver.py)"
    from forkserver import ForkServer
    server = ForkServer()
    yield server
    server.close()
