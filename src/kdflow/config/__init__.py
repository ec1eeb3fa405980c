"""Experiment configuration: one YAML file, typed sections, profiles and ``--set`` overrides.

A config file holds the sections at top level plus an optional ``profiles:`` mapping from a profile
name to a partial config that is deep-merged over the base. Unknown keys are errors.
"""

from kdflow.config.distill import DistillConfig, ExtraTeacher, FeatureLossSpec

# The prep_data component imports knob_overrides from here, and its source is embedded verbatim in the
# compiled pipeline YAML (golden-tested), so the mapping in kdflow.config.knobs is re-exported here.
from kdflow.config.knobs import KNOB_KEYS, knob_overrides
from kdflow.config.loading import (
    apply_overrides,
    build_config,
    config_from_yaml_text,
    flatten,
    load_config,
    parse_override,
    write_resolved,
)
from kdflow.config.release import EvaluateConfig, ExportConfig, GateConfig, StorageConfig, TrackingConfig
from kdflow.config.sections import Config, DataConfig, StudentConfig, TeacherConfig, TrainConfig
from kdflow.config.tune import SearchSpace, TuneConfig

__all__ = [
    "Config",
    "DataConfig",
    "DistillConfig",
    "EvaluateConfig",
    "ExportConfig",
    "ExtraTeacher",
    "FeatureLossSpec",
    "GateConfig",
    "KNOB_KEYS",
    "StorageConfig",
    "StudentConfig",
    "TeacherConfig",
    "TrackingConfig",
    "TrainConfig",
    "SearchSpace",
    "TuneConfig",
    "apply_overrides",
    "build_config",
    "config_from_yaml_text",
    "flatten",
    "knob_overrides",
    "load_config",
    "parse_override",
    "write_resolved",
]
