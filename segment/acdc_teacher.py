"""The ACDC-trained cine segmentation network of ``myopari`` (baseline and RV teacher).

``myopari==0.1.6`` ships ``Resources/tiramisu_acdc_fp32.onnx`` (MIT licence): a Tiramisu
network trained on ACDC, input float32 ``[N, 1, 256, 256]`` (min-max normalised), output
``[N, 4, 256, 256]`` class probabilities with ACDC labels 0 background, 1 RV, 2 MYO, 3 LV.
Here it runs through onnxruntime on CPU and its classes are reordered to the project
convention (0 bg, 1 LV blood, 2 LV myocardium, 3 RV blood).

``myopari`` declares GPU dependencies it does not need: install it with
``pip install --no-deps myopari==0.1.6`` (see ``requirements-nodeps.txt``).  It is only a
baseline / teacher; the CardioMM segmenter does not need it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from segment.preprocess import GridGeometry, to_model_grid

__all__ = ["ACDC_TO_CARDIOMM", "AcdcTeacher", "acdc_model_path"]

#: channel order that turns ACDC output channels (bg, RV, MYO, LV) into ours (bg, LV, MYO, RV)
ACDC_TO_CARDIOMM = (0, 3, 2, 1)


def acdc_model_path() -> Path:
    """Path of ``tiramisu_acdc_fp32.onnx`` inside the installed ``myopari`` package.

    Raises:
        ImportError: ``myopari`` is not installed (with the command that installs it).
    """
    spec = importlib.util.find_spec("myopari")  # not imported: its __init__ pulls in napari
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the ACDC baseline/teacher needs the package myopari: pip install --no-deps myopari==0.1.6 onnxruntime"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "Resources" / "tiramisu_acdc_fp32.onnx"
    if not path.is_file():
        raise ImportError(f"myopari is installed but {path} is missing; reinstall myopari==0.1.6 with --no-deps")
    return path


def _minmax(image: np.ndarray) -> np.ndarray:
    """myopari's normalisation: clip to the 0.05 / 99.05 percentiles of the non-zero pixels, scale to [0, 1]."""
    nz = image[image > 0]
    if nz.size == 0:
        raise ValueError("image has no positive pixels: nothing to segment")
    low, high = np.percentile(nz, [0.05, 99.05])
    if not high > low:
        raise ValueError("image is constant: nothing to segment")
    return ((np.clip(image, low, high) - low) / (high - low)).astype(np.float32)


class AcdcTeacher:
    """onnxruntime session of the myopari ACDC network (CPU, one thread by default)."""

    def __init__(self, n_threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise ImportError("the ACDC baseline/teacher needs onnxruntime (pip install onnxruntime)") from err
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = n_threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(acdc_model_path()), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def probabilities_grid(self, grid01: np.ndarray, batch: int = 4) -> np.ndarray:
        """Class probabilities on the model grid in the CardioMM label order.

        Args:
            grid01: float32 ``[n, 256, 256]`` images already min-max normalised to ``[0, 1]``.
        Returns:
            float32 ``[n, 4, 256, 256]`` probabilities (0 bg, 1 LV blood, 2 LV myo, 3 RV blood).
        """
        x = np.asarray(grid01, dtype=np.float32)[:, None]
        out = [self.session.run(None, {self.input_name: x[i: i + batch]})[0] for i in range(0, len(x), batch)]
        return np.concatenate(out)[:, list(ACDC_TO_CARDIOMM)].astype(np.float32)

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """One ``[y, x]`` magnitude image -> float32 ``[256, 256]`` teacher input (myopari normalisation)."""
        geom = GridGeometry.for_shape(image.shape)
        return to_model_grid(_minmax(np.asarray(image, dtype=np.float32))[None], geom)[0].numpy()

    def segment(self, images: np.ndarray) -> np.ndarray:
        """Labels (argmax, no post-processing) for ``[..., y, x]`` magnitude images.

        Returns:
            uint8 ``[..., y, x]`` in the CardioMM convention.
        """
        import torch

        from segment.preprocess import from_model_grid

        arr = np.asarray(images, dtype=np.float32)
        flat = arr.reshape(-1, *arr.shape[-2:])
        geom = GridGeometry.for_shape(arr.shape[-2:])
        grid = np.stack([self.prepare(im) for im in flat])
        probs = from_model_grid(torch.from_numpy(self.probabilities_grid(grid)), geom)
        return probs.argmax(1).numpy().astype(np.uint8).reshape(arr.shape)
