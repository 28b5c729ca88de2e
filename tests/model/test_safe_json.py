"""model.safe_json: the one parser for JSON from outside, and its limits."""
from __future__ import annotations

import pytest

from model.person.keypoints import KeypointsError, load_keypoints, parse_keypoints
from model.safe_json import MAX_DEPTH, MAX_STRUCTURE, JsonError, load_json


@pytest.mark.parametrize("text, code", [
    ("[" * 100_000, "json_too_deep"),
    ('{"a":' * 50_000, "json_too_deep"),
    ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "json_too_deep"),
    ("[" + "0," * MAX_STRUCTURE + "0]", "json_too_large"),
    ('{"a": 1, "a": 2}', "duplicate_key"),
    ("[NaN]", "invalid_json"),
    ("[-Infinity]", "invalid_json"),
    ("[" + "9" * 5000 + "]", "invalid_json"),
    (b'["\xff"]', "invalid_json"),
    ("{nope", "invalid_json"),
])
def test_refused_with_the_limit_passed(text, code):
    with pytest.raises(JsonError) as refused:
        load_json(text)
    assert refused.value.code == code and refused.value.message


def test_strings_are_not_structure():
    # Brackets, quotes and escapes inside strings count neither as depth nor as structure.
    assert load_json('["a\\"[[[[", {"b": "]]]]{{{{"}]') == ['a"[[[[', {"b": "]]]]{{{{"}]
    assert load_json(b'\xef\xbb\xbf{"k": [1, 2.5, null, true]}') == {"k": [1, 2.5, None, True]}
    nested = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert load_json(nested) is not None
    big = '{"image": "' + "QUJD" * 2_000_000 + '"}'  # an 8 MB base64 string is one value, no structure
    assert len(load_json(big, max_structure=64)["image"]) == 8_000_000


def test_keypoints_files_go_through_the_same_limits(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000)
    with pytest.raises(KeypointsError, match="levels deep"):
        load_keypoints(deep)
    with pytest.raises(KeypointsError, match="NaN"):
        parse_keypoints("[[NaN, 1, 1]]")
    with pytest.raises(KeypointsError, match="twice"):
        parse_keypoints('{"people": [], "people": []}')
