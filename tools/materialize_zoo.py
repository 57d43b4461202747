"""Write a model-zoo graph from the onnx wheel with seeded random weights.

    python tools/materialize_zoo.py bvlc_alexnet -o light_bvlc_alexnet.onnx
"""
import argparse

import onnx

from onnx_cp.testing import ZOO_NAMES, materialize_zoo

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("name", choices=ZOO_NAMES)
parser.add_argument("-o", "--output", required=True)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
onnx.save(materialize_zoo(args.name, args.seed), args.output)
print(f"wrote {args.output}")
