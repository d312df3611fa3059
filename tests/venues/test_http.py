"""The shared HTTP seam's pure parts."""

from __future__ import annotations

import codecs

from etl.venues.http import json_text


def test_a_json_body_is_kept_as_the_text_jsonb_will_take():
    assert json_text('{"a": 1.50, "b": "Ünï"}'.encode()) == '{"a": 1.50, "b": "Ünï"}'
    # what jsonb would refuse or misread is left to the re-encoding of the parsed body
    assert json_text(codecs.BOM_UTF8 + b'{"a": 1}') is None
    assert json_text('{"a": "é"}'.encode("utf-16")) is None
