"""Small dataset files in the real formats, written by the tests, with RemoteFile tables of their md5s."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from dpdiffusion.data.download import RemoteFile

CELEBA_ATTRIBUTES = ("5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
                     "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
                     "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard "
                     "Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair "
                     "Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie "
                     "Young").split()


def file_remote(path: Path) -> RemoteFile:
    """A RemoteFile for a file the test wrote: its md5 as published, a file:// address."""
    return RemoteFile(path.name, (path.as_uri(),), file_md5=hashlib.md5(path.read_bytes()).hexdigest())


def idx_bytes(array: np.ndarray) -> bytes:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_gz(path: Path, array: np.ndarray) -> RemoteFile:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(idx_bytes(array))
    return file_remote(path)


def cifar_batch(rng: np.random.Generator, records: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """A binary batch: per record, a label byte then 1024 red, 1024 green, 1024 blue bytes."""
    images = rng.integers(0, 256, (records, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, records, dtype=np.uint8)
    content = b"".join(bytes([label]) + image.tobytes() for label, image in zip(labels, images))
    return content, images, labels


def write_cifar(folder: Path, records: int = 20, seed: int = 0,
                damaged: dict[str, bytes] | None = None) -> tuple[dict[str, tuple], RemoteFile]:
    """``folder/cifar10/cifar-10-binary.tar.gz`` with the canonical member names (``damaged`` replaces some
    members' bytes); each batch's (bytes, images, labels) and the archive's RemoteFile."""
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    batches = {name: cifar_batch(rng, records) for name in names}
    contents = {name: batch[0] for name, batch in batches.items()} | (damaged or {})
    path = folder / "cifar10" / "cifar-10-binary.tar.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for name in ["batches.meta.txt", *names, "readme.html"]:
            content = contents.get(name, b"not a batch\n")
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return batches, file_remote(path)


def jpeg(rng: np.random.Generator, size: tuple[int, int] = (178, 218)) -> bytes:
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=95)
    return out.getvalue()


def write_celeba(folder: Path, partition: tuple[int, ...] = (0, 0, 0, 1, 2, 2), seed: int = 0,
                 replace: dict[int, bytes] | None = None) -> tuple[dict[str, RemoteFile], np.ndarray]:
    """``folder/celeba/`` with img_align_celeba.zip (``replace``: other bytes for some images),
    list_attr_celeba.txt and list_eval_partition.txt in the canonical formats; their RemoteFile table and
    the attributes [N, 40] of +1/-1."""
    rng = np.random.default_rng(seed)
    root = folder / "celeba"
    root.mkdir(parents=True, exist_ok=True)
    files = [f"{i + 1:06d}.jpg" for i in range(len(partition))]
    with zipfile.ZipFile(root / "img_align_celeba.zip", "w") as archive:
        archive.writestr("img_align_celeba/", b"")
        for i, file in enumerate(files):
            content = jpeg(rng)
            archive.writestr(f"img_align_celeba/{file}", (replace or {}).get(i, content))
    attributes = rng.choice(np.array([-1, 1]), (len(files), len(CELEBA_ATTRIBUTES)))
    rows = [f"{file} " + " ".join(f"{v:2d}" for v in row) for file, row in zip(files, attributes)]
    (root / "list_attr_celeba.txt").write_text(f"{len(files)}\n" + " ".join(CELEBA_ATTRIBUTES) + " \n"
                                                + "\n".join(rows) + "\n")
    (root / "list_eval_partition.txt").write_text("".join(f"{f} {p}\n" for f, p in zip(files, partition)))
    table = {"images": "img_align_celeba.zip", "attributes": "list_attr_celeba.txt",
             "partition": "list_eval_partition.txt"}
    return {key: file_remote(root / name) for key, name in table.items()}, attributes


def write_png(path: Path, size: tuple[int, int], value: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    pixels = np.full((size[1], size[0], channels), value, dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels).save(path)  # mode from the shape
