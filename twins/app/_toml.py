"""Reading the values of a TOML document with checks, for the trial specs.

`TomlReader` reads one document: tables with known keys (an unknown key is refused, with the
closest known one as a hint), strings, words, numbers and integers within bounds, booleans,
arrays, paths relative to the document's folder and the results folder, which must stay
inside it. Every error is a `SpecError` naming the document, the entry (`key_path`) and
what was expected. What the entries of a trial spec are is `twins.app._spec`'s.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class SpecError(ValueError):
    """A trial spec that cannot be built. The message names the file, the entry and what
    was expected."""


def read_document(path_or_text: Any, who: str) -> tuple[Any, str, Path]:
    """`(data, source, base_dir)` of a TOML spec given as a path or as TOML text: the parsed
    document, what errors call it (the path, or `"<text>"`) and the folder its relative paths
    are relative to (the file's, or the working directory).

    **Raises:** `FileNotFoundError` for a path that does not exist, `SpecError` for text that
    is not TOML, `TypeError` for something that is neither (`who` names the caller)."""
    if isinstance(path_or_text, os.PathLike) or not _looks_like_text(path_or_text, who):
        path = Path(path_or_text)
        if not path.is_file():
            raise FileNotFoundError(f"{who}: no trial spec file {str(path)!r}.")
        text, source, base = path.read_text(encoding="utf-8"), str(path), path.resolve().parent
    else:
        text, source, base = path_or_text, "<text>", Path.cwd()
    try:
        return tomllib.loads(text), source, base
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"{source}: not valid TOML: {error}.") from error


def _looks_like_text(value: Any, who: str) -> bool:
    if not isinstance(value, str):
        raise TypeError(f"{who}: expected a path or TOML text, got {type(value).__name__}.")
    if "\n" in value:
        return True
    return "=" in value and not Path(value).is_file()


def kind_of(value: Any) -> str:
    """What a TOML value is, in words (for error messages)."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the float {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list | tuple):
        return f"an array of {len(value)}"
    if isinstance(value, Mapping):
        return "a table"
    return f"{type(value).__name__} {value!r}"


def key_path(where: str, key: str) -> str:
    """The entry `key` inside `where`, as error messages name it (`arms[1].rules`; a key
    that is not a plain word is quoted)."""
    part = key if key.replace("_", "").isalnum() else f'"{key}"'
    return f"{where}.{part}" if where else part


@dataclasses.dataclass(frozen=True)
class TomlReader:
    """Reads the values of one document; knows where it came from, for error messages and
    relative paths.

    **Fields:** `source` (what error messages call the document: its path, `"<text>"`,
    `"<dict>"`), `base_dir` (the folder that relative paths are relative to).
    """

    source: str
    base_dir: Path

    def error(self, where: str, message: str) -> SpecError:
        return SpecError(f"{self.source}: {where or 'top level'}: {message}")

    def table(
        self,
        value: Any,
        where: str,
        required: tuple[str, ...] = (),
        optional: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise self.error(where, f"expected a table, got {kind_of(value)}.")
        allowed = tuple(dict.fromkeys((*required, *optional)))
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.error(
                    key_path(where, str(key)),
                    f"unknown key{hint}; expected one of {sorted(allowed)}.",
                )
        for key in required:
            if key not in value:
                raise self.error(where, f"missing required key {key!r}.")
        return dict(value)

    def mapping(self, value: Any, where: str) -> dict[str, Any]:
        """A table with free keys (names of ancestries, medications, alleles)."""
        if not isinstance(value, Mapping):
            raise self.error(where, f"expected a table, got {kind_of(value)}.")
        return {str(k): v for k, v in value.items()}

    def string(self, value: Any, where: str, choices: tuple[str, ...] | None = None) -> str:
        if not isinstance(value, str):
            raise self.error(where, f"expected a string, got {kind_of(value)}.")
        if choices is not None and value not in choices:
            raise self.error(where, f"expected one of {list(choices)}, got {value!r}.")
        return value

    def word(self, value: Any, where: str) -> str:
        text = self.string(value, where)
        if not text or not text.replace("_", "").isalnum() or not text.isascii():
            raise self.error(where, f"expected a word of [A-Za-z0-9_], got {text!r}.")
        return text

    def number(
        self,
        value: Any,
        where: str,
        *,
        low: float | None = None,
        low_open: bool = False,
        high: float | None = None,
    ) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(where, f"expected a number, got {kind_of(value)}.")
        x = float(value)
        if not math.isfinite(x):
            raise self.error(where, f"expected a finite number, got {value!r}.")
        if low is not None and (x <= low if low_open else x < low):
            raise self.error(
                where, f"expected a number {'>' if low_open else '>='} {low:g}, got {value!r}."
            )
        if high is not None and x > high:
            raise self.error(where, f"expected a number <= {high:g}, got {value!r}.")
        return x

    def integer(
        self, value: Any, where: str, *, low: int | None = None, high: int | None = None
    ) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(where, f"expected an integer, got {kind_of(value)}.")
        if low is not None and value < low:
            raise self.error(where, f"expected an integer >= {low}, got {value}.")
        if high is not None and value > high:
            raise self.error(where, f"expected an integer <= {high}, got {value}.")
        return int(value)

    def boolean(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(where, f"expected true or false, got {kind_of(value)}.")
        return value

    def array(
        self, value: Any, where: str, item: Callable[[Any, str], T], *, min_len: int = 0
    ) -> list[T]:
        if not isinstance(value, list | tuple):
            raise self.error(where, f"expected an array, got {kind_of(value)}.")
        if len(value) < min_len:
            raise self.error(where, f"expected at least {min_len} entries, got {len(value)}.")
        return [item(v, f"{where}[{i}]") for i, v in enumerate(value)]

    def strings(self, value: Any, where: str) -> tuple[str, ...]:
        return tuple(self.array(value, where, self.string))

    def numbers(self, value: Any, where: str, **bounds: Any) -> tuple[float, ...]:
        return tuple(self.array(value, where, lambda v, w: self.number(v, w, **bounds)))

    def path(self, value: Any, where: str) -> Path:
        path = Path(self.string(value, where)).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def out_folder(self, value: Any, where: str) -> Path:
        """The results folder of `[run] out`: relative to the spec's folder, and inside it.
        A spec may not send results elsewhere (an absolute path, `~`, `..` or a link that
        leaves the folder); the user can, with `--out` on the command line."""
        text = self.string(value, where)
        path = Path(text)
        if not text.strip() or path.is_absolute() or text.startswith("~"):
            raise self.error(
                where,
                f"expected a folder relative to the spec's folder, got {text!r}; a spec may not "
                "write its results elsewhere (pass `--out` on the command line, or `out=` to "
                "run_trial, to choose any folder).",
            )
        base = self.base_dir.resolve()
        resolved = (base / path).resolve()
        if resolved == base or not resolved.is_relative_to(base):
            raise self.error(
                where,
                f"{text!r} leaves the spec's folder {str(base)!r} (it resolves to "
                f"{str(resolved)!r}); a spec may only write into a subfolder of its own folder "
                "(pass `--out` on the command line to choose any folder).",
            )
        return resolved
