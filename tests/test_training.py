"""Tests of CardioMM training: LightningModule, LightningCLI with configs/, checkpoints, `cardiomm train`."""

from __future__ import annotations

import argparse
import sys
from types import SimpleNamespace
from pathlib import Path

import pytest
import torch

from cardiomm.model import ARCHITECTURE, CardioMMNet
from cardiomm.training import CardioMMModule, load_cardiomm_checkpoint, read_checkpoint
from cardiomm.training.checkpoint import export_checkpoint
from test_model import KNOWN_CONTEXT, synthetic_case  # tests/ is on sys.path (pytest rootdir-less layout)

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "tiny.yaml"
TINY_MODULE = dict(num_cascades=2, channels=4, depth=2, sens_channels=4, sens_depth=2, context_dim=8, calib_max_size=16)


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI warns when pytest's own argv is present next to args=...; give it a clean one."""
    monkeypatch.setattr(sys, "argv", ["cardiomm"])


def synthetic_batch(batch: int = 1) -> dict:
    cases = [synthetic_case(frames=4, ny=24, nx=28, seed=s) for s in range(batch)]
    kspace, mask, acs, target = (torch.cat(parts) for parts in zip(*cases))
    return {
        "kspace": kspace, "mask": mask, "acs": acs, "target": target,
        "context": {k: [v] * batch for k, v in KNOWN_CONTEXT.items()},
        "max_value": target.amax(dim=(1, 2, 3)), "scale": torch.full((batch,), 2.0),
        "source": ["synthetic"] * batch, "slice_index": list(range(batch)),
    }


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_module_training_and_predict_steps() -> None:
    torch.manual_seed(0)
    module = CardioMMModule(**TINY_MODULE)
    batch = synthetic_batch(2)
    loss = module.training_step(batch, 0)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.model.cascades[0].parameters())
    module.eval()
    with torch.no_grad():
        out = module.predict_step(batch, 0)
        plain = module(batch)
    assert out["reconstruction"].shape == (2, 4, 24, 28) and out["reconstruction"].is_complex()
    torch.testing.assert_close(out["reconstruction"], 2.0 * plain)  # back in the source's units
    assert out["source"] == ["synthetic", "synthetic"]


def test_validation_picture_goes_to_loggers_that_take_images() -> None:
    class ImageLogger:  # the WandbLogger API
        def __init__(self) -> None:
            self.calls: list[dict] = []

        def log_image(self, **kwargs) -> None:
            self.calls.append(kwargs)

    class TextOnlyLogger:  # e.g. CSVLogger: no images
        experiment = object()

    module = CardioMMModule(**TINY_MODULE)
    images = ImageLogger()
    module._trainer = SimpleNamespace(loggers=[images, TextOnlyLogger()], sanity_checking=False, global_step=3)
    target = torch.rand(5, 12, 10)
    module._log_picture("val", 0.5 * target, target + 0.1, target, float(target.max()))
    assert len(images.calls) == 1 and images.calls[0]["key"] == "val/sample"
    grid = images.calls[0]["images"][0]
    assert grid.shape == (12, 40) and grid.dtype.name == "uint8" and grid.max() > 0


def test_module_optimizer_schedules() -> None:
    for schedule in ("cosine", "step", "constant"):
        module = CardioMMModule(**TINY_MODULE, lr_schedule=schedule, warmup_steps=2 if schedule == "cosine" else 0)
        config = module.configure_optimizers()
        optimizer = config["optimizer"] if isinstance(config, dict) else config
        assert isinstance(optimizer, torch.optim.AdamW)
        if schedule == "cosine":
            module._trainer = SimpleNamespace(estimated_stepping_batches=4)  # 4 optimiser steps in all
            config = module.configure_optimizers()
            optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
            lrs = []
            for _ in range(5):
                lrs.append(optimizer.param_groups[0]["lr"] / module.hparams.lr)
                optimizer.step()
                scheduler.step()
            floor = module.hparams.min_lr_ratio
            assert lrs == pytest.approx([0.5, 1.0, 1.0, floor + (1 - floor) / 2, floor])  # warm-up, then cosine
    with pytest.raises(ValueError, match="lr"):
        CardioMMModule(**TINY_MODULE, lr=0.0)


def _fit_tiny(tmp_path: Path, *extra: str) -> Path:
    from cardiomm.training.cli import run_cli

    run_cli([
        "fit", "--config", str(TINY_CONFIG),
        "--trainer.max_steps=2", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={tmp_path}",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.log_every_n_steps=1",
        "--model.num_cascades=2", "--model.channels=4",  # smaller than tiny to keep the test fast
        "--data.train_sources=[phantom:0?n_slices=6&n_frames=8&matrix=64x64&pixel_spacing_mm=4]",
        "--data.val_sources=[phantom:100?n_slices=6&n_frames=8&matrix=64x64&pixel_spacing_mm=4]",
        *extra,
    ])
    checkpoints = sorted(tmp_path.rglob("last.ckpt"))
    assert len(checkpoints) == 1, list(tmp_path.rglob("*"))
    return checkpoints[0]


def test_cli_fit_with_tiny_config_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    ckpt = _fit_tiny(tmp_path)
    metrics = next(tmp_path.rglob("metrics.csv")).read_text()
    header = metrics.splitlines()[0].split(",")
    assert {"train/loss", "val/ssim", "val/psnr", "val/nmse", "val_zero_filled/psnr", "val_view_sharing/psnr"} <= set(header)
    checkpoint = read_checkpoint(ckpt)
    assert checkpoint["cardiomm_architecture"] == ARCHITECTURE
    data = checkpoint["cardiomm_data"]
    assert data["class_path"].endswith("CineDataModule")
    assert data["init_args"]["train_sources"] == ["phantom:0?n_slices=6&n_frames=8&matrix=64x64&pixel_spacing_mm=4"]
    assert "num_cascades: 2" in checkpoint["cardiomm_config"] and "train_sources" in checkpoint["cardiomm_config"]
    model = load_cardiomm_checkpoint(ckpt)
    assert isinstance(model, CardioMMNet) and not model.training and len(model.cascades) == 2
    kspace, mask, acs, _ = synthetic_case(frames=3, ny=20, nx=22)
    with torch.no_grad():
        assert model(kspace, mask, acs, KNOWN_CONTEXT).shape == (1, 3, 20, 22)
    # the Lightning way of loading works as well
    module = CardioMMModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    for a, b in zip(module.model.parameters(), model.parameters()):
        torch.testing.assert_close(a, b)
    # the shipping copy drops the optimiser state but loads both ways, with the data description
    exported = export_checkpoint(ckpt, tmp_path / "shipped.ckpt", val_ssim=0.5)
    assert "optimizer_states" in checkpoint and "optimizer_states" not in exported
    assert (tmp_path / "shipped.ckpt").stat().st_size < ckpt.stat().st_size
    assert read_checkpoint(tmp_path / "shipped.ckpt")["cardiomm_notes"] == {"val_ssim": 0.5}
    assert read_checkpoint(tmp_path / "shipped.ckpt")["cardiomm_data"] == data
    for a, b in zip(load_cardiomm_checkpoint(tmp_path / "shipped.ckpt").parameters(), model.parameters()):
        torch.testing.assert_close(a, b)
    CardioMMModule.load_from_checkpoint(tmp_path / "shipped.ckpt", map_location="cpu", weights_only=True)


def test_resuming_a_fit_ignores_init_weights(tmp_path: Path) -> None:
    first = _fit_tiny(tmp_path / "a")
    # the resume restores everything from --ckpt_path; a stale init_weights path must not matter
    resumed = _fit_tiny(tmp_path / "b", f"--ckpt_path={first}", "--trainer.max_steps=3",
                        f"--model.init_weights={tmp_path / 'deleted.ckpt'}")
    assert read_checkpoint(resumed)["global_step"] == 3


def test_config_with_an_unknown_key_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cardiomm.training.cli import run_cli

    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  num_cascadez: 4\n")
    with pytest.raises(SystemExit) as exc:
        run_cli(["fit", "--config", str(TINY_CONFIG), "--config", str(bad), "--print_config"])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert "num_cascadez" in err


def test_corrupted_and_foreign_checkpoints_raise_value_error(tmp_path: Path) -> None:
    module = CardioMMModule(**TINY_MODULE)
    state = {f"model.{k}": v for k, v in module.model.state_dict().items()}
    good = {"state_dict": state, "cardiomm_architecture": ARCHITECTURE, "cardiomm_model_kwargs": module.model_kwargs}
    torch.save(good, tmp_path / "good.ckpt")
    assert isinstance(load_cardiomm_checkpoint(tmp_path / "good.ckpt"), CardioMMNet)

    data = (tmp_path / "good.ckpt").read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint at all")
    for name in ("truncated.ckpt", "garbage.ckpt"):
        with pytest.raises(ValueError, match="corrupted"):
            load_cardiomm_checkpoint(tmp_path / name)

    torch.save({**good, "cardiomm_architecture": "some-other-net-v9"}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="some-other-net-v9"):
        load_cardiomm_checkpoint(tmp_path / "other.ckpt")
    torch.save({"state_dict": state}, tmp_path / "foreign.ckpt")
    with pytest.raises(ValueError, match="not a CardioMM checkpoint"):
        load_cardiomm_checkpoint(tmp_path / "foreign.ckpt")
    torch.save({**good, "cardiomm_model_kwargs": {**module.model_kwargs, "channels": 6}}, tmp_path / "mismatch.ckpt")
    with pytest.raises(ValueError, match="do not fit"):
        load_cardiomm_checkpoint(tmp_path / "mismatch.ckpt")
    with pytest.raises(FileNotFoundError):
        load_cardiomm_checkpoint(tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match="architecture"):
        module.on_load_checkpoint({"cardiomm_architecture": "some-other-net-v9"})


def test_init_weights_starts_fit_from_another_checkpoint_and_reports_what_it_copied(tmp_path: Path) -> None:
    from cardiomm.training.checkpoint import load_matching_weights

    torch.manual_seed(0)
    source = CardioMMModule(**TINY_MODULE)
    state = {f"model.{k}": v for k, v in source.model.state_dict().items()}
    torch.save({"state_dict": state, "cardiomm_architecture": ARCHITECTURE, "cardiomm_model_kwargs": source.model_kwargs},
               tmp_path / "source.ckpt")
    # a network with a Walsh-started coil-map net: everything but the new gate comes from the file
    target = CardioMMModule(**TINY_MODULE, sens_init="walsh", init_weights=str(tmp_path / "source.ckpt"))
    before = {k: v.clone() for k, v in target.model.state_dict().items()}
    target.setup("validate")  # only fit starts from init_weights (validate/predict keep their weights)
    assert all(torch.equal(v, target.model.state_dict()[k]) for k, v in before.items())
    target.setup("fit")
    own = target.model.state_dict()
    for k, v in source.model.state_dict().items():
        torch.testing.assert_close(own[k], v)
    assert float(own["sensitivity_net.gate"]) == 0.0
    # wider denoisers: those tensors are reported and keep their own initialisation
    wider = CardioMMNet(**{**TINY_MODULE, "channels": 6})
    report = load_matching_weights(wider, tmp_path / "source.ckpt")
    assert report["shape_mismatch"] and all(k.startswith("cascades.") for k in report["shape_mismatch"])
    assert report["new"] == [] and any(k.startswith("sensitivity_net.") for k in report["loaded"])
    with pytest.raises(FileNotFoundError):
        load_matching_weights(wider, tmp_path / "missing.ckpt")


def test_train_command_passes_everything_to_the_lightning_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    from cardiomm.commands import train

    parser = argparse.ArgumentParser(prog="cardiomm")
    train.register(parser.add_subparsers(dest="command"))
    for argv in (["fit", "--config", "configs/tiny.yaml", "--trainer.max_steps=2"], ["--help"], ["fit", "-h"], []):
        args = parser.parse_args(["train", *argv])
        assert args.cli_args == argv
    seen = []
    # the command hands its arguments to LightningCLI through sys.argv (LightningCLI reads it for --help)
    monkeypatch.setattr("sys.argv", ["cardiomm", "train", "validate", "--config", "x.yaml"])
    monkeypatch.setattr("cardiomm.training.cli.run_cli", lambda a: seen.append((a, list(sys.argv[1:]))))
    assert args.func(parser.parse_args(["train", "validate", "--config", "x.yaml"])) == 0
    assert seen == [(None, ["validate", "--config", "x.yaml"])]


def test_shipped_configs_parse() -> None:
    from cardiomm.training.cli import run_cli

    fine_tunes = ["small_cpu.yaml", "small_cpu_view_sharing.yaml", "small_cpu_finetune_real.yaml", "small_cpu_gated.yaml",
                  "small_cpu_noise_free.yaml"]
    gpu_fine_tune = [*fine_tunes, "small_gpu_finetune.yaml"]  # benchmarks/device/session.sh
    for configs in (["tiny.yaml"], ["small_cpu.yaml"], fine_tunes, gpu_fine_tune, ["base.yaml"], ["base.yaml", "ddp.yaml"]):
        args = ["fit"]
        for name in configs:
            args += ["--config", str(REPO / "configs" / name)]
        with pytest.raises(SystemExit) as exc:  # --print_config prints and exits 0
            run_cli([*args, "--print_config"])
        assert exc.value.code in (0, None)
