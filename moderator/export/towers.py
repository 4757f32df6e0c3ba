"""The two towers as PyTorch modules shaped for ONNX Runtime, and their trace to ONNX.

`VisionGraph` takes uint8 NHWC pixels and does the processor's normalization itself (folded
into the patch embedding); `TextGraph` builds the causal mask the way ORT's CLIP fusion
matches. Both end in L2-normalized embeddings.

The text graph takes no attention mask. CLIP's text tower is causal and pools the eos token, so
with right padding (all the runtime sends) padding never reaches the pooled row and a key mask
changes nothing; left out, the causal mask keeps the shape ORT's CLIP attention fusion matches
(with it, no text Attention node fuses), and on CUDA the fused kernel needs no mask input.

`trace_to_onnx` uses the legacy TorchScript exporter (dynamo=False): it needs no extra packages,
is stable on HF CLIP, and gives the op patterns the ORT transformers optimizer was written
against.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import onnx
import torch
from torch import nn

from moderator.errors import ModelError
from moderator.export.checkpoint import Preprocess

__all__ = ["TextGraph", "VisionGraph", "trace_to_onnx"]


class VisionGraph(nn.Module):
    """uint8 NHWC pixels → normalized image embeddings, preprocessing included.

    The patch embedding is a stride-P convolution with P×P kernels, i.e. one matrix product
    over non-overlapping patches. It is written as reshape + MatMul on the NHWC input with the
    /255, mean and std folded into the weights and the position embeddings: on CUDA the
    convolution was the largest single kernel (2.1 ms of 10.3 per batch of 256 on an H200,
    ViT-B/32 fp16), where a GEMM of the same size takes a fraction of that, and the NCHW
    transpose and the normalization passes disappear. The rest is HF's tower, module by
    module (its MLPs as `_BiasFoldedMLP` when folding); parity with `vision_model(...)`
    itself is checked after export.
    """

    patch_weight: torch.Tensor
    positions: torch.Tensor

    def __init__(self, clip: Any, pre: Preprocess, *, fold_mlp_bias: bool = False) -> None:
        super().__init__()
        vision = clip.vision_model
        self.pre_layrnorm = vision.pre_layrnorm
        self.encoder = vision.encoder
        if fold_mlp_bias:
            # A copy of the module tree (sharing the weights): the checkpoint's own modules
            # stay untouched for the parity reference.
            shared = {id(t): t for t in (*vision.encoder.parameters(), *vision.encoder.buffers())}
            self.encoder = copy.deepcopy(vision.encoder, memo=shared)
            for layer in self.encoder.layers:
                layer.mlp = _BiasFoldedMLP(layer.mlp)
        self.post_layernorm = vision.post_layernorm
        self.projection = clip.visual_projection
        embeddings = vision.embeddings
        conv = embeddings.patch_embedding.weight.detach().to(torch.float32)  # (D, 3, P, P)
        dim, _, patch, _ = conv.shape
        size = pre.image_size
        if size % patch:
            raise ModelError(f"image size {size} is not a multiple of the patch size {patch}")
        self.patch, self.grid = patch, size // patch
        # x_norm = (x·rescale − mean) / std = x / scale − offset / scale, per channel.
        scale = torch.tensor([s / pre.rescale for s in pre.std]).view(1, 3, 1, 1)
        offset = torch.tensor([m / pre.rescale for m in pre.mean]).view(1, 3, 1, 1)
        weight = conv / scale
        bias = -(conv * offset / scale).sum(dim=(1, 2, 3))  # (D,)
        # Patch pixels flattened in (row, column, channel) order, as NHWC lays them out.
        self.register_buffer(
            "patch_weight", weight.permute(2, 3, 1, 0).reshape(patch * patch * 3, dim).clone()
        )
        positions = embeddings.position_embedding.weight.detach().to(torch.float32).clone()
        positions[1:] += bias  # the folded normalization's constant term, once per patch
        positions[0] += embeddings.class_embedding.detach().to(torch.float32)
        self.register_buffer("positions", positions.unsqueeze(0))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        p, g = self.patch, self.grid
        x = pixels.to(torch.float32).reshape(-1, g, p, g, p, 3)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, g * g, p * p * 3)
        patches = torch.matmul(x, self.patch_weight)
        # A zero row in front becomes the class token once the positions are added (they
        # carry the class embedding): no batch-sized expand, so no shape ops in the graph.
        hidden = nn.functional.pad(patches, (0, 0, 1, 0)) + self.positions
        hidden = self.pre_layrnorm(hidden)
        hidden = self.encoder(inputs_embeds=hidden).last_hidden_state
        pooled = self.post_layernorm(hidden[:, 0, :])
        embeds: torch.Tensor = self.projection(pooled)
        normalized: torch.Tensor = embeds / embeds.norm(dim=-1, keepdim=True)
        return normalized


_ONES: Final = 8  # columns of ones appended for a folded bias


class _BiasFoldedMLP(nn.Module):
    """CLIP's MLP with fc1's bias carried by the matrix product itself.

    The input gets `_ONES` columns of ones and fc1's weight the matching rows (the bias, then
    zeros): x·W + b = [x, 1]·[W; b]. On CUDA, ORT adds HF's bias in its own pass over the
    (tokens × 4·width) output (1.0–1.1 ms of a ViT-B/32 batch of 256 on an H200); widening the
    (tokens × width) input by Concat takes 0.28 ms. Eight columns keep the inner dimension a
    multiple of 8 for tensor cores.
    Not for int8: a bias row would widen each column's quantization range.
    """

    fc1_weight: torch.Tensor

    def __init__(self, mlp: Any) -> None:
        super().__init__()
        weight = mlp.fc1.weight.detach().t()  # (width, inner)
        bias = mlp.fc1.bias.detach().view(1, -1)
        extra = torch.zeros((_ONES - 1, weight.shape[1]), dtype=weight.dtype, device=weight.device)
        self.register_buffer("fc1_weight", torch.cat([weight, bias, extra]).contiguous())
        self.activation_fn = mlp.activation_fn
        self.fc2 = mlp.fc2

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # Concat, not Pad: ORT's Concat kernel takes half the time of its Pad kernel here
        # (0.28 vs 0.58 ms per batch of 256, measured on an H200).
        ones = hidden.new_ones((*hidden.shape[:-1], _ONES))
        padded = torch.cat([hidden, ones], dim=-1)
        inner = self.activation_fn(torch.matmul(padded, self.fc1_weight))
        out: torch.Tensor = self.fc2(inner)
        return out


class TextGraph(nn.Module):
    """token ids → normalized text embeddings, HF CLIP's text tower with its own causal mask.

    HF builds the mask through `masking_utils`, which traces into ops no fusion recognises;
    this builds the same additive causal mask the way ORT's CLIP fusion expects. Parity with
    `text_model(...)` itself is checked after export.
    """

    def __init__(self, clip: Any, pooling: str, eos: int) -> None:
        super().__init__()
        self.text = clip.text_model
        self.projection = clip.text_projection
        self.pooling = pooling
        self.eos = eos

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.text.embeddings(input_ids=input_ids)
        batch, seq = input_ids.shape
        mask = torch.full((seq, seq), torch.finfo(hidden.dtype).min)
        steps = torch.arange(seq)
        mask = mask.masked_fill(steps < (steps + 1).view(seq, 1), 0.0)
        mask = mask[None, None, :, :].expand(batch, 1, seq, seq)
        hidden = self.text.encoder(inputs_embeds=hidden, attention_mask=mask).last_hidden_state
        hidden = self.text.final_layer_norm(hidden)
        ids = input_ids.to(torch.int32)  # as HF does: ArgMax over int64 is not supported everywhere
        if self.pooling == "argmax":  # checkpoints whose config says eos_token_id == 2
            position = ids.argmax(dim=-1)
        else:
            position = (ids == self.eos).to(torch.int32).argmax(dim=-1)
        pooled = hidden[torch.arange(batch), position]
        embeds: torch.Tensor = self.projection(pooled)
        normalized: torch.Tensor = embeds / embeds.norm(dim=-1, keepdim=True)
        return normalized


def trace_to_onnx(
    module: nn.Module, args: tuple[torch.Tensor, ...], names: Sequence[str], opset: int, tmp: Path
) -> onnx.ModelProto:
    path = tmp / "graph.onnx"
    axes = {name: {0: "batch", 1: "seq"} if name == "input_ids" else {0: "batch"} for name in names}
    axes["embeddings"] = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        # TracerWarnings flag Python branches on shapes; they are fixed at export on purpose
        # (the batch-size and sequence-length checks in HF's code), and the parity check
        # afterwards runs other shapes.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(names),
            output_names=["embeddings"],
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return onnx.load(str(path))
