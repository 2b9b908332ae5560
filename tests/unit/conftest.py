"""unit/ runs in seconds because nothing here starts Ray: a test that reaches ray.init fails."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import ray


class RayStartedInAUnitTest(AssertionError):
    pass


@pytest.fixture(autouse=True)
def no_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A guard on where a test lives, not a stand-in for Ray: a test that needs Ray belongs in
    tests/integration (marked `ray`). The folder order in tests/conftest.py runs unit/ first, so
    no Ray started by another folder's fixture can be silently joined here."""
    assert not ray.is_initialized(), "a Ray from another test is still running"

    def refuse(*args: object, **kwargs: object) -> None:
        raise RayStartedInAUnitTest("a unit test started Ray; move it to tests/integration")

    monkeypatch.setattr(ray, "init", refuse)
    yield
