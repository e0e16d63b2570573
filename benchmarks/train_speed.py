"""Training throughput (images/s): our trainer's step + UNet vs diffusers' UNet2DConditionModel.

The same conditional UNet in both (40.2M parameters, 47 GFLOP per image forward + backward:
model_channels 128, channel_mult (1, 2, 2), 2 res blocks, cross-attention transformers at the two
lower levels, 256-dim context),
with the same weights (converted by our key converter), batch and 32x32 4-channel inputs. Ours
runs ``Trainer.train_step`` (EDM loss, AdamW, EMA, grad clipping); diffusers a bare forward /
MSE / backward / AdamW step, so the comparison is conservative for us. Also prints the floor: the
images/s if every counted FLOP ran at the speed of a 2048^3 bf16 matmul.

Both run with ``--precision`` (bf16 autocast by default, or fp32).

Measured and dropped: bf16 weights end to end with fp32 master weights (Apex O2 style) instead
of autocast. Its forward + backward was no faster than autocast's here (5.7 vs 5.8 img/s), as
the time is in the oneDNN convolutions and matmuls, not in autocast's casts.

    python benchmarks/train_speed.py [--batch 64] [--steps 3] [--precision bf16]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode
from unet_speed import matmul_gflops

from genmodels.checkpoints.diffusers_unet import ldm_to_diffusers_unet
from genmodels.configs.unet import UNetConfig
from genmodels.data.tensor_dataset import ImageTensorDataset
from genmodels.diffusion.objectives import ObjectiveConfig
from genmodels.training.config import DataConfig
from genmodels.training.diffusion import Trainer
from genmodels.training.task_configs import DiffusionRunConfig as TrainConfig

CONFIG = UNetConfig(
    in_channels=4,
    out_channels=4,
    model_channels=128,
    channel_mult=(1, 2, 2),
    num_res_blocks=2,
    attention_resolutions=(2, 4),
    num_head_channels=64,
    context_dim=256,
    use_linear_in_transformer=True,
)


def _diffusers_unet(size: int) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=size, in_channels=4, out_channels=4, block_out_channels=(128, 256, 256),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2, attention_head_dim=(2, 4, 4), cross_attention_dim=256,
        use_linear_projection=True,
    )  # fmt: skip


class _WithContext(torch.nn.Module):
    """Our UNet called by the trainer without text: a fixed random context per batch row."""

    def __init__(self, unet: torch.nn.Module, context: torch.Tensor) -> None:
        super().__init__()
        self.unet, self.context = unet, context

    def forward(self, x, t, **cond):
        return self.unet(x, t, context=self.context[: x.shape[0]])


def _gflop_per_image(model: torch.nn.Module, size: int, context: torch.Tensor) -> float:
    """Forward + backward GFLOP of one image, counted by torch's FlopCounterMode (matmuls and
    convolutions; attention's own FLOPs are not counted, so the floor is a little optimistic)."""
    b = 2
    x, t = torch.randn(b, 4, size, size), torch.rand(b) * 999
    with FlopCounterMode(display=False) as counter:
        model(x, t, context=context[:b]).sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / b / 1e9


def _rate(step, batch: int, steps: int) -> float:
    step()  # warm-up (oneDNN primitive creation)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--channels-last", action="store_true", help="ours in channels_last")
    args = parser.parse_args()
    b, size = args.batch, args.size
    amp = None if args.precision == "fp32" else torch.bfloat16
    context = torch.randn(b, 8, 256)
    data = ImageTensorDataset(torch.randn(b, 4, size, size))

    cfg = TrainConfig(
        model=CONFIG, data=DataConfig(batch_size=b, size=size), precision=args.precision,
        objective=ObjectiveConfig(kind="edm"), progress=False, out_dir="/tmp/train_speed",
        channels_last=args.channels_last,
    )  # fmt: skip
    trainer = Trainer(cfg, dataset=data)
    params = sum(p.numel() for p in trainer.model.parameters())
    trainer.denoiser.model = _WithContext(trainer.model, context)
    ours = _rate(trainer.train_step, b, args.steps)

    ref = _diffusers_unet(size)
    ref.load_state_dict(ldm_to_diffusers_unet(trainer.model.state_dict(), CONFIG), strict=True)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-4)
    x, t = torch.randn(b, 4, size, size), torch.randint(0, 1000, (b,))

    def ref_step() -> None:
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            out = ref(x, t, encoder_hidden_states=context).sample
        torch.nn.functional.mse_loss(out.float(), x).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    theirs = _rate(ref_step, b, args.steps)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {params / 1e6:.1f}M "
          f"params, batch {b}, {size}x{size}, {args.precision}")  # fmt: skip
    gflop = _gflop_per_image(trainer.model, size, context)
    floor = matmul_gflops(torch.bfloat16) / gflop  # images/s if every FLOP ran at matmul speed
    print(f"{gflop:.1f} GFLOP per image (forward + backward); bf16 matmul floor {floor:.1f} img/s")
    print(f"ours {ours:.2f} img/s = {100 * ours / floor:.0f}% of the floor")
    print(f"diffusers {theirs:.2f} img/s = {100 * theirs / floor:.0f}% of the floor")
    print(
        f"SUMMARY ours {ours:.2f} img/s | diffusers {theirs:.2f} img/s | ratio {ours / theirs:.2f}x"
    )


if __name__ == "__main__":
    main()
