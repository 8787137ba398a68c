"""What row-invariant transforms cost: flow-SCM transform with fixed-order products vs BLAS.

The transform runs each chunk inside
:func:`bidsharmony.utils.rowwise_torch.fixed_order_products` so that a scan's numbers do not
depend on its position in the table. This times the same fitted model with that mode and with
plain BLAS products (``torch.no_grad`` only), interleaved, on a synthetic table.

    python benchmarks/bench_row_invariance.py --rows 10000 --features 145 --flow affine
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

import bidsharmony.features.flow_scm.harmonizer as flow_scm_harmonizer
from bidsharmony.datasets.tabular import make_feature_table
from bidsharmony.harmonize import get_harmonizer


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--features", type=int, default=145)
    parser.add_argument("--flow", default="affine")
    parser.add_argument("--architecture", default="elementwise")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    table = make_feature_table(args.rows // 4, n_sites=4, n_features=args.features, seed=args.seed + 1)
    harmonizer = get_harmonizer("flow-scm", reference_site=table.reference_site, random_seed=args.seed,
                                flow=args.flow, architecture=args.architecture, epochs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        harmonizer.fit(table.features, table.covariates)
    modes = {"fixed order": flow_scm_harmonizer.fixed_order_products, "BLAS": torch.no_grad}
    seconds = {name: [] for name in modes}
    results = {}
    try:
        for _ in range(args.repeats):
            for name, mode in modes.items():
                flow_scm_harmonizer.fixed_order_products = mode
                start = time.perf_counter()
                results[name] = harmonizer.transform(table.features, table.covariates).to_numpy()
                seconds[name].append(time.perf_counter() - start)
    finally:
        flow_scm_harmonizer.fixed_order_products = modes["fixed order"]
    difference = np.max(np.abs(results["fixed order"] - results["BLAS"]) / np.abs(results["BLAS"]))
    print(f"{args.rows} x {args.features}, {args.flow} {args.architecture}, best of {args.repeats}, 1 thread")
    for name, values in seconds.items():
        print(f"  {name}: {min(values):.3f} s ({args.rows / min(values):,.0f} rows/s)")
    print(f"  ratio: {min(seconds['fixed order']) / min(seconds['BLAS']):.2f}x; "
          f"largest relative difference of the results: {difference:.1e}")


if __name__ == "__main__":
    main()
