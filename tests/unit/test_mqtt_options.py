"""MQTT options from URLs and NestJS (mqtt.js) option objects; per-message records."""

from __future__ import annotations

import pytest

from polybus.config import create_client_transport
from polybus.errors import ConfigError
from polybus.transports.mqtt import MqttClientTransport, MqttOptions, MqttRecord
from polybus.transports.mqtt._record import record_options


def test_url_gives_host_port_credentials_and_tls() -> None:
    options = MqttOptions.from_url("mqtts://user:p%40ss@broker.test?ca=/ca.pem&qos=1")
    assert (options.host, options.port, options.tls) == ("broker.test", 8883, True)
    assert (options.username, options.password) == ("user", "p@ss")
    assert (options.ca_file, options.qos) == ("/ca.pem", 1)
    assert "p@ss" not in repr(options)
    assert MqttOptions.from_url("mqtt://127.0.0.1").port == 1883


def test_scheme_resolves_through_the_entry_point() -> None:
    transport = create_client_transport("mqtt://u:secret@127.0.0.1:1883?protocol_version=5")
    assert isinstance(transport, MqttClientTransport)
    assert "secret" not in repr(transport)


def test_nest_options_map_to_polybus_names() -> None:
    options = MqttOptions.from_nest(
        {"url": "mqtt://127.0.0.1:1884", "protocolVersion": 5, "clientId": "svc", "clean": False}
    )
    assert (options.port, options.protocol_version) == (1884, 5)
    assert (options.client_id, options.clean_session) == ("svc", False)


def test_a_random_client_id_is_fixed_for_the_options_lifetime() -> None:
    options = MqttOptions()
    assert options.client_id and options.client_id.startswith("polybus-")
    assert MqttOptions().client_id != options.client_id


@pytest.mark.parametrize("query", ["qos=3", "protocol_version=6"])
def test_bad_values_are_config_errors(query: str) -> None:
    with pytest.raises(ConfigError):
        MqttOptions.from_url(f"mqtt://127.0.0.1?{query}")
    with pytest.raises(ConfigError):
        MqttRecord(1, qos=7)


def test_record_options_override_the_default_qos() -> None:
    assert record_options(None, 1) == (1, False)
    assert record_options(MqttRecord("x", qos=2, retain=True), 0) == (2, True)
    assert record_options(MqttRecord("x"), 1) == (1, False)
