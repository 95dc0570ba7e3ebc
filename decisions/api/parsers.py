"""Accept the seed's `curl -d '{...}'` calls, which send JSON labelled as a form."""

from __future__ import annotations

import json

from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser


class JSONAsFormParser(BaseParser):
    """Parses a JSON body sent with `application/x-www-form-urlencoded` (curl's default for -d).

    An empty body parses to {} so that `POST train?num_episodes=100` with no body works.
    """

    media_type = "application/x-www-form-urlencoded"

    def parse(self, stream, media_type=None, parser_context=None):
        raw = stream.read() if stream is not None else b""
        if not raw.strip():
            return {}
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ParseError(f"body must be JSON: {exc}") from None


class StrictJSONParser(BaseParser):
    """application/json. NaN/Infinity literals parse to floats so that validation can reject them
    with the name of the field they were sent in."""

    media_type = "application/json"

    def parse(self, stream, media_type=None, parser_context=None):
        raw = stream.read() if stream is not None else b""
        if not raw.strip():
            return {}
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ParseError(f"JSON parse error: {exc}") from None
        except RecursionError:
            raise ParseError("JSON parse error: nested too deeply") from None
