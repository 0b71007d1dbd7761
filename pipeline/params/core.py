"""The base of every params section, loading a stage's view of params.yaml, and the checks across sections.

Every section is a frozen pydantic model with ``extra="forbid"``: an unknown key, a wrong type (a
boolean where a number belongs, too) or a key written twice is a :class:`ConfigError` naming the
file, the key and the fix. A stage loads a :class:`StageParams` subclass holding just the sections
it reads (other top-level keys are the check stage's to validate, :mod:`pipeline.params.config`,
but a top-level key that is no section at all is refused by every stage: a misspelt ``selct:``
would otherwise leave the stage on its defaults, which for some stages means writing an empty output);
the checks across sections (a mixture naming an unknown shard, a shard of an unknown domain) run
for whichever of the sections involved the view holds.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

DEFAULT_PARAMS = Path("params.yaml")
SEP = "+"  # a generated mixture is named by its shards joined by SEP
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")  # shard and mixture names: file-safe, '+' allowed
NAME_CHARS = "letters, digits, '_', '.', '-', '+'"
# the top-level keys of params.yaml: the fields of pipeline.params.config.Config (a test keeps them equal;
# spelt out here because every stage checks them and config.py imports this module)
SECTIONS = frozenset({"seed", "threads", "device", "precision", "save_dtype", "prepare", "tokenize", "model", "base",
                      "train", "shards", "eval", "mixtures", "validation", "report", "rank", "recommend", "infer", "select"})


class ConfigError(ValueError):
    """A params file that cannot be used; the message names the file, the key and the fix."""


def _admits_bool(annotation: Any) -> bool:
    if annotation is bool:
        return True
    return any(_admits_bool(a) for a in getattr(annotation, "__args__", ()) or ())


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML's ``true`` is not 1: a boolean is accepted only where the key is a yes/no."""
        if isinstance(value, bool) and not _admits_bool(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"{value!r} is a boolean, not a {cls.model_fields[info.field_name].annotation}: write a number "
                             f"(booleans are not counts)")
        return value


PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
Threads = Annotated[int, Field(ge=0, description="torch threads of every stage that runs a model; 0 = all cores")]


def check_name(name: str, what: str) -> str:
    """``name`` if it is usable as a file name (shards and mixtures name folders), else ValueError."""
    if not NAME_RE.match(name):
        raise ValueError(f"{what} name {name!r} is not usable as a file name: use {NAME_CHARS}")
    return name


class StageParams(Section):
    """The sections of params.yaml one stage reads. The other sections are ignored here (the check
    stage validates the whole file; :func:`load` refuses a key that is no section); the checks across
    sections run for those present."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    @model_validator(mode="after")
    def _across_sections(self) -> StageParams:
        fields = type(self).model_fields
        shards = getattr(self, "shards", None) if "shards" in fields else None
        prepare = getattr(self, "prepare", None) if "prepare" in fields else None
        if prepare is not None and not prepare.local:  # local files' domains are known only once read (prepare checks)
            known = set(prepare.domains)
            for name, spec in (shards or {}).items():
                if spec.domain not in known:
                    raise ValueError(f"shards.{name}.domain: unknown domain {spec.domain!r}; known: {sorted(known)} "
                                     f"(add it to prepare.domains)")
            if "eval" in fields:
                for d in self.eval.domains or []:
                    if d not in known:
                        raise ValueError(f"eval.domains: unknown domain {d!r}; known: {sorted(known)}")
        if shards is not None:
            for section in ("mixtures", "validation"):
                if section in fields:
                    getattr(self, section).check_shards(list(shards))
        return self


def _file_keys(loc: tuple, raw: Any, missing: bool) -> list[str]:
    """The keys of the file in an error's location. pydantic also puts there the branch of a union
    that failed (``constrained-int``, ``literal['auto']``); those are dropped by walking the file's
    own data along the location, so that a shard or target named ``int`` keeps its name. A key the
    file lacks is kept only as the last element of a ``missing`` error."""
    keys, node = [], raw
    for n, p in enumerate(loc):
        if isinstance(node, dict) and p in node:
            keys.append(str(p))
            node = node[p]
        elif isinstance(node, list) and isinstance(p, int) and 0 <= p < len(node):
            keys.append(str(p))
            node = node[p]
        elif missing and n == len(loc) - 1:
            keys.append(str(p))
    return keys


def _format_error(path: Path, err: ValidationError, raw: Any = None) -> str:
    """One line per key: ``key: what is wrong (got value)``; a value that no branch of a union takes
    (``int >= 1 | "auto"``) is one line joining what each branch wanted."""
    keyed: dict[str, tuple[list[str], str]] = {}
    for e in err.errors():
        loc = _file_keys(e["loc"], raw, e["type"] == "missing") if raw is not None else [str(p) for p in e["loc"]]
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see params.yaml in the repository for the known keys)"
        elif e["type"] == "missing":
            msg = "missing required key"
        elif e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        if not loc and re.match(r"^[\w.+-]+: ", msg):  # a check across sections names its key itself
            key, msg = msg.split(": ", 1)
        else:
            key = ".".join(loc) or "(top level)"
        shown = e["type"] not in ("extra_forbidden", "missing") and not isinstance(e.get("input"), dict) and loc
        got = f" (got {e['input']!r})" if shown else ""
        msgs, _ = keyed.setdefault(key, ([], got))
        if msg not in msgs:
            msgs.append(msg)
    lines = [f"{path}: invalid parameters"]
    lines += [f"  {key}: {' or '.join(msgs)}{got}" for key, (msgs, got) in keyed.items()]
    return "\n".join(lines)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML keeps the last of two equal keys silently; a params file that says a thing twice is a mistake."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (first at line {seen[key].start_mark.line + 1}): "
                    f"YAML would keep only the last one; remove or rename one of them", key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def read_params(path: str | Path) -> Any:
    """The params file as plain data; duplicate keys are an error."""
    return yaml.load(Path(path).read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


M = TypeVar("M", bound=BaseModel)


def load(path: str | Path, model: type[M]) -> M:
    """Read params file ``path`` and validate it as ``model``; ConfigError naming the file and key."""
    path = Path(path)
    try:
        raw = read_params(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (run from the repository root or pass --params FILE)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    unknown = [k for k in raw if k not in SECTIONS]
    if unknown and issubclass(model, StageParams):
        lines = [f"{path}: invalid parameters"]
        for k in unknown:
            near = difflib.get_close_matches(str(k), sorted(SECTIONS), n=1)
            read_as = " (YAML reads an unquoted on/off/yes/no/null as a value: quote the key)" if isinstance(k, (bool, type(None))) else ""
            lines.append(f"  {k if isinstance(k, str) else repr(k)}: unknown top-level key{read_as}" + (f" (did you mean {near[0]!r}?)" if near else "")
                         + f"; the sections are {', '.join(sorted(SECTIONS))}")
        raise ConfigError("\n".join(lines))
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(path, e, raw)) from None
