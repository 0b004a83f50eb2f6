"""Datasets and a data order that can be restored in the middle of an epoch.

Datasets come from torchvision in their real on-disk formats (``CIFAR10/100(root,
download=False)``, ``ImageFolder``), from scikit-learn's bundled digits, or, for Fashion-MNIST,
from the four IDX ``.gz`` files that Debian's ``dataset-fashion-mnist`` package installs under
``/usr/share/datasets/fashion-mnist`` (read directly: torchvision's ``FashionMNIST`` wants them
uncompressed under ``ROOT/FashionMNIST/raw``). Nothing is downloaded; a missing or malformed
path is a :class:`DataError` that says what was expected where and how to get it.

Restorable order: epoch ``e`` visits the samples in the permutation ``DistributedSampler`` draws
from ``seed + e`` (the same permutation for any number of ranks; rank ``r`` takes every
``world``-th position), so optimizer step ``s`` always consumes the global positions
``[s·B, (s+1)·B)``. Resuming skips the consumed batches without loading them. Random
augmentation is seeded per sample from ``(seed, epoch, index)`` rather than drawn from the
global RNG, so it does not depend on which process or worker loads the sample, nor on what ran
before — a resumed run sees exactly the crops and flips the uninterrupted run saw.
"""

from __future__ import annotations

import contextlib
import math
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler

from .errors import DataError, RecipeError
from .recipe import DataSpec

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CIFAR_FILES = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "batches.meta",
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta"),
}


@dataclass
class DataBundle:
    """Train and validation datasets plus what the model must match."""

    train: Dataset
    val: Dataset
    num_classes: int
    description: str


def build_data(
    spec: DataSpec,
    root: str | Path | None,
    seed: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> DataBundle:
    """Open the recipe's dataset at ``root`` (or the recipe's own ``data.root``)."""
    root = root if root is not None else spec.root
    if spec.dataset == "digits":
        return _subset(_digits(spec, seed), spec)
    if spec.dataset == "fashion_mnist":
        folder = Path(root).expanduser() if root is not None else FASHION_MNIST_ROOT
        return _subset(_fashion_mnist(spec, folder, seed, mean, std), spec)
    if root is None:
        raise DataError(f"{spec.dataset} needs a data directory (--data PATH): {_expected(spec)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data path {str(root)!r} is not a directory: {_expected(spec)}")
    if spec.dataset in CIFAR_FILES:
        return _subset(_cifar(spec, root, seed, mean, std), spec)
    return _subset(_imagefolder(spec, root, seed, mean, std), spec)


def _subset(bundle: DataBundle, spec: DataSpec) -> DataBundle:
    """The first ``train_subset`` samples of a fixed permutation (seed 0): every run seed and
    every variant sees the same subset, so runs stay comparable."""
    n = spec.train_subset
    if n is None:
        return bundle
    train = bundle.train
    total = len(train)  # type: ignore[arg-type]
    if n > total:
        raise DataError(f"data.train_subset={n} is more than the {total} training samples")
    keep = torch.randperm(total, generator=torch.Generator().manual_seed(0))[:n].sort().values
    base = train.base if isinstance(train, SeededTransform) else train
    subset = torch.utils.data.Subset(base, keep.tolist())
    transform = train.transform if isinstance(train, SeededTransform) else None
    seed = train.seed if isinstance(train, SeededTransform) else 0
    description = f"{bundle.description}, training on a fixed subset of {n}"
    return DataBundle(
        SeededTransform(subset, transform, seed), bundle.val, bundle.num_classes, description
    )


def _expected(spec: DataSpec) -> str:
    if spec.dataset in CIFAR_FILES:
        folder, train, test, meta = CIFAR_FILES[spec.dataset]
        return (
            f"expected the CIFAR python version, DIR/{folder}/ holding "
            f"{', '.join([*train, *test, meta])}"
        )
    return (
        f"expected an ImageFolder tree, DIR/{spec.train_split}/CLASS/*.jpg|png and "
        f"DIR/{spec.val_split}/CLASS/*.jpg|png"
    )


# ----------------------------------------------------------------------------- datasets
def _without_md5(base: type) -> dict[str, Any]:
    # torchvision checks each file's md5 against the official release. That guards downloads,
    # which never happen here; without it, a subset written in the same format also loads.
    return {
        "train_list": [[name, None] for name, _ in base.train_list],
        "test_list": [[name, None] for name, _ in base.test_list],
        "meta": {**base.meta, "md5": None},
    }


def _local_cifar(name: str) -> type:
    from torchvision import datasets

    base = getattr(datasets, name)
    cls = type(f"_Local{name}", (base,), _without_md5(base))
    cls.__module__ = __name__
    return cls


def _digits(spec: DataSpec, seed: int) -> DataBundle:
    from ..zoo import digits_data

    if spec.augment != "none":
        raise RecipeError(
            "data.augment must be 'none' for digits (8x8 digits are used as they are)"
        )
    x_train, y_train, x_test, y_test = digits_data()
    return DataBundle(
        SeededTransform(torch.utils.data.TensorDataset(x_train, y_train), None, seed),
        torch.utils.data.TensorDataset(x_test, y_test),
        10,
        f"scikit-learn digits ({len(y_train)} train / {len(y_test)} test)",
    )


FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (gzipped or not) as a uint8 tensor: magic ``0x0000 0x08 ndim``, big-endian
    int32 sizes, then the bytes."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path} cannot be read as an IDX file ({exc})") from None
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) - offset != math.prod(dims):
        raise DataError(f"{path} is truncated: {dims} needs {math.prod(dims)} bytes")
    return torch.frombuffer(bytearray(data[offset:]), dtype=torch.uint8).reshape(dims)


def _fashion_mnist(
    spec: DataSpec,
    root: Path,
    seed: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> DataBundle:
    missing = [
        name
        for pair in FASHION_MNIST_FILES.values()
        for name in pair
        if not (root / name).is_file()
    ]
    if missing:
        raise DataError(
            f"fashion_mnist: {root} lacks {', '.join(missing)}; install the Debian package "
            "(apt-get install dataset-fashion-mnist, which puts the IDX files under "
            f"{FASHION_MNIST_ROOT}) or point --data at a directory holding those four files"
        )
    if spec.image_size not in (None, 28):
        raise DataError(f"fashion_mnist: images are 28x28; image_size={spec.image_size}")
    m, s = _norm(mean, std, FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    splits = []
    for images_name, labels_name in FASHION_MNIST_FILES.values():
        images, labels = read_idx(root / images_name), read_idx(root / labels_name)
        if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
            raise DataError(f"fashion_mnist: {root / images_name} and its labels do not match")
        x = images.unsqueeze(1).float().div_(255.0).sub_(m[0]).div_(s[0])
        splits.append(torch.utils.data.TensorDataset(x, labels.long()))
    train_tf = None
    if spec.augment == "cifar":
        from torchvision import transforms as T

        # On tensors: pad 4 and take a random 28x28 window, random horizontal flip.
        train_tf = T.Compose([T.RandomCrop(28, padding=4), T.RandomHorizontalFlip()])
    elif spec.augment != "none":
        raise RecipeError("data.augment for fashion_mnist must be 'none' or 'cifar'")
    return DataBundle(
        SeededTransform(splits[0], train_tf, seed),
        splits[1],
        10,
        f"Fashion-MNIST at {root} ({len(splits[0])} train / {len(splits[1])} test)",
    )


def _cifar(
    spec: DataSpec,
    root: Path,
    seed: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> DataBundle:
    folder, train_files, test_files, meta = CIFAR_FILES[spec.dataset]
    missing = [f for f in (*train_files, *test_files, meta) if not (root / folder / f).is_file()]
    if missing:
        raise DataError(
            f"{spec.dataset}: {root / folder} lacks {', '.join(missing)}; {_expected(spec)}"
        )
    if spec.image_size not in (None, 32):
        raise DataError(f"{spec.dataset}: images are 32x32; image_size={spec.image_size}")
    cls = _LocalCIFAR10 if spec.dataset == "cifar10" else _LocalCIFAR100
    try:
        train = cls(str(root), train=True, download=False)
        val = cls(str(root), train=False, download=False)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, OSError) as exc:
        raise DataError(
            f"{spec.dataset}: files under {root / folder} are not CIFAR python batches "
            f"({type(exc).__name__}: {exc}); {_expected(spec)}"
        ) from None
    num_classes = len(train.classes)
    for ds in (train, val):
        if ds.targets and not 0 <= min(ds.targets) <= max(ds.targets) < num_classes:
            raise DataError(f"{spec.dataset}: labels outside 0..{num_classes - 1} under {root}")
    m, s = _norm(mean, std, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    train_tf, val_tf = _transforms(spec, 32, m, s)
    val.transform = val_tf
    return DataBundle(
        SeededTransform(train, train_tf, seed),
        val,
        num_classes,
        f"{spec.dataset} at {root} ({len(train)} train / {len(val)} test)",
    )


def _imagefolder(
    spec: DataSpec,
    root: Path,
    seed: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> DataBundle:
    from torchvision import datasets

    splits = {}
    for split in (spec.train_split, spec.val_split):
        path = root / split
        if not path.is_dir():
            raise DataError(f"imagefolder: {path} is not a directory; {_expected(spec)}")
        try:
            splits[split] = datasets.ImageFolder(str(path), is_valid_file=_is_image)
        except (FileNotFoundError, OSError) as exc:
            raise DataError(f"imagefolder: {path}: {exc}; {_expected(spec)}") from None
    train, val = splits[spec.train_split], splits[spec.val_split]
    if train.classes != val.classes:
        raise DataError(
            f"imagefolder: class folders differ between {root / spec.train_split} "
            f"({len(train.classes)}) and {root / spec.val_split} ({len(val.classes)})"
        )
    size = spec.image_size or 224
    m, s = _norm(mean, std, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    train_tf, val_tf = _transforms(spec, size, m, s)
    train.transform = None
    val.transform = val_tf
    return DataBundle(
        SeededTransform(train, train_tf, seed),
        val,
        len(train.classes),
        f"ImageFolder at {root} ({len(train)} train / {len(val)} val, {len(train.classes)} "
        "classes)",
    )


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMG_EXTENSIONS)


def _norm(
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    default_mean: Sequence[float],
    default_std: Sequence[float],
) -> tuple[Sequence[float], Sequence[float]]:
    return (mean or default_mean), (std or default_std)


def _transforms(
    spec: DataSpec, size: int, mean: Sequence[float], std: Sequence[float]
) -> tuple[Any, Any]:
    """Training and evaluation transforms for ``spec.augment`` (the papers' augmentations)."""
    from torchvision import transforms as T

    tail = [T.ToTensor(), T.Normalize(mean, std)]
    if spec.augment == "cifar":
        # Pad 4 and take a random 32x32 window, random horizontal flip (paper section 4.2).
        train = [T.RandomCrop(size, padding=4), T.RandomHorizontalFlip()]
        val: list[Any] = []
    elif spec.augment == "imagenet":
        # Random-resized crop and horizontal flip; centre crop for test (paper section 4.2),
        # resizing to size / 0.875 first as the Bi-Real and ReActNet code does (256 for 224).
        train = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
        val = [T.Resize(round(size / 0.875)), T.CenterCrop(size)]
    else:
        train, val = [], []
        if spec.dataset == "imagefolder":
            train = val = [T.Resize(size), T.CenterCrop(size)]
    rgb = [T.Lambda(_to_rgb)] if spec.dataset == "imagefolder" else []
    return T.Compose([*rgb, *train, *tail]), T.Compose([*rgb, *val, *tail])


def _to_rgb(img: Any) -> Any:
    return img.convert("RGB") if getattr(img, "mode", "RGB") != "RGB" else img


# ----------------------------------------------------------------------------- ordering
def _sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed per (run seed, epoch, sample); splitmix64 mixing keeps nearby keys apart."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index) & (2**64 - 1)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (x ^ (x >> 31)) & (2**63 - 1)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run a block on the CPU generator seeded with ``seed``, then restore the global state."""
    state = torch.get_rng_state()
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(state)


class SeededTransform(Dataset):
    """A training dataset indexed by ``(epoch, index)`` whose augmentation is seeded per sample."""

    def __init__(self, base: Dataset, transform: Any, seed: int) -> None:
        self.base = base
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[Any, Any]:
        epoch, index = key
        x, y = self.base[index]
        if self.transform is not None:
            with _seeded(_sample_seed(self.seed, epoch, index)):
                x = self.transform(x)
        return x, y


class ResumableBatches(Sampler[list[tuple[int, int]]]):
    """Micro-batches of one epoch, starting after the ``skip`` already consumed ones.

    Wraps a ``DistributedSampler`` (shuffled by ``seed + epoch``, ``drop_last``) and yields
    exactly ``num_batches - skip`` batches of ``(epoch, index)`` keys; the skipped ones are never
    loaded. The tail that does not fill a whole optimizer step is dropped, on every rank alike.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        epoch: int,
        seed: int,
        micro_batch: int,
        num_batches: int,
        skip: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.sampler = DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.sampler.set_epoch(epoch)
        self.epoch = epoch
        self.batches = BatchSampler(self.sampler, micro_batch, drop_last=True)
        self.num_batches = num_batches
        self.skip = skip

    def __len__(self) -> int:
        return max(0, self.num_batches - self.skip)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for i, batch in enumerate(self.batches):
            if i >= self.num_batches:
                return
            if i >= self.skip:
                yield [(self.epoch, idx) for idx in batch]


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps per epoch for a global batch (the tail that does not fill one is dropped)."""
    return n // batch_size


def train_loader(
    dataset: Dataset,
    spec: DataSpec,
    *,
    epoch: int,
    seed: int,
    micro_batch: int,
    num_batches: int,
    skip: int,
    rank: int,
    world: int,
) -> DataLoader:
    """The loader for one (possibly partial) training epoch on this rank."""
    sampler = ResumableBatches(
        dataset,
        epoch=epoch,
        seed=seed,
        micro_batch=micro_batch,
        num_batches=num_batches,
        skip=skip,
        rank=rank,
        world=world,
    )
    # A private generator: creating the iterator must not draw from the global RNG, or a
    # resumed run (which creates it at a different point) would shift the global stream.
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=spec.num_workers,
        generator=torch.Generator().manual_seed(seed + epoch),
    )


def eval_loader(dataset: Dataset, spec: DataSpec, *, rank: int, world: int) -> DataLoader:
    """Sequential evaluation over this rank's share (every ``world``-th sample, no padding)."""
    indices = list(range(rank, len(dataset), world))  # type: ignore[arg-type]
    subset = torch.utils.data.Subset(dataset, indices)
    return DataLoader(
        subset,
        batch_size=spec.eval_batch_size or spec.batch_size,
        shuffle=False,
        num_workers=spec.num_workers,
        generator=torch.Generator().manual_seed(0),
    )


# Module-level so that DataLoader workers can pickle the datasets.
_LocalCIFAR10 = _local_cifar("CIFAR10")
_LocalCIFAR100 = _local_cifar("CIFAR100")
