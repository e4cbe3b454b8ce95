import pytest
import torch

from cnnlab.errors import UsageError
from cnnlab.models import MODELS, build_model, count_parameters


def test_smallcnn_has_the_chapters_parameter_count():
    assert count_parameters(build_model("smallcnn", 10)) == 288_746


def test_num_classes_sets_the_head():
    model = build_model("smallcnn", 100)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
    assert count_parameters(model) == 288_746 + 90 * 129


def test_no_batchnorm_variant_has_biases_and_no_bn():
    model = build_model("smallcnn-nobn", 10)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert all(m.bias is not None for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_every_registered_model_runs_forward_and_backward():
    for name in MODELS:
        model = build_model(name, 10)
        model(torch.randn(2, 3, 32, 32)).sum().backward()


def test_unknown_model_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown model 'resnet9000'"):
        build_model("resnet9000", 10)


def test_speedrun_widths_by_name():
    from cnnlab.recipe_files import load_recipe

    model = build_model("speedrun-48-192-192", 10)
    assert [stage.conv1.out_channels for stage in model.stages] == [48, 192, 192]
    assert count_parameters(model) == 1_113_336
    assert count_parameters(build_model("speedrun-32-128-128", 10)) == count_parameters(
        build_model("speedrun-small", 10)
    )
    assert load_recipe("speedrun-cpu", {"model": "speedrun-40-160-160"}).model == "speedrun-40-160-160"
    for bad in ["speedrun-48-192", "speedrun-0-128-128", "speedrun-48-192-192x"]:
        with pytest.raises(UsageError, match="speedrun-W1-W2-W3"):
            load_recipe("speedrun-cpu", {"model": bad})
