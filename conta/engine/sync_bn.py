"""BatchNorm whose batch statistics span every process of a DDP run (seg.sync_bn).

With trainable BN each rank would otherwise normalise by the statistics of its own share of the
batch: 16 crops on 8 GPUs become 8 batches of 2. On GPUs the plain BN layers become
`torch.nn.SyncBatchNorm` (NCCL); torch's own `convert_sync_batchnorm` is not used because it would
also convert the frozen BN of a v2 trunk, which must stay frozen. torch's SyncBatchNorm runs on GPUs
only (and DDP refuses it in a CPU module), so CPU processes under Gloo get `GlooSyncBatchNorm`:
the same statistics from two all-reduces (sums and count, then centred squares), differentiable
so that every rank's gradient sees the other ranks' pixels, as torch's does. One process keeps
plain BN: there is nothing to synchronise.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from conta.models.resnet import convert_batchnorm


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks; its gradient is the sum of the ranks' gradients (every rank's loss
    depends on the summed value)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: Tensor, group: dist.ProcessGroup) -> Tensor:
        ctx.group = group
        out = tensor.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """nn.BatchNorm2d whose training-mode statistics are those of all ranks' inputs together.

    Outside training, or without a process group, it is plain BatchNorm2d. Statistics are computed
    in float32; the running variance is unbiased over the global count, as in torch.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        group = dist.group.WORLD
        dims = [0, *range(2, x.dim())]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        xf = x.float()
        local = torch.cat([xf.sum(dims), xf.new_tensor([xf.numel() / xf.shape[1]])])
        total = _AllReduceSum.apply(local, group)
        count = total[-1].detach()
        mean = total[:-1] / count
        centred = xf - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims), group) / count
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                n = float(count)
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * n / max(n - 1.0, 1.0), factor)
        return out.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every plain nn.BatchNorm2d under `model` made cross-process, in place (frozen BN untouched);
    call before wrapping in DDP and before building the optimizer."""
    return convert_batchnorm(model, nn.BatchNorm2d, GlooSyncBatchNorm if device.type == "cpu" else nn.SyncBatchNorm)
