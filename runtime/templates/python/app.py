"""`{{name}}`: upper-cases the payload and appends a mark (config `mark`,
default "!"); keeps the key and adds a `handled-by` header. An empty payload
is `fatal`: it will never succeed, so the policy dead-letters it."""

import wit_world
from componentize_py_types import Err
from wit_world.imports import types

_mark = b"!"


class WitWorld(wit_world.WitWorld):
    def init(self, config):
        global _mark
        for k, v in config:
            if k == "mark":
                _mark = v.encode("utf-8")

    def handle(self, msg):
        if not msg.payload:
            raise Err(types.HandlerError_Fatal("empty payload"))
        return [
            types.Output(
                sink=None,
                topic=None,
                key=msg.key,
                payload=bytes(msg.payload).upper() + _mark,
                headers=[types.Header(key="handled-by", value=b"{{name}}")],
            )
        ]
