"""Command line: `python -m fdpass demo [handoff] | bench [restart] | info`."""

from __future__ import annotations

import argparse
import platform
import sys

import fdpass


def info() -> int:
    if sys.platform == "win32":
        from fdpass import _windows as backend
    else:
        from fdpass import _channel as backend
    print(f"fdpass {fdpass.__version__}")
    print(f"engine: {fdpass.ENGINE} ({backend.__file__})")
    print(f"python: {platform.python_implementation()} {platform.python_version()}")
    print(f"platform: {platform.system()} {platform.release()} {platform.machine()}")
    print(f"MAX_FDS: {fdpass.MAX_FDS}")
    if sys.platform == "win32":
        print(f"frame version: {backend.FRAME_VERSION}")
        print(f"paths: close-on-exec: {fdpass.CLOEXEC_METHOD}")
        return 0
    from fdpass import _engine, _features

    build = "portable (FDPASS_PORTABLE=1)" if _engine.PORTABLE else "native"
    print(f"build: {build}")
    print(f"paths: close-on-exec: {_engine.CLOEXEC_METHOD}")
    print(f"paths: no SIGPIPE: {_engine.NOSIGPIPE_METHOD}")
    print(f"paths: address family: {_engine.FAMILY_METHOD}")
    print(f"paths: peer credentials: {_engine.CREDENTIALS_METHOD}")
    for line in _features.describe():
        print(line)
    return 0


def demo(which: str | None = None) -> int:
    from fdpass._demo import DemoFailed, parent

    try:
        if which == "handoff":
            from fdpass import _demo_handoff  # starts processes of its own

            return _demo_handoff.main()
        return parent()
    except DemoFailed as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fdpass", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser(
        "demo", help="pass a file, a pipe and a socket to a child process; with 'handoff', "
                     "replace a loaded server three times without refusing a connection")
    demo_parser.add_argument("which", nargs="?", choices=["handoff"],
                             help="the zero-downtime handoff demo")
    commands.add_parser("info", help="version, engine and platform facts")
    bench = commands.add_parser(
        "bench", help="time every implementation found over the same workloads; with "
                      "'restart', replace a loaded server by every restart mechanism found")
    bench.add_argument("which", nargs="?", choices=["restart"],
                       help="the restart bench: refused, reset and unanswered connections")
    bench.add_argument("--quick", action="store_true",
                       help="a seconds-long smoke run (1/50 of the descriptors; for "
                            "restart, fewer restarts and clients)")
    bench.add_argument("--json", metavar="PATH",
                       help="also write the figures as JSON to PATH")
    bench.add_argument("--repeats", type=int, default=5, metavar="N",
                       help="repeats per measurement; the median is reported (default 5)")
    bench.add_argument("--workload", action="append", default=[], metavar="NAME",
                       help="run only this workload (may be repeated): stream, "
                            "stream-pinned, batch, ping-pong, ping-pong-pinned, "
                            "convert-file, convert-socket or burst")
    bench.add_argument("--targets", action="store_true",
                       help="also say whether the project's own performance targets were met")
    bench.add_argument("--mechanism", action="append", default=[], metavar="NAME",
                       help="restart: measure only this mechanism (may be repeated)")
    bench.add_argument("--plot", metavar="PATH",
                       help="restart: draw the latency over time to PATH (needs matplotlib)")
    args = parser.parse_args(argv)
    if args.command == "bench" and args.which == "restart":
        from fdpass import _restart_bench

        keys = [m.key for m in _restart_bench.mechanisms()]
        unknown = [key for key in args.mechanism if key not in keys]
        if unknown:
            parser.error(f"unknown mechanism {unknown[0]!r}: choose from {', '.join(keys)}")
        if args.workload:
            parser.error("--workload is for the descriptor bench, not restart")
        return _restart_bench.run(args.quick, args.json, args.mechanism, args.plot)
    if args.command == "bench":
        if args.mechanism or args.plot:
            parser.error("--mechanism and --plot are for 'bench restart'")
        from fdpass import _bench  # its imports would slow every other command

        names = [w.name for w in _bench.WORKLOADS]
        unknown = [name for name in args.workload if name not in names]
        if unknown:
            parser.error(f"unknown workload {unknown[0]!r}: choose from {', '.join(names)}")
        if args.repeats < 1:
            parser.error("--repeats must be at least 1")
        return _bench.run(args.quick, args.json, args.repeats, args.workload, args.targets)
    if args.command == "demo":
        return demo(args.which)
    return info()


if __name__ == "__main__":
    sys.exit(main())
