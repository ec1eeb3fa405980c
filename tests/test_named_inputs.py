"""Named inputs (#27) without data: which inputs a model may ask for, what it reads of a packed row, what a
checkpoint records, what is exported and how predict normalises. The packaged dataset is in test_multiview.py."""

from __future__ import annotations

import pytest
import torch

from kdflow.config import Config
from kdflow.data.batches import Normalizer
from kdflow.data.multiview import layout
from kdflow.errors import ConfigError, ModelError
from kdflow.infra.checkpoints import load_model, save_model
from kdflow.models.inputs import FusionMLP, Selected, build_for_data, build_selected, resolve_names

pytestmark = pytest.mark.unit
LAYOUT = layout()
WIDTH = 649


def test_the_layout_covers_the_six_views_once_and_names_the_pixel_view_as_an_image():
    views = [v for n, v in LAYOUT.items() if n.startswith("view:")]
    assert sum(v["columns"][1] - v["columns"][0] for v in views) == WIDTH == max(v["columns"][1] for v in views)
    assert LAYOUT["image"] == {"columns": LAYOUT["view:pix"]["columns"], "shape": [1, 16, 15]}


def test_inputs_are_checked_against_the_dataset_in_one_line():
    assert resolve_names(None, LAYOUT, "student.inputs", "multiview-digits") == [n for n in LAYOUT if "view:" in n]
    assert resolve_names(None, None, "student.inputs", "fashion-mnist") == ["image"]
    with pytest.raises(ConfigError, match="student.inputs: 'view:rgb' is not an input of multiview-digits"):
        resolve_names(["view:rgb"], LAYOUT, "student.inputs", "multiview-digits")
    with pytest.raises(ConfigError, match="fashion-mnist has one input, image"):
        resolve_names(["view:fou"], None, "student.inputs", "fashion-mnist")
    with pytest.raises(ConfigError, match="names an input twice"):
        resolve_names(["view:fou", "view:fou"], LAYOUT, "teacher.inputs", "multiview-digits")


def test_a_selected_model_reads_only_its_own_columns():
    torch.manual_seed(0)
    model = build_selected("mlp", 10, ["view:zer"], LAYOUT).eval()
    x = torch.randn(4, WIDTH)
    y = x.clone()
    a, b = LAYOUT["view:zer"]["columns"]
    y[:, :a], y[:, b:] = torch.randn(4, a), torch.randn(4, WIDTH - b)  # every other view changed
    assert torch.equal(model(x), model(y))
    y[:, a] += 1.0
    assert not torch.equal(model(x), model(y))


def test_an_image_model_sees_the_pixel_view_as_a_16x15_image():
    model = build_selected("cnn-small", 10, ["image"], LAYOUT).eval()
    seen = {}
    model.core.block1.register_forward_hook(lambda m, i, o: seen.update(shape=i[0].shape))
    assert model(torch.randn(2, WIDTH)).shape == (2, 10)
    assert tuple(seen["shape"]) == (2, 1, 16, 15)


def test_fusion_takes_a_mapping_and_feature_inputs_refuse_image_models():
    model = build_selected("fusion-mlp", 10, ["view:fou", "view:mor"], LAYOUT)
    assert isinstance(model.core, FusionMLP) and list(model.core.encoders) == ["view:fou", "view:mor"]
    assert model.eval()(torch.randn(3, WIDTH)).shape == (3, 10)
    with pytest.raises(ModelError, match="use mlp, linear, fusion-mlp for feature inputs"):
        build_selected("resnet20", 10, ["view:fou"], LAYOUT)


def test_image_data_builds_the_image_model_as_before():
    torch.manual_seed(0)
    a = build_for_data("cnn-small", 10, (1, 28, 28), None, None, "student.inputs", "fashion-mnist")
    assert not isinstance(a, Selected) and a.fc.in_features == 16 * 7 * 7


@pytest.mark.parametrize(("names", "arch"), [(["view:fou"], "mlp"), (["image"], "cnn-small"), (None, "fusion-mlp")])
def test_what_is_deployed_is_the_model_on_its_inputs_alone(names, arch):
    torch.manual_seed(0)
    model = build_for_data(arch, 10, (WIDTH,), LAYOUT, names, "student.inputs", "multiview-digits").eval()
    x = torch.randn(5, WIDTH)
    core, shape = model.deployable()
    own = x[:, torch.tensor(model.columns())].reshape(5, *shape)
    with torch.no_grad():
        assert torch.allclose(core.eval()(own), model(x))
    if names == ["view:fou"]:
        assert shape == (76,)
    if names == ["image"]:
        assert shape == (1, 16, 15)


def test_a_checkpoint_records_its_inputs_and_loads_them_back(tmp_path):
    torch.manual_seed(0)
    model = build_selected("mlp", 10, ["view:kar"], LAYOUT).eval()
    save_model(model, "mlp", 10, 1, 0, tmp_path / "m.pt")
    loaded, meta = load_model(tmp_path / "m.pt")
    assert isinstance(loaded, Selected) and meta["inputs"]["names"] == ["view:kar"]
    x = torch.randn(3, WIDTH)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_the_normaliser_works_per_column_and_per_element_and_never_in_place():
    rows = torch.randn(4, 6) * 3 + 1
    keep = rows.clone()
    mean, std = tuple(rows.mean(0).tolist()), tuple(rows.std(0).tolist())
    out = Normalizer(mean, std, 1.0)(rows)
    assert torch.equal(rows, keep)  # a float split is never normalised in place
    assert torch.allclose(out.mean(0), torch.zeros(6), atol=1e-5)
    image = rows.reshape(4, 1, 2, 3)
    assert torch.allclose(Normalizer(mean, std, 1.0)(image).reshape(4, 6), out)  # a view shaped as an image


def test_image_only_methods_are_refused_for_feature_rows():
    base = {"data": {"dataset": "multiview-digits"}}
    for extra in (
        {"distill": {"data_free": True, "method": "dfad"}},
        {"distill": {"method": "ard"}},
        {"train": {"mix": "mixup"}},
    ):
        with pytest.raises(ValueError, match="holds feature rows"):
            Config.model_validate({**base, **extra})


def test_a_class_count_is_chosen_only_for_the_dataset_that_has_one():
    assert Config.model_validate({"data": {"dataset": "wordnet-supersense", "num_classes": 5}}).data.supersenses == 5
    with pytest.raises(ValueError, match="data.num_classes: multiview-digits has a fixed label set"):
        Config.model_validate({"data": {"dataset": "multiview-digits", "num_classes": 5}})
