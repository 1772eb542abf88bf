"""Image sources of `pfgdf_plugin.data`: ImageFolders read in the seeded order (only the images asked for), and a
broken image file named in the error, through the API and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pfgdf_plugin.cli import main
from pfgdf_plugin.data import calibration_loader, image_folder_classes, load_dataset


def image_folder(root, per_class: int, classes=("cat", "dog")):
    """``root/<class>/<n>.png``: 8x8 grey images whose every pixel is ``10 * class + n`` (so each is recognisable)."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for n in range(per_class):
            Image.fromarray(np.full((8, 8), 10 * c + n, dtype=np.uint8)).save(root / name / f"{n}.png")
    return root


def test_image_folder_reads_the_seeded_subset_with_its_labels(tmp_path):
    root = image_folder(tmp_path / "images", per_class=4)
    assert image_folder_classes(root) == ["cat", "dog"]
    full = load_dataset(root, (1, 8, 8), seed=3)
    part = load_dataset(root, (1, 8, 8), seed=3, limit=5)
    assert len(full) == 8 and len(part) == 5
    assert torch.equal(part.tensors[0], full.tensors[0][:5]) and torch.equal(part.tensors[1], full.tensors[1][:5])
    # Pixel value 10 * class + n, scaled to [0, 1] then standardised: the label must be the image's class.
    values = torch.round(((full.tensors[0][:, 0, 0, 0] * 0.5 + 0.5) * 255).double()).long()
    assert torch.equal(values // 10, full.tensors[1])
    assert sorted(values.tolist()) == [0, 1, 2, 3, 10, 11, 12, 13]


@pytest.mark.parametrize("damage", ["truncated", "not an image"])
def test_a_broken_image_is_named(tmp_path, damage):
    root = image_folder(tmp_path / "images", per_class=3)
    broken = root / "dog" / "1.png"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"this is no png")
    with pytest.raises(ValueError, match=r"data source .*images': cannot read image '.*dog/1\.png': \w+"):
        load_dataset(root, (1, 8, 8))


def test_the_cli_names_the_broken_image(tmp_path, capsys):
    root = image_folder(tmp_path / "images", per_class=3)
    (root / "cat" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "p.pt"
    code = main(["prune", "--model", "resnet18", "--input-size", "32", "--target-macs", "0.5", "--method", "chip",
                 "--calib-data", str(root), "--calib-batches", "1", "--calib-batch-size", "6", "--output", str(out),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("pfgdf prune: error: data source ") and "cat/2.png" in err
    assert "Traceback" not in err and not out.exists()


def test_a_class_folder_without_images_is_a_clear_error(tmp_path):
    root = image_folder(tmp_path / "images", per_class=2)
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match=r"data source .*images': .*empty.* \(expected root/<class>/<image> files\)"):
        calibration_loader(root, (1, 8, 8), batch_size=2, num_batches=1)
