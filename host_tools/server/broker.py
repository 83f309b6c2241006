"""An MQTT broker inside our own process (amqtt), for the embedded default of `fota serve`.

    broker = EmbeddedBroker(policy=identities, port=0)   # 0: a free loopback port
    broker.start(); print(broker.url)                    # mqtt://127.0.0.1:PORT
    broker.stop()

Every client logs in (docs/SECURITY.md "Broker access"): `policy` (host_tools.server.identity.
Identities) answers each CONNECT's username and password and each PUBLISH, SUBSCRIBE and delivery
(a device only under fota/<its id>/, the server everywhere), asked at the moment, so a device
enrolled or revoked while the broker runs is known at its next CONNECT. A login revoked while its
client is connected (`fota device revoke`, from any process sharing the registry) is disconnected
within `revoke_check_s` (1 s): every connected session's username is checked against the policy's
revoked set, and a revoked one is closed as if its TCP connection had dropped. amqtt's own plugins are
the mechanism (its plugin list replaces the anonymous default; one auth plugin that answers True or
False; one topic plugin that answers for all three actions, so a subscribe is checked too).

It listens on loopback. Anywhere else it requires TLS (`tls=(certfile, keyfile)`): passwords and
reports would otherwise cross the network in clear; without TLS it refuses to start and says why.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any, Protocol

from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

from host_tools.errors import FotaError
from host_tools.server.loopthread import LoopThread


class BrokerError(FotaError):
    """The embedded broker cannot start as configured."""


class AccessPolicy(Protocol):
    def check_login(self, user: str | None, password: str | bytes | None, client_id: str | None) -> bool: ...

    def allowed(self, user: str | None, action: str, topic: str) -> bool: ...

    def revoked(self) -> set[str]: ...


class FotaAuthPlugin(BaseAuthPlugin):
    """CONNECT: a username, its password and (a device) its own client id, as the policy knows them; no
    anonymous clients. (_Broker asks the same before the CONNECT touches any session.)"""

    @dataclass
    class Config:
        policy: Any = None  # an AccessPolicy

    async def authenticate(self, *, session) -> bool:
        policy = self.config.policy
        return bool(session and session.username) and policy.check_login(session.username, session.password,
                                                                          session.client_id)


class FotaTopicPlugin(BaseTopicPlugin):
    """PUBLISH, SUBSCRIBE and each delivery: what the policy allows that username."""

    @dataclass
    class Config:
        policy: Any = None

    async def topic_filtering(self, *, session=None, topic=None, action=None) -> bool:
        user = session.username if session else None
        return bool(user and topic and action) and self.config.policy.allowed(user, str(action), topic)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _make_broker(config: dict):
    """amqtt's Broker, with every message it acknowledged delivered even when the client is gone at once.

    amqtt 0.12.1 (pinned) sends the PUBACK of a QoS 1 PUBLISH when it has queued the message on the
    session, and broadcasts from that queue one message per turn of the session's loop. Two things drop
    the rest of the queue: the loop ends as soon as it sees the connection closed, and a new clean-session
    CONNECT with the same client id clears the old session's queues. A device publishes its `rebooting`
    event, waits for the PUBACK, resets and reconnects (PROTOCOL.md "Events"): such events were lost
    (1 in 8 runs of tests/test_protodevice.py; tests/test_broker_delivery.py loses ~10 of 72 without this).
    Both places now broadcast what is left first, in order, through amqtt's own delivery step (ACLs,
    retained flag and plugins included)."""
    from amqtt.broker import Broker
    from amqtt.errors import AMQTTError, MQTTError, NoDataError
    from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
    from amqtt.session import Session
    from amqtt.utils import gen_client_id

    policy: AccessPolicy = config["plugins"][f"{__name__}.FotaAuthPlugin"]["policy"]

    class _Broker(Broker):
        async def _initialize_client_session(self, reader, writer, remote_address: str, remote_port: int
                                             ) -> tuple[BrokerProtocolHandler, Session]:
            """amqtt 0.12.1's, with the login checked first. amqtt acts on a CONNECT's client id before it
            authenticates it: a clean-session CONNECT deletes the existing session of that id (its
            subscriptions and queues; the connected client stays, deaf), any other takes over its username
            and password, and then the refused session replaces it in the broker's table, where neither a
            takeover nor the revocation sweep finds the live connection again. So anyone who knows a
            device's id silenced it, without a password. A CONNECT the policy refuses now gets its CONNACK
            (not authorised) and is closed before anything else happens."""
            try:
                handler, session = await BrokerProtocolHandler.init_from_connect(reader, writer, self.plugins_manager)
            except (AMQTTError, MQTTError, NoDataError) as exc:
                await writer.close()
                raise AMQTTError(exc) from exc
            if not (session.username and policy.check_login(session.username, session.password, session.client_id)):
                session.parent = 0
                handler.attach(session, reader, writer)
                await handler.mqtt_connack_authorize(False)
                await writer.close()
                raise AMQTTError(f"login refused before it touched a session: client id {session.client_id!r}")
            if session.clean_session:  # from here on amqtt 0.12.1's own steps
                if session.client_id:
                    await self._delete_session(session.client_id)
                else:
                    session.client_id = gen_client_id()
                session.parent = 0
            elif session.client_id in self._sessions:
                old, _ = self._sessions[session.client_id]
                for attr in ("will_flag", "will_message", "will_topic", "will_qos", "keep_alive", "username", "password"):
                    setattr(old, attr, getattr(session, attr))
                session = old
                session.parent = 1
            else:
                session.parent = 0
            delay = self.config.get("timeout-disconnect-delay", 0)
            if session.keep_alive > 0 and isinstance(delay, int):
                session.keep_alive += delay
            return handler, session

        async def _client_message_loop(self, client_session, handler) -> None:
            await super()._client_message_loop(client_session, handler)
            await self._deliver_queued(client_session, handler)

        async def _delete_session(self, client_id: str) -> None:
            session, handler = self._sessions.get(client_id, (None, None))
            if session is not None:
                await self._deliver_queued(session, handler)
            await super()._delete_session(client_id)

        async def _publish_retained_messages_for_subscription(self, subscription, session) -> None:
            """Retained messages for a filter `session` itself holds. amqtt 0.12.1 also calls this, for every
            connecting client, with every filter of every session in its table (`_handle_client_session`),
            and publishes what matches past the topic ACL: device A got device B's retained offer."""
            held = self._subscriptions.get(subscription[0], ())
            if any(s.client_id == session.client_id for s, _ in held):
                await super()._publish_retained_messages_for_subscription(subscription, session)

        async def _deliver_queued(self, session, handler) -> None:
            queue = session.delivered_message_queue
            while not queue.empty():
                taken = asyncio.get_running_loop().create_future()
                taken.set_result(queue.get_nowait())
                if not await self._handle_message_delivery(session, handler, taken):
                    return

    broker = _Broker(config, loop=asyncio.get_running_loop())
    broker._subscriptions = _Snapshots()
    return broker


class _Snapshots(dict):
    """amqtt 0.12.1's subscription table, iterated over a copy: the broker walks it with awaits inside (a
    delivery asks the topic plugin; a connecting client gets retained messages per filter), and a SUBSCRIBE
    meanwhile raised "dictionary changed size during iteration", ending that session's set-up or that
    message's broadcast (stray tracebacks in `make demo`)."""

    def __iter__(self):
        return iter(list(super().keys()))

    def items(self):  # type: ignore[override]
        return list(super().items())


class EmbeddedBroker:
    """amqtt with logins and per-device ACLs, on loopback (or anywhere with TLS), run on a LoopThread."""

    def __init__(self, policy: AccessPolicy, host: str = "127.0.0.1", port: int = 0,
                 tls: tuple[str, str] | None = None, revoke_check_s: float = 1.0) -> None:
        if not is_loopback(host) and tls is None:
            raise BrokerError(f"the embedded broker will not listen on {host} without TLS: device passwords and "
                              "reports would cross the network in clear",
                              hint="give --broker-cert and --broker-key (fota ca issue-server), or run mosquitto with TLS")
        self.policy = policy
        self.host = host
        self.tls = tls
        self.port = port or free_port(host)
        self.revoke_check_s = revoke_check_s
        self.kicked = 0  # connections closed because their login was revoked
        self._lt = LoopThread("amqtt-broker")
        self._broker = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def alive(self) -> bool:
        """False once the broker's loop thread ended without stop()."""
        return self._lt.alive()

    def start(self, timeout: float = 10) -> None:
        self._broker = self._lt.start(self._start, what="the embedded MQTT broker", timeout=timeout)

    async def _start(self):
        listener: dict = {"type": "tcp", "bind": f"{self.host}:{self.port}"}
        if self.tls:
            listener |= {"ssl": True, "certfile": self.tls[0], "keyfile": self.tls[1]}
        config = {
            "listeners": {"default": listener},
            # replaces amqtt's default plugin list (AnonymousAuthPlugin allow_anonymous: true)
            "plugins": {f"{__name__}.FotaAuthPlugin": {"policy": self.policy},
                        f"{__name__}.FotaTopicPlugin": {"policy": self.policy}},
        }
        broker = _make_broker(config)
        await broker.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_revoked(broker))
        return broker

    async def _sweep_revoked(self, broker) -> None:
        """Close every connected session whose login was revoked (the CONNECT check alone waits for a reconnect)."""
        while True:
            await asyncio.sleep(self.revoke_check_s)
            try:
                gone = self.policy.revoked()
            except Exception:  # noqa: BLE001 - a registry hiccup must not end the broker; next sweep retries
                continue
            if gone:
                await self.disconnect_users(broker, gone)

    async def disconnect_users(self, broker, users: set[str]) -> int:
        """Close the connected sessions logged in as one of `users`; how many were closed."""
        closed = 0
        for session, handler in list(broker.sessions.values()):
            if session.username in users and session.transitions.is_connected() and handler is not None:
                await handler.handle_connection_closed()  # the session's loop ends it: writer closed, state disconnected
                closed += 1
        self.kicked += closed
        return closed

    async def _shutdown(self) -> None:
        await self._broker.shutdown()
        # amqtt 0.12 leaves the transports of clients that vanished (power cut, reset)
        # open; close them and their tasks so nothing outlives the broker.
        loop = asyncio.get_running_loop()
        for transport in list(getattr(loop, "_transports", {}).values()):
            transport.close()
        tasks = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)

    def stop(self) -> None:
        if self._broker is not None:
            self._lt.stop(self._shutdown)
            self._broker = None
