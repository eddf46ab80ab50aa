"""Command line: `python -m fdpass demo | info`."""

from __future__ import annotations

import argparse
import platform
import sys

import fdpass
from fdpass import _channel
from fdpass._demo import DemoFailed, parent


def info() -> int:
    print(f"fdpass {fdpass.__version__}")
    print(f"engine: {fdpass.ENGINE} ({_channel.__file__})")
    print(f"python: {platform.python_implementation()} {platform.python_version()}")
    print(f"platform: {platform.system()} {platform.release()} {platform.machine()}")
    print(f"MAX_FDS: {fdpass.MAX_FDS}")
    print(f"close-on-exec: {fdpass.CLOEXEC_METHOD}")
    return 0


def demo() -> int:
    try:
        return parent()
    except DemoFailed as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fdpass", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="pass a file, a pipe and a socket to a child process")
    commands.add_parser("info", help="version, engine and platform facts")
    args = parser.parse_args(argv)
    return {"demo": demo, "info": info}[args.command]()


if __name__ == "__main__":
    sys.exit(main())
