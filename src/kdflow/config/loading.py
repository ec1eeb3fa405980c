"""Loading a config: YAML file or text, profile merged over the base, ``--set`` overrides, one-line errors."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kdflow.config.sections import Config
from kdflow.errors import ConfigError


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are kept as JSON strings."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """'distill.temperature=4' -> (['distill', 'temperature'], 4). Values are parsed as YAML."""
    if "=" not in text:
        raise ConfigError(
            "--set", f"'{text}' is not KEY=VALUE", "write it as section.key=value, e.g. distill.temperature=4"
        )
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError("--set", f"'{text}' has an empty key", "write it as section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(
                    ".".join(parts), f"'{p}' is not a section", "set a leaf key such as distill.temperature"
                )
            node = nxt
        node[parts[-1]] = value
    return out


def _format_validation_error(err: ValidationError) -> ConfigError:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        parent_loc = first["loc"][:-1]
        model: Any = Config
        for p in parent_loc:
            field = model.model_fields.get(str(p)) if hasattr(model, "model_fields") else None
            ann = getattr(field, "annotation", None)
            model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            if model is None:
                break
        known = ", ".join(model.model_fields) if model is not None else "see README"
        return ConfigError(loc, "unknown config key (typo?)", f"remove it or use one of: {known}")
    msg = first["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    named = re.match(r"^([a-z_]+(?:\.[a-z_]+)+): (.*)$", msg, re.S)
    if named and (not loc or named.group(1).startswith(loc + ".")):  # the check names its field: "data.store_size: ..."
        loc, msg = named.group(1), named.group(2)
    elif loc and (own := re.match(r"^([a-z_]+): (.*)$", msg, re.S)):  # a section's check names its own field
        loc, msg = f"{loc}.{own.group(1)}", own.group(2)
    if "; fix:" in msg:
        problem, fix = msg.split("; fix:", 1)
        return ConfigError(loc or "config", problem.strip(), fix.strip())
    got = first.get("input")
    return ConfigError(loc, f"{msg} (got {got!r})", f"correct {loc} in the config or with --set {loc}=...")


def build_config(raw: dict[str, Any], profile: str | None = None, overrides: list[str] | None = None) -> Config:
    """Merge base + profile + overrides and validate into a Config."""
    raw = copy.deepcopy(raw or {})
    profiles = raw.pop("profiles", {}) or {}
    resolved_profile = raw.pop("profile", None)  # set in a resolved config
    profile = profile or resolved_profile
    if profile and profile != "base" and profile != resolved_profile:
        if profile not in profiles:
            names = ", ".join(sorted(profiles)) or "none defined"
            raise ConfigError("--profile", f"unknown profile '{profile}'", f"use one of: {names}")
        raw = _deep_merge(raw, profiles[profile])
    raw = apply_overrides(raw, overrides or [])
    raw["profile"] = profile or "base"
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise _format_validation_error(err) from None


def load_config(
    path: str | os.PathLike | None, profile: str | None = None, overrides: list[str] | None = None
) -> Config:
    """Load a YAML experiment file (or embedded defaults when path is None)."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(
                "--config", f"file '{p}' not found", "pass an existing YAML file, e.g. configs/fashion_mnist.yaml"
            )
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            line = getattr(getattr(e, "problem_mark", None), "line", None)
            where = f" at line {line + 1}" if line is not None else ""
            raise ConfigError("--config", f"'{p}' is not valid YAML{where}", "fix the YAML syntax") from None
        if not isinstance(raw, dict):
            raise ConfigError("--config", f"'{p}' must hold a mapping of sections", "see configs/fashion_mnist.yaml")
    return build_config(raw, profile, overrides)


def config_from_yaml_text(text: str, profile: str | None = None, overrides: list[str] | None = None) -> Config:
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        raise ConfigError("config_yaml", "is not valid YAML", "pass the text of a config file") from None
    return build_config(raw, profile, overrides)


def write_resolved(cfg: Config, out_dir: str | os.PathLike) -> Path:
    """Write config.resolved.yaml next to a step's outputs (atomically)."""
    from kdflow.infra.io import atomic_write_text

    path = Path(out_dir) / "config.resolved.yaml"
    atomic_write_text(path, cfg.to_yaml())
    return path
