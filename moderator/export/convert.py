"""Graph surgery on an exported ONNX graph: ORT's fusions, fp16 or int8, and saving it.

Each step works on an `onnx.ModelProto` and none judges the result: the parity check
(`moderator.export.parity.build_graph`) decides which candidate ships.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Final, Literal

import onnx

__all__ = [
    "MAX_IR_VERSION",
    "Precision",
    "convert",
    "copy_model",
    "finalize",
    "fuse",
    "save",
]

Precision = Literal["fp32", "fp16", "int8"]

# onnxruntime 1.31 loads IR ≤ 10; newer onnx packages stamp 11+ by default.
MAX_IR_VERSION: Final = 10
# protobuf's hard limit is 2 GiB; above this a graph's weights go to a side file.
_EXTERNAL_DATA_BYTES: Final = 1_800_000_000
# The fused op types ORT's CLIP optimizer reports; all are recorded, zero or not.
_FUSED_OPS: Final = (
    "Attention",
    "LayerNormalization",
    "SkipLayerNormalization",
    "QuickGelu",
    "Gelu",
    "FastGelu",
    "BiasGelu",
)


def fuse(model: onnx.ModelProto, heads: int, hidden: int) -> tuple[onnx.ModelProto, dict[str, int]]:
    """ORT's CLIP fusions (Attention, LayerNorm, SkipLayerNorm, QuickGelu/Gelu)."""
    from onnxruntime.transformers.optimizer import optimize_model

    # opt_level 0: Python fusions only; ORT's own level-1 passes run again at session load.
    optimizer = optimize_model(
        model, model_type="clip", num_heads=heads, hidden_size=hidden, opt_level=0
    )
    stats = optimizer.get_fused_operator_statistics()
    return optimizer.model, {op: int(stats.get(op, 0)) for op in _FUSED_OPS}


def _to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and compute, float32 graph inputs/outputs.

    The L2 norm stays fp32: its sum of squares can pass fp16's 65504 for wide projections.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    keep = [n.name for n in model.graph.node if n.op_type == "ReduceL2"]
    converted: onnx.ModelProto = convert_float_to_float16(
        model, keep_io_types=True, node_block_list=keep, disable_shape_infer=True
    )
    return converted


def _to_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """Dynamic int8: MatMul and Attention weights quantized per output channel ahead of time,
    activations per batch at run time (DynamicQuantizeLinear). A CPU format: on a 2-core AVX-512
    VNNI machine the ViT-B/32 vision tower runs 3× faster than fp32 (60.6 vs 20.9 img/s, batch 32).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = copy_model(model)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        # The optimizer's fused ops need the import for onnx's shape inference to pass them.
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    with tempfile.TemporaryDirectory(prefix="moderator-int8-") as tmp:
        path = Path(tmp) / "int8.onnx"
        quantize_dynamic(
            model,
            path,
            op_types_to_quantize=["MatMul", "Attention"],
            per_channel=True,
            weight_type=QuantType.QInt8,
            # Outputs of com.microsoft ops have no inferred type; they are all float here.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        return onnx.load(str(path))


def convert(model: onnx.ModelProto, precision: Precision) -> onnx.ModelProto:
    if precision == "fp16":
        return _to_fp16(model)
    if precision == "int8":
        return _to_int8(model)
    return model


def finalize(model: onnx.ModelProto) -> onnx.ModelProto:
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    return model


def save(model: onnx.ModelProto, path: Path) -> None:
    if model.ByteSize() > _EXTERNAL_DATA_BYTES:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=f"{path.name}.data",
        )
    else:
        onnx.save_model(model, str(path))


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy
