"""Run a bf16 ONNX graph on ONNX Runtime's CPU kernels, which have almost no bfloat16 implementations.

The rewrite keeps every bf16 rounding point of the graph: each op computes in float32 on bf16 values and its
result is rounded to bf16 (Cast to bfloat16 and back), as GPU bf16 kernels accumulate in float32 and store bf16.
"""
from __future__ import annotations

import numpy as np

# Ops whose outputs are copies of input values: a bf16 input stays bf16-exact, no rounding needed after them.
VALUE_PRESERVING_OPS = frozenset({
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Split", "Concat", "Slice", "Gather", "Expand", "Flatten",
    "Identity", "Tile", "Neg", "Abs", "Relu", "Max", "Min", "Where",
})


def has_bf16(model) -> bool:
    from onnx import TensorProto

    BF16 = TensorProto.BFLOAT16
    g = model.graph
    return (any(t.data_type == BF16 for t in g.initializer)
            or any(a.name == "to" and a.i == BF16 for n in g.node for a in n.attribute))


def _bf16_tensor_to_f32(tensor):
    """A bfloat16 TensorProto as float32 (exact: bf16 is the top half of a float32)."""
    from onnx import numpy_helper

    if tensor.raw_data:
        u16 = np.frombuffer(tensor.raw_data, dtype="<u2")
    else:  # small tensors keep their bf16 bit patterns in int32_data
        u16 = np.asarray(tensor.int32_data, dtype=np.uint32).astype(np.uint16)
    f32 = (u16.astype(np.uint32) << 16).view(np.float32).reshape(tuple(tensor.dims))
    return numpy_helper.from_array(f32, tensor.name)


def emulate_bf16(model):
    """A copy of `model` with float32 tensors where it had bfloat16 ones, rounded to bf16 after every op."""
    import onnx
    from onnx import TensorProto, helper, shape_inference

    BF16, F32 = TensorProto.BFLOAT16, TensorProto.FLOAT
    # Types of every intermediate tensor, inferred on a copy without the weights' bytes (a 2B graph's exceed the
    # 2 GB protobuf limit shape inference serializes through).
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    for t in skeleton.graph.initializer:
        t.ClearField("raw_data")
    inferred = shape_inference.infer_shapes(skeleton).graph
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.value_info, *g.input, *g.output)}
    types.update({t.name: t.data_type for t in g.initializer})

    for i, init in enumerate(g.initializer):
        if init.data_type == BF16:
            g.initializer[i].CopyFrom(_bf16_tensor_to_f32(init))
    for v in (*g.value_info, *g.input, *g.output):
        if v.type.tensor_type.elem_type == BF16:
            v.type.tensor_type.elem_type = F32

    nodes = []
    for node in g.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == BF16:  # Constant, ConstantOfShape
                attr.t.CopyFrom(_bf16_tensor_to_f32(attr.t))
        casts_to_bf16 = node.op_type == "Cast" and any(a.name == "to" and a.i == BF16 for a in node.attribute)
        rounds = casts_to_bf16 or (node.op_type not in VALUE_PRESERVING_OPS and node.op_type != "Constant")
        nodes.append(node)
        for j, name in enumerate(list(node.output)):
            if not name or not (casts_to_bf16 or (rounds and types.get(name) == BF16)):
                continue
            raw = f"{name}__cpu_bf16_in"
            node.output[j] = raw if not casts_to_bf16 else name
            if casts_to_bf16:
                # Cast(to=bf16) keeps its rounding; a Cast back to float32 follows under the old name.
                node.output[j] = f"{name}__cpu_bf16"
                nodes.append(helper.make_node("Cast", [node.output[j]], [name], to=F32))
            else:
                nodes.append(helper.make_node("Cast", [raw], [f"{name}__cpu_bf16"], to=BF16))
                nodes.append(helper.make_node("Cast", [f"{name}__cpu_bf16"], [name], to=F32))
    del g.node[:]
    g.node.extend(nodes)
    return out
