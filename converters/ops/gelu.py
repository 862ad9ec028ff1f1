"""Gelu (ONNX opset 20) written out as the ops of its ONNX function body, so the graph can go down to opset 17.

torch's default exporter emits `Gelu` at opset 20, and ONNX's version converter has no adapter to take it
below 20 (`No Previous Version of Gelu exists`). The expansion is exact: it is the op's own definition,
0.5 * x * (1 + erf(x / sqrt(2))), or with approximate="tanh", 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper


def gelu_nodes(node: onnx.NodeProto, constant: dict[str, str]) -> list[onnx.NodeProto]:
    """The nodes computing `node`'s Gelu; `constant` names the scalar initializers they use."""
    (x,), (y,) = node.input, node.output
    approximate = next((a.s.decode() for a in node.attribute if a.name == "approximate"), "none")
    stem = f"{node.name or y}_gelu"
    if approximate == "tanh":
        inner = [
            helper.make_node("Mul", [x, x], [f"{stem}_x2"]),
            helper.make_node("Mul", [f"{stem}_x2", x], [f"{stem}_x3"]),
            helper.make_node("Mul", [f"{stem}_x3", constant["cubic"]], [f"{stem}_cubic"]),
            helper.make_node("Add", [x, f"{stem}_cubic"], [f"{stem}_sum"]),
            helper.make_node("Mul", [f"{stem}_sum", constant["sqrt_2_over_pi"]], [f"{stem}_scaled"]),
            helper.make_node("Tanh", [f"{stem}_scaled"], [f"{stem}_squashed"]),
        ]
    else:
        inner = [
            helper.make_node("Mul", [x, constant["inv_sqrt_2"]], [f"{stem}_scaled"]),
            helper.make_node("Erf", [f"{stem}_scaled"], [f"{stem}_squashed"]),
        ]
    return [
        *inner,
        helper.make_node("Add", [f"{stem}_squashed", constant["one"]], [f"{stem}_plus_one"]),
        helper.make_node("Mul", [x, f"{stem}_plus_one"], [f"{stem}_product"]),
        helper.make_node("Mul", [f"{stem}_product", constant["half"]], [y]),
    ]


def expand_gelu(model: onnx.ModelProto) -> int:
    """Replace every default-domain Gelu node in the main graph in place; returns how many there were."""
    if not any(node.op_type == "Gelu" and not node.domain for node in model.graph.node):
        return 0
    values = {
        "one": 1.0,
        "half": 0.5,
        "inv_sqrt_2": 1 / math.sqrt(2),
        "sqrt_2_over_pi": math.sqrt(2 / math.pi),
        "cubic": 0.044715,
    }
    constant = {key: f"cleanse_gelu_{key}" for key in values}
    for key, value in values.items():
        model.graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=np.float32), constant[key]))
    rewritten, count = [], 0
    for node in model.graph.node:
        if node.op_type == "Gelu" and not node.domain:
            rewritten.extend(gelu_nodes(node, constant))
            count += 1
        else:
            rewritten.append(node)
    del model.graph.node[:]
    model.graph.node.extend(rewritten)
    return count
