"""Deployment exports: the bit-packed safetensors file, torch.export and ONNX.

The packed file must rebuild a model whose outputs equal ``uc.freeze``'s bit for bit, for
every zoo model (the ImageNet-size ones other than Bi-Real ResNet-18 are marked slow) and for
a model trained with vetoed flips; it must be much smaller than the float checkpoint; and
every bad input must fail with a clear error and leave no file behind.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import uabnn_convert as uc
import uabnn_convert.zoo as zoo
from uabnn_convert.deploy import (
    decode_signbits,
    deploy,
    encode_signbits,
    export_onnx,
    export_packed,
    is_packed_file,
    load_packed,
    pack_bits,
    packed_report,
    read_packed_header,
    unpack_bits,
)
from uabnn_convert.deploy.bits import BIT_ORDER
from uabnn_convert.deploy.packed import FORMAT, FORMAT_VERSION
from uabnn_convert.errors import CheckpointError, ExportError, UabnnError

pytestmark = pytest.mark.filterwarnings("ignore:.*should not be instantiated")

HEAVY = {"bireal_resnet34", "reactnet_resnet18", "irnet_resnet18", "bonn_resnet18"}
HEAVY |= {"xnor_resnet18", "wrn22_64"}


def _input(name: str, batch: int = 2, seed: int = 0) -> torch.Tensor:
    if name in ("bireal_digits", "bitnet_tiny"):
        shape = (1, 8, 8)
    elif name.endswith("_fmnist"):
        shape = (1, 28, 28)
    else:
        shape = (3, 32, 32)
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))


def _held(model: nn.Module, x: torch.Tensor, delta: float = 0.1) -> nn.Module:
    """Patch and run one training-mode forward, so that every site holds its state."""
    uc.patch(model, delta=delta)
    model.train()
    model(x)
    return model


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a.view(torch.int32), b.view(torch.int32))


def _frozen_out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return uc.freeze(model)(x)


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ------------------------------------------------------------------------------ bit packing


def test_pack_bits_is_little_endian_within_each_byte() -> None:
    bits = torch.tensor([1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1], dtype=torch.bool)
    assert pack_bits(bits).tolist() == [0b00000001, 0b10000010, 0b00000001]
    assert BIT_ORDER == "little"
    for n in (1, 7, 8, 9, 64, 1001):
        b = torch.rand(n, generator=torch.Generator().manual_seed(n)) < 0.5
        packed = pack_bits(b)
        assert packed.dtype == torch.uint8 and packed.numel() == (n + 7) // 8
        assert torch.equal(unpack_bits(packed, n), b)
    with pytest.raises(ValueError, match="packed bytes"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 30)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_signbits_reproduce_every_bit_with_exceptions(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    scale = torch.rand(16, 1, 1, 1, generator=g) + 0.1
    signs = torch.where(torch.rand(16, 8, 3, 3, generator=g) < 0.5, -1.0, 1.0)
    value = (signs * scale).to(dtype)
    flat = value.view(-1)
    flat[3] = 0.0  # sign(0) of a held state
    flat[5] = -0.0
    flat[7] = torch.nextafter(flat[7], torch.tensor(10.0, dtype=dtype))  # ulp rounding
    flat[11] = 123.0
    parts, meta = encode_signbits(value)
    assert meta["factor_dim"] == 0 and meta["exceptions"] == 4
    assert meta["shape"] == [16, 8, 3, 3] and meta["dtype"] == str(dtype).split(".")[1]
    decoded = decode_signbits(parts, json.loads(json.dumps(meta)))
    assert torch.equal(decoded.view(-1).view(torch.int8), value.view(-1).view(torch.int8))
    assert parts["bits"].numel() == value.numel() // 8


def test_signbits_pick_the_factor_layout() -> None:
    g = torch.Generator().manual_seed(1)
    signs = torch.where(torch.rand(12, 20, generator=g) < 0.5, -1.0, 1.0)
    assert encode_signbits(signs * 0.25)[1]["factor_dim"] is None
    assert encode_signbits(signs * torch.rand(12, 1, generator=g))[1]["factor_dim"] == 0
    parts, meta = encode_signbits(signs * torch.rand(1, 20, generator=g))
    assert meta["factor_dim"] == 1 and meta["exceptions"] == 0
    assert parts["factor"].shape == (1, 20)
    assert encode_signbits(torch.ones(3, dtype=torch.int64)) is None


# ------------------------------------------------------------------- the zoo, bit for bit


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Iterator[Callable[[str], tuple[nn.Module, Path]]]:
    """Cache of ``name -> (converted model, packed path)`` shared by the zoo tests."""
    cache: dict = {}
    directory = tmp_path_factory.mktemp("packed")

    def get(name: str):
        if name not in cache:
            torch.manual_seed(0)
            model = _held(timm.create_model(name), _input(name))
            cache[name] = model, export_packed(model, directory / f"{name}.st", arch=name)
        return cache[name]

    yield get


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in zoo.MODELS]
)
def test_zoo_model_round_trips_bit_for_bit(name: str, exported) -> None:
    model, path = exported(name)
    x = _input(name, seed=1)
    expected = _frozen_out(model, x)
    loaded = load_packed(path)
    assert not loaded.training
    with torch.no_grad():
        got = loaded(x)
        converted = model.eval()(x)
    assert _bits_equal(got, expected)
    assert _bits_equal(got, converted)
    header = read_packed_header(path)
    assert set(header["sites"]) == {n for n, _ in uc.sites(model)}


@pytest.mark.parametrize("family", sorted(zoo.FAMILIES))
def test_every_family_round_trips_through_a_factory(family: str, tmp_path: Path) -> None:
    """Each family's binary layer on the small WRN-22 layout, rebuilt from a
    ``package.module:factory`` reference, which needs ``trust_code``."""
    torch.manual_seed(0)
    kwargs = {"channels": [8, 8, 16, 16], "family": family}
    model = _held(zoo.binary_wrn22(**kwargs), _input("wrn"))
    path = export_packed(
        model, tmp_path / "m.st", arch="uabnn_convert.zoo:binary_wrn22", arch_kwargs=kwargs
    )
    with pytest.raises(CheckpointError, match="trust_code=True"):
        load_packed(path)
    loaded = load_packed(path, trust_code=True)
    x = _input("wrn", seed=2)
    with torch.no_grad():
        assert _bits_equal(loaded(x), _frozen_out(model, x))
    packed = read_packed_header(path)["packed"]
    assert len(packed) == len(list(uc.sites(model)))


def _held_differs_from_sign(model: nn.Module) -> int:
    total = 0
    for name, site in uc.sites(model):
        latent = model.get_submodule(name.rsplit(".", 1)[0]).weight
        total += int((site.held != torch.sign(latent).to(torch.int8)).sum())
    return total


def test_trained_model_with_vetoed_flips_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x_train, y_train, x_test, _ = zoo.digits_data()
    model = timm.create_model("bireal_digits")
    uc.patch(model, delta=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(20):
        idx = torch.randint(0, len(y_train), (64,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
        opt.step()
    model(x_train[:64])  # the state follows the last step too
    assert _held_differs_from_sign(model) > 0
    path = export_packed(model, tmp_path / "digits.st", arch="bireal_digits")
    loaded = load_packed(path)
    with torch.no_grad():
        assert _bits_equal(loaded(x_test), _frozen_out(model, x_test))
    assert packed_report(path).total["exceptions"] > 0


def test_bireal_resnet18_file_is_over_ten_times_smaller(exported) -> None:
    _, path = exported("bireal_resnet18")
    float_model = timm.create_model("bireal_resnet18")
    buffer = io.BytesIO()
    torch.save(float_model.state_dict(), buffer)
    float_bytes, packed_bytes = buffer.getbuffer().nbytes, path.stat().st_size
    ratio = float_bytes / packed_bytes
    print(f"bireal_resnet18: float {float_bytes:,} B, packed {packed_bytes:,} B, {ratio:.2f}x")
    assert ratio > 10
    # the binary convs are 1 bit per weight plus a per-channel factor and a few exceptions
    report = packed_report(path)
    binary = [r for r in report.rows if r["encoding"] == "signbits"]
    assert len(binary) == 16
    assert sum(r["stored_bytes"] for r in binary) < 1.1 * sum(r["elements"] for r in binary) / 8


# ------------------------------------------------------------------------- file contents


def test_header_and_raw_tensors(exported) -> None:
    from safetensors import safe_open

    model, path = exported("irnet_resnet20")
    head = path.read_bytes()[:9]
    assert head[8:9] == b"{"  # a safetensors JSON header, no pickle
    header = read_packed_header(path)
    assert header["format"] == FORMAT and header["format_version"] == FORMAT_VERSION
    assert header["arch"] == "irnet_resnet20" and header["arch_kwargs"] == {}
    assert header["bit_order"] == "little" and "bit (i % 8) of byte i // 8" in header["packing"]
    for name, site in uc.sites(model):
        entry = header["sites"][name]
        assert entry["shape"] == list(site.shape) and entry["family"] == "irnet"
        (tensor,) = entry["tensors"]
        assert header["packed"][tensor]["shape"] == list(site.shape)
    state = model.state_dict()
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["uabnn_packed"]) == header
        for key in ("conv1.weight", "fc.weight", "layer2.0.bn.running_var", "layer1.0.post"):
            if key in state:
                assert torch.equal(f.get_tensor(key), state[key])
        assert torch.equal(f.get_tensor("layer3.1.binary_conv.k"), state["layer3.1.binary_conv.k"])
        stored = set(f.keys())
    assert "layer1.0.binary_conv.weight" not in stored  # the latent is not needed
    assert is_packed_file(path)
    report = packed_report(path)
    assert report.total["file_bytes"] == path.stat().st_size
    assert "signbits" in str(report)


def test_deploy_keeps_only_what_the_layers_multiply_by() -> None:
    torch.manual_seed(0)
    model = _held(timm.create_model("bireal_digits"), _input("bireal_digits"))
    deployed = deploy(model)
    conv = deployed.layer1[0].binary_conv
    assert set(dict(conv.named_parameters())) == set()
    assert set(dict(conv.named_buffers())) == {"folded_add"}
    x = _input("bireal_digits", seed=3)
    with torch.no_grad():
        assert _bits_equal(deployed(x), _frozen_out(model, x))


# ------------------------------------------------------------------------------- bad input


def test_unconverted_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(uc.ConversionError, match="no c-sign site"):
        export_packed(timm.create_model("bireal_digits"), tmp_path / "m.st")
    assert _files(tmp_path) == []


def test_model_without_held_state_packs_like_freeze(tmp_path: Path) -> None:
    """A site that holds no state yet (no training update) is packed with the sign of its
    latent, exactly as freeze (and the plain frozen file) evaluates it: one rule for both."""
    torch.manual_seed(0)
    model = uc.patch(timm.create_model("bireal_digits")).train()
    assert all(int(s.num_updates) == 0 for _, s in uc.sites(model))
    path = export_packed(model, tmp_path / "m.st", arch="bireal_digits")
    loaded = load_packed(path)
    frozen = uc.freeze(model)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), frozen(x))


def test_missing_directory_is_named(tmp_path: Path, exported) -> None:
    model, _ = exported("bireal_digits")
    target = tmp_path / "nowhere" / "m.st"
    with pytest.raises(ExportError, match=f"directory {tmp_path / 'nowhere'} does not exist"):
        export_packed(model, target)
    assert _files(tmp_path) == []


def test_wrong_architecture_fails_before_writing(tmp_path: Path, exported) -> None:
    model, _ = exported("bireal_digits")
    with pytest.raises(ExportError, match="does not build this model"):
        export_packed(model, tmp_path / "m.st", arch="bireal_digits", arch_kwargs={"width": 16})
    assert _files(tmp_path) == []


def test_failed_write_leaves_no_partial_file(tmp_path: Path, exported, monkeypatch) -> None:
    model, _ = exported("bireal_digits")
    target = tmp_path / "m.st"
    target.write_bytes(b"previous")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        export_packed(model, target)
    assert target.read_bytes() == b"previous"
    assert _files(tmp_path) == ["m.st"]


@pytest.fixture
def good_file(exported, tmp_path: Path) -> Path:
    _, path = exported("bireal_digits")
    copy = tmp_path / "good.st"
    copy.write_bytes(path.read_bytes())
    return copy


def _rewrite_header(path: Path, change) -> None:
    from safetensors.torch import load, save

    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8 : 8 + size])["__metadata__"]
    header = json.loads(meta["uabnn_packed"])
    change(header)
    path.write_bytes(save(load(data), metadata={"uabnn_packed": json.dumps(header)}))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-100]), "truncated or corrupted"),
        (lambda p: p.write_bytes(p.read_bytes()[:5]), "too short"),
        (lambda p: p.write_bytes(b"\xff" * 4096), "truncated or corrupted"),
        (lambda p: p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!"), "no safe"),
        (lambda p: torch.save({"w": torch.ones(2)}, p), "PyTorch checkpoint"),
        (lambda p: _rewrite_header(p, lambda h: h.update(format_version=2)), "version 2"),
        (lambda p: _rewrite_header(p, lambda h: h.update(format="other")), "format 'other'"),
        (lambda p: _rewrite_header(p, lambda h: h.pop("packed")), "no 'packed'"),
        (
            lambda p: _rewrite_header(
                p, lambda h: h["packed"][next(iter(h["packed"]))].update(shape=[3])
            ),
            "cannot be decoded",
        ),
    ],
    ids=["truncated", "tiny", "garbage", "not-json", "torch-file", "v2", "format", "no-key", "bad"],
)
def test_damaged_files_are_named(good_file: Path, damage, message: str) -> None:
    damage(good_file)
    with pytest.raises(ExportError, match=message) as info:
        load_packed(good_file)
    assert isinstance(info.value, UabnnError) and not isinstance(info.value, CheckpointError)


def test_plain_safetensors_and_missing_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(tmp_path / "plain.st"))
    with pytest.raises(ExportError, match="without the 'uabnn_packed' header"):
        load_packed(tmp_path / "plain.st")
    assert not is_packed_file(tmp_path / "plain.st")
    with pytest.raises(ExportError, match="does not exist"):
        load_packed(tmp_path / "missing.st")


def test_unrecorded_architecture_must_be_named(tmp_path: Path, exported) -> None:
    model, _ = exported("bireal_digits")
    path = export_packed(model, tmp_path / "m.st")
    with pytest.raises(ExportError, match="records no architecture"):
        load_packed(path)
    x = _input("bireal_digits", seed=4)
    with torch.no_grad():
        assert _bits_equal(load_packed(path, arch="bireal_digits")(x), _frozen_out(model, x))
    with pytest.raises(ExportError, match="does not fit"):
        load_packed(path, arch="bireal_digits", arch_kwargs={"depth": 2})


# --------------------------------------------------------------------- torch.export, ONNX


def test_frozen_and_deployed_models_export_with_torch_export(exported) -> None:
    model, _ = exported("bireal_digits")
    x = _input("bireal_digits", seed=5)
    for net in (uc.freeze(model), deploy(model)):
        program = torch.export.export(net, (x,))
        with torch.no_grad():
            assert torch.equal(program.module()(x), net(x))


def test_onnx_export_runs_in_onnxruntime(tmp_path: Path, exported) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model, _ = exported("bireal_digits")
    path = export_onnx(model, tmp_path / "m.onnx", (1, 8, 8), dynamo=True)
    assert _files(tmp_path) == ["m.onnx"]
    onnx.checker.check_model(str(path))
    x = _input("bireal_digits", batch=1, seed=6)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    expected = _frozen_out(model, x)
    assert torch.allclose(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_onnx_torchscript_exporter_as_the_fallback(tmp_path: Path, exported) -> None:
    ort = pytest.importorskip("onnxruntime")
    model, _ = exported("bireal_digits")
    path = export_onnx(model, tmp_path / "m.onnx", (1, 8, 8), dynamo=False)
    x = _input("bireal_digits", batch=1, seed=8)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert torch.allclose(torch.from_numpy(got), _frozen_out(model, x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_onnx_export_of_function_binarizers(tmp_path: Path) -> None:
    """XNOR's and IR-Net's autograd.Function activation binarizers export too."""
    ort = pytest.importorskip("onnxruntime")
    for family in ("xnor", "irnet"):
        torch.manual_seed(0)
        model = _held(zoo.binary_wrn22([8, 8, 16, 16], family=family), _input("wrn"))
        path = export_onnx(model, tmp_path / f"{family}.onnx", (3, 32, 32), dynamo=True)
        x = _input("wrn", batch=1, seed=7)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        assert torch.allclose(torch.from_numpy(got), _frozen_out(model, x), atol=1e-4)


def test_onnx_needs_the_export_extra(tmp_path: Path, exported, monkeypatch) -> None:
    model, _ = exported("bireal_digits")
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ExportError, match=r"'export' extra"):
        export_onnx(model, tmp_path / "m.onnx", (1, 8, 8))
    assert _files(tmp_path) == []
