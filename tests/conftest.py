"""Fixtures in PySyft's own style: one hook for the session, fresh workers for each test."""
import pytest

from fl_smpc.workers import create_hook, virtual_workers


@pytest.fixture(scope="session")
def hook():
    return create_hook()


@pytest.fixture
def workers(hook):
    """bob, alice, jane as VirtualWorkers that know each other; removed from syft's registry afterwards."""
    with virtual_workers(["bob", "alice", "jane"], hook) as ws:
        yield ws


@pytest.fixture
def make_workers(hook):
    """Factory for n workers (w0, w1, ...) for tests that vary the number of owners; all removed afterwards."""
    opened = []

    def make(n):
        ctx = virtual_workers([f"w{i}" for i in range(n)], hook)
        opened.append(ctx)
        return ctx.__enter__()

    yield make
    for ctx in reversed(opened):
        ctx.__exit__(None, None, None)


@pytest.fixture(autouse=True)
def registry_is_clean(hook):
    """Every test must leave syft's worker registry as it found it (only the local worker 'me')."""
    yield
    assert set(hook.local_worker._known_workers) == {"me"}, "a test left workers registered"
