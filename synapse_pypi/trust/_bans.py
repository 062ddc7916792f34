"""Policies: signed bans of a file, a version or a whole project, in the project's room.

Modelled on Matrix's moderation policy rules (`m.policy.rule.*`, MSC2313): an entity, a
recommendation and a reason. Here the entity is a distribution file name, a version, or the
project itself, and the recommendation `ban` (or `unban`, which lifts the publisher's own
earlier ban: so does redacting it). A policy is a state event of type `POLICY_TYPE` whose state
key is ``"<kind>:<entity>/<publisher>"`` (one slot per publisher and entity), signed like an
attestation and judged by the same fold, with the same keys: only a trusted key makes it count.

A file a valid ban covers is never served or listed, cached copies included; a banned project
is offered as PEP 792 `quarantined`, with no files. Bans travel to every mirror that reads the
room and trusts the key.

Pure logic: no Twisted, no Synapse.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from canonicaljson import encode_canonical_json
from packaging.version import InvalidVersion, Version
from signedjson.sign import sign_json
from signedjson.types import SigningKey, VerifyKey

from synapse_pypi._names import InvalidName, is_safe_filename, normalize
from synapse_pypi.trust._attestation import (
    SCHEMA_VERSION,
    MalformedAttestation,
    Verdict,
    _integer,
    _parse_signatures,
    _plain_content,
    _require,
    _show,
    _signature_verifies,
    _string,
)

__all__ = [
    "COMMAND",
    "KINDS",
    "POLICY_TYPE",
    "RECOMMENDATIONS",
    "USAGE",
    "Command",
    "SOURCES",
    "Policy",
    "SignedPolicy",
    "build_policy",
    "check_policy_signatures",
    "parse_command",
    "policy_state_key",
    "read_policy",
    "resolve_target",
    "split_policy_key",
]

POLICY_TYPE = "dev.synapse-pypi.policy"
KINDS = ("file", "version", "project")
RECOMMENDATIONS = ("ban", "unban")
# Who asked for it: a moderator (by a command to the bot), the upstream (it quarantined the
# project or stopped listing the file), or a server admin.
SOURCES = ("moderator", "upstream", "admin")
_MAX_REASON = 1024
_MAX_ENTITY = 512


@attrs.frozen
class Policy:
    """The parsed content of one policy event.

    Attributes:
        project: the normalized project name.
        kind: "file", "version" or "project".
        entity: the file name, the version (as written), or the project name.
        recommendation: "ban" or "unban".
        reason: why, one line for people.
        source: who asked for it (`SOURCES`).
        timestamp: milliseconds since the epoch.
        publisher: the sender, who signed it.
        key_id: the key it was checked with (or the first one, before it is).
    """

    project: str
    kind: str
    entity: str
    recommendation: str
    reason: str
    source: str
    timestamp: int
    publisher: str
    key_id: str = ""

    def covers(self, filename: str, version: str | None) -> bool:
        """Whether this policy names the file (by name, by its version, or its project)."""
        if self.kind == "project":
            return True
        if self.kind == "file":
            return self.entity == filename
        if version is None:
            return False
        try:
            return Version(self.entity) == Version(version)
        except InvalidVersion:
            return self.entity == version


@attrs.define(eq=False)
class SignedPolicy:
    """A policy event that passed every check but the signature."""

    policy: Policy
    message: bytes
    signatures: Mapping[str, str]


def policy_state_key(kind: str, entity: str, publisher: str) -> str:
    return f"{kind}:{entity}/{publisher}"


def split_policy_key(state_key: str) -> tuple[str, str, str]:
    """``"<kind>:<entity>/<publisher>"`` -> (kind, entity, publisher); entities never hold a
    ``/`` (file names, versions and project names cannot).

    Raises:
        MalformedAttestation: not of that shape.
    """
    if not isinstance(state_key, str):
        raise MalformedAttestation("state_key must be a string")
    head, slash, publisher = state_key.partition("/")
    kind, colon, entity = head.partition(":")
    if not (slash and colon and kind in KINDS and entity):
        raise MalformedAttestation(f"state_key {_show(state_key)} is not '<kind>:<entity>/<publisher>'")
    return kind, entity, publisher


def build_policy(
    *,
    project: str,
    kind: str,
    entity: str,
    recommendation: str,
    reason: str,
    source: str,
    timestamp: int,
    publisher: str,
    signing_key: SigningKey,
) -> dict[str, Any]:
    """The signed content of a policy event (send it with `policy_state_key`).

    Raises:
        MalformedAttestation: a value does not fit the schema.
    """
    content = {
        "schema": SCHEMA_VERSION,
        "project": project,
        "kind": kind,
        "entity": entity,
        "recommendation": recommendation,
        "reason": reason,
        "source": source,
        "timestamp": timestamp,
        "publisher": publisher,
    }
    signed = sign_json(content, publisher, signing_key)
    read = read_policy(signed, policy_state_key(kind, entity, publisher), publisher)
    if isinstance(read, tuple):
        raise MalformedAttestation(read[1])
    return signed


def read_policy(content: Mapping[str, Any], state_key: str, sender: str) -> SignedPolicy | tuple[Verdict, str]:
    """Every check of a policy event but the signature's. Never raises."""
    try:
        kind, entity, owner = split_policy_key(state_key)
    except MalformedAttestation as e:
        return Verdict.MALFORMED, str(e)
    if owner != sender:
        return Verdict.IMPERSONATION, f"{_show(sender)} wrote into the policy slot of {_show(owner)}"
    claimed = content.get("publisher") if isinstance(content, Mapping) else None
    if isinstance(claimed, str) and claimed != sender:
        return Verdict.IMPERSONATION, f"{_show(sender)} sent a policy naming {_show(claimed)} as publisher"
    try:
        plain = _plain_content(content)
        policy = _parse(plain, kind, entity, sender)
    except MalformedAttestation as e:
        return Verdict.MALFORMED, str(e)
    message = encode_canonical_json({k: v for k, v in plain.items() if k not in ("signatures", "unsigned")})
    return SignedPolicy(policy, message, dict(plain["signatures"][sender]))


def check_policy_signatures(
    signed: SignedPolicy, trusted: Mapping[str, VerifyKey]
) -> tuple[Verdict, Policy, str]:
    """As `check_signatures`, for a policy."""
    policy = signed.policy
    usable = sorted(kid for kid in signed.signatures if kid in trusted)
    if not usable:
        return Verdict.UNKNOWN_KEY, policy, f"{_show(policy.publisher)}'s key is not trusted for policies"
    for kid in usable:
        if not _signature_verifies(signed.message, signed.signatures[kid], trusted[kid]):
            return Verdict.BAD_SIGNATURE, policy, f"the signature of {_show(policy.publisher)} under {_show(kid)} does not verify"
    return Verdict.VALID, attrs.evolve(policy, key_id=usable[0]), f"signed by {_show(policy.publisher)} with {_show(usable[0])}"


def _parse(content: dict[str, Any], kind: str, entity: str, sender: str) -> Policy:
    schema = _require(content, "schema")
    if type(schema) is not int or schema != SCHEMA_VERSION:
        raise MalformedAttestation(f"'schema' must be {SCHEMA_VERSION}, got {_show(schema)}")
    project = _string(content, "project", 1 << 10)
    assert project is not None
    try:
        if normalize(project) != project:
            raise MalformedAttestation(f"'project' must be a normalized name, got {_show(project)}")
    except InvalidName as e:
        raise MalformedAttestation(f"'project': {e}") from None
    if content.get("kind") != kind or content.get("entity") != entity:
        raise MalformedAttestation("'kind' and 'entity' must match the state key")
    if kind == "file" and not is_safe_filename(entity):
        raise MalformedAttestation(f"'entity' {_show(entity)} is not a safe file name")
    if kind == "project" and entity != project:
        raise MalformedAttestation(f"a project policy's entity must be the project {project!r}")
    if len(entity) > _MAX_ENTITY:
        raise MalformedAttestation("'entity' is too long")
    recommendation = _string(content, "recommendation", 16)
    if recommendation not in RECOMMENDATIONS:
        raise MalformedAttestation(f"'recommendation' must be one of {', '.join(RECOMMENDATIONS)}")
    reason = _string(content, "reason", _MAX_REASON)
    source = _string(content, "source", 16)
    if source not in SOURCES:
        raise MalformedAttestation(f"'source' must be one of {', '.join(SOURCES)}")
    timestamp = _integer(content, "timestamp")
    publisher = _string(content, "publisher", 255)
    if publisher != sender:
        raise MalformedAttestation(f"'publisher' {_show(publisher)} is not the sender {_show(sender)}")
    signatures = _parse_signatures(_require(content, "signatures"))
    own = signatures.get(sender)
    if not own:
        raise MalformedAttestation(f"'signatures' has no signature by the publisher {_show(sender)}")
    assert reason is not None and recommendation is not None and source is not None
    return Policy(project, kind, entity, recommendation, " ".join(reason.split()), source, timestamp, sender, min(own))


# --- moderators' commands ------------------------------------------------------------------

COMMAND = "!pypi"
USAGE = (
    "Usage: !pypi ban <file name | version | project> <reason>, or !pypi unban <the same> [<reason>]. "
    "A ban stops every mirror that trusts this room's bot from serving or listing what it names."
)


@attrs.frozen
class Command:
    """A moderator's command to the bot, in the style of Draupnir's."""

    action: str  # "ban" or "unban"
    target: str
    reason: str


def parse_command(body: object) -> Command | str | None:
    """A message body: None when it is not for us, a one-line error to reply with, or the
    command."""
    if not isinstance(body, str):
        return None
    words = body.strip().split(None, 3)
    if not words or words[0] != COMMAND:
        return None
    if len(words) < 3 or words[1] not in ("ban", "unban"):
        return USAGE
    reason = " ".join(words[3].split()) if len(words) > 3 else ""
    if words[1] == "ban" and not reason:
        return "A ban needs a reason (people who can no longer install it will read it). " + USAGE
    return Command(words[1], words[2], reason[:_MAX_REASON])


def resolve_target(project: str, target: str) -> tuple[str, str] | str:
    """What a command's target names in `project`: ("project" | "file" | "version", entity),
    or a one-line error."""
    from packaging.utils import (
        InvalidSdistFilename,
        InvalidWheelFilename,
        canonicalize_name,
        parse_sdist_filename,
        parse_wheel_filename,
    )

    try:
        if normalize(target) == project:
            return "project", project
    except InvalidName:
        pass
    if target.endswith((".whl", ".tar.gz", ".zip")):
        if not is_safe_filename(target):
            return f"{_show(target)} is not a file name"
        try:
            name = parse_wheel_filename(target)[0] if target.endswith(".whl") else parse_sdist_filename(target)[0]
        except (InvalidWheelFilename, InvalidSdistFilename) as e:
            return f"{_show(target)} is not a distribution file name ({e})"
        if canonicalize_name(name) != project:
            return f"{_show(target)} is not a file of {project}"
        return "file", target
    try:
        Version(target)
    except InvalidVersion:
        return f"{_show(target)} is neither {project}, a version of it, nor one of its file names"
    return "version", target
