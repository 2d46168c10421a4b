"""A broker cluster: every config and command takes a list of its nodes' URLs, and the bus
moves from a node it loses (or that refuses it) to the next, round robin, subscribing
afresh there; a workload on a three-node NATS cluster, a node SIGKILLed and started again
and again, ends with no settlement lost or one-legged and the audit clean."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from engine.world import chaos_processes
from engine.world.broker import Broker, free_port
from protocols.bus.address import BadURL, broker_setting, broker_urls, parse_urls, redacted
from protocols.bus.mqtt import BrokerUnreachable, MqttBus
from tests.brokers import NatsCluster, NatsServer
from tests.test_mqtt_bus import echo_server, echoed_again

# -- a list of URLs ---------------------------------------------------------------------------


def test_a_list_of_urls_is_read_from_commas_and_a_comma_in_a_password_stays():
    assert broker_urls("mqtt://a:1883") == ["mqtt://a:1883"]
    assert broker_urls("mqtt://a:1883, mqtts://b:8883,tcp://c") == ["mqtt://a:1883", "mqtts://b:8883", "tcp://c"]
    assert broker_urls("mqtt://u:p,w@a:1883,mqtt://u:p,w@b:1883") == ["mqtt://u:p,w@a:1883", "mqtt://u:p,w@b:1883"]
    assert [(a.host, a.port, a.password) for a in parse_urls("mqtt://u:p,w@a:1,mqtt://u:p,w@b:2")] == [
        ("a", 1, "p,w"),
        ("b", 2, "p,w"),
    ]


def test_every_url_of_a_list_is_redacted():
    assert redacted("mqtt://u:secret@a:1883,mqtt://u:secret@b:1883") == "mqtt://u:***@a:1883,mqtt://u:***@b:1883"


def test_a_clusters_urls_that_differ_in_more_than_host_and_port_are_refused_by_name():
    with pytest.raises(BadURL, match="differ in more than host and port") as refused:
        parse_urls("mqtt://u:secret@a:1883,mqtts://u:secret@b:8883")
    assert "secret" not in str(refused.value)
    with pytest.raises(BadURL, match=r"^'mqtt://c:port' its port must be a number"):
        parse_urls("mqtt://a:1883,mqtt://b:1883,mqtt://c:port")


def test_a_config_names_a_cluster_as_a_list_and_its_files_reach_every_url(tmp_path):
    config = {"broker": ["mqtt://ledger-csd@a:1883", "mqtt://ledger-csd@b:1883"], "broker_password_file": "pw"}
    assert broker_setting(config, tmp_path) == (
        f"mqtt://ledger-csd@a:1883?password_file={tmp_path}/pw,mqtt://ledger-csd@b:1883?password_file={tmp_path}/pw"
    )
    assert broker_setting({"broker": "mqtt://a:1883,mqtt://b:1883"}, tmp_path) == "mqtt://a:1883,mqtt://b:1883"
    for wrong in ([], [1883], 1883):
        with pytest.raises(ValueError, match=r"broker: must be a URL such as .*, or a list"):
            broker_setting({"broker": wrong}, tmp_path)
    with pytest.raises(ValueError, match="broker: 'http://b:1883' must look like mqtt://host:port"):
        broker_setting({"broker": ["mqtt://a:1883", "http://b:1883"]}, tmp_path)


# -- failover ---------------------------------------------------------------------------------


async def test_the_first_connection_goes_to_the_first_node_that_accepts_it(broker):
    dead = f"mqtt://127.0.0.1:{free_port()}"
    async with MqttBus.connect(f"{dead},{broker.url}") as bus:
        assert bus._client.socket() is not None
        assert bus._nodes[bus._node] == f"127.0.0.1:{broker.port}"


async def test_no_node_accepting_the_first_connection_is_an_error_naming_each():
    ports = [free_port(), free_port()]
    with pytest.raises(BrokerUnreachable) as unreachable:
        async with MqttBus.connect(",".join(f"mqtt://127.0.0.1:{port}" for port in ports)):
            pass
    assert unreachable.value.subject == "MQTT brokers"
    refused = [f"127.0.0.1:{port} cannot reach it: Connection refused" for port in ports]
    assert unreachable.value.reason == "; ".join(refused)


async def test_a_service_whose_node_dies_moves_to_the_next_and_serves_there(tmp_path: Path):
    """Two brokers as two nodes (Mosquitto has no cluster; the bus cannot tell): the server
    and its client on the first, which dies; both move to the second, where the server
    subscribes afresh and answers again."""
    nodes = [Broker(tmp_path, port=free_port()).start(), Broker(tmp_path, port=free_port()).start()]
    url = ",".join(node.url for node in nodes)
    try:
        async with MqttBus.connect(url) as server, MqttBus.connect(url) as client, trio.open_nursery() as nursery:
            await nursery.start(echo_server, server, "echo")
            assert await client.request("echo", b"before", timeout_s=5) == b"echo:before"
            nodes[0].stop()
            await echoed_again(client, b"after", 10)
            assert server._nodes[server._node] == client._nodes[client._node] == f"127.0.0.1:{nodes[1].port}"
            nursery.cancel_scope.cancel()
    finally:
        for node in nodes:
            node.stop()


@pytest.mark.slow
async def test_a_node_refusing_a_subscription_is_left_for_the_next(tmp_path, caplog):
    """NATS refuses a topic with a '.' in it, as a cluster's node refuses a QoS 1
    subscription while its JetStream elects a leader: the bus drops that connection rather
    than stay on it deaf, and serves again once the subscription is gone."""
    with NatsServer(tmp_path) as nats:
        async with MqttBus.connect(nats.url) as server, MqttBus.connect(nats.url) as client:
            async with trio.open_nursery() as nursery:
                await nursery.start(echo_server, server, "echo")
                with caplog.at_level(logging.WARNING, "lockstep.bus"):
                    async with server.subscribe_raw("not.a/topic/for/nats"):
                        with trio.fail_after(5):
                            while f"broker 127.0.0.1:{nats.mqtt_port} refused a subscription" not in caplog.text:
                                await trio.sleep(0.05)
                await echoed_again(client, b"again", 10)
                nursery.cancel_scope.cancel()


# -- a NATS cluster losing a node, under a settlement workload ----------------------------------


@pytest.mark.slow
async def test_a_workload_on_a_nats_cluster_losing_a_node_ends_clean(tmp_path, monkeypatch):
    """A node SIGKILLed (drawn at random) while settlements run: its clients move to the
    nodes left, and the node is started again once they have. (`run` raises if a
    settlement a back office sent is not final in the end.) Four back offices and short
    pauses: the time goes to NATS's election, 4 to 9 s after a leader's loss. Fifty kills
    in a row are `lockstep chaos --broker-cluster nats:3 --strikes 50` (docs/SCALING.md)."""
    monkeypatch.setattr(chaos_processes, "CONCURRENCY", 4)
    monkeypatch.setattr(chaos_processes, "PAUSE_S", (0.2, 0.5))
    result = await chaos_processes.run(
        tmp_path, seconds=120, seed=17, faults=("broker-node-kill",), strikes=1, broker_in=NatsCluster
    )
    outcome, restarts = result.outcome, result.restarts
    report = outcome.report
    assert report is not None and report.clean, report.text()  # none one-legged, nothing created or lost
    assert set(outcome.phases) <= {"settled", "rolled_back", "failed"} and outcome.phases["settled"] > 0
    assert outcome.faults["broker-node-kill"] == 1
    assert len(restarts.outage_ms["broker-node"]) == 1, "the failover did not end"
    assert len(restarts.startup_ms["broker-node"]) == 1, "the node was not started again"
