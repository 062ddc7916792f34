"""The trust layer inside Synapse: package rooms, the in-memory view of their attestations,
our own attestations, and what happens to fraud.

One room per project (alias `#<prefix><project>:<server_name>`), created by the bot the
first time the project is needed. The view of a room is read from its state once and then
kept current by `on_new_event`; the serve policy (trust._policy.decide) runs on it before
every serve without touching the database.
"""

import logging
import time
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Set, Tuple

import attrs
from packaging.utils import InvalidSdistFilename, InvalidWheelFilename, parse_sdist_filename, parse_wheel_filename

from synapse_pypi import index
from synapse_pypi._config import PyPIConfig
from synapse_pypi._context import SingleFlight
from synapse_pypi._names import NormalizedName
from synapse_pypi._store import Store
from synapse_pypi.trust import (
    ATTESTATION_TYPE,
    KEY_TYPE,
    Decision,
    MalformedAttestation,
    Verdict,
    build_content,
    decide,
    key_id,
    parse_public_key,
    split_state_key,
    state_key_for,
    verify_attestation,
    verify_key_base64,
)

logger = logging.getLogger(__name__)

POWER_LEVELS = "m.room.power_levels"
REDACTION = "m.room.redaction"


@attrs.define
class Record:
    """One attestation slot as we last saw it."""

    event_id: str
    publisher: str  # the slot's publisher (state key), not necessarily the sender
    sender: str
    verdict: Verdict
    sha256: Optional[str]  # what it claims, if it could be read
    cid: Optional[str]
    reason: str
    content: Dict[str, Any]


@attrs.define
class RoomView:
    project: str
    room_id: str
    # filename -> publisher -> Record
    files: Dict[str, Dict[str, Record]] = attrs.Factory(dict)
    power: Dict[str, int] = attrs.Factory(dict)
    users_default: int = 0
    room_keys: Dict[str, Dict[str, Any]] = attrs.Factory(dict)  # mxid -> key id -> VerifyKey
    by_event: Dict[str, Tuple[str, str]] = attrs.Factory(dict)  # event id -> (filename, publisher)
    creator: Optional[str] = None

    def level(self, user: str) -> int:
        if user == self.creator:
            return 10**9  # room v12: the creator's power is unlimited
        return self.power.get(user, self.users_default)


def version_of(filename: str) -> Optional[str]:
    try:
        if filename.endswith(".whl"):
            return str(parse_wheel_filename(filename)[1])
        return str(parse_sdist_filename(filename)[1])
    except (InvalidWheelFilename, InvalidSdistFilename):
        return None


class TrustService:
    """Package rooms and the serve policy.

    Args:
        api: the ModuleApi.
        config: the module config.
        store: the module's tables.
        signing_key: this server's attestation key.
        run_background: `api.run_as_background_process`.
    """

    def __init__(self, api: Any, config: PyPIConfig, store: Store, signing_key: Any, run_background: Callable):
        self._api = api
        self._config = config
        self._store = store
        self._key = signing_key
        self._key_id = key_id(signing_key)
        self._run_background = run_background
        self.bot = f"@{config.bot_localpart}:{api.server_name}"
        self._views: Dict[str, RoomView] = {}
        self._room_project: Dict[str, str] = {}
        self._no_room: Set[str] = set()  # projects whose room we looked for and did not find
        self._creating: Dict[str, Any] = {}
        self._handled: Set[str] = set()  # event ids already flagged
        self.fraud_count = 0
        self.reported_count = 0
        self._pinned: Dict[str, Dict[str, Any]] = {}
        for mxid, keys in config.trusted_keys.items():
            self._pinned[mxid] = dict(parse_public_key(k) for k in keys)
        self._pinned.setdefault(self.bot, {})[self._key_id] = signing_key.verify_key
        self._flights = SingleFlight()
        # (project, filename) -> (upstream sha256 or None, page fresh?); set by the module.
        self.lookup_upstream: Optional[Callable[[str, str], Awaitable[Tuple[Optional[str], bool]]]] = None
        # Called when a vouch disappears, so the next serve re-verifies with the upstream.
        self.on_vouch_lost: Callable[[str], None] = lambda project: None

    # -- start-up --------------------------------------------------------------------

    async def start(self) -> None:
        existing = await self._api.check_user_exists(self.bot)
        if existing is None:
            await self._api.register_user(self._config.bot_localpart, displayname="PyPI mirror bot", admin=False)
            logger.info("registered the package-room bot %s", self.bot)
        logger.info("attestations signed by %s as %s", self.bot, self._key_id)

    # -- keys ------------------------------------------------------------------------

    def keys_for(self, view: Optional[RoomView], user: str) -> Mapping[str, Any]:
        """The verify keys we trust for `user`: pinned in config (and our own), plus keys
        the user published in the room while at or above the configured power level."""
        keys = dict(self._pinned.get(user, {}))
        if view is not None and view.level(user) >= self._config.trusted_key_power_level:
            keys.update(view.room_keys.get(user, {}))
        return keys

    # -- views -----------------------------------------------------------------------

    @property
    def known_rooms(self) -> Mapping[str, RoomView]:
        """Projects whose room view is loaded."""
        return self._views

    def alias_for(self, project: str) -> str:
        return f"#{self._config.room_alias_prefix}{project}:{self._api.server_name}"

    async def view(self, project: str) -> Optional[RoomView]:
        """The view of `project`'s room, read from its state the first time."""
        view = self._views.get(project)
        if view is not None:
            return view
        # One key for loading and creating: a half-made room (its alias is bound before
        # the bot has joined) is never loaded by a concurrent request.
        return await self._flights.run(("room", project), lambda: self._load(project))

    async def _load(self, project: str) -> Optional[RoomView]:
        if project in self._views:
            return self._views[project]
        try:
            room_id, _ = await self._api.lookup_room_alias(self.alias_for(project))
        except Exception as e:
            if getattr(e, "code", None) == 404:
                return None
            raise
        state = await self._api.get_room_state(room_id)
        view = RoomView(project=project, room_id=room_id)
        self._rebuild(view, state)
        self._views[project] = view
        self._room_project[room_id] = project
        return view

    def _rebuild(self, view: RoomView, state: Mapping[Tuple[str, str], Any]) -> None:
        """Read power levels, keys and every attestation from a room's state."""
        create = state.get(("m.room.create", ""))
        if create is not None:
            view.creator = create.sender
        self._read_power(view, state.get((POWER_LEVELS, "")))
        view.room_keys = {}
        for (etype, skey), ev in state.items():
            if etype == KEY_TYPE:
                self._read_keys(view, ev)
        view.files = {}
        view.by_event = {}
        for (etype, skey), ev in state.items():
            if etype == ATTESTATION_TYPE:
                self._read_attestation(view, ev)

    def _read_power(self, view: RoomView, ev: Any) -> None:
        content = dict(ev.content) if ev is not None else {}
        users = content.get("users") or {}
        view.power = {u: int(v) for u, v in users.items() if isinstance(v, int)}
        default = content.get("users_default", 0)
        view.users_default = default if isinstance(default, int) else 0

    def _read_keys(self, view: RoomView, ev: Any) -> None:
        # A key event counts only in its owner's own slot, and only while not redacted.
        if ev.internal_metadata.is_redacted() or ev.get_state_key() != ev.sender:
            view.room_keys.pop(ev.get_state_key(), None)
            return
        keys = {}
        for kid, b64 in (dict(ev.content).get("keys") or {}).items():
            try:
                parsed_id, verify_key = parse_public_key(f"{kid} {b64}")
            except Exception:
                continue
            keys[parsed_id] = verify_key
        view.room_keys[ev.sender] = keys

    def _read_attestation(self, view: RoomView, ev: Any) -> Record:
        state_key = ev.get_state_key()
        redacted = ev.internal_metadata.is_redacted()
        content = ev.get_dict().get("content") or {}
        verdict, att, reason = verify_attestation(
            content, state_key, ev.sender, redacted, lambda user: self.keys_for(view, user)
        )
        if verdict is Verdict.VALID and att is not None and att.project != view.project:
            verdict, reason = Verdict.MALFORMED, f"attestation for project {att.project!r} in the room of {view.project}"
        try:
            filename, publisher = split_state_key(state_key)
        except MalformedAttestation:
            filename, publisher = state_key, ev.sender
        # Only a VALID attestation's parsed claim vouches; for the others keep what they
        # say (bounded), for the notice.
        sha = att.sha256 if att is not None else None
        cid = att.cid if att is not None and verdict is Verdict.VALID else None
        if sha is None:
            hashes = content.get("hashes") if isinstance(content, dict) else None
            if isinstance(hashes, dict) and isinstance(hashes.get("sha256"), str):
                sha = hashes["sha256"][:64]
        record = Record(ev.event_id, publisher, ev.sender, verdict, sha, cid, reason, content)
        old = view.files.setdefault(filename, {}).get(publisher)
        if old is not None:
            view.by_event.pop(old.event_id, None)
        view.files[filename][publisher] = record
        view.by_event[ev.event_id] = (filename, publisher)
        return record

    def _reverify_all(self, view: RoomView) -> None:
        for filename, slots in view.files.items():
            for publisher, rec in list(slots.items()):
                if rec.verdict is Verdict.REDACTED:
                    continue
                verdict, _, reason = verify_attestation(
                    rec.content, state_key_for(filename, publisher), rec.sender, False,
                    lambda user: self.keys_for(view, user),
                )
                rec.verdict, rec.reason = verdict, reason

    # -- on_new_event ----------------------------------------------------------------

    async def on_new_event(self, event: Any, state: Mapping[Tuple[str, str], Any]) -> None:
        """Keep views current. Cheap: heavy work goes to the background."""
        project = self._room_project.get(event.room_id)
        if project is None:
            return
        view = self._views[project]
        etype = event.type
        if etype == REDACTION:
            target = event.redacts or dict(event.content).get("redacts")
            where = view.by_event.get(target)
            if where is not None:
                filename, publisher = where
                rec = view.files[filename][publisher]
                was_valid = rec.verdict is Verdict.VALID
                rec.verdict, rec.reason, rec.sha256 = Verdict.REDACTED, "redacted", None
                logger.info("attestation %s for %s by %s redacted by %s", target, filename, publisher, event.sender)
                if was_valid:
                    self.on_vouch_lost(project)
            elif target is not None:
                ev = state.get((KEY_TYPE, _state_key_of(state, target)))
                if ev is not None:
                    self._read_keys(view, ev)
                    self._reverify_all(view)
            return
        if not event.is_state():
            return
        if etype == ATTESTATION_TYPE:
            rec = self._read_attestation(view, event)
            self._run_background("synapse_pypi_check_attestation", self._check_new, project, event.get_state_key(), rec)
        elif etype == KEY_TYPE:
            self._read_keys(view, event)
            self._reverify_all(view)
        elif etype == POWER_LEVELS:
            self._read_power(view, event)
            self._reverify_all(view)

    async def _check_new(self, project: str, state_key: str, rec: Record) -> None:
        """A new attestation: report it if invalid; if valid, check it against what the
        cached page says the upstream published."""
        if self._api.is_mine(rec.sender) and rec.sender == self.bot:
            return
        filename, _ = split_state_key(state_key)
        if rec.verdict not in (Verdict.VALID, Verdict.REDACTED):
            await self.report_invalid(project, filename, rec)
            return
        if rec.verdict is Verdict.VALID and self.lookup_upstream is not None:
            upstream_sha, fresh = await self.lookup_upstream(project, filename)
            view = self._views.get(project)
            self.handle_decision(project, view, filename, self.decide(view, filename, upstream_sha, fresh))

    # -- the serve policy ------------------------------------------------------------

    def decide(self, view: Optional[RoomView], filename: str, upstream_sha256: Optional[str], online: bool) -> Decision:
        claims: Dict[str, str] = {}
        if view is not None:
            for publisher, rec in view.files.get(filename, {}).items():
                if rec.verdict is Verdict.VALID and rec.sha256:
                    claims[publisher] = rec.sha256
        return decide(claims, upstream_sha256, online, {})

    def invalid_records(self, view: Optional[RoomView], filename: str) -> List[Record]:
        if view is None:
            return []
        return [
            r for r in view.files.get(filename, {}).values() if r.verdict not in (Verdict.VALID, Verdict.REDACTED)
        ]

    def handle_decision(self, project: str, view: Optional[RoomView], filename: str, decision: Decision) -> None:
        """Flag fraud found by a decision, and report invalid attestations, in the background."""
        if view is None:
            return
        slots = view.files.get(filename, {})
        for publisher, claimed in decision.fraud:
            rec = slots.get(publisher)
            if rec is not None and rec.event_id not in self._handled:
                self._handled.add(rec.event_id)
                self._run_background(
                    "synapse_pypi_fraud", self._flag_fraud, view, filename, rec, claimed, decision.sha256
                )
        for rec in self.invalid_records(view, filename):
            if rec.event_id not in self._handled:
                self._run_background("synapse_pypi_report", self.report_invalid, project, filename, rec)

    async def _flag_fraud(
        self, view: RoomView, filename: str, rec: Record, claimed: str, truth: Optional[str]
    ) -> None:
        self.fraud_count += 1
        text = (
            f"Fraudulent attestation: {rec.publisher} says {filename} has sha256 {claimed}, "
            f"but it is {truth} (the upstream index's hash, checked by {self._api.server_name}). "
            "This attestation is not relied on."
        )
        redacted = await self._redact(view, rec.event_id, f"fraud: wrong sha256 for {filename}")
        await self._notice(view, text + (" It has been redacted." if redacted else " Moderators: please redact it."))
        await self._store.record_fraud(rec.event_id, view.project, filename, rec.publisher, claimed, truth or "", "fraud")
        logger.warning("fraud: %s", text)

    async def report_invalid(self, project: str, filename: str, rec: Record) -> None:
        if rec.event_id in self._handled:
            return
        self._handled.add(rec.event_id)
        view = self._views.get(project)
        if view is None:
            return
        self.reported_count += 1
        text = f"Invalid attestation for {filename} in the slot of {rec.publisher} (sent by {rec.sender}): {rec.reason}."
        # Unknown keys may be legitimate (a key not yet published): report, do not redact.
        redacted = False
        if rec.verdict is not Verdict.UNKNOWN_KEY:
            redacted = await self._redact(view, rec.event_id, f"invalid attestation: {rec.reason}")
        await self._notice(view, text + (" It has been redacted." if redacted else " It is not relied on."))
        await self._store.record_fraud(
            rec.event_id, project, filename, rec.publisher, rec.sha256 or "", "", rec.verdict.name.lower()
        )
        logger.warning("invalid attestation: %s", text)

    async def _redact(self, view: RoomView, event_id: str, reason: str) -> bool:
        if view.level(self.bot) < 50:
            return False
        try:
            await self._api.create_and_send_event_into_room(
                {
                    "type": REDACTION,
                    "room_id": view.room_id,
                    "sender": self.bot,
                    "redacts": event_id,
                    "content": {"redacts": event_id, "reason": reason},
                }
            )
            return True
        except Exception as e:
            logger.warning("could not redact %s in %s: %s", event_id, view.room_id, e)
            return False

    async def _notice(self, view: RoomView, text: str) -> None:
        try:
            await self._api.create_and_send_event_into_room(
                {
                    "type": "m.room.message",
                    "room_id": view.room_id,
                    "sender": self.bot,
                    "content": {"msgtype": "m.notice", "body": text},
                }
            )
        except Exception as e:
            logger.warning("could not post a notice in %s: %s", view.room_id, e)

    # -- rooms -----------------------------------------------------------------------

    async def ensure_room(self, project: str) -> RoomView:
        """The project's room, created (once, whatever the concurrency) if missing."""
        view = await self.view(project)
        while view is None:
            view = await self._flights.run(("room", project), lambda: self._create(project))
        return view

    async def _create(self, project: str) -> RoomView:
        view = await self._load(project)
        if view is not None:
            return view
        levels = self._config
        users = {m: levels.moderator_power_level for m in levels.moderators}
        users.update({p: levels.attestation_power_level for p in levels.publishers})
        users.pop(self.bot, None)  # v12: the creator must not be listed
        room_id, _ = await self._api.create_room(
            self.bot,
            {
                "preset": "public_chat",
                "room_alias_name": f"{levels.room_alias_prefix}{project}",
                "name": f"{project} — attestations for files served by {self._api.server_name}",
                "topic": (
                    f"Signed attestations (sha256, size, CID) for the files of the Python project {project}, "
                    f"published by the mirror {self._api.server_name} and other trusted publishers. "
                    "Moderators: redact any attestation that is wrong."
                ),
                "power_level_content_override": {
                    "users": users,
                    "events": {
                        ATTESTATION_TYPE: levels.attestation_power_level,
                        KEY_TYPE: levels.attestation_power_level,
                        POWER_LEVELS: 100,
                        "m.room.name": 50,
                        "m.room.topic": 50,
                    },
                    "redact": levels.moderator_power_level,
                    "state_default": 50,
                    "events_default": 0,
                },
            },
            ratelimit=False,
        )
        logger.info("created package room %s for %s", room_id, project)
        await self._api.create_and_send_event_into_room(
            {
                "type": KEY_TYPE,
                "room_id": room_id,
                "sender": self.bot,
                "state_key": self.bot,
                "content": {"keys": {self._key_id: verify_key_base64(self._key)}},
            }
        )
        view = await self._load(project)
        assert view is not None
        return view

    # -- our own attestations --------------------------------------------------------

    async def attest(
        self,
        project: str,
        dist: index.DistFile,
        sha256: str,
        size: int,
        cid: Optional[str],
    ) -> None:
        """Publish (or refresh with a CID) this server's attestation for a verified file."""
        version = version_of(dist.filename)
        if version is None:
            logger.info("not attesting %s: not a wheel or sdist file name", dist.filename)
            return
        view = await self.ensure_room(project)
        mine = view.files.get(dist.filename, {}).get(self.bot)
        if mine is not None and mine.verdict is Verdict.VALID and mine.sha256 == sha256 and (mine.cid or not cid):
            return
        content = build_content(
            project=project,
            version=version,
            filename=dist.filename,
            size=size,
            sha256=sha256,
            cid=cid,
            upstream_url=dist.url or None,
            requires_python=dist.requires_python,
            timestamp=int(time.time() * 1000),
            publisher=self.bot,
            signing_key=self._key,
        )
        ev = await self._api.create_and_send_event_into_room(
            {
                "type": ATTESTATION_TYPE,
                "room_id": view.room_id,
                "sender": self.bot,
                "state_key": state_key_for(dist.filename, self.bot),
                "content": content,
            }
        )
        # on_new_event will see it too; record it now so the next serve already knows.
        self._read_attestation(view, ev)
        logger.info("attested %s/%s sha256 %s cid %s", project, dist.filename, sha256, cid)

    # -- offline pages ---------------------------------------------------------------

    async def page_from_room(self, project: str) -> Optional[index.ProjectPage]:
        """A page built from the room's valid attestations (upstream unreachable, no cache).

        Files whose valid attestations disagree are listed without a hash, so that a
        client asking for them gets the 409 that names the publishers."""
        view = await self.view(project)
        if view is None:
            return None
        files = []
        for filename, slots in sorted(view.files.items()):
            valid = [r for r in slots.values() if r.verdict is Verdict.VALID and r.sha256]
            if not valid:
                continue
            hashes = {r.sha256 for r in valid}
            first = valid[0].content
            size = first.get("size") if isinstance(first.get("size"), int) else None
            rp = first.get("requires_python") if isinstance(first.get("requires_python"), str) else None
            if len(hashes) == 1:
                sha = hashes.pop()
                for r in valid:
                    if r.cid:
                        await self._store.add_ref_if_missing(sha, "cid", r.cid, f"attestation by {r.publisher}")
                files.append(index.DistFile(filename=filename, url="", hashes={"sha256": sha}, requires_python=rp, size=size))
            else:
                files.append(index.DistFile(filename=filename, url="", hashes={}, requires_python=rp))
        if not files:
            return None
        return index.ProjectPage(
            name=NormalizedName(project),
            files=tuple(files),
            versions=index.versions_from_filenames(f.filename for f in files),
        )

    def status(self, view: Optional[RoomView], filename: str, upstream_sha256: Optional[str], online: bool) -> Dict[str, Any]:
        """A file's attestations and the verdict on each, for the admin API."""
        decision = self.decide(view, filename, upstream_sha256, online)
        slots = view.files.get(filename, {}) if view else {}
        return {
            "room_id": view.room_id if view else None,
            "decision": {
                "outcome": decision.outcome.name.lower(),
                "sha256": decision.sha256,
                "reason": decision.reason,
                "fraud": [list(f) for f in decision.fraud],
            },
            "attestations": [
                {
                    "publisher": r.publisher,
                    "sender": r.sender,
                    "event_id": r.event_id,
                    "sha256": r.sha256,
                    "cid": r.cid,
                    "verdict": r.verdict.name.lower(),
                    "reason": r.reason,
                }
                for r in slots.values()
            ],
        }

    async def reload(self, project: str) -> Optional[RoomView]:
        """Forget the view and read the room state again (admin re-verify)."""
        self._views.pop(project, None)
        return await self.view(project)


def _state_key_of(state: Mapping[Tuple[str, str], Any], event_id: str) -> str:
    for (etype, skey), ev in state.items():
        if etype == KEY_TYPE and ev.event_id == event_id:
            return skey
    return ""

