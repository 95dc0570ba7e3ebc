"""Accept the seed's `curl -d '{...}'` calls, which send JSON labelled as a form."""

from __future__ import annotations

import json

from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser


def _parse_error(prefix: str, exc: ValueError) -> ParseError:
    """A ParseError for the client: Python's advice about its integer-digit limit is not for them."""
    if "integer string conversion" in str(exc):
        return ParseError(f"{prefix}: a number has more digits than any field accepts")
    return ParseError(f"{prefix}: {exc}")


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
            raise _parse_error("body must be JSON", exc) from None
        except RecursionError:
            raise ParseError("body must be JSON: nested too deeply") from None


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
            raise _parse_error("JSON parse error", exc) from None
        except RecursionError:
            raise ParseError("JSON parse error: nested too deeply") from None
