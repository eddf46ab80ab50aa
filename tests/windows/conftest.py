"""Windows tests (run under Wine by .ci/windows): the POSIX run collects
none of them.  Every test runs under a handle census, the Windows form of
tests/conftest.py's descriptor-leak check."""

from __future__ import annotations

import faulthandler
import gc
import sys
import time
from collections.abc import Iterator

import pytest

if sys.platform != "win32":
    collect_ignore_glob = ["*.py"]
else:
    from winsupport import open_handles, warm_up

    warm_up()

    TEST_TIMEOUT = 120.0

    @pytest.fixture(autouse=True)
    def no_handle_leak() -> Iterator[None]:
        """Fail the test when it leaves handles open that it did not find.
        Each test is bounded too: past TEST_TIMEOUT the whole run stops,
        with every thread's stack, as a hung test must not hold CI."""
        gc.collect()
        before = open_handles()
        faulthandler.dump_traceback_later(TEST_TIMEOUT, exit=True, file=2)
        try:
            yield
        finally:
            faulthandler.cancel_dump_traceback_later()
        deadline = time.monotonic() + 1.0  # a thread's handle lasts till it ends
        while True:
            gc.collect()
            leaked = open_handles() - before
            if not leaked or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert not leaked, f"handles leaked: {sorted(leaked)}"
