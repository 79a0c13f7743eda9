"""The ClientApp of a federated population fit, and the Flower records its messages use.

Flower 1.42 runs each message a SuperNode receives in a new `flwr-clientapp` process.
Importing JAX, calibration and this package and compiling the model in every one of them
took 40-55 s per round for three hospitals on two cores. So the ClientApp is thin: it
imports only Flower, NumPy and the standard library, and hands each request to its
hospital's worker (`surrogates.federated._population_worker`), a process started next to
the SuperNode that holds the hospital's records, the consent decision and the compiled
model between rounds. They talk over a Unix socket in a folder only the hospital's user can
open (node config `worker-socket`), in length-prefixed JSON (no pickle).

This file is self-contained on purpose: `write_app` copies it into the Flower app (the
FAB) as `pkpd_population_client.py`, so that a ClientApp process loads it without
importing the `surrogates` package.

Messages (Flower type `query.population`):

- server -> hospital: `ConfigRecord` `"request"` (`kind`: `"hello"`, `"objective"` or
  `"modes"`; `start`) and `ArrayRecord` `"arrays"` (`points`: the `(2p + 1, p)` stencil of
  population values, or `x`: the estimate). Population values only, no data.
- hospital -> server: `ConfigRecord` `"reply"` (`hospital`, `n_subjects`,
  `rejected_subjects`, `n_converged`, `refused`, or `error`) and `ArrayRecord` `"arrays"`
  (`values`: its subjects' -log L at each point; `eta_sum`, `eta_sumsq`: sums of its
  subjects' conditional modes and of their squares). Sums over its subjects only.
"""

from __future__ import annotations

import json
import math
import socket
import struct
from collections.abc import Mapping
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

MESSAGE_TYPE = "query.population"
ARRAY_KEYS = ("values", "eta_sum", "eta_sumsq", "points", "x")
#: The largest worker message accepted (bytes): a stencil of 2p + 1 points is far less.
MAX_FRAME = 64 * 1024 * 1024


# ----------------------------------------------------------------------------- Flower records


def encode_request(kind: str, request: Mapping[str, Any]) -> RecordDict:
    """A request of the server as Flower records (population values only)."""
    arrays = {
        k: Array(np.asarray(request[k], dtype=float)) for k in ("points", "x") if k in request
    }
    content = RecordDict(
        {"request": ConfigRecord({"kind": kind, "start": bool(request.get("start", False))})}
    )
    if arrays:
        content["arrays"] = ArrayRecord(arrays)
    return content


def decode_request(content: RecordDict) -> tuple[str, dict[str, Any]]:
    """`(kind, request)` of a server request."""
    cfg = content["request"]
    request: dict[str, Any] = {"start": bool(cfg.get("start", False))}
    if "arrays" in content:
        for key, arr in cast(ArrayRecord, content["arrays"]).items():
            if key in ("points", "x"):
                request[key] = arr.numpy()
    return str(cfg["kind"]), request


def encode_reply(hospital: str, reply: Mapping[str, Any]) -> RecordDict:
    """A hospital's answer as Flower records: scalars in `"reply"`, arrays in `"arrays"`."""
    scalars: dict[str, Any] = {"hospital": hospital}
    arrays = {}
    for key, value in reply.items():
        if key in ARRAY_KEYS:
            arrays[key] = Array(np.asarray(value, dtype=float))
        elif isinstance(value, bool | int | float | str):
            scalars[key] = value
        elif isinstance(value, np.integer | np.floating):
            scalars[key] = value.item()
    content = RecordDict({"reply": ConfigRecord(scalars)})
    if arrays:
        content["arrays"] = ArrayRecord(arrays)
    return content


def decode_reply(message: Message) -> dict[str, Any]:
    """The server's reading of a hospital's reply message (a Flower error, or records it
    cannot read, become `{"error": ...}`; the values are checked by the server's
    `check_objective_reply`)."""
    if message.has_error():
        return {"error": f"its ClientApp failed (Flower error code {message.error.code})"}
    try:
        content = message.content
        out: dict[str, Any] = dict(content["reply"])
        if "arrays" in content:
            for key, arr in cast(ArrayRecord, content["arrays"]).items():
                if key in ARRAY_KEYS:
                    out[key] = arr.numpy()
        return out
    except Exception as error:  # a malformed message is a rejected answer, not a crash
        return {"error": f"a reply the server cannot read ({type(error).__name__})"}


# ----------------------------------------------------------------------------- the worker's wire


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {"__array__": value.astype(float).tolist(), "shape": list(value.shape)}
    if isinstance(value, np.integer | np.floating | np.bool_):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if "__array__" in value:
            return np.asarray(value["__array__"], dtype=float).reshape(value["shape"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def send_frame(sock: socket.socket, payload: Mapping[str, Any]) -> None:
    """One length-prefixed JSON message (floats round-trip exactly; `inf` as `Infinity`)."""
    data = json.dumps(_jsonable(payload), allow_nan=True).encode("utf-8")
    sock.sendall(struct.pack("!Q", len(data)) + data)


def recv_frame(sock: socket.socket) -> dict[str, Any]:
    """One message of `send_frame`; `ConnectionError` if the peer closed or sent too much."""
    head = _recv_exactly(sock, 8)
    (size,) = struct.unpack("!Q", head)
    if size > MAX_FRAME:
        raise ConnectionError(f"a worker message of {size} bytes (more than {MAX_FRAME})")
    return _from_json(json.loads(_recv_exactly(sock, size).decode("utf-8")))


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise ConnectionError("the peer closed the connection")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def ask_worker(path: str, payload: Mapping[str, Any], timeout: float) -> dict[str, Any]:
    """Send one request to the hospital's worker at the Unix socket `path` and wait for its
    answer (at most `timeout` s)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        send_frame(sock, payload)
        return recv_frame(sock)


# ----------------------------------------------------------------------------- the ClientApp

client_app = ClientApp()


@client_app.query("population")
def _population(message: Message, context: Context) -> Message:
    """A hospital's ClientApp: hands the server's request to the hospital's worker."""
    node, cfg = context.node_config, context.run_config
    name = str(node.get("hospital", ""))
    try:
        kind, request = decode_request(message.content)
        timeout = float(cfg.get("round-timeout", 300.0))
        reply = ask_worker(
            str(node["worker-socket"]),
            {
                "run": int(message.metadata.run_id),
                "kind": kind,
                "request": request,
                "config": {k: cfg.get(k, "") for k in ("model", "covariates", "estimator")},
            },
            timeout=timeout if math.isfinite(timeout) else 300.0,
        )
    except Exception as error:  # never the details: they may name a patient
        reply = {"error": f"the hospital's worker did not answer ({type(error).__name__})"}
    return Message(encode_reply(name, reply), reply_to=message)
