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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DECAY = 0.99  # EMA decay of the codes (van den Oord et al., appendix A.1)
BETA = 0.25  # commitment weight
DEAD = 0.03  # a code with an EMA count below this is restarted (about once in 30 steps)
EPS = 1e-5


def nearest_code(x: Tensor, book: Tensor) -> Tensor:
    """The id of the entry of `book` [V, D] nearest to each vector of `x` [..., D]:
    argmin |x - c|^2 = argmax (x.c - |c|^2 / 2)."""
    book = book.float()
    return (x.float() @ book.T - 0.5 * (book * book).sum(dim=1)).argmax(dim=-1)


class PatchVQ(nn.Module):
    """patch_dim -> hidden -> hidden -> dim (encoder), and back (decoder); the codebook is
    [vocab_size, dim]. `fit` trains for `steps` Adam steps of `batch` patches at `lr`. Weights
    are buffers: `fit` trains copies of them, then stores them."""

    def __init__(self, patch_dim: int, dim: int, hidden: int, vocab_size: int, steps: int,
                 batch: int, lr: float):
        super().__init__()
        self.steps, self.batch, self.lr = steps, batch, lr
        self.shapes = {"enc": [(patch_dim, hidden), (hidden, hidden), (hidden, dim)],
                       "dec": [(dim, hidden), (hidden, hidden), (hidden, patch_dim)]}
        for part, layers in self.shapes.items():
            for i, (inp, out) in enumerate(layers):
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

    def assign(self, z: Tensor) -> Tensor:
        """The nearest code's id for each latent: [..., dim] -> [...]."""
        return nearest_code(z, self.codes)

    @torch.enable_grad()
    def fit(self, patches: Tensor, seed: int) -> dict[str, float]:
        """Train on `patches` [N, patch_dim], seeded, on the patches' device; store the result in
        the buffers. Returns the steps, the restarts and the reconstruction MSE (normalised
        pixels) in the first and last 10 % of steps."""
        device, x = patches.device, patches.detach().float()
        g = torch.Generator(device="cpu").manual_seed(seed)
        w: dict[str, Tensor] = {}
        with torch.random.fork_rng(devices=[]):  # nn.Linear's initialisation, seeded
            torch.manual_seed(seed)
            for part, layers in self.shapes.items():
                for i, (inp, out) in enumerate(layers):
                    layer = nn.Linear(inp, out)
                    w[f"{part}{i}_w"] = layer.weight.detach().to(device).requires_grad_()
                    w[f"{part}{i}_b"] = layer.bias.detach().to(device).requires_grad_()
        opt = torch.optim.Adam(w.values(), lr=self.lr)
        v, n = self.codes.shape[0], len(x)

        def draw(k: int) -> Tensor:
            return torch.randint(n, (k,), generator=g).to(device)

        with torch.no_grad():  # codes start at the latents of random patches
            codes = self._mlp("enc", x[draw(v)], w)
        count = torch.ones(v, device=device)
        total = codes.clone()
        curve: list[Tensor] = []
        restarts = torch.zeros((), device=device)
        for _ in range(self.steps):
            xb = x[draw(self.batch)]
            z = self._mlp("enc", xb, w)
            ids = nearest_code(z.detach(), codes)
            q = codes[ids]
            recon = self._mlp("dec", z + (q - z).detach(), w)  # straight-through
            mse = F.mse_loss(recon, xb)
            loss = mse + BETA * F.mse_loss(z, q)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            curve.append(mse.detach())
            with torch.no_grad():  # EMA codes, then the dead ones restart at batch latents
                onehot = F.one_hot(ids, v).float()
                count.mul_(DECAY).add_(onehot.sum(0), alpha=1 - DECAY)
                total.mul_(DECAY).add_(onehot.T @ z.detach(), alpha=1 - DECAY)
                m = count.sum()
                codes = total / ((count + EPS) / (m + v * EPS) * m)[:, None]
                # every code gets a candidate, the dead take it: no host sync in the loop
                dead = (count < DEAD)[:, None]
                fresh = z.detach()[torch.randint(len(z), (v,), generator=g).to(device)]
                codes = torch.where(dead, fresh, codes)
                total = torch.where(dead, fresh, total)
                count = torch.where(dead[:, 0], 1.0, count)
                restarts += dead.sum()
        with torch.no_grad():
            codes, revived = self._revive(x, w, codes)
            for name, t in w.items():
                getattr(self, name).copy_(t.detach())
            self.codes.copy_(codes)
            tail = max(1, self.steps // 10)
            mses = torch.stack(curve).cpu()
            return {"tokenizer_steps": self.steps, "tokenizer_mse_start": float(mses[:tail].mean()),
                    "tokenizer_mse_end": float(mses[-tail:].mean()),
                    "tokenizer_restarts": int(restarts) + revived}

    def _revive(self, x: Tensor, w: dict[str, Tensor], codes: Tensor) -> tuple[Tensor, int]:
        """Move every code that no patch of `x` picks to the latent of a badly reconstructed patch
        (largest error first, each patch once): its own latent is at distance 0, so it picks the
        code. A moved code can take another code's only patch, so this repeats (a few rounds at
        most in practice) until every code is picked. Returns the codes and how many moved."""
        z = torch.cat([self._mlp("enc", c, w) for c in x.split(8192)])
        taken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        codes, moved = codes.clone(), 0
        for _ in range(20):
            ids = torch.cat([nearest_code(c, codes) for c in z.split(8192)])
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
