"""``atlas(model, batch)`` on a pretraining model: every layer captured with its positions and padding, the
kernel the layer applies, the model's mode restored, the JSON / table / figures written; the batch helper and the
bad inputs."""

from __future__ import annotations

import json

import pytest
import torch

from itnet_scale.atlas import atlas, default_queries, inspection_batch
from itnet_scale.atlas.figures import grid_shape
from itnet_scale.models.registry import create_model
from itnet_scale.nn.heads import IGNORE

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("tiny", vocab_size=300, dim=32, depth=2, heads=2, contrastive_dim=16, point_hidden=16)


def test_text_atlas_of_a_pretraining_model(model, tmp_path, monkeypatch):
    monkeypatch.setenv("ITNET_COMPILE", "0")
    ids = torch.randint(5, 300, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 9:] = False
    result = atlas(model, {"text_ids": ids, "text_attention_mask": mask})
    assert model.training  # the mode is restored
    assert result.labels == ["itnet.backbone.blocks.0.mixer", "itnet.backbone.blocks.1.mixer"]
    layer = result.layers[0].kernel
    assert layer.kernel.shape == (3, 2, 12, 12) and layer.pos_q.shape == (3, 12, 3)
    assert torch.equal(layer.source_valid, mask) and torch.equal(layer.query_valid, mask)
    assert torch.equal(layer.pos_q[0, :, 0], torch.arange(1.0, 13.0))  # text positions (t + 1, 0, 0)
    # softmax: the rows of real queries sum to 1 and padding gets nothing; layer 0 has the tiny config's window 4
    assert torch.allclose(layer.kernel[1, :, :9].sum(-1), torch.ones(2, 9)) and layer.kernel[1, :, :, 9:].eq(0).all()
    assert layer.kernel[0, :, 0, 6:].eq(0).all()
    # the captured kernel is the one the layer applies: its own kernel_matrix on the same input
    mixer = model.itnet.backbone.blocks[0].mixer
    captured = {}
    hook = mixer.register_forward_hook(lambda m, args, kwargs, out: captured.update(args=args, kwargs=kwargs),
                                       with_kwargs=True)
    with torch.no_grad():
        model.eval()(inspection_batch({"text_ids": ids, "text_attention_mask": mask}), evaluate=True)
    model.train()
    hook.remove()
    with torch.no_grad():
        direct = mixer.kernel_matrix(*captured["args"], **captured["kwargs"])
    torch.testing.assert_close(layer.kernel, direct)

    paths = result.write(tmp_path, queries=[0, 5], title="text")
    assert [p.name for p in paths] == ["atlas.json", "summary.png", "kernels_0.png", "kernels_1.png"]
    assert all(p.read_bytes().startswith(PNG) for p in paths[1:])
    saved = json.loads(paths[0].read_text())
    assert [h["kind"] for h in saved["layers"][1]["heads"]] == result.kinds()[1]
    assert saved["settings"]["radius"] == 1.5
    assert len(result.table().splitlines()) == 2 + 2 * 2
    assert set(result.scalars()) >= {"atlas/itnet.backbone.blocks.1.mixer/head0/content"}
    with pytest.raises(ValueError, match=r"queries must be token indices in 0\.\.11"):
        result.query_figure(0, [12])


def test_image_atlas_draws_the_grid(model, monkeypatch):
    monkeypatch.setenv("ITNET_COMPILE", "0")
    result = atlas(model, {"images": torch.rand(2, 1, 16, 16)})  # 4×4 patches of 4 pixels
    layer = result.layers[0].kernel
    assert grid_shape(layer.pos_s[0]) == (1, 2, 4, 4)
    assert default_queries(layer) == [5, 10, 15]  # (1, 1), (2, 2), (3, 3)
    figure = result.query_figure(0)
    assert len(figure.axes) == 2 * 2 * 3  # heads × queries panels, each with its colour bar


def test_inspection_batch_unmasks_and_cuts():
    batch = {"text_ids": torch.tensor([[7, 4, 9], [4, 8, 4]]), "mlm_labels": torch.tensor([[IGNORE, 5, IGNORE],
                                                                                            [6, IGNORE, 2]]),
             "images": torch.rand(2, 1, 8, 8), "image_mask": torch.ones(2, 4, dtype=torch.bool)}
    plain = inspection_batch(batch, samples=1)
    assert set(plain) == {"text_ids", "images"} and plain["text_ids"].tolist() == [[7, 5, 9]]
    assert plain["images"].shape == (1, 1, 8, 8)


def test_a_model_without_integral_transforms_is_refused():
    with pytest.raises(ValueError, match="Linear contains no IntegralTransform"):
        atlas(torch.nn.Linear(2, 2), torch.rand(1, 2))


def test_point_clouds_without_an_objective_run_the_backbone(model, monkeypatch):
    monkeypatch.setenv("ITNET_COMPILE", "0")
    result = atlas(model, {"points": torch.rand(2, 128, 3)})
    layer = result.layers[0].kernel
    assert layer.kernel.shape[-1] == model.itnet.config.point_tokens
    # each cloud's tokens sit at its own centres: content dependence (fixed positions) is undefined
    assert all(s.content != s.content for s in result.layers[0].scores)
