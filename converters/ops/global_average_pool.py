"""GlobalAveragePool that averages over the input's actual spatial axes, whatever the graph's shape info says.

onnx2torch 1.5.15 reads the input rank from the graph's value_info; when that shape is missing (tf2onnx
leaves it out at some opsets) it reads rank 0 and averages over every axis, batch included, silently. Its
own shape-free module (OnnxGlobalAveragePool) takes the axes from the tensor at run time, so this converter
always uses that one. It replaces onnx2torch's registration, which `add_converter` would refuse to shadow.
"""

from __future__ import annotations

import onnx
from onnx2torch.node_converters.global_average_pool import OnnxGlobalAveragePool
from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription, add_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

_CONVERTER_REGISTRY.pop(OperationDescription(onnx.defs.ONNX_DOMAIN, "GlobalAveragePool", 1), None)


@add_converter(operation_type="GlobalAveragePool", version=1)
def convert_global_average_pool(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    return OperationConverterResult(torch_module=OnnxGlobalAveragePool(), onnx_mapping=onnx_mapping_from_node(node))
