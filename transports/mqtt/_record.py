"""Per-message MQTT options: NestJS's ``MqttRecord`` (``MqttRecordBuilder.setQoS()``...)."""

from __future__ import annotations

from dataclasses import dataclass

from polybus.errors import ConfigError
from polybus.packets import Record

__all__ = ["MqttRecord", "record_options"]


@dataclass(frozen=True, slots=True)
class MqttRecord(Record):
    """``client.send(pattern, MqttRecord(data, qos=1))``: the QoS and retain flag of this
    one publish (``None``: the client's ``qos`` option)."""

    qos: int | None = None
    retain: bool = False

    def __post_init__(self) -> None:
        if self.qos not in (None, 0, 1, 2):
            raise ConfigError(f"MQTT qos must be 0, 1 or 2, got {self.qos!r}")


def record_options(record: Record | None, default_qos: int) -> tuple[int, bool]:
    """The QoS and retain flag of a publish carrying ``record``."""
    if isinstance(record, MqttRecord):
        return (default_qos if record.qos is None else record.qos), record.retain
    return default_qos, False
