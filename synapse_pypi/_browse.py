"""Pages for people: what the mirror serves and why, at `/pypi/` and `/pypi/<project>/`.

Read-only and public, like the package rooms they summarise. For each file of a project: the
hash the trust layer decided and why, every attestation with its publisher, verdict and hash,
and the alarms, frauds and conflicts recorded for the project. Every value from an attestation
or an upstream page is escaped: anyone with the power to post writes those.
"""

import html
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import quote

from synapse_pypi import _metrics
from synapse_pypi._names import InvalidName, normalize

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; }
table { border-collapse: collapse; width: 100%; margin: 0.5em 0 1.5em; font-size: 0.92em; }
th, td { text-align: left; padding: 0.3em 0.6em; border-bottom: 1px solid #ddd; vertical-align: top; }
code { font-size: 0.9em; word-break: break-all; }
.valid { color: #176117; } .bad { color: #a11; font-weight: bold; } .muted { color: #777; }
.outcome { font-weight: bold; }
"""

_GOOD_VERDICTS = frozenset({"valid"})
_GOOD_OUTCOMES = frozenset({"serve", "first"})


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _page(title: str, body: str) -> bytes:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>{body}</body></html>\n"
    ).encode()


def render_index(server_name: str, projects: Iterable[Tuple[str, Optional[str]]], counters: Mapping[str, Any]) -> bytes:
    """The list of projects (name, room alias or None) and the trust counters."""
    rows = "".join(
        f"<tr><td><a href=\"{_e(quote(name))}/\">{_e(name)}</a></td>"
        f"<td>{_e(alias) if alias else '<span class=muted>no room yet</span>'}</td></tr>"
        for name, alias in projects
    )
    counts = ", ".join(
        f"{_e(counters.get(key, 0))} {label}"
        for key, label in (("fraud_count", "frauds"), ("alarm_count", "alarms"), ("conflict_count", "conflicts"),
                           ("reported_count", "invalid attestations"))
    )
    body = (
        f"<h1>Python packages mirrored by {_e(server_name)}</h1>"
        f"<p>pip and uv: <code>--index-url</code> pointing at <a href=\"../simple/\">/simple/</a>. "
        f"Found so far: {counts}.</p>"
        f"<table><tr><th>project</th><th>attestation room</th></tr>{rows}</table>"
    )
    return _page(f"{server_name}: Python packages", body)


def render_project(
    server_name: str,
    project: str,
    alias: str,
    room_id: Optional[str],
    files: List[Dict[str, Any]],
    flagged: List[Dict[str, Any]],
    bans: Sequence[Mapping[str, Any]] = (),
) -> bytes:
    """A project: its bans (`TrustService.bans`), each file's decision and attestations
    (`TrustService.status` per file, with a `filename`), and what was flagged."""
    parts = [
        f"<h1>{_e(project)}</h1>",
        f"<p><a href=\"../\">all projects</a> · files for pip: <a href=\"../../simple/{_e(quote(project))}/\">"
        f"/simple/{_e(project)}/</a> · attestation room <code>{_e(alias)}</code>"
        + (f" (<code>{_e(room_id)}</code>)" if room_id else " <span class=muted>(not made yet: a room comes with the first file served)</span>")
        + "</p>",
    ]
    if bans:
        rows = "".join(
            f"<tr><td class=bad>{_e(b.get('kind'))}</td><td>{_e(b.get('entity'))}</td><td>{_e(b.get('reason'))}</td>"
            f"<td>{_e(b.get('source'))}</td><td>{_e(b.get('publisher'))}</td><td>{_e(_when(b.get('timestamp')))}</td></tr>"
            for b in bans
        )
        parts.append(
            "<h2>Bans</h2><p>Not served or listed by this mirror, nor by mirrors that trust the publisher.</p>"
            "<table><tr><th>what</th><th>name</th><th>why</th><th>source</th><th>by</th><th>when</th></tr>"
            f"{rows}</table>"
        )
    if flagged:
        rows = "".join(
            f"<tr><td class=bad>{_e(f.get('kind'))}</td><td>{_e(f.get('filename'))}</td><td>{_e(f.get('publisher'))}</td>"
            f"<td><code>{_e(f.get('claimed'))}</code></td><td><code>{_e(f.get('truth'))}</code></td>"
            f"<td>{_e(_when(f.get('flagged_at')))}</td></tr>"
            for f in flagged
        )
        parts.append(
            "<h2>Alarms and flagged attestations</h2><table><tr><th>what</th><th>file</th><th>who</th>"
            f"<th>said</th><th>decided</th><th>when</th></tr>{rows}</table>"
        )
    if not files:
        parts.append("<p class=muted>No files known yet.</p>")
    for status in files:
        decision = status.get("decision") or {}
        outcome = str(decision.get("outcome", ""))
        css = "outcome" if outcome in _GOOD_OUTCOMES else "outcome bad"
        parts.append(
            f"<h2>{_e(status.get('filename'))}</h2>"
            f"<p><span class=\"{css}\">{_e(outcome)}</span>: "
            + (f"served with sha256 <code>{_e(decision.get('sha256'))}</code>. " if decision.get("sha256") else "not served. ")
            + f"{_e(decision.get('reason'))}</p>"
        )
        atts = status.get("attestations") or []
        if atts:
            rows = "".join(
                f"<tr><td>{_e(a.get('publisher'))}"
                + (f" <span class=muted>(in the slot of {_e(a.get('slot_of'))})</span>" if a.get("slot_of") else "")
                + f"</td><td class=\"{'valid' if a.get('verdict') in _GOOD_VERDICTS else 'bad'}\">{_e(a.get('verdict'))}</td>"
                f"<td><code>{_e(a.get('sha256'))}</code></td><td>{_e(a.get('reason'))}</td></tr>"
                for a in atts
            )
            parts.append(
                f"<table><tr><th>publisher</th><th>verdict</th><th>sha256</th><th>why</th></tr>{rows}</table>"
            )
        else:
            parts.append("<p class=muted>No attestation yet.</p>")
    return _page(f"{project} on {server_name}", "".join(parts))


def _when(ms: object) -> str:
    if not isinstance(ms, int):
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


def project_from_path(postpath: List[bytes]) -> Optional[str]:
    """The project a `/pypi/<project>/` path names; "" for the index; None when it names
    nothing (or not a valid project name)."""
    parts = [p.decode("utf-8", "replace") for p in postpath]
    if parts in ([], [""]):
        return ""
    if len(parts) in (1, 2) and (len(parts) == 1 or parts[1] == ""):
        try:
            return normalize(parts[0])
        except InvalidName:
            return None
    return None


def make_resource(api: Any, trust: Any, pages: Any, store: Any) -> Any:
    """The `/pypi` resource (built here: it needs Synapse's resource base class)."""
    from synapse.module_api import DirectServeHtmlResource

    class BrowseResource(DirectServeHtmlResource):
        isLeaf = True

        def render(self, request: Any) -> Any:
            _metrics.track_request(request, "browse")
            return super().render(request)

        async def _async_render_GET(self, request: Any) -> Tuple[int, bytes]:
            project = project_from_path(list(request.postpath))
            if project is None:
                return 404, _page("not found", "<h1>Not found</h1><p><a href=\"/pypi/\">all projects</a></p>")
            if project == "":
                names = sorted(set(await store.list_projects()) | set(trust.known_rooms))
                listed = []
                for name in names:
                    pt = trust.known_rooms.get(name)
                    listed.append((name, trust.alias_for(name) if pt is not None and pt.local else None))
                return 200, render_index(api.server_name, listed, trust.counters())
            pt = await trust.view(project)
            page, fresh = await pages.cached_with_freshness(project)
            names = sorted({f.filename for f in page.files} | set(pt.filenames())) if page else pt.filenames()
            statuses = []
            for filename in names:
                dist = page.file(filename) if page is not None else None
                upstream_sha = dist.hashes.get("sha256") if dist is not None and dist.url else None
                statuses.append({"filename": filename, **trust.status(pt, filename, upstream_sha, fresh)})
            flagged = await store.flagged(project)
            room_id = pt.local.room_id if pt.local is not None else None
            body = render_project(
                api.server_name, project, trust.alias_for(project), room_id, statuses, flagged, trust.bans(pt)
            )
            return 200, body

    return BrowseResource()
