"""One module per ``onnx-cp`` subcommand; COMMANDS lists them in help order."""
from onnx_cp.commands.bench_cmd import bench_command
from onnx_cp.commands.evaluate_cmd import evaluate_command
from onnx_cp.commands.finetune_cmd import finetune_command
from onnx_cp.commands.inspect_cmd import inspect_command
from onnx_cp.commands.rewrite_cmd import rewrite_command

COMMANDS = [inspect_command, rewrite_command, bench_command, evaluate_command, finetune_command]
