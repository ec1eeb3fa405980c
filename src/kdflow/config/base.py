"""The base of every config section: unknown keys, inf and NaN are errors; assignments are validated."""

from typing import Any

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def amp_off(v: Any) -> Any:
    """YAML 1.1 reads a bare ``off`` (``--set train.amp=off``) as false: that means amp off, not an error."""
    return "off" if v is False else v
