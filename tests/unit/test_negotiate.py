"""PEP 691 content negotiation."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from synapse_pypi._negotiate import HTML_V1, JSON_V1, TEXT_HTML, Format, choose_format

JSON = (Format.JSON_V1, JSON_V1)
HTML = (Format.HTML_V1, HTML_V1)
LEGACY = (Format.HTML_V1, TEXT_HTML)

PIP_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
UV_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        # No header: a PEP 503 client, answered as before.
        (None, LEGACY),
        ("", LEGACY),
        ("   ", LEGACY),
        # Real clients.
        (PIP_ACCEPT, JSON),
        (UV_ACCEPT, JSON),
        (BROWSER_ACCEPT, LEGACY),
        ("text/html", LEGACY),
        # Exact types and the "latest" aliases (sent back as the v1 type).
        (JSON_V1, JSON),
        (HTML_V1, HTML),
        ("application/vnd.pypi.simple.latest+json", JSON),
        ("application/vnd.pypi.simple.latest+html", HTML),
        # Wildcards; ties go JSON v1 > HTML v1 > text/html.
        ("*/*", JSON),
        ("*", JSON),
        ("application/*", JSON),
        ("text/*", LEGACY),
        ("text/html, application/vnd.pypi.simple.v1+html", HTML),
        ("text/html;q=0.5, application/vnd.pypi.simple.v1+html;q=0.5", HTML),
        ("text/html;q=0.5, application/vnd.pypi.simple.v1+json;q=0.5", JSON),
        # Quality decides.
        ("application/vnd.pypi.simple.v1+json;q=0.5, text/html", LEGACY),
        ("application/vnd.pypi.simple.v1+json;q=0.001", JSON),
        ("application/vnd.pypi.simple.v1+json; q=1.0", JSON),
        ("application/*;q=0.2, text/html;q=0.3", LEGACY),
        ("text/html;q=0.5;ext=1, application/vnd.pypi.simple.v1+html;q=0.4", LEGACY),
        # An alias and its type are equally specific: the higher q of the two counts.
        ("application/vnd.pypi.simple.v1+json;q=0.1, application/vnd.pypi.simple.latest+json;q=0.9, text/html;q=0.5", JSON),
        ("application/vnd.pypi.simple.latest+html;q=0.9, application/vnd.pypi.simple.v1+html;q=0, text/html;q=0.5", HTML),
        # q=0 means "not this"; the most specific range decides.
        ("application/vnd.pypi.simple.v1+json;q=0", None),
        ("application/vnd.pypi.simple.v1+json;q=0, */*", HTML),
        ("application/vnd.pypi.simple.v1+json;q=0, application/vnd.pypi.simple.v1+html;q=0, */*", LEGACY),
        ("application/*;q=0, */*", LEGACY),
        ("*/*;q=0", None),
        ("text/*;q=0, application/vnd.pypi.simple.v1+html;q=0.1, */*;q=0.5", JSON),
        # Media types are case-insensitive; parameters other than q do not matter.
        ("TEXT/HTML", LEGACY),
        ("Application/VND.PyPI.Simple.V1+JSON", JSON),
        ("text/html; charset=utf-8", LEGACY),
        # Nothing we serve.
        ("application/json", None),
        ("application/vnd.pypi.simple.v2+json", None),
        ("image/png, text/plain", None),
        # Ranges that do not parse are skipped; a header with none left counts as absent.
        ("application/vnd.pypi.simple.v1+json;q=2, text/html;q=0.1", LEGACY),
        ("application/vnd.pypi.simple.v1+json;q=abc, application/vnd.pypi.simple.v1+html", HTML),
        ("*/json", LEGACY),
        ("garbage", LEGACY),
        (",,;", LEGACY),
    ],
)
def test_accept(accept: str | None, expected: tuple[Format, str] | None) -> None:
    assert choose_format(accept, None) == expected


@pytest.mark.parametrize(
    ("accept", "format_param", "expected"),
    [
        ("text/html", JSON_V1, JSON),
        (PIP_ACCEPT, "text/html", LEGACY),
        (PIP_ACCEPT, HTML_V1, HTML),
        (None, "application/vnd.pypi.simple.latest+json", JSON),
        (None, "application/vnd.pypi.simple.latest+html", HTML),
        (None, "*/*", JSON),
        # An explicit format we do not serve is a 406 even when Accept would do.
        ("text/html", "application/json", None),
        (None, "json", None),
        ("*/*", "text/html;q=0", None),
        # An empty parameter is no choice at all.
        (PIP_ACCEPT, "", JSON),
        (None, "", LEGACY),
    ],
)
def test_format_parameter_wins(accept: str | None, format_param: str, expected: tuple[Format, str] | None) -> None:
    assert choose_format(accept, format_param) == expected


def test_format_values_are_content_types() -> None:
    assert Format.JSON_V1.value == "application/vnd.pypi.simple.v1+json"
    assert Format.HTML_V1.value == "application/vnd.pypi.simple.v1+html"


@given(st.one_of(st.none(), st.text()), st.one_of(st.none(), st.text()))
def test_any_input_gives_a_served_type_or_none(accept: str | None, format_param: str | None) -> None:
    result = choose_format(accept, format_param)
    assert result in (JSON, HTML, LEGACY, None)


QUALITIES = st.sampled_from(["0", "0.1", "0.25", "0.5", "0.999", "1"])
OFFERS = [(JSON_V1, JSON), (HTML_V1, HTML), (TEXT_HTML, LEGACY)]


@given(st.lists(st.tuples(st.sampled_from(OFFERS), QUALITIES), min_size=1, max_size=3, unique_by=lambda t: t[0][0]))
def test_highest_quality_wins_then_preference(entries: list) -> None:
    accept = ", ".join(f"{offer[0]};q={q}" for offer, q in entries)
    q_of = {offer[0]: float(q) for offer, q in entries}
    best = max((q_of.get(ct, 0.0) for ct, _ in OFFERS))
    if best == 0:
        expected = None
    else:
        # OFFERS is in preference order: the first with the best q.
        expected = next(result for ct, result in OFFERS if q_of.get(ct, 0.0) == best)
    assert choose_format(accept, None) == expected
