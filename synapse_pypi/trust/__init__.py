"""The trust layer's pure core: keys, attestations and the serve policy (DESIGN.md §5).

No Twisted, no Synapse: the room manager that reads and writes state builds on these.
"""

from synapse_pypi.trust._attestation import (
    ATTESTATION_TYPE,
    MAX_CONTENT_BYTES,
    SCHEMA_VERSION,
    Attestation,
    MalformedAttestation,
    Verdict,
    build_content,
    parse_attestation,
    split_state_key,
    state_key_for,
    verify_attestation,
)
from synapse_pypi.trust._keys import (
    KEY_TYPE,
    KeyFileError,
    KeyFormatError,
    generate_key,
    key_id,
    load_key,
    load_or_create_key,
    parse_public_key,
    place_key_file,
    public_key_string,
    verify_key_base64,
)
from synapse_pypi.trust._policy import CACHED_UPSTREAM, Decision, Outcome, decide

__all__ = [
    "ATTESTATION_TYPE",
    "CACHED_UPSTREAM",
    "KEY_TYPE",
    "MAX_CONTENT_BYTES",
    "SCHEMA_VERSION",
    "Attestation",
    "Decision",
    "KeyFileError",
    "KeyFormatError",
    "MalformedAttestation",
    "Outcome",
    "Verdict",
    "build_content",
    "decide",
    "generate_key",
    "key_id",
    "load_key",
    "load_or_create_key",
    "parse_attestation",
    "parse_public_key",
    "place_key_file",
    "public_key_string",
    "split_state_key",
    "state_key_for",
    "verify_attestation",
    "verify_key_base64",
]
