"""One fine-tuning step, ours against diffusers + peft, on a random-weight SD 1.5 (or SDXL) UNet.

For each setting (train full / LoRA rank 16, batch, gradient checkpointing off / on) both
implementations run the same step on the same architecture, with random weights, cached-style
inputs (latents and text contexts already encoded, as with our caches and diffusers' scripts
when VAE / text outputs are precomputed) and bf16:

* ours: what ``task: finetune`` runs per step: the UNet wrapped in ``DiscreteDenoiser``, the
  ``DiffusionLoss`` contract (eps target), bf16 autocast, backward, ``OptimizerStep`` (fused
  AdamW, clipping); LoRA: the UNet frozen in bf16, ``LoRANetwork`` adapters (fp32) on
  to_q/k/v/out, proj_in/out and ff; gradient checkpointing: ldm's ``use_checkpoint``.
* diffusers: ``train_text_to_image(_lora).py``'s step: ``UNet2DConditionModel``, DDPM
  ``add_noise``, MSE on the noise, ``accelerate``-style bf16 autocast, AdamW; LoRA via
  ``unet.add_adapter(peft.LoraConfig(r=16, ...))`` on the same modules with the UNet in bf16 and
  the adapters cast to fp32 (``cast_training_params``); ``enable_gradient_checkpointing()``.

Each (implementation, setting) runs in a fresh child process, one after another: the time is
the median of ``--steps`` steps after one warm-up step; memory is the peak RSS of that child on
the CPU (the whole process: weights, activations, optimiser state) or
``torch.cuda.max_memory_allocated`` on a GPU.

    python benchmarks/finetune_speed.py [--size 512] [--batch 1 4] [--train lora full]
        [--checkpointing 0 1] [--steps 3] [--model sd1|sdxl-base] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue as queue_module
import resource
import statistics
import time
from typing import Any

import torch

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]


def _inputs(cfg: Any, batch: int, size: int, device: torch.device) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    f = size // 8
    out = {
        "x0": torch.randn(batch, 4, f, f, generator=gen),
        "context": torch.randn(batch, 77, cfg.context_dim, generator=gen),
    }
    if cfg.num_classes == "sequential":
        out["y"] = torch.randn(batch, cfg.adm_in_channels, generator=gen)
    return {k: v.to(device) for k, v in out.items()}


def _ours(model: str, train: str, batch: int, size: int, ckpt: bool, device: torch.device):
    from genmodels.configs.unet import UNET_PRESETS
    from genmodels.diffusion.denoisers import DiscreteDenoiser
    from genmodels.diffusion.losses import ddpm_loss
    from genmodels.diffusion.schedules import make_alphas_cumprod
    from genmodels.models.unet import UNetModel
    from genmodels.training.config import OptimConfig
    from genmodels.training.finetune_config import LoRAConfig
    from genmodels.training.lora import build_lora_network
    from genmodels.training.optim import OptimizerStep, autocast, make_optimizer

    cfg = UNET_PRESETS[model]
    unet = UNetModel(cfg).to(device)
    for m in unet.modules():
        if hasattr(m, "use_checkpoint"):
            m.use_checkpoint = ckpt
    if train == "lora":
        unet.to(torch.bfloat16).requires_grad_(False)
        net = build_lora_network(unet, None, "sd1", LoRAConfig(rank=16)).to(device)
        net.attach()
        params = list(net.parameters())
    else:
        params = list(unet.parameters())
    ocfg = OptimConfig(lr=1e-5)
    optim = OptimizerStep(make_optimizer(params, ocfg), ocfg, 10**6, device, "bf16")
    denoiser = DiscreteDenoiser(unet, make_alphas_cumprod(), prediction="eps").to(device)
    loss_fn = ddpm_loss(denoiser.sigmas, "eps")
    data = _inputs(cfg, batch, size, device)
    gen = torch.Generator().manual_seed(1)
    cond = {k: v for k, v in data.items() if k != "x0"}

    def step() -> None:
        sigma, noise = loss_fn.draw(batch, tuple(data["x0"].shape[1:]), generator=gen)
        with autocast(device, "bf16"):
            loss = loss_fn(denoiser, data["x0"], cond, sigma=sigma, noise=noise).mean()
        optim.backward(loss)
        optim.step()

    return step


def _diffusers(model: str, train: str, batch: int, size: int, ckpt: bool, device: torch.device):
    import diffusers
    import peft
    import torch.nn.functional as F

    from genmodels.checkpoints.diffusers_configs import unet_config_to_diffusers
    from genmodels.configs.unet import UNET_PRESETS

    cfg = UNET_PRESETS[model]
    kwargs = {k: v for k, v in unet_config_to_diffusers(cfg).items() if not k.startswith("_")}
    unet = diffusers.UNet2DConditionModel(**kwargs).to(device)
    if ckpt:
        unet.enable_gradient_checkpointing()
    if train == "lora":
        unet.requires_grad_(False)
        unet.to(torch.bfloat16)
        unet.add_adapter(peft.LoraConfig(r=16, lora_alpha=16, init_lora_weights="gaussian",
                                         target_modules=TARGETS))  # fmt: skip
        for p in unet.parameters():  # diffusers' cast_training_params
            if p.requires_grad:
                p.data = p.data.float()
    params = [p for p in unet.parameters() if p.requires_grad]
    fused = device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=fused)
    scheduler = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                        beta_end=0.012)  # fmt: skip
    data = _inputs(cfg, batch, size, device)
    gen = torch.Generator().manual_seed(1)
    added = None
    if "y" in data:  # SDXL: text_embeds + time_ids make up y
        pooled_dim = cfg.adm_in_channels - 6 * 256
        added = {"text_embeds": data["y"][:, :pooled_dim],
                 "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * batch,
                                          dtype=torch.float32, device=device)}  # fmt: skip

    def step() -> None:
        noise = torch.randn(data["x0"].shape, generator=gen).to(device)
        t = torch.randint(0, 1000, (batch,), generator=gen).to(device)
        noisy = scheduler.add_noise(data["x0"], noise, t)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            pred = unet(noisy, t, data["context"], added_cond_kwargs=added).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _child(impl: str, setting: tuple, steps: int, device_name: str, queue: mp.Queue) -> None:
    torch.manual_seed(0)
    device = torch.device(device_name)
    build = _ours if impl == "ours" else _diffusers
    step = build(*setting, device)
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step warms up (allocations, oneDNN / cuDNN kernel choice)
            times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    queue.put((statistics.median(times), peak))


def measure(impl: str, setting: tuple, steps: int, device: str) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(impl, setting, steps, device, queue))
    proc.start()
    while True:  # a child killed for memory (OOM) reports nothing: NaN, not a hang
        try:
            result = queue.get(timeout=5)
            break
        except queue_module.Empty:
            if not proc.is_alive():
                print(f"  ({impl} {setting}: the child died, exit code {proc.exitcode})")
                result = (float("nan"), float("nan"))
                break
    proc.join()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="sd1", help="UNet preset: sd1 (SD 1.5) or sdxl-base")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--train", nargs="+", default=["lora", "full"])
    p.add_argument("--checkpointing", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    mem = "GPU peak GiB" if args.device == "cuda" else "peak RSS GiB"
    print(f"{args.model} UNet, {args.size}x{args.size}, bf16, {args.device}; "
          f"median of {args.steps} steps after 1 warm-up")  # fmt: skip
    print(f"{'train':6} {'batch':>5} {'ckpt':>4} | {'ours s/step':>11} {'diffusers':>9} "
          f"{'ratio':>6} | {'ours ' + mem:>18} {'diffusers':>9}")  # fmt: skip
    for train in args.train:
        for batch in args.batch:
            for ckpt in args.checkpointing:
                setting = (args.model, train, batch, args.size, bool(ckpt))
                t_ours, m_ours = measure("ours", setting, args.steps, args.device)
                t_ref, m_ref = measure("diffusers", setting, args.steps, args.device)
                print(f"{train:6} {batch:>5} {ckpt:>4} | {t_ours:>11.3f} {t_ref:>9.3f} "
                      f"{t_ours / t_ref:>6.2f} | {m_ours:>18.2f} {m_ref:>9.2f}",
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
