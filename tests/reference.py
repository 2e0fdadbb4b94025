"""Float64 NumPy references of the optimizer rules, written from the equations in
ops/optim/optim.h and ../shared/MPS_REFERENCE.md (not from the kernels).

The rules also run on float16/bfloat16 arrays (NumPy, ml_dtypes: every operation in
float32, rounded to 16 bits), with Python-float scalars so nothing widens: that is the
16-bit arithmetic Keras and the kernels do, in the formulas' order."""

import numpy as np


def transform_gradient(g, w, rescale=1.0, clip=None, regularization=None, scale=0.0):
    """MPSNNOptimizerDescriptor: clip ("before gradient is rescaled", Apple's
    documentation), then rescale, then regularize."""
    if clip is not None:
        g = np.clip(g, clip[0], clip[1]).astype(np.asarray(g).dtype)  # np.clip widens bfloat16
    g = g * rescale
    if regularization == "l1":
        g = g + scale * np.sign(w)
    elif regularization == "l2":
        g = g + scale * w
    return g


def _exact(x):
    return x


def adam(w, m, v, vhat, g, lr, t, beta1, beta2, eps, semantics, const=_exact, cast=None):
    """One Adam step; returns new (w, m, v, vhat). vhat is None without AMSGrad.

    Keras semantics is written in Keras's form (m += (g - m)*(1 - beta1), ...). Keras
    computes beta**t from ops.cast(beta, dtype), which rounds the Python float through
    float32 even for float64 variables (and then to a 16-bit dtype): `cast`, float32
    rounding by default. `const` rounds the Python floats Keras combines with tensors
    (1 - beta1, epsilon; the kernels do the same in both semantics) to the variables'
    dtype: the identity but for 16-bit dtypes."""
    if semantics == "keras":
        cast = cast or (lambda x: float(np.float32(x)))
        beta1_pow, beta2_pow = cast(beta1) ** t, cast(beta2) ** t
        alpha = float(lr * np.sqrt(1 - beta2_pow) / (1 - beta1_pow))  # a Python float: keeps 16-bit arrays
        m = m + (g - m) * const(1 - beta1)
        v = v + (g * g - v) * const(1 - beta2)
    else:
        beta1_pow, beta2_pow = beta1**t, beta2**t
        alpha = float(lr * np.sqrt(1 - beta2_pow) / (1 - beta1_pow))
        m = const(beta1) * m + const(1 - beta1) * g
        v = const(beta2) * v + const(1 - beta2) * (g * g)
    denom_v = v
    if vhat is not None:
        vhat = np.maximum(vhat, v)
        denom_v = vhat
    if semantics == "keras":
        return w - m * alpha / (np.sqrt(denom_v) + const(eps)), m, v, vhat
    return w - alpha * m / (np.sqrt(denom_v) + const(eps)), m, v, vhat


def sgd(w, mom, g, lr, mu, nesterov, semantics):
    """One SGD step; returns new (w, mom). mom is None for plain SGD."""
    if mom is None:
        return w - lr * g, None
    if semantics == "keras":
        mom = mu * mom - lr * g
        w = w + (mu * mom - lr * g if nesterov else mom)
    elif nesterov:
        mom = mu * mom + g
        w = w - lr * (g + mu * mom)
    else:
        mom = mu * mom + lr * g
        w = w - mom
    return w, mom


def rmsprop(w, s, a, mom, g, lr, rho, mu, eps, semantics, const=_exact):
    """One RMSProp step; returns new (w, s, a, mom); a/mom None when off. `const`: as for
    adam."""
    c = const
    s = c(rho) * s + c(1 - rho) * (g * g)
    var = s
    if a is not None:
        a = c(rho) * a + c(1 - rho) * g
        var = s - a * a
    if semantics == "keras":
        inc = lr * g / np.sqrt(var + c(eps))
    else:
        inc = lr * g / (np.sqrt(var) + c(eps))
    if mom is not None:
        mom = c(mu) * mom + inc
        w = w - mom
    else:
        w = w - inc
    return w, s, a, mom


# ----------------------------------------------------------------- layouts (convert)
def layout_offsets(layout, n, h, w, c):
    """Flat offset of element (n, h, w, c) in `layout`, as an [n, h, w, c] array: the index
    maps of ops/convert/convert.h, written again from their definitions."""
    s = (c + 3) // 4
    N, H, W, C = np.meshgrid(np.arange(n), np.arange(h), np.arange(w), np.arange(c), indexing="ij")
    if layout in ("nhwc", "sequence", "matrix_hwc"):
        return ((N * h + H) * w + W) * c + C
    if layout == "time_major":
        return ((H * n + N) * w + W) * c + C
    if layout == "image":
        return (((N * s + C // 4) * h + H) * w + W) * 4 + C % 4
    if layout == "matrix_chw":
        return N * c * h * w + (C * h + H) * w + W
    raise ValueError(layout)


def layout_shape(layout, n, h, w, c):
    return {
        "nhwc": (n, h, w, c), "sequence": (n, h, c), "time_major": (h, n, c),
        "image": (n, (c + 3) // 4, h, w, 4), "matrix_hwc": (n, h * w * c), "matrix_chw": (n, c * h * w),
    }[layout]


def to_layout(x_nhwc, layout):
    """Places a logical [N, H, W, C] array into `layout` (padding zero)."""
    n, h, w, c = x_nhwc.shape
    shape = layout_shape(layout, n, h, w, c)
    out = np.zeros(int(np.prod(shape)), dtype=x_nhwc.dtype)
    out[layout_offsets(layout, n, h, w, c).ravel()] = x_nhwc.ravel()
    return out.reshape(shape)


def from_layout(data, layout, n, h, w, c):
    """Reads the logical [N, H, W, C] array out of `layout`."""
    return np.asarray(data).ravel()[layout_offsets(layout, n, h, w, c)]


def unorm8_to_float(q):
    return q.astype(np.float32) / np.float32(255)


def float_to_unorm8(y):
    """round-to-nearest-even(clamp(y, 0, 1) * 255); NaN -> 0."""
    v = np.nan_to_num(np.asarray(y, np.float32) * np.float32(255), nan=0.0)
    return np.rint(np.clip(v, 0, 255)).astype(np.uint8)
