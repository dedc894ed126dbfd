"""Dataset layer: sources (phantom, ISMRMRD, CMRxRecon, DICOM), slice dataset, collation, data module."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from cardiomm.data.datamodule import CineDataModule
from cardiomm.data.datasets import (
    CONTEXT_KEYS,
    CineSliceDataset,
    SourceGroupedSampler,
    collate_cine,
    normalisation_scale,
)
from cardiomm.data.errors import DataFileError
from cardiomm.data.ismrmrd_raw import write_ismrmrd_raw
from cardiomm.data.phantom import make_phantom
from cardiomm.data.simulate import simulate_kspace, write_simulated_scan
from cardiomm.data.sources import (
    LABEL_IGNORE,
    count_slices,
    expand_sources,
    load_source,
    parse_phantom_spec,
)
from recon.conventions import ifft2c, rss
from recon.masks import PATTERNS

SUNNYBROOK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sunnybrook"
PATIENT = SUNNYBROOK / "dicoms" / "SCD0000301"
needs_sunnybrook = pytest.mark.skipif(not PATIENT.is_dir(), reason="shared Sunnybrook data not present")

OPTS = "n_slices=6&n_frames=8&matrix=96x96&pixel_spacing_mm=3"
NT, NY, NX, NC = 8, 96, 96, 4


def phantom_spec(seed: int | str) -> str:
    return f"phantom:{seed}?{OPTS}"


@pytest.fixture(scope="module")
def train_ds() -> CineSliceDataset:
    return CineSliceDataset([phantom_spec(3)], n_coils=NC, deterministic=False, seed=1)


@pytest.fixture(scope="module")
def val_ds() -> CineSliceDataset:
    return CineSliceDataset([phantom_spec(3)], n_coils=NC, deterministic=True, seed=1)


# ----------------------------------------------------------------------------- sources


def test_phantom_spec_parsing_and_expansion():
    ps = parse_phantom_spec("phantom:4-6?n_slices=6&matrix=96x80&pixel_spacing_mm=3")
    assert list(ps.seeds) == [4, 5, 6]
    assert ps.options == {"n_slices": 6, "matrix": (96, 80), "pixel_spacing_mm": (3.0, 3.0)}
    assert expand_sources("phantom:4-6?n_slices=6") == [f"phantom:{s}?n_slices=6" for s in (4, 5, 6)]
    assert count_slices(phantom_spec(9)) == 6 and count_slices("phantom:9") == 8
    for bad in ("phantom:x", "phantom:5-2", "phantom:1?colour=red", "phantom:1?n_slices=two"):
        with pytest.raises(ValueError):
            parse_phantom_spec(bad)


def test_phantom_source_slices_are_reproducible_alone_or_together():
    whole = load_source(phantom_spec(2), n_coils=3, seed=5)
    one = load_source(phantom_spec(2), n_coils=3, seed=5, slices=[4])
    assert whole.kspace.shape == (6, 3, NT, NY, NX) and whole.kspace.dtype == torch.complex64
    assert whole.labels.shape == (6, NT, NY, NX) and whole.labels.dtype == torch.uint8
    assert torch.equal(one.kspace[0], whole.kspace[4]) and torch.equal(one.labels[0], whole.labels[4])
    assert one.slice_indices == (4,) and whole.metadata.simulated and whole.truth["lvedv_ml"] > 0
    assert set(torch.unique(whole.labels).tolist()) <= {0, 1, 2, 3}
    other_seed = load_source(phantom_spec(2), n_coils=3, seed=6, slices=[4])
    assert not torch.equal(other_seed.kspace, one.kspace)


def test_ismrmrd_source_round_trip(tmp_path):
    phantom = make_phantom(7, n_slices=6, n_frames=NT, matrix=(NY, NX), pixel_spacing_mm=(3.0, 3.0))
    acq = simulate_kspace(phantom, n_coils=NC, seed=0, snr_db=None)
    write_simulated_scan(tmp_path / "scan.h5", acq, labels=phantom)
    assert expand_sources(tmp_path) == [str(tmp_path / "scan.h5")]
    assert count_slices(tmp_path / "scan.h5") == 6
    src = load_source(tmp_path / "scan.h5")
    assert src.kspace.shape == (6, NC, NT, NY, NX)
    assert torch.allclose(src.kspace, acq.kspace, atol=1e-5 * float(acq.kspace.abs().max()))  # noiseless: no whitening
    assert np.array_equal(src.labels.numpy(), phantom.labels)
    assert src.truth["lvedv_ml"] == pytest.approx(phantom.truth.lvedv_ml)
    assert src.label_classes == (0, 1, 2, 3)
    # the dataset serves the same labels
    ds = CineSliceDataset([str(tmp_path)], deterministic=True, patterns=("kt_uniform",), accelerations=8)
    item = ds[3]
    assert item["source"] == str(tmp_path / "scan.h5") and item["slice_index"] == 3
    assert np.array_equal(item["labels"].numpy(), phantom.labels[3])


def test_undersampled_ismrmrd_file_is_refused(tmp_path):
    phantom = make_phantom(7, n_slices=6, n_frames=4, matrix=(NY, NX), pixel_spacing_mm=(3.0, 3.0))
    acq = simulate_kspace(phantom, n_coils=2, seed=0, snr_db=None)
    mask = np.zeros((4, NY, 1), dtype=bool)
    mask[:, ::3] = True
    write_ismrmrd_raw(tmp_path / "us.h5", acq.kspace, acq.metadata, mask=mask)
    with pytest.raises(DataFileError, match="undersampled") as err:
        load_source(tmp_path / "us.h5")
    assert "us.h5" in str(err.value)


def write_mat73(path: Path, variables: dict[str, np.ndarray]) -> Path:
    """Arrays in MATLAB dimension order -> MATLAB v7.3 file (HDF5, reversed dims, real/imag compound)."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, arr in variables.items():
            stored = np.ascontiguousarray(np.transpose(arr))
            comp = np.empty(stored.shape, dtype=[("real", "<f4"), ("imag", "<f4")])
            comp["real"], comp["imag"] = stored.real, stored.imag
            f.create_dataset(name, data=comp).attrs["MATLAB_class"] = np.bytes_("single")
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116, b" ") + bytes(8) + b"\x00\x02IM"
    with open(path, "r+b") as fh:
        fh.write(header)
    return path


def test_cmrxrecon_source(tmp_path):
    rng = np.random.default_rng(0)
    nkx, nky, nc, nz, nt = 40, 32, 3, 2, 6  # MATLAB order (kx, ky, coil, slice, time)
    shape = (nkx, nky, nc, nz, nt)
    k = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    path = write_mat73(tmp_path / "cine_sax.mat", {"kspace_full": k})
    assert count_slices(path) == nz
    src = load_source(path)
    assert src.kspace.shape == (nz, nc, nt, nky, nkx) and src.labels is None
    assert np.array_equal(src.kspace.numpy(), np.transpose(k, (3, 2, 4, 1, 0)))
    assert src.metadata.view == "sax"
    ds = CineSliceDataset([str(path)], deterministic=True, patterns=("kt_gaussian",), accelerations=4, acs_lines=4,
                          normalize=False)
    item = ds[1]
    assert item["kspace"].shape == (nc, nt, nky, nkx)
    assert torch.all(item["labels"] == LABEL_IGNORE)
    full = src.kspace[1]
    assert torch.equal(item["kspace"][:, item["mask"]], full[:, item["mask"]])
    lines = (np.arange(nky) % 4 == 0)[None, :, None, None, None]
    undersampled = write_mat73(tmp_path / "cine_sax_kus_ktGaussian8.mat", {"kus": k * lines})
    with pytest.raises(DataFileError, match="undersampled"):
        load_source(undersampled)


@needs_sunnybrook
def test_sunnybrook_dicom_source_with_labels():
    ds = CineSliceDataset([str(PATIENT)], n_coils=2, deterministic=True, crop=(128, 128), patterns=("kt_radial",),
                          accelerations=8)
    assert len(ds) == 10
    src = ds.opened_source(str(PATIENT)).load([3])  # opened once, while indexing
    assert src.kspace.shape == (1, 2, 20, 256, 256)
    md = src.metadata
    assert md.simulated and md.source.startswith(f"simulated from DICOM {PATIENT}")
    assert md.extra["transposed"] is True and md.vendor.startswith("GE") and md.field_strength_t == 1.5
    assert src.label_classes == (0, 1, 2)
    labels = src.labels[0]
    labelled = [f for f in range(20) if bool((labels[f] != LABEL_IGNORE).any())]
    assert len(labelled) == 2  # end-diastole (endo + epicardium) and end-systole (endocardium only)
    full_frames = [f for f in labelled if bool((labels[f] == 2).any())]
    assert len(full_frames) == 1
    ed, es = full_frames[0], next(f for f in labelled if f not in full_frames)
    assert set(torch.unique(labels[ed]).tolist()) == {0, 1, 2}
    assert set(torch.unique(labels[es]).tolist()) == {1, LABEL_IGNORE}  # myocardium unlabelled, not background
    # labels lie on the image: bright blood pool, dark myocardium (checks the transposition)
    image = rss(ifft2c(src.kspace[0]))[ed]
    assert float(image[labels[ed] == 1].mean()) > 2 * float(image[labels[ed] == 2].mean())
    # a cropped dataset item of the same slice keeps the labelled frames
    item = ds[3]
    assert item["kspace"].shape == (2, 20, 128, 128) and item["labels"].shape == (20, 128, 128)
    assert item["context"]["vendor"].startswith("GE") and item["context"]["view"] == "sax"
    assert torch.equal(item["labels"], labels[:, 64:192, 64:192])


# ----------------------------------------------------------------------------- dataset items


def test_item_shapes_dtypes_and_context(val_ds):
    assert len(val_ds) == 6
    item = val_ds[2]
    assert item["kspace"].shape == (NC, NT, NY, NX) and item["kspace"].dtype == torch.complex64
    for key in ("mask", "acs"):
        assert item[key].shape == (NT, NY, NX) and item[key].dtype == torch.bool
    assert item["target"].shape == (NT, NY, NX) and item["target"].dtype == torch.float32
    assert item["labels"].shape == (NT, NY, NX) and item["labels"].dtype == torch.uint8
    assert set(item["context"]) == set(CONTEXT_KEYS)
    ctx = item["context"]
    assert ctx["modality"] == "cine" and ctx["view"] == "sax" and ctx["n_coils"] == NC
    assert ctx["field_strength_t"] is None and ctx["vendor"] is None  # unknown for the phantom
    assert ctx["pattern"] in PATTERNS
    assert item["max_value"] == item["target"].max() and item["scale"] > 0
    assert item["source"] == phantom_spec(3) and item["slice_index"] == 2
    if ctx["calibration"] == "acs":
        assert item["acs"].any() and torch.all(item["mask"][item["acs"]])
    else:
        assert not item["acs"].any()


def test_kspace_and_target_match_the_fully_sampled_data(train_ds):
    full = load_source(phantom_spec(3), n_coils=NC, seed=1, slices=[4]).kspace[0]
    for _ in range(4):
        item = train_ds[4]
        mask, scale = item["mask"], float(item["scale"])
        k = item["kspace"] * scale
        assert torch.all(k[:, ~mask] == 0)
        assert torch.allclose(k[:, mask], full[:, mask], rtol=1e-5, atol=1e-6 * float(full.abs().max()))
        assert torch.allclose(item["target"] * scale, rss(ifft2c(full)), rtol=1e-4, atol=1e-6)
        assert scale == pytest.approx(normalisation_scale(item["kspace"] * scale, mask), rel=1e-5)


@pytest.mark.parametrize("crop, frame_mode", [((80, 104), "crop"), (None, "resample")])
def test_noise_free_reference_is_the_noiseless_simulation(crop, frame_mode):
    """``reference="noise_free"``: same k-space as the default, target = RSS of the noiseless simulation
    brought through the same frame window / resampling and crop."""
    kw = dict(n_coils=NC, deterministic=True, seed=1, crop=crop, frames=5, frame_mode=frame_mode)
    clean = CineSliceDataset([phantom_spec(3)], reference="noise_free", **kw)[2]
    noisy = CineSliceDataset([phantom_spec(3)], **kw)[2]
    noiseless = CineSliceDataset([phantom_spec(3)], snr_db=None, **kw)[2]
    assert clean["reference"] == "noise_free" and noisy["reference"] == "fully_sampled"
    assert torch.equal(clean["kspace"], noisy["kspace"]) and torch.equal(clean["mask"], noisy["mask"])
    truth = noiseless["target"] * noiseless["scale"]
    assert torch.allclose(clean["target"] * clean["scale"], truth, rtol=1e-4, atol=1e-5 * float(truth.max()))
    assert float(clean["max_value"]) == pytest.approx(float(clean["target"].max()))
    # the noisy reference differs from the truth by the noise (30 dB): about 3 % of the signal
    err = float(((noisy["target"] - clean["target"]).abs().mean() / clean["target"].mean()))
    assert 0.005 < err < 0.2


def test_noise_free_reference_falls_back_for_measured_kspace(tmp_path):
    phantom = make_phantom(7, n_slices=6, n_frames=NT, matrix=(NY, NX), pixel_spacing_mm=(3.0, 3.0))
    write_simulated_scan(tmp_path / "scan.h5", simulate_kspace(phantom, n_coils=NC, seed=0, snr_db=20.0))
    full = load_source(tmp_path / "scan.h5")
    assert full.noise_free is None  # a k-space file holds no truth
    item = CineSliceDataset([str(tmp_path / "scan.h5")], reference="noise_free", deterministic=True)[1]
    assert item["reference"] == "fully_sampled"
    assert torch.allclose(item["target"] * item["scale"], rss(ifft2c(full.kspace[1])), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="reference"):
        CineSliceDataset([phantom_spec(1)], reference="clean")
    with pytest.raises(ValueError, match="reference"):
        CineDataModule(train_sources=[phantom_spec(1)], reference="truth")


def test_achieved_acceleration_matches_the_draw(train_ds):
    seen = set()
    for i in range(12):
        item = train_ds[i % len(train_ds)]
        r = item["requested_r"]
        assert 4 <= r <= 24
        if item["context"]["pattern"] == "uniform":
            # R counted outside the 16 ACS lines (CMRxRecon): a whole number of lattice lines,
            # the one nearest to the request
            outside = NY - 16
            assert abs(outside / item["context"]["r_cmrxrecon"] - outside / r) <= 0.5 + 1e-6
        else:
            assert abs(item["context"]["r_effective"] - r) <= 0.05 * r
        assert item["context"]["r_effective"] == pytest.approx(NT * NY * NX / float(item["mask"].sum()))
        seen.add(item["context"]["pattern"])
    assert len(seen) >= 2


def test_training_masks_change_and_validation_masks_repeat(train_ds, val_ds):
    draws = [train_ds[0]["mask"] for _ in range(4)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    first = val_ds[0]
    again = val_ds[0]
    fresh = CineSliceDataset([phantom_spec(3)], n_coils=NC, deterministic=True, seed=1)[0]  # a "new epoch / worker"
    for other in (again, fresh):
        assert torch.equal(first["mask"], other["mask"]) and first["requested_r"] == other["requested_r"]
        assert torch.equal(first["kspace"], other["kspace"])
    assert not torch.equal(val_ds[1]["mask"], first["mask"]) or val_ds[1]["requested_r"] != first["requested_r"]


def test_training_draws_are_reproducible_from_the_torch_seed():
    ds = CineSliceDataset([phantom_spec(3)], n_coils=NC, seed=1)
    torch.manual_seed(123)
    a = [ds[1]["mask"] for _ in range(2)]
    torch.manual_seed(123)
    b = [ds[1]["mask"] for _ in range(2)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_discrete_accelerations_and_cmrxrecon_convention():
    ds = CineSliceDataset([phantom_spec(3)], n_coils=NC, accelerations=[8, 12, 16], patterns=("kt_gaussian",),
                          convention="cmrxrecon", acs_lines=8)
    assert ds.acceleration_sampling == "choice"
    for i in range(6):
        item = ds[i]
        assert item["requested_r"] in (8.0, 12.0, 16.0)
        assert item["context"]["r_cmrxrecon"] == pytest.approx(item["requested_r"], rel=0.05)
        assert item["context"]["r_effective"] < item["context"]["r_cmrxrecon"]


def test_kt_gaussian_density_of_the_training_masks():
    """One density keeps the draws of the default (same pattern, R and seed) with that density's lines;
    several are drawn per item."""
    opts = dict(n_coils=NC, deterministic=True, seed=1, patterns=("kt_gaussian",), accelerations=[12, 24])
    broad = CineSliceDataset([phantom_spec(3)], **opts)
    steep = CineSliceDataset([phantom_spec(3)], densities=["kt-focuss"], **opts)
    a, b = broad[2], steep[2]
    assert a["requested_r"] == b["requested_r"] and int(a["mask"].sum()) == int(b["mask"].sum())
    assert not torch.equal(a["mask"], b["mask"])
    both = CineSliceDataset([phantom_spec(3)], densities=["broad", "kt-focuss"], **opts)
    rng = np.random.default_rng(0)
    drawn = {both._draw_mask(rng, (NT, NY, NX), "test")[0].density for _ in range(20)}
    assert drawn == {"broad", "kt-focuss"}
    radial = CineSliceDataset([phantom_spec(3)], n_coils=NC, patterns=("kt_radial",), densities=["kt-focuss"])
    assert radial._draw_mask(rng, (NT, NY, NX), "test")[0].density is None  # the density is kt_gaussian's only
    with pytest.raises(ValueError, match="densities"):
        CineSliceDataset([phantom_spec(3)], n_coils=NC, densities=["steep"])


def test_frames_crop_and_resample():
    crop = CineSliceDataset([phantom_spec(3)], n_coils=NC, frames=5, crop=(64, 80), deterministic=True)
    item = crop[0]
    assert item["kspace"].shape == (NC, 5, 64, 80) and item["mask"].shape == (5, 64, 80)
    assert item["labels"].shape == (5, 64, 80) and item["target"].shape == (5, 64, 80)
    src = load_source(phantom_spec(3), n_coils=NC, seed=0, slices=[0])
    # deterministic crop window starts at frame 0; centre crop keeps pixel n//2 at the centre
    assert torch.equal(item["labels"], src.labels[0, :5, 48 - 32 : 48 + 32, 48 - 40 : 48 + 40])
    up = CineSliceDataset([phantom_spec(3)], n_coils=NC, frames=16, frame_mode="resample", deterministic=True)[0]
    assert up["kspace"].shape == (NC, 16, NY, NX)
    lab = up["labels"]
    assert torch.equal(lab[::2], src.labels[0])  # frame 2j of 16 is frame j of 8
    assert torch.all(lab[1::2] == LABEL_IGNORE)
    pad = CineSliceDataset([phantom_spec(3)], n_coils=NC, crop=(100, 96), deterministic=True)[0]
    assert torch.all(pad["labels"][:, :2] == LABEL_IGNORE) and torch.all(pad["labels"][:, -2:] == LABEL_IGNORE)


# ----------------------------------------------------------------------------- batching


def test_collate_stacks_equal_items_and_refuses_unequal_ones(val_ds):
    batch = collate_cine([val_ds[0], val_ds[1]])
    assert batch["kspace"].shape == (2, NC, NT, NY, NX) and batch["scale"].shape == (2,)
    assert batch["context"]["n_coils"] == [NC, NC] and batch["slice_index"] == [0, 1]
    small = CineSliceDataset([phantom_spec(3)], n_coils=NC, crop=(64, 64), deterministic=True)[0]
    with pytest.raises(ValueError, match="batch_size=1"):
        collate_cine([val_ds[0], small])


def test_grouped_sampler_keeps_sources_together():
    ds = CineSliceDataset(["phantom:0-2?n_slices=6"], n_coils=NC)
    sampler = SourceGroupedSampler(ds, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(18))
    sources = [ds.index[i][0] for i in order]
    assert sum(a != b for a, b in zip(sources, sources[1:])) == 2  # three contiguous runs
    assert list(sampler) != order  # a new epoch, a new order


def test_grouped_sampler_repeats_weight_sources():
    ds = CineSliceDataset(["phantom:0-2?n_slices=2"], n_coils=NC)
    sampler = SourceGroupedSampler(ds, seed=0, repeats=[3, 0, 1])
    order = list(sampler)
    assert len(order) == len(sampler) == 8
    counts = [sum(ds.index[i][0] == src for i in order) for src in range(3)]
    assert counts == [6, 0, 2]
    with pytest.raises(ValueError, match="3 source specs"):
        SourceGroupedSampler(ds, repeats=[1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        SourceGroupedSampler(ds, repeats=[1, -1, 1])


def test_datamodule_train_source_repeats_follow_the_expanded_specs():
    dm = CineDataModule(
        train_sources=[f"phantom:0-1?{OPTS}", f"phantom:7?{OPTS}"], train_source_repeats=[1, 4], n_coils=NC,
    )
    dm.setup("fit")
    sampler = dm.train_dataloader().sampler
    seeds = [dm.train_dataset.specs[dm.train_dataset.index[i][0]] for i in sampler]
    assert sum("phantom:7" in s for s in seeds) == 4 * 6 and len(seeds) == 6 * 6
    with pytest.raises(ValueError, match="one repeat count per source"):
        CineDataModule(train_sources=[f"phantom:0?{OPTS}"], train_source_repeats=[1, 2])


def test_datamodule_setup_and_batches():
    dm = CineDataModule(
        train_sources=[f"phantom:0-1?{OPTS}"],
        val_sources=[phantom_spec(5)],
        patterns=["kt_uniform", "kt_gaussian"],
        accelerations=[6, 10],
        batch_size=2,
        crop=(64, 64),
        n_coils=NC,
    )
    dm.setup("fit")
    assert len(dm.train_dataset) == 12 and len(dm.val_dataset) == 6 and dm.val_dataset.deterministic
    batch = next(iter(dm.train_dataloader()))
    assert batch["kspace"].shape == (2, NC, NT, 64, 64) and batch["mask"].shape == (2, NT, 64, 64)
    assert len(batch["context"]["pattern"]) == 2
    v1 = next(iter(dm.val_dataloader()))
    v2 = next(iter(dm.val_dataloader()))
    assert torch.equal(v1["mask"], v2["mask"])
    with pytest.raises(ValueError, match="test_sources"):
        dm.setup("test")


# ----------------------------------------------------------------------------- bad input


def test_bad_specs_give_clear_errors(tmp_path):
    with pytest.raises(DataFileError, match="missing.h5"):
        load_source(tmp_path / "missing.h5")
    with pytest.raises(DataFileError, match="no such file"):
        expand_sources([str(tmp_path / "nothing")])
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataFileError, match="unknown source type"):
        load_source(tmp_path / "notes.txt")
    (tmp_path / "broken.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(DataFileError, match="broken.h5"):
        load_source(tmp_path / "broken.h5")
    with pytest.raises(ValueError, match="expand"):
        load_source("phantom:1-3")
    with pytest.raises(ValueError, match="pattern"):
        CineSliceDataset([phantom_spec(1)], patterns=("spiral",))
    with pytest.raises(ValueError, match="accelerations"):
        CineSliceDataset([phantom_spec(1)], accelerations=(0.5, 4))
    with pytest.raises(ValueError, match="crop"):
        CineSliceDataset([phantom_spec(1)], crop=(64,))
