"""The coefficients of the CPU kernels' tanh (csrc/cpu/attention_scores.h,
tanh_fast) and their error.

    python dev/fit_tanh_rational.py [--degrees 4 4] [--clamp 9]

tanh x ~ x P(x^2) / Q(x^2) with Q(0) = 1, fitted on [0, clamp] for the least
maximum relative error. The fit is Loeb's linearisation (dividing the
residual x P - tanh(x) Q by the previous iteration's Q makes it the relative
error, and it is linear in the coefficients) with Lawson's reweighting
(weights grow where the error is largest), which tends to the minimax fit.
The coefficients are then rounded to float32, as the kernel holds them, and
the result evaluated in float32 by Horner's rule, as the kernel does, over
2 million points, against tanh in float64.
"""

import argparse

import numpy as np


def fit(deg_p: int, deg_q: int, clamp: float, iterations: int = 400):
    n = 4000
    x = clamp / 2 * (1 - np.cos(np.pi * (np.arange(n) + 0.5) / n))  # Chebyshev nodes
    x = np.concatenate([x, np.linspace(1e-4, clamp, 2000)])
    y = np.tanh(x)
    u = x * x
    weights = np.ones_like(x)
    q_prev = np.ones_like(x)
    best = None
    for _ in range(iterations):
        columns = [x * u**k for k in range(deg_p + 1)] + [-y * u**k for k in range(1, deg_q + 1)]
        a = np.stack(columns, 1)
        s = np.sqrt(weights) / (y * q_prev)
        c, *_ = np.linalg.lstsq(a * s[:, None], y * s, rcond=None)
        p, q = c[:deg_p + 1], np.concatenate([[1.0], c[deg_p + 1:]])
        q_val = np.polyval(q[::-1], u)
        err = (x * np.polyval(p[::-1], u) / q_val - y) / y
        worst = np.abs(err).max()
        if best is None or worst < best[0]:
            best = (worst, p.copy(), q.copy())
        q_prev = q_val
        weights = weights * np.sqrt(np.abs(err) / worst) + 1e-30
        weights /= weights.sum()
    return best


def horner32(coefs: np.ndarray, u: np.ndarray) -> np.ndarray:
    acc = np.full_like(u, coefs[-1])
    for c in coefs[-2::-1]:
        acc = (acc * u + c).astype(np.float32)
    return acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--degrees", type=int, nargs=2, default=(4, 4), metavar=("P", "Q"))
    ap.add_argument("--clamp", type=float, default=9.0)
    args = ap.parse_args()
    worst, p, q = fit(*args.degrees, args.clamp)
    p32, q32 = p.astype(np.float32), q.astype(np.float32)
    x = np.linspace(0, args.clamp, 2_000_001, dtype=np.float32)[1:]
    u = x * x
    approx = (x * horner32(p32, u) / horner32(q32, u)).astype(np.float32)
    truth = np.tanh(x.astype(np.float64))
    ulps = np.abs(approx - truth) / np.spacing(truth.astype(np.float32)).astype(np.float64)
    print(f"max relative error, exact arithmetic: {worst:.3g}")
    print(f"float32 (Horner): max relative error {np.max(np.abs(approx - truth) / truth):.3g}, "
          f"max {ulps.max():.2f} ulp (at x = {x[ulps.argmax()]:.4g})")
    print("P (from x^0):", ", ".join(f"{v:.9g}f" for v in p32))
    print("Q (from x^0):", ", ".join(f"{v:.9g}f" for v in q32))


if __name__ == "__main__":
    main()
