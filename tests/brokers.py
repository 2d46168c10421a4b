"""Brokers other than Mosquitto that speak MQTT 3.1.1, each started on free loopback ports
for one test: the bus must hold on them too (docs/DEPLOY.md, "What Lockstep needs of a
broker"), and on a cluster of them losing a node. They live in engine/world/ (nats.py,
rabbitmq.py), since `lockstep chaos` runs them too."""

from __future__ import annotations

from engine.world.nats import NatsCluster, NatsServer
from engine.world.rabbitmq import RabbitMQNode

__all__ = ["NatsCluster", "NatsServer", "RabbitMQNode"]
