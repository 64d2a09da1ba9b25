"""FID (Heusel et al., 2017): Inception-v3 pool features and the Fréchet distance between two feature sets.

The feature network is NVIDIA's TorchScript translation of TensorFlow's ``inception-2015-12-05`` graph,
the network of the original FID code, which StyleGAN2-ADA, StyleGAN3 and clean-fid compute FID with
(torchmetrics and torch-fidelity carry the same weights as a state dict for their own copy of the
architecture; both need torchvision, whose PyPI build does not import beside the CPU torch 2.13 we install). It
takes uint8 RGB batches of any size, resizes them to 299x299 itself and returns 2048 pool features.
It is read from a local file (``--inception-weights`` or ``$CODEC_LM_INCEPTION``); nothing is
downloaded. Any TorchScript module with the same call, ``module(uint8 NCHW, return_features=True)
-> (N, D)``, can stand in for it (the tests use a small random one).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from shared.errors import CodecLmError

INCEPTION_ENV = "CODEC_LM_INCEPTION"
INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
WHERE = (f"NVIDIA's TorchScript Inception-v3 for FID, {INCEPTION_FILE}, published at {INCEPTION_URL} "
         "(the file StyleGAN2-ADA/StyleGAN3 and clean-fid use)")
NO_FEATURE_NETWORK = (f"FID needs the Inception-v3 feature network as a local file: pass --inception-weights FILE or "
                      f"set {INCEPTION_ENV}=FILE. It is {WHERE}. Nothing is downloaded at run time.")


class FidError(CodecLmError):
    """The feature network is missing or is not what FID needs."""


class FeatureExtractor:
    """Pool features of RGB images with a TorchScript feature network read from a local file."""

    def __init__(self, path: str | os.PathLike | None, device: torch.device) -> None:
        given = path if path is not None else os.environ.get(INCEPTION_ENV)
        if not given:
            raise FidError(NO_FEATURE_NETWORK)
        self.path = Path(given)
        if not self.path.is_file():
            raise FidError(f"{self.path}: no such file. --inception-weights / {INCEPTION_ENV} must name {WHERE}.")
        self.device = device
        try:
            with warnings.catch_warnings():  # torch.jit.load's deprecation notice is not for our users
                warnings.simplefilter("ignore", DeprecationWarning)
                self.module = torch.jit.load(str(self.path), map_location=device).eval()
        except (RuntimeError, ValueError) as error:
            raise FidError(f"{self.path} is not a TorchScript module ({str(error).splitlines()[0]}). A state dict such "
                           "as torch-fidelity's weights-inception-2015-12-05-6726825d.pth holds weights without the "
                           f"network; use {WHERE}.") from None
        self.sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()
        probe = self(np.zeros((2, 32, 32, 3), np.uint8))  # fail now, not after hours of sampling
        self.dims = probe.shape[1]

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, D) float64."""
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"features need (N, H, W, 3) uint8 images, got {images.shape} {images.dtype}")
        batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(self.device)
        try:
            features = self.module(batch, return_features=True)
        except torch.OutOfMemoryError:
            raise  # a smaller --feature-batch-size helps; the file is fine
        except RuntimeError as error:
            raise FidError(f"{self.path} does not take module(uint8 NCHW images, return_features=True) "
                           f"({str(error).splitlines()[0]}); use {WHERE}.") from None
        if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[0] != len(images):
            raise FidError(f"{self.path} returned {getattr(features, 'shape', type(features))} for {len(images)} "
                           f"images, not (N, D) features; use {WHERE}.")
        return features.double().cpu().numpy()


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of (N, D) features."""
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"FID needs at least 2 feature vectors, got {features.shape}")
    features = features.astype(np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||² + tr(S1 + S2 - 2 (S1 S2)^½) between two Gaussians.

    tr (S1 S2)^½ = tr (S1^½ S2 S1^½)^½, and S1^½ S2 S1^½ is symmetric positive semi-definite, so both
    roots come from symmetric eigendecompositions: no complex parts, no singular-matrix retries.
    """
    def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
        values, vectors = np.linalg.eigh(matrix)
        return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T

    root1 = psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_of_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    difference = mu1 - mu2
    return float(difference @ difference + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_of_root)


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two sets of features (any sizes, same dimension)."""
    return max(0.0, frechet_distance(*statistics(features_a), *statistics(features_b)))
