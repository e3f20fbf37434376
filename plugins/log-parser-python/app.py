"""`log-parser` in Python: one raw log line in, one JSON object out (see ../log-parser).

Key = the service, header `level`, config `min_level` (default `trace`); a malformed line
is `fatal` with the precise cause. Built with componentize-py: see build.sh.
"""

import wit_world
from componentize_py_types import Err
from wit_world.imports import types

import parse

_min_level = 0


class WitWorld(wit_world.WitWorld):
    def init(self, config):
        global _min_level
        raw = "trace"
        for k, v in config:  # like a map built from the list: the last value wins
            if k == "min_level":
                raw = parse.trim(v)
        level = parse.parse_level(raw)
        if level is None:
            raise Err(
                f"config `min_level`: unknown level {parse.debug_str(raw)} "
                "(expected trace, debug, info, warn, error or fatal)"
            )
        _min_level = level

    def handle(self, msg):
        return process(msg.payload, _min_level)


def process(line, min_level):
    try:
        ts, level, service, message, fields = parse.parse_line(line)
    except parse.ParseError as e:
        raise Err(types.HandlerError_Fatal(str(e)))
    if level < min_level:
        return []
    payload = parse.to_json(ts, level, service, message, fields).encode("utf-8")
    return [
        types.Output(
            sink=None,
            topic=None,
            key=service.encode("utf-8"),
            payload=payload,
            headers=[types.Header(key="level", value=parse.LEVELS[level].encode("utf-8"))],
        )
    ]
