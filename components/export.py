from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components.image import KDFLOW_IMAGE


@dsl.component(base_image=KDFLOW_IMAGE, install_kfp_package=False)
def export(config: Input[Artifact], dataset: Input[Dataset], student: Input[Model], evaluation: Input[Artifact],
           pipeline_run_id: str, exported: Output[Model], metrics: Output[Metrics], report: Output[Markdown]) -> bool:
    """ONNX fp32, ONNX int8 and TorchScript, verified; returns the final gate (quality and parity)."""
    import shutil

    from kdflow import steps
    from kdflow.config import load_config
    from kdflow.infra.kfp_io import log_scalar_metrics

    result = steps.export_student(load_config(config.path), dataset.path, student.path, evaluation.path, exported.path,
                                  steps.RunContext(pipeline_run_id))
    for form, r in result["forms"].items():
        log_scalar_metrics(metrics, {k: v for k, v in r.items() if k != "manifest"}, prefix=f"{form}_")
    exported.metadata.update({"formats": sorted(result["forms"]), "parity_ok": result["parity_ok"],
                              "gate_passed": result["gate"]["passed"]})
    shutil.copyfile(f"{exported.path}/report.md", report.path)
    return bool(result["gate"]["passed"])
