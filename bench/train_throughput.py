"""Training throughput: the project's whole training step (data loading included) against the stock
MONAI model step on random tensors, measured side by side in one run on the same device.

Usage::

    python bench/train_throughput.py [--model student|teacher] [--device auto|cpu|cuda] [--steps N]
                                     [--patch P] [--batch B] [--workers W] [--compile]

Prints one JSON object with both step rates, their ratio (GPU target: ≥ 0.9 of the compiled stock
step) and, on a GPU, each side's peak memory. With ``--compile`` both steps are compiled; on a GPU both
run under bf16 autocast. On CPU it is a smoke test: small patch, few steps.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from cardiofm.contracts.preprocessing import PreprocessingConfig
from cardiofm.models.config import ModelConfig, default_heads
from cardiofm.models.registry import build_model
from cardiofm.phantoms.federation import FederationSettings, generate_federation
from cardiofm.phantoms.scanners import StudySize
from cardiofm.pipeline.prepare import prepare_site
from cardiofm.training.config import TrainConfig
from cardiofm.training.data import PatchDataset
from cardiofm.training.losses import MaskedMultiHeadLoss
from cardiofm.training.trainer import autocast_for, load_training_samples, resolve_device, train_step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def project_rate(cfg: TrainConfig, model_cfg: ModelConfig, dataset: Path, warmup: int) -> float:
    """Steps per second of the full project step: DataLoader (workers) + model + masked loss + AdamW."""
    device = resolve_device(cfg.device)
    samples = load_training_samples([dataset], cfg)
    model = build_model(model_cfg).to(device).train()
    step_model = torch.compile(model) if cfg.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    loss_fn = MaskedMultiHeadLoss(tasks=cfg.tasks)
    loader = torch.utils.data.DataLoader(
        PatchDataset(samples, cfg, cfg.tasks),
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
    )
    autocast = autocast_for(cfg, device)
    start = 0.0
    for n, batch in enumerate(loader):
        if n == warmup:
            _sync(device)
            start = time.perf_counter()
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        train_step(step_model, batch, cfg.tasks, loss_fn, optimizer, autocast, cfg)
    _sync(device)
    return (cfg.steps - warmup) / (time.perf_counter() - start)


def stock_rate(cfg: TrainConfig, model_cfg: ModelConfig, warmup: int) -> float:
    """Steps per second of the stock MONAI network + DiceCELoss + AdamW on random tensors."""
    from monai.losses import DiceCELoss
    from monai.networks.nets import DynUNet, SwinUNETR

    device = resolve_device(cfg.device)
    channels = sum(model_cfg.heads.values())
    if model_cfg.name == "swinunetr-student":
        net: torch.nn.Module = SwinUNETR(in_channels=1, out_channels=channels, feature_size=model_cfg.feature_size)
    else:
        levels = len(model_cfg.filters)
        net = DynUNet(
            3,
            1,
            channels,
            kernel_size=[3] * levels,
            strides=[1] + [2] * (levels - 1),
            upsample_kernel_size=[2] * (levels - 1),
            filters=list(model_cfg.filters),
            res_block=True,
        )
    net = net.to(device).train()
    step_net = torch.compile(net) if cfg.compile else net
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    x = torch.randn(cfg.batch_size, 1, *cfg.patch_size, device=device)
    y = torch.randint(0, channels, (cfg.batch_size, 1, *cfg.patch_size), device=device)
    autocast = autocast_for(cfg, device)
    start = 0.0
    for n in range(cfg.steps):
        if n == warmup:
            _sync(device)
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            value = loss(step_net(x), y)
        value.backward()
        optimizer.step()
    _sync(device)
    return (cfg.steps - warmup) / (time.perf_counter() - start)


def main() -> None:
    """Prepare a small synthetic site, then time both steps."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["student", "teacher"], default="student")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--patch", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    steps = args.steps or (60 if gpu else 8)
    patch = args.patch or (96 if gpu else 64)
    batch = args.batch or (2 if gpu else 1)
    workers = args.workers if args.workers is not None else (4 if gpu else 0)
    warmup = min(10 if gpu else 2, steps - 1)
    if args.model == "student":
        model_cfg = ModelConfig(name="swinunetr-student")
        tasks: tuple[str, ...] = ("landmarks", "septum", "calcification")
    else:
        model_cfg = ModelConfig(name="resunet-teacher", heads=default_heads("landmarks"))
        tasks = ("landmarks",)
    cfg = TrainConfig(
        tasks=tasks,
        steps=steps,
        batch_size=batch,
        patch_size=(patch,) * 3,
        num_workers=workers,
        device=args.device,
        compile=args.compile,
        preprocessing=PreprocessingConfig(spacing_mm=1.0),
    )
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        fed = generate_federation(
            tmp / "fed",
            FederationSettings(
                sites=1, cases_per_site=2, seed=3, held_out_sites=0, size=StudySize.preset("small"), series_per_study=1
            ),
        )
        prepare_site(tmp / "fed" / fed.sites[0].folder, tmp / "ds", test_fraction=0.0)
        _reset_peak(device)
        ours = project_rate(cfg, model_cfg, tmp / "ds", warmup)
        ours_peak = _peak_gib(device)
    _reset_peak(device)
    stock = stock_rate(cfg, model_cfg, warmup)
    stock_peak = _peak_gib(device)
    print(
        json.dumps(
            {
                "device": torch.cuda.get_device_name(0) if gpu else "cpu",
                "model": model_cfg.name,
                "patch": patch,
                "batch": batch,
                "workers": workers,
                "compile": args.compile,
                "bf16_autocast": gpu,
                "timed_steps": steps - warmup,
                "project_steps_per_s": round(ours, 3),
                "stock_steps_per_s": round(stock, 3),
                "ratio_project_to_stock": round(ours / stock, 3),
                "project_peak_gib": ours_peak,
                "stock_peak_gib": stock_peak,
                "gpu_target_ratio": 0.9,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
