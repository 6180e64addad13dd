"""xentcy on torch CPU tensors and JAX CPU arrays against NumPy arrays and the frameworks' own
losses (issue 14). One thread, float32, class indices; medians. Usage:
python benchmarks/bench_torch_jax.py [REPEATS]"""

import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import xentcy as xc
import xentcy.torch as xt
from xentcy._cpu import _core

SHAPES = ((2048, 32000), (8192, 1000), (65536, 10))


def median_ms(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def _row(n, c, repeats, jax, jnp):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((n, c), dtype=np.float32)
    y = rng.integers(0, c, n)
    At, yt = torch.from_numpy(A), torch.from_numpy(y)
    Aj, yj = jnp.asarray(A), jnp.asarray(y)
    t_np = median_ms(lambda: xc.loss_and_grad(A, y), repeats)
    t_torch = median_ms(lambda: xc.loss_and_grad(At, yt), repeats)
    t_jax = median_ms(lambda: jax.block_until_ready(xc.loss_and_grad(Aj, yj)), repeats)

    def ours():
        a = At.detach().requires_grad_()
        xt.cross_entropy(a, yt).backward()

    def theirs():
        a = At.detach().requires_grad_()
        F.cross_entropy(a, yt).backward()

    t_ours, t_theirs = median_ms(ours, repeats), median_ms(theirs, repeats)
    print(
        f"| ({n}, {c}) | {t_np:.1f} | {t_torch:.1f} | {t_torch / t_np:.2f} | {t_jax:.1f} | "
        f"{t_jax / t_np:.2f} | {t_ours:.1f} | {t_theirs:.1f} | {t_theirs / t_ours:.1f}x |"
    )


def main(repeats=7):
    torch.set_num_threads(1)
    _core.set_max_threads(1)
    import jax
    import jax.numpy as jnp

    print(
        "| (N, C) | loss_and_grad NumPy | torch CPU | / NumPy | JAX CPU | / NumPy "
        "| xt fwd+bwd | F.cross_entropy fwd+bwd | speed-up |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, c in SHAPES:
        _row(n, c, repeats, jax, jnp)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
