"""KronosTokenizer: K-line windows <-> hierarchical (s1, s2) tokens.

    x (B, T, d_in) -> embed -> causal encoder -> quant_embed -> BSQ codes (B, T, s1+s2 bits)
    codes[:s1] -> post_quant_embed_pre -> decoder -> head -> coarse reconstruction
    codes      -> post_quant_embed     -> decoder -> head -> fine reconstruction

Constructor arguments and state-dict keys match the published NeoQuasar/Kronos-Tokenizer-*
checkpoints, so `KronosTokenizer.from_pretrained(hub_id_or_folder)` loads them.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from models.kronos.hub import StrictHubMixin
from models.kronos.layers import LayerCache, TransformerBlock, run_causal
from models.kronos.quantizer import BSQuantizer


class KronosTokenizer(nn.Module, StrictHubMixin):
    def __init__(
        self,
        d_in: int,
        d_model: int,
        n_heads: int,
        ff_dim: int,
        n_enc_layers: int,
        n_dec_layers: int,
        ffn_dropout_p: float,
        attn_dropout_p: float,
        resid_dropout_p: float,
        s1_bits: int,
        s2_bits: int,
        beta: float,
        gamma0: float,
        gamma: float,
        zeta: float,
        group_size: int,
    ):
        super().__init__()
        self.d_in, self.s1_bits, self.s2_bits = d_in, s1_bits, s2_bits
        self.codebook_dim = s1_bits + s2_bits

        def blocks(count: int) -> nn.ModuleList:
            # The published layout counts the embedding as a layer: n layers = n - 1 blocks.
            return nn.ModuleList(
                TransformerBlock(d_model, n_heads, ff_dim, ffn_dropout_p, attn_dropout_p, resid_dropout_p)
                for _ in range(count - 1)
            )

        self.embed = nn.Linear(d_in, d_model)
        self.encoder = blocks(n_enc_layers)
        self.quant_embed = nn.Linear(d_model, self.codebook_dim)
        self.tokenizer = BSQuantizer(s1_bits, s2_bits, beta, gamma0, gamma, zeta, group_size)
        self.post_quant_embed_pre = nn.Linear(s1_bits, d_model)
        self.post_quant_embed = nn.Linear(self.codebook_dim, d_model)
        self.decoder = blocks(n_dec_layers)
        self.head = nn.Linear(d_model, d_in)

    def _latent(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d_in) -> (B, T, bits)
        return self.quant_embed(run_causal(self.encoder, self.embed(x)))

    def decode_codes(self, codes: torch.Tensor, coarse: bool = False) -> torch.Tensor:
        """Codes (B, T, s1+s2 bits) -> reconstruction (B, T, d_in), from s1 alone if coarse."""
        hidden = self.post_quant_embed_pre(codes[..., : self.s1_bits]) if coarse else self.post_quant_embed(codes)
        return self.head(run_causal(self.decoder, hidden))

    def forward(self, x: torch.Tensor):
        """x: (B, T, d_in) -> ((coarse, fine) reconstructions, bsq_loss, codes, ids)."""
        bsq_loss, codes, ids = self.tokenizer(self._latent(x))
        coarse = self.decode_codes(codes, coarse=True)
        fine = self.decode_codes(codes)
        return (coarse, fine), bsq_loss, codes, ids

    def encode(self, x: torch.Tensor, half: bool = False):
        """x (B, T, d_in) -> ids (B, T), or [s1_ids, s2_ids] with half=True."""
        _, _, ids = self.tokenizer(self._latent(x), half=half, with_loss=False)
        return ids

    def ids_to_codes(self, ids, half: bool = False) -> torch.Tensor:
        """Token ids -> codes in {+-1/sqrt(bits)} (B, T, s1+s2)."""
        if half:
            s1_ids, s2_ids = ids
            bits = torch.cat([_unpack(s1_ids, self.s1_bits), _unpack(s2_ids, self.s2_bits)], dim=-1)
        else:
            bits = _unpack(ids, self.codebook_dim)
        return ((bits.float() * 2 - 1) / self.codebook_dim**0.5).to(self.post_quant_embed.weight.dtype)

    def decode(self, ids, half: bool = False) -> torch.Tensor:
        """Token ids (see encode) -> fine reconstruction (B, T, d_in)."""
        return self.decode_codes(self.ids_to_codes(ids, half))

    def decode_paths(self, context_ids, path_ids, paths: int) -> torch.Tensor:
        """Fine reconstruction of sampled positions only: (B * paths, T_new, d_in).

        context_ids [s1, s2] (B, T_ctx) precede each of their series' `paths` rows of path_ids
        [s1, s2] (B * paths, T_new) (rows b * paths .. b * paths + paths - 1). The decoder is
        causal, so each series' context runs once and its keys and values serve all its paths:
        the result equals decoding every path's whole window and keeping its last T_new positions.
        """
        context_len = context_ids[0].shape[1]
        caches = [LayerCache(context_len + path_ids[0].shape[1]) for _ in self.decoder]
        run_causal(self.decoder, self.post_quant_embed(self.ids_to_codes(context_ids, half=True)), caches=caches)
        for cache in caches:
            cache.repeat_interleave(paths)
        hidden = self.post_quant_embed(self.ids_to_codes(path_ids, half=True))
        return self.head(run_causal(self.decoder, hidden, start=context_len, caches=caches))


def _unpack(ids: torch.Tensor, bits: int) -> torch.Tensor:
    """(B, T) integer ids -> (B, T, bits) booleans, least significant bit first."""
    return (ids.unsqueeze(-1) & 2 ** torch.arange(bits, device=ids.device)) != 0
