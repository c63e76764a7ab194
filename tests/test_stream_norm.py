"""The stream's scale under ``rotation`` (``stream_norm``): the rescaling itself against its
formula, a rotation ViT's tokens at norm sqrt(d) entering the first block and after every
block, finite gradients, one-line refusals, add/orthogonal_update ViTs unchanged bit for bit
by default (against a hand-written forward), the control (add with sqrt_d), old run configs
loaded as they were trained, and a few digits steps at AdamW lr 3e-3 that lower the loss
with the rescaled stream and not without."""

import math

import pytest
import torch
from torch import Tensor
from helpers import digits_subset, loss_before_and_after

from orthogonal_skip_connections import get_model, optimizer
from orthogonal_skip_connections.experiments import run_experiments, study
from orthogonal_skip_connections.models.vit import PreNormResidual
from orthogonal_skip_connections.skips import StreamNorm, rescale_stream, resolve_stream_norm
from orthogonal_skip_connections.train.image import ClassifierSpec, build_classifier

REL = 1e-5  # fp32, relative
DIGITS = dict(in_channels=1, image_size=8, patch_size=2)  # 16 patch tokens (+ a class token)


def token_norms(x: Tensor, method: str) -> Tensor:
    """Per-token norms (channel) or per-sample norms over all tokens (global), of (N, T, C)."""
    return x.norm(dim=-1) if method == "channel" else x.flatten(1).norm(dim=1)


def target_norm(x: Tensor, method: str) -> float:
    return math.sqrt(x.shape[-1] if method == "channel" else x.shape[1] * x.shape[2])


# --------------------------------------------------------------------------- the rescaling


@pytest.mark.parametrize("shape", [(3, 5, 12), (4, 6, 3, 3), (5, 7)])
@pytest.mark.parametrize("method", ["channel", "global"])
def test_rescale_stream_keeps_directions_and_sets_every_group_to_sqrt_n(shape, method):
    torch.manual_seed(0)
    x = 0.03 * torch.randn(shape)
    x[0] = 0  # a zero group (channel: every position of sample 0; global: sample 0) stays zero
    x.requires_grad_(True)
    y = rescale_stream(x, method)
    # the groups as rows, independently of the module: channels at each position (dim 1 of
    # a conv map, the last dim otherwise) or everything but the batch dim
    def rows(a: Tensor) -> Tensor:
        if method == "global":
            return a.reshape(a.shape[0], -1)
        return (a.movedim(1, -1) if a.ndim == 4 else a).reshape(-1, a.shape[1 if a.ndim == 4 else -1])

    xr, yr = rows(x.detach()), rows(y.detach())
    live = xr.norm(dim=1) > 0
    n = xr.shape[1]
    assert ((yr[live].norm(dim=1) - math.sqrt(n)).abs() / math.sqrt(n)).max() < REL
    # the same direction: y = c x with c = sqrt(n) / ||x|| > 0, per group
    torch.testing.assert_close(yr[live], xr[live] * (math.sqrt(n) / xr[live].norm(dim=1, keepdim=True)),
                               rtol=REL, atol=1e-6)
    assert torch.equal(yr[~live], torch.zeros_like(yr[~live])) and (~live).any()
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all()
    # half precision in, half precision out, computed in float32
    h = rescale_stream(x.detach().bfloat16(), method)
    assert h.dtype == torch.bfloat16
    torch.testing.assert_close(h.float(), y.detach(), rtol=1e-2, atol=1e-2)


def test_resolve_stream_norm_defaults_and_refusals():
    assert resolve_stream_norm(None, "rotation") == "sqrt_d"
    assert resolve_stream_norm(None, "add") == resolve_stream_norm(None, "orthogonal_update") == "none"
    assert resolve_stream_norm("none", "rotation") == "none"
    assert resolve_stream_norm("sqrt_d", "add") == "sqrt_d"  # a control, asked for explicitly
    with pytest.raises(ValueError, match="unknown stream_norm 'unit'; allowed: sqrt_d, none"):
        resolve_stream_norm("unit", "rotation")
    with pytest.raises(ValueError, match="unknown orthogonal_method"):
        StreamNorm("rows")


# --------------------------------------------------------------------------- inside the ViT


def _sub_block_streams(model) -> list[tuple[Tensor, Tensor]]:
    """(input, output) of every residual sub-block, in order, captured by forward hooks."""
    seen = []
    for mod in model.modules():
        if isinstance(mod, PreNormResidual):
            mod.register_forward_hook(lambda m, args, out: seen.append((args[0].detach(), out.detach())))
    return seen


@pytest.mark.parametrize("kind,opts", [("identity", {}), ("fixed_orth", {}), ("learnable_orth", {"init": "haar"})])
@pytest.mark.parametrize("method", ["channel", "global"])
def test_rotation_vit_tokens_enter_at_sqrt_d_and_keep_it_through_every_block(kind, opts, method):
    torch.manual_seed(1)
    model = get_model("vit_tiny", 10, kind, **DIGITS, width=32, depth=3, heads=2, residual_mode="rotation",
                      orthogonal_method=method, **opts)
    assert model.stream_norm == "sqrt_d"  # rotation's default
    with torch.no_grad():  # branches as large as trained ones (std 0.02 at initialisation barely turns the stream)
        for name, p in model.blocks.named_parameters():
            if "branch" in name and name.endswith("weight"):
                p.mul_(25)
    seen = _sub_block_streams(model)
    x = torch.randn(4, 1, 8, 8)
    model(x).square().sum().backward()
    assert len(seen) == 6
    first = seen[0][0]
    assert first.shape == (4, 17, 32)  # 16 patches and the class token
    target = target_norm(first, method)
    # what the embeddings alone give is far from sqrt(d) (std 0.02 initialisation), so the
    # rescaling is what puts the stream there
    raw = model.patch_embed(x).flatten(2).transpose(1, 2) + model.pos_embed[:, 1:]
    assert token_norms(raw, method).max() < 0.3 * target
    for i, (s_in, s_out) in enumerate(seen):
        for name, t in (("input", s_in), ("output", s_out)):
            rel = (token_norms(t, method) - target).abs() / target
            assert rel.max() < REL, (i, name, rel.max())
    assert (token_norms(seen[-1][1] - first, method) > 0.5 * target).all()  # every token turned by > ~29 degrees
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.patch_embed.weight.grad.abs().max() > 0  # the embeddings still learn through the rescaling


def test_rotation_without_the_rescaling_keeps_the_embeddings_scale():
    torch.manual_seed(2)
    model = get_model("vit_tiny", 10, "identity", **DIGITS, width=32, depth=2, heads=2, residual_mode="rotation",
                      stream_norm="none")
    seen = _sub_block_streams(model)
    x = torch.randn(3, 1, 8, 8)
    model(x)
    tokens = model.patch_embed(x).flatten(2).transpose(1, 2)
    tokens = torch.cat([model.cls_token.expand(3, -1, -1), tokens], dim=1) + model.pos_embed
    assert torch.equal(seen[0][0], tokens.detach())
    assert token_norms(seen[0][0], "channel").max() < 1.0  # far below sqrt(32)


def _hand_forward(model, x: Tensor) -> Tensor:
    """The ViT's forward as it was before ``stream_norm`` existed (the oracle for add and
    orthogonal_update): embed, class token, position embedding, blocks, norm, pool, head."""
    t = model.patch_embed(x).flatten(2).transpose(1, 2)
    if model.cls_token is not None:
        t = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), t], dim=1)
    t = model.blocks(t + model.pos_embed)
    t = model.norm(t)
    return model.head(t[:, 0] if model.cls_token is not None else t.mean(dim=1))


@pytest.mark.parametrize("mode,method", [("add", "channel"), ("orthogonal_update", "channel"),
                                         ("orthogonal_update", "global"), ("rotation", "channel")])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_other_modes_and_rotation_without_rescaling_are_bit_identical_to_the_old_forward(mode, method, pool):
    sn = "none" if mode == "rotation" else None
    torch.manual_seed(3)
    model = get_model("vit_tiny", 10, "learnable_orth", **DIGITS, width=32, depth=2, heads=2, pool=pool,
                      residual_mode=mode, orthogonal_method=method, stream_norm=sn)
    torch.manual_seed(3)  # the same initialisation as without the option: it adds no parameter, draws nothing
    plain = get_model("vit_tiny", 10, "learnable_orth", **DIGITS, width=32, depth=2, heads=2, pool=pool,
                      residual_mode=mode, orthogonal_method=method)
    assert model.stream_norm == "none"
    sd, sd_plain = model.state_dict(), plain.state_dict()
    assert sd.keys() == sd_plain.keys() and all(torch.equal(sd[k], sd_plain[k]) for k in sd)
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(model(x), _hand_forward(model, x))
    # the rescaled rotation ViT has the same parameters (its state_dict loads into the others)
    rot = get_model("vit_tiny", 10, "learnable_orth", **DIGITS, width=32, depth=2, heads=2, pool=pool,
                    residual_mode="rotation", orthogonal_method=method)
    rot.load_state_dict(sd)


@pytest.mark.parametrize("mode", ["add", "orthogonal_update"])
def test_sqrt_d_in_the_other_modes_is_the_rescaled_embedding_then_the_old_blocks(mode):
    torch.manual_seed(4)
    model = get_model("vit_tiny", 10, "identity", **DIGITS, width=32, depth=2, heads=2, residual_mode=mode,
                      stream_norm="sqrt_d")
    with torch.no_grad():  # branches as large as trained ones
        for name, p in model.blocks.named_parameters():
            if "branch" in name and name.endswith("weight"):
                p.mul_(25)
    seen = _sub_block_streams(model)
    x = torch.randn(3, 1, 8, 8)
    out = model(x)
    torch.testing.assert_close(token_norms(seen[0][0], "channel"), torch.full((3, 17), math.sqrt(32)), rtol=REL, atol=0)
    # from there the blocks are those of the plain model, and the stream grows
    t = torch.cat([model.cls_token.expand(3, -1, -1), model.patch_embed(x).flatten(2).transpose(1, 2)], dim=1)
    t = t + model.pos_embed
    t = math.sqrt(32) * t / t.norm(dim=-1, keepdim=True)
    t = model.blocks(t)
    torch.testing.assert_close(out, model.head(model.norm(t)[:, 0]), rtol=1e-5, atol=1e-5)
    last = token_norms(seen[-1][1], "channel")
    assert ((last - math.sqrt(32)).abs() / math.sqrt(32)).max() > 0.1  # these modes do not keep the norm
    if mode == "orthogonal_update":  # ||s + f_perp|| >= ||s||: the stream only grows
        assert (last >= math.sqrt(32) * (1 - REL)).all()


def test_bad_stream_norms_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown stream_norm 'sphere'"):
        get_model("vit_tiny", 10, **DIGITS, depth=1, residual_mode="rotation", stream_norm="sphere")
    with pytest.raises(ValueError, match=r"\['stream_norm'\] apply to ViT models only"):
        get_model("preact_resnet20", 10, residual_mode="rotation", stream_norm="sqrt_d")


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def digits():
    return digits_subset(512)


def _loss_ratio(model, x, y, lr, steps) -> float:
    before, after = loss_before_and_after(model, x, y, optimizer(model, torch.optim.AdamW, lr=lr, weight_decay=0.05),
                                          steps)
    return after / before


def test_a_few_steps_at_lr_3e_3_train_the_rescaled_rotation_vit_and_not_the_unscaled_one(digits):
    """A 4-block, 32-wide ViT on 16 tokens (the study's digits ViT, narrower), AdamW lr 3e-3,
    40 steps. Seeds 0-2 measured: sqrt_d 0.89-0.90x of the initial loss, none 0.99-1.00x."""
    x, y = digits
    ratios = {}
    for sn in ("sqrt_d", "none"):
        torch.manual_seed(0)
        model = get_model("vit_tiny", 10, "identity", **DIGITS, width=32, depth=4, heads=2,
                          residual_mode="rotation", stream_norm=sn)
        ratios[sn] = _loss_ratio(model, x, y, lr=3e-3, steps=40)
    assert ratios["sqrt_d"] < 0.94 and ratios["none"] > 0.97, ratios


# --------------------------------------------------------------------------- configs


def test_run_experiments_labels_the_rescaled_stream_and_old_configs_load_unrescaled():
    cfg = run_experiments.main.config(["dataset=digits", "model.model_type=vit_tiny", "model.residual_mode=rotation",
                                       "model.depth=1", "model.width=16", "model.heads=2"])
    assert cfg.model.stream_norm is None and cfg.labels()["residual_mode"] == "rotation/channel/sqrt_d"
    model, _ = build_classifier(cfg.spec(), seed=0)
    assert model.stream_norm == "sqrt_d"
    off = run_experiments.main.config(["dataset=digits", "model.model_type=vit_tiny", "model.residual_mode=rotation",
                                       "model.stream_norm=none"])
    assert off.labels()["residual_mode"] == "rotation/channel"  # as every rotation run before the option
    add = run_experiments.main.config(["dataset=digits", "model.model_type=vit_tiny"])
    assert add.labels()["residual_mode"] == "add" and "stream_norm" not in add.model.model_options()
    control = run_experiments.main.config(["dataset=digits", "model.model_type=vit_tiny", "model.stream_norm=sqrt_d"])
    assert control.labels()["residual_mode"] == "add/sqrt_d"  # its own arm, not the add/identity baseline
    resnet = run_experiments.main.config(["dataset=digits", "model.model_type=preact_resnet20",
                                          "model.residual_mode=rotation"])
    assert resnet.labels()["residual_mode"] == "rotation/channel" and "stream_norm" not in resnet.model.model_options()
    # a config.yaml written before stream_norm existed has no such key: its ViT is rebuilt unrescaled
    old = {"model": {"model_type": "vit_tiny", "skip_kind": "identity", "residual_mode": "rotation", "depth": 1,
                     "width": 16, "heads": 2}, "dataset": {"name": "digits"}}
    spec = ClassifierSpec.from_config(old)
    assert spec.model_options["stream_norm"] == "none"
    assert build_classifier(spec, seed=0)[0].stream_norm == "none"
    new = {**old, "model": {**old["model"], "stream_norm": None}}
    assert build_classifier(ClassifierSpec.from_config(new), seed=0)[0].stream_norm == "sqrt_d"


@pytest.mark.parametrize("override,expected", [
    (["model.model_type=vit_tiny", "model.residual_mode=rotation", "model.stream_norm=unit"],
     "unknown model.stream_norm 'unit'; allowed: sqrt_d, none"),
    (["model.model_type=vit_tiny", "model.stream_norm=null_d"], "unknown model.stream_norm 'null_d'"),
    (["model.model_type=preact_resnet20", "model.residual_mode=rotation", "model.stream_norm=sqrt_d"],
     "['stream_norm'] apply to ViT models only"),
])
def test_bad_stream_norm_keys_are_one_line_and_no_run_dir(override, expected, tmp_path, capsys):
    from orthogonal_skip_connections.cli import main as osc

    run_dir = tmp_path / "run"
    assert osc(["run_experiments", "dataset=digits", *override, f"hydra.run.dir={run_dir}"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], lines
    assert not run_dir.exists()


def test_study_modes_may_name_the_stream_norm():
    assert study.mode_overrides("rotation") == ["model.residual_mode=rotation"]
    assert study.mode_overrides("rotation/channel/none") == ["model.residual_mode=rotation",
                                                             "model.orthogonal_method=channel", "model.stream_norm=none"]
