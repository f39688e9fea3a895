"""Config entries as HTML forms, generated from the pydantic models of monitor.config (a field added to
`TopicConfig` appears in the editor with no change here), and the topic operations the pages and the API
share: save (create or edit) and delete, each validated, written to feeds.toml and audited."""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Engine

from monitor.app.admin import configfile
from monitor.config import Config, TopicConfig

# Text fields shown as a textarea (a sentence or two) rather than one line.
_LONG_TEXT = {"description"}


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    kind: str  # text | longtext | lines | groups | number | integer | checkbox | choice
    label: str
    help: str
    required: bool
    choices: tuple[str, ...] = ()
    default_on: bool = False  # a checkbox ticked in the form of a new entry (the field defaults to True)


def _kind(name: str, annotation: Any) -> tuple[str, tuple[str, ...]]:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _kind(name, args[0])
    if origin is typing.Literal:
        return "choice", tuple(str(a) for a in typing.get_args(annotation))
    if origin is list:
        inner = typing.get_args(annotation)[0]
        return ("groups" if typing.get_origin(inner) is list else "lines"), ()
    if annotation is bool:
        return "checkbox", ()
    if annotation is float:
        return "number", ()
    if annotation is int:
        return "integer", ()
    return ("longtext" if name in _LONG_TEXT else "text"), ()


def form_fields(model: type[BaseModel]) -> list[FieldSpec]:
    out = []
    for name, f in model.model_fields.items():
        kind, choices = _kind(name, f.annotation)
        out.append(FieldSpec(name=name, kind=kind, label=name.replace("_", " ").capitalize(),
                             help=f.description or "", required=f.is_required(), choices=choices,
                             default_on=kind == "checkbox" and f.default is True))
    return out


def form_values(model: BaseModel | None, specs: list[FieldSpec]) -> dict[str, str]:
    """The text each form control shows for `model` (empty for a new entry)."""
    out: dict[str, str] = {}
    for spec in specs:
        v = getattr(model, spec.name, None) if model is not None else None
        if model is None and spec.default_on:  # an unticked box would mean False: show the default
            out[spec.name] = "on"
        elif v is None:
            out[spec.name] = ""
        elif spec.kind == "lines":
            out[spec.name] = "\n".join(v)
        elif spec.kind == "groups":
            out[spec.name] = "\n".join(", ".join(g) for g in v)
        elif spec.kind == "checkbox":
            out[spec.name] = "on" if v else ""
        else:
            out[spec.name] = str(v)
    return out


def parse_form(form: Mapping[str, str], specs: list[FieldSpec]) -> dict[str, Any]:
    """Form text back to the model's input (validation is the model's: an unparsable number is passed on as
    text so the error names the field)."""
    data: dict[str, Any] = {}
    for spec in specs:
        raw = (form.get(spec.name) or "").replace("\r\n", "\n")
        if spec.kind == "lines":
            data[spec.name] = [line.strip() for line in raw.split("\n") if line.strip()]
        elif spec.kind == "groups":
            groups = [[t.strip() for t in line.split(",") if t.strip()] for line in raw.split("\n")]
            data[spec.name] = [g for g in groups if g]
        elif spec.kind == "checkbox":
            data[spec.name] = bool(raw)
        elif spec.kind in ("number", "integer"):
            if raw.strip():
                data[spec.name] = raw.strip()
            elif not spec.required:
                data[spec.name] = None
        elif raw.strip() or spec.required:
            data[spec.name] = raw.strip()
    return data


TOPIC_FIELDS = form_fields(TopicConfig)


# --- topic operations (pages and API) ---------------------------------------------------------------------


def find_topic(config: Config, topic_id: str) -> TopicConfig | None:
    return next((t for t in config.topics if t.id == topic_id), None)


def set_topic_enabled(engine: Engine, path: Path, topic_id: str, enabled: bool, *, actor: str) -> bool:
    """Enable or disable a topic (a disabled one stays in feeds.toml but matches nothing): saved like any
    topic edit, audited as `topic.enable` / `topic.disable`; False when there is no such topic."""
    config, _sha = configfile.current_config(path)
    old = find_topic(config, topic_id)
    if old is None:
        return False
    new = old.model_copy(update={"enabled": enabled})
    text = configfile.read_text(path)
    new_text = configfile.upsert_entry(text, "topics", "id", topic_id, new)
    configfile.save_config_text(engine, path, new_text, actor=actor,
                                action="topic.enable" if enabled else "topic.disable", target=topic_id,
                                diff=configfile.entry_diff(old, new) or "(no change)",
                                expected_sha=configfile.sha256(text))
    return True


def save_topic(engine: Engine, path: Path, topic: TopicConfig, *, original_id: str | None, actor: str,
               expected_sha: str | None = None) -> configfile.Saved:
    """Create (`original_id` None) or replace a topic in feeds.toml, validated as a whole configuration,
    written with comments kept, audited with the field-by-field diff."""
    config, _sha = configfile.current_config(path)
    if original_id is None:
        if find_topic(config, topic.id) is not None:
            raise configfile.FieldErrors({"id": f"a topic with the id {topic.id!r} already exists"})
        old = None
    else:
        old = find_topic(config, original_id)
        if old is None:
            raise configfile.FieldErrors({"": f"there is no topic {original_id!r} (deleted meanwhile?)"})
        if topic.id != original_id:
            raise configfile.FieldErrors({"id": "a topic's id cannot change (subscriptions and stories use it)"})
    text = configfile.read_text(path)
    new_text = configfile.upsert_entry(text, "topics", "id", original_id or topic.id, topic)
    diff = configfile.entry_diff(old, topic)
    return configfile.save_config_text(engine, path, new_text, actor=actor,
                                       action="topic.create" if old is None else "topic.update",
                                       target=topic.id, diff=diff or "(no change)",
                                       expected_sha=expected_sha or configfile.sha256(text))


def delete_topic(engine: Engine, path: Path, topic_id: str, *, actor: str,
                 expected_sha: str | None = None) -> configfile.Saved:
    config, _sha = configfile.current_config(path)
    old = find_topic(config, topic_id)
    if old is None:
        raise configfile.FieldErrors({"id": f"there is no topic {topic_id!r}"})
    text = configfile.read_text(path)
    new_text = configfile.upsert_entry(text, "topics", "id", topic_id, None)
    return configfile.save_config_text(engine, path, new_text, actor=actor, action="topic.delete", target=topic_id,
                                       diff=configfile.entry_diff(old, None),
                                       expected_sha=expected_sha or configfile.sha256(text))
