"""What a training run shows: TensorBoard scalars and image panels (through Accelerate's tracker),
and its progress on the main process (:class:`cpn_dist.progress.Progress`: a bar on a terminal, else a
line at least every 30 s while steps finish, besides the scalars every ``log.every`` steps)."""

from __future__ import annotations

import logging
import resource

import numpy as np
import torch

from cpn_dist.progress import Progress

log = logging.getLogger(__name__)

# Dense peak FLOP/s per device from the vendors' data sheets (no sparsity), used for MFU when
# `log.peak_flops` is unset: (bf16/fp16 tensor cores, tf32 tensor cores, fp32 without tensor cores).
# Matched in order against torch.cuda.get_device_name(): "NVIDIA H100 PCIe" before the SXM part
# ("NVIDIA H100 80GB HBM3"), and the H200 (SXM) has the H100 SXM's compute.
PEAK_FLOPS = {
    "H100 PCIe": (756e12, 378e12, 51.2e12),
    "H100 NVL": (835e12, 417.5e12, 60e12),
    "H100": (989.5e12, 494.7e12, 66.9e12),
    "H200": (989.5e12, 494.7e12, 66.9e12),
    "A100": (312e12, 156e12, 19.5e12),
    "L40S": (362e12, 183e12, 91.6e12),
    "A10": (125e12, 62.5e12, 31.2e12),
    "RTX 4090": (165.2e12, 82.6e12, 82.6e12),
    "RTX 3090": (71e12, 35.6e12, 35.6e12),
    "V100": (125e12, None, 15.7e12),
}


def peak_flops_per_device(configured: float | None, device: torch.device, precision: str = "bf16") -> float | None:
    """The configured peak FLOP/s, or the table's peak for a known GPU in the precision in use, or None
    (no MFU on CPU). ``precision``: the run's ``train.precision`` (bf16 / fp16: the 16-bit tensor-core
    peak; ``no``: the tf32 tensor-core peak when cuDNN or matmuls may use tf32 — cuDNN's default for
    convolutions — else the plain fp32 peak)."""
    if configured:
        return configured
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    peaks = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    if peaks is None:
        return None
    half, tf32, fp32 = peaks
    if precision in ("bf16", "fp16"):
        return half
    return tf32 if tf32_enabled() and tf32 else fp32


def tf32_enabled() -> bool:
    """Whether fp32 convolutions or matmuls may run on tf32 tensor cores (cuDNN allows it by default)."""
    return bool(torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated device memory (CUDA) or the process's peak resident set (CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _colour_map(x: np.ndarray) -> np.ndarray:
    """A jet-like map of values in [0, 1] to RGB in [0, 1]."""
    x = np.clip(x, 0.0, 1.0)[..., None]
    return np.clip(np.concatenate([1.5 - np.abs(4 * x - 3), 1.5 - np.abs(4 * x - 2), 1.5 - np.abs(4 * x - 1)],
                                  -1), 0, 1)


def rgb_image(x: torch.Tensor, mean, std) -> np.ndarray:
    """A normalised 3×H×W image tensor back in RGB: H×W×3 float in [0, 1]."""
    mean_t, std_t = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    return (x.detach().float().cpu() * std_t + mean_t).clamp(0, 1).permute(1, 2, 0).numpy()


def voc_colours(label: torch.Tensor) -> np.ndarray:
    """A label map in the VOC palette: H×W×3 float in [0, 1]."""
    from cpn_dist.data.datasets.voc import PALETTE

    return PALETTE[label.detach().cpu().numpy().astype(np.uint8)] / 255.0


def panel_image(tiles) -> np.ndarray:
    """H×W×3 float tiles in [0, 1] side by side, as the 3×H×(k·W) uint8 image TensorBoard takes."""
    return (np.concatenate(tiles, axis=1).clip(0, 1) * 255).round().astype(np.uint8).transpose(2, 0, 1)


def image_panel(batch: dict, cam: torch.Tensor, refined: torch.Tensor | None, mean, std) -> np.ndarray:
    """A 3×H×(k·W) uint8 panel for the first image of a micro-batch: I, I_h, I_hbar, then the CAM and
    the refined CAM of its true classes (max over classes of the max-normalised maps) over I."""

    def rgb(x):
        return rgb_image(x, mean, std)

    def overlay(maps, base):
        fg = maps.detach().float().cpu()[1:][batch["labels"][0].cpu() > 0]
        if fg.numel() == 0:
            return base
        fg = torch.relu(fg)
        fg = fg / fg.flatten(1).amax(1).clamp_min(1e-5).view(-1, 1, 1)
        return 0.5 * base + 0.5 * _colour_map(fg.amax(0).numpy())

    from cpn_dist.data.loading.cp_pair import split_image

    image_h, image_hbar = split_image(batch["image"][0], batch["mask"][0])
    image = rgb(batch["image"][0])
    tiles = [image, rgb(image_h), rgb(image_hbar), overlay(cam[0], image)]
    if refined is not None:
        tiles.append(overlay(refined[0], image))
    return panel_image(tiles)


class Monitor:
    """Scalars and images to TensorBoard (main process only), progress to the terminal or log."""

    def __init__(self, accelerator, total_steps: int, start_step: int, log_every: int):
        self.acc = accelerator
        self.total = total_steps
        self.log_every = log_every
        self.main = accelerator.is_main_process
        self.progress = Progress("train", total_steps, "steps", done=start_step, shown=self.main, transient=False)

    def writer(self):
        """The TensorBoard SummaryWriter (main process), or None."""
        if not self.main:
            return None
        try:
            return self.acc.get_tracker("tensorboard", unwrap=True)
        except (ValueError, AttributeError):
            return None

    def step(self, step: int, scalars: dict[str, float]) -> None:
        """Record optimizer step ``step`` (1-based count of finished steps)."""
        if not self.main:
            return
        loss, speed = scalars.get("loss/total", float("nan")), scalars.get("speed/samples_per_s", 0.0)
        self.progress.update(step, note=f"loss {loss:.4f}, {speed:.1f} img/s")
        if step % self.log_every == 0 or step == self.total:
            self.acc.log(scalars, step=step)
            if self.progress.bar is None:
                shown = " ".join(f"{k.split('/')[-1]}={v:.4g}" for k, v in scalars.items())
                log.info("step %d/%d %s", step, self.total, shown)

    def image(self, step: int, panel: np.ndarray) -> None:
        writer = self.writer()
        if writer is not None:
            writer.add_image("cp_pair_and_cams", panel, global_step=step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        writer = self.writer()
        if writer is not None:
            writer.add_text(tag, f"```\n{text}\n```", global_step=step)

    def close(self) -> None:
        self.progress.close()
