"""python -m fdpass demo: each check the parent makes holds however the two
processes are scheduled, and a failed one says what failed."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from fdpass import FDChannel, _demo


def test_a_report_follows_its_effect() -> None:
    """The parent checks the file as soon as the child's report arrives.
    Here the child is held inside that report until the parent has checked:
    a report made before the child's write reached the file fails."""
    ours, theirs = socket.socketpair()
    r, w = os.pipe()
    checked = threading.Event()
    lines: list[str] = []

    def report(line: str) -> None:
        os.write(w, (line + "\n").encode())
        if not lines:
            assert checked.wait(30)
        lines.append(line)

    child = threading.Thread(target=_demo.child, args=(theirs.detach(), report))
    child.start()
    with open(r) as child_out:
        try:
            with FDChannel(ours) as ch:
                try:
                    _demo.step_file(1, os.getpid(), ch, child_out, lambda line: None)
                finally:
                    checked.set()
                _demo.step_pipe(2, os.getpid(), ch, child_out, lambda line: None)
                _demo.step_socket(3, os.getpid(), ch, child_out, lambda line: None)
        finally:  # the child ends at the end of the stream, after its last report
            checked.set()
            child.join(30)
            os.close(w)
    assert not child.is_alive() and len(lines) == 4


def test_a_failed_check_says_what_failed() -> None:
    printed: list[str] = []
    with pytest.raises(_demo.DemoFailed, match="^the file should hold both, but holds one$"):
        _demo.check(False, "the file holds both", "the file should hold both, but holds one",
                    printed.append)
    assert printed == []
    _demo.check(True, "the file holds both", "never shown", printed.append)
    assert printed == ["   ok: the file holds both"]
