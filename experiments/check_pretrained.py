r"""Compare the Flax ResNets loaded by nngk_jax.pretrained with torchvision/timm.

torch and the project live in separate virtual environments, so each side
runs in its own interpreter and they meet in files:

1. ``dump`` (torch venv): builds torchvision's (or timm's) resnet18/resnet50
   with random weights, randomises the BatchNorm scales and biases, gives the
   BatchNorms non-trivial running statistics (three train-mode passes on
   random images), switches to eval mode and writes, under ``--out``:
   ``{source}_{arch}.safetensors`` (the ``state_dict``, fc included) and
   ``{source}_{arch}_io.npz`` (the random 224x224 NCHW images and the pooled
   features before fc, computed in float32, in float64 and under torch's
   bfloat16 autocast).
2. ``compare`` (project venv): builds ``EmbeddingNet`` with the named
   backbone, loads the file with ``load_backbone_weights`` and compares the
   backbone's features, in float32 and bfloat16 computation, with torch's.
3. ``all`` (project venv) runs ``dump`` for every case through
   ``--torch-python`` as a subprocess, then ``compare``, and writes
   ``results.json``.

Setup (once; torch comes from the local package index):

  python3 -m venv /tmp/torchenv
  /tmp/torchenv/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy \
      safetensors timm==1.0.31

Run (from the repository root):

  .venv/bin/python experiments/check_pretrained.py all \
      --torch-python /tmp/torchenv/bin/python --out /tmp/check_pretrained

or step by step:

  /tmp/torchenv/bin/python experiments/check_pretrained.py dump \
      --source torchvision --arch resnet50 --out /tmp/check_pretrained
  JAX_PLATFORMS=cpu .venv/bin/python experiments/check_pretrained.py compare \
      --source torchvision --arch resnet50 --out /tmp/check_pretrained

Time: about 2 minutes on a 2-core CPU for all four cases.
Expected: float32 features as close to torch float32 as torch float32 is to
torch float64 (relative 2e-6 for ResNet-18, 3e-5 for ResNet-50), bfloat16
as close as torch's own bfloat16 autocast; docs/pretrained.md has the table.

Differences are reported as the largest absolute difference ("max abs"),
that divided by the largest absolute torch feature ("max rel"), and the mean
absolute difference divided by the mean absolute torch feature ("mean rel").
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = ("torchvision", "timm")
ARCHS = ("resnet18", "resnet50")
# timm's pretrained tag for each architecture (the architecture is the same
# with or without a tag; no weights are downloaded here).
TIMM_NAMES = {"resnet18": "resnet18.a1_in1k", "resnet50": "resnet50.a1_in1k"}


def _stem(out: pathlib.Path, source: str, arch: str) -> pathlib.Path:
  return out / f"{source}_{arch}"


# ----------------------------------------------------------------------------
# Torch side (torch venv only: imports torch, never jax or nngk_jax).


def _torch_model(source: str, arch: str):
  """A randomly initialised torchvision or timm ResNet and its feature fn."""
  import torch  # pylint: disable=g-import-not-at-top

  if source == "torchvision":
    import torchvision  # pylint: disable=g-import-not-at-top
    model = getattr(torchvision.models, arch)(weights=None)

    def features(x):
      # torchvision's ResNet.forward, stopped before fc.
      x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
      x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
      return torch.flatten(model.avgpool(x), 1)
  else:
    import timm  # pylint: disable=g-import-not-at-top
    model = timm.create_model(TIMM_NAMES[arch], pretrained=False)

    def features(x):
      return model.forward_head(model.forward_features(x), pre_logits=True)
  return model, features


def dump(source: str, arch: str, out: pathlib.Path, *, batch: int = 4) -> None:
  """Writes the random model's state dict, images and features under out."""
  # One seed per source: with the same seed, timm's and torchvision's
  # ResNets draw identical weights, and the timm case would test nothing new.
  seed = SOURCES.index(source)
  import safetensors.torch  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  torch.manual_seed(seed)
  model, features = _torch_model(source, arch)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.2)
        module.momentum = None  # Running stats = average over the passes.
    model.train()
    for _ in range(3):
      model(torch.randn(8, 3, 224, 224))
    model.eval()
    images = torch.randn(batch, 3, 224, 224)
    features_f32 = features(images).numpy()
    # torch's own mixed precision, as a yardstick for JAX's bfloat16 error.
    with torch.autocast("cpu", dtype=torch.bfloat16):
      features_bf16 = features(images).float().numpy()
    model.double()
    features_f64 = features(images.double()).numpy()
    model.float()
  out.mkdir(parents=True, exist_ok=True)
  stem = _stem(out, source, arch)
  state_dict = {k: v.contiguous() for k, v in model.state_dict().items()}
  safetensors.torch.save_file(state_dict, f"{stem}.safetensors")
  np.savez(f"{stem}_io.npz", images=images.numpy(), features_f32=features_f32,
           features_f64=features_f64, features_bf16=features_bf16)
  print(f"wrote {stem}.safetensors and {stem}_io.npz "
        f"(torch {torch.__version__})")


# ----------------------------------------------------------------------------
# Project side (project venv only: imports jax and nngk_jax, never torch).


def _difference(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
  got = np.asarray(got, np.float64)
  diff = np.abs(got - want)
  return {"max_abs": float(np.max(diff)),
          "max_rel": float(np.max(diff) / np.max(np.abs(want))),
          "mean_rel": float(np.mean(diff) / np.mean(np.abs(want)))}


def compare(source: str, arch: str, out: pathlib.Path) -> dict:
  """Loads the dumped file into an EmbeddingNet and compares features."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  sys.path.insert(0, str(ROOT))
  from nngk_jax import models, pretrained  # pylint: disable=g-import-not-at-top

  stem = _stem(out, source, arch)
  io = np.load(f"{stem}_io.npz")
  images = jnp.asarray(io["images"].transpose(0, 2, 3, 1))  # NCHW -> NHWC
  result = {"source": source, "arch": arch, "images": list(images.shape),
            "torch_f32_vs_f64": _difference(io["features_f32"],
                                            io["features_f64"]),
            "torch_autocast_bf16_vs_f32": _difference(io["features_bf16"],
                                                      io["features_f32"])}
  variables = None
  for dtype in ("float32", "bfloat16"):
    net = models.EmbeddingNet(
        backbone=models.get_backbone(arch, dtype=jnp.dtype(dtype)),
        embed_dim=128)
    if variables is None:  # The path a training run takes: init, then load.
      variables = jax.jit(lambda x: net.init(  # pylint: disable=cell-var-from-loop
          jax.random.key(0), x, train=False))(images[:1])
      variables = pretrained.load_backbone_weights(
          variables, f"{stem}.safetensors", arch=arch)
    backbone_features = jax.jit(lambda v, x: net.apply(  # pylint: disable=cell-var-from-loop
        v, x, train=False,
        method=lambda m, x, train: m.backbone(x, train=train)))
    start = time.perf_counter()
    got = np.asarray(backbone_features(variables, images))
    result[f"jax_{dtype}_seconds"] = round(time.perf_counter() - start, 2)
    result[f"jax_{dtype}_vs_torch_f32"] = _difference(got, io["features_f32"])
    result[f"jax_{dtype}_vs_torch_f64"] = _difference(got, io["features_f64"])
  return result


def _table(results: list[dict]) -> str:
  rows = ["| source | arch | JAX f32 vs torch f32: max abs / max rel | "
          "torch f32 vs torch f64: max rel | JAX f32 vs torch f64: max rel | "
          "JAX bf16 vs torch f32: max abs / max rel / mean rel | "
          "torch autocast bf16 vs torch f32: max rel / mean rel |",
          "| --- | --- | --- | --- | --- | --- | --- |"]
  for r in results:
    f32, bf16 = r["jax_float32_vs_torch_f32"], r["jax_bfloat16_vs_torch_f32"]
    rows.append(
        f"| {r['source']} | {r['arch']} | {f32['max_abs']:.2e} / "
        f"{f32['max_rel']:.2e} | {r['torch_f32_vs_f64']['max_rel']:.2e} | "
        f"{r['jax_float32_vs_torch_f64']['max_rel']:.2e} | "
        f"{bf16['max_abs']:.2e} / {bf16['max_rel']:.2e} / "
        f"{bf16['mean_rel']:.2e} | "
        f"{r['torch_autocast_bf16_vs_f32']['max_rel']:.2e} / "
        f"{r['torch_autocast_bf16_vs_f32']['mean_rel']:.2e} |")
  return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("command", choices=("dump", "compare", "all"))
  parser.add_argument("--source", choices=SOURCES, default="torchvision")
  parser.add_argument("--arch", choices=ARCHS, default="resnet18")
  parser.add_argument("--out", type=pathlib.Path,
                      default=pathlib.Path("/tmp/check_pretrained"))
  parser.add_argument("--torch-python", default="/tmp/torchenv/bin/python",
                      help="interpreter of the torch venv (for 'all')")
  args = parser.parse_args(argv)

  if args.command == "dump":
    dump(args.source, args.arch, args.out)
  elif args.command == "compare":
    print(json.dumps(compare(args.source, args.arch, args.out), indent=2))
  else:
    results = []
    for source in SOURCES:
      for arch in ARCHS:
        subprocess.run([args.torch_python, __file__, "dump", "--source",
                        source, "--arch", arch, "--out", str(args.out)],
                       check=True)
        results.append(compare(source, arch, args.out))
        print(json.dumps(results[-1], indent=2), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(_table(results))


if __name__ == "__main__":
  main()
