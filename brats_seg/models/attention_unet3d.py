"""3D Attention U-Net (Oktay et al., 2018) for multi-modal brain-tumour segmentation.

Encoder: one block of two 3x3x3 convs (+ norm + activation) per level; levels after the first
downsample by a strided first conv (learned downsampling, as in nnU-Net). Decoder: transposed-conv
(or trilinear) upsampling, an additive attention gate on every skip connection, then a conv block.
The gate's gating signal is the coarser decoder feature map, so the decoder decides which encoder
features pass through. Output: logits (no softmax/sigmoid); the loss decides the activation.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

_NORMS = ("instance", "batch", "group", "none")
_ACTS = ("leakyrelu", "relu")
_LEAKY_SLOPE = 0.01


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "group":
        # Largest group count <= 8 that divides the channels, so any width works.
        groups = max(g for g in range(1, 9) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


def _act(kind: str) -> nn.Module:
    if kind == "leakyrelu":
        return nn.LeakyReLU(_LEAKY_SLOPE, inplace=True)
    return nn.ReLU(inplace=True)


class ConvBlock(nn.Module):
    """Two 3x3x3 convs, each followed by norm and activation; the first may stride to downsample."""

    def __init__(self, in_ch: int, out_ch: int, norm: str, act: str, dropout: float = 0.0,
                 stride: int = 1) -> None:
        super().__init__()
        bias = norm == "none"  # a norm layer right after the conv makes a conv bias redundant
        layers: list[nn.Module] = [
            nn.Conv3d(in_ch, out_ch, 3, stride=stride, padding=1, bias=bias),
            _norm(norm, out_ch), _act(act),
        ]
        if dropout > 0:
            layers.append(nn.Dropout3d(dropout))
        layers += [nn.Conv3d(out_ch, out_ch, 3, padding=1, bias=bias),
                   _norm(norm, out_ch), _act(act)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class AttentionGate(nn.Module):
    """Additive attention gate: alpha = sigmoid(psi(relu(W_x x + W_g g))); returns x * alpha.

    W_x is a strided conv that brings the skip features `x` onto the (coarser) grid of the gating
    signal `g`, so the coefficients are computed cheaply there and then trilinearly resampled to
    `x`'s grid, as in the paper. Set `record = True` to keep the last coefficient map (detached) in
    `attention`; it is off by default so training does not hold extra full-resolution maps.
    """

    def __init__(self, x_channels: int, g_channels: int, inter_channels: int,
                 subsample: int = 2) -> None:
        super().__init__()
        self.w_x = nn.Conv3d(x_channels, inter_channels, subsample, stride=subsample, bias=False)
        self.w_g = nn.Conv3d(g_channels, inter_channels, 1, bias=True)
        self.psi = nn.Conv3d(inter_channels, 1, 1, bias=True)
        self.record = False
        self.attention: torch.Tensor | None = None

    def coefficients(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Attention coefficients in (0, 1), shape (B, 1, *x.spatial)."""
        theta_x = self.w_x(x)
        phi_g = self.w_g(g)
        if phi_g.shape[2:] != theta_x.shape[2:]:
            phi_g = F.interpolate(phi_g, size=theta_x.shape[2:], mode="trilinear",
                                  align_corners=False)
        alpha = torch.sigmoid(self.psi(F.relu(theta_x + phi_g)))
        if alpha.shape[2:] != x.shape[2:]:
            alpha = F.interpolate(alpha, size=x.shape[2:], mode="trilinear", align_corners=False)
        return alpha

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        alpha = self.coefficients(x, g)
        if self.record:
            self.attention = alpha.detach()
        return x * alpha


class UpBlock(nn.Module):
    """Upsample the coarser features, gate the skip with them, concatenate, convolve."""

    def __init__(self, coarse_ch: int, skip_ch: int, norm: str, act: str, dropout: float,
                 upsample: str) -> None:
        super().__init__()
        if upsample == "transpose":
            self.up: nn.Module = nn.ConvTranspose3d(coarse_ch, skip_ch, 2, stride=2)
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False),
                nn.Conv3d(coarse_ch, skip_ch, 1),
            )
        self.gate = AttentionGate(skip_ch, coarse_ch, max(1, skip_ch // 2))
        self.conv = ConvBlock(2 * skip_ch, skip_ch, norm, act, dropout)

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        gated = self.gate(skip, coarse)
        return self.conv(torch.cat([gated, self.up(coarse)], dim=1))


class AttentionUNet3D(nn.Module):
    """3D Attention U-Net with `len(features)` resolution levels and optional deep supervision.

    Input (B, in_channels, X, Y, Z) with X, Y, Z divisible by 2**(len(features)-1); output logits
    (B, out_channels, X, Y, Z). With `deep_supervision=True` and in training mode the forward
    returns [full_res, half_res, quarter_res, ...] logits (one per decoder level except the
    coarsest); in eval mode it always returns a single tensor.
    """

    def __init__(self, in_channels: int = 4, out_channels: int = 3,
                 features: Sequence[int] = (16, 32, 64, 128, 256), norm: str = "instance",
                 act: str = "leakyrelu", deep_supervision: bool = False, dropout: float = 0.0,
                 upsample: str = "transpose") -> None:
        super().__init__()
        features = tuple(int(f) for f in features)
        _check_config(in_channels, out_channels, features, norm, act, dropout, upsample)
        self.in_channels, self.out_channels, self.features = in_channels, out_channels, features
        self.deep_supervision = deep_supervision
        self.encoder = nn.ModuleList(
            ConvBlock(in_channels if i == 0 else features[i - 1], f, norm, act, dropout,
                      stride=1 if i == 0 else 2)
            for i, f in enumerate(features)
        )
        # decoder[i] produces level i (0 = full resolution) from level i+1.
        self.decoder = nn.ModuleList(
            UpBlock(features[i + 1], features[i], norm, act, dropout, upsample)
            for i in range(len(features) - 1)
        )
        self.head = nn.Conv3d(features[0], out_channels, 1)
        n_aux = len(features) - 2 if deep_supervision else 0
        self.aux_heads = nn.ModuleList(nn.Conv3d(features[i], out_channels, 1)
                                       for i in range(1, 1 + n_aux))
        self.apply(_kaiming_init)

    @property
    def depth(self) -> int:
        return len(self.features)

    @property
    def gates(self) -> list[AttentionGate]:
        """Attention gates from full resolution (index 0) to the coarsest skip."""
        return [block.gate for block in self.decoder]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        self._check_input(x)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        decoded: list[torch.Tensor] = []
        for level in range(self.depth - 2, -1, -1):
            x = self.decoder[level](x, skips[level])
            decoded.append(x)
        main = self.head(decoded[-1])
        if not (self.deep_supervision and self.training):
            return main
        # decoded[-1 - i] is decoder level i; aux head i-1 serves level i (i >= 1).
        aux = [head(decoded[-1 - i]) for i, head in enumerate(self.aux_heads, start=1)]
        return [main, *aux]

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Run one forward pass and return each gate's coefficients (full resolution first)."""
        for gate in self.gates:
            gate.record, gate.attention = True, None
        try:
            self(x)
            return [gate.attention for gate in self.gates]  # type: ignore[misc]
        finally:
            for gate in self.gates:
                gate.record, gate.attention = False, None

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"AttentionUNet3D expects input (B, {self.in_channels}, X, Y, Z), got shape "
                f"{tuple(x.shape)}")
        factor = 2 ** (self.depth - 1)
        bad = [s for s in x.shape[2:] if s % factor]
        if bad:
            raise ValueError(
                f"AttentionUNet3D with {self.depth} levels needs every spatial size divisible by "
                f"{factor}, got {tuple(x.shape[2:])}; pad or crop the patch (e.g. to "
                f"{tuple(-(-s // factor) * factor for s in x.shape[2:])}) or use fewer levels")


def _check_config(in_channels: int, out_channels: int, features: tuple[int, ...], norm: str,
                  act: str, dropout: float, upsample: str) -> None:
    if in_channels < 1 or out_channels < 1:
        raise ValueError(
            f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
    if len(features) < 2 or min(features) < 1:
        raise ValueError(f"features needs >= 2 positive widths (one per level), got {features}")
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
    if act not in _ACTS:
        raise ValueError(f"act must be one of {_ACTS}, got {act!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if upsample not in ("transpose", "trilinear"):
        raise ValueError(f"upsample must be 'transpose' or 'trilinear', got {upsample!r}")


def _kaiming_init(module: nn.Module) -> None:
    """He init (fan_in, leaky-ReLU gain) for convs; zero biases. Norm layers keep (1, 0)."""
    if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=_LEAKY_SLOPE, mode="fan_in",
                                nonlinearity="leaky_relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
