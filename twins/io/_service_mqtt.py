"""A `TwinService` on an MQTT broker (paho-mqtt 2.x, MQTT 5): `MqttService`.

- Subscribes to `twins/<site>/in/+` with QoS 1 on a persistent session (`clean_start`
  False and a session expiry), so the broker keeps what arrives while the service is down
  and sends it again after a restart.
- Acknowledges each message (PUBACK, `manual_ack`) only after `TwinService.receive` has
  committed it (or its dead letter) to the store: a message the broker thinks delivered is
  never lost; one received twice is a duplicate and changes nothing.
- Processes what has arrived in batches (`TwinService.process`) and publishes the outbox
  with QoS 1, marking each output published when the broker has acknowledged it; outputs
  not yet acknowledged are published again after a restart (consumers tell repeats apart
  by `asof` and `cause.message`).
- Publishes a status message (retained) on `twins/<site>/status` every `status_every`
  seconds, and `{"state": "offline"}` as its will.
- Connects over TLS (`MqttTls`: the CA that signed the broker's certificate, checked with
  its host name; optionally a client certificate) and with a user name and password when
  given; a hospital broker should require both (docs/live-twins.md, "Security").
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import ssl
import threading
import time
from collections import deque
from typing import Any

import numpy as np

from ._service import TwinService

log = logging.getLogger("twins.serve")


def parse_broker(text: str) -> tuple[str, int]:
    """`HOST:PORT` (port 1883 when left out) as `(host, port)`, or `ValueError`."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, "1883"
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"--broker: expected HOST:PORT (for example 127.0.0.1:1883), got {text!r}."
        )
    return host, int(port)


@dataclasses.dataclass(frozen=True)
class MqttTls:
    """TLS to the broker (TLS 1.2 or later).

    - `ca_file`: the PEM certificate(s) of the authority that signed the broker's
      certificate; the broker's certificate is checked against it and against the host
      name (or IP address) connected to, always.
    - `cert_file`, `key_file`: the service's own certificate and key (PEM), for a broker
      that requires client certificates (`require_certificate true`); both or neither.
    """

    ca_file: str | os.PathLike
    cert_file: str | os.PathLike | None = None
    key_file: str | os.PathLike | None = None

    def __post_init__(self):
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("MqttTls: give both cert_file and key_file, or neither.")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"MqttTls: {name} {str(path)!r} is not a file.")

    def context(self) -> ssl.SSLContext:
        """The client's SSL context: certificate and host name checked, TLS >= 1.2."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file is not None:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        return ctx


class MqttService:
    """`service` connected to the broker at `host:port` (see the module docstring).

    **Arguments:**

    - `service`: the `TwinService`.
    - `host`, `port`: the broker.
    - `client_id`: the MQTT client id, which names the persistent session (default
      `twins-serve-<site>`): a restarted service must use the same one to catch up.
    - `session_expiry`: seconds the broker keeps the session while disconnected.
    - `status_every`: seconds between status messages (and status log lines).
    - `tls`: an `MqttTls` to connect over TLS (default: plain TCP, for a broker on
      127.0.0.1 only).
    - `username`, `password`: the broker account (MQTT CONNECT credentials; over TLS, so
      that they are not sent in the clear). A password without a user name is refused.

    `start()` connects and runs in background threads; `stop()` ends them. `run(stop)`
    does both around a wait on the event `stop` (the command line's loop). The event
    `connected` is set once the broker has accepted both the connection and the
    subscription to the input topics (so a message published after it is received), and
    cleared on a disconnection.
    """

    def __init__(
        self,
        service: TwinService,
        host: str,
        port: int,
        *,
        client_id: str | None = None,
        session_expiry: int = 7 * 24 * 3600,
        keepalive: int = 30,
        status_every: float = 5.0,
        tls: MqttTls | None = None,
        username: str | None = None,
        password: str | None = None,
    ):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.service = service
        self.topics = service.topics
        self.host, self.port = host, int(port)
        self.client_id = client_id or f"twins-serve-{self.topics.site}"
        self.session_expiry = int(session_expiry)
        self.keepalive = int(keepalive)
        self.status_every = float(status_every)
        self.connected = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._inflight: dict[int, Any] = {}
        self._received: dict[int, float] = {}
        self._rx = threading.Lock()
        self._latency: deque[float] = deque(maxlen=10_000)
        self._count = 0
        self._last = (time.monotonic(), 0)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        self.client.will_set(
            self.topics.status, json.dumps({"state": "offline"}), qos=1, retain=True
        )
        if tls is not None:
            if not isinstance(tls, MqttTls):
                raise TypeError(f"MqttService: tls must be an MqttTls, got {tls!r}.")
            self.client.tls_set_context(tls.context())
        if password is not None and not username:
            raise ValueError("MqttService: a password needs a username.")
        if username:
            self.client.username_pw_set(username, password)
        self.tls = tls
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    # --- paho callbacks (the network thread) ---------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker %s:%d refused the connection: %s", self.host, self.port, reason_code)
            return
        log.info(
            "connected to %s:%d as %s (session present: %s)",
            self.host,
            self.port,
            self.client_id,
            flags.session_present,
        )
        # `connected` is set on the SUBACK, not here: a message published between the
        # CONNACK and the SUBACK of a first connection would have no subscription to go to.
        client.subscribe(self.topics.subscription, qos=1)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = [str(c) for c in reason_codes if c.is_failure]
        if refused:
            log.error(
                "broker %s:%d refused the subscription to %s: %s",
                self.host, self.port, self.topics.subscription, ", ".join(refused),
            )  # fmt: skip
            return
        self.connected.set()
        self._wake.set()

    def _on_connect_fail(self, client, userdata) -> None:
        log.error(
            "could not connect to %s:%d%s; retrying", self.host, self.port,
            " over TLS (is the CA right, and the host name in the broker's certificate?)"
            if self.tls is not None else "",
        )  # fmt: skip

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if self._stop.is_set():
            return
        if was:
            log.warning(
                "disconnected from %s:%d (%s); reconnecting", self.host, self.port, reason_code
            )
        else:  # closed before the broker accepted the connection
            log.error(
                "the broker %s:%d closed the connection before accepting it (%s)%s; retrying",
                self.host, self.port, reason_code,
                "" if self.tls is not None else ": does it require TLS (--tls-ca)?",
            )  # fmt: skip

    def _on_message(self, client, userdata, message) -> None:
        try:
            receipt = self.service.receive(message.topic, message.payload)
        except Exception:  # the store failed: no PUBACK, so the broker sends it again
            log.exception("could not store a message on %s; not acknowledged", message.topic)
            return
        if receipt.message is not None and receipt.outcome == "stored":
            with self._rx:
                self._received[receipt.message] = time.monotonic()
                while len(self._received) > 100_000:  # messages that caused no output
                    self._received.pop(next(iter(self._received)))
        client.ack(message.mid, message.qos)
        self._count += 1
        self._wake.set()

    # --- the worker ----------------------------------------------------------------------

    def start(self) -> MqttService:
        """Connect (retrying until the broker answers) and start processing."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry
        self.client.connect_async(
            self.host, self.port, self.keepalive, clean_start=False, properties=props
        )
        self.client.loop_start()
        self._thread = threading.Thread(target=self._work, name="twins-serve", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop processing, publish the status `stopped`, disconnect."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.connected.is_set():
            info = self.client.publish(
                self.topics.status, json.dumps({"state": "stopped"}), qos=1, retain=True
            )
            info.wait_for_publish(timeout=2.0)
        self.client.disconnect()
        self.client.loop_stop()

    def run(self, stop: threading.Event) -> None:
        """`start()`, wait for `stop`, `stop()`."""
        self.start()
        try:
            while not stop.wait(0.5):
                if self._thread is not None and not self._thread.is_alive():
                    raise RuntimeError("twins serve: the processing thread ended unexpectedly")
        finally:
            self.stop()

    def _work(self) -> None:
        last_status = 0.0
        while not self._stop.is_set():
            self._wake.wait(0.25)
            self._wake.clear()
            try:
                while not self._stop.is_set():
                    outs = self.service.process()
                    self._measure(outs)
                    self._publish()
                    if not outs and not self.service.store.pending(1):
                        break
                self._publish()
            except Exception:  # keep serving: the batch stays pending and is retried
                log.exception("processing failed; retrying")
                self._stop.wait(1.0)
            now = time.monotonic()
            if now - last_status >= self.status_every:
                self._status()
                last_status = now

    def _measure(self, outs) -> None:
        now = time.monotonic()
        for topic, body in outs:
            if topic != self.topics.recommendation:
                continue
            for seq in body.get("messages", ()):
                with self._rx:
                    t0 = self._received.pop(seq, None)
                if t0 is not None:
                    self._latency.append(now - t0)

    def _publish(self) -> None:
        done = [seq for seq, info in self._inflight.items() if info.is_published()]
        if done:
            self.service.store.mark_published(done)
            for seq in done:
                del self._inflight[seq]
        if not self.connected.is_set():
            return
        for seq, topic, payload in self.service.store.unpublished():
            if seq in self._inflight:
                continue
            info = self.client.publish(topic, payload, qos=1)
            if info.rc != 0:
                return  # not connected: tried again later
            self._inflight[seq] = info

    def _status(self) -> None:
        s = self.service.status()
        now, count = time.monotonic(), self._count
        rate = (count - self._last[1]) / max(now - self._last[0], 1e-9)
        self._last = (now, count)
        lat = np.asarray(self._latency) if self._latency else None
        body = {
            "state": "running" if self.connected.is_set() else "disconnected",
            **s,
            "received": self._count,
            "messages_per_s": rate,
            "latency_s": None
            if lat is None
            else {f"p{q}": float(np.percentile(lat, q)) for q in (50, 95, 99)},
        }
        log.info(
            "status: %d twins, %d messages received (%.1f/s), %d dead letters, latency %s",
            s["twins"],
            self._count,
            rate,
            s["dead_letters"],
            "-"
            if lat is None
            else "p50 {:.2f} s, p95 {:.2f} s, p99 {:.2f} s".format(
                *np.percentile(lat, [50, 95, 99])
            ),
        )
        if self.connected.is_set():
            self.client.publish(self.topics.status, json.dumps(body), qos=1, retain=True)

    def idle(self) -> bool:
        """Nothing pending, nothing unpublished, nothing waiting for the broker's PUBACK."""
        return (
            not self.service.store.pending(1)
            and not self.service.store.unpublished(1)
            and not self._inflight
        )
