"""The converter family: the raw op MpsConvert, tf_mps.convert.* and tf_mps.data.*.

A case is a valid conversion (layouts, geometry, dtypes, per-channel scale/bias, values
with NaN/Inf/denormals) of one of three size classes (small; crossing the kernels'
pixel blocks, tiles and ParallelFor chunks with ragged ends; sequence row tiles) plus,
half of the time, one fault. Oracles: for valid input the index maps of tests/reference.py
(written from ops/convert/convert.h) and the value rules of docs/converters.md, exactly
(bit for bit but NaN payloads; a denormal may be flushed); for invalid input
oracle.judge (the error names the argument, the input is unchanged).
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from fuzz import oracle
from fuzz.registry import register

LAYOUTS = ("nhwc", "sequence", "time_major", "image", "matrix_hwc", "matrix_chw")
DTYPES = ("uint8", "float16", "float32")
SEQ = ("sequence", "time_major")

# Python helpers: (src, dst) layouts they convert, and the keyword arguments they take
# besides the input. "matrix" stands for matrix_hwc or matrix_chw (data_layout).
HELPERS = {
    "to_image": ("nhwc", "image", ("dtype", "scale", "bias")),
    "from_image": ("image", "nhwc", ("channels", "dtype", "scale", "bias", "affine")),
    "image_to_matrix": ("image", "matrix", ("channels", "data_layout", "dtype")),
    "matrix_to_image": ("matrix", "image", ("height", "width", "channels", "data_layout", "dtype")),
    "nhwc_to_matrix": ("nhwc", "matrix", ("data_layout", "dtype", "scale", "bias")),
    "matrix_to_nhwc": ("matrix", "nhwc", ("height", "width", "channels", "data_layout", "dtype")),
    "sequence_to_time_major": ("sequence", "time_major", ("dtype", "scale", "bias")),
    "time_major_to_sequence": ("time_major", "sequence", ("dtype",)),
}


def _needs(layout: str) -> tuple[str, ...]:
    """Geometry attributes needed to read `layout`."""
    return ("channels",) if layout == "image" else ("height", "width", "channels") if layout.startswith("matrix") else ()


# ------------------------------------------------------------------ strategies
@st.composite
def _geometry(draw, seq: bool):
    kind = draw(st.sampled_from(["small"] * 4 + ["blocks", "rows"]))
    if kind == "small":
        n, h, w, c = draw(st.integers(0, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5)), draw(st.integers(1, 13))
    elif kind == "blocks":
        # Pixel counts around the 256-pixel blocks and 32-pixel tiles, items and channels
        # enough for the work to be shared out in ParallelFor chunks (ragged last chunk).
        pixels = draw(st.sampled_from([255, 256, 257, 511, 513, 1000, 1601, 2049]))
        n = draw(st.sampled_from([1, 2, 5, 9, 17]))
        c = draw(st.sampled_from([1, 3, 4, 5, 8, 11, 13, 64, 130]))
        while n * pixels * c > 2_000_000 and n > 1:
            n //= 2
        h = draw(st.sampled_from([d for d in range(1, 60) if pixels % d == 0]))
        w = pixels // h
    else:  # sequence tiles: 16-128 rows a side, rows of 1-160 bytes
        n, h, w, c = draw(st.integers(1, 300)), draw(st.integers(1, 300)), 1, draw(st.integers(1, 70))
        while n * h * c > 2_000_000:
            n //= 2
    if seq:
        h, w = h * w, 1
    return kind, [n, h, w, c]


@st.composite
def _conversion(draw, src=None, dst=None, affine_ok=True):
    src = src or draw(st.sampled_from(LAYOUTS))
    dst = dst or draw(st.sampled_from(LAYOUTS))
    kind, g = draw(_geometry(src in SEQ or dst in SEQ))
    p = {"src": src, "dst": dst, "size": kind, "geometry": g,
         "tin": draw(st.sampled_from(DTYPES)), "tout": draw(st.sampled_from(DTYPES)),
         "values": draw(st.sampled_from(["normal", "special"])), "seed": draw(st.integers(0, 2**32 - 1)),
         "scale": None, "bias": None, "affine": "forward", "attrs": {}, "fault": None, "names": []}
    if affine_ok and draw(st.booleans()):
        p["scale"] = draw(st.sampled_from(["random", "random", "special", None]))
        p["bias"] = draw(st.sampled_from(["random", None]))
        p["affine"] = draw(st.sampled_from(["forward", "inverse"]))
    # The attributes reading src needs, and sometimes the others (which must then agree).
    n, h, w, c = g
    for name, value in (("height", h), ("width", w), ("channels", c)):
        if name in _needs(src) or draw(st.integers(0, 3)) == 0:
            p["attrs"][name] = value
    return p


_FAULTS_ALL = ["rank", "negative_attr", "mismatch_attr", "scale_len", "bias_len", "scale_rank", "in_dtype", "out_dtype",
               "width_not_1", "too_large", "missing_attr", "image_shape", "matrix_shape", "bad_affine", "bad_layout",
               "huge_attr"]
_FAULTS_PY = ["non_int_attr", "scale_type", "not_numeric_input"]


@st.composite
def _fault(draw, p: dict, form: str, kwargs=None):
    """One mistake, applied to problem p; kwargs: the helper's keyword arguments."""
    p = dict(p, attrs=dict(p["attrs"]))
    candidates = []
    attrs_ok = kwargs is None or any(k in kwargs for k in ("height", "width", "channels"))
    for fault in _FAULTS_ALL + (_FAULTS_PY if form != "raw" else []):
        if fault in ("negative_attr", "mismatch_attr", "huge_attr", "non_int_attr") and not attrs_ok:
            continue
        if fault in ("scale_len", "scale_rank", "scale_type", "bias_len") and kwargs is not None and "scale" not in kwargs:
            continue
        if fault == "bad_affine" and kwargs is not None and "affine" not in kwargs:
            continue
        if fault == "out_dtype" and kwargs is not None and "dtype" not in kwargs:
            continue
        if fault in ("missing_attr", "image_shape") and p["src"] != "image":
            if fault == "image_shape" or not p["src"].startswith("matrix"):
                continue
        if fault == "matrix_shape" and not p["src"].startswith("matrix"):
            continue
        if fault == "width_not_1" and (p["dst"] not in SEQ or p["src"] in SEQ or kwargs is not None):
            continue
        if fault == "too_large" and not p["dst"].startswith("matrix"):
            continue  # only a matrix row (H*W*C in one dimension) overflows for an empty batch
        if fault == "bad_layout" and kwargs is not None and "data_layout" not in kwargs:
            continue
        if fault == "missing_attr" and kwargs is not None:
            continue  # the helpers take the attributes they need as required arguments
        candidates.append(fault)
    fault = draw(st.sampled_from(candidates))
    f = {}
    names = []
    allowed_attrs = [a for a in ("height", "width", "channels") if kwargs is None or a in kwargs]
    if fault == "rank":
        f["rank"] = draw(st.sampled_from([r for r in range(0, 7) if r != _rank(p["src"])]))
        names = ["input", "x"]
    elif fault == "negative_attr":
        f["attr"] = draw(st.sampled_from(allowed_attrs))
        f["value"] = draw(st.sampled_from([-2, -5, -(2**31), -(2**63)] + ([-1] if form != "raw" else [])))
        if f["value"] == -1 and form != "raw" and f["attr"] not in _needs(p["src"]) and kwargs is None:
            f["value"] = -2  # None is the Python "unset"; -1 explicitly given is a mistake too
        names = [f["attr"]]
    elif fault == "mismatch_attr":
        f["attr"] = draw(st.sampled_from(allowed_attrs))
        # An image of C channels is also one of C + 1..3 while the slice count stays: only
        # another slice count is a mismatch there.
        step = 4 if (f["attr"] == "channels" and p["src"] == "image") else 1
        f["value"] = p["geometry"][{"height": 1, "width": 2, "channels": 3}[f["attr"]]] + step * draw(st.integers(1, 3))
        names = [f["attr"]] + (["input"] if f["attr"] in _needs(p["src"]) else [])
    elif fault == "huge_attr":
        f["attr"] = draw(st.sampled_from(allowed_attrs))
        f["value"] = draw(st.sampled_from([2**31, 2**62, 2**63 - 1] + ([2**63, 2**64, 10**30] if form != "raw" else [])))
        names = [f["attr"]] + (["input"] if f["attr"] in _needs(p["src"]) else [])
    elif fault == "non_int_attr":
        f["attr"] = draw(st.sampled_from(allowed_attrs))
        f["value"] = draw(st.sampled_from([1.5, "3", True, [2], float("nan")]))
        names = [f["attr"]]
    elif fault in ("scale_len", "bias_len"):
        f["length"] = p["geometry"][3] + draw(st.sampled_from([-1, 1, 5]))
        names = ["scale" if fault == "scale_len" else "bias"]
    elif fault == "scale_rank":
        names = ["scale"]
    elif fault == "scale_type":
        f["value"] = draw(st.sampled_from(["x", [["a"]], object.__name__]))
        names = ["scale"]
    elif fault == "in_dtype":
        f["dtype"] = draw(st.sampled_from(["int32", "float64", "bool"] + (["string"] if form != "raw" else [])))
        names = ["input", "x", "Tin"]
    elif fault == "out_dtype":
        f["dtype"] = draw(st.sampled_from(["int32", "float64"] + (["x", "bfloat16"] if form != "raw" else [])))
        names = ["dtype", "Tout"]
    elif fault == "width_not_1":
        names = ["dst_layout", "output layout", "width"]
    elif fault == "too_large":
        names = ["output", "dst_layout", "input", "height", "width", "channels"]
    elif fault == "missing_attr":
        f["attr"] = draw(st.sampled_from(_needs(p["src"])))
        names = [f["attr"]]
    elif fault in ("image_shape", "matrix_shape"):
        names = ["input", "x", "channels", "height", "width"]
    elif fault == "bad_affine":
        # None is "the default" to the raw op's generated binding: a mistake only in Python.
        f["value"] = draw(st.sampled_from(["sideways", "FORWARD"] + ([None] if form != "raw" else [])))
        names = ["affine"]
    elif fault == "bad_layout":
        f["which"] = draw(st.sampled_from(["src_layout", "dst_layout"] if kwargs is None else ["data_layout"]))
        f["value"] = draw(st.sampled_from(["planar", None, 5, "NHWC"]))
        names = [f["which"]]
    elif fault == "not_numeric_input":
        names = ["input", "x"]
    p.update(fault=fault, fault_args=f, names=names)
    return p


def _rank(layout):
    return {"nhwc": 4, "sequence": 3, "time_major": 3, "image": 5}.get(layout, 2)


def _with_fault(p, form, kwargs=None):
    return st.booleans().flatmap(lambda bad: _fault(p, form, kwargs) if bad else st.just(p))


def _finish(entry):
    def f(p):
        return {**p, "entry": entry, "klass": f"{entry}:{p['fault'] or 'valid'}:{p['src']}-{p['dst']}:"
                                              f"{p['tin']}-{p['tout']}:{p['size']}"}

    return f


# ------------------------------------------------------------------ values and reference
def _np(name):
    return np.dtype(name)


def _logical(p, rng):
    n, h, w, c = p["geometry"]
    shape = (n, h, w, c)
    if p["tin"] == "uint8":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    x = rng.standard_normal(shape).astype(np.float32)
    if p["values"] == "special":
        picks = np.array([np.nan, np.inf, -np.inf, 1e-40, -1e-40, 0.0, -0.0, 3e38, 65504.0, 65520.0, 6e-8, 2.9e-8],
                         np.float32)
        x = np.where(rng.random(shape) < 0.2, picks[rng.integers(0, len(picks), shape)], x)
    with np.errstate(over="ignore"):
        return x.astype(_np(p["tin"]))


def _vectors(p, rng):
    c = p["geometry"][3]
    out = {}
    for name in ("scale", "bias"):
        kind = p[name]
        if kind is None:
            out[name] = None
        elif kind == "special":
            out[name] = rng.choice(np.array([0.0, -0.0, np.nan, np.inf, 1e-40, 2.0, -3.0], np.float32), c)
        else:
            out[name] = (rng.uniform(0.5, 2.0, c) if name == "scale" else rng.uniform(-1, 1, c)).astype(np.float32)
    return out


def _expected(p, logical, vec, flush):
    """The converted logical values (N, H, W, C) in the output dtype (docs/converters.md)."""
    import reference as ref

    x = ref.unorm8_to_float(logical) if p["tin"] == "uint8" else logical.astype(np.float32)
    tiny = np.finfo(np.float32).tiny
    ftz = (lambda a: np.where(np.abs(a) < tiny, np.float32(0) * a, a)) if flush else (lambda a: a)
    x = ftz(x)
    s, b = vec["scale"], vec["bias"]
    with np.errstate(all="ignore"):
        if s is not None or b is not None:
            s = np.ones(x.shape[-1], np.float32) if s is None else ftz(s)
            b = np.zeros(x.shape[-1], np.float32) if b is None else ftz(b)
            y = x * s + b if p["affine"] == "forward" else (x - b) / s
            y = ftz(y.astype(np.float32))
        else:
            y = x
        if p["tout"] == "uint8":
            return ref.float_to_unorm8(y)
        return y.astype(_np(p["tout"]))


def _same(what, actual, expected_list):
    """Equal to one of the expected arrays element by element (NaN matches NaN)."""
    a = np.asarray(actual)
    if a.dtype != expected_list[0].dtype or a.shape != expected_list[0].shape:
        return f"{what}: {a.dtype}{list(a.shape)}, expected {expected_list[0].dtype}{list(expected_list[0].shape)}"
    bad = None
    for e in expected_list:
        if a.dtype.kind == "f":
            mismatch = ~((a == e) | (np.isnan(a) & np.isnan(e)))
        else:
            mismatch = a != e
        bad = mismatch if bad is None else bad & mismatch
    if not bad.any():
        return None
    i = tuple(int(k) for k in np.argwhere(bad)[0])
    return f"{what}: {int(bad.sum())} of {a.size} elements differ, first at {i}: got {a[i]!r}, expected {expected_list[0][i]!r}"


def _check(p, logical, vec, layout=None):
    import reference as ref

    n, h, w, c = p["geometry"]
    layout = layout or p["dst"]
    expected = [ref.to_layout(_expected(p, logical, vec, flush), layout) for flush in (False, True)]

    def check(result):
        return _same(f"output in layout {layout!r}", np.asarray(result), expected)

    return check


# ------------------------------------------------------------------ building a call
def _input(p, logical):
    """The input array (its layout, its faults) and the attributes to pass."""
    import reference as ref

    f, fault = p.get("fault_args") or {}, p["fault"]
    x = ref.to_layout(logical, p["src"])
    attrs = dict(p["attrs"])
    n, h, w, c = p["geometry"]
    if fault == "rank":
        x = np.zeros([2] * f["rank"], x.dtype) if f["rank"] else np.zeros((), x.dtype)
    if fault in ("negative_attr", "mismatch_attr", "huge_attr", "non_int_attr"):
        attrs[f["attr"]] = f["value"]
    if fault == "missing_attr":
        attrs.pop(f["attr"], None)
    if fault == "image_shape":
        x = np.zeros((n, (c + 3) // 4 + 1, h, w, 4), x.dtype)
    if fault == "matrix_shape":
        x = np.zeros((n, h * w * c + 1), x.dtype)
    if fault == "width_not_1":
        x = np.zeros((n, h, 2, c), x.dtype) if p["src"] == "nhwc" else x
        attrs = {k: v for k, v in attrs.items() if k == "channels"}
        if p["src"] != "nhwc":
            attrs["width"] = 2
            if p["src"] == "image":
                x = np.zeros((n, (c + 3) // 4, h, 2, 4), x.dtype)
            else:
                x = np.zeros((n, h * 2 * c), x.dtype)
                attrs.update(height=h, channels=c)
    if fault == "too_large":
        x, attrs = _too_large(p, x.dtype)
    if fault == "in_dtype":
        x = x.astype(f["dtype"]) if f["dtype"] != "string" else np.full(x.shape, "a").astype(object)
    return x, attrs


def _too_large(p, dtype):
    """An empty batch whose output size overflows int64 (nothing is allocated; a TF
    tensor, NumPy refuses such shapes)."""
    import tensorflow as tf

    big = 2**31
    shapes = {"nhwc": (0, big, big, 4), "sequence": (0, big * big, 4), "time_major": (big * big, 0, 4),
              "image": (0, 1, big, big, 4), "matrix_hwc": (0, 0), "matrix_chw": (0, 0)}
    attrs = {"channels": 4} if p["src"] == "image" else {}
    if p["src"].startswith("matrix"):
        attrs = {"height": big, "width": big, "channels": 4}
    return tf.zeros(shapes[p["src"]], tf.as_dtype(dtype)), attrs


def _vector_args(p, vec):
    f, fault = p.get("fault_args") or {}, p["fault"]
    s, b = vec["scale"], vec["bias"]
    if fault == "too_large":
        s = b = None
    if fault == "scale_len":
        s = np.ones(max(f["length"], 0), np.float32)
    if fault == "bias_len":
        b = np.zeros(max(f["length"], 0), np.float32)
    if fault == "scale_rank":
        s = np.ones((1, p["geometry"][3]), np.float32)
    if fault == "scale_type":
        s = f["value"]
    return s, b


def _judge(p, call, x, vec, logical, layout=None):
    import tensorflow as tf

    state = [("input", x)] if isinstance(x, np.ndarray) and x.dtype.kind not in "UO" else []
    state += [(k, v) for k, v in vec.items() if isinstance(v, np.ndarray)]
    check = _check(p, logical, vec, layout) if p["fault"] is None else None
    # The raw op's attributes are checked by TF's generated binding, which raises
    # TypeError naming the attribute for a value of the wrong type.
    raw_attr = p["entry"] == "convert/raw.MpsConvert" and p["fault"] in ("bad_layout", "bad_affine", "out_dtype",
                                                                          "in_dtype")
    return oracle.judge(call, fault=p["fault"], names=p["names"], state=state, check=check,
                        allowed=(TypeError,) if raw_attr else ())


def _tensor(x):
    import tensorflow as tf

    return tf.constant(x) if isinstance(x, np.ndarray) else x


# ------------------------------------------------------------------ runners
def _run_raw(p):
    import tensorflow as tf

    import tf_mps

    lib = tf_mps._lib.load()
    rng = np.random.default_rng(p["seed"])
    logical = _logical(p, rng)
    vec = _vectors(p, rng)
    x, attrs = _input(p, logical)
    s, b = _vector_args(p, vec)
    f, fault = p.get("fault_args") or {}, p["fault"]
    kw = dict(src_layout=p["src"], dst_layout=p["dst"], affine=p["affine"], Tout=getattr(tf, p["tout"]),
              height=attrs.get("height", -1), width=attrs.get("width", -1), channels=attrs.get("channels", -1))
    scales = [] if s is None else [tf.constant(s)]
    if fault == "scale_rank" and s is not None:
        scales = [tf.constant(s), tf.constant(s[0])]  # two scale vectors: A = 2
    if fault == "out_dtype":
        kw["Tout"] = getattr(tf, f["dtype"])
    if fault == "bad_affine":
        kw["affine"] = f["value"]
    if fault == "bad_layout":
        kw[f["which"]] = f["value"]
    xt = _tensor(x)
    return _judge(p, lambda: lib.mps_convert(input=xt, scale=scales, bias=[] if b is None else [tf.constant(b)], **kw),
                  x, vec, logical)


def _py_kwargs(p, vec, attrs, keys):
    import tensorflow as tf

    f, fault = p.get("fault_args") or {}, p["fault"]
    s, b = _vector_args(p, vec)
    kw = {}
    for k in keys:
        if k in ("height", "width", "channels"):
            if k in attrs:
                kw[k] = attrs[k]
        elif k == "dtype":
            kw[k] = getattr(tf, p["tout"])
        elif k == "scale" and s is not None:
            kw[k] = s
        elif k == "bias" and b is not None:
            kw[k] = b
        elif k == "affine":
            kw[k] = p["affine"]
        elif k == "data_layout":
            kw[k] = {"matrix_hwc": "HWC", "matrix_chw": "CHW"}.get(p["src"] if p["src"].startswith("matrix")
                                                                   else p["dst"], "HWC")
    if fault == "out_dtype" and "dtype" in keys:
        kw["dtype"] = f["dtype"] if f["dtype"] == "x" else getattr(tf, f["dtype"])
    if fault == "bad_affine":
        kw["affine"] = f["value"]
    if fault == "bad_layout" and "data_layout" in keys:
        kw["data_layout"] = f["value"]
    return kw


def _run_convert(p):
    from tf_mps import convert as cv

    rng = np.random.default_rng(p["seed"])
    logical = _logical(p, rng)
    vec = _vectors(p, rng)
    x, attrs = _input(p, logical)
    kw = _py_kwargs(p, vec, attrs, ("height", "width", "channels", "dtype", "scale", "bias", "affine"))
    layouts = [p["src"], p["dst"]]
    f = p.get("fault_args") or {}
    if p["fault"] == "bad_layout":
        layouts[0 if f["which"] == "src_layout" else 1] = f["value"]
    xin = "abc" if p["fault"] == "not_numeric_input" else (x if p["graph_input"] == "numpy" else _tensor(x))
    return _judge(p, lambda: cv.convert(xin, *layouts, **kw), x, vec, logical)


def _run_helper(p):
    from tf_mps import convert as cv

    name = p["helper"]
    rng = np.random.default_rng(p["seed"])
    logical = _logical(p, rng)
    vec = _vectors(p, rng)
    x, attrs = _input(p, logical)
    keys = HELPERS[name][2]
    kw = _py_kwargs(p, vec, attrs, keys)
    positional = [k for k in ("height", "width", "channels") if k in keys]
    args = [kw.pop(k, None) for k in positional]
    xin = "abc" if p["fault"] == "not_numeric_input" else _tensor(x)
    return _judge(p, lambda: getattr(cv, name)(xin, *args, **kw), x, vec, logical)


def _run_data(p):
    import tensorflow as tf

    import tf_mps

    rng = np.random.default_rng(p["seed"])
    logical = _logical(p, rng)
    vec = _vectors(p, rng)
    x, attrs = _input(p, logical)
    s, b = _vector_args(p, vec)
    f, fault = p.get("fault_args") or {}, p["fault"]
    n = x.shape[0] if x.ndim else 0
    labels = np.arange(n)
    structure = p["structure"]
    items = {"tensor": x, "tuple": (x, labels), "dict": {"pixels": x, "label": labels}}[structure]
    batch = p["batch"]
    kw = dict(dtype=getattr(tf, p["tout"]), scale=s, bias=b)
    if structure == "dict" or fault == "bad_key":
        kw["key"] = "pixels" if fault != "bad_key" else f["key"]
    if p["helper"] == "map_images":
        kw["layout"] = p["dst"] if fault != "bad_layout" else f["value"]
    if fault == "out_dtype":
        kw["dtype"] = f["dtype"] if f["dtype"] == "x" else getattr(tf, f["dtype"])
    fn = getattr(tf_mps.data, p["helper"])
    if x.ndim == 0:
        ds = tf.data.Dataset.from_tensors(items)
    else:
        ds = tf.data.Dataset.from_tensor_slices(items).batch(batch)

    def call():
        return [e for e in fn(ds, **kw)]

    import reference as ref

    def check(batches):
        out = []
        for e in batches:
            y = e if structure == "tensor" else e[0] if structure == "tuple" else e["pixels"]
            out.append(y.numpy())
        got = np.concatenate(out, axis=1 if p["dst"] == "time_major" else 0) if out else None
        expected = [ref.to_layout(_expected(p, logical, vec, flush), p["dst"]) for flush in (False, True)]
        if got is None:
            return None if n == 0 else "no batches"
        return _same(f"batches in layout {p['dst']!r}", got, expected)

    state = [("input", x)] + [(k, v) for k, v in vec.items() if isinstance(v, np.ndarray)]
    return oracle.judge(call, fault=fault, names=p["names"], state=state, check=check if fault is None else None)


# ------------------------------------------------------------------ registration
def _raw_strategy():
    return _conversion().flatmap(lambda p: _with_fault(p, "raw")).map(_finish("convert/raw.MpsConvert"))


def _convert_strategy():
    return _conversion().flatmap(lambda p: st.sampled_from(["numpy", "tensor"]).map(
        lambda g: {**p, "graph_input": g})).flatmap(lambda p: _with_fault(p, "py")).map(_finish("convert/convert.convert"))


def _helper_strategy(name):
    src, dst, keys = HELPERS[name]

    def pick(layout):
        return st.sampled_from(["matrix_hwc", "matrix_chw"]) if layout == "matrix" else st.just(layout)

    return st.tuples(pick(src), pick(dst)).flatmap(
        lambda sd: _conversion(sd[0], sd[1], affine_ok="scale" in keys)).map(
        lambda p: {**p, "helper": name, "affine": p["affine"] if "affine" in keys else "forward",
                   "tout": p["tout"] if "dtype" in keys else p["tin"],
                   "attrs": {k: v for k, v in p["attrs"].items() if k in keys}}).map(
        lambda p: {**p, "attrs": {**p["attrs"], **{k: v for k, v in zip(("height", "width", "channels"), p["geometry"][1:])
                                                   if k in keys}}}).flatmap(
        lambda p: _with_fault(p, "py", keys)).map(_finish(f"convert/convert.{name}"))


@st.composite
def _data_problem(draw, name):
    dst = "time_major" if name == "map_sequences" else draw(st.sampled_from(["image", "matrix_hwc", "matrix_chw",
                                                                              "nhwc"]))
    src = "sequence" if name == "map_sequences" else "nhwc"
    p = draw(_conversion(src, dst))
    p.update(helper=name, affine="forward", attrs={}, structure=draw(st.sampled_from(["tensor", "tuple", "dict"])),
             batch=draw(st.sampled_from([1, 2, 3, 64])))
    if p["size"] != "small":
        p["geometry"][0] = min(p["geometry"][0], 8)
    if draw(st.booleans()):
        fault = draw(st.sampled_from(["bad_key", "out_dtype", "scale_len", "bias_len"] +
                                     (["bad_layout"] if name == "map_images" else [])))
        f = {}
        names = {"bad_key": ["key"], "out_dtype": ["dtype"], "scale_len": ["scale"], "bias_len": ["bias"],
                 "bad_layout": ["layout"]}[fault]
        if fault == "bad_key":
            f["key"] = draw(st.sampled_from([None, "image", 3]))
            p["structure"] = "dict"
        if fault == "out_dtype":
            f["dtype"] = draw(st.sampled_from(["int32", "float64", "x"]))
        if fault in ("scale_len", "bias_len"):
            f["length"] = p["geometry"][3] + draw(st.sampled_from([-1, 1]))
        if fault == "bad_layout":
            f["value"] = draw(st.sampled_from(["planar", "sequence", None]))
        p.update(fault=fault, fault_args=f, names=names)
    return p


register("convert/raw.MpsConvert", "convert", _raw_strategy(), _run_raw)
register("convert/convert.convert", "convert", _convert_strategy(), _run_convert)
for _name in HELPERS:
    register(f"convert/convert.{_name}", "convert", _helper_strategy(_name), _run_helper)
for _name in ("map_images", "map_sequences"):
    register(f"convert/data.{_name}", "convert", _data_problem(_name).map(_finish(f"convert/data.{_name}")), _run_data)
