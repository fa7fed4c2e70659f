"""Exporting to ONNX with either of torch's exporters, and checking what the file contains."""
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ['EXPORTERS', 'default_exporter', 'export_onnx', 'onnx_op_types', 'check_standard_ops']

# 'dynamo': torch.export-based, the default of torch.onnx.export since torch 2.9 (needs
# onnxscript); 'torchscript': the tracing exporter (torch.onnx.export(..., dynamo=False)), the one
# OpenMMLab's tools and torch < 2.9 use.
EXPORTERS = ('dynamo', 'torchscript')
# Per exporter: the TorchScript exporter of torch < 2.4 writes some ops (ReduceMean's axes) in
# their opset-17 form whatever opset it is asked for, so it stays at 17, the newest it supports
# everywhere; the dynamo exporter's own translations are written for opset 18.
DEFAULT_OPSETS = {'dynamo': 18, 'torchscript': 17}


def _torch_version() -> Tuple[int, int]:
    major, minor = torch.__version__.split('.')[:2]
    return int(major), int(minor)


def default_exporter() -> str:
    """The exporter ``torch.onnx.export`` uses by default on the installed torch."""
    return 'dynamo' if _torch_version() >= (2, 9) else 'torchscript'


def _dynamic_shapes(args: Sequence[torch.Tensor], input_names: Sequence[str],
                    dynamic_axes: Dict[str, Dict[int, str]]) -> Tuple:
    """``dynamic_axes`` of the inputs as torch.export's ``dynamic_shapes``: one ``Dim`` per axis
    name, so that axes sharing a name are the same size."""
    dims = {}
    shapes = []
    for name, arg in zip(input_names, args):
        axes = dynamic_axes.get(name, {})
        spec = {
            axis: dims.setdefault(label, torch.export.Dim(label))
            for axis, label in axes.items()
        }
        shapes.append(spec or None)
    return tuple(shapes)


def export_onnx(model: nn.Module,
                args: Tuple[torch.Tensor, ...],
                path: str,
                input_names: Sequence[str],
                output_names: Sequence[str],
                dynamic_axes: Dict[str, Dict[int, str]],
                exporter: Optional[str] = None,
                opset_version: Optional[int] = None) -> None:
    """Exports ``model(*args)`` to the ONNX file ``path``, all in one file.

    Args:
        model (nn.Module): the module to export, in eval mode.
        args (Tuple[Tensor, ...]): example inputs.
        path (str): the ``.onnx`` file to write.
        input_names, output_names (Sequence[str]): names of the graph's inputs and outputs.
        dynamic_axes (Dict[str, Dict[int, str]]): per input or output name, its dynamic axes and
            their names (the TorchScript exporter's convention); axes of the same name must be of
            the same size.
        exporter (str, optional): ``'dynamo'`` or ``'torchscript'``. Default: the installed
            torch's default.
        opset_version (int, optional): ONNX opset. Default: 18 for ``'dynamo'``, 17 for
            ``'torchscript'``.
    """
    exporter = default_exporter() if exporter is None else exporter
    if exporter not in EXPORTERS:
        raise ValueError(f'exporter must be one of {EXPORTERS}, but got {exporter!r}')
    if exporter == 'dynamo' and _torch_version() < (2, 5):
        raise NotImplementedError(f'the dynamo exporter needs torch >= 2.5 (torch.onnx.export with '
                                  f'dynamo=True), but torch is {torch.__version__}; use '
                                  f"exporter='torchscript'")
    if opset_version is None:
        opset_version = DEFAULT_OPSETS[exporter]
    from .exportable_ops import custom_translation_table, register_torchscript_symbolics
    model = model.eval()
    with torch.no_grad():
        if exporter == 'torchscript':
            register_torchscript_symbolics(opset_version)
            kwargs = {'dynamo': False} if _torch_version() >= (2, 5) else {}
            with warnings.catch_warnings():
                # Sizes read from tensors are traced; the warnings are about the static ones.
                warnings.simplefilter('ignore', torch.jit.TracerWarning)
                torch.onnx.export(model,
                                  args,
                                  path,
                                  input_names=list(input_names),
                                  output_names=list(output_names),
                                  dynamic_axes=dynamic_axes,
                                  opset_version=opset_version,
                                  **kwargs)
        else:
            program = torch.onnx.export(model,
                                        args,
                                        dynamo=True,
                                        input_names=list(input_names),
                                        output_names=list(output_names),
                                        dynamic_shapes=_dynamic_shapes(
                                            args, input_names, dynamic_axes),
                                        opset_version=opset_version,
                                        custom_translation_table=custom_translation_table(),
                                        verbose=False)
            program.save(path, external_data=False)


def onnx_op_types(path: str) -> List[Tuple[str, str]]:
    """The ``(domain, op_type)`` pairs of an ONNX file's nodes, subgraphs and functions included;
    domain ``''`` is the default ONNX domain."""
    import onnx
    model = onnx.load(path)
    found = set()

    def visit(graph) -> None:
        for node in graph.node:
            found.add((node.domain, node.op_type))
            for attribute in node.attribute:
                for subgraph in [attribute.g, *attribute.graphs]:
                    visit(subgraph)

    visit(model.graph)
    local = {(function.domain, function.name) for function in model.functions}
    for function in model.functions:
        for node in function.node:
            found.add((node.domain, node.op_type))
    return sorted(found - local)


def check_standard_ops(path: str) -> List[str]:
    """Runs ``onnx.checker`` on the file and returns its op types; raises ``ValueError`` naming
    any op outside the default ONNX domain."""
    import onnx
    onnx.checker.check_model(path, full_check=True)
    ops = onnx_op_types(path)
    foreign = [f'{domain}::{op}' for domain, op in ops if domain not in ('', 'ai.onnx')]
    if foreign:
        raise ValueError(f'{path} has ops outside the default ONNX domain: {foreign}')
    return [op for _, op in ops]
