"""The compared models: every specialist sized within ±10% of ITNet on every task it takes, the ITNet variants'
overrides, and the errors of bad ones."""

import pytest
import torch

from comparison.models import (
    PARAM_TOLERANCE,
    SPECIALISTS,
    ITNetForTask,
    ModelError,
    active_parameter_count,
    build_itnet,
    itnet_config,
    match_width,
    parse_itnet_variant,
    sized_specialist,
)
from comparison.tasks import TaskSizes, build_task

pytest.importorskip("mambapy")
pytest.importorskip("neuralop")
SIZES = TaskSizes(train=16, val=8, test=8)
GENERATED = ("locality", "recall", "parity", "copy", "burgers", "digits", "shapes")


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return {name: build_task(name, SIZES, folder) for name in GENERATED}


@pytest.mark.slow
def test_every_specialist_is_sized_within_tolerance_and_runs(tasks):
    covered = set()
    for task in tasks.values():
        itnet = build_itnet(task, {})()
        target = active_parameter_count(itnet, task.train.inputs[:2])
        assert target < sum(p.numel() for p in itnet.parameters())  # the unused encoders do not count
        for name in task.specialists:
            if name not in SPECIALISTS:
                continue
            build, _, params = sized_specialist(name, task, target)
            model = build()
            assert sum(p.numel() for p in model.parameters()) == params
            assert abs(params - target) <= PARAM_TOLERANCE * target, (task.name, name, params, target)
            output = model(task.train.inputs[:2])
            assert output.shape[0] == 2 and torch.isfinite(output).all()
            covered.add(name)
    assert covered == set(SPECIALISTS)


def test_match_width_fails_loudly_out_of_reach():
    assert match_width(lambda w: 10 * w, range(1, 100), 505, "linear") in ((50, 500), (51, 510))
    with pytest.raises(ModelError, match=r"no width in 1..9 .* 1000 ± 10%"):
        match_width(lambda w: 10 * w, range(1, 10), 1000, "small")


def test_field_itnet_reads_a_finer_grid_as_the_same_domain(tasks):
    task = tasks["burgers"]
    model = build_itnet(task, {})()
    assert isinstance(model, ITNetForTask)
    coarse, fine = model.field_positions(64, task.train.inputs), model.field_positions(128, task.train.inputs)
    assert torch.equal(fine[::2], coarse)  # every other fine point sits where the coarse point sits
    assert model(task.test.inputs[:2]).shape == (2, 128)


def test_itnet_variants_become_config_overrides(tasks):
    name, overrides = parse_itnet_variant(
        "wide:layer.kernel_width=32,layers.0-1.support=window,layers.0-1.support_size=4,depth=2")
    assert name == "itnet-wide"
    config = itnet_config(tasks["parity"], overrides)
    assert (config.layer.kernel_width, config.depth, config.vocab_size) == (32, 2, 3)
    assert config.layer_configs()[0].support == "window"
    lowrank = itnet_config(tasks["parity"], {"layer": {"integrator": "lowrank"}})
    assert lowrank.layer.integrator == "lowrank" and itnet_config(tasks["parity"]).layer.integrator == "exact"


@pytest.mark.parametrize(("spec", "message"), [("nocolon", "expected NAME:key=value"),
                                               ("x:depth", "'depth' is not key=value"),
                                               ("bad name:depth=2", "must be letters")])
def test_malformed_variants_are_refused(spec, message):
    with pytest.raises(ModelError, match=message):
        parse_itnet_variant(spec)


def test_bad_override_names_the_key(tasks):
    with pytest.raises(ModelError, match="kernel_widht"):
        itnet_config(tasks["parity"], parse_itnet_variant("typo:layer.kernel_widht=3")[1])
