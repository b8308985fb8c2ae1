"""A small VQ-VAE over patches: the trained tokenizer (`method.tokenizer=vq`) of BEiT and SplitMask.

BEiT's tokenizer is DALL-E's discrete VAE, trained (Gumbel-softmax relaxation) on 250M images;
SplitMask's table 2 compares it with cheap vocabularies. Ours is a VQ-VAE (van den Oord, Vinyals,
Kavukcuoglu 2017, https://arxiv.org/abs/1711.00937) trained on the run's own training patches for
a few seconds before pretraining starts. We chose VQ over a Gumbel dVAE because its token is a
deterministic nearest-code lookup (the same contract as the other codebooks), it has no
temperature schedule to tune for a short run, and EMA updates plus dead-code restarts keep every
entry in use, which a dVAE does not promise:

- encoder and decoder: MLPs on one patch (p*p*C normalised pixels) <-> a `dim`-wide latent; a
  patch's token depends on that patch alone, as with every other kind of codebook here.
- quantiser: the nearest of `vocab_size` codes; straight-through gradients; commitment loss
  with beta = 0.25 (the paper's); codes follow EMA of their assigned latents (appendix A.1,
  decay 0.99, Laplace-smoothed counts as in Sonnet's VectorQuantizerEMA).
- dead-code restarts (Dhariwal et al. 2020, Jukebox §3.3): at every step a code whose EMA count
  fell below `DEAD` moves to a latent of the batch drawn at random. After the last step, every
  code that no training patch picks moves to the latent of the worst-reconstructed patch not yet
  used, so that the final vocabulary has no dead entries on the data it was trained on.

After training, every weight is copied into buffers: the tokenizer is fitted to the data like
the other codebooks, saved with every checkpoint, and never seen by the method's optimizer.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DECAY = 0.99  # EMA decay of the codes (van den Oord et al., appendix A.1)
BETA = 0.25  # commitment weight
DEAD = 0.03  # a code with an EMA count below this is restarted (about once in 30 steps)
EPS = 1e-5


class PatchVQ(nn.Module):
    """patch_dim -> hidden -> hidden -> dim (encoder), and back (decoder); the codebook is
    [vocab_size, dim]. Weights are buffers: `fit` trains copies of them, then stores them."""

    def __init__(self, patch_dim: int, dim: int, hidden: int, vocab_size: int):
        super().__init__()
        shapes = {"enc": [(hidden, patch_dim), (hidden, hidden), (dim, hidden)],
                  "dec": [(hidden, dim), (hidden, hidden), (patch_dim, hidden)]}
        for part, layers in shapes.items():
            for i, (out, inp) in enumerate(layers):
                self.register_buffer(f"{part}{i}_w", torch.zeros(out, inp))
                self.register_buffer(f"{part}{i}_b", torch.zeros(out))
        self.register_buffer("codes", torch.zeros(vocab_size, dim))

    def _mlp(self, part: str, x: Tensor, weights: dict[str, Tensor] | None = None) -> Tensor:
        w = weights if weights is not None else dict(self.named_buffers())
        for i in range(3):
            x = F.linear(x, w[f"{part}{i}_w"], w[f"{part}{i}_b"])
            if i < 2:
                x = F.gelu(x)
        return x

    def encode(self, patches: Tensor) -> Tensor:
        """[..., patch_dim] -> latents [..., dim]."""
        return self._mlp("enc", patches.float())

    def decode_latents(self, z: Tensor) -> Tensor:
        """latents [..., dim] -> patches [..., patch_dim]."""
        return self._mlp("dec", z.float())

    def assign(self, z: Tensor, codes: Tensor | None = None) -> Tensor:
        """The nearest code's id for each latent: [..., dim] -> [...]."""
        codes = self.codes if codes is None else codes
        scores = z.float() @ codes.T - 0.5 * (codes * codes).sum(dim=1)  # argmax: nearest
        return scores.argmax(dim=-1)

    @torch.enable_grad()
    def fit(self, patches: Tensor, seed: int, steps: int, batch: int, lr: float) -> dict[str, float]:
        """Train on `patches` [N, patch_dim] for `steps` Adam steps of `batch` patches, seeded,
        on the patches' device; store the result in the buffers. Returns the training's cost and
        its reconstruction MSE (on normalised pixels) in the first and last 10 % of steps."""
        start = time.perf_counter()
        device, x = patches.device, patches.detach().float()
        g = torch.Generator(device="cpu").manual_seed(seed)
        torch_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # the initial weights
        w: dict[str, Tensor] = {}
        for name, buf in self.named_buffers():
            if name == "codes":
                continue
            t = torch.empty(buf.shape)
            if name.endswith("_w"):
                nn.init.kaiming_uniform_(t, a=5 ** 0.5)  # nn.Linear's default
            else:
                bound = 1 / self._fan_in(name) ** 0.5  # nn.Linear's default too
                nn.init.uniform_(t, -bound, bound)
            w[name] = t.to(device).requires_grad_()
        torch.random.set_rng_state(torch_state)
        opt = torch.optim.Adam(w.values(), lr=lr)
        v = self.codes.shape[0]
        n = len(x)

        def draw(k: int) -> Tensor:
            return torch.randint(n, (k,), generator=g).to(device)

        with torch.no_grad():  # codes start at the latents of random patches
            codes = self._mlp("enc", x[draw(v)], w).clone()
        count = torch.ones(v, device=device)
        total = codes.clone()
        curve: list[Tensor] = []
        restarts = 0
        for _ in range(steps):
            xb = x[draw(batch)]
            z = self._mlp("enc", xb, w)
            ids = self.assign(z.detach(), codes)
            q = codes[ids]
            recon = self._mlp("dec", z + (q - z).detach(), w)  # straight-through
            mse = F.mse_loss(recon, xb)
            loss = mse + BETA * F.mse_loss(z, q)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            curve.append(mse.detach())
            with torch.no_grad():  # EMA codes, then restart the dead ones at batch latents
                onehot = F.one_hot(ids, v).float()
                count.mul_(DECAY).add_(onehot.sum(0), alpha=1 - DECAY)
                total.mul_(DECAY).add_(onehot.T @ z.detach(), alpha=1 - DECAY)
                m = count.sum()
                smoothed = (count + EPS) / (m + v * EPS) * m
                codes = total / smoothed[:, None]
                dead = count < DEAD
                k = int(dead.sum())
                if k:
                    restarts += k
                    fresh = z.detach()[torch.randint(len(z), (k,), generator=g).to(device)]
                    codes[dead], total[dead], count[dead] = fresh, fresh, 1.0
        with torch.no_grad():
            codes, revived = self._revive(x, w, codes)
            for name, t in w.items():
                getattr(self, name).copy_(t.detach())
            self.codes.copy_(codes)
            tail = max(1, steps // 10)
            mses = torch.stack(curve).cpu() if curve else torch.zeros(1)
            return {"tokenizer_s": time.perf_counter() - start, "tokenizer_steps": steps,
                    "tokenizer_mse_start": float(mses[:tail].mean()),
                    "tokenizer_mse_end": float(mses[-tail:].mean()),
                    "tokenizer_restarts": restarts + revived}

    def _fan_in(self, name: str) -> int:
        return getattr(self, name.replace("_b", "_w")).shape[1]

    def _revive(self, x: Tensor, w: dict[str, Tensor], codes: Tensor) -> tuple[Tensor, int]:
        """Move every code that no patch of `x` picks to the latent of a badly reconstructed patch
        (largest error first, each patch once): its own latent is at distance 0, so it picks the
        code. A moved code can take another code's only patch, so this repeats (a few rounds at
        most in practice) until every code is picked. Returns the codes and how many moved."""
        z = torch.cat([self._mlp("enc", c, w) for c in x.split(8192)])
        taken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        codes, moved = codes.clone(), 0
        for _ in range(20):
            ids = torch.cat([self.assign(c, codes) for c in z.split(8192)])
            unused = torch.bincount(ids, minlength=len(codes)) == 0
            k = int(unused.sum())
            if k == 0:
                break
            err = torch.cat([(self._mlp("dec", codes[i], w) - c).pow(2).sum(1)
                             for c, i in zip(x.split(8192), ids.split(8192))])
            err[taken] = -1.0
            pick = err.topk(k).indices
            taken[pick] = True
            codes[unused] = z[pick]
            moved += k
        return codes, moved
