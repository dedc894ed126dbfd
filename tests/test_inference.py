"""Tests of cardiomm.inference: the reconstruction API around a CardioMM checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cardiomm.data.datasets import CineSliceDataset
from cardiomm.data.metadata import ScanMetadata
from cardiomm.inference import DEFAULT_CHECKPOINT, CardioMMReconstructor, load_reconstructor
from cardiomm.model import ARCHITECTURE
from cardiomm.training import CardioMMModule
from recon.conventions import ifft2c, rss
from recon.masks import make_mask
from recon.metrics import image_metrics

TINY_NET = dict(num_cascades=2, channels=4, depth=1, sens_channels=2, sens_depth=1, calib_max_size=16, context_dim=8)


def _phantom_slices(
    matrix: str = "40x36", n_slices: int = 2, frames: int = 6, coils: int = 4, pattern: str = "kt_gaussian", r: float = 6
) -> dict[str, torch.Tensor]:
    """Unnormalised undersampled k-space of a simulated phantom (``[slice, coil, time, ky, kx]``) and its reference."""
    spacing_mm = 280.0 / min(int(n) for n in matrix.split("x"))  # the phantom needs a ~280 mm field of view
    dataset = CineSliceDataset(
        f"phantom:1500?n_slices=6&n_frames={frames}&matrix={matrix}&pixel_spacing_mm={spacing_mm:.3f}",
        patterns=[pattern], accelerations=[r], deterministic=True, n_coils=coils, acs_lines=8, normalize=False,
    )
    items = [dataset[i] for i in range(2, 2 + n_slices)]  # mid-ventricular slices first
    return {key: torch.stack([item[key] for item in items]) for key in ("kspace", "mask", "acs", "target")}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised CardioMM checkpoint in the layout training writes (weights + hyper-parameters)."""
    torch.manual_seed(0)
    module = CardioMMModule(**TINY_NET)
    state = {f"model.{k}": v for k, v in module.model.state_dict().items()}
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    torch.save(
        {"state_dict": state, "cardiomm_architecture": ARCHITECTURE, "cardiomm_model_kwargs": module.model_kwargs,
         "cardiomm_data": {"class_path": "test", "init_args": {}}},
        path,
    )
    return path


def test_reconstruction_shape_scale_and_batching(tiny_checkpoint: Path) -> None:
    recon = load_reconstructor(tiny_checkpoint, device="cpu")
    assert isinstance(recon, CardioMMReconstructor) and recon.device.type == "cpu"
    assert recon.training_data == {"class_path": "test", "init_args": {}}
    data = _phantom_slices("37x30", n_slices=3)  # odd matrix size
    images = recon(data["kspace"], data["mask"], data["acs"])
    assert images.shape == (3, 6, 37, 30) and images.dtype == torch.complex64
    assert torch.isfinite(images.real).all() and torch.isfinite(images.imag).all()
    # the output follows the caller's scale: normalisation is applied and undone
    scaled = recon(1000.0 * data["kspace"], data["mask"], data["acs"])
    torch.testing.assert_close(scaled, 1000.0 * images, rtol=2e-3, atol=1e-3 * float(images.abs().max()))
    # slices are independent: batching them together changes nothing
    batched = recon(data["kspace"], data["mask"], data["acs"], batch_size=3)
    torch.testing.assert_close(batched, images, rtol=1e-4, atol=1e-5 * float(images.abs().max()))
    one = recon(data["kspace"][1:2], data["mask"][1], data["acs"][1])  # mask [time, ky, kx] shared by slices
    torch.testing.assert_close(one[0], images[1], rtol=1e-4, atol=1e-5 * float(images.abs().max()))


def test_context_from_metadata_changes_the_result(tiny_checkpoint: Path) -> None:
    data = _phantom_slices(n_slices=1)
    meta = ScanMetadata(modality="cine", view="sax", field_strength_t=1.5, vendor="GE MEDICAL SYSTEMS",
                        mask_pattern="kt_gaussian")
    recon = load_reconstructor(tiny_checkpoint, device="cpu")
    ctx = recon.context_for(data["mask"][0], data["acs"][0], 4, meta)
    assert ctx["vendor"] == "GE MEDICAL SYSTEMS" and ctx["pattern"] == "kt_gaussian" and ctx["n_coils"] == 4
    assert ctx["r_effective"] == pytest.approx(data["mask"][0].numel() / float(data["mask"][0].sum()))
    with_meta = recon(data["kspace"], data["mask"], data["acs"], metadata=meta)
    without = recon(data["kspace"], data["mask"], data["acs"])
    unknown = load_reconstructor(tiny_checkpoint, device="cpu", context="unknown")
    assert unknown.context_for(data["mask"][0], data["acs"][0], 4, meta) == {}
    hidden = unknown(data["kspace"], data["mask"], data["acs"], metadata=meta)
    assert not torch.allclose(with_meta, without) and not torch.allclose(with_meta, hidden)


def test_bad_inputs_and_checkpoints_raise_clear_errors(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_reconstructor(tmp_path / "missing.ckpt")
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    torch.save({**checkpoint, "cardiomm_architecture": "another-net-v3"}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="another-net-v3"):
        load_reconstructor(tmp_path / "other.ckpt")
    (tmp_path / "broken.ckpt").write_bytes(tiny_checkpoint.read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupted"):
        load_reconstructor(tmp_path / "broken.ckpt")
    with pytest.raises(ValueError, match="device"):
        load_reconstructor(tiny_checkpoint, device="warp-drive")

    recon = load_reconstructor(tiny_checkpoint, device="cpu")
    data = _phantom_slices(n_slices=1)
    k, mask = data["kspace"], data["mask"]
    with pytest.raises(ValueError, match="slice, coil, time"):
        recon(k[0], mask)
    with pytest.raises(ValueError, match="complex"):
        recon(k.real, mask)
    with pytest.raises(ValueError, match="sampling mask"):
        recon(k, mask[..., :-1])
    # a uniform lattice without ACS lines has no fully sampled centre: no coil maps possible
    lattice = make_mask("uniform", 4, tuple(mask.shape[1:]), acs_lines=0).mask
    with pytest.raises(ValueError, match="no calibration region"):
        recon(k * lattice, lattice)
    with pytest.raises(ValueError, match="samples nothing"):
        recon(k, torch.zeros_like(mask))


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_file(), reason="the shipped checkpoint has not been trained yet")
def test_shipped_checkpoint_beats_zero_filled_on_an_unseen_phantom() -> None:
    torch.manual_seed(0)
    recon = load_reconstructor(device="cpu")
    assert recon.n_parameters > 0 and recon.training_data is not None
    data = _phantom_slices("64x64", n_slices=1, frames=8, coils=8, pattern="kt_gaussian", r=8)
    image = recon(data["kspace"], data["mask"], data["acs"])
    target = data["target"][0]
    learned = image_metrics(target, image[0].abs())
    zero_filled = image_metrics(target, rss(ifft2c(data["kspace"][0])))
    assert learned.psnr_db > zero_filled.psnr_db + 3.0
    assert learned.ssim > zero_filled.ssim
