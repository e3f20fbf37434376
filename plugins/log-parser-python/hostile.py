"""The Python log-parser with two hostile triggers, for the sandbox tests only.

Payload `loop` spins forever (stopped by the timeout or the fuel budget); payload `alloc`
grows a list until the memory cap stops it. Every other line is parsed as in app.py.
"""

import app
import wit_world


class WitWorld(wit_world.WitWorld):
    def init(self, config):
        return app.WitWorld().init(config)

    def handle(self, msg):
        if msg.payload == b"loop":
            n = 0
            while True:
                n += 1
        if msg.payload == b"alloc":
            hog = []
            while True:
                hog.append(bytearray(1 << 20))
        return app.WitWorld().handle(msg)
