"""Recipes: each field declared once (checks, flags, README), model options, and shortened recipes that keep
their shape."""

from __future__ import annotations

import warnings
from dataclasses import replace

import pytest

from cnnlab.device import CPU_KINDS
from cnnlab.errors import CnnlabWarning, UsageError
from cnnlab.recipe import Recipe
from cnnlab.recipe_files import load_recipe, recipe_from_dict, rescaled


def test_every_field_is_declared_and_checked_by_its_declaration():
    from dataclasses import fields

    from cnnlab.recipe import declaration

    for f in fields(Recipe):
        knob = declaration(f)
        assert knob.help and knob.group
    for field_name, bad in (
        ("momentum", 1.0),
        ("batch_size", 0),
        ("schedule", "fast"),
        ("val_split", "2.5"),
        ("lr", float("nan")),
        ("seed", -3),
        ("image_size", 4),
    ):
        with pytest.raises(UsageError) as caught:
            load_recipe("seed", {field_name: bad})
        assert caught.value.parameters == (field_name,) and field_name in str(caught.value)


def test_model_options_exist_only_for_the_models_that_take_them():
    assert load_recipe("seed").model_options == {}  # SmallCNN has none, and its config shows none
    speedrun = load_recipe("speedrun-cpu", {"model_options": {"whiten": False}})
    assert speedrun.model_options == {"whiten": False, "identity_init": True, "whiten_gelu": True}
    with pytest.raises(UsageError, match="model smallcnn has no option whiten"):
        load_recipe("seed", {"model_options": {"whiten": False}})
    with pytest.raises(UsageError, match="applies to the speedrun models only"):
        load_recipe("seed", {"whiten_bias_epochs": 2.0})
    # A recipe saved by an older cnnlab kept the speedrun switches on every model: still readable.
    old = {**Recipe().to_dict(), "whiten": True, "identity_init": True}
    del old["model_options"]
    assert recipe_from_dict(old).model_options == {}
    old_speedrun = {**old, "model": "speedrun-small", "whiten": False}
    assert recipe_from_dict(old_speedrun).model_options == {"whiten": False, "identity_init": True, "whiten_gelu": True}


def test_a_shortened_recipe_keeps_its_shape_and_says_so():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        short = load_recipe("speedrun", {"epochs": 1})
    assert short.epochs == 1 and short.warmup_epochs == pytest.approx(0.23)
    assert (
        len(caught) == 1
        and issubclass(caught[0].category, CnnlabWarning)
        and "warmup_epochs 2.3 -> 0.23" in str(caught[0].message)
    )
    kept = load_recipe("speedrun", {"epochs": 5, "warmup_epochs": 1.0})
    assert kept.warmup_epochs == 1.0  # given too: not scaled
    with pytest.warns(CnnlabWarning):
        longer = load_recipe("speedrun-cpu", {"epochs": 30})
    assert longer.warmup_epochs == pytest.approx(7.0)
    cropped = load_recipe("speedrun-cpu", {"early_crop": 24, "early_crop_epochs": 6})
    assert (cropped.early_crop, cropped.early_crop_epochs) == (24, 6)
    with pytest.warns(CnnlabWarning, match="early_crop off"):
        one = recipe_from_dict(rescaled(cropped.to_dict(), 1))
    assert (one.early_crop, one.early_crop_epochs) == (0, 0)  # no epoch left for early crops: off, and said


def test_library_errors_speak_in_parameters_and_the_cli_in_flags():
    from conftest import run_cli

    with pytest.raises(UsageError) as caught:
        load_recipe("seed", {"val_split": "nan"})
    assert "val_split" in str(caught.value) and "--val-split" not in str(caught.value)
    result = run_cli("train", "--val-split", "nan")
    assert result.returncode == 2 and "--val-split 'nan'" in result.stderr


def test_cpu_kinds_from_the_flags_that_decide_bf16_speed():
    from cnnlab.device import CPU_KINDS, cpu_kind

    assert cpu_kind({"fma", "avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}) == "amx"  # Sapphire Rapids
    assert cpu_kind({"fma", "avx2", "avx512f", "avx512_bf16"}) == "avx512-bf16"  # Zen 4, Zen 5
    assert cpu_kind({"fma", "avx2"}) == "avx2"  # Zen 3: bf16 emulated
    assert cpu_kind({"amx_tile", "avx2"}) == "avx2"  # tiles without their bf16 instructions
    assert cpu_kind(set()) == "other"  # an ARM CPU, or no /proc/cpuinfo
    assert cpu_kind() in CPU_KINDS  # this machine's


def test_speedrun_cpu90_takes_the_form_measured_on_each_kind_of_cpu():
    body = load_recipe("speedrun-cpu90", cpu="avx512-bf16")
    assert (body.model, body.epochs, body.batch_size) == ("speedrun-48-192-192", 12, 512)
    amx = load_recipe("speedrun-cpu90", cpu="amx")
    speedrun = load_recipe("speedrun")
    for field in ("model", "epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "momentum", "lookahead"):
        assert getattr(amx, field) == getattr(speedrun, field), field  # the run measured on AMX
    assert amx.name == "speedrun-cpu90" and "AMX" in amx.description
    assert (amx.tta_views, amx.eval_batch_size, amx.model_options) == ("diagonals", 250, body.model_options)
    assert load_recipe("speedrun-cpu90", {"lr": 0.5}, cpu="amx").lr == 0.5  # a flag still wins
    with pytest.warns(CnnlabWarning, match="warmup_epochs 2.3 -> 1.15"):  # rescaled from the AMX form's length
        assert load_recipe("speedrun-cpu90", {"epochs": 5}, cpu="amx").warmup_epochs == pytest.approx(1.15)
    with pytest.warns(CnnlabWarning, match=r"\(avx2\): it trains in fp32 here .* in 49:24, not 10 minutes"):
        avx2 = load_recipe("speedrun-cpu90", cpu="avx2")  # measured there: the same form, and how long it took
    with pytest.warns(CnnlabWarning, match=r"measured on avx512-bf16, avx2, amx CPUs, not on one like this \(other\)"):
        unmeasured = load_recipe("speedrun-cpu90", cpu="other")
    assert avx2 == unmeasured == body
    with pytest.raises(UsageError, match="unknown CPU kind 'zen9'"):
        load_recipe("speedrun-cpu90", cpu="zen9")


def test_the_gpu_speedrun_recipe_evaluates_in_smaller_batches_on_any_cpu():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # [cpu] fields alone are no claim about a kind: no warning
        on_cpu = {kind: load_recipe("speedrun", cpu=kind) for kind in CPU_KINDS}
        on_gpu = load_recipe("speedrun", {"device": "cuda"})
    assert {form.eval_batch_size for form in on_cpu.values()} == {250}
    assert load_recipe("speedrun", {"device": "cpu"}).eval_batch_size == 250
    assert on_gpu.eval_batch_size == 2000  # the recipe's own figure, for the GPU it was built for
    cpu_fields = {"eval_batch_size": 250, "tta_precision": "auto", "device": "auto"}
    assert replace(on_gpu, **cpu_fields) == on_cpu["amx"]  # nothing else differs
    assert load_recipe("speedrun", {"eval_batch_size": 500}, cpu="avx2").eval_batch_size == 500  # a flag wins
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # on a GPU no CPU form is taken, so none is warned about
        assert load_recipe("speedrun-cpu90", {"device": "cuda:0"}).model == "speedrun-48-192-192"


def test_cpu_fields_hold_on_every_kind_and_a_kind_table_goes_on_top(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text("epochs = 4\nlr = 0.1\n[cpu]\nlr = 0.2\neval_batch_size = 100\n[cpu.amx]\nlr = 0.3\n")
    amx = load_recipe(str(path), cpu="amx")
    assert (amx.epochs, amx.lr, amx.eval_batch_size) == (4, 0.3, 100)
    with pytest.warns(CnnlabWarning, match=r"measured on amx CPUs, not on one like this \(avx2\)"):
        avx2 = load_recipe(str(path), cpu="avx2")
    assert (avx2.lr, avx2.eval_batch_size) == (0.2, 100)
    assert load_recipe(str(path), {"device": "cuda"}).lr == 0.1


def test_a_kind_tables_note_is_said_where_that_form_is_taken_and_is_no_field(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('epochs = 4\n[cpu.avx2]\nnote = "took 50 minutes on a Zen 3"\n[cpu.amx]\nepochs = 2\n')
    with pytest.warns(CnnlabWarning, match=r"^mine on this kind of CPU \(avx2\): took 50 minutes on a Zen 3$"):
        avx2 = load_recipe(str(path), cpu="avx2")
    same_without_note = tmp_path / "plain" / "mine.toml"
    same_without_note.parent.mkdir()
    same_without_note.write_text("epochs = 4\n[cpu.avx2]\n[cpu.amx]\nepochs = 2\n")
    assert avx2 == load_recipe(str(same_without_note), cpu="avx2")  # the note is said, not trained with
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # another kind's note is not said
        assert load_recipe(str(path), cpu="amx").epochs == 2


def test_a_recipe_file_without_cpu_tables_loads_alike_on_every_kind(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('model = "speedrun-small"\nepochs = 4\n[model_options]\nwhiten = false\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and says nothing about the CPU
        forms = {kind: load_recipe(str(path), cpu=kind) for kind in ("amx", "avx2", "other")}
    assert forms["amx"] == forms["avx2"] == forms["other"]
    path.write_text(path.read_text() + "[cpu.amx]\nepochs = 2\n[cpu.amx.model_options]\nidentity_init = false\n")
    assert load_recipe(str(path), cpu="amx").model_options == {
        "whiten": False,
        "identity_init": False,
        "whiten_gelu": True,
    }
    assert load_recipe(str(path), cpu="amx").epochs == 2
