"""Binary spherical quantization (BSQ) with the entropy-regularised loss.

A latent vector is L2-normalised, each coordinate replaced by its sign (straight-through
gradient) and scaled by 1/sqrt(bits), so every code lies on the unit sphere. The first
`s1_bits` coordinates form the coarse token s1, the rest the fine token s2; a token id is the
little-endian integer of its bits (bit i set where coordinate i is positive).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p + 1e-8) + (1 - p) * torch.log(1 - p + 1e-8))


class BinarySphericalQuantizer(nn.Module):
    """The quantizer proper: sign codes and the BSQ loss.

    loss = beta * commitment + zeta * (gamma0 * per-sample entropy - gamma * codebook entropy).
    Low per-sample entropy makes each latent commit to one code; high codebook entropy spreads
    codes over the codebook. The codebook entropy of 2^bits codes is approximated by summing
    the entropies of groups of `group_size` bits.
    """

    group_codebook: torch.Tensor  # registered buffer (2^g, g)

    def __init__(self, bits: int, beta: float, gamma0: float, gamma: float, zeta: float, group_size: int):
        super().__init__()
        assert bits % group_size == 0, "the code length must be divisible by group_size"
        self.bits, self.group_size = bits, group_size
        self.beta, self.gamma0, self.gamma, self.zeta = beta, gamma0, gamma, zeta
        # Big-endian place values; kept under the published checkpoints' buffer names.
        self.register_buffer("basis", 2 ** torch.arange(bits - 1, -1, -1))
        self.register_buffer("group_basis", 2 ** torch.arange(group_size - 1, -1, -1))
        group_codes = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=group_size)))
        self.register_buffer("group_codebook", group_codes / bits**0.5, persistent=False)  # (2^g, g)

    def forward(self, z: torch.Tensor, with_loss: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """z: (B, T, bits), already unit-norm -> (codes in {+-1/sqrt(bits)}, loss)."""
        signs = torch.where(z > 0, 1.0, -1.0).to(z.dtype)
        codes = (z + (signs - z).detach()) / self.bits**0.5  # straight-through estimator
        if not with_loss:
            return codes, z.new_zeros(())
        commitment = ((codes.detach() - z) ** 2).sum(-1).mean()
        # per-sample entropy, analytically per bit: P(bit = -1) = sigmoid(-4 z / sqrt(bits))
        p_negative = torch.sigmoid(-4 * z / self.bits**0.5)
        per_sample = binary_entropy(p_negative).sum(-1).mean()
        # codebook entropy: distribution over each group's 2^g sub-codes, averaged over samples
        groups = z.reshape(*z.shape[:-1], -1, self.group_size)  # (B, T, n_groups, g)
        group_probs = F.softmax(2 * groups @ self.group_codebook.T, dim=-1)  # (B, T, n_groups, 2^g)
        mean_probs = group_probs.reshape(-1, *group_probs.shape[-2:]).mean(0)  # (n_groups, 2^g)
        codebook = -(mean_probs * torch.log(mean_probs + 1e-8)).sum()
        loss = self.beta * commitment + self.zeta * (self.gamma0 * per_sample - self.gamma * codebook)
        return codes, loss


class BSQuantizer(nn.Module):
    """Normalise, quantise, and split codes into (s1, s2) token ids."""

    def __init__(
        self, s1_bits: int, s2_bits: int, beta: float, gamma0: float, gamma: float, zeta: float, group_size: int
    ):
        super().__init__()
        self.s1_bits, self.s2_bits = s1_bits, s2_bits
        self.bsq = BinarySphericalQuantizer(s1_bits + s2_bits, beta, gamma0, gamma, zeta, group_size)

    @staticmethod
    def bits_to_ids(codes: torch.Tensor) -> torch.Tensor:
        place = 2 ** torch.arange(codes.shape[-1], device=codes.device)
        return ((codes >= 0).long() * place).sum(-1)

    def forward(self, z: torch.Tensor, half: bool = False, with_loss: bool = True):
        """z: (B, T, bits) -> (loss, codes (B, T, bits), ids: (B, T) or [s1 (B, T), s2 (B, T)])."""
        codes, loss = self.bsq(F.normalize(z, dim=-1), with_loss)
        ids: torch.Tensor | list[torch.Tensor]
        if half:
            ids = [self.bits_to_ids(codes[..., : self.s1_bits]), self.bits_to_ids(codes[..., self.s1_bits :])]
        else:
            ids = self.bits_to_ids(codes)
        return loss, codes, ids
