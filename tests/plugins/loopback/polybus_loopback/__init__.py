"""``loopback://name``: a transport installed as its own distribution, outside polybus.

It is polybus's in-memory transport under another scheme and NestJS name, declared only
here: the tests use it to show that a third-party transport is found by URL scheme and by
NestJS dict, and runs the conformance and fault suites, with no edit to polybus itself.
"""

from polybus import TransportSpec

SPEC = TransportSpec(
    name="loopback",
    schemes=("loopback",),
    implementation="polybus_loopback._plugin:PLUGIN",
    nest_names=("LOOPBACK",),
    nest_number=42,
)
