"""Actor and critic MLPs, evaluated together, and the Adam optimiser that trains them.

The policy is two independent tanh MLPs of the same widths, as SB3's ``MlpPolicy`` (no shared
layers; orthogonal init with gain sqrt(2) on hidden layers, 0.01 on the action logits, 1 on
the value). Each hidden layer stores the two towers' weights stacked, shape (2, in, out), so
one batched matmul evaluates both: index 0 is the actor, index 1 the critic. With batch 64
the update is dominated by per-operation overhead, so fewer, larger operations is the speed
lever; the maths is exactly that of two separate networks.

`FlatAdam` keeps every parameter as a view into one contiguous buffer (and every gradient
into another), so gradient clipping and the Adam step are a handful of operations on a
single tensor instead of a Python loop over parameters.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

HIDDEN_GAIN = math.sqrt(2.0)
POLICY_GAIN = 0.01
VALUE_GAIN = 1.0


class ActorCritic(nn.Module):
    """Discrete-action actor-critic with separate actor and critic towers.

    `forward` takes observations float32 (B, obs_dim) and returns ``(logits (B, n_actions),
    value (B,))``. Parameters: ``hidden_weight_i`` (2, in, out) and ``hidden_bias_i``
    (2, 1, out) per hidden layer, ``actor_weight`` (h, n_actions), ``actor_bias``,
    ``critic_weight`` (h, 1), ``critic_bias`` — all in (in, out) layout, i.e. ``x @ w + b``.
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        hidden_sizes: Sequence[int] = (64, 64),
        *,
        generator: torch.Generator | None = None,
        device: "torch.device | str | None" = None,
    ) -> None:
        super().__init__()
        if obs_dim < 1 or n_actions < 2 or not hidden_sizes:
            raise ValueError(f"bad network shape: obs_dim={obs_dim} n_actions={n_actions} hidden={hidden_sizes}")
        self.obs_dim = int(obs_dim)
        self.n_actions = int(n_actions)
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        widths = (self.obs_dim, *self.hidden_sizes)
        self.n_hidden = len(self.hidden_sizes)
        for i in range(self.n_hidden):
            self.register_parameter(f"hidden_weight_{i}", nn.Parameter(torch.zeros(2, widths[i], widths[i + 1], device=device)))
            self.register_parameter(f"hidden_bias_{i}", nn.Parameter(torch.zeros(2, 1, widths[i + 1], device=device)))
        last = widths[-1]
        self.actor_weight = nn.Parameter(torch.zeros(last, self.n_actions, device=device))
        self.actor_bias = nn.Parameter(torch.zeros(self.n_actions, device=device))
        self.critic_weight = nn.Parameter(torch.zeros(last, 1, device=device))
        self.critic_bias = nn.Parameter(torch.zeros(1, device=device))
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Orthogonal init of every tower's layers (SB3 gains), biases zero; CPU-generated, so seeded
        initial weights are the same on every device."""
        widths = (self.obs_dim, *self.hidden_sizes)

        def orthogonal(n_in: int, n_out: int, gain: float) -> torch.Tensor:
            # torch's orthogonal_ works on (out, in); transpose to the (in, out) layout used here.
            return nn.init.orthogonal_(torch.empty(n_out, n_in), gain, generator=generator).T

        for i in range(self.n_hidden):
            weight = getattr(self, f"hidden_weight_{i}")
            for tower in (0, 1):
                weight[tower] = orthogonal(widths[i], widths[i + 1], HIDDEN_GAIN).to(weight.device)
            getattr(self, f"hidden_bias_{i}").zero_()
        self.actor_weight.copy_(orthogonal(widths[-1], self.n_actions, POLICY_GAIN))
        self.critic_weight.copy_(orthogonal(widths[-1], 1, VALUE_GAIN))
        self.actor_bias.zero_()
        self.critic_bias.zero_()

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, n_actions) and state value (B,) for observations (B, obs_dim)."""
        h = obs.unsqueeze(0).expand(2, -1, -1)  # the same input for both towers, no copy
        for i in range(self.n_hidden):
            h = torch.tanh(torch.baddbmm(getattr(self, f"hidden_bias_{i}"), h, getattr(self, f"hidden_weight_{i}")))
        logits = torch.addmm(self.actor_bias, h[0], self.actor_weight)
        value = torch.addmm(self.critic_bias, h[1], self.critic_weight)
        return logits, value.squeeze(-1)

    def architecture(self) -> dict[str, object]:
        """Primitives that rebuild this network: obs_dim, n_actions, hidden_sizes."""
        return {"obs_dim": self.obs_dim, "n_actions": self.n_actions, "hidden_sizes": list(self.hidden_sizes)}

    def export_arrays(self) -> dict[str, np.ndarray]:
        """Float32 numpy copies of all parameters, keyed by parameter name, same shapes."""
        return {
            name: np.ascontiguousarray(p.detach().cpu().numpy(), dtype=np.float32)
            for name, p in self.named_parameters()
        }

    @classmethod
    def from_arrays(cls, arrays: "dict[str, np.ndarray]", **kwargs: object) -> "ActorCritic":
        """Rebuild from `export_arrays` output (shapes give the architecture)."""
        n_hidden = sum(1 for k in arrays if k.startswith("hidden_weight_"))
        obs_dim = arrays["hidden_weight_0"].shape[1]
        hidden = [arrays[f"hidden_weight_{i}"].shape[2] for i in range(n_hidden)]
        net = cls(obs_dim, arrays["actor_weight"].shape[1], hidden, **kwargs)  # type: ignore[arg-type]
        net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})
        return net


class FlatAdam:
    """Adam (torch's update rule, no weight decay) with global-norm gradient clipping.

    On construction every parameter of ``module`` is re-pointed into one flat buffer and its
    ``.grad`` into another, so `zero_grad`, the norm, the clip and the update each touch one
    tensor. Call `zero_grad`, then ``loss.backward()`` (autograd accumulates in place into the
    flat gradient), then `step`. Equivalent to ``torch.optim.Adam`` + ``clip_grad_norm_``.
    """

    def __init__(self, module: nn.Module, lr: float, *, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        params = [p for p in module.parameters() if p.requires_grad]
        first = params[0]
        total = sum(p.numel() for p in params)
        self.params = torch.zeros(total, dtype=first.dtype, device=first.device)
        self.grads = torch.zeros_like(self.params)
        offset = 0
        with torch.no_grad():
            for p in params:
                n = p.numel()
                self.params[offset : offset + n].copy_(p.reshape(-1))
                p.data = self.params[offset : offset + n].view_as(p)
                p.grad = self.grads[offset : offset + n].view_as(p)
                offset += n
        self.lr = float(lr)
        self.beta1, self.beta2 = betas
        self.eps = float(eps)
        self.exp_avg = torch.zeros_like(self.params)
        self.exp_avg_sq = torch.zeros_like(self.params)
        self.steps = 0
        # The step count as a tensor, for the fused kernel (torch.optim stores it the same way).
        self._step_tensor = torch.zeros((), dtype=torch.float32, device=first.device)
        self._fused = hasattr(torch, "_fused_adam_") and first.device.type in ("cpu", "cuda")

    def zero_grad(self) -> None:
        """Zero the flat gradient (the parameter ``.grad`` views see it)."""
        self.grads.zero_()

    @torch.no_grad()
    def step(self, max_grad_norm: float | None = None) -> torch.Tensor:
        """Clip the gradient to global L2 norm ``max_grad_norm`` (as ``clip_grad_norm_``) and
        apply one Adam update; returns the pre-clip gradient norm (0-dim tensor)."""
        self.steps += 1
        norm = torch.linalg.vector_norm(self.grads)
        if max_grad_norm is not None:
            # clip_grad_norm_ multiplies by min(1, max/(norm+1e-6)); dividing by its inverse
            # lets the fused kernel apply it without touching the gradient buffer.
            grad_scale = torch.clamp_min((norm + 1e-6) / max_grad_norm, 1.0)
        else:
            grad_scale = None
        if self._fused:
            self._step_tensor.fill_(self.steps)
            torch._fused_adam_(
                [self.params], [self.grads], [self.exp_avg], [self.exp_avg_sq], [], [self._step_tensor],
                lr=self.lr, beta1=self.beta1, beta2=self.beta2, weight_decay=0.0, eps=self.eps,
                amsgrad=False, maximize=False, grad_scale=grad_scale, found_inf=None,
            )
        else:
            grad = self.grads if grad_scale is None else self.grads / grad_scale
            self.exp_avg.lerp_(grad, 1.0 - self.beta1)
            self.exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1.0 - self.beta2)
            bias1 = 1.0 - self.beta1**self.steps
            bias2 = 1.0 - self.beta2**self.steps
            denom = (self.exp_avg_sq.sqrt() / math.sqrt(bias2)).add_(self.eps)
            self.params.addcdiv_(self.exp_avg, denom, value=-self.lr / bias1)
        return norm
