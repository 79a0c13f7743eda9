"""Reading FHIR JSON: a Bundle (dict or file) or a bulk-data NDJSON folder, each resource
validated by its `fhir.resources` R4B model, duplicates resolved, references indexed."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ._errors import Collector, FhirError

_NAIVE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?")


@dataclasses.dataclass(frozen=True)
class Resource:
    """One validated resource: `rtype`, `rid` (its id, or its bundle `fullUrl` without
    one), `full_url`, `raw` (the JSON), `model` (the fhir.resources R4B model)."""

    rtype: str
    rid: str
    full_url: str | None
    raw: Mapping[str, Any]
    model: Any

    @property
    def where(self) -> tuple[str, str]:
        return self.rtype, self.rid

    def at(self, field: str) -> tuple[str, str, str]:
        return self.rtype, self.rid, field


def _validation_error(rtype: str, rid: str, error: Any) -> FhirError:
    first = error.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ())) or "(resource)"
    value = first.get("input")
    msg = str(first.get("msg", "invalid"))
    if isinstance(value, str) and _NAIVE.fullmatch(value):
        detail = (
            f"expected a dateTime with a time zone (FHIR requires one when a time is given), "
            f"got {value!r} without one"
        )
    elif first.get("type") == "extra_forbidden":
        detail = "an element that the R4B resource does not define"
    elif first.get("type") == "missing":
        detail = "a required element is missing"
    else:
        detail = msg
    more = len(error.errors()) - 1
    tail = f" ({more} more problem(s) in this resource)" if more > 0 else ""
    return FhirError(rtype, rid, loc, f"{detail}; fhir.resources (R4B) refused it{tail}.")


def _model_class(rtype: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return get_fhir_model_class(rtype)
    except ValueError:
        return None


def _validate(raw: Any, full_url: str | None, fallback: str, col: Collector) -> Resource | None:
    from pydantic import ValidationError

    if not isinstance(raw, dict):
        col.fail(FhirError("Resource", fallback, "(resource)", "expected a JSON object."))
        return None
    rtype = raw.get("resourceType")
    rid = raw.get("id") if isinstance(raw.get("id"), str) and raw.get("id") else None
    ident = rid or full_url or fallback
    if not isinstance(rtype, str) or not rtype.strip():
        col.fail(FhirError("Resource", ident, "resourceType", "expected a resource type."))
        return None
    cls = _model_class(rtype)
    if cls is None:
        col.fail(FhirError(rtype, ident, "resourceType", "not a FHIR R4B resource type."))
        return None
    try:
        text: str | None = json.dumps(raw, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):  # not plain JSON: validated, never cached
        text = None
    model = None if text is None else _VALID.get(text)
    if model is None:
        try:
            model = cls.model_validate(raw)
        except ValidationError as error:
            col.fail(_validation_error(rtype, ident, error))
            return None
        if text is not None:
            _VALID.put(text, model)
    return Resource(rtype, ident, full_url, raw, model)


class _Validated:
    """The models of the resources validated last (canonical JSON -> model), at most
    `size`: a live service reads a patient's same resources again for every new level, and
    validation by fhir.resources is most of the cost of reading. A resource is looked up
    by its whole content, so a changed resource is validated again; invalid ones are not
    kept. The models are only read, never changed."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, text: str) -> Any:
        with self._lock:
            model = self._items.get(text)
            if model is not None:
                self._items.move_to_end(text)
            return model

    def put(self, text: str, model: Any) -> None:
        with self._lock:
            self._items[text] = model
            while len(self._items) > self.size:
                self._items.popitem(last=False)


_VALID = _Validated(20_000)


def _bundle_items(bundle: Any, name: str, col: Collector) -> Iterator[tuple[Any, str | None, str]]:
    from fhir.resources.R4B.bundle import Bundle
    from pydantic import ValidationError

    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        got = bundle.get("resourceType") if isinstance(bundle, dict) else type(bundle).__name__
        raise FhirError("Bundle", name, "resourceType", f"expected a Bundle, got {got!r}.")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise FhirError("Bundle", name, "entry", "expected a list of entries.")
    shell = {**bundle, "entry": [_without_resource(e) for e in entries]}
    try:
        Bundle.model_validate(shell)
    except ValidationError as error:
        raise _validation_error("Bundle", bundle.get("id") or name, error) from None
    for i, entry in enumerate(entries):
        full_url = entry.get("fullUrl") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or entry.get("resource") is None:
            method = (entry.get("request") or {}).get("method") if isinstance(entry, dict) else None
            if method == "DELETE":
                col.note("ignored", "Bundle", name, f"entry[{i}]", "a DELETE request: nothing read")
            else:
                col.fail(FhirError("Bundle", name, f"entry[{i}].resource", "expected a resource."))
            continue
        yield entry["resource"], full_url, f"{name}#entry[{i}]"


def _without_resource(entry: Any) -> Any:
    if isinstance(entry, dict):
        return {k: v for k, v in entry.items() if k != "resource"}
    return entry


def _ndjson_items(path: Path, col: Collector) -> Iterator[tuple[Any, str | None, str]]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line), None, f"{path.name}:{n}"
            except json.JSONDecodeError as error:
                col.fail(FhirError("NDJSON", f"{path.name}:{n}", "(line)", f"not JSON ({error})."))


def _items(source: Any, col: Collector) -> Iterator[tuple[Any, str | None, str]]:
    if isinstance(source, Mapping):
        yield from _bundle_items(dict(source), "bundle", col)
        return
    if not isinstance(source, str | os.PathLike):
        raise TypeError(
            f"read_fhir: expected a Bundle (a dict), a JSON or NDJSON file or an NDJSON folder, "
            f"got {type(source).__name__}."
        )
    path = Path(source)
    if path.is_dir():
        files = sorted(path.glob("*.ndjson"))
        if not files:
            raise FhirError("NDJSON", path.name, "(folder)", "expected *.ndjson files, found none.")
        for file in files:
            yield from _ndjson_items(file, col)
    elif path.suffix == ".ndjson":
        yield from _ndjson_items(path, col)
    elif path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise FhirError("Bundle", path.name, "(file)", f"not JSON ({error}).") from None
        yield from _bundle_items(data, path.name, col)
    else:
        raise FileNotFoundError(f"read_fhir: {path} does not exist.")


def _version(r: Resource) -> str | None:
    meta = r.raw.get("meta")
    v = meta.get("versionId") if isinstance(meta, dict) else None
    return v if isinstance(v, str) else None


def _later(a: str | None, b: str | None) -> bool | None:
    """Whether version `a` is later than `b` (None: they cannot be ordered)."""
    if a is not None and b is not None and a.isdigit() and b.isdigit():
        return int(a) > int(b)
    return None


def load(source: Any, col: Collector) -> list[Resource]:
    """Every resource of `source`, validated; identical duplicates and older versions
    listed in the report, conflicting duplicates refused."""
    kept: dict[tuple[str, str], Resource] = {}
    order: list[tuple[str, str]] = []
    for raw, full_url, fallback in _items(source, col):
        r = _validate(raw, full_url, fallback, col)
        if r is None:
            continue
        key = (r.rtype, r.rid)
        old = kept.get(key)
        if old is None:
            kept[key] = r
            order.append(key)
            continue
        v_old, v_new = _version(old), _version(r)
        if v_old == v_new:
            if json.dumps(old.raw, sort_keys=True) == json.dumps(r.raw, sort_keys=True):
                col.note("duplicate", r.rtype, r.rid, "(resource)", "an identical copy: read once")
            else:
                col.fail(
                    FhirError(
                        r.rtype,
                        r.rid,
                        "meta.versionId",
                        f"two different resources with the same id and version "
                        f"({v_new or 'none'}); expected one.",
                    )
                )
            continue
        later = _later(v_new, v_old)
        if later is None:
            col.fail(
                FhirError(
                    r.rtype,
                    r.rid,
                    "meta.versionId",
                    "two versions of one resource whose order is unknown (version ids that are "
                    "not both whole numbers); expected one version.",
                )
            )
            continue
        older = old if later else r
        if later:
            kept[key] = r
        col.note(
            "superseded",
            older.rtype,
            older.rid,
            "meta.versionId",
            f"version {_version(older)} superseded by a later version",
        )
    return [kept[k] for k in order]


class Index:
    """Finds the resource a `Reference.reference` names: `Type/id`, a bundle `fullUrl`
    (`urn:uuid:...`) or an absolute URL ending in `Type/id`."""

    def __init__(self, resources: list[Resource]):
        self._by: dict[str, Resource] = {}
        for r in resources:
            if r.full_url:
                self._by[r.full_url] = r
            if r.raw.get("id"):
                self._by[f"{r.rtype}/{r.raw['id']}"] = r

    def get(self, reference: str | None) -> Resource | None:
        if not reference:
            return None
        ref = reference.split("/_history/")[0]
        if ref in self._by:
            return self._by[ref]
        parts = ref.rstrip("/").split("/")
        if len(parts) >= 2:
            return self._by.get("/".join(parts[-2:]))
        return None
